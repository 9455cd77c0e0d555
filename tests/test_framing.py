"""Framing drawings as the training images are framed (``rnncu predict --center``): the
framing measured from images (``image_framing``), images cropped to their ink, scaled and
centred by mass (``frame_images``) against figures worked out by hand and against the
invariances that define it (place and size), files read so (``read_images``), the framing a
run's checkpoint records, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from saved_runs import resave_checkpoint

from rnncu.checkpoint import RESERVED_META, CheckpointError, load_checkpoint, save_checkpoint
from rnncu.cli import main
from rnncu.data import (
    INK_THRESHOLD,
    Framing,
    ImageDataset,
    frame_images,
    image_framing,
    load_digits,
    load_moving_digits,
    read_images,
)
from rnncu.trainer import load_model, make_config, predict_images, train

pytest.importorskip("matplotlib")
from matplotlib import image as mpimg  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, digits: ImageDataset) -> Path:
    out = tmp_path_factory.mktemp("framing") / "run"
    config = make_config(backend="numpy", hidden=16, epochs=2, batch_size=64, seed=3)
    train(config, data=digits, progress=False, out_dir=out, plots=False)
    return out


def _mass_center(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    mass = image.astype(np.float64)
    return float((ys * mass).sum() / mass.sum()), float((xs * mass).sum() / mass.sum())


# -- the framing of a set of images ---------------------------------------------------------
def test_image_framing_by_hand(rng: np.random.Generator) -> None:
    images = np.zeros((4, 10, 12), dtype=np.float32)
    images[0, 2:6, 3:9] = rng.uniform(0.5, 1, (4, 6))  # box 4 x 6: larger share 6/12 = 0.5
    images[1, 1:9, 5:7] = rng.uniform(0.5, 1, (8, 2))  # 8 x 2: 8/10 = 0.8
    images[2, 0:3, 0:3] = 0.9  # 3 x 3: 0.3
    images[2, 9, 11] = 0.9 * INK_THRESHOLD * 0.99  # too faint to be ink, but it has mass
    # images[3] is blank: left out
    framing = image_framing(images)
    assert framing.extent == pytest.approx(0.5)  # the median of 0.5, 0.8, 0.3
    centers = [_mass_center(images[i]) for i in range(3)]
    assert framing.center == pytest.approx(tuple(np.mean(centers, axis=0)), rel=1e-12)
    with pytest.raises(ValueError, match=r"images: every image is blank"):
        image_framing(np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match=r"images: expected \(N, H, W\), got \(5, 5\)"):
        image_framing(np.zeros((5, 5)))


def test_the_digits_fill_their_height(digits: ImageDataset) -> None:
    """scikit-learn's digits were scaled to fill their 8 rows: an extent of 1, the mass near
    the middle (3.5, 3.5)."""
    framing = image_framing(digits.x_train)
    assert framing.extent == 1.0
    assert framing.center == pytest.approx((3.49, 3.56), abs=0.01)


# -- framing one image ----------------------------------------------------------------------
def test_place_and_size_do_not_matter(digits: ImageDataset, rng: np.random.Generator) -> None:
    """A digit anywhere on a larger dark canvas, and the same digit enlarged by whole
    factors, frame alike: the crop is the same pixels (enlarged: block means, to rounding)."""
    framing = image_framing(digits.x_train)
    images = digits.x_test[:20]
    own = frame_images(images, (8, 8), framing)
    for _ in range(3):
        canvas = np.zeros((20, 30, 25), dtype=np.float32)
        row, col = rng.integers(0, 22), rng.integers(0, 17)
        canvas[:, row : row + 8, col : col + 8] = images
        np.testing.assert_array_equal(frame_images(canvas, (8, 8), framing), own)
    for factor in (2, 3, 5):
        big = np.kron(images, np.ones((factor, factor), dtype=np.float32))
        np.testing.assert_allclose(frame_images(big, (8, 8), framing), own, atol=1e-6)


def test_a_framed_image_by_hand() -> None:
    """A 2 x 4 bar of ink on a 20 x 20 canvas, framed into 10 x 10 with extent 0.8 and the
    centre (3, 6): scaled 2x to 4 x 8 (its width spans 8 of 10), its centre of mass (1.5,
    3.5) put on (3, 6) by a shift of (1.5 -> 2, 2.5 -> 2) whole pixels (NumPy's round
    halves to even)."""
    image = np.zeros((1, 20, 20), dtype=np.float32)
    image[0, 7:9, 5:9] = 1.0
    framed = frame_images(image, (10, 10), Framing(0.8, (3.0, 6.0)))
    assert framed.shape == (1, 10, 10) and framed.dtype == np.float32
    expected = np.zeros((10, 10), dtype=np.float32)
    expected[2:6, 2:10] = 1.0
    np.testing.assert_array_equal(framed[0], expected)


def test_the_ink_stays_inside_and_faint_pixels_are_not_ink() -> None:
    image = np.zeros((2, 12, 12), dtype=np.float32)
    image[0, 3:9, 3:9] = 0.8
    image[0, 0, 11] = 0.8 * INK_THRESHOLD * 0.9  # faint: outside the crop, so dropped
    # a centre in the corner: the ink is pushed as far as it goes, not cut
    framed = frame_images(image, (6, 6), Framing(0.5, (0.0, 5.0), peak=0.8))
    expected = np.zeros((6, 6), dtype=np.float32)
    expected[0:3, 3:6] = 0.8
    np.testing.assert_allclose(framed[0], expected, rtol=1e-6)
    assert not framed[1].any()  # a blank image stays blank
    # the bright pixels of a drawing at full intensity keep it
    assert frame_images(np.ones((1, 3, 3)), (4, 4), Framing(1.0, (1.5, 1.5)))[0].min() == 1


# -- files, checkpoints and the command line -------------------------------------------------
def test_read_images_frames_a_drawing(tmp_path: Path, digits: ImageDataset) -> None:
    """Dark ink on white, 40 x 40, off centre: inverted first, then framed."""
    framing = image_framing(digits.x_train)
    canvas = np.zeros((40, 40), dtype=np.float32)
    canvas[5:37, 2:34] = np.kron(digits.x_test[7], np.ones((4, 4), dtype=np.float32))
    drawing = np.round((1 - canvas) * 255).astype(np.uint8)
    mpimg.imsave(tmp_path / "drawing.png", drawing, cmap="gray", vmin=0, vmax=255)
    read = read_images(tmp_path / "drawing.png", (8, 8), invert=True, framing=framing)
    ink = 1 - drawing.astype(np.float32) / 255  # the 8-bit file's own values
    np.testing.assert_allclose(read, frame_images(ink[None], (8, 8), framing), atol=1e-6)
    clips = load_moving_digits()
    np.save(tmp_path / "clip.npy", clips.x_test[0].reshape(8, 10, 10))
    with pytest.raises(ValueError, match=r"clip.npy: framing crops images to their ink; the "
                       "model reads clips"):  # fmt: skip
        read_images(tmp_path / "clip.npy", (8, 100), (10, 10), framing=framing)


def test_the_run_records_its_framing(run_dir: Path, digits: ImageDataset, tmp_path: Path) -> None:
    framing = image_framing(digits.x_train)
    _, meta = load_checkpoint(run_dir)
    assert meta["data"]["framing"] == {
        "extent": framing.extent,
        "center": list(framing.center),
        "peak": framing.peak,
    }
    assert load_model(run_dir).framing == framing
    arrays, meta = load_checkpoint(run_dir)
    kept = {k: v for k, v in meta.items() if k not in RESERVED_META}
    del kept["data"]["framing"]
    save_checkpoint(tmp_path / "old.npz", arrays, kept)
    assert load_model(tmp_path / "old.npz").framing is None
    for bad in ({"extent": 0, "center": [1, 1], "peak": 1},
                {"extent": 1.5, "center": [1, 1], "peak": 1},
                {"extent": 1, "center": [1], "peak": 1},
                {"extent": 1, "center": [1, "a"], "peak": 1},
                {"extent": True, "center": [1, 1], "peak": 1}, [1, 2],
                {"extent": 1, "center": [1, 1]}, {"extent": 1, "center": [1, 1], "peak": 0},
                {"extent": 1, "center": [1, 1], "peak": 1.5},
                {"extent": 1, "center": [1, 1], "peak": 1, "more": 0}):  # fmt: skip
        kept["data"]["framing"] = bad
        save_checkpoint(tmp_path / "bad.npz", arrays, kept)
        with pytest.raises(CheckpointError, match=r"bad.npz: metadata field 'data.framing': "
                           r"expected \{'extent': a number in \(0, 1\]"):  # fmt: skip
            load_model(tmp_path / "bad.npz")


def test_a_run_of_clips_or_of_blank_images_records_none(tmp_path: Path) -> None:
    clips = load_moving_digits()
    train(make_config(backend="numpy", hidden=8, epochs=1, dataset="moving-digits"),
          data=clips, progress=False, out_dir=tmp_path / "clips", plots=False)  # fmt: skip
    assert "framing" not in load_checkpoint(tmp_path / "clips")[1]["data"]
    assert load_model(tmp_path / "clips").framing is None
    blank = np.zeros((40, 6, 6), dtype=np.float32)
    labels = np.arange(40) % 2
    np.savez(tmp_path / "blank.npz", x=blank, y=labels)
    train(make_config(backend="numpy", hidden=8, epochs=1, dataset=str(tmp_path / "blank.npz")),
          progress=False, out_dir=tmp_path / "blank", plots=False)  # fmt: skip
    assert "framing" not in load_checkpoint(tmp_path / "blank")[1]["data"]


def test_the_command_line_centres(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    canvas = np.zeros((3, 30, 30), dtype=np.float32)
    canvas[:, 4:20, 9:25] = np.kron(digits.x_test[:3], np.ones((2, 2), dtype=np.float32))
    np.save(tmp_path / "placed.npy", canvas)
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "placed.npy"),
                 "--center"]) == 0  # fmt: skip
    records = json.loads(capsys.readouterr().out)["predictions"]
    saved = load_model(run_dir)
    assert saved.framing is not None
    expected = predict_images(saved, frame_images(canvas, (8, 8), saved.framing))
    assert [r["class"] for r in records] == expected["classes"].tolist()
    assert [r["probability"] for r in records] == expected["probabilities"].max(axis=1).tolist()
    # without --center, another size is an error
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "placed.npy")]) == 2
    assert "images of 30x30 pixels, the model was trained on 8x8" in capsys.readouterr().err


def test_the_command_line_s_framing_errors(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    resave_checkpoint(run_dir, tmp_path / "old.npz", lambda _, meta: meta["data"].pop("framing"))
    np.save(tmp_path / "x.npy", digits.x_test[:2])
    assert main(["predict", "--checkpoint", str(tmp_path / "old.npz"), str(tmp_path / "x.npy"),
                 "--center"]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"rnncu: error: --center: {tmp_path / 'old.npz'} does not record where its training "
        "images hold their ink (a checkpoint older than that record, or a run of blank "
        "images): train it again, or on (train --resume with more --epochs writes it)"
    )
    clips = load_moving_digits()
    train(make_config(backend="numpy", hidden=8, epochs=1, dataset="moving-digits"),
          data=clips, progress=False, out_dir=tmp_path / "clips", plots=False)  # fmt: skip
    np.save(tmp_path / "clip.npy", clips.x_test[:1])
    assert main(["predict", "--checkpoint", str(tmp_path / "clips"), str(tmp_path / "clip.npy"),
                 "--center"]) == 2  # fmt: skip
    assert "--center: " in (err := capsys.readouterr().err)
    # said as what it is, not as a checkpoint older than the record (clips record none)
    assert "reads clips, whose frames move: --center frames images" in err


def test_bad_images_shapes_and_framings_are_named() -> None:
    """Pixels outside [0, 1] or NaN would move the ink's box and mass (8-bit integers read
    as saturated ink, an image holding NaN as blank) without a word; a framing's extent of 0
    or above 1 would frame images as specks or cut them."""
    framing = Framing(0.5, (2.0, 2.0))
    nan = np.zeros((1, 5, 5))
    nan[0, 1, 1], nan[0, 2, 2] = 1, np.nan
    eight_bit = np.full((1, 5, 5), 200, dtype=np.uint8)
    for call in (image_framing, lambda x: frame_images(x, (5, 5), framing)):
        with pytest.raises(ValueError, match=r"images: expected pixels in \[0, 1\].*NaN or inf"):
            call(nan)
        with pytest.raises(ValueError, match=r"images: expected pixels in \[0, 1\].*0\.0\.\.200"):
            call(eight_bit)
        with pytest.raises(ValueError, match=r"images: expected pixels in .*-0\.5\.\.-0\.5"):
            call(np.full((1, 5, 5), -0.5))
        with pytest.raises(ValueError, match=r"images: expected \(N, H, W\), got \(5, 5\)"):
            call(np.zeros((5, 5)))
        with pytest.raises(ValueError, match=r"images: expected images of at least 1x1"):
            call(np.zeros((1, 0, 5)))
    with pytest.raises(ValueError, match=r"images: no images \(shape \(0, 5, 5\)\)"):
        image_framing(np.zeros((0, 5, 5)))
    assert frame_images(np.zeros((0, 5, 5)), (3, 4), framing).shape == (0, 3, 4)
    # bool pixels are 0 and 1
    ink = np.zeros((1, 6, 6), dtype=bool)
    ink[0, 1:4, 2:5] = True
    np.testing.assert_array_equal(
        frame_images(ink, (6, 6), framing), frame_images(ink.astype(np.float32), (6, 6), framing)
    )
    for shape in ((0, 5), (5,), (5.5, 5), "55"):
        with pytest.raises(ValueError, match=r"shape: expected \(H, W\), two positive integers"):
            frame_images(np.ones((1, 5, 5)), shape, framing)  # type: ignore[arg-type]
    for extent in (0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"extent: expected a number in \(0, 1\]"):
            Framing(extent, (1.0, 1.0))
    for center in ((1.0,), (1.0, float("inf")), (1.0, "a"), 3.0):
        with pytest.raises(ValueError, match=r"center: expected \(y, x\), two finite numbers"):
            Framing(0.5, center)  # type: ignore[arg-type]
    # NumPy numbers and a list are taken, and kept as Python floats (to_dict is JSON)
    kept = Framing(np.float32(0.5), [np.int64(2), np.float32(2.5)])  # type: ignore[arg-type]
    assert kept == Framing(0.5, (2.0, 2.5)) and type(kept.extent) is float
    assert json.loads(json.dumps(kept.to_dict())) == {
        "extent": 0.5,
        "center": [2.0, 2.5],
        "peak": 1.0,
    }
    for peak in (0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"peak: expected a number in \(0, 1\]"):
            Framing(0.5, (1.0, 1.0), peak)


def test_center_with_resize_is_refused(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    """--center resamples itself: a --resize beside it would do nothing, without a word."""
    np.save(tmp_path / "x.npy", digits.x_test[:2])
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "x.npy"), "--center",
                 "--resize"]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        "rnncu: error: --center resamples each image to the run's size itself: --resize is "
        "not needed with it (give one of them)"
    )


def test_ink_reaches_the_threshold() -> None:
    """A pixel of exactly INK_THRESHOLD of the brightest is ink (at least a tenth)."""
    image = np.zeros((1, 10, 10), dtype=np.float32)
    image[0, 4:6, 4:6] = 1.0
    image[0, 9, 9] = INK_THRESHOLD  # the box: rows and columns 4..9
    assert image_framing(image).extent == pytest.approx(0.6)
    framed = frame_images(image, (10, 10), Framing(0.3, (4.5, 4.5)))
    assert np.count_nonzero(framed[0] == 1) == 1  # the crop 6 x 6 to 3 x 3: one of four lit


def test_the_centre_of_mass_not_the_box_s_lands_on_the_centre(rng: np.random.Generator) -> None:
    """Ink of uneven weight: the framed image's centre of mass lies within half a pixel of
    the framing's centre (its box's centre would not)."""
    framing = Framing(0.5, (10.3, 9.6))
    images = np.zeros((30, 25, 30), dtype=np.float32)
    for image in images:
        h, w = rng.integers(2, 10, size=2)
        row, col = rng.integers(0, 25 - h), rng.integers(0, 30 - w)
        image[row : row + h, col : col + w] = rng.uniform(0.2, 1, (h, w)) ** 4
    framed = frame_images(images, (20, 20), framing)
    for image in framed:
        y, x = _mass_center(image)
        assert abs(y - 10.3) <= 0.5 + 1e-9 and abs(x - 9.6) <= 0.5 + 1e-9


def test_the_scaled_sides_are_rounded() -> None:
    """A 4 x 3 crop scaled by 0.9 * 10 / 4 = 2.25: 9 x 6.75, rounded to 9 x 7 (not cut to
    9 x 6); a 3 x 4 one to 7 x 9."""
    image = np.zeros((2, 12, 12), dtype=np.float32)
    image[0, 2:6, 5:8] = 1.0
    image[1] = image[0].T
    framed = frame_images(image, (10, 10), Framing(0.9, (4.5, 4.5)))
    for one, sides in zip(framed, ((9, 7), (7, 9)), strict=True):
        rows, cols = np.nonzero(one > 0.5)
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == sides


def test_the_framing_is_of_the_whole_training_split(digits: ImageDataset, tmp_path: Path) -> None:
    """Validation images included, as the run's digest is: the record does not depend on
    how the split was drawn, and they are images of the same kind."""
    config = make_config(backend="numpy", hidden=8, epochs=1, val_fraction=0.2, seed=3)
    train(config, data=digits, progress=False, out_dir=tmp_path / "run", plots=False)
    assert load_model(tmp_path / "run").framing == image_framing(digits.x_train)


def test_faint_ink_is_brought_to_the_training_images_contrast(
    digits: ImageDataset, rng: np.random.Generator
) -> None:
    """Thin strokes drawn large come out faint once shrunk: each framed image's brightest
    pixel is the training images' median brightest (``peak``), measured by image_framing."""
    framing = image_framing(digits.x_train)
    assert framing.peak == float(np.median(digits.x_train.max(axis=(1, 2))))
    images = digits.x_test[:30]
    framed = frame_images(images, (8, 8), framing)
    np.testing.assert_allclose(frame_images(images * 0.2, (8, 8), framing), framed, rtol=1e-5)
    np.testing.assert_allclose(framed.max(axis=(1, 2)), framing.peak, rtol=1e-6)
    dim = Framing(framing.extent, framing.center, peak=0.5)
    np.testing.assert_allclose(frame_images(images, (8, 8), dim).max(axis=(1, 2)), 0.5,
                               rtol=1e-6)  # fmt: skip
    some = rng.uniform(0, 1, (5, 9, 7)).astype(np.float32)
    assert frame_images(some, (8, 8), framing).max() <= 1


def test_ink_too_faint_for_float32_is_framed_all_the_same(digits: ImageDataset) -> None:
    """Ink below float32's least number (float64 images, or a drawing scaled down) is ink:
    framed at the training images' contrast like the same drawing at full strength, not a
    division of 0 by 0 (NaN, then a bare "cannot convert float NaN to integer")."""
    framing = image_framing(digits.x_train)
    images = digits.x_test[:30].astype(np.float64)
    framed = frame_images(images, (8, 8), framing)
    for scale in (1e-300, 1e-40):
        np.testing.assert_allclose(
            frame_images(images * scale, (8, 8), framing), framed, rtol=1e-5, atol=1e-7
        )


def test_a_resume_that_trains_writes_an_older_run_s_framing(
    run_dir: Path, tmp_path: Path, digits: ImageDataset
) -> None:
    """What the command line's message for an older checkpoint advises."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    resave_checkpoint(old, old / "checkpoint.npz", lambda _, meta: meta["data"].pop("framing"))
    assert load_model(old).framing is None
    epoch = load_checkpoint(old)[1]["epoch"]
    config = make_config(backend="numpy", hidden=16, epochs=epoch + 1, batch_size=64,
                         seed=3)  # fmt: skip
    train(config, data=digits, progress=False, out_dir=old, resume=old, plots=False)
    assert load_model(old).framing == image_framing(digits.x_train)
