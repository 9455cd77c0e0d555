"""Losses that return the value *and* the gradient of their input, on the input's device.

Each function returns ``(loss, grad)``: ``loss`` is a scalar on the same backend as the
input (a 0-d CuPy array; a NumPy scalar on the NumPy backend: no host synchronisation, the
trainer adds it up on the device and reads it once per epoch), ``grad`` has the input's
shape and dtype. Reductions are means, as in PyTorch's
defaults, so gradients are already divided by the number of terms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnncu.backend import Array, backend_for, is_array
from rnncu.module import check_class_labels, describe_array

__all__ = ["log_softmax", "mse_loss", "softmax_cross_entropy"]


def mse_loss(pred: Array, target: Array) -> tuple[Array, Array]:
    """Mean squared error over all elements: ``mean((pred - target)**2)``.

    ``pred`` and ``target`` have the same shape (any); returns ``(loss, dpred)`` with
    ``dpred = 2 (pred - target) / pred.size``.
    """
    _check_array("mse_loss", "pred", pred, floating=True)
    _check_array("mse_loss", "target", target)
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred {pred.shape} and target {target.shape} differ")
    if pred.size == 0:
        raise ValueError(f"mse_loss: pred is empty {pred.shape}; a mean needs one element")
    _check_same_backend("mse_loss", "pred", pred, "target", target)
    xp = backend_for(pred).xp
    diff = pred - target.astype(pred.dtype, copy=False)
    loss = xp.mean(diff * diff)
    grad = diff * (2.0 / diff.size)
    return loss, grad.astype(pred.dtype, copy=False)


def log_softmax(logits: Array) -> Array:
    """``log(softmax(logits))`` along the last axis, stable for any finite logits: the row
    maximum is subtracted first, so ``exp`` never overflows and the largest term is 1.
    ``logits``: a floating array (..., C) with C >= 1."""
    _check_array("log_softmax", "logits", logits, floating=True)
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"log_softmax: logits: expected (..., C) with C >= 1 classes, got {logits.shape}"
        )
    xp = backend_for(logits).xp
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def softmax_cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Cross-entropy of integer ``labels`` (B,) under ``softmax(logits)``, logits (B, C).

    Returns ``(loss, dlogits)``: the mean over the batch of ``-log p[label]`` and its
    gradient ``(softmax(logits) - onehot(labels)) / B``. Computed from logits through
    :func:`log_softmax`, so logits of 1e4 give exact results where a naive softmax overflows.
    """
    _check_array("softmax_cross_entropy", "logits", logits, floating=True)
    _check_array("softmax_cross_entropy", "labels", labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"softmax_cross_entropy: expected logits (B, C) and labels (B,), "
            f"got {logits.shape} and {labels.shape}"
        )
    batch, classes = logits.shape
    if batch == 0 or classes == 0:
        raise ValueError(
            f"softmax_cross_entropy: expected logits (B, C) with B, C >= 1, got {logits.shape}"
        )
    _check_same_backend("softmax_cross_entropy", "logits", logits, "labels", labels)
    on_device = backend_for(labels).name != "numpy"
    check_class_labels(
        "softmax_cross_entropy: labels", labels, batch, classes, check_range=not on_device
    )
    xp = backend_for(logits).xp
    invalid = None
    if on_device:
        # On a device, a range check would wait for it on every batch. Instead an index out
        # of range makes the loss and the gradient NaN (never a wrapped-around index), which
        # the trainer's loss check reports.
        out_of_range = (labels < 0) | (labels >= classes)
        invalid = xp.any(out_of_range)
        labels = xp.where(out_of_range, 0, labels)
    logp = log_softmax(logits)
    rows = xp.arange(batch)
    loss = -xp.mean(logp[rows, labels])
    grad = xp.exp(logp)
    grad[rows, labels] -= 1
    grad *= 1.0 / batch
    if invalid is not None:
        poison = xp.where(invalid, xp.nan, 0.0)
        loss = loss + poison.astype(loss.dtype)
        grad += poison.astype(grad.dtype)
    return loss, grad.astype(logits.dtype, copy=False)


def _check_array(function: str, name: str, value: Any, floating: bool = False) -> None:
    """A NumPy or CuPy array (a torch tensor has a shape and a dtype, but not NumPy's); a
    floating one where ``floating``, else real numbers (a complex target's imaginary part
    would be dropped, a string one fail inside NumPy)."""
    if not is_array(value):
        raise TypeError(
            f"{function}: {name}: expected a NumPy or CuPy array, got {describe_array(value)}"
        )
    if isinstance(value, np.ma.MaskedArray):
        # NumPy's masked mean would give a loss over the unmasked terms and a masked gradient,
        # which the layers refuse
        raise TypeError(
            f"{function}: {name}: a masked array; give a plain one ({name}.filled(...))"
        )
    if floating and value.dtype.kind != "f":
        # integer arithmetic would truncate the gradient (to zeros for cross-entropy)
        raise TypeError(f"{function}: {name}: expected a floating array, got {value.dtype}")
    if value.dtype.kind not in "fiub":
        raise TypeError(f"{function}: {name}: expected real numbers, got {value.dtype}")


def _check_same_backend(function: str, name_a: str, a: Any, name_b: str, b: Any) -> None:
    """Both arrays on one backend: mixing NumPy and CuPy would copy on every call."""
    backend_a, backend_b = backend_for(a), backend_for(b)
    if backend_a.name != backend_b.name:
        raise TypeError(
            f"{function}: {name_a} is a {backend_a.name} array and {name_b} a "
            f"{backend_b.name} array; convert one with rnncu.get_backend(...).asarray"
        )
