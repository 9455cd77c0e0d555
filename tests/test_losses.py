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


@pytest.mark.parametrize("bad", [-1, 3, 7])
def test_cross_entropy_refuses_labels_out_of_range(rng: np.random.Generator, bad: int) -> None:
    # -1 used to index the last class (NumPy wraps negative indices): a silent wrong loss
    logits = rng.standard_normal((4, 3))
    labels = np.array([0, 1, bad, 2])
    with pytest.raises(
        ValueError,
        match=rf"labels: expected class indices in \[0, 3\), got values in \[{min(bad, 0)}, "
        rf"{max(bad, 2)}\]",
    ):
        softmax_cross_entropy(logits, labels)


def test_cross_entropy_refuses_non_integer_labels(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((4, 3))
    with pytest.raises(TypeError, match="expected integer class indices, got dtype float64"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(
        TypeError, match=r"labels: expected a NumPy or CuPy array, got builtins.list"
    ):
        softmax_cross_entropy(logits, [0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"B, C >= 1, got \(0, 3\)"):
        softmax_cross_entropy(np.ones((0, 3)), np.ones(0, np.int64))


def test_mse_refuses_empty_and_non_arrays(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match=r"mse_loss: pred is empty"):
        mse_loss(np.ones((0, 3)), np.ones((0, 3)))
    with pytest.raises(
        TypeError, match=r"mse_loss: target: expected a NumPy or CuPy array, got builtins.list"
    ):
        mse_loss(rng.standard_normal(3), [1.0, 2.0, 3.0])


def test_losses_refuse_what_is_not_real_numbers(rng: np.random.Generator) -> None:
    pred = rng.standard_normal(2)
    # a complex target's imaginary part was dropped (loss 1.0), a string one failed in NumPy
    for target, kind in ((np.array([1 + 5j, 1 + 5j]), "complex128"), (np.array(["a", "b"]), "<U1")):
        with pytest.raises(
            TypeError, match=rf"^mse_loss: target: expected real numbers, got {kind}"
        ):
            mse_loss(pred, target)
    torch = pytest.importorskip("torch")  # a shape and a dtype, but not NumPy's
    with pytest.raises(
        TypeError, match=r"^mse_loss: pred: expected a NumPy or CuPy array, got torch"
    ):
        mse_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match=r"^softmax_cross_entropy: logits: expected a NumPy or Cu"):
        softmax_cross_entropy(torch.zeros(2, 3), np.zeros(2, np.int64))


def test_log_softmax_checks_its_logits(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match=r"^log_softmax: logits: expected \(..., C\) with C >= 1"):
        log_softmax(np.zeros((2, 0)))
    with pytest.raises(TypeError, match=r"^log_softmax: logits: expected a floating array, got"):
        log_softmax(np.arange(3))
    with pytest.raises(TypeError, match=r"^log_softmax: logits: expected a NumPy or CuPy array"):
        log_softmax([1.0, 2.0])
    logits = rng.standard_normal((3, 4))
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(axis=-1), 1.0, rtol=1e-15)


def test_losses_refuse_integer_predictions() -> None:
    # integer arithmetic truncated the gradient: [0 1 2] for mse, all zeros for cross-entropy
    with pytest.raises(TypeError, match=r"mse_loss: pred: expected a floating array, got int64"):
        mse_loss(np.array([1, 2, 3]), np.zeros(3))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: logits: expected a floating"):
        softmax_cross_entropy(np.array([[1, 5, 2]]), np.array([1]))
    # an integer target is fine: it is compared with a floating prediction
    loss, grad = mse_loss(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 0]))
    assert loss == pytest.approx(14 / 3) and grad.dtype == np.float64


def test_cross_entropy_out_of_range_labels_on_a_device_give_nan(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a device the range is not read back (that would wait for the device on every
    batch): an invalid label makes the loss and the gradient NaN instead, and a valid batch
    gives the host path's bits. Run through the device path with NumPy arrays standing in
    (the emulated device's training tests take it with its arrays)."""
    import rnncu.losses as losses

    logits = rng.standard_normal((4, 3))
    good = np.array([0, 2, 1, 2])
    ref_loss, ref_grad = softmax_cross_entropy(logits, good)

    class DeviceBackend:
        name = "cupy"
        xp = np

    monkeypatch.setattr(losses, "backend_for", lambda array: DeviceBackend)
    loss, grad = losses.softmax_cross_entropy(logits, good)
    assert float(loss) == float(ref_loss)
    np.testing.assert_array_equal(grad, ref_grad)
    for bad in (-1, 3):
        loss, grad = losses.softmax_cross_entropy(logits, np.array([0, bad, 1, 2]))
        assert np.isnan(float(loss)) and np.isnan(grad).all()


def test_losses_take_numpy_scalars_and_refuse_masked_arrays() -> None:
    loss, grad = mse_loss(np.array(1.5), np.float64(2.0))
    assert loss == pytest.approx(0.25) and grad == pytest.approx(-1.0)
    target = np.ma.masked_array(np.zeros((2, 3)), mask=np.eye(2, 3, dtype=bool))
    # NumPy's masked mean gave a loss over the unmasked terms and a masked gradient
    with pytest.raises(TypeError, match=r"^mse_loss: target: a masked array; give a plain one"):
        mse_loss(np.ones((2, 3)), target)
