"""Two epochs of the trainer on the NumPy and the CuPy backend, compared: shared by the GPU
test (tests/test_train_gpu.py) and its emulated-device twin (tests/test_emulated_device.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest


def train_on_both_backends(
    task: str,
    seq: str,
    monkeypatch: pytest.MonkeyPatch,
    dataset: str = "digits",
    **fields: Any,
) -> dict[str, Any]:
    """Train ``task`` on ``seq`` of ``dataset`` (``moving-digits``: clips, 100 inputs a step)
    for two float64 epochs on each backend, with the config's other ``fields`` (a validation
    split), and assert that the weights and metrics agree to rounding; returns
    ``{"numpy": result, "cupy": result}``. The
    classifier that judges generated samples gets one epoch at H = 16 (on both backends): its
    quality is not what is compared, and it keeps the run short."""
    from rnncu import trainer
    from rnncu.trainer import make_config, train

    judge_config = trainer.classifier_config
    monkeypatch.setattr(
        trainer,
        "classifier_config",
        lambda config: dataclasses.replace(judge_config(config), epochs=1, hidden=16),
    )
    results = {}
    for backend in ("numpy", "cupy"):
        config = make_config(
            task=task,
            seq=seq,
            dataset=dataset,
            epochs=2,
            hidden=32,
            dtype="float64",
            backend=backend,
            seed=3,
            **fields,
        )
        results[backend] = train(config, out_dir=None, progress=False, plots=False)
    weights_numpy = results["numpy"].model.state_dict()
    weights_cupy = results["cupy"].model.state_dict()
    assert list(weights_numpy) == list(weights_cupy)
    # 1e-8, not the 1e-10 of one call: two epochs of Adam steps compound the backends'
    # rounding differences (cuBLAS sums the products in another order than OpenBLAS, CUDA's
    # exp and tanh differ from the host's by an ulp; the emulation has NumPy's for both, so
    # it agrees far closer), and Adam's division by sqrt(v) magnifies them where v is small.
    # Still 1000 times below float32's resolution: a float32 slip anywhere shows.
    for name, value in weights_numpy.items():
        np.testing.assert_allclose(weights_cupy[name], value, rtol=1e-8, atol=1e-10, err_msg=name)
    # the best epoch (a split's) is the same, and so are the figures it recorded
    assert results["cupy"].metrics.get("best_epoch") == results["numpy"].metrics.get("best_epoch")
    for key in ("test_mse", "baseline_mse", "val_mse", "val_loss", "test_loss", "best_val_loss",
                "best_val_mse", "best_test_loss", "best_test_mse", "recognition_variance",
                "test_recognition_log_loss"):  # fmt: skip
        if key in results["numpy"].metrics:
            assert results["cupy"].metrics[key] == pytest.approx(
                results["numpy"].metrics[key], rel=1e-8, abs=1e-12
            ), key
    # accuracies count argmaxes: a near-tie may flip, at most one image each
    judged = {}
    if "test_accuracy" in results["numpy"].metrics:
        judged["test_accuracy"] = results["numpy"].metrics["num_test"]
    if "best_test_accuracy" in results["numpy"].metrics:
        judged["best_test_accuracy"] = results["numpy"].metrics["num_test"]
    if "val_accuracy" in results["numpy"].metrics:
        judged["val_accuracy"] = results["numpy"].metrics["num_val"]
    if "test_recognition_accuracy" in results["numpy"].metrics:
        judged["test_recognition_accuracy"] = results["numpy"].metrics["num_test"]
    if "samples" in results["numpy"].extra:
        judged["sample_class_accuracy"] = len(results["numpy"].extra["samples"])
    for key, count in judged.items():
        difference = abs(results["cupy"].metrics[key] - results["numpy"].metrics[key])
        assert difference <= 1 / count + 1e-12, (key, difference)
    return results


def predict_on_both_backends(
    out_dir: Any, dtype: str, seq: str = "rows", task: str = "classify"
) -> dict[str, Any]:
    """A ``task`` run trained (one epoch) and saved on the NumPy backend, then loaded on each
    backend (``rnncu.trainer.load_model``) to recognise the digits' test images: the
    probabilities (a generate run's: its per-class errors) agree to rounding (float64 1e-10,
    float32 1e-5 relative), the classes wherever the two likeliest are not a near tie.
    Returns ``{"numpy": ..., "cupy": ...}``, the results of ``predict_images``."""
    from rnncu import trainer
    from rnncu.data import load_digits
    from rnncu.tasks import class_posterior
    from rnncu.trainer import load_model, make_config, predict_images, train

    digits = load_digits()
    config = make_config(
        backend="numpy", hidden=32, epochs=1, dtype=dtype, seq=seq, seed=5, task=task
    )
    judge_config = trainer.classifier_config
    with pytest.MonkeyPatch.context() as patch:
        # a generate run's judge: one small epoch, as it is not what is compared
        patch.setattr(trainer, "classifier_config", lambda c: dataclasses.replace(
            judge_config(c), epochs=1, hidden=16))  # fmt: skip
        train(config, data=digits, out_dir=out_dir, progress=False, plots=False)
    results = {}
    for backend in ("numpy", "cupy"):
        saved = load_model(out_dir, backend=backend)
        assert saved.model.backend.name == backend
        results[backend] = predict_images(saved, digits.x_test)
    rtol = 1e-10 if dtype == "float64" else 1e-5
    numpy_p, cupy_p = results["numpy"]["probabilities"], results["cupy"]["probabilities"]
    assert numpy_p.shape == cupy_p.shape == (450, 10)
    if task == "classify":
        np.testing.assert_allclose(cupy_p, numpy_p, rtol=rtol, atol=rtol * 1e-3)
        scores = numpy_p
    else:
        # the errors agree to rounding; the probabilities are the host's function of them
        # (exp of -64 * mse / (2 var) amplifies a float32 rounding 30-fold)
        numpy_e, cupy_e = results["numpy"]["mse"], results["cupy"]["mse"]
        np.testing.assert_allclose(cupy_e, numpy_e, rtol=rtol)
        variance = load_model(out_dir).train_loss
        np.testing.assert_array_equal(cupy_p, class_posterior(cupy_e, 64, variance))
        scores = -numpy_e
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 10 * rtol  # both figures are below 1
    assert clear.sum() > 400
    np.testing.assert_array_equal(
        results["cupy"]["classes"][clear], results["numpy"]["classes"][clear]
    )
    return results
