"""Datasets and sequence views: shapes, the fixed permutation, IDX (raw and .gz) and .npz
readers on small files written here, and clear errors for malformed files."""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from zip_members import rewrite_member

from rnncu.data import (
    MAX_CLASSES,
    ImageDataset,
    _directory_label,
    check_dataset,
    dataset_digest,
    load_dataset,
    load_digits,
    load_idx_dir,
    load_npz,
    pixel_permutation,
    read_idx,
    seq_shape,
    split_stratified,
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
    with pytest.raises(ValueError, match="^to_sequences: view: expected one of rows, pixels, pe"):
        to_sequences(images, "columns")
    with pytest.raises(ValueError, match="^seq_shape: view: expected one of rows, pixels, perm"):
        seq_shape((4, 5), "columns")


def test_permutation_is_fixed() -> None:
    a = pixel_permutation(64)
    np.testing.assert_array_equal(a, pixel_permutation(64))
    assert sorted(a.tolist()) == list(range(64)) and not np.array_equal(a, np.arange(64))
    # pinned to literal values (PERMUTATION_SEED 1234): a change would silently break saved
    # permuted models, whose first layer was trained on this pixel order
    assert a[:16].tolist() == [47, 24, 10, 62, 54, 53, 41, 12, 39, 21, 19, 22, 43, 34, 63, 59]
    assert pixel_permutation(784)[:8].tolist() == [216, 153, 478, 609, 592, 393, 67, 663]


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
    with pytest.raises(FileNotFoundError, match=r"no MNIST-format files \(expected .*\)$"):
        load_idx_dir(empty)
    # torchvision's root: MNIST/ holds raw/ (the files) and processed/; the folder is named
    (empty / "raw").mkdir()
    (empty / "processed").mkdir()
    write_idx(empty / "raw" / "train-images-idx3-ubyte.gz", images, compress=True)
    said = rf"no MNIST-format files \(expected .*\); {re.escape(str(empty / 'raw'))} has them$"
    with pytest.raises(FileNotFoundError, match=said):
        load_idx_dir(empty)


def test_an_idx_directory_is_named_by_its_folder(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name in metrics and plot titles: torchvision's MNIST/raw was "raw" (every such run
    alike), and a directory given as "." had the empty name."""
    images, labels = small_images(rng)
    for folder in (tmp_path / "FashionMNIST" / "raw", tmp_path / "mine", tmp_path / "Raw2"):
        folder.mkdir(parents=True)
        write_idx(folder / "train-images-idx3-ubyte", images)
        write_idx(folder / "train-labels-idx1-ubyte", labels)
    assert load_idx_dir(tmp_path / "FashionMNIST" / "raw").name == "FashionMNIST"
    assert load_dataset(str(tmp_path / "FashionMNIST" / "raw") + os.sep).name == "FashionMNIST"
    assert load_idx_dir(tmp_path / "Raw2").name == "Raw2"
    monkeypatch.chdir(tmp_path / "mine")
    assert load_idx_dir(".").name == "mine"
    monkeypatch.chdir(tmp_path / "FashionMNIST" / "raw")
    assert load_dataset(".").name == "FashionMNIST"
    # with the test pair too, and raw in capitals
    folder = tmp_path / "KMNIST" / "RAW"
    folder.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    assert load_idx_dir(folder).name == "KMNIST"
    # a folder at the root of a file system: its own name, and the root its path
    assert _directory_label(Path("/raw")) == "raw" and _directory_label(Path("/")) == "/"


def test_an_idx_directory_through_a_link_is_named_by_the_link(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A dataset kept elsewhere and linked into place (~/data/MNIST -> a store's folder) went
    by the link's name, the one the user gave; following the link named it by the store's
    folder (a hash, say), and MNIST/raw as a link by the folder holding the target."""
    images, labels = small_images(rng)
    store = tmp_path / "store" / "3f9a1c"
    store.mkdir(parents=True)
    write_idx(store / "train-images-idx3-ubyte", images)
    write_idx(store / "train-labels-idx1-ubyte", labels)
    (tmp_path / "MNIST").symlink_to(store, target_is_directory=True)
    assert load_idx_dir(tmp_path / "MNIST").name == "MNIST"
    (tmp_path / "Fashion").mkdir()
    (tmp_path / "Fashion" / "raw").symlink_to(store, target_is_directory=True)
    assert load_idx_dir(tmp_path / "Fashion" / "raw").name == "Fashion"
    assert load_dataset(str(tmp_path / "Fashion" / "raw") + os.sep).name == "Fashion"


def test_the_folder_named_for_idx_files_is_found_as_the_files_are(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder named in the error holds the files under any case (as they are read), is
    the first by name where several do, and one that cannot be listed is passed over."""
    images, _ = small_images(rng)
    root = tmp_path / "MNIST"
    (root / "raw").mkdir(parents=True)
    write_idx(root / "raw" / "TRAIN-IMAGES-IDX3-UBYTE.GZ", images, compress=True)

    def said(sub: str) -> str:
        return rf"no MNIST-format files \(expected .*\); {re.escape(str(root / sub))} has them$"

    with pytest.raises(FileNotFoundError, match=said("raw")):
        load_idx_dir(root)
    (root / "copy").mkdir()
    write_idx(root / "copy" / "train-images-idx3-ubyte", images)
    with pytest.raises(FileNotFoundError, match=said("copy")):
        load_idx_dir(root)
    (root / "locked").mkdir()
    listed = Path.iterdir

    def iterdir(self: Path):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return listed(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(FileNotFoundError, match=said("copy")):
        load_idx_dir(root)


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
    with pytest.raises(
        ValueError, match=r"missing.npz: .npz lacks y \(needs x and y; it holds x\)"
    ):
        load_npz(missing)
    renamed = tmp_path / "renamed.npz"
    np.savez(renamed, images=np.ones((4, 3, 3)), labels=np.arange(4))
    with pytest.raises(
        ValueError, match=r"lacks x and y \(needs x and y; it holds images, labels\)"
    ):
        load_npz(renamed)
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(ValueError, match=r"lacks x and y \(needs x and y; it holds no arrays\)"):
        load_npz(empty)
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
    # just over 1: the bound is printed in full (":g" printed "found 0..1")
    np.savez(out_of_range, x=np.array([0.0, 1 + 1e-9, 0.5, 0.25]).reshape(4, 1, 1), y=np.arange(4))
    with pytest.raises(ValueError, match=r"found 0\.0\.\.1\.000000001 in"):
        load_npz(out_of_range)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_dataset(str(tmp_path / "absent"))


def test_integer_images_must_be_8_bit(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=images.astype(np.int16) * 100, y=labels)
    with pytest.raises(ValueError, match=r"wide.npz: integer images must lie in 0\.\.255.*'x'"):
        load_npz(wide)
    negative = tmp_path / "neg.npz"
    np.savez(negative, x=images.astype(np.int64) - 128, y=labels)
    with pytest.raises(ValueError, match=r"neg.npz: .*found -128\.\.127 in array 'x'"):
        load_npz(negative)
    binary = tmp_path / "binary.npz"
    np.savez(binary, x=(images > 127).astype(np.int64), y=labels)
    with pytest.raises(ValueError, match="binary.npz: integer images hold only 0 and 1.*bool"):
        load_npz(binary)
    # the same mask as bool reads as 0 and 1
    np.savez(binary, x=images > 127, y=labels, x_test=images[:4] > 127, y_test=labels[:4])
    data = load_npz(binary)
    np.testing.assert_array_equal(data.x_test, (images[:4] > 127).astype(np.float32))
    text = tmp_path / "text.npz"
    np.savez(text, x=images.astype(str), y=labels)
    with pytest.raises(ValueError, match="text.npz: expected numeric images.*'x' has dtype <U"):
        load_npz(text)
    # IDX files of int16 values (a valid type code) are not 8-bit intensities either
    d = tmp_path / "idx16"
    d.mkdir()
    blob = bytes([0, 0, 0x0B, 3]) + struct.pack(">3I", 40, 6, 5)
    (d / "train-images-idx3-ubyte").write_bytes(blob + (images.astype(">i2") * 100).tobytes())
    write_idx(d / "train-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: integer images must lie"):
        load_idx_dir(d)


def test_npz_test_pair_and_empty_images(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    half = tmp_path / "half.npz"
    np.savez(half, x=images, y=labels, x_test=images[:4])
    with pytest.raises(ValueError, match="half.npz: .npz has x_test but lacks y_test"):
        load_npz(half)
    np.savez(half, x=images, y=labels, y_test=labels[:4])
    with pytest.raises(ValueError, match="half.npz: .npz has y_test but lacks x_test"):
        load_npz(half)
    for shape in ((40, 6, 0), (40, 0, 5)):
        flat = tmp_path / "zero.npz"
        np.savez(flat, x=np.zeros(shape, np.float32), y=labels)
        with pytest.raises(ValueError, match=r"zero.npz: images of \dx\d pixels in array 'x'"):
            load_npz(flat)


def test_single_class_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    path = tmp_path / "one.npz"
    np.savez(path, x=images, y=np.full_like(labels, 3))
    with pytest.raises(ValueError, match=r"one.npz.*a single class \(3\); expected at least 2"):
        load_npz(path)
    # the test split may hold one class; only the training split must have two
    np.savez(path, x=images, y=labels % 2, x_test=images[:4], y_test=np.ones(4, np.int64))
    data = load_npz(path)
    assert data.num_classes == 2 and set(data.y_test.tolist()) == {1}


@pytest.mark.parametrize("dtype", [str, complex])
def test_non_integer_label_dtypes(tmp_path: Path, rng: np.random.Generator, dtype) -> None:
    images, labels = small_images(rng)
    path = tmp_path / "labels.npz"
    np.savez(path, x=images, y=labels.astype(dtype))
    with pytest.raises(ValueError, match="labels.npz: labels must be integers, array 'y'"):
        load_npz(path)


@pytest.mark.parametrize(
    "huge, shown",
    [
        (np.uint64(2**40), "1099511627776"),
        (np.uint64(2**63 + 5), "9223372036854775813"),  # int64 would wrap it negative
        (1e20, "1e+20"),  # a float cast to int64 would wrap too
        (1000, "1000"),
    ],
)
def test_labels_have_an_upper_bound(tmp_path: Path, rng: np.random.Generator, huge, shown) -> None:
    # one stray label would size the classifier and its confusion matrix: 2**40 classes
    images, labels = small_images(rng)
    y = labels.astype(np.asarray(huge).dtype)
    y[7] = huge
    path = tmp_path / "huge.npz"
    np.savez(path, x=images, y=y)
    found = rf"class indices below 1000, found {re.escape(shown)} in array 'y' "
    with pytest.raises(ValueError, match=found):
        load_npz(path)
    y[[7, 11]] = MAX_CLASSES - 1  # the largest allowed (twice: the split stratifies)
    np.savez(path, x=images, y=y)
    assert load_npz(path).num_classes == MAX_CLASSES


def test_idx_test_pair_must_be_whole(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:8], compress=True)
    with pytest.raises(ValueError, match=r"has t10k-images-idx3-ubyte.gz but no t10k-labels"):
        load_idx_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:8])
    with pytest.raises(ValueError, match=r"has t10k-labels-idx1-ubyte but no t10k-images"):
        load_idx_dir(tmp_path)


def test_file_names_and_kinds(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    upper_dir = tmp_path / "UPPER"
    upper_dir.mkdir()
    write_idx(upper_dir / "TRAIN-IMAGES-IDX3-UBYTE.GZ", images, compress=True)
    write_idx(upper_dir / "train-labels-idx1-ubyte.GZ", labels, compress=True)
    assert load_idx_dir(upper_dir).num_classes == 4
    upper = tmp_path / "UPPER.NPZ"
    with open(upper, "wb") as fh:
        np.savez(fh, x=images, y=labels)
    assert load_dataset(upper).num_classes == 4
    # gzip data under a raw name: say what it is
    zipped = tmp_path / "zipped-idx3-ubyte"
    write_idx(zipped, images, compress=True)
    with pytest.raises(ValueError, match="zipped-idx3-ubyte: gzip-compressed data: name the file"):
        read_idx(zipped)
    scalar = tmp_path / "scalar-idx"
    scalar.write_bytes(bytes([0, 0, 0x08, 0]) + b"\x07")
    with pytest.raises(ValueError, match="scalar-idx: not an IDX file of arrays"):
        read_idx(scalar)


def test_unreadable_npz_is_not_called_corrupt(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rnncu.data as data_module

    images, labels = small_images(rng)
    path = tmp_path / "locked.npz"
    np.savez(path, x=images, y=labels)

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(data_module, "open", denied, raising=False)
    with pytest.raises(ValueError, match=r"locked.npz: cannot read .npz \(Permission denied\)"):
        load_npz(path)


def test_idx_header_size_does_not_wrap(tmp_path: Path) -> None:
    # 2**31 cubed overflows int64 to 0, which matched an empty payload
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31))
    with pytest.raises(ValueError, match="huge-idx3-ubyte: IDX data size 0 bytes does not match"):
        read_idx(path)


def test_split_errors_name_the_dataset(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    lonely = tmp_path / "lonely.npz"
    np.savez(lonely, x=images[:9], y=np.array([0, 0, 0, 0, 1, 1, 1, 1, 2]))
    with pytest.raises(ValueError, match="lonely.npz: class 2 has only 1 image"):
        load_npz(lonely)
    few = tmp_path / "few.npz"  # 2 test images for 4 classes
    np.savez(few, x=images[:8], y=labels[:8])
    with pytest.raises(ValueError, match="few.npz: cannot split 8 images of 4 classes"):
        load_npz(few)
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=images[:0], y=labels[:0])
    with pytest.raises(ValueError, match="empty.npz: no images"):
        load_npz(empty)
    np.savez(empty, x=images[:0], y=labels[:0], x_test=images[:2], y_test=labels[:2])
    with pytest.raises(ValueError, match="empty.npz: no training images"):
        load_npz(empty)
    with pytest.raises(TypeError, match="dataset spec: .*got NoneType None"):
        load_dataset(None)  # type: ignore[arg-type]


def test_pickles_are_refused_without_suggesting_to_unpickle(tmp_path: Path) -> None:
    import pickle

    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"x": np.zeros((4, 2, 2))}))
    with pytest.raises(ValueError, match="pickled.npz: cannot read .npz: not a zip") as exc:
        load_npz(pickled)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([object()] * 4), y=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="objects.npz: not a valid .npz of arrays: 'x'") as exc2:
        load_npz(objects)
    for info in (exc, exc2):
        assert "allow_pickle" not in str(info.value) and "unsafely" not in str(info.value)


def test_split_stratified_returns_a_stratified_tuple() -> None:
    rng = np.random.default_rng(8)
    x = rng.random((40, 3, 3))
    y = np.repeat(np.arange(4), 10)
    parts = split_stratified(x, y, test_size=0.25)
    assert isinstance(parts, tuple) and len(parts) == 4  # scikit-learn's is a list
    x_train, x_test, y_train, y_test = parts
    assert x_train.shape == (30, 3, 3) and x_test.shape == (10, 3, 3)
    assert sorted(np.bincount(y_test, minlength=4).tolist()) == [2, 2, 3, 3]  # stratified
    np.testing.assert_array_equal(np.bincount(y_train) + np.bincount(y_test), np.bincount(y))
    with pytest.raises(ValueError, match=r"^mine: class 2 has only 1 image"):
        split_stratified(x[:9], np.array([0, 0, 0, 0, 1, 1, 1, 1, 2]), name="mine")


def _bad_copies(data: ImageDataset) -> dict[str, tuple[ImageDataset | str, str]]:
    """In-memory datasets that break one rule each -> (dataset, the message's start)."""
    replace = dataclasses.replace
    nan_images = data.x_train.copy()
    nan_images[3, 2, 1] = np.nan
    return {
        "fractional labels": (replace(data, y_train=data.y_train + 0.7), "data: labels must"),
        "fewer images": (replace(data, x_train=data.x_train[:5]), "data: expected 5 labels"),
        "fewer labels": (replace(data, y_train=data.y_train[:5]), "data: expected 1347 labels"),
        "pixels to 255": (replace(data, x_train=data.x_train * 255), "data.x_train: images"),
        "negative pixels": (replace(data, x_test=-data.x_test), "data.x_test: images must"),
        "NaN pixel": (replace(data, x_train=nan_images), "data.x_train: images must lie"),
        "uint8 images": (
            replace(data, x_train=(data.x_train * 255).astype(np.uint8)),
            "data.x_train: expected float images",
        ),
        "flat images": (replace(data, x_test=data.x_test.reshape(-1, 64)), "data.x_test: "),
        "sizes differ": (replace(data, x_test=data.x_test[:, :4]), "data: training images"),
        "list labels": (replace(data, y_test=list(data.y_test)), "data.y_test: expected a "),
        "too few classes": (replace(data, num_classes=5), "data.num_classes: expected"),
        # labels 0..9 need 10 outputs: 9, the largest label itself, is one too few
        "the largest label": (replace(data, num_classes=9), "data.num_classes: expected an in"),
        "bool classes": (replace(data, num_classes=True), "data.num_classes: expected"),
        "one class": (replace(data, y_train=np.ones_like(data.y_train)), "data.y_train: the"),
        "a name": ("digits", "data: expected an ImageDataset"),
    }


@pytest.mark.parametrize("case", sorted(_bad_copies(load_digits())))
def test_check_dataset_names_the_field_that_breaks_a_rule(case: str) -> None:
    data, message = _bad_copies(load_digits())[case]
    with pytest.raises((ValueError, TypeError), match="^" + re.escape(message)):
        check_dataset(data)


def test_check_dataset_keeps_a_good_dataset_and_converts_its_labels() -> None:
    digits = load_digits()
    data = dataclasses.replace(
        digits, y_train=digits.y_train.astype(np.float64), num_classes=np.int64(12)
    )
    checked = check_dataset(data)
    assert checked.y_train.dtype == np.int64 and checked.y_test.dtype == np.int64
    np.testing.assert_array_equal(checked.y_train, digits.y_train)
    assert checked.num_classes == 12 and type(checked.num_classes) is int
    assert checked.x_train is digits.x_train and checked.source == digits.source


def test_npz_member_without_an_array_header(tmp_path: Path) -> None:
    """NumPy returns such a member's raw bytes, which had failed with an AttributeError."""
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.random.default_rng(0).random((20, 4, 4)), y=np.arange(20) % 2)
    rewrite_member(path, "x.npy", b"garbage")
    with pytest.raises(ValueError, match=r"mine.npz: cannot read .npz .*'x' is not an array"):
        load_npz(path)


def test_data_functions_name_their_bad_arguments(tmp_path: Path) -> None:
    """IndexError, AttributeError, pathlib's TypeError or NumPy's 64-dimension message had
    come instead, naming no argument or file."""
    x = np.random.default_rng(1).random((20, 3, 3))
    y = np.arange(20) % 2
    for bad_x, bad_y in ((x, None), (x, 3), (None, y), (x, y[:5])):
        with pytest.raises(ValueError, match=r"^dataset: expected x \(N, ...\) and labels y"):
            split_stratified(bad_x, bad_y)
    with pytest.raises(TypeError, match=r"^to_sequences: images: expected a NumPy array"):
        to_sequences(x.tolist())
    with pytest.raises(TypeError, match=r"^read_idx: path: expected a str or path, got NoneT"):
        read_idx(None)  # type: ignore[arg-type]
    deep = tmp_path / "deep-idx"
    deep.write_bytes(bytes([0, 0, 8, 65]) + struct.pack(">65I", *[1] * 65) + b"\0")
    with pytest.raises(ValueError, match=r"deep-idx: 65 dimensions in the IDX header"):
        read_idx(deep)
    with pytest.raises(FileNotFoundError, match=r"deep-idx: is not a directory"):
        load_idx_dir(deep)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such directory"):
        load_idx_dir(tmp_path / "nowhere")


def test_check_dataset_takes_bool_images_as_the_loaders_do() -> None:
    digits = load_digits()
    binary = dataclasses.replace(digits, x_train=digits.x_train > 0.5, x_test=digits.x_test > 0.5)
    assert check_dataset(binary).x_train.dtype == np.bool_
    ints = dataclasses.replace(digits, x_train=(digits.x_train * 255).astype(np.int16))
    with pytest.raises(TypeError, match=r"got dtype int16 \(divide 8-bit intensities by 255\)"):
        check_dataset(ints)


def test_stratified_split_is_scikit_learns_with_random_state_0(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Evaluating or resuming a run splits its dataset again: the split must stay the
    documented one (stratified 75/25, random_state=0), or a saved run's test images change."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    images, labels = small_images(rng)
    path = tmp_path / "data.npz"
    np.savez(path, x=images, y=labels)
    data = load_npz(path)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )
    np.testing.assert_array_equal(data.y_train, y_tr)
    np.testing.assert_array_equal(data.y_test, y_te)
    np.testing.assert_allclose(data.x_test, x_te / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.x_train, x_tr / 255.0, rtol=1e-6)
    raw = datasets.load_digits()
    _, digits_x_te, _, digits_y_te = train_test_split(
        raw.images, raw.target, test_size=0.25, random_state=0, stratify=raw.target
    )
    digits = load_digits()
    np.testing.assert_array_equal(digits.y_test, digits_y_te)
    np.testing.assert_allclose(digits.x_test, digits_x_te / 16.0, rtol=1e-6)


def test_idx_magic_and_payload_size_are_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    images, _ = small_images(rng)
    good = tmp_path / "good-idx3-ubyte"
    write_idx(good, images)
    blob = good.read_bytes()
    second = tmp_path / "second-idx3-ubyte"  # the magic's second byte must be 0 as well
    second.write_bytes(b"\x00\x01" + blob[2:])
    with pytest.raises(ValueError, match=r"second-idx3-ubyte: not an IDX file \(bad magic"):
        read_idx(second)
    # bytes beyond what the header announces: a header of the wrong dimensions, or two files
    # joined, read as the first images without a word
    longer = tmp_path / "longer-idx3-ubyte"
    longer.write_bytes(blob + rng.integers(1, 256, size=30, dtype=np.uint8).tobytes())
    with pytest.raises(
        ValueError, match=rf"longer-idx3-ubyte: IDX data size {images.size + 30} bytes does not"
    ):
        read_idx(longer)


@pytest.mark.parametrize(
    "code, dtype",
    [(0x08, "u1"), (0x09, "i1"), (0x0B, "i2"), (0x0C, "i4"), (0x0D, "f4"), (0x0E, "f8")],
)
def test_idx_type_codes_read_big_endian_values(
    tmp_path: Path, rng: np.random.Generator, code: int, dtype: str
) -> None:
    """Every IDX type code: the payload is big-endian (values that differ when byte-swapped),
    read into the native byte order."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        values = (rng.standard_normal((3, 4, 5)) * 1000).astype(kind)
    else:
        info = np.iinfo(kind)
        values = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(kind)
    path = tmp_path / "typed-idx3-ubyte"
    header = bytes([0, 0, code, 3]) + struct.pack(">3I", *values.shape)
    path.write_bytes(header + values.astype(kind.newbyteorder(">")).tobytes())
    got = read_idx(path)
    assert got.dtype == kind and got.dtype.isnative
    np.testing.assert_array_equal(got, values)


def test_num_classes_counts_the_test_labels_too(tmp_path: Path, rng: np.random.Generator) -> None:
    """A test label above every training label still needs its output (and its row of the
    confusion matrix): num_classes comes from both splits."""
    images, labels = small_images(rng)  # training labels 0..3
    path = tmp_path / "gap.npz"
    y_test = np.array([0, 1, 5, 2])
    np.savez(path, x=images, y=labels, x_test=images[:4], y_test=y_test)
    data = load_npz(path)
    assert data.num_classes == 6 and data.trained_classes == [0, 1, 2, 3]
    np.testing.assert_array_equal(data.y_test, y_test)


def test_npz_images_with_a_channel_axis(tmp_path: Path, rng: np.random.Generator) -> None:
    images, labels = small_images(rng)
    path = tmp_path / "channels.npz"
    np.savez(path, x=images[..., None], y=labels, x_test=images[:4, ..., None], y_test=labels[:4])
    data = load_npz(path)
    assert data.x_train.shape == (40, 6, 5) and data.x_test.shape == (4, 6, 5)
    np.testing.assert_allclose(data.x_test, images[:4] / 255.0, rtol=1e-6)


def test_train_and_test_images_of_different_sizes_are_refused(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    images, labels = small_images(rng)  # 6x5
    path = tmp_path / "sizes.npz"
    turned = images[:4].transpose(0, 2, 1)  # 5x6: as many pixels, another image
    np.savez(path, x=images, y=labels, x_test=turned, y_test=labels[:4])
    with pytest.raises(ValueError, match=r"sizes.npz: train images \(6, 5\) and test \(5, 6\) di"):
        load_npz(path)


def test_dataset_errors_name_the_file_by_its_path(tmp_path: Path, rng: np.random.Generator) -> None:
    """``one.npz: ...`` did not say which one.npz: these errors name the path, as the others
    do."""
    images, labels = small_images(rng)
    turned = images[:4].transpose(0, 2, 1)
    cases = {  # file -> (its arrays, what is said of it)
        "one.npz": (
            dict(x=images, y=np.full_like(labels, 3)),
            "the training labels hold a single class (3); expected at least 2 classes",
        ),
        "empty.npz": (
            dict(x=images[:0], y=labels[:0], x_test=images[:2], y_test=labels[:2]),
            "no training images",
        ),
        "no_test.npz": (
            dict(x=images, y=labels, x_test=images[:0], y_test=labels[:0]),
            "no test images",
        ),
        "sizes.npz": (
            dict(x=images, y=labels, x_test=turned, y_test=labels[:4]),
            "train images (6, 5) and test (5, 6) differ",
        ),
    }
    for name, (arrays, said) in cases.items():
        path = tmp_path / "data" / name
        path.parent.mkdir(exist_ok=True)
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match="^" + re.escape(f"{path}: {said}") + "$"):
            load_npz(path)


def test_copies_of_one_idx_file_must_agree(tmp_path: Path, rng: np.random.Generator) -> None:
    # torchvision's MNIST/raw holds every file both raw and gzipped: the same bytes are read
    images, labels = small_images(rng)
    for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        write_idx(tmp_path / name, array)
        write_idx(tmp_path / f"{name}.gz", array, compress=True)
    data = load_idx_dir(tmp_path)
    assert data.x_train.shape[0] + data.x_test.shape[0] == len(images)
    # another dataset's .gz of the same size and header beside the raw file: refused, both
    # named, wherever the first differing byte lies
    header = 4 + 4 * images.ndim
    for flat_index in (0, images.size - 1):
        other = images.copy()
        other.reshape(-1)[flat_index] ^= 0x5A
        write_idx(tmp_path / "train-images-idx3-ubyte.gz", other, compress=True)
        expected = (
            r"holds train-images-idx3-ubyte and train-images-idx3-ubyte.gz, two copies of one "
            rf"IDX file, but their bytes differ from byte {header + flat_index}; remove"
        )
        with pytest.raises(ValueError, match=expected):
            load_idx_dir(tmp_path)
    # a copy that ends early, or a damaged gzip stream
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:-1], compress=True)
    with pytest.raises(ValueError, match="their bytes differ from byte"):
        load_idx_dir(tmp_path)
    blob = gzip.compress((tmp_path / "train-images-idx3-ubyte").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz cannot be read \("):
        load_idx_dir(tmp_path)
    # the same holds for the dotted spelling and another case of the name
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / "TRAIN-IMAGES.IDX3-UBYTE", images[::-1].copy())
    with pytest.raises(ValueError, match="and TRAIN-IMAGES.IDX3-UBYTE, two copies"):
        load_idx_dir(tmp_path)
    write_idx(tmp_path / "TRAIN-IMAGES.IDX3-UBYTE", images)
    again = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(again.x_train, data.x_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_idx_copies_are_compared_across_chunks(
    tmp_path: Path, rng: np.random.Generator, chunk: int
) -> None:
    from rnncu.data import _idx_copies_differ

    images, _ = small_images(rng)
    write_idx(tmp_path / "a", images)
    write_idx(tmp_path / "a.gz", images, compress=True)
    assert _idx_copies_differ(tmp_path / "a", tmp_path / "a.gz", chunk) is None
    size = (tmp_path / "a").stat().st_size
    for at in (0, 6, 7, 15, size - 1):
        blob = bytearray((tmp_path / "a").read_bytes())
        blob[at] ^= 0xFF
        (tmp_path / "b").write_bytes(bytes(blob))
        said = _idx_copies_differ(tmp_path / "a.gz", tmp_path / "b", chunk)
        assert said == f"their bytes differ from byte {at}"
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes() + b"\x00")  # one byte longer
    assert _idx_copies_differ(tmp_path / "a", tmp_path / "b", chunk) == (
        f"their bytes differ from byte {size}"
    )


def test_the_preferred_idx_copy_is_read_and_the_others_only_compared(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The raw file is the one read, before its .gz and the dotted spelling; a copy gzipped
    under a name in capitals (``.GZ``) is decompressed to be compared; a directory of a
    copy's name is no copy; and a name as spelled goes before the same name in capitals."""
    from rnncu.data import _find_idx

    images, _ = small_images(rng)
    stem = "train-images-idx3-ubyte"
    write_idx(tmp_path / stem, images)
    write_idx(tmp_path / f"{stem}.gz", images, compress=True)
    write_idx(tmp_path / "train-images.idx3-ubyte", images)
    assert _find_idx(tmp_path, stem) == tmp_path / stem
    (tmp_path / f"{stem}.gz").rename(tmp_path / f"{stem.upper()}.GZ")
    assert _find_idx(tmp_path, stem) == tmp_path / stem
    (tmp_path / "train-images.idx3-ubyte.gz").mkdir()
    assert _find_idx(tmp_path, stem) == tmp_path / stem
    if (tmp_path / stem.upper()).exists():
        pytest.skip("a file system that ignores the case of names")
    other = images.copy()
    other[0, 0, 0] ^= 1
    write_idx(tmp_path / stem.upper(), other)
    said = f"holds {stem} and {stem.upper()}, two copies of one IDX file, but their bytes"
    with pytest.raises(ValueError, match=re.escape(said)):
        _find_idx(tmp_path, stem)


def test_an_idx_copy_that_cannot_be_opened_is_named(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy without read permission (root reads any file, so open is refused here by
    hand) is reported as unreadable, naming it, as a damaged one is."""
    import builtins

    import rnncu.data as data_module

    images, labels = small_images(rng)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "TRAIN-IMAGES-IDX3-UBYTE", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)

    def refused(path: object, *args: object, **kwargs: object) -> object:
        if Path(str(path)).name == "TRAIN-IMAGES-IDX3-UBYTE":
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(data_module, "open", refused, raising=False)
    said = (
        r"holds train-images-idx3-ubyte and TRAIN-IMAGES-IDX3-UBYTE, two copies of one IDX "
        r"file, but TRAIN-IMAGES-IDX3-UBYTE cannot be read \(\[Errno 13\] Permission denied"
    )
    with pytest.raises(ValueError, match=said):
        load_idx_dir(tmp_path)


def test_dataset_digest_covers_labels_shapes_and_dtypes(rng: np.random.Generator) -> None:
    images = rng.random((12, 4, 6)).astype(np.float32)
    labels = np.arange(12) % 3
    data = ImageDataset("a", images[:8], labels[:8], images[8:], labels[8:], 3, "a.npz")
    digest = dataset_digest(data)
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    # the name, the source, num_classes and the memory layout are not part of it
    same = dataclasses.replace(
        data, name="b", source=None, num_classes=5, x_train=np.asfortranarray(images[:8])
    )
    assert dataset_digest(same) == digest
    # the labels are: a relabelled image is other data
    relabelled = labels[:8].copy()
    relabelled[0] = 2
    assert dataset_digest(dataclasses.replace(data, y_train=relabelled)) != digest
    assert dataset_digest(dataclasses.replace(data, y_test=labels[8:][::-1].copy())) != digest
    # so are the shapes and dtypes: the same bytes as 4x6 or 6x4 images, or as int32
    assert dataset_digest(dataclasses.replace(data, x_train=images[:8].reshape(8, 6, 4))) != digest
    as_int = dataclasses.replace(data, x_test=images[8:].view(np.int32))
    assert dataset_digest(as_int) != digest
