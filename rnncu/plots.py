"""PNG plots of a run: loss/accuracy curves, a confusion matrix, image grids; and a grid of
clips as an animated GIF.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a
headless machine and ``import rnncu`` does not need matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnncu.module import check_number
from rnncu.module import describe_array as _describe

__all__ = [
    "CLIP_FRAME_MS",
    "GIF_FRAME_MS",
    "GRID_SCALE",
    "MAX_GRID_PIXELS",
    "check_frame_ms",
    "grid_columns_within",
    "grid_pixels",
    "image_grid",
    "plot_confusion",
    "plot_history",
    "save_clip_animation",
    "save_image_grid",
]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("matplotlib is needed for plots: pip install 'rnncu[train]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _file_path(path: Any, suffix: str = ".png") -> Path:
    """``path`` when it names a file of ``suffix``: the plots are PNG bytes and the
    animations GIF, whatever the name says (``curves.pdf`` would hold a PNG)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a {suffix} file (str or path), got {type(path).__name__}")
    file = Path(path)
    if file.suffix.lower() != suffix:
        raise ValueError(f"path: expected a {suffix} file, got {str(path)!r}")
    if file.is_dir():
        raise ValueError(f"path: {str(path)!r} is a directory, expected a {suffix} file")
    return file


def _positive(name: str, value: Any, zero: bool = False) -> int:
    """An int >= 1 (>= 0 with ``zero``), bools refused; else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < (0 if zero else 1):
        raise ValueError(f"{name}: expected an integer >= {0 if zero else 1}, got {value!r}")
    return int(value)


def _check_history(history: Any) -> list[dict[str, Any]]:
    """The records of a history (each a dict with a numeric ``epoch`` and ``train_loss``, and
    numbers or None for the other keys), at least one."""
    if isinstance(history, (str, bytes, dict)) or not isinstance(history, Sequence):
        raise TypeError(
            f"history: expected a list of per-epoch dicts, got {type(history).__name__}"
        )
    if not history:
        raise ValueError("history: expected at least one epoch's record, got none")
    for index, record in enumerate(history):
        if not isinstance(record, dict):
            raise TypeError(f"history[{index}]: expected a dict, got {type(record).__name__}")
        for key in ("epoch", "train_loss"):
            if record.get(key) is None:
                raise ValueError(f"history[{index}]: no {key!r} (keys: {sorted(record)})")
        for key, value in record.items():
            number = isinstance(value, (int, float, np.integer, np.floating))
            if value is not None and (isinstance(value, bool) or not number):
                raise TypeError(f"history[{index}][{key!r}]: expected a number, got {value!r}")
    return list(history)


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
    """Loss curves (train, test and, where recorded, validation) and accuracy or test MSE per
    epoch (validation too, where recorded); where the history holds gradient norms (the
    trainer's ``grad_norm``, ``grad_norm_max``), a third panel of them, with the clipping
    limit ``clip`` (0: none) as a line. ``path`` names a ``.png`` file. A key missing from
    some records (an epoch saved by an older version) is a gap in its curve."""
    history = _check_history(history)
    path = _file_path(path)
    clip = check_number("clip", clip, low=0.0, high_open=True)
    plt = _pyplot()

    def curve(key: str) -> list[float]:
        return [np.nan if r.get(key) is None else float(r[key]) for r in history]

    def recorded(key: str) -> bool:
        return any(r.get(key) is not None for r in history)

    epochs = curve("epoch")
    second = "test_accuracy" if recorded("test_accuracy") else "test_mse"
    with_norms = recorded("grad_norm")
    fig, axes = plt.subplots(
        1, 3 if with_norms else 2, figsize=(15 if with_norms else 10, 4), sharex=True
    )
    ax1, ax2 = axes[0], axes[1]
    ax1.plot(epochs, curve("train_loss"), label="train")
    if recorded("test_loss"):
        ax1.plot(epochs, curve("test_loss"), label="test")
    if recorded("val_loss"):
        ax1.plot(epochs, curve("val_loss"), label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    if second == "test_accuracy":
        ax2.plot(epochs, curve("train_accuracy"), label="train")
        ax2.plot(epochs, curve("test_accuracy"), label="test")
        if recorded("val_accuracy"):
            ax2.plot(epochs, curve("val_accuracy"), label="validation")
        ax2.set_ylabel("accuracy")
    else:
        ax2.plot(epochs, curve("test_mse"), label="model")
        if recorded("val_mse"):
            ax2.plot(epochs, curve("val_mse"), label="model, validation")
        ax2.plot(epochs, curve("baseline_mse"), "--", label="copy row above")
        # the baseline is the test split's: the validation curve is the model's alone
        ax2.set_ylabel(
            "next-row MSE (test; validation where drawn)"
            if recorded("val_mse")
            else "test next-row MSE"
        )
    ax2.set_xlabel("epoch")
    ax2.legend()
    if with_norms:
        # an epoch without norms (overflowed, or trained before they were recorded) is a gap;
        # the markers show epochs that have no neighbour to draw a line to
        ax3 = axes[2]
        for key, label in (("grad_norm", "mean"), ("grad_norm_max", "max")):
            ax3.plot(epochs, curve(key), marker=".", label=label)
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
    stays at most 16 inches, 1600 pixels, wide). Counts are finite and non-negative; ``path``
    names a ``.png`` file."""
    if not isinstance(confusion, np.ndarray) or confusion.dtype.kind not in "iuf":
        raise TypeError(f"confusion: expected a NumPy array of counts, got {_describe(confusion)}")
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.size == 0:
        raise ValueError(f"confusion: expected a (C, C) matrix, C >= 1, got {confusion.shape}")
    if not np.isfinite(confusion).all():
        raise ValueError("confusion: expected finite counts >= 0, found NaN or infinity")
    if confusion.min() < 0:
        raise ValueError(f"confusion: expected counts >= 0, found {confusion.min()}")
    path = _file_path(path)
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


#: Pillow's decompression-bomb threshold: readers built on it warn above it, and refuse twice it
MAX_GRID_PIXELS = 89_478_485
#: each pixel of an image is drawn as GRID_SCALE x GRID_SCALE pixels of a grid
GRID_SCALE = 4


def grid_pixels(
    nrows: int, ncols: int, image_shape: tuple[int, int], pad: int = 1, scale: int = GRID_SCALE
) -> int:
    """The pixel count of :func:`image_grid`'s output for ``nrows`` x ``ncols`` images of
    ``image_shape`` (H, W): known before any image is made."""
    rows, cols = _grid_shape(nrows, ncols, image_shape, pad)
    return rows * scale * cols * scale


def _grid_shape(nrows: int, ncols: int, image_shape: tuple[int, int], pad: int) -> tuple[int, int]:
    """The grid's (rows, columns) of pixels before scaling: images and a border of ``pad``."""
    height, width = image_shape
    return nrows * (height + pad) + pad, ncols * (width + pad) + pad


def grid_columns_within(
    nrows: int, image_shape: tuple[int, int], pad: int = 1, scale: int = GRID_SCALE
) -> int:
    """The most columns a grid of ``nrows`` rows of ``image_shape`` images may have and stay
    within :data:`MAX_GRID_PIXELS` (0: not even one)."""
    rows, _ = _grid_shape(nrows, 0, image_shape, pad)
    widest = MAX_GRID_PIXELS // (rows * scale)  # in pixels
    return max(0, (widest // scale - pad) // (image_shape[1] + pad))


def image_grid(images: np.ndarray, ncols: int, pad: int = 1, scale: int = GRID_SCALE) -> np.ndarray:
    """Tile images (N, H, W) in [0, 1] into one ((rows*(H+pad)+pad)*scale,
    (ncols*(W+pad)+pad)*scale) array (a white border of ``pad`` pixels around and between the
    images, ink dark on white), each pixel repeated ``scale`` times so 8x8 digits stay
    visible."""
    if not isinstance(images, np.ndarray) or images.dtype.kind not in "biuf":
        raise TypeError(f"images: expected a NumPy array (N, H, W), got {_describe(images)}")
    if images.ndim != 3:
        raise ValueError(f"images: expected (N, H, W), got shape {images.shape}")
    ncols = _positive("ncols", ncols)
    pad = _positive("pad", pad, zero=True)
    scale = _positive("scale", scale)
    n, h, w = images.shape
    nrows = max(1, -(-n // ncols))
    grid = np.ones(_grid_shape(nrows, ncols, (h, w), pad), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = 1.0 - np.clip(img, 0, 1)  # ink dark on white
    return np.kron(grid, np.ones((scale, scale), dtype=np.float32))


def save_image_grid(
    images: np.ndarray,
    path: str | os.PathLike[str],
    ncols: int = 10,
    scale: int = GRID_SCALE,
    pad: int = 1,
) -> Path:
    """Write :func:`image_grid` of images (N, H, W) as a greyscale PNG to ``path`` (a
    ``.png`` file); returns the path."""
    path = _file_path(path)
    grid = image_grid(images, ncols, pad=pad, scale=scale)
    plt = _pyplot()
    import io

    from rnncu.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    plt.imsave(buf, grid, cmap="gray", vmin=0, vmax=1, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


#: How long each frame of :func:`save_clip_animation` shows, in milliseconds.
CLIP_FRAME_MS = 250
#: The frame times a GIF can hold, in milliseconds: a multiple of 10 (it keeps hundredths of
#: a second in 16 bits; Pillow drops the remainder, and under 5 ms writes no delay at all)
#: and at least 20 (browsers show a frame of 0 or 10 ms for 100 ms, slower than one of 20).
GIF_FRAME_MS = range(20, 655_351, 10)


def check_frame_ms(frame_ms: Any, name: str = "frame_ms") -> int:
    """``frame_ms`` as an int if a GIF can hold it as a frame's time (:data:`GIF_FRAME_MS`),
    else an error naming ``name``."""
    milliseconds = _positive(name, frame_ms)
    if milliseconds not in GIF_FRAME_MS:
        raise ValueError(
            f"{name}: expected a multiple of 10 from 20 to 655350 (a GIF holds hundredths of a "
            f"second, and browsers slow frames under 20 ms to 100 ms), got {milliseconds}"
        )
    return milliseconds


def save_clip_animation(
    clips: np.ndarray,
    path: str | os.PathLike[str],
    ncols: int = 10,
    scale: int = GRID_SCALE,
    pad: int = 1,
    frame_ms: int = CLIP_FRAME_MS,
) -> Path:
    """Write clips (N, T, H, W) in [0, 1] as an animated GIF to ``path`` (a ``.gif`` file),
    looping: its frame t is :func:`image_grid` of every clip's frame t, so each cell plays one
    clip, each for ``frame_ms`` milliseconds (:data:`GIF_FRAME_MS`: a multiple of 10 from 20
    on). Grey levels are 8-bit (GIF's palette holds the 256 greys); identical consecutive
    frames are written once for their summed time, as Pillow writes them (a time that must
    fit too: ValueError). Returns the path."""
    gif = _file_path(path, ".gif")
    if not isinstance(clips, np.ndarray) or clips.dtype.kind not in "biuf":
        raise TypeError(f"clips: expected a NumPy array (N, T, H, W), got {_describe(clips)}")
    if clips.ndim != 4 or 0 in clips.shape[:2]:
        raise ValueError(f"clips: expected (N, T, H, W) with N, T >= 1, got shape {clips.shape}")
    frame_ms = check_frame_ms(frame_ms)
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Pillow writes GIF files: pip install 'rnncu[train]'") from exc
    import io

    from rnncu.checkpoint import atomic_write_bytes

    frames = [
        Image.fromarray(
            np.round(image_grid(clips[:, t], ncols, pad=pad, scale=scale) * 255).astype(np.uint8),
            "L",
        )
        for t in range(clips.shape[1])
    ]
    # Pillow writes a run of identical frames as one frame of their summed time, which must
    # fit too: past 655350 ms it failed with a bare OverflowError (16 bits of hundredths)
    longest = run = 1
    for t in range(1, len(frames)):
        run = run + 1 if frames[t].tobytes() == frames[t - 1].tobytes() else 1
        longest = max(longest, run)
    if longest * frame_ms > GIF_FRAME_MS[-1]:
        raise ValueError(
            f"frame_ms: {longest} identical frames in a row show as one frame of "
            f"{longest * frame_ms} ms, past the {GIF_FRAME_MS[-1]} a GIF holds; expected at most "
            f"{GIF_FRAME_MS[-1] // longest // 10 * 10}, got {frame_ms}"
        )
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=frame_ms, loop=0)  # fmt: skip
    atomic_write_bytes(gif, buf.getvalue())
    return gif
