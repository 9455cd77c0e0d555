"""Losses that return the value *and* the gradient of their input, on the input's device.

Each function returns ``(loss, grad)``: ``loss`` is a 0-d array on the same backend as the
input (no host synchronisation: the trainer adds it up on the device and reads it once per
epoch), ``grad`` has the input's shape and dtype. Reductions are means, as in PyTorch's
defaults, so gradients are already divided by the number of terms.
"""

from __future__ import annotations

from typing import Any

from rnncu.backend import backend_for

__all__ = ["log_softmax", "mse_loss", "softmax_cross_entropy"]


def mse_loss(pred: Any, target: Any) -> tuple[Any, Any]:
    """Mean squared error over all elements: ``mean((pred - target)**2)``.

    ``pred`` and ``target`` have the same shape (any); returns ``(loss, dpred)`` with
    ``dpred = 2 (pred - target) / pred.size``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred {pred.shape} and target {target.shape} differ")
    xp = backend_for(pred).xp
    diff = pred - target.astype(pred.dtype, copy=False)
    loss = xp.mean(diff * diff)
    grad = diff * (2.0 / diff.size)
    return loss, grad.astype(pred.dtype, copy=False)


def log_softmax(logits: Any) -> Any:
    """``log(softmax(logits))`` along the last axis, stable for any finite logits: the row
    maximum is subtracted first, so ``exp`` never overflows and the largest term is 1."""
    xp = backend_for(logits).xp
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def softmax_cross_entropy(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Cross-entropy of integer ``labels`` (B,) under ``softmax(logits)``, logits (B, C).

    Returns ``(loss, dlogits)``: the mean over the batch of ``-log p[label]`` and its
    gradient ``(softmax(logits) - onehot(labels)) / B``. Computed from logits through
    :func:`log_softmax`, so logits of 1e4 give exact results where a naive softmax overflows.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"softmax_cross_entropy: expected logits (B, C) and labels (B,), "
            f"got {logits.shape} and {labels.shape}"
        )
    xp = backend_for(logits).xp
    batch = logits.shape[0]
    logp = log_softmax(logits)
    rows = xp.arange(batch)
    loss = -xp.mean(logp[rows, labels])
    grad = xp.exp(logp)
    grad[rows, labels] -= 1
    grad *= 1.0 / batch
    return loss, grad.astype(logits.dtype, copy=False)
