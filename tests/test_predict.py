"""Recognising new images with a saved classify run (a generate run's recognition:
tests/test_generative_recognition.py): the model rebuilt from its checkpoint
alone (``load_model``), ``predict_images`` against the trainer's own evaluation, image files
read as the model takes them (``read_images``: PNG, .npy, .npz; resize, invert), clips, the
command line, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from predict_output import predictions_and_table
from saved_runs import resave_checkpoint
from tiff_files import write_grey_tiff

from rnncu.checkpoint import CheckpointError
from rnncu.cli import main
from rnncu.data import (
    LUMA_WEIGHTS,
    ImageDataset,
    load_digits,
    load_moving_digits,
    read_images,
    resample,
    to_sequences,
)
from rnncu.trainer import (
    BEST_NAME,
    evaluate_run,
    load_model,
    load_run,
    make_config,
    predict_images,
    train,
)

pytest.importorskip("matplotlib")
from matplotlib import image as mpimg  # noqa: E402


def small(**kw) -> dict:
    base = dict(backend="numpy", hidden=16, layers=1, epochs=2, batch_size=64, seed=3)
    return {**base, **kw}


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, digits: ImageDataset) -> Path:
    """A classify run on digits, with a validation split (so a best.npz)."""
    out = tmp_path_factory.mktemp("predict") / "run"
    train(make_config(**small(val_fraction=0.1, epochs=3)), data=digits, progress=False,
          out_dir=out, plots=False)  # fmt: skip
    return out


# -- the model and its predictions ----------------------------------------------------------
def test_predictions_are_the_trainer_s_own(run_dir: Path, digits: ImageDataset) -> None:
    """On the run's test images: the classes evaluate counts as right or wrong, and
    probabilities whose argmax they are; the model is rebuilt without reading the dataset."""
    run, _ = load_run(run_dir)
    expected = run.model.predict(run.x_test)
    result = predict_images(run_dir, digits.x_test)
    assert result["classes"].dtype == np.int64 and result["classes"].shape == (450,)
    np.testing.assert_array_equal(result["classes"], expected)
    probabilities = result["probabilities"]
    assert probabilities.shape == (450, 10) and probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-12)
    assert (probabilities > 0).all()
    np.testing.assert_array_equal(probabilities.argmax(axis=1), result["classes"])
    accuracy = np.mean(result["classes"] == digits.y_test)
    assert accuracy == evaluate_run(run_dir)["test_accuracy"]
    # the softmax of the model's logits
    logits = run.model.forward(run.x_test)  # one batch, as predict_images took them
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, exp / exp.sum(axis=1, keepdims=True),
                               rtol=1e-12)  # fmt: skip


def test_load_model_needs_no_dataset(run_dir: Path, tmp_path: Path, digits: ImageDataset) -> None:
    saved = load_model(run_dir)
    assert saved.image_shape == (8, 8) and saved.frame_shape is None
    assert saved.num_classes == 10 and saved.config.task == "classify"
    assert saved.file == run_dir / "checkpoint.npz"
    assert not saved.model.rnn.training and not saved.model.head.training
    # a run whose dataset path is gone still predicts (evaluate would need --dataset)
    images = tmp_path / "images.npz"
    np.savez(images, x=digits.x_train, y=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)  # fmt: skip
    moved = tmp_path / "moved"
    train(make_config(**small(dataset=str(images), epochs=1)), progress=False, out_dir=moved,
          plots=False)  # fmt: skip
    images.unlink()
    one = predict_images(moved, digits.x_test[0])
    assert one["classes"].shape == (1,) and one["probabilities"].shape == (1, 10)
    # the best epoch's checkpoint too, and a model loaded once for many calls
    best = load_model(run_dir / BEST_NAME)
    assert best.file == run_dir / BEST_NAME
    np.testing.assert_array_equal(
        predict_images(best, digits.x_test)["classes"],
        load_run(run_dir / BEST_NAME)[0].model.predict(load_run(run_dir)[0].x_test),
    )


def test_images_as_datasets_take_them(run_dir: Path, digits: ImageDataset) -> None:
    """8-bit integers are intensities, bools 0 and 1, one image (H, W) a stack of one."""
    saved = load_model(run_dir)
    as_bytes = np.round(digits.x_test[:20] * 255).astype(np.uint8)
    from_bytes = predict_images(saved, as_bytes)["probabilities"]
    np.testing.assert_array_equal(
        from_bytes, predict_images(saved, as_bytes.astype(np.float32) / 255)["probabilities"]
    )
    binary = digits.x_test[:20] > 0.5
    np.testing.assert_array_equal(
        predict_images(saved, binary)["probabilities"],
        predict_images(saved, binary.astype(np.float32))["probabilities"],
    )
    one = predict_images(saved, digits.x_test[3])["probabilities"]
    np.testing.assert_array_equal(one, predict_images(saved, digits.x_test[3:4])["probabilities"])


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 8, 9), np.float32), r"images: expected \(N, 8, 8\) or one image \(8, 8\), "
         r"the size the model was trained on, got shape \(2, 8, 9\)"),
        (np.zeros((0, 8, 8), np.float32), r"got shape \(0, 8, 8\)"),
        (np.zeros((64,), np.float32), r"got shape \(64,\)"),
        (np.full((1, 8, 8), np.nan, np.float32), r"images: float images must lie in \[0, 1\], "
         r"the array holds NaN or inf"),
        (np.full((1, 8, 8), 2.0), r"float images must lie in \[0, 1\], found 2.0..2.0"),
        (np.full((1, 8, 8), 300, np.int32), r"integer images must lie in 0..255"),
    ],
)  # fmt: skip
def test_bad_images_are_named(run_dir: Path, images: np.ndarray, message: str) -> None:
    saved = load_model(run_dir)
    with pytest.raises(ValueError, match=message):
        predict_images(saved, images)


def test_a_list_is_not_taken_for_an_array(run_dir: Path) -> None:
    with pytest.raises(TypeError, match=r"images: expected a NumPy array, got list"):
        predict_images(run_dir, [[0.0] * 8] * 8)


def test_a_checkpoint_without_its_data_fields_is_refused(run_dir: Path, tmp_path: Path) -> None:
    resave_checkpoint(
        run_dir, tmp_path / "bare.npz", lambda _, meta: meta["data"].pop("num_classes")
    )
    with pytest.raises(CheckpointError, match=r"bare.npz: metadata field 'data' lacks "
                       "num_classes: the model cannot be rebuilt"):  # fmt: skip
        load_model(tmp_path / "bare.npz")
    # a seq_shape of pixels, in a rows run
    resave_checkpoint(
        run_dir, tmp_path / "other.npz", lambda _, meta: meta["data"].update(seq_shape=[64, 1])
    )
    with pytest.raises(CheckpointError, match=r"'data.seq_shape': \[64, 1\] is not the 'rows' "
                       r"view of 8x8 images \[8, 8\]"):  # fmt: skip
        load_model(tmp_path / "other.npz")


@pytest.mark.parametrize(
    ("seq", "dtype"), [("pixels", "float32"), ("permuted", "float32"), ("rows", "float64")]
)
def test_every_view_reads_the_images_as_it_was_trained(
    tmp_path: Path, digits: ImageDataset, seq: str, dtype: str
) -> None:
    out = tmp_path / seq
    train(make_config(**small(seq=seq, dtype=dtype, epochs=1)), data=digits, progress=False,
          out_dir=out, plots=False)  # fmt: skip
    run, _ = load_run(out)
    np.testing.assert_array_equal(
        predict_images(out, digits.x_test)["classes"], run.model.predict(run.x_test)
    )


def test_a_saved_backend_is_overridden(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    """A run saved with backend 'cupy' (trained on a GPU) recognises on the backend asked
    for: load_model's, predict_images' and the command's --backend."""
    resave_checkpoint(
        run_dir, tmp_path / "gpu.npz", lambda _, meta: meta["config"].update(backend="cupy")
    )
    expected = predict_images(run_dir, digits.x_test[:5])
    saved = load_model(tmp_path / "gpu.npz", backend="numpy")
    assert saved.model.backend.name == "numpy" and saved.config.backend == "numpy"
    result = predict_images(tmp_path / "gpu.npz", digits.x_test[:5], backend="numpy")
    np.testing.assert_array_equal(result["probabilities"], expected["probabilities"])
    np.save(tmp_path / "five.npy", digits.x_test[:5])
    argv = ["predict", "--checkpoint", str(tmp_path / "gpu.npz"), str(tmp_path / "five.npy")]
    assert main([*argv, "--backend", "numpy"]) == 0
    printed = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["class"] for r in printed] == expected["classes"].tolist()


def test_a_loaded_model_keeps_its_backend(run_dir: Path, digits: ImageDataset) -> None:
    """A backend given with a loaded model would be ignored without a word: refused."""
    saved = load_model(run_dir, backend="numpy")
    with pytest.raises(ValueError, match=r"backend: 'cupy' given with a loaded model \(on "
                       r"numpy\); load_model\(path, backend=...\) chooses it"):  # fmt: skip
        predict_images(saved, digits.x_test[:2], backend="cupy")


def test_batches_give_the_probabilities_of_one(run_dir: Path, digits: ImageDataset) -> None:
    saved = load_model(run_dir)
    whole = predict_images(saved, digits.x_test)["probabilities"]
    batched = predict_images(saved, digits.x_test, batch_size=7)["probabilities"]
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"batch_size: expected a positive integer, got 0"):
        predict_images(saved, digits.x_test, batch_size=0)


def test_probabilities_of_large_logits_are_finite(run_dir: Path, digits: ImageDataset) -> None:
    """The softmax is taken of the logits less their maximum: exp of a logit past ~709
    overflows float64, and inf / inf would be NaN."""
    saved = load_model(run_dir)
    saved.model.head.params["bias"][3] += 1000
    result = predict_images(saved, digits.x_test[:5])
    assert np.isfinite(result["probabilities"]).all()
    assert result["classes"].tolist() == [3] * 5
    np.testing.assert_array_equal(result["probabilities"][:, 3], 1)


def test_clips_are_recognised_as_the_run_was_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    clips = load_moving_digits()
    out = tmp_path / "clips"
    train(make_config(**small(dataset="moving-digits", epochs=1)), data=clips, progress=False,
          out_dir=out, plots=False)  # fmt: skip
    saved = load_model(out)
    assert saved.frame_shape == (10, 10) and saved.image_shape == (8, 100)
    run, _ = load_run(out)
    expected = run.model.predict(run.x_test)
    held = clips.x_test  # (N, 8, 100), as datasets hold clips
    np.testing.assert_array_equal(predict_images(saved, held)["classes"], expected)
    framed = held.reshape(-1, 8, 10, 10)
    np.testing.assert_array_equal(predict_images(saved, framed)["classes"], expected)
    one = predict_images(saved, framed[7])
    assert one["classes"].tolist() == [expected[7]]
    # from files: a .npy of clips (N, T, H, W) and one clip (T, H, W)
    np.save(tmp_path / "clips.npy", framed[:5])
    np.testing.assert_array_equal(
        read_images(tmp_path / "clips.npy", saved.image_shape, saved.frame_shape), held[:5]
    )
    np.save(tmp_path / "one.npy", framed[0])
    assert read_images(tmp_path / "one.npy", (8, 100), (10, 10)).shape == (1, 8, 100)
    np.save(tmp_path / "short.npy", framed[:2, :5])
    with pytest.raises(ValueError, match=r"short.npy: clips of 5 frames .* trained on clips of 8"):
        read_images(tmp_path / "short.npy", (8, 100), (10, 10))
    mpimg.imsave(tmp_path / "frame.png", np.stack([framed[0, 0]] * 3, axis=-1))
    with pytest.raises(ValueError, match=r"frame.png: the PNG holds one image, the model reads "
                       r"clips of 8 frames: give an animation \(GIF, PNG, WebP\) or a TIFF of 8 "
                       r"frames, or arrays \(N, T, H, W\) as .npy or .npz$"):  # fmt: skip
        read_images(tmp_path / "frame.png", (8, 100), (10, 10))
    # frames of another size, resampled frame by frame
    big = np.kron(framed[:3], np.ones((1, 1, 2, 2), np.float32))
    np.save(tmp_path / "big.npy", big)
    np.testing.assert_array_equal(
        read_images(tmp_path / "big.npy", (8, 100), (10, 10), resize=True), held[:3]
    )
    with pytest.raises(ValueError, match=r"big.npy: frames of 20x20 pixels, the model was "
                       "trained on 10x10"):  # fmt: skip
        read_images(tmp_path / "big.npy", (8, 100), (10, 10))
    # the command line, on a clip as a TIFF's pages (8-bit: its pixels in 255ths)
    from PIL import Image

    quantized = np.round(framed[7] * 255).astype(np.uint8)
    pages = [Image.fromarray(frame, "L") for frame in quantized]
    pages[0].save(tmp_path / "clip.tif", save_all=True, append_images=pages[1:])
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "clip.tif")]) == 0
    printed = json.loads(capsys.readouterr().out)["predictions"]
    expected_one = predict_images(saved, (quantized / 255).astype(np.float32))
    assert [r["class"] for r in printed] == expected_one["classes"].tolist()
    assert printed[0]["probability"] == pytest.approx(float(expected_one["probabilities"].max()))


# -- files --------------------------------------------------------------------------------------
def test_png_grey_written_as_colour_reads_exactly(tmp_path: Path, digits: ImageDataset) -> None:
    image = np.round(digits.x_test[0] * 255).astype(np.uint8)
    mpimg.imsave(tmp_path / "grey.png", np.stack([image] * 3, axis=-1))  # RGBA, opaque
    read = read_images(tmp_path / "grey.png", (8, 8))
    assert read.shape == (1, 8, 8) and read.dtype == np.float32
    np.testing.assert_array_equal(read[0], image.astype(np.float32) / 255)


def test_png_colour_reads_as_its_luminance(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mpimg.imsave(tmp_path / "colour.png", rgb)
    read = read_images(tmp_path / "colour.png", (8, 8))[0]
    expected = (rgb / 255) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(read, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(read, rgb[..., 0] / 255)


def test_png_with_transparent_pixels_is_refused(tmp_path: Path) -> None:
    rgba = np.ones((8, 8, 4), np.float32)
    rgba[2, 3, 3] = 0.5
    mpimg.imsave(tmp_path / "clear.png", rgba)
    with pytest.raises(ValueError, match=r"clear.png: the PNG has transparent pixels"):
        read_images(tmp_path / "clear.png", (8, 8))
    # any alpha short of opaque, 254 of 255 too
    nearly = np.full((8, 8, 4), 255, np.uint8)
    nearly[5, 1, 3] = 254
    mpimg.imsave(tmp_path / "nearly.png", nearly)
    with pytest.raises(ValueError, match=r"nearly.png: the PNG has transparent pixels"):
        read_images(tmp_path / "nearly.png", (8, 8))


def test_suffixes_are_read_in_any_case(tmp_path: Path, digits: ImageDataset) -> None:
    image = np.round(digits.x_test[0] * 255).astype(np.uint8)
    mpimg.imsave(tmp_path / "SCAN.PNG", np.stack([image] * 3, axis=-1))
    np.testing.assert_array_equal(
        read_images(tmp_path / "SCAN.PNG", (8, 8))[0], image / np.float32(255)
    )
    np.save(tmp_path / "a.npy", digits.x_test[:2])
    (tmp_path / "a.npy").rename(tmp_path / "A.NPY")
    np.testing.assert_array_equal(read_images(tmp_path / "A.NPY", (8, 8)), digits.x_test[:2])


def test_a_broken_png_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"broken.png: cannot read PNG"):
        read_images(tmp_path / "broken.png", (8, 8))


def test_arrays_from_npy_and_npz(tmp_path: Path, digits: ImageDataset) -> None:
    np.save(tmp_path / "one.npy", digits.x_test[0])
    np.save(tmp_path / "many.npy", digits.x_test[:5])
    np.savez(tmp_path / "many.npz", x=np.round(digits.x_test[:5] * 255).astype(np.uint8))
    assert read_images(tmp_path / "one.npy", (8, 8)).shape == (1, 8, 8)
    np.testing.assert_array_equal(read_images(tmp_path / "many.npy", (8, 8)), digits.x_test[:5])
    np.testing.assert_allclose(read_images(tmp_path / "many.npz", (8, 8)), digits.x_test[:5],
                               atol=0.5 / 255)  # fmt: skip
    np.savez(tmp_path / "nox.npz", images=digits.x_test[:5])
    with pytest.raises(ValueError, match=r"nox.npz: .npz lacks x, the images \(it holds images\)"):
        read_images(tmp_path / "nox.npz", (8, 8))
    np.save(tmp_path / "objects.npy", np.array([object()], dtype=object))
    with pytest.raises(ValueError, match=r"objects.npy: the .npy holds Python objects"):
        read_images(tmp_path / "objects.npy", (8, 8))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk.npy: not a .npy file \(truncated, corrupt or "
                       r"another kind of file\)"):  # fmt: skip
        read_images(tmp_path / "junk.npy", (8, 8))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "many.npy").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut.npy: cannot read .npy"):
        read_images(tmp_path / "cut.npy", (8, 8))
    (tmp_path / "zipped.npy").write_bytes((tmp_path / "many.npz").read_bytes())
    with pytest.raises(ValueError, match=r"zipped.npy: an .npz archive, not a .npy file: name "
                       r"it .npz"):  # fmt: skip
        read_images(tmp_path / "zipped.npy", (8, 8))
    np.save(tmp_path / "flat.npy", digits.x_test[:5].reshape(5, 64))
    # (5, 64) would read as one image of 5x64 pixels: refused as flat images, not for its size
    # (--resize would otherwise make one image of them)
    flat = r"flat.npy: an array of shape \(5, 64\) would read as one image of 5x64 pixels: flat"
    with pytest.raises(ValueError, match=flat + r" images\? give them as \(N, 8, 8\)"):
        read_images(tmp_path / "flat.npy", (8, 8))
    np.save(tmp_path / "deep.npy", digits.x_test[:5, None])
    with pytest.raises(ValueError, match=r"deep.npy: expected images \(H, W\) or \(N, H, W\), "
                       r"got an array of shape \(5, 1, 8, 8\)"):  # fmt: skip
        read_images(tmp_path / "deep.npy", (8, 8))
    with pytest.raises(ValueError, match=r"x.svg: expected a .png, .jpg, .jpeg, .bmp, .gif, "
                       r".webp, .tif, .tiff, .npy, .npz file, got 'x.svg'"):  # fmt: skip
        read_images(tmp_path / "x.svg", (8, 8))
    with pytest.raises(FileNotFoundError, match=r"gone.npy: no such file"):
        read_images(tmp_path / "gone.npy", (8, 8))


@pytest.mark.parametrize("resize", [False, True])
def test_arrays_laid_out_otherwise_are_not_taken_for_other_sizes(
    tmp_path: Path, digits: ImageDataset, resize: bool
) -> None:
    """Flat images (N, H*W) would read as one image of N x H*W pixels, colour channels last
    (H, W, C) as H images C pixels wide: refused, with --resize too (which would otherwise
    recognise wrong pixels without a word), not sent to --resize by the size message."""
    np.savez(tmp_path / "flat.npz", x=digits.x_test[:5].reshape(5, 64), y=digits.y_test[:5])
    with pytest.raises(ValueError, match=r"flat.npz: an array of shape \(5, 64\) would read as "
                       r"one image of 5x64 pixels: flat images\? give them as \(N, 8, 8\) "
                       r"\(x.reshape\(-1, 8, 8\)\)"):  # fmt: skip
        read_images(tmp_path / "flat.npz", (8, 8), resize=resize)
    for channels in (1, 3, 4):
        np.save(tmp_path / "hwc.npy", np.stack([digits.x_test[0]] * channels, axis=-1))
        message = (
            rf"hwc.npy: an array of shape \(8, 8, {channels}\) would read as images of "
            rf"8x{channels} pixels: is its last axis colour channels\? give grey images "
            r"\(H, W\) or \(N, H, W\)"
        )
        with pytest.raises(ValueError, match=message):
            read_images(tmp_path / "hwc.npy", (8, 8), resize=resize)
    frames = load_moving_digits().x_test[:2].reshape(2, 8, 10, 10)
    np.save(tmp_path / "tchw.npy", np.stack([frames[0]] * 3, axis=-1))
    message = (
        r"tchw.npy: an array of shape \(8, 10, 10, 3\) would read as frames of 10x3 pixels: is "
        r"its last axis colour channels\?"
    )
    with pytest.raises(ValueError, match=message):
        read_images(tmp_path / "tchw.npy", (8, 100), (10, 10), resize=resize)
    # images as wide as a channel axis would be, for a model of such images, are images
    np.save(tmp_path / "narrow.npy", np.zeros((5, 8, 3), np.float32))
    assert read_images(tmp_path / "narrow.npy", (8, 3), resize=resize).shape == (5, 8, 3)


def test_clips_as_datasets_hold_them_are_read_as_clips(tmp_path: Path) -> None:
    """(N, T, h*w), as datasets hold clips (and predict_images takes them), is N clips, also
    where N == T (it read as one clip of T frames of T x h*w pixels, which --resize
    recognised as one clip of wrong pixels); messages quote the file's own shape."""
    held = load_moving_digits().x_test
    for n in (5, 8):
        np.save(tmp_path / "held.npy", held[:n])
        for resize in (False, True):
            read = read_images(tmp_path / "held.npy", (8, 100), (10, 10), resize=resize)
            np.testing.assert_array_equal(read, held[:n])
    np.save(tmp_path / "images.npy", held[:4, 0].reshape(4, 10, 10))
    with pytest.raises(ValueError, match=r"images.npy: clips of 4 frames \(shape \(4, 10, 10\)\), "
                       r"the model was trained on clips of 8"):  # fmt: skip
        read_images(tmp_path / "images.npy", (8, 100), (10, 10))
    np.save(tmp_path / "none.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match=r"none.npy: no images \(shape \(0, 8\)\)"):
        read_images(tmp_path / "none.npy", (8, 8), resize=True)


@pytest.mark.parametrize(
    ("suffix", "options"),
    [(".gif", {}), (".png", {}), (".webp", {"lossless": True}), (".tif", {})],
    ids=["gif", "apng", "webp", "tiff"],
)
def test_a_clip_is_read_from_an_animation_or_a_tiff_s_pages(
    tmp_path: Path, rng: np.random.Generator, suffix: str, options: dict
) -> None:
    """A run of clips took them as arrays alone: an animated GIF, PNG or WebP, or a TIFF's
    pages, of the model's count of frames is one clip, each frame read as a picture is (the
    GIF's later frames as Pillow composes them, in colour), and sized or inverted as arrays
    are. Another count of frames is refused, naming both counts; a model of images still
    refuses more than one frame."""
    from PIL import Image

    clip = rng.integers(0, 256, (8, 10, 10), dtype=np.uint8)  # frames all unlike: none merged
    frames = [Image.fromarray(frame, "L") for frame in clip]
    file = tmp_path / f"clip{suffix}"
    frames[0].save(file, save_all=True, append_images=frames[1:], **options)
    read = read_images(file, (8, 100), (10, 10))
    np.testing.assert_array_equal(read, (clip / 255).astype(np.float32).reshape(1, 8, 100))
    np.save(tmp_path / "clip.npy", clip)
    for kwargs in ({"resize": True}, {"resize": True, "invert": True}):
        np.testing.assert_array_equal(
            read_images(file, (8, 36), (6, 6), **kwargs),
            read_images(tmp_path / "clip.npy", (8, 36), (6, 6), **kwargs),
        )
    frames[0].save(tmp_path / f"short{suffix}", save_all=True, append_images=frames[1:5], **options)
    # GIF and WebP writers merge a frame that repeats the one before (APNG ones did: Pillow
    # before 10.4), and the message says so
    merged = r" \(its writer may have merged frames that repeat the one before\)"
    hint = merged if suffix in (".gif", ".webp", ".png") else ""
    with pytest.raises(ValueError, match=rf"short{suffix}: the \w+ holds 5 frames{hint}, the "
                       r"model reads clips of 8 frames: give an animation"):  # fmt: skip
        read_images(tmp_path / f"short{suffix}", (8, 100), (10, 10))
    still = [frames[0], frames[1], frames[1], *frames[2:7]]  # 8 frames, the third a repeat
    still[0].save(tmp_path / f"still{suffix}", save_all=True, append_images=still[1:], **options)
    with Image.open(tmp_path / f"still{suffix}") as written:
        kept = written.n_frames  # 7 where the writer merged the repeat
    if kept == 8:
        assert read_images(tmp_path / f"still{suffix}", (8, 100), (10, 10)).shape == (1, 8, 100)
    else:
        assert suffix in (".gif", ".webp", ".png") and kept == 7
        with pytest.raises(ValueError, match=rf"still{suffix}: the \w+ holds 7 frames{merged}"):
            read_images(tmp_path / f"still{suffix}", (8, 100), (10, 10))
    with pytest.raises(ValueError, match=rf"clip{suffix}: the \w+ holds 8 frames \(an animation "
                       r"or pages\): give one image$"):  # fmt: skip
        read_images(file, (10, 10))


def test_a_clip_s_frames_are_each_checked(tmp_path: Path, rng: np.random.Generator) -> None:
    """Each frame of an animation is refused as a picture would be (a transparent pixel,
    named with its frame), and frames of two sizes (a TIFF's pages) are no clip."""
    from PIL import Image

    clip = rng.integers(0, 256, (3, 10, 10), dtype=np.uint8)
    frames = [Image.fromarray(frame, "L").convert("RGBA") for frame in clip]
    frames[2].putpixel((4, 4), (9, 9, 9, 0))
    frames[0].save(tmp_path / "seen.png", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=r"seen.png: frame 3 of 3: the PNG has transparent "
                       r"pixels"):  # fmt: skip
        read_images(tmp_path / "seen.png", (3, 100), (10, 10))
    small = Image.fromarray(clip[1, :8, :9], "L")
    Image.fromarray(clip[0], "L").save(tmp_path / "pages.tif", save_all=True,
                                       append_images=[small, small])  # fmt: skip
    with pytest.raises(ValueError, match=r"pages.tif: frame 2 of 3: its frames differ in size: "
                       r"10x10 \(frame 1\) and 8x9 \(frame 2\)$"):  # fmt: skip
        read_images(tmp_path / "pages.tif", (3, 100), (10, 10), resize=True)
    # pages of a grey, a colour and a 16-bit grey picture: one clip, colour by its luminance
    colour = np.stack([clip[1], clip[2], clip[0]], axis=-1)
    deep = clip[2].astype(np.uint16) * 257
    Image.fromarray(clip[0], "L").save(tmp_path / "mixed.tif", save_all=True,
                                       append_images=[Image.fromarray(colour, "RGB"),
                                                      Image.fromarray(deep)])  # fmt: skip
    luma = np.clip((colour / 255) @ np.asarray(LUMA_WEIGHTS), 0, 1)
    np.testing.assert_array_equal(
        read_images(tmp_path / "mixed.tif", (3, 100), (10, 10)),
        np.stack([clip[0] / 255, luma, clip[2] / 255]).astype(np.float32).reshape(1, 3, 100),
    )


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_a_clip_is_turned_as_its_exif_says(
    tmp_path: Path, rng: np.random.Generator, suffix: str
) -> None:
    """An animation's EXIF orientation (one for the file) turns each of its frames: a clip
    stored as the sensor saw it reads upright, as a picture does."""
    from PIL import Image

    clip = rng.integers(0, 256, (3, 6, 8), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter anticlockwise: turned back clockwise
    frames = [Image.fromarray(frame, "L") for frame in clip]
    file = tmp_path / f"turned{suffix}"
    frames[0].save(file, save_all=True, append_images=frames[1:], exif=exif.tobytes(),
                   lossless=True)  # fmt: skip
    upright = np.stack([np.rot90(frame, -1) for frame in clip])
    np.testing.assert_array_equal(
        read_images(file, (3, 48), (8, 6)),
        (upright / 255).astype(np.float32).reshape(1, 3, 48),
    )


@pytest.mark.parametrize("shape", [(9, 8), (8, 9), (7, 8), (8, 7)])
def test_another_height_or_width_alone_is_another_size(
    tmp_path: Path, shape: tuple[int, int]
) -> None:
    np.save(tmp_path / "odd.npy", np.zeros((2, *shape), np.float32))
    with pytest.raises(ValueError, match=rf"odd.npy: images of {shape[0]}x{shape[1]} pixels, "
                       "the model was trained on 8x8"):  # fmt: skip
        read_images(tmp_path / "odd.npy", (8, 8))
    assert read_images(tmp_path / "odd.npy", (8, 8), resize=True).shape == (2, 8, 8)
    np.save(tmp_path / "odd.npy", np.zeros((2, 8, *shape), np.float32))
    with pytest.raises(ValueError, match=rf"odd.npy: frames of {shape[0]}x{shape[1]} pixels, "
                       "the model was trained on 8x8"):  # fmt: skip
        read_images(tmp_path / "odd.npy", (8, 64), (8, 8))


def test_a_file_of_no_images_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "none.npy", np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"none.npy: no images \(shape \(0, 8, 8\)\)"):
        read_images(tmp_path / "none.npy", (8, 8))
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 8, 10, 10), np.float32))
    with pytest.raises(ValueError, match=r"none.npz: no images \(shape \(0, 8, 10, 10\)\)"):
        read_images(tmp_path / "none.npz", (8, 100), (10, 10))


def test_resize_and_invert(tmp_path: Path, digits: ImageDataset) -> None:
    image = digits.x_test[4]
    big = np.kron(image, np.ones((4, 4), np.float32))  # 32x32, each pixel a 4x4 block
    mpimg.imsave(tmp_path / "big.png", big, cmap="gray", vmin=0, vmax=1)
    with pytest.raises(ValueError, match=r"big.png: images of 32x32 pixels, the model was "
                       r"trained on 8x8 \(resize them first, or resample with resize=True, "
                       r"--resize\)"):  # fmt: skip
        read_images(tmp_path / "big.png", (8, 8))
    np.save(tmp_path / "big.npy", big)
    np.testing.assert_array_equal(read_images(tmp_path / "big.npy", (8, 8), resize=True)[0], image)
    # the PNG's 8-bit grey (through a colour map) lands within a step of it
    from_png = read_images(tmp_path / "big.png", (8, 8), resize=True)[0]
    np.testing.assert_allclose(from_png, image, atol=1.5 / 255)
    dark_on_light = 1 - image
    np.save(tmp_path / "drawn.npy", dark_on_light)
    np.testing.assert_allclose(read_images(tmp_path / "drawn.npy", (8, 8), invert=True)[0], image,
                               atol=1e-7)  # fmt: skip


def test_resample_averages_areas(rng: np.random.Generator) -> None:
    x = rng.random((3, 6, 9), dtype=np.float32)
    # to a third: each pixel the mean of a 3x3 block; back up: the blocks repeated
    small_ = resample(x, (2, 3))
    np.testing.assert_allclose(small_, x.reshape(3, 2, 3, 3, 3).mean(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_array_equal(resample(small_, (6, 9)), np.kron(small_, np.ones((3, 3))))
    # a size that divides unevenly keeps the mean of the image (each old pixel weighs alike)
    odd = resample(x, (4, 7))
    np.testing.assert_allclose(odd.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)
    assert resample(x, (6, 9)).tobytes() == x.tobytes()


# -- the command line -----------------------------------------------------------------------
def test_the_command_line_lists_each_image_s_classes(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "three.npy", digits.x_test[:3])
    image = np.round(digits.x_test[3] * 255).astype(np.uint8)
    mpimg.imsave(tmp_path / "one.png", np.stack([image] * 3, axis=-1))
    code = main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "three.npy"),
                 str(tmp_path / "one.png"), "--top", "2", "--backend", "numpy"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpoint"] == str(run_dir / "checkpoint.npz")
    records = printed["predictions"]
    assert [(r["file"], r["index"]) for r in records] == [
        (str(tmp_path / "three.npy"), 0),
        (str(tmp_path / "three.npy"), 1),
        (str(tmp_path / "three.npy"), 2),
        (str(tmp_path / "one.png"), 0),
    ]
    expected = predict_images(run_dir, np.concatenate([digits.x_test[:3], image[None] / 255]))
    for record, cls, p in zip(records, expected["classes"], expected["probabilities"],
                              strict=True):  # fmt: skip
        assert record["class"] == cls and record["probability"] == p[cls]
        assert len(record["top"]) == 2 and record["top"][0] == {"class": cls,
                                                                "probability": p[cls]}  # fmt: skip
        second = record["top"][1]
        assert second["probability"] == np.sort(p)[-2] and second["class"] != cls
    # more classes asked for than there are: all of them
    main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "three.npy"), "--top", "50"])
    assert len(json.loads(capsys.readouterr().out)["predictions"][0]["top"]) == 10


def test_the_command_line_s_errors_are_one_line(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "good.npy", digits.x_test[:3])
    np.save(tmp_path / "big.npy", np.kron(digits.x_test[:2], np.ones((2, 2), np.float32)))
    # a bad file anywhere fails before anything is printed
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "good.npy"),
                 str(tmp_path / "big.npy")]) == 2  # fmt: skip
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        f"rnncu: error: {tmp_path / 'big.npy'}: images of 16x16 pixels, the model was trained "
        "on 8x8 (resize them first, or resample with resize=True, --resize)"
    )
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "big.npy"),
                 "--resize"]) == 0  # fmt: skip
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
    assert (
        main(["predict", "--checkpoint", str(tmp_path / "none"), str(tmp_path / "good.npy")]) == 2
    )
    assert "rnncu: error:" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(run_dir)]) == 2  # no image given
    assert "the following arguments are required: FILE" in capsys.readouterr().err


def test_to_sequences_of_what_read_images_gives_is_what_training_reads(
    digits: ImageDataset, tmp_path: Path
) -> None:
    np.save(tmp_path / "t.npy", digits.x_test)
    np.testing.assert_array_equal(
        to_sequences(read_images(tmp_path / "t.npy", (8, 8)), "rows"),
        to_sequences(digits.x_test, "rows"),
    )


def test_the_command_line_s_table_is_the_json_s_figures(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "four.npy", digits.x_test[:4])
    command = ["predict", "--checkpoint", str(run_dir), str(tmp_path / "four.npy"), "--top", "2"]
    records, lines = predictions_and_table(command, capsys)
    assert lines[0].split() == ["file", "index", "class", "probability", "top"]
    assert len(records) == 4
    for line, record in zip(lines[1:], records, strict=True):
        assert line.split()[:4] == [
            str(tmp_path / "four.npy"),
            str(record["index"]),
            str(record["class"]),
            f"{record['probability']:.4f}",
        ]
        listed = ", ".join(f"{t['class']} ({t['probability']:.4f})" for t in record["top"])
        assert line.endswith(listed)
        # the columns line up: each starts where the header's does
        assert line.index(f" {record['class']} ") + 1 == lines[0].index("class")


# -- JPEG -----------------------------------------------------------------------------------
def test_jpeg_grey_and_colour_read_as_pillow_decodes_them(
    tmp_path: Path, digits: ImageDataset, rng: np.random.Generator
) -> None:
    from PIL import Image

    grey = np.round(digits.x_test[5] * 255).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.jpg", quality=95)
    decoded = np.asarray(Image.open(tmp_path / "grey.jpg"), dtype=np.float64) / 255
    read = read_images(tmp_path / "grey.jpg", (8, 8))
    assert read.shape == (1, 8, 8) and read.dtype == np.float32
    np.testing.assert_array_equal(read[0], decoded.astype(np.float32))
    assert np.abs(read[0] - digits.x_test[5]).max() < 0.1  # lossy, but the digit's
    colour = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour, "RGB").save(tmp_path / "colour.JPEG", quality=95)
    rgb = np.asarray(Image.open(tmp_path / "colour.JPEG"), dtype=np.float64) / 255
    expected = (rgb @ np.array([0.299, 0.587, 0.114])).astype(np.float32)
    np.testing.assert_allclose(read_images(tmp_path / "colour.JPEG", (8, 8))[0], expected,
                               rtol=1e-6)  # fmt: skip


def test_jpeg_is_turned_upright_as_its_exif_says(tmp_path: Path, rng: np.random.Generator) -> None:
    """Orientation 6: the stored pixels are to be turned 90 degrees clockwise."""
    from PIL import Image

    stored = rng.integers(0, 256, (8, 12), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored, "L").save(tmp_path / "phone.jpg", quality=95, exif=exif)
    decoded = np.asarray(Image.open(tmp_path / "phone.jpg"), dtype=np.float64) / 255
    read = read_images(tmp_path / "phone.jpg", (12, 8))
    np.testing.assert_array_equal(read[0], np.rot90(decoded, k=-1).astype(np.float32))


@pytest.mark.parametrize("orientation", range(10))
def test_jpeg_is_turned_as_pillow_turns_each_exif_orientation(
    tmp_path: Path, rng: np.random.Generator, orientation: int
) -> None:
    """Mirrored, turned, or both (2 to 8), as ImageOps.exif_transpose turns them; 1 and the
    values EXIF does not define leave the pixels as stored."""
    from PIL import Image, ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rng.integers(0, 256, (6, 9), dtype=np.uint8), "L").save(
        tmp_path / "o.jpg", quality=95, exif=exif
    )
    with Image.open(tmp_path / "o.jpg") as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened), dtype=np.float64) / 255
    read = read_images(tmp_path / "o.jpg", upright.shape)
    np.testing.assert_array_equal(read[0], upright.astype(np.float32))


def test_a_jpeg_with_an_exif_tag_pillow_cannot_write_back_is_read(tmp_path: Path) -> None:
    """HalftoneHints (0x0141, two integers) held as text, as a camera may write it: Pillow's
    exif_transpose fails writing the EXIF back; the pixels decode, and are turned."""
    from PIL import Image

    stored = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0110] = "Model"  # ASCII, renamed below to the tag that takes two integers
    Image.fromarray(stored, "L").save(tmp_path / "w.jpg", quality=95, exif=exif)
    data = (tmp_path / "w.jpg").read_bytes()
    start = data.index(b"Exif\0\0")
    renamed = data[start:].replace(b"\x01\x10\x00\x02", b"\x01\x41\x00\x02", 1)
    assert renamed != data[start:]
    (tmp_path / "odd.jpg").write_bytes(data[:start] + renamed)
    with Image.open(tmp_path / "w.jpg") as opened:
        decoded = np.asarray(opened, dtype=np.float64) / 255
    read = read_images(tmp_path / "odd.jpg", (8, 6))
    np.testing.assert_array_equal(read[0], np.rot90(decoded, k=-1).astype(np.float32))


def test_a_jpeg_whose_exif_pillow_cannot_parse_is_read_as_stored(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older Pillow raises on some malformed EXIF blocks (this one warns): the pixels,
    which decode, as they are stored, not 'cannot read JPEG'."""
    from PIL import Image

    stored = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored, "L").save(tmp_path / "s.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "s.jpg") as opened:
        decoded = np.asarray(opened, dtype=np.float64) / 255

    def unparsable(self: object) -> None:
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(Image.Image, "getexif", unparsable)
    read = read_images(tmp_path / "s.jpg", (6, 9))
    np.testing.assert_array_equal(read[0], decoded.astype(np.float32))


def test_a_cmyk_jpeg_reads_as_its_luminance(tmp_path: Path, digits: ImageDataset) -> None:
    """An Adobe (inverted) CMYK JPEG, as print software writes: by its RGB's luminance."""
    from PIL import Image

    grey = np.round(digits.x_test[3] * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB").convert("CMYK").save(
        tmp_path / "print.jpg", quality=95
    )
    with Image.open(tmp_path / "print.jpg") as opened:
        assert opened.mode == "CMYK"
        rgb = np.asarray(opened.convert("RGB"), dtype=np.float64) / 255
    expected = (rgb @ np.array([0.299, 0.587, 0.114])).astype(np.float32)
    read = read_images(tmp_path / "print.jpg", (8, 8))
    np.testing.assert_allclose(read[0], expected, rtol=1e-6)
    assert np.abs(read[0] - digits.x_test[3]).max() < 0.1


def test_an_mpo_jpeg_reads_as_its_first_picture(tmp_path: Path, digits: ImageDataset) -> None:
    """A phone's photo with a second picture (a depth or gain map) after it: Pillow names it
    MPO; its first picture is the photo."""
    from PIL import Image

    Image.init()
    if "MPO" not in Image.SAVE:
        pytest.skip("this Pillow writes no MPO (9.3 and later do)")
    first = np.round(digits.x_test[2] * 255).astype(np.uint8)
    Image.fromarray(first, "L").convert("RGB").save(
        tmp_path / "phone.jpg", format="MPO", save_all=True, quality=95,
        append_images=[Image.fromarray(255 - first, "L").convert("RGB")],
    )  # fmt: skip
    with Image.open(tmp_path / "phone.jpg") as opened:
        assert opened.format == "MPO"
        rgb = np.asarray(opened.convert("RGB"), dtype=np.float64) / 255
    expected = (rgb @ np.array([0.299, 0.587, 0.114])).astype(np.float32)
    np.testing.assert_allclose(read_images(tmp_path / "phone.jpg", (8, 8))[0], expected,
                               rtol=1e-6)  # fmt: skip


def test_a_bad_jpeg_is_named(tmp_path: Path, digits: ImageDataset) -> None:
    from PIL import Image

    image = np.round(digits.x_test[0] * 255).astype(np.uint8)
    Image.fromarray(image, "L").save(tmp_path / "png.jpg", format="PNG")
    with pytest.raises(ValueError, match=r"png.jpg: not a JPEG file \(its bytes are a PNG image\)"):
        read_images(tmp_path / "png.jpg", (8, 8))
    Image.fromarray(image, "L").save(tmp_path / "whole.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:60])
    with pytest.raises(ValueError, match=r"cut.jpg: cannot read JPEG \("):
        read_images(tmp_path / "cut.jpg", (8, 8))
    with pytest.raises(ValueError, match=r"whole.jpg: the JPEG holds one image, the model "
                       r"reads clips of 8 frames: give an animation"):  # fmt: skip
        read_images(tmp_path / "whole.jpg", (8, 100), (10, 10))


def test_the_command_line_reads_jpeg(
    run_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    canvas = np.full((40, 40), 255, dtype=np.uint8)  # dark ink on white, off centre
    canvas[3:35, 6:38] = 255 - np.round(np.kron(digits.x_test[9], np.ones((4, 4))) * 255)
    Image.fromarray(canvas, "L").save(tmp_path / "drawing.jpg", quality=95)
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "drawing.jpg"),
                 "--center", "--invert"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)["predictions"][0]
    saved = load_model(run_dir)
    assert saved.framing is not None
    framed = read_images(tmp_path / "drawing.jpg", (8, 8), invert=True, framing=saved.framing)
    assert record["class"] == int(predict_images(saved, framed)["classes"][0])


def test_the_table_keeps_a_line_per_image_whatever_the_files_are_named() -> None:
    """A newline or tab in a name, a byte not in the file system's encoding (a lone surrogate,
    which strict UTF-8 cannot print) escaped; wide characters taking two columns."""
    from rnncu.cli import _predictions_table

    def record(name: str, index: int) -> dict:
        top = [{"class": 3, "probability": 0.5, "mse": 0.25}]
        return {"file": Path(name), "index": index, **top[0], "top": top}

    names = ["new\nline.npy", "bad\udcff.npy", "数字.npy", "e\u0301.npy"]
    table = _predictions_table([record(n, i) for i, n in enumerate(names)], generate=True)
    table.encode("utf-8")  # strict: printable on any UTF-8 terminal
    assert table.split("\n") == [
        "file           index  class  probability  mse     top",
        "new\\nline.npy  0      3      0.5000       0.2500  3 (0.5000, mse 0.2500)",
        "bad\\udcff.npy  1      3      0.5000       0.2500  3 (0.5000, mse 0.2500)",
        "数字.npy       2      3      0.5000       0.2500  3 (0.5000, mse 0.2500)",
        "e\u0301.npy          3      3      0.5000       0.2500  3 (0.5000, mse 0.2500)",
    ]


def test_the_table_escapes_what_the_output_s_encoding_lacks(
    run_dir: Path, tmp_path: Path, digits: ImageDataset
) -> None:
    """On an output that writes ASCII only (PYTHONIOENCODING=ascii, a C locale without UTF-8
    mode) a name of other characters is escaped, not a UnicodeEncodeError; its columns are
    counted as escaped."""
    import os
    import subprocess
    import sys

    from rnncu.cli import _predictions_table

    top = [{"class": 3, "probability": 0.5}]
    records = [{"file": Path(n), "index": 0, **top[0], "top": top} for n in ("数字.npy", "a.npy")]
    assert _predictions_table(records, generate=False, encoding="ascii").split("\n") == [
        "file              index  class  probability  top",
        "\\u6570\\u5b57.npy  0      3      0.5000       3 (0.5000)",
        "a.npy             0      3      0.5000       3 (0.5000)",
    ]
    np.save(tmp_path / "数字.npy", digits.x_test[:1])
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "rnncu", "predict", "--checkpoint", str(run_dir),
         str(tmp_path / "数字.npy"), "--format", "table"],
        capture_output=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    lines = done.stdout.decode("ascii").splitlines()
    assert len(lines) == 2 and "\\u6570\\u5b57.npy  0  " in lines[1]


# -- other pictures Pillow reads ------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "save"),
    [("grey.bmp", {}), ("grey.gif", {}), ("grey.webp", {"lossless": True}),
     ("grey.tif", {}), ("grey.TIFF", {"compression": "tiff_lzw"})],
)  # fmt: skip
def test_lossless_pictures_read_exactly(
    tmp_path: Path, digits: ImageDataset, name: str, save: dict
) -> None:
    from PIL import Image

    image = np.round(digits.x_test[11] * 255).astype(np.uint8)
    Image.fromarray(image, "L").save(tmp_path / name, **save)
    read = read_images(tmp_path / name, (8, 8))
    np.testing.assert_array_equal(read[0], (image / 255).astype(np.float32))
    colour = np.stack([image] * 3, axis=-1)  # grey written as colour: the same values
    Image.fromarray(colour, "RGB").save(tmp_path / f"colour-{name}", **save)
    np.testing.assert_array_equal(read_images(tmp_path / f"colour-{name}", (8, 8)), read)


def test_sixteen_bit_grey_tiff_is_scaled_by_its_depth(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    from PIL import Image

    deep = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.tif")  # mode I;16
    np.testing.assert_allclose(read_images(tmp_path / "deep.tif", (8, 8))[0], deep / 65535,
                               rtol=1e-6)  # fmt: skip
    Image.fromarray(rng.uniform(0, 1, (8, 8)).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f.tif: pixels of mode F \(signed or 32-bit "
                       r"integers, or floats\), whose range is not known"):  # fmt: skip
        read_images(tmp_path / "f.tif", (8, 8))


def test_transparent_or_animated_pictures_are_refused(tmp_path: Path, digits: ImageDataset) -> None:
    from PIL import Image

    image = np.round(digits.x_test[2] * 255).astype(np.uint8)
    opaque = np.dstack([image] * 3 + [np.full((8, 8), 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.webp", lossless=True)
    np.testing.assert_array_equal(read_images(tmp_path / "opaque.webp", (8, 8))[0],
                                  (image / 255).astype(np.float32))  # fmt: skip
    holed = opaque.copy()
    holed[3, 4, 3] = 0
    Image.fromarray(holed, "RGBA").save(tmp_path / "holed.webp", lossless=True)
    with pytest.raises(ValueError, match=r"holed.webp: the WebP has transparent pixels"):
        read_images(tmp_path / "holed.webp", (8, 8))
    # a GIF whose palette names a transparent index, used by one pixel
    keyed = Image.fromarray(image, "L").convert("P")
    keyed.save(tmp_path / "keyed.gif", transparency=int(np.asarray(keyed)[0, 0]))
    with pytest.raises(ValueError, match=r"keyed.gif: the GIF has transparent pixels"):
        read_images(tmp_path / "keyed.gif", (8, 8))
    frames = [Image.fromarray(image, "L"), Image.fromarray(255 - image, "L")]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=r"moving.gif: the GIF holds 2 frames \(an animation "
                       r"or pages\): give one image"):  # fmt: skip
        read_images(tmp_path / "moving.gif", (8, 8))
    Image.fromarray(image, "L").save(tmp_path / "png.bmp", format="PNG")
    with pytest.raises(ValueError, match=r"png.bmp: not a BMP file \(its bytes are a PNG image\)"):
        read_images(tmp_path / "png.bmp", (8, 8))
    (tmp_path / "cut.tif").write_bytes(b"II*\x00" + b"\x00" * 4)
    with pytest.raises(ValueError, match=r"cut.tif: cannot read TIFF \("):
        read_images(tmp_path / "cut.tif", (8, 8))


def test_sixteen_bit_tiff_white_is_zero_is_read_as_seen(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A grey TIFF whose photometric interpretation says 0 is white: Pillow inverts 1- to
    8-bit pixels so, but gives 16-bit ones as stored (they read as their negative)."""
    deep = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    write_grey_tiff(tmp_path / "black.tif", [(deep, None)], photometric=1)
    write_grey_tiff(tmp_path / "white.tif", [(65535 - deep, None)], photometric=0)
    black = read_images(tmp_path / "black.tif", (8, 8))
    np.testing.assert_allclose(black[0], deep / 65535, rtol=1e-6)
    np.testing.assert_allclose(read_images(tmp_path / "white.tif", (8, 8)), black, atol=1e-7)
    shallow = rng.integers(0, 256, (8, 8), dtype=np.uint8)  # as Pillow reads it itself
    write_grey_tiff(tmp_path / "black8.tif", [(shallow, None)], photometric=1)
    write_grey_tiff(tmp_path / "white8.tif", [(255 - shallow, None)], photometric=0)
    np.testing.assert_array_equal(read_images(tmp_path / "white8.tif", (8, 8)),
                                  read_images(tmp_path / "black8.tif", (8, 8)))  # fmt: skip


def test_signed_or_wide_integer_tiff_is_refused_as_what_it_holds(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Pillow reads signed 16-bit pixels as mode I, as it reads 32-bit ones: the message
    says so, not that the file holds 32-bit integers or floats."""
    signed = rng.integers(0, 30000, (8, 8), dtype=np.uint16)
    write_grey_tiff(tmp_path / "signed.tif", [(signed, None)], signed=True)
    with pytest.raises(ValueError, match=r"signed.tif: pixels of mode I \(signed or 32-bit "
                       r"integers, or floats\), whose range is not known: save it with "
                       r"unsigned 8- or 16-bit pixels"):  # fmt: skip
        read_images(tmp_path / "signed.tif", (8, 8))


def test_pictures_are_read_in_either_byte_order_and_turned_by_their_own_tags(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """16-bit grey stored big-endian (mode I;16B) as little-endian; a TIFF's Orientation tag
    and a WebP's EXIF turn the image as a JPEG's EXIF does."""
    from PIL import Image

    deep = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    write_grey_tiff(tmp_path / "big.tif", [(deep, None)], order=">")
    write_grey_tiff(tmp_path / "little.tif", [(deep, None)])
    np.testing.assert_array_equal(read_images(tmp_path / "big.tif", (8, 8)),
                                  read_images(tmp_path / "little.tif", (8, 8)))  # fmt: skip
    image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    upright = np.rot90(image, -1)  # orientation 6: stored turned a quarter anticlockwise
    Image.fromarray(image, "L").save(tmp_path / "turned.tif", tiffinfo={0x0112: 6})
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image, "L").save(tmp_path / "turned.webp", lossless=True, exif=exif)
    for name in ("turned.tif", "turned.webp"):
        np.testing.assert_array_equal(read_images(tmp_path / name, (8, 8))[0],
                                      (upright / 255).astype(np.float32))  # fmt: skip


@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_a_tiff_not_square_is_turned_by_each_orientation(
    tmp_path: Path, rng: np.random.Generator, orientation: int, compression: str | None
) -> None:
    """Pillow 13.0 given a path maps an uncompressed TIFF into memory and lays it out by its
    turned size where the orientation is 5 to 8: a 10x12 picture read scrambled (a square
    one, as the tests had, hides it). Read from a file object, each orientation turns it as
    the same EXIF turns a PNG (Pillow's exif_transpose)."""
    from PIL import Image, ImageOps

    image = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    options = {} if compression is None else {"compression": compression}
    Image.fromarray(image, "L").save(tmp_path / "t.tif", tiffinfo={0x0112: orientation},
                                     **options)  # fmt: skip
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image, "L").save(tmp_path / "t.png", exif=exif)
    with Image.open(tmp_path / "t.png") as png:
        upright = np.asarray(ImageOps.exif_transpose(png))
    read = read_images(tmp_path / "t.tif", upright.shape)
    np.testing.assert_array_equal(read[0], (upright / 255).astype(np.float32))


def test_grey_with_alpha_is_read_where_opaque_and_refused_where_not(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """An LA TIFF: all alpha 255 is opaque (its grey read exactly); 254 is not."""
    from PIL import Image

    image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    alpha = np.full((8, 8), 255, np.uint8)
    Image.fromarray(np.dstack([image, alpha]), "LA").save(tmp_path / "opaque.tif")
    np.testing.assert_array_equal(read_images(tmp_path / "opaque.tif", (8, 8))[0],
                                  (image / 255).astype(np.float32))  # fmt: skip
    alpha[5, 1] = 254
    Image.fromarray(np.dstack([image, alpha]), "LA").save(tmp_path / "faint.tif")
    with pytest.raises(ValueError, match=r"faint.tif: the TIFF has transparent pixels"):
        read_images(tmp_path / "faint.tif", (8, 8))
