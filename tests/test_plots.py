"""The plots rnncu writes into a run directory: sizes that stay bounded."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from rnncu.plots import (  # noqa: E402
    CONFUSION_ANNOTATED_CLASSES,
    GIF_FRAME_MS,
    MAX_GRID_PIXELS,
    grid_columns_within,
    grid_pixels,
    image_grid,
    plot_confusion,
    plot_history,
    save_clip_animation,
    save_image_grid,
)


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


def test_history_plot_adds_the_gradient_norms_where_recorded(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.axes import Axes

    from rnncu import plots

    saved = plots._save
    limits: list[float] = []
    original = Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda self, y=0, *a, **k: limits.append(y) or
                        original(self, y, *a, **k))  # fmt: skip
    base = [
        {"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "train_accuracy": 0.5,
         "test_accuracy": 0.4}
        for e in (1, 2, 3)
    ]  # fmt: skip
    plot_history(base, tmp_path / "old.png", clip=1.0)  # a history from before the norms
    with_norms = [dict(r, grad_norm=2.0 / r["epoch"], grad_norm_max=5.0) for r in base]
    del with_norms[1]["grad_norm"], with_norms[1]["grad_norm_max"]  # an overflowed epoch
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or saved(fig, path))
    plot_history(with_norms, tmp_path / "new.png", clip=1.0)
    axes = figures[0].axes
    assert axes[2].get_xlim() == axes[0].get_xlim()  # the epochs line up
    for line in axes[2].lines[:2]:  # mean and max: an epoch alone still shows, as a marker
        assert line.get_marker() == "." and np.isfinite(line.get_ydata()).sum() == 2
    old_width, _ = png_size(tmp_path / "old.png")
    new_width, _ = png_size(tmp_path / "new.png")
    # 10 and 15 inches at 100 dpi, less the margins bbox_inches="tight" trims
    assert 800 < old_width <= 1000 and 1.35 * old_width < new_width <= 1500
    assert limits == [1.0]  # the clipping limit, drawn in the norms' panel only


def _history() -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e} for e in (1, 2, 3)]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        # each had given a PNG under another name, a raw KeyError/IndexError/ZeroDivisionError,
        # or matplotlib's, PIL's or NumPy's message
        (lambda p: plot_history(_history(), p / "h.pdf"), ValueError, r"path: expected a .png fi"),
        (lambda p: save_image_grid(np.ones((2, 3, 3)), p / "s.jpg"), ValueError, r"path: expected"),
        (lambda p: plot_history(_history(), None), TypeError, r"path: expected a .png file \(s"),
        (lambda p: plot_history([], p / "h.png"), ValueError, r"history: expected at least one"),
        (lambda p: plot_history({"epoch": 1}, p / "h.png"), TypeError, r"history: expected a list"),
        (lambda p: plot_history([{"epoch": 1}], p / "h.png"), ValueError, r"history\[0\]: no 'tr"),
        (
            lambda p: plot_history([{"epoch": None, "train_loss": None}], p / "h.png"),
            ValueError,
            r"history\[0\]: no 'epoch'",
        ),
        (
            lambda p: plot_history([{"epoch": 1, "train_loss": "x"}], p / "h.png"),
            TypeError,
            r"history\[0\]\['train_loss'\]: expected a number, got 'x'",
        ),
        (lambda p: plot_history(_history(), p / "h.png", clip="1"), TypeError, r"clip: expected"),
        (lambda p: plot_confusion(np.ones((2, 3)), p / "c.png"), ValueError, r"confusion: expec"),
        (
            lambda p: plot_confusion(np.arange(3), p / "c.png"),
            ValueError,
            r"confusion: expected a \(C, C\)",
        ),
        (lambda p: plot_confusion([[1, 0], [0, 1]], p / "c.png"), TypeError, r"confusion: expe"),
        (
            lambda p: plot_confusion(-np.eye(2), p / "c.png"),
            ValueError,
            r"confusion: expected coun",
        ),
        (
            lambda p: plot_confusion(np.full((2, 2), np.nan), p / "c.png"),
            ValueError,
            r"confusion: expected finite counts >= 0, found NaN",
        ),
        (lambda p: image_grid(np.ones((2, 3, 3)), 0), ValueError, r"ncols: expected an integer"),
        (lambda p: image_grid(np.ones((2, 3, 3)), 2, pad=-1), ValueError, r"pad: expected an i"),
        (lambda p: image_grid(np.ones((2, 3, 3)), 2, scale=0), ValueError, r"scale: expected an"),
        (lambda p: image_grid(np.ones((2, 3)), 2), ValueError, r"images: expected \(N, H, W\)"),
        (
            lambda p: save_clip_animation(np.ones((2, 3, 3, 3)), p / "a.png"),
            ValueError,
            r"path: expected a .gif file, got",
        ),
        (
            lambda p: save_clip_animation(np.ones((2, 3, 3)), p / "a.gif"),
            ValueError,
            r"clips: expected \(N, T, H, W\) with N, T >= 1, got shape \(2, 3, 3\)",
        ),
        (
            lambda p: save_clip_animation(np.ones((2, 0, 3, 3)), p / "a.gif"),
            ValueError,
            r"clips: expected \(N, T, H, W\)",
        ),
        (
            lambda p: save_clip_animation([[[[1.0]]]], p / "a.gif"),
            TypeError,
            r"clips: expected a NumPy array",
        ),
        (
            lambda p: save_clip_animation(np.ones((1, 2, 3, 3)), p / "a.gif", frame_ms=0),
            ValueError,
            r"frame_ms: expected an integer >= 1",
        ),
        (
            # Pillow would write 0.01 s: a GIF keeps hundredths of a second
            lambda p: save_clip_animation(np.ones((1, 2, 3, 3)), p / "a.gif", frame_ms=125),
            ValueError,
            r"frame_ms: expected a multiple of 10 from 20 to 655350 \(a GIF holds hundredths of "
            r"a second, and browsers slow frames under 20 ms to 100 ms\), got 125",
        ),
        (
            lambda p: save_clip_animation(np.ones((1, 2, 3, 3)), p / "a.gif", frame_ms=10),
            ValueError,
            r"frame_ms: expected a multiple of 10 from 20 .*, got 10",
        ),
        (
            lambda p: save_clip_animation(np.ones((1, 2, 3, 3)), p / "a.gif", frame_ms=655360),
            ValueError,
            r"frame_ms: expected a multiple of 10 from 20 to 655350 .*, got 655360",
        ),
        (
            # Pillow writes identical frames in a row as one of their summed time: it failed
            # with a bare OverflowError past 655350 ms
            lambda p: save_clip_animation(np.ones((1, 3, 3, 3)), p / "a.gif", frame_ms=400000),
            ValueError,
            r"frame_ms: 3 identical frames in a row show as one frame of 1200000 ms, past the "
            r"655350 a GIF holds; expected at most 218450, got 400000",
        ),
    ],
)
def test_plots_name_their_bad_arguments(tmp_path: Path, call, error, message) -> None:
    with pytest.raises(error, match="^" + message):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_history_keys_are_taken_from_every_record(tmp_path: Path, monkeypatch) -> None:
    """Which curves to draw was decided by the first record alone: a test curve recorded from
    the second epoch on was dropped without a word."""
    from rnncu import plots

    history = _history()
    del history[0]["test_loss"]
    figures = []
    saved = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or saved(fig, path))
    plot_history(history, tmp_path / "h.png")
    labels = [line.get_label() for line in figures[0].axes[0].lines]
    assert labels == ["train", "test"]
    assert np.isnan(figures[0].axes[0].lines[1].get_ydata()[0])
    assert png_size(tmp_path / "h.png")[0] > 0
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ValueError, match=r"^path: .*d.png' is a directory, expected a .png"):
        plot_history(history, tmp_path / "d.png")


def test_image_grid_tiles_images_as_dark_ink_on_white(rng: np.random.Generator) -> None:
    """Image i at row i // ncols, column i % ncols, inverted (1 - pixel), white padding and
    white slots after the last image, every pixel a scale x scale block."""
    images = rng.random((5, 3, 4))
    grid = image_grid(images, ncols=2, pad=1, scale=2)
    assert grid.shape == (2 * (3 * 4 + 1), 2 * (2 * 5 + 1))  # 3 rows of 2: the last half full
    cells = grid[::2, ::2]
    np.testing.assert_array_equal(grid, np.kron(cells, np.ones((2, 2))))
    expected = np.ones((13, 11))
    for i, image in enumerate(images):
        top, left = 1 + (i // 2) * 4, 1 + (i % 2) * 5
        expected[top : top + 3, left : left + 4] = 1.0 - image
    np.testing.assert_allclose(cells, expected, rtol=1e-6, atol=1e-7)


def test_history_plot_draws_no_clip_line_without_clipping(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.axes import Axes

    from rnncu import plots

    limits: list[float] = []
    original = Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda self, y=0, *a, **k: limits.append(y) or
                        original(self, y, *a, **k))  # fmt: skip
    figures = []
    saved = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or saved(fig, path))
    history = [dict(r, grad_norm=0.5 * r["epoch"], grad_norm_max=2.0) for r in _history()]
    plot_history(history, tmp_path / "h.png", clip=0.0)
    assert limits == [] and figures[0].axes[2].get_ylabel() == "gradient norm"


@pytest.mark.parametrize("nrows", [1, 3, 10, 20])
@pytest.mark.parametrize("image_shape", [(8, 8), (28, 28), (12, 20), (1, 1)])
def test_grid_size_is_known_before_the_images(
    rng: np.random.Generator, nrows: int, image_shape: tuple[int, int]
) -> None:
    for ncols in (1, 2, 7):
        images = rng.uniform(0, 1, (nrows * ncols, *image_shape))
        assert grid_pixels(nrows, ncols, image_shape) == image_grid(images, ncols).size
    fits = grid_columns_within(nrows, image_shape)  # the most that stay readable, no more
    assert grid_pixels(nrows, fits, image_shape) <= MAX_GRID_PIXELS
    assert grid_pixels(nrows, fits + 1, image_shape) > MAX_GRID_PIXELS
    assert grid_columns_within(10**6, (512, 512)) == 0  # not even one column


def test_a_clip_animation_plays_each_clip_in_its_cell(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Frame t of the GIF is the grid of every clip's frame t, in 8-bit grey, looping, each
    frame shown for frame_ms."""
    from PIL import Image

    clips = rng.random((5, 4, 3, 2))  # 5 clips of 4 frames of 3x2, every frame unlike the last
    path = save_clip_animation(clips, tmp_path / "clips.gif", ncols=3, scale=2, frame_ms=120)
    assert path == tmp_path / "clips.gif"
    with Image.open(path) as animation:
        assert animation.n_frames == 4 and animation.info["loop"] == 0
        for t in range(4):
            animation.seek(t)
            assert animation.info["duration"] == 120
            expected = np.round(image_grid(clips[:, t], 3, scale=2) * 255).astype(np.uint8)
            np.testing.assert_array_equal(np.asarray(animation.convert("L")), expected)
    # the shortest and longest times a GIF holds
    for frame_ms in (GIF_FRAME_MS[0], GIF_FRAME_MS[-1]):
        save_clip_animation(clips, tmp_path / "timed.gif", frame_ms=frame_ms)
        with Image.open(tmp_path / "timed.gif") as animation:
            assert animation.n_frames == 4 and animation.info["duration"] == frame_ms
    # identical frames in a row: one frame of their summed time, up to the longest a GIF holds
    still = np.repeat(clips[:, :1], 3, axis=1)
    save_clip_animation(still, tmp_path / "still.gif", frame_ms=218450)
    with Image.open(tmp_path / "still.gif") as animation:
        assert animation.n_frames == 1 and animation.info["duration"] == 655350
