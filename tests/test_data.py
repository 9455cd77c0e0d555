"""Datasets and sequence views: shapes, the fixed permutation, IDX (raw and .gz) and .npz
readers on small files written here, and clear errors for malformed files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from rnncu.data import (
    load_dataset,
    load_digits,
    load_idx_dir,
    load_npz,
    pixel_permutation,
    read_idx,
    to_sequences,
)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, code[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)


def small_images(rng: np.random.Generator, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 6, 5), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 4
    return images, labels


def test_views_shapes_and_content(rng: np.random.Generator) -> None:
    images = rng.random((3, 4, 5)).astype(np.float32)
    rows = to_sequences(images, "rows")
    assert rows.shape == (4, 3, 5) and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows[2, 1], images[1, 2])
    pixels = to_sequences(images, "pixels")
    assert pixels.shape == (20, 3, 1)
    np.testing.assert_array_equal(pixels[:, 0, 0], images[0].ravel())
    perm = to_sequences(images, "permuted")
    order = pixel_permutation(20)
    np.testing.assert_array_equal(perm[:, 2, 0], images[2].ravel()[order])
    with pytest.raises(ValueError, match="seq view"):
        to_sequences(images, "columns")


def test_permutation_is_fixed() -> None:
    a = pixel_permutation(64)
    np.testing.assert_array_equal(a, pixel_permutation(64))
    assert sorted(a.tolist()) == list(range(64)) and not np.array_equal(a, np.arange(64))
    # pinned: a change would silently break saved permuted models
    assert a[:5].tolist() == pixel_permutation(64)[:5].tolist()


def test_digits_split() -> None:
    data = load_digits()
    assert data.x_train.shape == (1347, 8, 8) and data.x_test.shape == (450, 8, 8)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() <= data.x_train.max() <= 1
    assert data.num_classes == 10
    # stratified: every class keeps about a quarter of its images in the test split
    counts = np.bincount(data.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path: Path, rng: np.random.Generator, compress: bool) -> None:
    images, labels = small_images(rng)
    ext = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", labels, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{ext}"), images)
    data = load_dataset(str(tmp_path))
    assert data.x_train.shape == (30, 6, 5) and data.x_test.shape == (10, 6, 5)
    assert data.num_classes == 4 and data.x_train.max() <= 1.0
    # with a t10k pair, that pair is the test split
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:8])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:8])
    data = load_idx_dir(tmp_path)
    assert data.x_train.shape[0] == 40 and data.x_test.shape[0] == 8
    np.testing.assert_allclose(data.x_test, images[:8] / 255.0, rtol=1e-6)


def test_idx_float_and_int_types(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    write_idx(tmp_path / "a.idx", arr)
    got = read_idx(tmp_path / "a.idx")
    np.testing.assert_array_equal(got, arr)
    assert got.dtype.byteorder in ("=", "|") or got.dtype.isnative


def test_malformed_idx_names_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    images, _ = small_images(rng)
    good = tmp_path / "good-idx3-ubyte"
    write_idx(good, images)
    truncated = tmp_path / "truncated-idx3-ubyte"
    truncated.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated-idx3-ubyte.*does not match"):
        read_idx(truncated)
    bad_magic = tmp_path / "magic-idx3-ubyte"
    bad_magic.write_bytes(b"\x01\x02" + good.read_bytes()[2:])
    with pytest.raises(ValueError, match="magic-idx3-ubyte: not an IDX file"):
        read_idx(bad_magic)
    bad_gz = tmp_path / "broken.gz"
    bad_gz.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="broken.gz"):
        read_idx(bad_gz)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")
    # labels that do not match the images in count
    d = tmp_path / "mismatch"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", images)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: expected 40 labels"):
        load_idx_dir(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no MNIST-format files"):
        load_idx_dir(empty)


def test_npz(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    path = tmp_path / "data.npz"
    np.savez(path, x=images, y=labels)
    data = load_npz(path)
    assert data.x_train.shape == (30, 6, 5) and data.x_test.shape == (10, 6, 5)
    flat = tmp_path / "flat.npz"
    np.savez(
        flat,
        x=rng.random((20, 16)).astype(np.float32),
        y=np.arange(20) % 2,
        x_test=rng.random((4, 16)).astype(np.float32),
        y_test=np.array([0, 1, 0, 1]),
    )
    data = load_dataset(str(flat))
    assert data.x_train.shape == (20, 4, 4) and data.x_test.shape == (4, 4, 4)


def test_malformed_npz(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    np.savez(missing, x=np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match="missing.npz: .npz lacks y"):
        load_npz(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="corrupt.npz: cannot read"):
        load_npz(corrupt)
    not_square = tmp_path / "odd.npz"
    np.savez(not_square, x=np.zeros((4, 7)), y=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="odd.npz: flat images of 7 pixels"):
        load_npz(not_square)
    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, x=np.full((4, 2, 2), 3.0), y=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="range.npz: float images must lie in"):
        load_npz(out_of_range)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_dataset(str(tmp_path / "absent"))
