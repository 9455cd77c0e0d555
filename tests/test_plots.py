"""The plots rnncu writes into a run directory: sizes that stay bounded."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from rnncu.plots import CONFUSION_ANNOTATED_CLASSES, plot_confusion  # noqa: E402


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize("classes", [3, 10, CONFUSION_ANNOTATED_CLASSES + 1, 1000])
def test_confusion_plot_stays_bounded(tmp_path: Path, classes: int) -> None:
    """Labels may go up to 999: a thousand classes drew a 50,000-pixel-wide figure with a
    count in every cell, and a run was killed for memory after training, while plotting."""
    rng = np.random.default_rng(classes)
    confusion = rng.integers(0, 5, (classes, classes))
    path = tmp_path / "confusion.png"
    plot_confusion(confusion, path)
    width, height = png_size(path)
    # 100 dpi: 1 + 0.5 inch per class, at most 16 inches (plus the labels' margin)
    expected = min(1 + 0.5 * classes, 16) * 100
    assert 0.5 * expected < width < expected + 200 and 0.5 * expected < height < expected + 200


def test_confusion_counts_are_written_up_to_the_limit(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.axes import Axes

    texts: list[str] = []
    original = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: texts.append(s) or
                        original(self, x, y, s, *a, **k))  # fmt: skip
    for classes in (CONFUSION_ANNOTATED_CLASSES, CONFUSION_ANNOTATED_CLASSES + 1):
        texts.clear()
        confusion = np.arange(classes * classes).reshape(classes, classes) % 3
        plot_confusion(confusion, tmp_path / "c.png")
        written = np.count_nonzero(confusion) if classes <= CONFUSION_ANNOTATED_CLASSES else 0
        assert len(texts) == written, classes
