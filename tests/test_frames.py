"""Sequences of frames (clips): the built-in moving digits, clips in .npz files, their
sequence views, display, augmentation, checkpoints, and the tasks and CLI on them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from rnncu import plots
from rnncu.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rnncu.cli import main
from rnncu.data import (
    CLIP_GRID_PAD,
    ImageDataset,
    check_dataset,
    dataset_digest,
    display_images,
    load_dataset,
    load_digits,
    load_moving_digits,
    load_npz,
    to_sequences,
)
from rnncu.trainer import (
    SAMPLES_PER_CLASS,
    evaluate_run,
    load_run,
    make_config,
    samples_layout,
    shift_images,
    train,
)


@pytest.fixture(scope="module")
def moving():
    return load_moving_digits()


def clip_npz(path: Path, rng: np.random.Generator, n: int = 60, frames: int = 5) -> Path:
    """Clips (n, frames, 3, 4) of 8-bit pixels: class 0 brightens over its frames, class 1
    darkens, so only the order of the frames tells them apart."""
    ramp = np.linspace(0.2, 1.0, frames)
    labels = np.arange(n) % 2
    scale = np.where(labels[:, None] == 0, ramp, ramp[::-1])  # (n, frames)
    texture = rng.uniform(0.5, 1.0, size=(n, 1, 3, 4))
    x = np.round(255 * scale[:, :, None, None] * texture).astype(np.uint8)
    np.savez(path, x=x, y=labels)
    return path


def small(**kw):
    base = dict(backend="numpy", hidden=12, layers=1, epochs=2, batch_size=16, seed=1)
    return make_config(**{**base, **kw})


# -- the built-in moving digits --------------------------------------------------------------


def test_moving_digits_are_the_digits_moving_a_pixel_a_frame(moving) -> None:
    digits = load_digits()
    assert moving.x_train.shape == (2 * 1347, 8, 100) and moving.x_test.shape == (2 * 450, 8, 100)
    assert moving.x_train.dtype == np.float32 and moving.frame_shape == (10, 10)
    assert moving.image_shape == (8, 100) and moving.source == "moving-digits"
    # two clips of each digit, in the digits' own split
    np.testing.assert_array_equal(moving.y_train, np.repeat(digits.y_train, 2))
    np.testing.assert_array_equal(moving.y_test, np.repeat(digits.y_test, 2))
    for clips, images in ((moving.x_train, digits.x_train), (moving.x_test, digits.x_test)):
        frames = clips.reshape(-1, 2, 8, 10, 10)
        for i in (0, 1, 17, len(images) - 1):
            places = []
            for copy in range(2):
                for frame in frames[i, copy]:
                    # each frame is the digit, whole, at some place on a blank canvas
                    found = [
                        (top, left)
                        for top in range(3)
                        for left in range(3)
                        if np.array_equal(frame[top : top + 8, left : left + 8], images[i])
                        and frame.sum() == pytest.approx(images[i].sum())
                    ]
                    assert found, (i, copy)
                    places.append(found[0])
            for copy in range(2):
                path = np.array(places[8 * copy : 8 * copy + 8])
                steps = np.diff(path, axis=0)
                # a pixel a frame (or a bounce off an edge, which keeps the step's size)
                assert np.abs(steps).max() <= 1 and (np.abs(steps).sum(axis=1) > 0).all()
    # the same every time, and not the same clip twice for a digit
    again = load_moving_digits()
    np.testing.assert_array_equal(again.x_train, moving.x_train)
    assert dataset_digest(again) == dataset_digest(moving)
    first, second = moving.x_train[0::2], moving.x_train[1::2]
    assert np.mean([not np.array_equal(a, b) for a, b in zip(first, second, strict=True)]) > 0.8


def test_moving_digits_by_name_and_of_other_sizes() -> None:
    other = load_moving_digits(frames=3, canvas=12, copies=1)
    assert other.x_train.shape == (1347, 3, 144) and other.frame_shape == (12, 12)
    # not what the name loads: a run trained on it must name its own file
    assert other.source is None
    assert load_dataset("moving-digits").x_test.shape == (900, 8, 100)
    for kwargs, said in (
        ({"canvas": 7}, "canvas: expected an integer >= 8, got 7"),
        ({"frames": 0}, "frames: expected an integer >= 1, got 0"),
        ({"copies": True}, "copies: expected an integer >= 1, got True"),
        ({"copies": 1.5}, "copies: expected an integer >= 1, got 1.5"),
    ):
        with pytest.raises(ValueError, match="load_moving_digits: " + said):
            load_moving_digits(**kwargs)


def test_moving_digits_on_the_smallest_canvas_stay_where_they_are() -> None:
    # a canvas of 8, the least taken, is the digit's own size: no room to move either way
    # (bouncing turned the step around and still left the canvas: a broadcasting error)
    still = load_moving_digits(frames=3, canvas=8, copies=1)
    digits = load_digits()
    assert still.x_train.shape == (1347, 3, 64) and still.frame_shape == (8, 8)
    for clips, images in ((still.x_train, digits.x_train), (still.x_test, digits.x_test)):
        expected = np.repeat(images.reshape(-1, 1, 64), 3, axis=1)
        np.testing.assert_array_equal(clips, expected)


def test_moving_digits_start_anywhere_and_bounce_off_the_edges() -> None:
    digits = load_digits().x_train
    travel = 3  # an 8x8 digit on an 11x11 canvas: its top-left corner takes 0..3
    clips = load_moving_digits(frames=12, canvas=11, copies=1).x_train.reshape(-1, 12, 11, 11)
    spots = [(top, left) for top in range(travel + 1) for left in range(travel + 1)]
    placed = np.zeros((len(digits), len(spots), 11, 11), np.float32)
    for k, (top, left) in enumerate(spots):
        placed[:, k, top : top + 8, left : left + 8] = digits
    # each frame is the digit at exactly one place on a blank canvas
    match = (clips[:, :, None] == placed[:, None]).all(axis=(-2, -1))  # (N, frames, spots)
    assert (match.sum(axis=-1) == 1).all()
    places = np.array(spots)[match.argmax(axis=-1)]  # (N, frames, 2)
    # every starting place is taken by some clip, the far edges included
    assert {tuple(p) for p in places[:, 0]} == set(spots)
    steps = np.diff(places, axis=1)  # (N, frames - 1, 2)
    assert np.abs(steps).max() <= 1 and (np.abs(steps).sum(axis=-1) > 0).all()
    # a step is kept until it would leave the canvas, and then reversed on that axis only
    ahead = places[:, 1:-1] + steps[:, :-1]
    leaves = (ahead < 0) | (ahead > travel)
    np.testing.assert_array_equal(steps[:, 1:], np.where(leaves, -steps[:, :-1], steps[:, :-1]))
    assert leaves.any(axis=(1, 2)).mean() > 0.5  # most clips bounce in 12 frames


# -- clips in files ----------------------------------------------------------------------------


def test_npz_clips_load_as_rows_of_frames(tmp_path: Path, rng) -> None:
    x = rng.integers(0, 256, size=(40, 6, 3, 5)).astype(np.uint8)
    y = np.arange(40) % 4
    np.savez(tmp_path / "c.npz", x=x, y=y, x_test=x[:8, ..., None], y_test=y[:8])
    data = load_npz(tmp_path / "c.npz")
    assert data.frame_shape == (3, 5) and data.image_shape == (6, 15)
    np.testing.assert_allclose(data.x_train, x.reshape(40, 6, 15) / 255.0, rtol=1e-6)
    # (N, T, H, W, 1): a channel axis, as (N, H, W, 1) for images
    np.testing.assert_array_equal(data.x_test, data.x_train[:8])
    # without a test split: split stratified, each clip whole
    np.savez(tmp_path / "s.npz", x=x, y=y)
    split = load_npz(tmp_path / "s.npz")
    assert split.x_train.shape == (30, 6, 15) and split.frame_shape == (3, 5)
    # a trailing axis of 1 is still a channel of images, as it was before clips
    np.savez(tmp_path / "i.npz", x=x[:, 0, ..., None], y=y)
    images = load_npz(tmp_path / "i.npz")
    assert images.frame_shape is None and images.image_shape == (3, 5)


def test_npz_clips_that_do_not_fit_are_refused(tmp_path: Path, rng) -> None:
    x = rng.integers(0, 256, size=(20, 4, 3, 4)).astype(np.uint8)
    y = np.arange(20) % 2
    cases = {
        # the same row size (12 pixels) for frames of 3x4 and of 4x3
        "frames.npz": (x.reshape(20, 4, 4, 3), "the training split holds clips of 3x4 frames, "
                       "the test split clips of 4x3 frames"),
        "images.npz": (x[:, 0], "the training split holds clips of 3x4 frames, the test split "
                       "images"),
        "empty.npz": (x[:, :0], None),
    }  # fmt: skip
    for name, (test, said) in cases.items():
        if said is None:
            np.savez(tmp_path / name, x=test, y=y)
            said = "clips of 0 frames of 3x4 pixels in array 'x' (shape (20, 0, 3, 4))"
        else:
            np.savez(tmp_path / name, x=x, y=y, x_test=test, y_test=y)
        with pytest.raises(ValueError) as caught:
            load_npz(tmp_path / name)
        assert said in str(caught.value) and name in str(caught.value)
    # clips of other lengths: named as the file holds them (it said "train images (4, 12)
    # and test (5, 12)", the rows they are held as)
    np.savez(tmp_path / "long.npz", x=x, y=y, x_test=np.concatenate([x, x[:, :1]], 1), y_test=y)
    with pytest.raises(ValueError, match=r"long\.npz: train clips \(4, 3, 4\) and test "
                       r"\(5, 3, 4\) differ$"):  # fmt: skip
        load_npz(tmp_path / "long.npz")
    # clips of 3 channels (RGB, say) are refused, not read as their first channel
    np.savez(tmp_path / "rgb.npz", x=np.repeat(x[..., None], 3, axis=-1), y=y)
    with pytest.raises(ValueError, match=r"or clips \(N, T, H, W\), got shape \(20, 4, 3, 4, 3\)"):
        load_npz(tmp_path / "rgb.npz")
    np.savez(tmp_path / "six.npz", x=x[..., None, None], y=y)
    with pytest.raises(ValueError, match=r"or clips \(N, T, H, W\), got shape \(20, 4, 3, 4, 1, 1"):
        load_npz(tmp_path / "six.npz")


def test_check_dataset_takes_a_frame_shape_that_fills_the_rows(moving) -> None:
    small_set = dataclasses.replace(
        moving, x_train=moving.x_train[:40], y_train=moving.y_train[:40]
    )
    checked = check_dataset(dataclasses.replace(small_set, frame_shape=[np.int64(5), 20]))
    assert checked.frame_shape == (5, 20) and type(checked.frame_shape[0]) is int
    bad_shapes = ((3, 30), (10,), (10, 10, 1), (True, 100), (10.0, 10), (0, 100), (-10, -10))
    for bad in (*bad_shapes, "10x10"):
        with pytest.raises(ValueError, match=r"data\.frame_shape: expected None \(images\) or "
                           r"\(H, W\) with H \* W = 100, the pixels of a frame, got"):  # fmt: skip
            check_dataset(dataclasses.replace(small_set, frame_shape=bad))


def test_the_digest_tells_clips_of_other_frames_apart(moving) -> None:
    as_images = dataclasses.replace(moving, frame_shape=None)
    other = dataclasses.replace(moving, frame_shape=(5, 20))
    digests = {dataset_digest(d) for d in (moving, as_images, other)}
    assert len(digests) == 3
    # images hash as they did before clips: their four arrays and nothing else
    expected = hashlib.sha256()
    for field in ("x_train", "y_train", "x_test", "y_test"):
        array = np.ascontiguousarray(getattr(as_images, field))
        expected.update(f"{field} {array.dtype.str} {array.shape};".encode())
        expected.update(array.tobytes())
    assert dataset_digest(as_images) == expected.hexdigest()


# -- views and display -------------------------------------------------------------------------


def test_views_of_clips(rng) -> None:
    clips = rng.random((5, 4, 2, 3)).astype(np.float32)
    flat = clips.reshape(5, 4, 6)
    rows = to_sequences(clips, "rows")
    assert rows.shape == (4, 5, 6)
    np.testing.assert_array_equal(rows, to_sequences(flat, "rows"))
    np.testing.assert_array_equal(rows[2, 3], clips[3, 2].ravel())  # step 2 is frame 2
    pixels = to_sequences(clips, "pixels")
    assert pixels.shape == (24, 5, 1)
    np.testing.assert_array_equal(pixels[:, 1, 0], clips[1].ravel())  # frame by frame
    with pytest.raises(ValueError, match=r"images \(N, H, W\) or clips \(N, T, H, W\), got shape"):
        to_sequences(clips[..., None], "rows")


@pytest.mark.parametrize("view", ["rows", "pixels", "permuted"])
def test_views_of_empty_clips_are_empty_as_those_of_images(view: str) -> None:
    # no clips, or clips of no frames: as for images (N, H, W) with a 0, sequences with a 0
    # (a reshape with -1 could not tell the frame's size from no pixels)
    for shape in ((0, 4, 2, 3), (5, 0, 2, 3)):
        clips = np.zeros(shape, np.float32)
        expected = to_sequences(clips.reshape(shape[0], shape[1], 6), view)
        sequences = to_sequences(clips, view)
        assert sequences.shape == expected.shape and sequences.dtype == np.float32


def test_display_lays_the_frames_of_a_clip_side_by_side(rng) -> None:
    clips = rng.random((3, 4, 2 * 5)).astype(np.float32)
    shown = display_images(clips, (2, 5))
    assert shown.shape == (3, 2, 4 * 6 - 1) and shown.dtype == np.float32
    for t in range(4):
        np.testing.assert_array_equal(shown[:, :, 6 * t : 6 * t + 5], clips[:, t].reshape(3, 2, 5))
    np.testing.assert_array_equal(shown[:, :, 5::6], 0.25)  # the columns between frames
    images = rng.random((3, 4, 10))
    assert display_images(images, None) is images
    with pytest.raises(ValueError, match="frames of 3x3 pixels do not fill clips of 10 pixels"):
        display_images(clips, (3, 3))


def test_display_keeps_the_grey_column_between_the_frames_of_bool_clips(rng) -> None:
    # bool clips are clips (check_dataset takes them): the grey 0.25 between two frames
    # became True, a black column of ink as dark as the frames' own
    clips = rng.random((3, 4, 10)) > 0.5
    shown = display_images(clips, (2, 5))
    assert shown.dtype == np.float32
    np.testing.assert_array_equal(shown[:, :, 5::6], 0.25)
    for t in range(4):
        np.testing.assert_array_equal(shown[:, :, 6 * t : 6 * t + 5], clips[:, t].reshape(3, 2, 5))


def test_display_names_what_it_expected_of_clips_that_are_not_rows_of_frames(rng) -> None:
    clips = rng.random((3, 4, 2, 5)).astype(np.float32)  # (N, T, H, W): as to_sequences takes
    # these were "too many values to unpack", "'list' object has no attribute 'shape'",
    # "negative dimensions are not allowed" and "cannot unpack non-iterable int object"
    with pytest.raises(ValueError, match=r"display_images: images: expected clips \(N, T, H\*W\)"
                       r", one frame a row, got shape \(3, 4, 2, 5\)"):  # fmt: skip
        display_images(clips, (2, 5))
    with pytest.raises(TypeError, match=r"display_images: images: expected a NumPy array of "
                       r"clips \(N, T, H\*W\), got builtins\.list"):  # fmt: skip
        display_images(clips.reshape(3, 4, 10).tolist(), (2, 5))
    said = r"display_images: frame_shape: expected None \(images\) or a frame's \(H, W\), got "
    for bad in ((-2, -5), 10, (2.0, 5), (True, 10)):
        with pytest.raises(ValueError, match=said + re.escape(repr(bad))):
            display_images(clips.reshape(3, 4, 10), bad)


# -- training on clips ---------------------------------------------------------------------------


def test_augment_moves_each_clip_as_one(rng) -> None:
    clips = rng.random((6, 4, 5 * 7)).astype(np.float32)
    moved = shift_images(clips, 2, np.random.default_rng(9), (5, 7))
    assert moved.shape == clips.shape
    offsets = np.random.default_rng(9).integers(0, 5, size=(6, 2)) - 2
    frames = clips.reshape(6, 4, 5, 7)
    for i, (dy, dx) in enumerate(offsets):
        padded = np.zeros((4, 5 + 4, 7 + 4), np.float32)
        padded[:, 2:7, 2:9] = frames[i]  # every frame of the clip read through one window
        expected = padded[:, 2 + dy : 7 + dy, 2 + dx : 9 + dx]
        np.testing.assert_array_equal(moved[i].reshape(4, 5, 7), expected)
    assert not np.array_equal(moved, clips)


def test_augment_is_bounded_by_the_frame(moving) -> None:
    data = dataclasses.replace(
        moving, x_train=moving.x_train[:64], y_train=moving.y_train[:64], source=None
    )
    # 10x10 frames take shifts up to 4 (8 rows of 100 pixels as images would take 3)
    result = train(small(augment=4, epochs=1), data=data, progress=False)
    assert result.epochs_trained == 1
    with pytest.raises(ValueError, match="augment: expected at most 4 for 10x10 frames"):
        train(small(augment=5, epochs=1), data=data, progress=False)


def test_training_with_augment_moves_the_frames_of_a_clip(
    moving, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rnncu import trainer

    data = dataclasses.replace(
        moving, x_train=moving.x_train[:64], y_train=moving.y_train[:64], source=None
    )
    moved: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(images, max_shift, rng, frame_shape=None):
        shifted = shift_images(images, max_shift, rng, frame_shape)
        moved.append((images, shifted))
        return shifted

    monkeypatch.setattr(trainer, "shift_images", spy)
    train(small(augment=2, epochs=1), data=data, progress=False)
    ((images, shifted),) = moved
    # each clip's frames move on the canvas, alike: not its rows of 100 pixels (the frames)
    # shifted up or down, which would move the clip in time
    frames, out = images.reshape(64, 8, 10, 10), shifted.reshape(64, 8, 10, 10)
    for i in range(64):
        fits = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out[i], _shifted(frames[i], dy, dx))
        ]
        assert fits, i


def _shifted(frames: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Frames (T, H, W) moved by (dy, dx), the background (0) filling in."""
    t, h, w = frames.shape
    padded = np.zeros((t, h + 4, w + 4), frames.dtype)
    padded[:, 2 : 2 + h, 2 : 2 + w] = frames
    return padded[:, 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]


def test_a_classify_run_on_clips_learns_their_order_and_resumes_exactly(
    tmp_path: Path, rng
) -> None:
    path = clip_npz(tmp_path / "ramps.npz", rng)
    config = small(dataset=path, epochs=30, lr=1e-2)
    straight = train(config, out_dir=tmp_path / "straight", progress=False, plots=False)
    # each frame alone is a texture of either class: only the order tells them apart
    assert straight.metrics["test_accuracy"] == 1.0
    _, meta = load_checkpoint(tmp_path / "straight")
    assert meta["data"]["frame_shape"] == [3, 4] and meta["data"]["image_shape"] == [5, 12]
    train(small(dataset=path, epochs=12, lr=1e-2), out_dir=tmp_path / "split", plots=False)
    resumed = train(config, resume=tmp_path / "split", progress=False, plots=False)
    for key, value in straight.model.state_dict().items():
        assert value.tobytes() == resumed.model.state_dict()[key].tobytes(), key
    assert evaluate_run(tmp_path / "straight")["test_accuracy"] == 1.0
    run, _ = load_run(tmp_path / "straight")
    assert run.data.frame_shape == (3, 4)


def test_images_do_not_pass_for_the_clips_a_run_was_trained_on(tmp_path: Path, rng) -> None:
    path = clip_npz(tmp_path / "ramps.npz", rng)
    train(small(dataset=path), out_dir=tmp_path / "run", progress=False, plots=False)
    clips = load_npz(path)
    # rows of 12 pixels, 5 of them: the sequences of the clips, as images of 5x12
    images = dataclasses.replace(clips, frame_shape=None, source=None)
    with pytest.raises(ValueError, match=r"holds images, the model of .* was trained on clips "
                       r"of 3x4 frames"):  # fmt: skip
        train(small(dataset=path, epochs=3), resume=tmp_path / "run", data=images, plots=False)
    with np.load(path) as saved:
        np.savez(tmp_path / "images.npz", x=saved["x"].reshape(60, 5, 12), y=saved["y"])
    with pytest.raises(ValueError, match="holds images, the model of"):
        load_run(tmp_path / "run", dataset=str(tmp_path / "images.npz"))


def test_clips_of_another_size_are_named_as_clips(tmp_path: Path, rng) -> None:
    path = clip_npz(tmp_path / "ramps.npz", rng)  # 5 frames of 3x4
    train(small(dataset=path, epochs=1), out_dir=tmp_path / "run", progress=False, plots=False)
    np.savez(tmp_path / "six.npz", x=np.zeros((20, 6, 3, 4), np.float32), y=np.arange(20) % 2)
    np.savez(tmp_path / "images.npz", x=np.zeros((20, 8, 8), np.float32), y=np.arange(20) % 2)
    # these said "has 6x12 images" and "has 8x100 images, ... trained on 5x12": the rows of
    # the clips as they are held, not what the files or the built-in set hold
    for dataset, held in (
        (tmp_path / "six.npz", "clips of 6 frames of 3x4"),
        ("moving-digits", "clips of 8 frames of 10x10"),
        (tmp_path / "images.npz", "8x8 images"),
    ):
        with pytest.raises(ValueError, match=f"has {held}, the model of .* was trained on clips of "
                           "5 frames of 3x4$"):  # fmt: skip
            load_run(tmp_path / "run", dataset=str(dataset))
    with pytest.raises(ValueError, match="has clips of 6 frames of 3x4, the model of .* was "
                       "trained on clips of 5 frames of 3x4$"):  # fmt: skip
        train(small(epochs=2), resume=tmp_path / "run", data=load_npz(tmp_path / "six.npz"))
    # images for images: as before clips; clips for images: named as clips
    train(small(dataset=tmp_path / "images.npz", epochs=1), out_dir=tmp_path / "img", plots=False)
    np.savez(tmp_path / "flat.npz", x=np.zeros((20, 6, 12), np.float32), y=np.arange(20) % 2)
    with pytest.raises(ValueError, match=r"has 6x12 images, the model of .* was trained on 8x8$"):
        load_run(tmp_path / "img", dataset=str(tmp_path / "flat.npz"))
    with pytest.raises(ValueError, match=r"has clips of 5 frames of 3x4, the model of .* was "
                       r"trained on 8x8 images$"):  # fmt: skip
        load_run(tmp_path / "img", dataset=str(path))


def test_a_saved_frame_shape_is_checked(tmp_path: Path, rng) -> None:
    path = clip_npz(tmp_path / "ramps.npz", rng)
    train(small(dataset=path, epochs=1), out_dir=tmp_path / "run", progress=False, plots=False)
    arrays, meta = load_checkpoint(tmp_path / "run")
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    for bad in ([3], [3, 0], [3, "4"], "3x4", [3.0, 4]):
        meta["data"]["frame_shape"] = bad
        save_checkpoint(tmp_path / "bad" / "checkpoint.npz", arrays, meta)
        with pytest.raises(CheckpointError, match=r"'data\.frame_shape': expected \[H, W\]"):
            load_run(tmp_path / "bad")
    # a frame that does not fill the rows the clips are held in: a damaged pair
    meta["data"]["frame_shape"] = [4, 4]
    save_checkpoint(tmp_path / "bad" / "checkpoint.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=r"frames of 4x4 pixels do not fill the clip's rows "
                       r"of 12 \('data\.image_shape'\)"):  # fmt: skip
        load_run(tmp_path / "bad")
    # a checkpoint without the field is of images (as every one before clips)
    del meta["data"]["frame_shape"]
    save_checkpoint(tmp_path / "bad" / "checkpoint.npz", arrays, meta)
    with pytest.raises(ValueError, match=r"holds clips of .*trained on images"):
        load_run(tmp_path / "bad")


def test_samples_grid_stays_within_what_image_readers_open() -> None:
    # every sample at the plots' scale where the grid fits
    assert samples_layout(10, (8, 8)) == (SAMPLES_PER_CLASS, plots.GRID_SCALE)
    limit = plots.MAX_GRID_PIXELS
    for nrows, shape, pad in ((40, (64, 1279), 3), (999, (28, 28), 1), (3, (10, 250000), 3)):
        layout = samples_layout(nrows, shape, pad)
        assert layout is not None
        ncols, scale = layout
        assert plots.grid_pixels(nrows, ncols, shape, pad=pad, scale=scale) <= limit
        if ncols == SAMPLES_PER_CLASS:  # the largest scale that fits
            if scale < plots.GRID_SCALE:
                assert plots.grid_pixels(nrows, ncols, shape, pad=pad, scale=scale + 1) > limit
        else:  # at one pixel a pixel, the most samples that fit
            assert scale == 1
            assert plots.grid_pixels(nrows, ncols + 1, shape, pad=pad, scale=1) > limit
    assert samples_layout(999, (28, 28)) == (SAMPLES_PER_CLASS, 3)  # MNIST-size, 999 classes
    assert samples_layout(3, (10, 250000), 3) == (8, 1)
    assert samples_layout(1, (10, 10**8)) is None


def test_a_generate_run_draws_fewer_samples_rather_than_an_unreadable_grid(
    tmp_path: Path, rng, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = clip_npz(tmp_path / "ramps.npz", rng)
    # 2 classes of 10 clips of 3x24, 3 apart: 15 x 273 pixels at one pixel a pixel
    monkeypatch.setattr(plots, "MAX_GRID_PIXELS", 15 * (4 * 27 + 3))
    config = small(task="generate", dataset=path, epochs=1)
    with pytest.warns(UserWarning, match=r"samples\.png shows 4 of the 10 samples of each class "
                      r"at 1 pixel\(s\) a pixel"):  # fmt: skip
        train(config, out_dir=tmp_path / "run", progress=False)
    from PIL import Image

    with Image.open(tmp_path / "run" / "samples.png") as grid:
        assert grid.size == (4 * 27 + 3, 15)  # 4 clips a class, at one pixel a pixel
    monkeypatch.setattr(plots, "MAX_GRID_PIXELS", 100)
    with pytest.warns(UserWarning, match="samples.png left out: even one sample of each of 2 "):
        train(config, out_dir=tmp_path / "none", progress=False)
    assert not (tmp_path / "none" / "samples.png").exists()
    assert (tmp_path / "none" / "metrics.json").is_file()


def test_a_run_of_other_data_cannot_keep_the_built_in_name(moving, tmp_path: Path) -> None:
    other = dataclasses.replace(moving, source=None, name="mine")
    with pytest.raises(ValueError, match="the dataset 'mine' is not the built-in 'moving-digits'"):
        train(small(dataset="moving-digits"), data=other, out_dir=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()  # nothing saved, nothing to mislead
    assert make_config(dataset="moving-digits").dataset == "moving-digits"  # not a path


def test_a_config_of_no_dataset_names_the_built_in_clips_among_what_it_takes() -> None:
    for bad in ("", 5):
        with pytest.raises(ValueError, match=r"^dataset: expected 'digits', 'moving-digits', a "
                           r"directory of IDX files or a \.npz path, got"):  # fmt: skip
            make_config(dataset=bad)


def test_a_run_of_the_built_in_clips_keeps_their_name(moving, tmp_path: Path) -> None:
    # the built-in clips themselves, given as data, are what the name loads
    train(small(dataset="moving-digits", epochs=1), data=moving, out_dir=tmp_path / "run",
          progress=False, plots=False)  # fmt: skip
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "moving-digits"


def test_generate_on_clips_draws_and_completes_frames(
    tmp_path: Path, rng, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = clip_npz(tmp_path / "ramps.npz", rng)
    out = tmp_path / "gen"
    args = ["train", "--task", "generate", "--dataset", str(path), "--epochs", "3"]
    args += ["--hidden", "12", "--batch-size", "16", "--backend", "numpy", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["sample_class_accuracy"] <= 1 and metrics["test_mse"] > 0
    # the samples' grid: 2 classes of 10 clips, each 5 frames of 3x4 side by side
    from PIL import Image

    with Image.open(out / "samples.png") as grid:
        # clips 3 pixels apart (CLIP_GRID_PAD), wider than the 1 between their frames
        assert grid.size == ((10 * (5 * 5 - 1 + 3) + 3) * 4, (2 * (3 + 3) + 3) * 4)
    grids: list[np.ndarray] = []
    monkeypatch.setattr(plots, "save_image_grid", lambda images, *a, **k: grids.append(images))
    gen = ["generate", "--checkpoint", str(out), "--out", str(tmp_path / "c.png")]
    assert main([*gen, "--complete", "2", "--classes", "1", "--per-class", "3"]) == 0
    (grid,) = grids
    assert grid.shape == (6, 3, 5 * 5 - 1)
    data = load_npz(path)
    first = data.x_test[np.flatnonzero(data.y_test == 1)[:3]]
    np.testing.assert_array_equal(grid[:3], display_images(first, (3, 4)))  # the originals
    # the completions keep the two frames given
    np.testing.assert_array_equal(grid[3:, :, : 2 * 5], grid[:3, :, : 2 * 5])
    capsys.readouterr()
    assert main([*gen, "--complete", "5"]) == 2
    assert "--complete: expected 1..4 frames, got 5" in capsys.readouterr().err
    assert main([*gen, "--per-class", "2"]) == 0
    assert "wrote 4 clips for classes [0, 1] to" in capsys.readouterr().out
    # as a GIF: frame t holds every clip's frame t; the same clips as the PNG's
    real = plots.save_clip_animation
    played: list[np.ndarray] = []

    def recorded(clips: np.ndarray, *args, **kwargs):
        played.append(clips)
        return real(clips, *args, **kwargs)

    monkeypatch.setattr(plots, "save_clip_animation", recorded)
    gif = tmp_path / "c.gif"
    assert main(["generate", "--checkpoint", str(out), "--out", str(gif), "--per-class", "2"]) == 0
    assert f"wrote 4 clips for classes [0, 1] to {gif}" in capsys.readouterr().out
    (clips,) = played
    assert clips.shape == (4, 5, 3, 4)
    np.testing.assert_array_equal(display_images(clips.reshape(4, 5, 12), (3, 4)), grids[-1])

    def frame_times(path: Path) -> list[int]:
        with Image.open(path) as animation:
            times = []
            for t in range(animation.n_frames):
                animation.seek(t)
                times.append(animation.info["duration"])
            return times

    with Image.open(gif) as animation:
        assert 1 <= animation.n_frames <= 5  # identical frames in a row are written once
        expected = plots.image_grid(clips[:, 0], 2, pad=CLIP_GRID_PAD)
        np.testing.assert_array_equal(
            np.asarray(animation.convert("L")), np.round(expected * 255).astype(np.uint8)
        )
    assert sum(frame_times(gif)) == 5 * plots.CLIP_FRAME_MS  # a frame merged keeps its time
    # --frame-ms times the frames; a GIF cannot hold every time, and a PNG has none
    timed = ["generate", "--checkpoint", str(out), "--per-class", "2", "--frame-ms"]
    assert main([*timed, "40", "--out", str(tmp_path / "fast.gif")]) == 0
    assert sum(frame_times(tmp_path / "fast.gif")) == 5 * 40
    capsys.readouterr()
    assert main([*timed, "45", "--out", str(tmp_path / "odd.gif")]) == 2
    assert "--frame-ms: expected a multiple of 10 from 20 to 655350" in capsys.readouterr().err
    assert main([*timed, "40", "--out", str(tmp_path / "still.png")]) == 2
    assert (
        f"--frame-ms: times the frames of a .gif of clips, and --out {tmp_path / 'still.png'} "
        "is a PNG" in capsys.readouterr().err
    )
    assert not (tmp_path / "odd.gif").exists() and not (tmp_path / "still.png").exists()
    # as arrays: clips (N, T, h, w), the GIF's, which a dataset reads back as clips
    arrays = tmp_path / "c.npz"
    assert (
        main(["generate", "--checkpoint", str(out), "--out", str(arrays), "--per-class", "2"]) == 0
    )
    with np.load(arrays, allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["x"], clips)
        np.testing.assert_array_equal(saved["y"], [0, 0, 1, 1])
    more = ["generate", "--checkpoint", str(out), "--out", str(arrays), "--per-class", "4"]
    assert main(more) == 0  # enough clips for the stratified split of a dataset without one
    assert load_npz(arrays).frame_shape == (3, 4)
    # completions too: originals above, as in the PNG
    assert main([*gen[:-1], str(gif), "--complete", "2", "--classes", "1", "--per-class", "3"]) == 0
    assert played[-1].shape == (6, 5, 3, 4)
    np.testing.assert_array_equal(played[-1][:3].reshape(3, 5, 12), first)


def test_check_dataset_names_the_form_clips_take_in_memory(moving) -> None:
    clips = moving.x_train[:40].reshape(40, 8, 10, 10)  # as a file holds them
    data = dataclasses.replace(moving, x_train=clips, y_train=moving.y_train[:40])
    with pytest.raises(ValueError, match=r"data\.x_train: expected images \(N, H, W\) with N, H, "
                       r"W >= 1 \(clips: \(N, T, H\*W\) with frame_shape \(H, W\)\), got shape "
                       r"\(40, 8, 10, 10\)"):  # fmt: skip
        check_dataset(data)


def test_completing_clips_of_a_single_frame_says_there_is_nothing_to_complete(
    tmp_path: Path, rng, capsys: pytest.CaptureFixture
) -> None:
    path = clip_npz(tmp_path / "one.npz", rng, frames=1)
    out = tmp_path / "gen"
    args = ["train", "--task", "generate", "--dataset", str(path), "--epochs", "1"]
    args += ["--hidden", "8", "--backend", "numpy", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    gen = ["generate", "--checkpoint", str(out), "--out", str(tmp_path / "c.png")]
    assert main([*gen, "--per-class", "2"]) == 0  # whole clips are drawn
    capsys.readouterr()
    assert main([*gen, "--complete", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnncu: error: --complete: ") and "1..0" not in err  # no such range
    assert "the run's clips have a single frame: none to complete" in err and "got 1" in err


def test_generate_on_clips_lays_out_and_bounds_the_grid_by_the_frames(
    tmp_path: Path, rng, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = clip_npz(tmp_path / "ramps.npz", rng)
    train(small(task="generate", dataset=path, epochs=1), out_dir=tmp_path / "run",
          progress=False, plots=False)  # fmt: skip
    # 5 frames of 3x4 shown side by side: 3x24, where the images (5, 12) would be 5x12
    assert load_npz(path).display_shape == (3, 5 * 5 - 1)
    grids: list[np.ndarray] = []
    monkeypatch.setattr(plots, "save_image_grid", lambda images, *a, **k: grids.append(images))
    gen = ["generate", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "g.png")]
    assert main([*gen, "--per-class", "3"]) == 0
    (grid,) = grids
    assert grid.shape == (2 * 3, 3, 5 * 5 - 1)
    np.testing.assert_array_equal(grid[:, :, 4::5], 0.25)  # the columns between frames
    # the grid's size is that of the frames laid out, 3 pixels apart: 2 rows of 13809 clips
    # of 3x24 would have (2 * 6 + 3) * 4 x (13809 * 27 + 3) * 4 pixels (at most 13808 a row
    # fit); as images of 5x12 they would have fitted
    capsys.readouterr()
    assert main([*gen, "--per-class", "13809"]) == 2
    err = capsys.readouterr().err
    assert "have 89,483,040 pixels, more than image readers open" in err
    assert "at most 13808 here" in err
    assert len(grids) == 1


def test_the_cli_trains_on_the_built_in_clips(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "moving-digits", "--epochs", "1", "--hidden", "16"]
    assert main([*args, "--backend", "numpy", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["dataset"] == "moving-digits" and metrics["dataset"] == "moving-digits"
    assert metrics["num_train"] == 2694 and metrics["num_test"] == 900
    assert 0.1 < metrics["test_accuracy"] <= 1
    assert (out / "confusion.png").is_file()
    # evaluating loads the built-in clips again, by name
    assert main(["evaluate", "--checkpoint", str(out)]) == 0


def test_clip_dataset_in_memory_needs_its_frame_shape_to_be_clips(moving) -> None:
    bare = ImageDataset("bare", moving.x_train, moving.y_train, moving.x_test, moving.y_test, 10)
    # without a frame shape the same arrays are images of 8x100: rows of 100 pixels
    assert bare.frame_shape is None and bare.display_shape == (8, 100)
    assert moving.display_shape == (10, 8 * 11 - 1)
    assert bare.row_name == "row" and moving.row_name == "frame"
