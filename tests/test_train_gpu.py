"""Training is identical on the NumPy and CuPy backends (float64: to rounding)."""

from __future__ import annotations

import pytest
from training_comparison import predict_on_both_backends, train_on_both_backends

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    ("task", "seq", "dataset", "fields"),
    [
        ("classify", "rows", "digits", {}),
        ("classify", "pixels", "digits", {}),
        ("generate", "rows", "digits", {}),
        ("generate", "rows", "moving-digits", {}),  # clips: a frame of 100 pixels a step
        ("classify", "rows", "digits", {"val_fraction": 0.2, "patience": 1}),
        ("generate", "rows", "digits", {"val_fraction": 0.2}),
        ("classify", "rows", "digits", {"optimizer": "rmsprop", "momentum": 0.5, "lr": 1e-3}),
        ("classify", "rows", "digits", {"optimizer": "sgd", "momentum": 0.9, "lr": 0.03}),
    ],
)
def test_two_epochs_match_numpy(
    task: str, seq: str, dataset: str, fields: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = train_on_both_backends(task, seq, monkeypatch, dataset, **fields)
    assert results["cupy"].model.backend.name == "cupy"
    if "val_fraction" in fields:
        for backend in ("numpy", "cupy"):
            assert results[backend].metrics["num_val"] == 270, backend
            if task == "generate":  # fitted on the split, compared by train_on_both_backends
                assert "recognition_variance" in results[backend].history[-1], backend


@pytest.mark.parametrize(
    ("dtype", "seq", "task"),
    [("float64", "rows", "classify"), ("float32", "pixels", "classify"),
     ("float32", "rows", "generate")],
)  # fmt: skip
def test_predictions_match_numpy(tmp_path, dtype: str, seq: str, task: str) -> None:
    """A saved run loaded on the GPU recognises images as on the CPU."""
    predict_on_both_backends(tmp_path / "run", dtype, seq, task)
