"""Image datasets and their sequence views.

A :class:`ImageDataset` holds host arrays: images (N, H, W) float32 in [0, 1] and integer
labels (N,), already split into train and test. :func:`to_sequences` turns images into the
(T, N, D) time-major sequences the RNN reads:

* ``rows``: T = H, D = W (one image row per step);
* ``pixels``: T = H*W, D = 1 (one pixel per step, in reading order);
* ``permuted``: the pixels under one fixed random permutation (:data:`PERMUTATION_SEED`),
  the same for every run, so models and checkpoints stay comparable.

Clips (sequences of frames) are held as images whose rows are whole frames: a clip of T
frames of H x W pixels is a (T, H*W) array, and the dataset's ``frame_shape`` is (H, W). So
``rows`` reads a clip one frame per step (T steps of H*W), ``pixels`` one pixel per step
(frame by frame, each in reading order), and every task works on clips as on images;
:func:`display_images` lays a clip's frames side by side for the plots.

Sources: ``digits`` (scikit-learn's 1797 8x8 digits, shipped with scikit-learn, split
stratified 75/25 with random_state=0), ``moving-digits`` (those digits, each moving across
a 10x10 canvas for 8 frames, two clips a digit, from the same split), MNIST-format IDX files
(raw or .gz) and ``.npz`` files with ``x`` and ``y`` (optionally ``x_test`` and ``y_test``); an
``.npz`` whose ``x`` is (N, T, H, W) holds clips.

Pixel values: integer images are 8-bit intensities and must lie in 0..255 (divided by 255);
float images must already lie in [0, 1]; boolean images read as 0 and 1. Anything else (an
int16 file of values up to 25500, negative integers, integers of only 0 and 1 that would be
black images, strings) is refused rather than scaled into nonsense: every problem raises
ValueError naming the file and the array.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import math
import os
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnncu._warnings import warn_at_caller
from rnncu.backend import type_name

__all__ = [
    "PERMUTATION_SEED",
    "SEQ_VIEWS",
    "VALIDATION_SEED",
    "ImageDataset",
    "BUILTIN_DATASETS",
    "CLIP_GRID_PAD",
    "IMAGE_FILE_SUFFIXES",
    "INK_THRESHOLD",
    "Framing",
    "check_dataset",
    "dataset_digest",
    "display_images",
    "display_shape",
    "frame_images",
    "image_framing",
    "load_dataset",
    "load_digits",
    "load_idx_dir",
    "load_moving_digits",
    "load_npz",
    "pixel_permutation",
    "read_idx",
    "read_images",
    "resample",
    "split_digest",
    "split_stratified",
    "to_sequences",
    "validation_split",
]

SEQ_VIEWS = ("rows", "pixels", "permuted")
#: the permuted view uses this seed for every run (fixed, not the training seed)
PERMUTATION_SEED = 1234
#: the datasets known by name, built without a file
BUILTIN_DATASETS = ("digits", "moving-digits")
#: the white border between clips in a grid, in pixels (1 between images)
CLIP_GRID_PAD = 3
#: the moving digits' starting places and directions come from this seed, the same every time
MOVING_DIGITS_SEED = 2024


@dataclass
class ImageDataset:
    """Train and test images (N, H, W) float32 in [0, 1] with int64 labels (N,).

    For clips, ``frame_shape`` is a frame's (H, W) and each image is a clip (T, H*W): one
    frame per row (see the module's notes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    #: what it was loaded from: ``"digits"`` or the file or directory's path (None: built in
    #: memory); the name alone cannot tell scikit-learn's digits from a directory "digits"
    source: str | None = None
    #: a frame's (H, W) where the images are clips (T, H*W); None for images
    frame_shape: tuple[int, int] | None = None

    @property
    def trained_classes(self) -> list[int]:
        """The classes the training labels hold, ascending (labels may leave gaps)."""
        return [int(label) for label in np.unique(self.y_train)]

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)``, for clips ``(T, H*W)``: what sets the sequence shapes and must match a
        checkpoint's model."""
        return (int(self.x_train.shape[1]), int(self.x_train.shape[2]))

    @property
    def display_shape(self) -> tuple[int, int]:
        """The (height, width) of an image as :func:`display_images` shows it: a clip's
        frames side by side, one pixel apart."""
        return display_shape(self.image_shape, self.frame_shape)

    @property
    def display_pad(self) -> int:
        """The white border around and between the images of a grid: wider between clips
        (:data:`CLIP_GRID_PAD`) than the grey column between a clip's frames, which it would
        otherwise look like."""
        return 1 if self.frame_shape is None else CLIP_GRID_PAD

    @property
    def items_name(self) -> str:
        """What its items are: ``"images"``, or ``"clips"`` (in messages)."""
        return "images" if self.frame_shape is None else "clips"

    @property
    def row_name(self) -> str:
        """What one row of an image is: ``"row"``, or ``"frame"`` for clips (in messages)."""
        return "row" if self.frame_shape is None else "frame"


def dataset_digest(data: ImageDataset) -> str:
    """SHA-256 (hex) of a dataset's images and labels, both splits, with their shapes and
    dtypes: what tells the images a run was trained on from others, whatever file, directory
    or format they were loaded from (a moved dataset keeps its digest). The name, the source
    and ``num_classes`` are not part of it. About 0.1 s for MNIST's 70,000 images."""
    digest = hashlib.sha256()
    for field in ("x_train", "y_train", "x_test", "y_test"):
        _hash_array(digest, getattr(data, field), f"{field} ")
    if data.frame_shape is not None:  # images keep the digests they had before clips
        digest.update("frame_shape {} {};".format(*data.frame_shape).encode())
    return digest.hexdigest()


def split_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 (hex) of a validation split's images and labels, in their order: what a
    stratified split drew, which the counts alone do not tell."""
    digest = hashlib.sha256()
    for array in (images, labels):
        _hash_array(digest, array)
    return digest.hexdigest()


def _hash_array(digest: Any, array: np.ndarray, label: str = "") -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{label}{array.dtype.str} {array.shape};".encode())
    digest.update(array.data.cast("B"))


def display_shape(
    image_shape: tuple[int, int], frame_shape: tuple[int, int] | None
) -> tuple[int, int]:
    """:func:`display_images`' (height, width) for images of ``image_shape``."""
    if frame_shape is None:
        return (int(image_shape[0]), int(image_shape[1]))
    frames, (height, width) = int(image_shape[0]), frame_shape
    return (int(height), frames * (int(width) + 1) - 1)


def display_images(images: np.ndarray, frame_shape: tuple[int, int] | None) -> np.ndarray:
    """Images (N, H, W) as they are shown: unchanged for images (``frame_shape`` None); clips
    (N, T, H*W) become (N, H, T*(W+1)-1), their frames side by side in order with a grey
    column (0.25) between two frames, so that a grid of clips reads a clip per cell (float
    clips keep their dtype, others become float32)."""
    if frame_shape is None:
        return images
    if not isinstance(images, np.ndarray):
        raise TypeError(
            "display_images: images: expected a NumPy array of clips (N, T, H*W), got "
            f"{type_name(images)}"
        )
    if images.ndim != 3:
        raise ValueError(
            "display_images: images: expected clips (N, T, H*W), one frame a row, got shape "
            f"{images.shape}"
        )
    n, frames, size = images.shape
    try:
        height, width = frame_shape
        pair = all(_is_index(side) and side >= 1 for side in (height, width))
    except (TypeError, ValueError):
        pair = False
    if not pair:
        raise ValueError(
            f"display_images: frame_shape: expected None (images) or a frame's (H, W), got "
            f"{frame_shape!r}"
        )
    if height * width != size:
        raise ValueError(
            f"display_images: frames of {height}x{width} pixels do not fill clips of {size} "
            f"pixels a frame (images shape {images.shape})"
        )
    # float images keep their dtype; bool (or integer) ones hold no 0.25: float32 then
    dtype = images.dtype if images.dtype.kind == "f" else np.dtype(np.float32)
    shown = np.full((n, height, frames, width + 1), 0.25, dtype=dtype)
    shown[..., :width] = images.reshape(n, frames, height, width).transpose(0, 2, 1, 3)
    return shown.reshape(n, height, frames * (width + 1))[:, :, :-1]


def pixel_permutation(num_pixels: int) -> np.ndarray:
    """The fixed permutation of the ``permuted`` view (depends only on the pixel count): an
    int64 array (num_pixels,) of the indices 0..num_pixels-1, pixel t of a permuted sequence
    being pixel ``perm[t]`` of the image in reading order."""
    return np.random.default_rng(PERMUTATION_SEED).permutation(num_pixels)


def to_sequences(images: np.ndarray, view: str = "rows") -> np.ndarray:
    """Images (N, H, W), a NumPy array, -> time-major sequences (T, N, D), C-contiguous, same
    dtype: (H, N, W) for ``view`` ``"rows"``, (H*W, N, 1) for ``"pixels"`` and ``"permuted"``
    (:data:`SEQ_VIEWS`). Clips (N, T, H, W) are read as images (N, T, H*W): ``rows`` gives
    one frame per step, (T, N, H*W)."""
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"to_sequences: images: expected a NumPy array (N, H, W), got {type_name(images)}"
        )
    if images.ndim == 4:  # the frame's size written out: -1 cannot be told from no clips
        n, frames, height, width = images.shape
        images = images.reshape(n, frames, height * width)
    if images.ndim != 3:
        raise ValueError(
            "to_sequences: expected images (N, H, W) or clips (N, T, H, W), got shape "
            f"{images.shape}"
        )
    n, h, w = images.shape
    if view == "rows":
        seq = images
    elif view == "pixels":
        seq = images.reshape(n, h * w, 1)
    elif view == "permuted":
        seq = images.reshape(n, h * w)[:, pixel_permutation(h * w)].reshape(n, h * w, 1)
    else:
        raise ValueError(
            f"to_sequences: view: expected one of {', '.join(SEQ_VIEWS)}, got {view!r}"
        )
    return np.ascontiguousarray(seq.transpose(1, 0, 2))


def seq_shape(image_shape: tuple[int, int], view: str) -> tuple[int, int]:
    """``(T, D)`` of ``view`` for images of ``image_shape``."""
    h, w = image_shape
    if view == "rows":
        return h, w
    if view in ("pixels", "permuted"):
        return h * w, 1
    raise ValueError(f"seq_shape: view: expected one of {', '.join(SEQ_VIEWS)}, got {view!r}")


def split_stratified(
    x: np.ndarray,
    y: np.ndarray,
    test_size: float = 0.25,
    random_state: int = 0,
    name: str = "dataset",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's stratified ``train_test_split``: ``(x_train, x_test, y_train, y_test)``.

    A split that cannot be made (no images, a class of one image, fewer test images than
    classes) raises ValueError naming the dataset ``name``: scikit-learn's own message does
    not say which file is at fault."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: expected x (N, ...) and labels y (N,), got shapes {x.shape} and {y.shape}"
        )
    if y.shape[0] == 0:
        raise ValueError(f"{name}: no images")
    classes, counts = np.unique(y, return_counts=True)
    fewest = int(np.argmin(counts))
    if counts[fewest] < 2:
        raise ValueError(
            f"{name}: class {classes[fewest]} has only {counts[fewest]} image; the "
            "stratified train/test split needs at least 2 per class (or give a test split)"
        )
    train_test_split = _sklearn().model_selection.train_test_split
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_size, random_state=random_state, stratify=y
        )
        return x_train, x_test, y_train, y_test  # a tuple: scikit-learn returns a list
    except ValueError as exc:
        raise ValueError(
            f"{name}: cannot split {y.shape[0]} images of {len(classes)} classes stratified ({exc})"
        ) from None


#: the validation split is drawn with this seed for every run (fixed, not the training seed),
#: so runs of several seeds are compared on the same validation images
VALIDATION_SEED = 0


def validation_split(
    data: ImageDataset, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``fraction`` (in (0, 0.5]) of ``data``'s training split held out, stratified, with
    :data:`VALIDATION_SEED`: ``(x_train, x_val, y_train, y_val)``. Every class of the training
    split keeps at least one training image; a split that cannot be made (a class of one
    image, fewer validation images than classes) raises ValueError naming ``val_fraction``.
    A NumPy ``fraction`` is taken as :class:`~rnncu.trainer.TrainConfig` takes it.

    Images that are copies of one another (the two clips of a digit in ``moving-digits``, an
    augmented set) may fall on both sides: validation figures then flatter the model."""
    if isinstance(fraction, np.integer):
        fraction = int(fraction)
    elif isinstance(fraction, np.floating):
        # as TrainConfig takes it: a float32 keeps the decimal it was written as, so that the
        # split is the one a run of that val_fraction trains on
        short = fraction.dtype.itemsize < 8 and np.isfinite(fraction)
        fraction = float(str(fraction)) if short else float(fraction)
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)) or not (
        0 < fraction <= 0.5
    ):
        raise ValueError(f"val_fraction: expected a number in (0, 0.5], got {fraction!r}")
    labels = data.y_train
    n = labels.shape[0]
    classes, counts = np.unique(labels, return_counts=True)
    held = math.ceil(fraction * n)  # as scikit-learn rounds a fractional test_size
    where = f"the training split of {data.name!r} ({n} images of {len(classes)} classes)"
    if counts.min() < 2:
        fewest = int(np.argmin(counts))
        raise ValueError(
            f"val_fraction: {where} has one image of class {classes[fewest]}; a stratified "
            "validation split needs at least 2 of each class"
        )
    if held < len(classes):
        raise ValueError(
            f"val_fraction: {fraction} of {where} holds out {held} "
            f"{'image' if held == 1 else 'images'}, fewer than the "
            f"{len(classes)} classes; a stratified validation split needs one of each at least"
        )
    x_tr, x_val, y_tr, y_val = split_stratified(
        data.x_train, labels, test_size=fraction, random_state=VALIDATION_SEED, name=where
    )
    missing = np.setdiff1d(classes, y_tr)
    if missing.size:  # not seen with fraction <= 0.5 and 2 images a class; kept as a guard
        raise ValueError(
            f"val_fraction: {fraction} of {where} leaves no training image of class "
            f"{int(missing[0])}"
        )
    return x_tr, x_val, y_tr, y_val


def _sklearn() -> Any:
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "scikit-learn is needed for the digits dataset and the stratified split: "
            "pip install 'rnncu[train]'"
        ) from exc
    return sklearn


def load_digits() -> ImageDataset:
    """scikit-learn's digits: 1797 images 8x8 with values 0..16, scaled to [0, 1]; split
    stratified 75/25 with random_state=0 (1347 train, 450 test)."""
    raw = _sklearn().datasets.load_digits()
    images = (raw.images / 16.0).astype(np.float32)
    labels = raw.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = split_stratified(images, labels)
    return ImageDataset("digits", x_tr, y_tr, x_te, y_te, 10, source="digits")


def load_moving_digits(frames: int = 8, canvas: int = 10, copies: int = 2) -> ImageDataset:
    """Clips of scikit-learn's digits moving: ``"moving-digits"``, the built-in dataset of
    clips (with the defaults).

    Each 8x8 digit moves across a ``canvas`` x ``canvas`` canvas for ``frames`` frames, one
    pixel a frame along one of the 8 directions (straight or diagonal), bouncing off the
    canvas's edges (on a canvas of 8, the digit's own size, it has no room and stays where
    it is); ``copies`` clips of each digit, each of its own starting place and
    direction, drawn with :data:`MOVING_DIGITS_SEED` (the same every time). The label is the
    digit. The digits are split as :func:`load_digits` splits them (stratified 75/25,
    random_state=0), so a digit's clips all lie in one split: by default 2694 training and
    900 test clips (8, 100) with ``frame_shape`` (10, 10).

    The canvas sets how far the digits travel, and so how hard the task is: each place a
    digit may take is one more a classifier must learn it in (benchmarks/RESULTS.md has the
    default recipe's figures on larger canvases)."""
    sides = {"frames": (frames, 1), "canvas": (canvas, 8), "copies": (copies, 1)}
    for name, (value, least) in sides.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(
                f"load_moving_digits: {name}: expected an integer >= {least}, got {value!r}"
            )
    digits = load_digits()
    rng = np.random.default_rng(MOVING_DIGITS_SEED)
    x_tr = _moving(digits.x_train, frames, canvas, copies, rng)
    x_te = _moving(digits.x_test, frames, canvas, copies, rng)
    y_tr, y_te = np.repeat(digits.y_train, copies), np.repeat(digits.y_test, copies)
    built_in = (frames, canvas, copies) == (8, 10, 2)  # what the name "moving-digits" loads
    return ImageDataset(
        "moving-digits", x_tr, y_tr, x_te, y_te, 10,
        source="moving-digits" if built_in else None, frame_shape=(int(canvas), int(canvas)),
    )  # fmt: skip


def _moving(
    digits: np.ndarray, frames: int, canvas: int, copies: int, rng: np.random.Generator
) -> np.ndarray:
    """Clips (N * copies, frames, canvas**2) of ``digits`` (N, 8, 8) moving (each digit's
    ``copies`` clips in a row)."""
    digits = np.repeat(digits, copies, axis=0)
    n, size = digits.shape[0], digits.shape[1]
    travel = canvas - size  # the largest offset a digit's top-left corner takes
    place = rng.integers(0, travel + 1, size=(n, 2))
    directions = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    step = directions[rng.integers(0, len(directions), size=n)]
    clips = np.zeros((n, frames, canvas, canvas), dtype=np.float32)
    for t in range(frames):
        for i in range(n):
            top, left = place[i]
            clips[i, t, top : top + size, left : left + size] = digits[i]
        ahead = place + step
        bounce = (ahead < 0) | (ahead > travel)
        step = np.where(bounce, -step, step)
        # turned around, a step stays on the canvas, except where there is no room either way
        # (a canvas of the digit's own size): there the digit stays where it is
        place = np.clip(place + step, 0, travel)
    return clips.reshape(n, frames, canvas * canvas)


# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed when it ends in ``.gz``) into a native-order
    array of the header's shape and data type: (N, rows, cols) uint8 for MNIST's images,
    (N,) uint8 for its labels. A malformed file raises ValueError naming the file and what is
    wrong."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_idx: path: expected a str or path, got {type(path).__name__}")
    path = Path(path)
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as fh:
                blob = fh.read()
        else:
            blob = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read IDX file ({exc})") from None
    if blob[:2] == b"\x1f\x8b":
        raise ValueError(f"{path}: gzip-compressed data: name the file with .gz to read it")
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = blob[2], blob[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (unknown data type code 0x{code:02x})")
    if ndim < 1:
        raise ValueError(f"{path}: not an IDX file of arrays (0 dimensions in the header)")
    if ndim > 32:  # NumPy's arrays stop at 64; images are 3, labels 1
        raise ValueError(f"{path}: {ndim} dimensions in the IDX header (at most 32 are read)")
    if len(blob) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim])
    dtype = _IDX_DTYPES[code]
    # Python ints: NumPy's int64 product of dims like (2**31, 2**31, 2**31) wraps to 0
    expected = math.prod(dims) * dtype.itemsize
    payload = blob[4 + 4 * ndim :]
    if len(payload) != expected:
        raise ValueError(
            f"{path}: IDX data size {len(payload)} bytes does not match the header "
            f"dimensions {tuple(dims)} ({expected} bytes); truncated or corrupt"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _scale_images(x: np.ndarray, source: str, name: str = "the file") -> np.ndarray:
    """Images to float32 in [0, 1]. Integers are 8-bit intensities and must lie in 0..255:
    dividing other integers (int16 up to 25500, negative int8) by 255 gives wrong pixels with
    no error. Floats must already lie in [0, 1]; booleans read as 0 and 1."""
    kind = x.dtype.kind
    if kind == "b":
        return x.astype(np.float32)
    if kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(
                f"{source}: integer images must lie in 0..255 (8-bit intensities), found "
                f"{x.min()}..{x.max()} in {name}"
            )
        if x.size and x.max() == 1:
            # as intensities 0 and 1/255 the images would be black: a mask stored as ints
            raise ValueError(
                f"{source}: integer images hold only 0 and 1 in {name}: 8-bit intensities "
                "would be black; store binary images as bool or float in [0, 1]"
            )
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    if kind != "f":
        raise ValueError(
            f"{source}: expected numeric images (integers 0..255 or floats in [0, 1]), "
            f"{name} has dtype {x.dtype}"
        )
    outside = _outside_unit_range(x)
    if outside == "NaN or inf":
        raise ValueError(f"{source}: float images must lie in [0, 1], {name} holds NaN or inf")
    if outside:
        raise ValueError(f"{source}: float images must lie in [0, 1], found {outside} in {name}")
    return x.astype(np.float32)


def _outside_unit_range(x: np.ndarray) -> str | None:
    """None where every value of ``x`` lies in [0, 1] (an empty ``x`` too); else what was
    found: ``"NaN or inf"`` or the range, ``"-1.0..0.5"``."""
    if not x.size:
        return None
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        return "NaN or inf"
    low, high = x.min(), x.max()
    return None if low >= 0 and high <= 1 else f"{float(low)!r}..{float(high)!r}"


def _as_images_or_clips(
    x: np.ndarray, source: str, name: str
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """:func:`_as_images`, and clips: (N, T, H, W) or (N, T, H, W, 1) -> ((N, T, H*W),
    (H, W)). A 4-D array whose last axis is 1 is images with a channel, as before clips."""
    if x.ndim == 5 and x.shape[-1] == 1:
        x = x[..., 0]
    elif x.ndim != 4 or x.shape[-1] == 1:
        return _as_images(x, source, name), None
    n, frames, height, width = x.shape
    if 0 in (frames, height, width):
        raise ValueError(
            f"{source}: clips of {frames} frames of {height}x{width} pixels in {name} (shape "
            f"{x.shape}); expected at least one frame, row and column"
        )
    return x.reshape(n, frames, height * width), (height, width)


def _as_images(x: np.ndarray, source: str, name: str = "the file") -> np.ndarray:
    """(N, H, W), (N, H, W, 1) or (N, D) with D a perfect square -> (N, H, W)."""
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(
                f"{source}: flat images of {x.shape[1]} pixels are not square (in {name})"
            )
        x = x.reshape(x.shape[0], side, side)
    if x.ndim != 3:
        raise ValueError(
            f"{source}: expected images (N, H, W) or clips (N, T, H, W), got shape {x.shape} "
            f"in {name}"
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"{source}: images of {x.shape[1]}x{x.shape[2]} pixels in {name} (shape "
            f"{x.shape}); expected at least one row and one column"
        )
    return x


#: the most classes a dataset may have: the classifier's output layer and its confusion
#: matrix (saved in metrics.json) grow with the largest label, so a stray huge label would
#: otherwise ask for gigabytes
MAX_CLASSES = 1000


def _labels(y: np.ndarray, n: int, source: str, name: str = "the file") -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{source}: expected {n} labels (N,), got shape {y.shape} in {name}")
    if y.dtype.kind not in "iubf":  # strings, complex, ... cannot be class indices
        raise ValueError(f"{source}: labels must be integers, {name} has dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{source}: labels must be integers (in {name})")
    # the range in the labels' own dtype: a cast first would wrap huge values
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0, found {y.min()} in {name}")
    if y.size and y.max() >= MAX_CLASSES:
        raise ValueError(
            f"{source}: labels must be class indices below {MAX_CLASSES}, found {y.max()} in "
            f"{name} ({np.unique(y).size} distinct labels: number them 0..K-1, e.g. with "
            "np.unique(y, return_inverse=True))"
        )
    return y.astype(np.int64, copy=False)


def contents(frame_shape: tuple[int, int] | list[int] | None) -> str:
    """What a dataset of ``frame_shape`` holds, in words (messages): ``"images"`` or
    ``"clips of 10x10 frames"``."""
    return "images" if frame_shape is None else "clips of {}x{} frames".format(*frame_shape)


def _finish(
    name: str,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    source: str,
    frame_shape: tuple[int, int] | None = None,
    test_frame_shape: tuple[int, int] | None = None,
) -> ImageDataset:
    if frame_shape != test_frame_shape:
        raise ValueError(
            f"{source}: the training split holds {contents(frame_shape)}, the test split "
            f"{contents(test_frame_shape)}"
        )
    if x_tr.shape[1:] != x_te.shape[1:]:
        if frame_shape is None:
            raise ValueError(
                f"{source}: train images {x_tr.shape[1:]} and test {x_te.shape[1:]} differ"
            )
        # clips as the file holds them, (T, H, W), not as rows of frames
        raise ValueError(
            f"{source}: train clips {(x_tr.shape[1], *frame_shape)} and test "
            f"{(x_te.shape[1], *frame_shape)} differ"
        )
    for split, images in (("training", x_tr), ("test", x_te)):
        if images.shape[0] == 0:
            raise ValueError(f"{source}: no {split} images")
    present = np.unique(y_tr)
    if present.size < 2:
        # one class trains to a constant answer (accuracy 1 by construction) and leaves the
        # generator's judge nothing to tell apart: almost always a wrong labels array
        raise ValueError(
            f"{source}: the training labels hold a single class ({int(present[0])}); expected "
            "at least 2 classes"
        )
    num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return ImageDataset(
        name, x_tr, y_tr, x_te, y_te, num_classes, source=source, frame_shape=frame_shape
    )


def check_dataset(data: Any, name: str = "data") -> ImageDataset:
    """``data``, an :class:`ImageDataset`, checked against the loaders' rules; returned as a
    new dataset whose labels are int64 (integral floats and other integer types converted).

    The rules: NumPy images (N, H, W) of a float dtype, finite and in [0, 1] (or bool), with
    at least one image, row and column per split, the same (H, W) in both splits;
    ``frame_shape`` None, or for clips (T, H*W) a frame's (H, W); labels (N,)
    matching the images' count, integers in [0, ``MAX_CLASSES``), at least two classes in
    training; ``num_classes`` an integer above every label and at most ``MAX_CLASSES``. A
    dataset built in memory gets no scaling: integer images are refused here (the file
    loaders scale 0..255). Errors name ``name`` and the field (``data.y_train``).
    """
    if not isinstance(data, ImageDataset):
        raise TypeError(
            f"{name}: expected an ImageDataset (rnncu.data.load_dataset), got {type(data).__name__}"
        )
    labels = {}
    for split in ("train", "test"):
        x_name, y_name = f"x_{split}", f"y_{split}"
        x, y = getattr(data, x_name), getattr(data, y_name)
        for field, value in ((x_name, x), (y_name, y)):
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name}.{field}: expected a NumPy array, got {type_name(value)}")
        where = f"{name}.{x_name}"
        if x.ndim != 3 or 0 in x.shape:
            raise ValueError(
                f"{where}: expected images (N, H, W) with N, H, W >= 1 (clips: (N, T, H*W) with "
                f"frame_shape (H, W)), got shape {x.shape}"
            )
        if x.dtype.kind not in "fb":
            hint = " (divide 8-bit intensities by 255)" if x.dtype.kind in "iu" else ""
            raise TypeError(
                f"{where}: expected float images in [0, 1] (or bool), got dtype {x.dtype}{hint}"
            )
        outside = _outside_unit_range(x)
        if outside:
            raise ValueError(f"{where}: images must lie in [0, 1], found {outside}")
        labels[y_name] = _labels(y, x.shape[0], name, f"{name}.{y_name}")
    if data.x_train.shape[1:] != data.x_test.shape[1:]:
        raise ValueError(
            f"{name}: training images {data.x_train.shape[1:]} and test images "
            f"{data.x_test.shape[1:]} differ in size"
        )
    present = np.unique(labels["y_train"])
    if present.size < 2:
        raise ValueError(
            f"{name}.y_train: the training labels hold a single class ({int(present[0])}); "
            "expected at least 2 classes"
        )
    frame_shape = _checked_frame_shape(data.frame_shape, data.x_train.shape, name)
    largest = int(max(labels["y_train"].max(), labels["y_test"].max()))
    k = data.num_classes
    if (
        isinstance(k, bool)
        or not isinstance(k, (int, np.integer))
        or not (largest < k <= MAX_CLASSES)
    ):
        raise ValueError(
            f"{name}.num_classes: expected an integer in [{largest + 1}, {MAX_CLASSES}] (above "
            f"the largest label, {largest}), got {k!r}"
        )
    return dataclasses.replace(
        data,
        y_train=labels["y_train"],
        y_test=labels["y_test"],
        num_classes=int(k),
        frame_shape=frame_shape,
    )


def _checked_frame_shape(
    frame_shape: Any, shape: tuple[int, ...], name: str
) -> tuple[int, int] | None:
    """None, or ``frame_shape`` as a pair of Python ints whose product is a clip's row size
    (``shape[2]``); else ValueError naming ``name.frame_shape``."""
    if frame_shape is None:
        return None
    expected = f"None (images) or (H, W) with H * W = {shape[2]}, the pixels of a frame"
    try:
        height, width = frame_shape
        pair = tuple(int(side) for side in (height, width) if _is_index(side))
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or min(pair) < 1 or pair[0] * pair[1] != shape[2]:
        raise ValueError(f"{name}.frame_shape: expected {expected}, got {frame_shape!r}")
    return (pair[0], pair[1])


def _is_index(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def load_npz(path: str | os.PathLike[str]) -> ImageDataset:
    """An ``.npz`` with ``x`` (images) and ``y`` (int labels); with ``x_test``/``y_test`` those
    are the test split, else a stratified 75/25 split with random_state=0 is made. An ``x``
    of shape (N, T, H, W) (or (N, T, H, W, 1)) holds clips of T frames: see the module's
    notes."""
    path = Path(path)
    arrays = _npz_arrays(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        held = ", ".join(sorted(arrays)) or "no arrays"
        raise ValueError(
            f"{path}: .npz lacks {' and '.join(missing)} (needs x and y; it holds {held})"
        )
    test_keys = [k for k in ("x_test", "y_test") if k in arrays]
    if len(test_keys) == 1:
        # one of the pair alone would otherwise be ignored for a random split
        other = "y_test" if test_keys[0] == "x_test" else "x_test"
        raise ValueError(
            f"{path}: .npz has {test_keys[0]} but lacks {other} (give both for a test split, "
            "or neither for a stratified split of x and y)"
        )
    x, frames = _as_images_or_clips(arrays["x"], str(path), "array 'x'")
    x = _scale_images(x, str(path), "array 'x'")
    y = _labels(arrays["y"], x.shape[0], str(path), "array 'y'")
    if test_keys:
        x_te, test_frames = _as_images_or_clips(arrays["x_test"], str(path), "array 'x_test'")
        x_te = _scale_images(x_te, str(path), "array 'x_test'")
        y_te = _labels(arrays["y_test"], x_te.shape[0], str(path), "array 'y_test'")
        return _finish(path.name, x, y, x_te, y_te, str(path), frames, test_frames)
    x_tr, x_te, y_tr, y_te = split_stratified(x, y, name=str(path))
    return _finish(path.name, x_tr, y_tr, x_te, y_te, str(path), frames, frames)


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; FileNotFoundError, or ValueError naming the
    file where it cannot be read as arrays (pickles are never loaded)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb"):  # is_zipfile below would take an unreadable file for corrupt
            pass
    except OSError as exc:
        raise ValueError(f"{path}: cannot read .npz ({exc.strerror or exc})") from None
    if not zipfile.is_zipfile(path):
        # np.load would take other bytes for a pickle and suggest loading it unsafely
        raise ValueError(
            f"{path}: cannot read .npz: not a zip archive of arrays (truncated, corrupt or "
            "another kind of file; pickles are never loaded)"
        )
    arrays: dict[str, np.ndarray] = {}
    objects = None  # the first entry that holds Python objects
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    value = npz[key]
                except ValueError as exc:
                    if "pickle" not in str(exc):
                        raise
                    objects = key
                    break
                if not isinstance(value, np.ndarray):
                    # a member without the .npy header comes back as its raw bytes
                    raise ValueError(f"array {key!r} is not an array (no .npy header)")
                arrays[key] = value
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, EOFError, ValueError, ...
        raise ValueError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from None
    if objects is not None:
        # NumPy's own message suggests allow_pickle=True, which would run the file's code
        raise ValueError(
            f"{path}: not a valid .npz of arrays: {objects!r} holds Python objects (object "
            "arrays are refused: loading them would unpickle)"
        )
    return arrays


def _idx_names(stem: str) -> tuple[str, ...]:
    """The names ``stem``'s file goes by, lower case, in order of preference."""
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    return (stem, stem + ".gz", dotted, dotted + ".gz")


def _find_idx(directory: Path, stem: str) -> Path | None:
    """The file holding ``stem``'s array, or None. Where the directory holds more than one
    copy (torchvision's ``MNIST/raw`` keeps each file both raw and gzipped), the first in
    the order below is read and every other copy must hold the same bytes: a stale or
    foreign copy (Fashion-MNIST's ``.gz`` beside MNIST's raw file, of the same size and
    header) would otherwise be ignored or read without a word, by the name's spelling."""
    # in the order of preference of _idx_names, each name in its own case first, then in
    # another case (TRAIN-...-UBYTE.GZ)
    rank = {name: i for i, name in enumerate(_idx_names(stem))}
    copies = sorted(
        (p for p in directory.iterdir() if p.name.lower() in rank and p.is_file()),
        key=lambda p: (rank[p.name.lower()], p.name != p.name.lower(), p.name),
    )
    if not copies:
        return None
    for other in copies[1:]:
        difference = _idx_copies_differ(copies[0], other)
        if difference is not None:
            raise ValueError(
                f"{directory}: holds {copies[0].name} and {other.name}, two copies of one IDX "
                f"file, but {difference}; remove the one that is not wanted"
            )
    return copies[0]


def _idx_copies_differ(first: Path, second: Path, chunk: int = 1 << 20) -> str | None:
    """None where two IDX files (each raw or .gz, by its name) hold the same bytes, else
    how they differ. Compared a chunk at a time: a copy that differs early costs one chunk."""

    def opened(path: Path) -> Any:
        return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")

    offset = 0
    with contextlib.ExitStack() as stack:
        handles = []
        for path in (first, second):
            try:
                handles.append(stack.enter_context(opened(path)))
            except OSError as exc:  # a copy without read permission, say
                return f"{path.name} cannot be read ({exc})"
        a, b = handles
        while True:
            blocks = []
            for path, fh in ((first, a), (second, b)):
                try:
                    blocks.append(fh.read(chunk))
                except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
                    return f"{path.name} cannot be read ({exc})"
            if blocks[0] != blocks[1]:
                common = min(len(blocks[0]), len(blocks[1]))
                at = next((i for i in range(common) if blocks[0][i] != blocks[1][i]), common)
                return f"their bytes differ from byte {offset + at}"
            if not blocks[0]:
                return None
            offset += len(blocks[0])


def load_idx_dir(directory: str | os.PathLike[str]) -> ImageDataset:
    """A directory with MNIST-format files ``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte`` (raw or .gz) and optionally the ``t10k-*`` pair; without the
    test pair the training files are split stratified 75/25 with random_state=0. A file
    present both raw and gzipped is read raw, after checking that the two copies hold the
    same bytes (a ValueError names them where they differ)."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"load_idx_dir: directory: expected a str or path, got {type(directory).__name__}"
        )
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "no such directory"
        raise FileNotFoundError(
            f"{directory}: {what} (expected a directory of MNIST-format IDX files)"
        )
    train_x = _find_idx(directory, "train-images-idx3-ubyte")
    train_y = _find_idx(directory, "train-labels-idx1-ubyte")
    if train_x is None or train_y is None:
        # torchvision's root (MNIST/ holding raw/ and processed/): name the folder that has them
        names = _idx_names("train-images-idx3-ubyte")

        def holds_them(sub: Path) -> bool:
            try:
                return sub.is_dir() and any(f.name.lower() in names for f in sub.iterdir())
            except OSError:  # a folder that cannot be listed holds nothing to suggest
                return False

        inside = sorted(sub.name for sub in directory.iterdir() if holds_them(sub))
        hint = f"; {directory / inside[0]} has them" if inside else ""
        raise FileNotFoundError(
            f"{directory}: no MNIST-format files (expected train-images-idx3-ubyte[.gz] and "
            f"train-labels-idx1-ubyte[.gz]){hint}"
        )
    x = _scale_images(_as_images(read_idx(train_x), str(train_x)), str(train_x))
    y = _labels(read_idx(train_y), x.shape[0], str(train_y))
    test_x = _find_idx(directory, "t10k-images-idx3-ubyte")
    test_y = _find_idx(directory, "t10k-labels-idx1-ubyte")
    if (test_x is None) != (test_y is None):
        # one of the pair alone would otherwise be ignored for a random split
        have, lack = (test_x, "t10k-labels") if test_y is None else (test_y, "t10k-images")
        assert have is not None  # exactly one of the pair is None
        raise ValueError(
            f"{directory}: has {have.name} but no {lack}-idx*-ubyte[.gz] (give both for a test "
            "split, or neither for a stratified split of the training files)"
        )
    if test_x is not None and test_y is not None:
        x_te = _scale_images(_as_images(read_idx(test_x), str(test_x)), str(test_x))
        y_te = _labels(read_idx(test_y), x_te.shape[0], str(test_y))
        return _finish(_directory_label(directory), x, y, x_te, y_te, str(directory))
    x_tr, x_te, y_tr, y_te = split_stratified(x, y, name=str(directory))
    return _finish(_directory_label(directory), x_tr, y_tr, x_te, y_te, str(directory))


def _directory_label(directory: Path) -> str:
    """The name a dataset in ``directory`` goes by (in metrics and plot titles): its folder's,
    found from the absolute path (``.`` and ``..`` have none of their own); torchvision's
    ``MNIST/raw`` is ``MNIST``, not ``raw``. Links are not followed: a folder linked into
    place goes by the link's name, the one given."""
    where = Path(os.path.abspath(directory))
    if where.name.lower() == "raw" and where.parent.name:
        return where.parent.name
    return where.name or str(where)  # the root of a file system: its own path


def load_dataset(spec: str | os.PathLike[str] = "digits") -> ImageDataset:
    """``"digits"``, ``"moving-digits"``, a directory of MNIST-format IDX files, or a
    ``.npz`` file."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"dataset spec: expected 'digits', 'moving-digits', a directory of IDX files or a .npz "
            f"path (str or path), got {type(spec).__name__} {spec!r}"
        )
    if spec == "":
        raise ValueError(
            "dataset spec: expected 'digits', 'moving-digits', a directory of IDX files or a .npz"
        )
    if spec == "digits":
        return load_digits()
    if spec == "moving-digits":
        return load_moving_digits()
    path = Path(spec)
    if path.is_dir():
        return load_idx_dir(path)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {spec!r}: no such file or directory (or use 'digits' or 'moving-digits')"
        )
    raise ValueError(
        f"dataset {spec!r}: expected 'digits', 'moving-digits', a directory of IDX files or a .npz"
    )


#: the files :func:`read_images` reads: one picture (PNG, JPEG, BMP, GIF, WebP, TIFF), or
#: NumPy arrays of images (or clips)
IMAGE_FILE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".npy", ".npz"
)  # fmt: skip
#: the suffixes of a picture, one image each (the others hold arrays)
PICTURE_SUFFIXES = IMAGE_FILE_SUFFIXES[:-2]
#: ITU-R BT.601 luma weights: a colour picture is recognised by its luminance
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def read_images(
    path: str | os.PathLike[str],
    image_shape: tuple[int, int],
    frame_shape: tuple[int, int] | None = None,
    resize: bool = False,
    invert: bool = False,
    framing: Framing | None = None,
) -> np.ndarray:
    """Images to recognise, read from a file as a model trained on ``image_shape`` images
    takes them: float32 in [0, 1], (N, H, W); for a model of clips (``frame_shape`` (h, w),
    ``image_shape`` (T, h*w)), clips (N, T, h*w), as datasets hold them.

    * ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.webp``, ``.tif``, ``.tiff``: one
      image, read by Pillow as it decodes it, grey (16-bit grey too) or colour
      by its luminance (:data:`LUMA_WEIGHTS`), turned upright as its EXIF orientation says
      (an MPO, a JPEG with more pictures after it as phones write, by its first).
      Transparent pixels (a transparent ground has no intensity to read: flatten it first;
      a PNG's colour key counts where a pixel has that colour), more than one frame (a
      TIFF's reduced-resolution copies after its picture, thumbnails, are no matter), pixels
      of unknown range (signed or 32-bit integers, floats), and bytes of another kind than
      the suffix says are refused. For a model of clips of T frames: one clip, an
      animation (GIF, PNG, WebP) or a TIFF's pages, of exactly T frames of one size, each
      read as a picture is (an animation's frames as Pillow composes them).
    * ``.npy``, or ``.npz`` with ``x``: one image (H, W) or a stack (N, H, W); clips (T, h, w)
      or (N, T, h, w), or (N, T, h*w) as datasets hold them. Pixels as datasets take them:
      integers 0..255, floats in [0, 1], or bool. Flat images (N, H*W) and colour channels
      last (H, W, C) are refused, not taken for images of another size.

    Images (frames) of another size than the model's are an error, or with ``resize``
    resampled to it by area averaging (each pixel the mean of the pixels it covers).
    ``invert`` takes ``1 - x``: the built-in datasets hold light ink on a dark ground, a
    drawing is often the reverse. ``framing`` (images only; a model's
    :attr:`rnncu.trainer.SavedModel.framing`) crops each image, of any size, to its ink and
    frames it as the training images are (:func:`frame_images`, after ``invert``;
    ``resize`` is then not used: framing resamples).
    ValueError names the file and what was expected."""
    path = Path(path)
    where = str(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_FILE_SUFFIXES:
        raise ValueError(
            f"{where}: expected a {', '.join(IMAGE_FILE_SUFFIXES)} file, got {path.name!r}"
        )
    if not path.exists():
        raise FileNotFoundError(f"{where}: no such file")
    height, width = frame_shape or image_shape
    if framing is not None and frame_shape is not None:
        raise ValueError(
            f"{where}: framing crops images to their ink; the model reads clips, whose frames "
            "move (give them as they are)"
        )
    if suffix in PICTURE_SUFFIXES:
        # a clip: an animation (or a TIFF's pages) of the model's frames
        x = _pillow_luminance(path, suffix, None if frame_shape is None else image_shape[0])[None]
    else:
        x = _image_array(path, suffix)
        held = tuple(x.shape)  # as the file holds it: what messages quote
        rank = 3 if frame_shape is None else 4
        _refuse_misread_layout(x, where, image_shape, frame_shape)
        if frame_shape is not None and x.ndim == 3 and held[1:] == image_shape:
            # clips (N, T, h*w), as datasets hold them (and predict_images takes them)
            x = x.reshape(held[0], image_shape[0], height, width)
        elif x.ndim == rank - 1:
            x = x[None]
        if x.ndim != rank:
            expected = "(H, W) or (N, H, W)" if frame_shape is None else "(T, H, W) or (N, T, H, W)"
            what = "images" if frame_shape is None else f"clips of {image_shape[0]} frames"
            raise ValueError(f"{where}: expected {what} {expected}, got an array of shape {held}")
        if frame_shape is not None and x.shape[1] != image_shape[0]:
            raise ValueError(
                f"{where}: clips of {x.shape[1]} frames (shape {held}), the model was "
                f"trained on clips of {image_shape[0]}"
            )
        if 0 in x.shape:
            raise ValueError(f"{where}: no images (shape {held})")
        x = _scale_images(x, where, "the array")
    if framing is not None:
        return frame_images(1 - x if invert else x, (height, width), framing)
    if x.shape[-2:] != (height, width):
        got = f"{x.shape[-2]}x{x.shape[-1]}"
        what = "images" if frame_shape is None else "frames"
        if not resize:
            raise ValueError(
                f"{where}: {what} of {got} pixels, the model was trained on {height}x{width} "
                "(resize them first, or resample with resize=True, --resize)"
            )
        x = resample(x, (height, width))
    if invert:
        x = 1 - x
    if frame_shape is not None:
        x = x.reshape(x.shape[0], x.shape[1], height * width)
    return np.ascontiguousarray(x, dtype=np.float32)


def _refuse_misread_layout(
    x: np.ndarray,
    where: str,
    image_shape: tuple[int, int],
    frame_shape: tuple[int, int] | None,
) -> None:
    """ValueError for arrays laid out otherwise than :func:`read_images` reads them, where
    reading them anyway would take them for images (frames) of another size: with resizing,
    wrong pixels, recognised without a word. Flat images (N, H*W) would read as one image of
    N x H*W pixels, and an image with its colour channels last (H, W, C), or clips with
    them (T, h, w, C), as images (frames) C pixels wide."""
    height, width = frame_shape or image_shape
    held = tuple(x.shape)
    if frame_shape is None and x.ndim == 2 and held != image_shape:
        if height > 1 and held[1] == height * width:
            raise ValueError(
                f"{where}: an array of shape {held} would read as one image of "
                f"{held[0]}x{held[1]} pixels: flat images? give them as (N, {height}, {width}) "
                f"(x.reshape(-1, {height}, {width}))"
            )
    rank = 3 if frame_shape is None else 4
    if x.ndim == rank and held[-1] in (1, 3, 4) and held[-1] != width:
        what = "images" if frame_shape is None else "frames"
        expected = "(H, W) or (N, H, W)" if frame_shape is None else "(T, H, W) or (N, T, H, W)"
        raise ValueError(
            f"{where}: an array of shape {held} would read as {what} of {held[-2]}x{held[-1]} "
            f"pixels: is its last axis colour channels? give grey {what} {expected} (a colour "
            "image as a .png)"
        )


#: the pictures Pillow reads, by suffix: the kind named in messages, and the formats Pillow
#: may report for it (an MPO is a JPEG with more pictures after it, as phones write)
PILLOW_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    ".png": ("PNG", ("PNG",)),
    ".jpg": ("JPEG", ("JPEG", "MPO")),
    ".jpeg": ("JPEG", ("JPEG", "MPO")),
    ".bmp": ("BMP", ("BMP", "DIB")),
    ".gif": ("GIF", ("GIF",)),
    ".webp": ("WebP", ("WEBP",)),
    ".tif": ("TIFF", ("TIFF",)),
    ".tiff": ("TIFF", ("TIFF",)),
}
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: pixels converted to luminance at a time: a photo's colour in float64 whole would take 24
#: bytes a pixel
_LUMINANCE_CHUNK = 1 << 20


def _pillow_luminance(path: Path, suffix: str, frames_wanted: int | None = None) -> np.ndarray:
    """A picture Pillow reads (PNG, JPEG, BMP, GIF, WebP, TIFF) as one grey (H, W) float32
    array in [0, 1], turned upright as its EXIF orientation says (a phone's photo is stored as
    the sensor saw it). Grey as it is (16-bit grey by 65535), colour by its luminance; a
    transparent pixel, more than one frame (an animation, pages), or pixels of unknown range
    (signed or 32-bit integers, floats) are refused. An MPO is read by its first picture.
    With ``frames_wanted`` (T, a model of clips): an animation (GIF, PNG, WebP) or the pages
    of a TIFF, of exactly T frames of one size, as one clip (T, H, W), each frame read as a
    picture is (as Pillow composes it, for an animation), turned as the first frame's EXIF
    says; another count of frames is refused.
    Pillow's warnings (of a decompression bomb, say) are given again naming the file; a MemoryError
    is left as it is (the picture is readable, this machine short of memory)."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Pillow reads PNG, JPEG, BMP, GIF, WebP and TIFF files: pip install "
                          "'rnncu[train]'") from exc  # fmt: skip
    kind, formats = PILLOW_KINDS[suffix]
    stack: list[np.ndarray] = []
    problem = None
    orientation = None
    # the filters as they are, not "always" for the bomb's warning: Pillow's guard, that
    # warning filtered as an error, then refuses a bomb before decoding it; and each file still
    # warns, entering catch_warnings forgetting which warnings were given at a place
    with warnings.catch_warnings(record=True) as caught:
        try:
            # from a file object, not the path: given a path Pillow maps an uncompressed
            # picture into memory, and 13.0 lays a TIFF turned a quarter (orientation 5
            # to 8) out by its turned size there, scrambling it
            with open(path, "rb") as file, Image.open(file) as image:
                frames = getattr(image, "n_frames", 1)
                if frames > 1 and image.format == "TIFF" and _reduced_copies_after(image):
                    frames = 1  # a scanner's thumbnails after the picture: read the picture
                if image.format == "MPO":
                    frames = 1  # a phone's JPEG with more pictures after it: its first
                if image.format not in formats:
                    problem = f"not a {kind} file (its bytes are a {image.format} image)"
                elif frames_wanted is None and frames > 1:
                    problem = (
                        f"the {kind} holds {frames} frames (an animation or pages): give one image"
                    )
                elif frames_wanted is not None and frames != frames_wanted:
                    # GIF and WebP writers (Pillow's among them) write a frame that repeats the
                    # one before once, for both their times: a clip that stands still loses it
                    # (APNG too: Pillow before 10.4 merged an APNG's repeats)
                    merged = (
                        " (its writer may have merged frames that repeat the one before)"
                        if 1 < frames < frames_wanted and image.format in ("GIF", "WEBP", "PNG")
                        else ""
                    )
                    problem = (
                        f"the {kind} holds {_frame_count(frames)}{merged}, the model reads clips "
                        f"of {frames_wanted} frames: give an animation (GIF, PNG, WebP) or a TIFF "
                        f"of {frames_wanted} frames, or arrays (N, T, H, W) as .npy or .npz"
                    )
                for index in range(frames if problem is None else 0):
                    if index:
                        image.seek(index)
                    pixels, problem = _frame_pixels(image, kind)
                    if index == 0:  # read after the pixels: a PNG's EXIF may follow them
                        orientation = _exif_orientation(image)
                    # of one height and width; a grey page and a colour one (H, W, 3) may mix
                    if pixels is not None and stack and pixels.shape[:2] != stack[0].shape[:2]:
                        problem = (
                            "its frames differ in size: {}x{} (frame 1) and {}x{} (frame {})"
                        ).format(*stack[0].shape[:2], *pixels.shape[:2], index + 1)
                    if pixels is None or problem is not None:
                        if frames_wanted is not None:
                            problem = f"frame {index + 1} of {frames}: {problem}"
                        break
                    stack.append(pixels)
        except MemoryError:
            raise
        except Exception as exc:  # a truncated or foreign file: Pillow's own errors
            message = f"{path}: cannot read {kind} ({type(exc).__name__}: {exc})"
            raise ValueError(message) from None
    # Pillow's warnings (a decompression bomb, corrupt EXIF, ...) name no file: given again
    # naming it. Each file's are its own (catching them also resets Python's record of what
    # it has shown, so a warning shown once per place would come again for every file, as
    # the same unnamed line).
    for warning in caught:
        warn_at_caller(f"{path}: {warning.message}", warning.category)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    grey = [_upright(_luminance(pixels), orientation) for pixels in stack]
    return np.ascontiguousarray(grey[0] if frames_wanted is None else np.stack(grey), np.float32)


def _frame_count(frames: int) -> str:
    return "one image" if frames == 1 else f"{frames} frames"


def _frame_pixels(image: Any, kind: str) -> tuple[np.ndarray | None, str | None]:
    """The pixels of a Pillow image's current frame, 8-bit (uint8, grey or colour) or float
    in [0, 1] (16-bit grey), or None and why they are refused (:func:`_pillow_luminance`)."""
    # first: how Pillow will decode the frame is known only until it has (its tile)
    rawmode = _png_rawmode(image) if image.format == "PNG" else None
    if image.mode in _SIXTEEN_BIT_GREY or (
        image.format == "PNG" and image.mode == "I"  # 16-bit grey, older Pillow
    ):
        deep = np.asarray(image)
        # the key compared here: Pillow compares it with the pixels clipped to 8 bits
        key = image.info.get("transparency")
        if isinstance(key, int) and (deep == key).any():
            return None, _transparent_problem(kind)
        pixels = deep / 65535
        if image.format == "TIFF" and image.tag_v2.get(0x0106) == 0:
            # WhiteIsZero: Pillow inverts 1- to 8-bit grey so, 16-bit not
            pixels = 1 - pixels
        return pixels, None
    if image.mode in ("I", "F"):
        return None, (
            f"pixels of mode {image.mode} (signed or 32-bit integers, or floats), "
            "whose range is not known: save it with unsigned 8- or 16-bit pixels"
        )
    if rawmode == "RGB;16B" and "transparency" in image.info:
        # Pillow reads 16-bit colour at 8 bits and compares the key's low bytes with them:
        # which pixels have the key is not known
        return None, (
            "the PNG names a transparent colour of 16-bit colour (a tRNS chunk), which is "
            "read at 8 bits, where its pixels cannot be told apart: flatten it onto its "
            "ground first"
        )
    if _has_transparent_pixels(image, rawmode):
        return None, _transparent_problem(kind)
    # bilevel to grey; colour (RGB, CMYK, YCbCr, a palette) by its luminance
    grey = image.mode in ("L", "1")
    return np.asarray(image.convert("L" if grey else "RGB")), None


def _reduced_copies_after(image: Any) -> bool:
    """Whether every page of a TIFF after its first is a reduced-resolution copy (its
    NewSubfileType has bit 0 set, and not bit 2, a transparency mask), such as the thumbnail a
    scanner or camera stores after the picture. Leaves the image at its first page."""
    try:
        for page in range(1, image.n_frames):
            image.seek(page)
            if image.tag_v2.get(0x00FE, 0) & 0b101 != 0b001:
                return False
        return True
    finally:
        image.seek(0)


def _transparent_problem(kind: str) -> str:
    return (
        f"the {kind} has transparent pixels, whose intensity is that of whatever lies "
        "beneath: flatten it onto its ground first"
    )


def _has_transparent_pixels(image: Any, rawmode: str | None) -> bool:
    """Whether a Pillow image of at most 8 bits a channel has a pixel less than opaque: by
    its alpha, a palette's transparent entries, or the one colour a grey or colour PNG names
    transparent (a tRNS chunk: only the pixels of that colour are, so a key no pixel has is
    no matter). ``rawmode``: how Pillow decodes a PNG's pixels (:func:`_png_rawmode`), else
    None."""
    key = image.info.get("transparency")
    if image.mode not in _ALPHA_MODES and key is None:
        return False
    if rawmode in ("1", "L;2", "L;4") and isinstance(key, int):
        # grey of 1, 2 or 4 bits is scaled to 8, its key not (Pillow 13 gives a bilevel key
        # as 0 or 255 and applies it, 11.0 did neither): scale it here
        depth = 1 if rawmode == "1" else int(rawmode[2:])
        scaled = (255 if key else 0) if depth == 1 else key * (255 // (2**depth - 1))
        return bool((np.asarray(image.convert("L")) == scaled).any())
    return bool((np.asarray(image.convert("RGBA"))[..., 3] < 255).any())


def _png_rawmode(image: Any) -> str | None:
    """How Pillow decodes a PNG's pixels, as it read them from the header (``L;2``: 2-bit
    grey, ``RGB;16B``: 16-bit colour, ...), before they are decoded. Not the file's bytes 24
    and 25, where the header is only if it is the first chunk: Pillow reads a PNG whose
    header comes after another chunk."""
    tile = getattr(image, "tile", None)
    return tile[0][3] if tile and isinstance(tile[0][3], str) else None


def _luminance(pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels (uint8) or float ones in [0, 1], grey (H, W) or colour (H, W, 3), as grey
    float32 in [0, 1]; colour by :data:`LUMA_WEIGHTS`, in float64 a slice of rows at a time
    (grey written as colour keeps its values exactly)."""
    scale = 255 if pixels.dtype == np.uint8 else 1
    if pixels.ndim == 2:
        return (pixels / scale).astype(np.float32)
    grey = np.empty(pixels.shape[:2], np.float32)
    luma = np.asarray(LUMA_WEIGHTS, dtype=np.float64)
    rows = max(1, _LUMINANCE_CHUNK // max(1, pixels.shape[1]))
    for top in range(0, pixels.shape[0], rows):
        grey[top : top + rows] = np.clip((pixels[top : top + rows] / scale) @ luma, 0, 1)
    return grey


def _exif_orientation(image: Any) -> object:
    """The EXIF orientation of a Pillow image, or None where its EXIF cannot be parsed: the
    pixels are then taken as stored (Pillow's ``ImageOps.exif_transpose`` writes the EXIF
    back, and fails on a tag it cannot write though the pixels decode)."""
    try:
        return image.getexif().get(0x0112)
    except Exception:  # a malformed EXIF block: nothing to turn the image by
        return None


def _upright(pixels: np.ndarray, orientation: object) -> np.ndarray:
    """``pixels`` (H, W) as they are to be seen, by an EXIF orientation (1 to 8; any other
    value, or None, leaves them as stored), as Pillow's ``ImageOps.exif_transpose`` turns
    them."""
    # 5 to 8 are stored on their side (5 and 7 mirrored too), 2 to 4 mirrored or turned round
    upright: np.ndarray = pixels.T if orientation in (5, 6, 7, 8) else pixels
    if orientation in (2, 3, 6, 7):  # then left to right
        upright = upright[:, ::-1]
    if orientation in (3, 4, 7, 8):  # then top to bottom
        upright = upright[::-1]
    return upright


def _image_array(path: Path, suffix: str) -> np.ndarray:
    """The array of a ``.npy`` file, or the ``x`` of an ``.npz``."""
    if suffix == ".npz":
        arrays = _npz_arrays(path)
        if "x" not in arrays:
            held = ", ".join(sorted(arrays)) or "no arrays"
            raise ValueError(f"{path}: .npz lacks x, the images (it holds {held})")
        return arrays["x"]
    try:
        with open(path, "rb") as file:
            magic = file.read(6)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read .npy ({exc.strerror or exc})") from None
    if magic.startswith(b"PK"):
        raise ValueError(f"{path}: an .npz archive, not a .npy file: name it .npz")
    if magic != b"\x93NUMPY":
        # np.load would take other bytes for a pickle (and suggest loading it unsafely)
        raise ValueError(f"{path}: not a .npy file (truncated, corrupt or another kind of file)")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(
                f"{path}: the .npy holds Python objects (refused: loading them would unpickle)"
            ) from None
        raise ValueError(f"{path}: cannot read .npy ({exc})") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read .npy ({type(exc).__name__}: {exc})") from None
    array: np.ndarray = x
    return array


#: a pixel is ink where it reaches this share of its image's brightest pixel (framing)
INK_THRESHOLD = 0.1


@dataclass(frozen=True)
class Framing:
    """Where a dataset's images hold their ink (light on a dark ground): ``extent``, the
    median over the images of the ink's bounding box's larger side as a share of the
    image's (the box's height over H or its width over W, whichever is larger), and
    ``center`` (y, x), the mean of their centres of mass, in pixels, and ``peak``, the
    median of their brightest pixels. Measured by :func:`image_framing`;
    :func:`frame_images` frames other images so."""

    extent: float
    center: tuple[float, float]
    peak: float = 1.0

    def __post_init__(self) -> None:
        # checked as a checkpoint's data.framing is: an extent of 0 or above 1 would frame
        # images as specks or cut them; stored as floats, as to_dict writes them
        extent, center = self.extent, self.center
        if not (_is_real(extent) and 0 < extent <= 1):
            raise ValueError(
                f"extent: expected a number in (0, 1] (a share of the image's side), got {extent!r}"
            )
        if not (
            isinstance(center, (tuple, list))
            and len(center) == 2
            and all(_is_real(v) and math.isfinite(v) for v in center)
        ):
            raise ValueError(
                f"center: expected (y, x), two finite numbers (pixels), got {center!r}"
            )
        if not (_is_real(self.peak) and 0 < self.peak <= 1):
            raise ValueError(
                f"peak: expected a number in (0, 1] (the brightest pixel's intensity), got "
                f"{self.peak!r}"
            )
        object.__setattr__(self, "extent", float(extent))
        object.__setattr__(self, "center", (float(center[0]), float(center[1])))
        object.__setattr__(self, "peak", float(self.peak))

    def to_dict(self) -> dict[str, Any]:
        """``{"extent": float, "center": [y, x], "peak": float}``, plain JSON types: what a
        checkpoint's ``data.framing`` holds (``Framing(**d)`` rebuilds it)."""
        return {"extent": self.extent, "center": list(self.center), "peak": self.peak}


def _is_real(value: Any) -> bool:
    """A real number (a NumPy one too), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _check_ink_images(images: Any) -> None:
    """ValueError unless ``images`` is (N, H, W) of pixels in [0, 1] (or bool), H, W >= 1:
    outside [0, 1] (8-bit integers, negative values) or NaN, the ink's box and mass would be
    wrong, or a whole image taken for blank, without a word."""
    if getattr(images, "ndim", None) != 3:
        got = getattr(images, "shape", type_name(images))
        raise ValueError(f"images: expected (N, H, W), got {got}")
    if 0 in images.shape[1:]:
        raise ValueError(
            f"images: expected images of at least 1x1 pixels, got shape {images.shape}"
        )
    if images.dtype.kind not in "biuf":
        raise ValueError(f"images: expected pixels in [0, 1], got dtype {images.dtype}")
    outside = _outside_unit_range(images)
    if outside:
        raise ValueError(
            f"images: expected pixels in [0, 1] (light ink on a dark ground), found {outside}"
        )


def _ink_boxes(images: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per image (N, H, W): the first and last rows and columns holding ink, and whether
    it is blank (no pixel above 0)."""
    peak = images.max(axis=(1, 2))
    blank = ~(peak > 0)
    ink = images >= (INK_THRESHOLD * peak)[:, None, None]
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom = images.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    right = images.shape[2] - 1 - cols[:, ::-1].argmax(axis=1)
    return top, bottom, left, right, blank


def _center_of_mass(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of each image (N, H, W) of positive sum, in pixels."""
    mass = images.sum(axis=(1, 2), dtype=np.float64)
    y = images.sum(axis=2, dtype=np.float64) @ np.arange(images.shape[1]) / mass
    x = images.sum(axis=1, dtype=np.float64) @ np.arange(images.shape[2]) / mass
    return y, x


def image_framing(images: np.ndarray) -> Framing:
    """The :class:`Framing` of images (N, H, W) in [0, 1], light ink on a dark ground; blank
    images are left out (ValueError where every one is blank)."""
    _check_ink_images(images)
    if not images.shape[0]:
        raise ValueError(f"images: no images (shape {images.shape}): there is no ink to frame")
    top, bottom, left, right, blank = _ink_boxes(images)
    inked = ~blank
    if not inked.any():
        raise ValueError("images: every image is blank: there is no ink to frame")
    height, width = images.shape[1:]
    sides = np.maximum((bottom - top + 1) / height, (right - left + 1) / width)
    y, x = _center_of_mass(images[inked])
    peak = float(np.median(images[inked].max(axis=(1, 2))))
    return Framing(float(np.median(sides[inked])), (float(y.mean()), float(x.mean())), peak)


def frame_images(images: np.ndarray, shape: tuple[int, int], framing: Framing) -> np.ndarray:
    """Images (N, h, w) in [0, 1], light ink on a dark ground, framed as ``framing`` says
    the training images are: each cropped to its ink (the pixels of at least
    :data:`INK_THRESHOLD` of its brightest), resampled by area averaging, its aspect kept, so
    that its larger share of the image's side (its height over H or its width over W,
    whichever is larger; its larger side where H == W) is ``framing.extent``, and placed on
    a dark image of ``shape`` (H, W) with its centre of mass on the whole pixel nearest
    ``framing.center`` that keeps it inside (the way MNIST frames its digits, with the
    training images' own figures). A blank image stays blank. float32 (N, H, W).

    ``shape`` is that of the images ``framing`` was measured on (its centre is in their
    pixels). The ground must be dark: a ground of a tenth of the ink's brightness or more
    is ink, and nothing is cropped. Intensities are scaled so that each image's brightest
    pixel is ``framing.peak``: thin strokes on a large image shrunk to a small one would
    otherwise come out faint (a 3-pixel pen on 280x280, framed into 8x8: a peak of about
    0.2)."""
    _check_ink_images(images)
    if not (
        isinstance(shape, (tuple, list))
        and len(shape) == 2
        and all(_is_real(v) and v == int(v) and v >= 1 for v in shape)
    ):
        raise ValueError(f"shape: expected (H, W), two positive integers, got {shape!r}")
    if not isinstance(framing, Framing):
        raise ValueError(f"framing: expected a Framing, got {type_name(framing)}")
    height, width = int(shape[0]), int(shape[1])
    framed = np.zeros((images.shape[0], height, width), dtype=np.float32)
    top, bottom, left, right, blank = _ink_boxes(images)
    for i in np.flatnonzero(~blank):
        crop = images[i, top[i] : bottom[i] + 1, left[i] : right[i] + 1]
        scale = framing.extent / max(crop.shape[0] / height, crop.shape[1] / width)
        size = (
            min(height, max(1, round(crop.shape[0] * scale))),
            min(width, max(1, round(crop.shape[1] * scale))),
        )
        # the crop's brightest brought to 1 first, in float64: ink fainter than float32's
        # least number (1e-300, say, ink all the same) would resample to 0, then 0 / 0
        piece = resample(crop / np.float64(crop.max()), size)
        # thin strokes drawn large come out faint once shrunk: the training images' contrast
        piece *= np.float32(framing.peak / piece.max())
        np.minimum(piece, 1, out=piece)  # a rounding above 1 where the peak is 1
        y, x = _center_of_mass(piece[None])
        row = int(np.clip(round(framing.center[0] - y[0]), 0, height - size[0]))
        col = int(np.clip(round(framing.center[1] - x[0]), 0, width - size[1]))
        framed[i, row : row + size[0], col : col + size[1]] = piece
    return framed


def resample(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Images (..., H, W) resampled to ``shape`` (h, w) by area averaging: each new pixel is
    the mean of the old ones it covers, weighted by the overlap (a 2x2 block of equal pixels
    gives that value exactly; enlarging repeats pixels). float32."""
    rows = _area_weights(images.shape[-2], shape[0])
    cols = _area_weights(images.shape[-1], shape[1])
    # two matrix products (rows, then columns): einsum's three operands at once cost
    # h*H*W*w multiply-adds a pixel block, 10 to 100 times slower on one image
    out = rows @ images.astype(np.float64) @ cols.T
    resampled: np.ndarray = np.clip(out, 0, 1).astype(np.float32)
    return resampled


def _area_weights(size: int, new_size: int) -> np.ndarray:
    """(new_size, size): row i averages the old pixels that new pixel i covers."""
    scale = size / new_size
    low = np.arange(new_size)[:, None] * scale
    high = low + scale
    old = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(high, old + 1) - np.maximum(low, old), 0, None)
    weights: np.ndarray = overlap / overlap.sum(axis=1, keepdims=True)
    return weights
