"""PNG plots of a run: loss/accuracy curves, a confusion matrix, image grids.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a
headless machine and ``import rnncu`` does not need matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["image_grid", "plot_confusion", "plot_history", "save_image_grid"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("matplotlib is needed for plots: pip install 'rnncu[train]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    import io

    from rnncu.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_history(
    history: Sequence[dict[str, float]],
    path: str | os.PathLike[str],
    title: str = "",
    clip: float = 0.0,
) -> None:
    """Loss curves (train and test) and, where recorded, accuracy or test MSE per epoch; where
    the history holds gradient norms (the trainer's ``grad_norm``, ``grad_norm_max``), a third
    panel of them, with the clipping limit ``clip`` (0: none) as a line."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    second = "test_accuracy" if history and "test_accuracy" in history[0] else "test_mse"
    with_norms = any("grad_norm" in r for r in history)
    fig, axes = plt.subplots(
        1, 3 if with_norms else 2, figsize=(15 if with_norms else 10, 4), sharex=True
    )
    ax1, ax2 = axes[0], axes[1]
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train")
    if history and "test_loss" in history[0]:
        ax1.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    if second == "test_accuracy":
        ax2.plot(epochs, [r["train_accuracy"] for r in history], label="train")
        ax2.plot(epochs, [r["test_accuracy"] for r in history], label="test")
        ax2.set_ylabel("accuracy")
    else:
        ax2.plot(epochs, [r.get("test_mse", np.nan) for r in history], label="model")
        ax2.plot(
            epochs, [r.get("baseline_mse", np.nan) for r in history], "--", label="copy row above"
        )
        ax2.set_ylabel("test next-row MSE")
    ax2.set_xlabel("epoch")
    ax2.legend()
    if with_norms:
        # an epoch without norms (overflowed, or trained before they were recorded) is a gap;
        # the markers show epochs that have no neighbour to draw a line to
        ax3 = axes[2]
        for key, label in (("grad_norm", "mean"), ("grad_norm_max", "max")):
            ax3.plot(epochs, [r.get(key, np.nan) for r in history], marker=".", label=label)
        if clip > 0:
            ax3.axhline(clip, color="grey", linestyle=":", label=f"clip {clip:g}")
        ax3.set_xlabel("epoch")
        ax3.set_ylabel("gradient norm before clipping" if clip > 0 else "gradient norm")
        ax3.set_yscale("log")
        ax3.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


#: Classes up to which the confusion plot writes each count and labels each class; beyond,
#: the cells alone (a thousand classes made a 50,000-pixel-wide figure with a million texts).
CONFUSION_ANNOTATED_CLASSES = 30


def plot_confusion(confusion: np.ndarray, path: str | os.PathLike[str]) -> None:
    """A (C, C) confusion matrix (rows: true class, columns: predicted): with its counts for
    up to :data:`CONFUSION_ANNOTATED_CLASSES` classes, as a heat map alone beyond (the figure
    stays at most 16 inches, 1600 pixels, wide)."""
    plt = _pyplot()
    k = confusion.shape[0]
    annotated = k <= CONFUSION_ANNOTATED_CLASSES
    side = min(1 + 0.5 * k, 16.0)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(confusion, cmap="Blues", interpolation="nearest")
    if annotated:
        for i, j in zip(*np.nonzero(confusion), strict=True):
            color = "white" if confusion[i, j] > confusion.max() / 2 else "black"
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", color=color, fontsize=8)
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _save(fig, path)
    plt.close(fig)


def image_grid(images: np.ndarray, ncols: int, pad: int = 1, scale: int = 4) -> np.ndarray:
    """Tile images (N, H, W) in [0, 1] into one (rows*(H+pad), ncols*(W+pad)) array, each
    pixel repeated ``scale`` times so 8x8 digits stay visible."""
    n, h, w = images.shape
    nrows = max(1, -(-n // ncols))
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = 1.0 - np.clip(img, 0, 1)  # ink dark on white
    return np.kron(grid, np.ones((scale, scale), dtype=np.float32))


def save_image_grid(
    images: np.ndarray, path: str | os.PathLike[str], ncols: int = 10, scale: int = 4
) -> Path:
    """Write :func:`image_grid` of images (N, H, W) as a greyscale PNG; returns the path."""
    plt = _pyplot()
    import io

    from rnncu.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    plt.imsave(
        buf, image_grid(images, ncols, scale=scale), cmap="gray", vmin=0, vmax=1, format="png"
    )
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
