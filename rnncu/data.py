"""Image datasets and their sequence views.

A :class:`ImageDataset` holds host arrays: images (N, H, W) float32 in [0, 1] and integer
labels (N,), already split into train and test. :func:`to_sequences` turns images into the
(T, N, D) time-major sequences the RNN reads:

* ``rows``: T = H, D = W (one image row per step);
* ``pixels``: T = H*W, D = 1 (one pixel per step, in reading order);
* ``permuted``: the pixels under one fixed random permutation (:data:`PERMUTATION_SEED`),
  the same for every run, so models and checkpoints stay comparable.

Sources: ``digits`` (scikit-learn's 1797 8x8 digits, shipped with scikit-learn, split
stratified 75/25 with random_state=0), MNIST-format IDX files (raw or .gz) and ``.npz`` files
with ``x`` and ``y`` (optionally ``x_test`` and ``y_test``).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PERMUTATION_SEED",
    "SEQ_VIEWS",
    "ImageDataset",
    "load_dataset",
    "load_digits",
    "load_idx_dir",
    "load_npz",
    "pixel_permutation",
    "read_idx",
    "split_stratified",
    "to_sequences",
]

SEQ_VIEWS = ("rows", "pixels", "permuted")
#: the permuted view uses this seed for every run (fixed, not the training seed)
PERMUTATION_SEED = 1234


@dataclass
class ImageDataset:
    """Train and test images (N, H, W) float32 in [0, 1] with int64 labels (N,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.x_train.shape[1]), int(self.x_train.shape[2]))


def pixel_permutation(num_pixels: int) -> np.ndarray:
    """The fixed permutation of the ``permuted`` view (depends only on the pixel count)."""
    return np.random.default_rng(PERMUTATION_SEED).permutation(num_pixels)


def to_sequences(images: np.ndarray, view: str = "rows") -> np.ndarray:
    """Images (N, H, W) -> time-major sequences (T, N, D), C-contiguous, same dtype."""
    if images.ndim != 3:
        raise ValueError(f"to_sequences: expected images (N, H, W), got shape {images.shape}")
    n, h, w = images.shape
    if view == "rows":
        seq = images
    elif view == "pixels":
        seq = images.reshape(n, h * w, 1)
    elif view == "permuted":
        seq = images.reshape(n, h * w)[:, pixel_permutation(h * w)].reshape(n, h * w, 1)
    else:
        raise ValueError(f"seq view: expected one of {', '.join(SEQ_VIEWS)}, got {view!r}")
    return np.ascontiguousarray(seq.transpose(1, 0, 2))


def seq_shape(image_shape: tuple[int, int], view: str) -> tuple[int, int]:
    """``(T, D)`` of ``view`` for images of ``image_shape``."""
    h, w = image_shape
    if view == "rows":
        return h, w
    if view in ("pixels", "permuted"):
        return h * w, 1
    raise ValueError(f"seq view: expected one of {', '.join(SEQ_VIEWS)}, got {view!r}")


def split_stratified(
    x: np.ndarray, y: np.ndarray, test_size: float = 0.25, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's stratified ``train_test_split``: ``(x_train, x_test, y_train, y_test)``."""
    train_test_split = _sklearn().model_selection.train_test_split
    return train_test_split(x, y, test_size=test_size, random_state=random_state, stratify=y)


def _sklearn():
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
    return ImageDataset("digits", x_tr, y_tr, x_te, y_te, 10)


# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw, or gzip-compressed when it ends in ``.gz``) into a native-order
    array. A malformed file raises ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                blob = fh.read()
        else:
            blob = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read IDX file ({exc})") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = blob[2], blob[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (unknown data type code 0x{code:02x})")
    if ndim < 1 or len(blob) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = blob[4 + 4 * ndim :]
    if len(payload) != expected:
        raise ValueError(
            f"{path}: IDX data size {len(payload)} bytes does not match the header "
            f"dimensions {tuple(dims)} ({expected} bytes); truncated or corrupt"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _scale_images(x: np.ndarray, source: str) -> np.ndarray:
    """Images to float32 in [0, 1]: integers are divided by 255 (MNIST's bytes), floats must
    already lie in [0, 1]."""
    if np.issubdtype(x.dtype, np.integer):
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    x = x.astype(np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise ValueError(f"{source}: float images must lie in [0, 1]")
    return x


def _as_images(x: np.ndarray, source: str) -> np.ndarray:
    """(N, H, W), (N, H, W, 1) or (N, D) with D a perfect square -> (N, H, W)."""
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"{source}: flat images of {x.shape[1]} pixels are not square")
        x = x.reshape(x.shape[0], side, side)
    if x.ndim != 3:
        raise ValueError(f"{source}: expected images (N, H, W), got shape {x.shape}")
    return x


def _labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{source}: expected {n} labels (N,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{source}: labels must be integers")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0")
    return y


def _finish(name, x_tr, y_tr, x_te, y_te) -> ImageDataset:
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(f"{name}: train images {x_tr.shape[1:]} and test {x_te.shape[1:]} differ")
    num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return ImageDataset(name, x_tr, y_tr, x_te, y_te, num_classes)


def load_npz(path: str | os.PathLike[str]) -> ImageDataset:
    """An ``.npz`` with ``x`` (images) and ``y`` (int labels); with ``x_test``/``y_test`` those
    are the test split, else a stratified 75/25 split with random_state=0 is made."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled object arrays), ...
        raise ValueError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: .npz lacks {' and '.join(missing)} (needs x and y)")
    x = _scale_images(_as_images(arrays["x"], str(path)), str(path))
    y = _labels(arrays["y"], x.shape[0], str(path))
    if "x_test" in arrays and "y_test" in arrays:
        x_te = _scale_images(_as_images(arrays["x_test"], str(path)), str(path))
        y_te = _labels(arrays["y_test"], x_te.shape[0], str(path))
        return _finish(path.name, x, y, x_te, y_te)
    x_tr, x_te, y_tr, y_te = split_stratified(x, y)
    return _finish(path.name, x_tr, y_tr, x_te, y_te)


def _find_idx(directory: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_dir(directory: str | os.PathLike[str]) -> ImageDataset:
    """A directory with MNIST-format files ``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte`` (raw or .gz) and optionally the ``t10k-*`` pair; without the
    test pair the training files are split stratified 75/25 with random_state=0."""
    directory = Path(directory)
    train_x = _find_idx(directory, "train-images-idx3-ubyte")
    train_y = _find_idx(directory, "train-labels-idx1-ubyte")
    if train_x is None or train_y is None:
        raise FileNotFoundError(
            f"{directory}: no MNIST-format files (expected train-images-idx3-ubyte[.gz] and "
            "train-labels-idx1-ubyte[.gz])"
        )
    x = _scale_images(_as_images(read_idx(train_x), str(train_x)), str(train_x))
    y = _labels(read_idx(train_y), x.shape[0], str(train_y))
    test_x = _find_idx(directory, "t10k-images-idx3-ubyte")
    test_y = _find_idx(directory, "t10k-labels-idx1-ubyte")
    if test_x is not None and test_y is not None:
        x_te = _scale_images(_as_images(read_idx(test_x), str(test_x)), str(test_x))
        y_te = _labels(read_idx(test_y), x_te.shape[0], str(test_y))
        return _finish(directory.name, x, y, x_te, y_te)
    x_tr, x_te, y_tr, y_te = split_stratified(x, y)
    return _finish(directory.name, x_tr, y_tr, x_te, y_te)


def load_dataset(spec: str = "digits") -> ImageDataset:
    """``"digits"``, a directory of MNIST-format IDX files, or a ``.npz`` file."""
    if spec == "digits":
        return load_digits()
    path = Path(spec)
    if path.is_dir():
        return load_idx_dir(path)
    if path.suffix == ".npz":
        return load_npz(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {spec!r}: no such file or directory (or use 'digits')")
    raise ValueError(f"dataset {spec!r}: expected 'digits', a directory of IDX files or a .npz")
