"""Losses: values against direct formulas, gradients against central finite differences
(float64), stability with huge logits."""

from __future__ import annotations

import numpy as np
import pytest

from rnncu.losses import log_softmax, mse_loss, softmax_cross_entropy


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function ``f`` at ``x`` (float64)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        plus = float(f(x))
        x[i] = old - eps
        minus = float(f(x))
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def test_mse_value_and_gradient(rng: np.random.Generator) -> None:
    pred = rng.standard_normal((3, 4, 5))
    target = rng.standard_normal((3, 4, 5))
    loss, grad = mse_loss(pred, target)
    assert loss.shape == ()
    np.testing.assert_allclose(loss, np.mean((pred - target) ** 2), rtol=1e-14)
    num = numeric_grad(lambda p: mse_loss(p, target)[0], pred.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_mse_keeps_float32_and_rejects_shape_mismatch() -> None:
    pred = np.ones((2, 3), np.float32)
    _, grad = mse_loss(pred, np.zeros((2, 3), np.float64))
    assert grad.dtype == np.float32
    with pytest.raises(ValueError, match="differ"):
        mse_loss(pred, np.zeros((3, 2)))


def test_cross_entropy_value_and_gradient(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, size=6)
    loss, grad = softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loss, -np.mean(np.log(p[np.arange(6), labels])), rtol=1e-13)
    num = numeric_grad(lambda z: softmax_cross_entropy(z, labels)[0], logits.copy())
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-15)  # softmax - onehot sums to 0


def test_cross_entropy_huge_logits_is_exact() -> None:
    # A naive exp() overflows at 1e4; the stable form is exact: logsumexp by hand.
    logits = np.array([[1e4, 0.0, -1e4], [5e3, 5e3 + 1.0, 0.0], [-1e4, -1e4, -1e4]])
    labels = np.array([1, 0, 2])
    loss, grad = softmax_cross_entropy(logits, labels)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    expected = np.mean(lse - logits[np.arange(3), labels])
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_allclose(
        loss, (1e4 + (1 + np.log1p(np.exp(-1.0))) + np.log(3)) / 3, rtol=1e-12
    )
    np.testing.assert_allclose(log_softmax(logits)[2], np.full(3, -np.log(3)), rtol=1e-14)


def test_cross_entropy_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="logits"):
        softmax_cross_entropy(np.zeros((2, 3)), np.zeros(3, dtype=np.int64))
