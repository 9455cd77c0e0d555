"""Training is identical on the NumPy and CuPy backends (float64: to rounding)."""

from __future__ import annotations

import pytest
from training_comparison import train_on_both_backends

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    ("task", "seq", "dataset"),
    [
        ("classify", "rows", "digits"),
        ("classify", "pixels", "digits"),
        ("generate", "rows", "digits"),
        ("generate", "rows", "moving-digits"),  # clips: a frame of 100 pixels a step
    ],
)
def test_two_epochs_match_numpy(
    task: str, seq: str, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = train_on_both_backends(task, seq, monkeypatch, dataset)
    assert results["cupy"].model.backend.name == "cupy"
