"""Pictures read through Pillow (``read_images``): PNG's transparency keys judged pixel by
pixel at every bit depth, files whose bytes are another kind, animated PNG, Pillow's
decompression-bomb warning naming the file, running out of memory told apart from a bad file,
colour converted a slice of rows at a time."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from tiff_files import write_grey_tiff

from rnncu import data as rnncu_data
from rnncu.data import load_digits, read_images

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    """A test digit as 8-bit grey: 0 (its ground) and more."""
    return np.round(load_digits().x_test[0] * 255).astype(np.uint8)


def _raw_png(
    path: Path, pixels: np.ndarray, depth: int, key: tuple[int, ...] | None, first: bytes = b""
) -> None:
    """A PNG of grey (H, W) or RGB (H, W, 3) ``pixels`` at bit ``depth`` (1, 2, 4, 8 or 16;
    below 8 grey only, packed as the format packs it), with a tRNS chunk making the colour
    ``key`` transparent, and a private chunk of body ``first`` before its header where that is
    not empty. Written by hand: Pillow writes neither 16-bit colour nor a key on grey of 2 or 4
    bits."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    if depth >= 8:
        rows = [row.astype(">u2" if depth == 16 else "u1").tobytes() for row in pixels]
    else:
        per_byte = 8 // depth
        padded = np.zeros((height, -(-width // per_byte) * per_byte), np.uint8)
        padded[:, :width] = pixels
        shifts = (8 - depth * (np.arange(per_byte) + 1)).astype(np.uint8)
        packed = (padded.reshape(height, -1, per_byte) << shifts).sum(axis=2, dtype=np.uint8)
        rows = [row.tobytes() for row in packed]
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    trns = b"" if key is None else chunk(b"tRNS", struct.pack(f">{len(key)}H", *key))
    image_data = zlib.compress(b"".join(b"\x00" + row for row in rows))
    before = chunk(b"prVt", first) if first else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + before + chunk(b"IHDR", header) + trns
                     + chunk(b"IDAT", image_data) + chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_a_grey_png_s_key_is_refused_only_where_a_pixel_has_it(
    tmp_path: Path, digit: np.ndarray, depth: int
) -> None:
    """The key of a grey PNG makes the pixels of that grey transparent, and only them: a key
    no pixel has leaves the picture opaque, read as it is. At 2 and 4 bits Pillow scales the
    pixels to 8 bits and not the key; at 16 it clips the pixels to 8 bits before comparing."""
    top = 2**depth - 1
    levels = np.round(digit / 255 * top).astype(np.uint16)  # the digit at this depth
    assert 0 in levels and top in levels
    _raw_png(tmp_path / "keyed.png", levels, depth, (top,))  # not 0, which scales to itself
    with pytest.raises(ValueError, match=r"keyed.png: the PNG has transparent pixels"):
        read_images(tmp_path / "keyed.png", (8, 8))
    absent = next((v for v in range(top + 1) if v not in levels), None)
    if absent is None:  # at 1 and 2 bits every level is used: the brightest left out instead
        levels, absent = np.minimum(levels, top - 1), top
    _raw_png(tmp_path / "unused.png", levels, depth, (absent,))
    _raw_png(tmp_path / "plain.png", levels, depth, None)
    read = read_images(tmp_path / "unused.png", (8, 8))
    np.testing.assert_array_equal(read, read_images(tmp_path / "plain.png", (8, 8)))
    np.testing.assert_allclose(read[0], levels / top, rtol=1e-6)


def test_a_colour_png_s_key_is_refused_only_where_a_pixel_has_it(
    tmp_path: Path, digit: np.ndarray
) -> None:
    rgb = np.stack([digit, 255 - digit, digit // 2], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "keyed.png", transparency=tuple(int(c) for c in rgb[4, 4]))
    with pytest.raises(ValueError, match=r"keyed.png: the PNG has transparent pixels"):
        read_images(tmp_path / "keyed.png", (8, 8))
    Image.fromarray(rgb).save(tmp_path / "unused.png", transparency=(1, 2, 3))
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    read = read_images(tmp_path / "unused.png", (8, 8))
    np.testing.assert_array_equal(read, read_images(tmp_path / "plain.png", (8, 8)))
    expected = (rgb / 255) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(read[0], expected, rtol=1e-6, atol=1e-7)


def test_a_sixteen_bit_colour_png_with_a_key_is_refused(tmp_path: Path, digit: np.ndarray) -> None:
    """Pillow reads 16-bit colour at 8 bits and compares the key's low bytes with those: which
    pixels have the key cannot be told, whether or not one does. Without a key it is read (at
    8 bits)."""
    deep = np.stack([digit.astype(np.uint16) * 257] * 3, axis=-1)
    for key in ((0, 0, 0), (1, 2, 3)):  # one the ground has, one no pixel has
        _raw_png(tmp_path / "keyed.png", deep, 16, key)
        with pytest.raises(ValueError, match=r"keyed.png: the PNG names a transparent "
                           r"colour of 16-bit colour \(a tRNS chunk\), which is read at 8 "
                           r"bits"):  # fmt: skip
            read_images(tmp_path / "keyed.png", (8, 8))
    _raw_png(tmp_path / "plain.png", deep, 16, None)
    np.testing.assert_array_equal(read_images(tmp_path / "plain.png", (8, 8))[0],
                                  (digit / 255).astype(np.float32))  # fmt: skip


def test_a_png_s_depth_is_the_one_pillow_decodes_by(tmp_path: Path, digit: np.ndarray) -> None:
    """Pillow reads a PNG whose header is not its first chunk (the format's rule, which it does
    not check): the depth that judges a colour key is the one it decodes by, not bytes 24 and
    25 of the file, here the private chunk's (16-bit colour, which would take the 4-bit grey
    for 16-bit colour, its key for Pillow's to compare)."""
    levels = np.round(digit / 255 * 15).astype(np.uint16)
    _raw_png(tmp_path / "grey.png", levels, 4, (15,), first=bytes(8) + bytes([16, 2]))
    with pytest.raises(ValueError, match=r"grey.png: the PNG has transparent pixels"):
        read_images(tmp_path / "grey.png", (8, 8))
    deep = np.stack([digit.astype(np.uint16) * 257] * 3, axis=-1)
    _raw_png(tmp_path / "colour.png", deep, 16, (1, 2, 3), first=bytes(8) + bytes([8, 2]))
    with pytest.raises(ValueError, match=r"colour.png: the PNG names a transparent colour of "
                       r"16-bit colour"):  # fmt: skip
        read_images(tmp_path / "colour.png", (8, 8))


def test_a_palette_png_s_transparent_entries_count_where_used(
    tmp_path: Path, digit: np.ndarray
) -> None:
    palette = Image.fromarray(digit).convert("P")
    used = int(np.asarray(palette)[0, 0])
    palette.save(tmp_path / "keyed.png", transparency=used)
    with pytest.raises(ValueError, match=r"keyed.png: the PNG has transparent pixels"):
        read_images(tmp_path / "keyed.png", (8, 8))
    unused = next(i for i in range(256) if i not in np.asarray(palette))
    palette.save(tmp_path / "unused.png", transparency=unused)
    np.testing.assert_array_equal(read_images(tmp_path / "unused.png", (8, 8))[0],
                                  (digit / 255).astype(np.float32))  # fmt: skip


def test_sixteen_bit_grey_png_is_scaled_by_its_depth(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as Pillow gives it: mode I;16, or, as older Pillow gave it, mode I (32-bit
    integers, which in a PNG can only be 16-bit grey)."""
    from PIL import PngImagePlugin

    deep = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    _raw_png(tmp_path / "deep.png", deep, 16, None)
    expected = (deep / 65535).astype(np.float32)
    np.testing.assert_array_equal(read_images(tmp_path / "deep.png", (8, 8))[0], expected)
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(read_images(tmp_path / "deep.png", (8, 8))[0], expected)


def test_a_png_is_read_as_its_bytes_say(tmp_path: Path, digit: np.ndarray) -> None:
    """A JPEG named .png is named for what it is; an animated PNG is refused, not read by its
    first frame; a PNG's EXIF orientation turns it, as a JPEG's does."""
    Image.fromarray(digit).save(tmp_path / "photo.png", format="JPEG")
    with pytest.raises(ValueError, match=r"photo.png: not a PNG file \(its bytes are a JPEG "
                       r"image\)"):  # fmt: skip
        read_images(tmp_path / "photo.png", (8, 8))
    frames = [Image.fromarray(digit), Image.fromarray(255 - digit)]
    frames[0].save(tmp_path / "moving.png", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=r"moving.png: the PNG holds 2 frames \(an animation "
                       r"or pages\): give one image"):  # fmt: skip
        read_images(tmp_path / "moving.png", (8, 8))
    wide = np.concatenate([digit, digit[:, :4]], axis=1)  # 8x12: a turn changes its shape
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter anticlockwise: seen turned clockwise
    Image.fromarray(wide).save(tmp_path / "turned.png", exif=exif)
    read = read_images(tmp_path / "turned.png", (12, 8))[0]
    np.testing.assert_array_equal(read, (np.rot90(wide, -1) / 255).astype(np.float32))


def test_a_decompression_bomb_warning_names_the_file(
    tmp_path: Path, digit: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow warns of a picture past its pixel limit (and refuses one past twice it) without
    naming the file; given again with its name, at the caller's line, as are its other
    warnings."""
    Image.fromarray(digit).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 64 pixels: past it, not twice
    with pytest.warns(
        Image.DecompressionBombWarning, match=r"big.png: Image size \(64 pixels\)"
    ) as given:
        read = read_images(tmp_path / "big.png", (8, 8))
    assert [w.filename for w in given] == [__file__]  # the caller's line, not rnncu's
    np.testing.assert_array_equal(read[0], (digit / 255).astype(np.float32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 31)
    with pytest.raises(ValueError, match=r"big.png: cannot read PNG \(DecompressionBombError"):
        read_images(tmp_path / "big.png", (8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    original = Image.Image.convert

    def convert_with_a_warning(self, *args, **kwargs):
        warnings.warn("a warning of Pillow's own", UserWarning, stacklevel=2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", convert_with_a_warning)
    with pytest.warns(UserWarning, match=r"big.png: a warning of Pillow's own$") as given:
        read_images(tmp_path / "big.png", (8, 8))
    assert [w.filename for w in given] == [__file__]
    # each file's warnings its own, a file read again warned of again
    Image.fromarray(digit).save(tmp_path / "other.png")
    with warnings.catch_warnings(record=True) as given:
        warnings.simplefilter("default")
        for name in ("big.png", "other.png", "big.png"):
            read_images(tmp_path / name, (8, 8))
    assert [str(w.message).rsplit("/", 1)[-1] for w in given] == [
        f"{name}: a warning of Pillow's own" for name in ("big.png", "other.png", "big.png")
    ]


def test_a_decompression_bomb_warning_made_an_error_refuses_before_decoding(
    tmp_path: Path, digit: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's documented guard, its warning filtered as an error, stops the reading before
    the pixels are decoded (what a bomb costs): refused as a file that cannot be read, not
    raised once the picture has been decoded."""
    from PIL import ImageFile

    Image.fromarray(digit).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or load(self))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(
            ValueError, match=r"big.png: cannot read PNG \(DecompressionBombWarning"
        ):
            read_images(tmp_path / "big.png", (8, 8))
    assert decoded == []


def test_running_out_of_memory_is_not_taken_for_a_bad_file(
    tmp_path: Path, digit: np.ndarray, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A MemoryError while decoding says nothing of the file: it is left as it is, and the
    command line says out of memory (exit 1), not that the file cannot be read (exit 2)."""
    from rnncu.cli import main
    from rnncu.trainer import TrainConfig, train

    Image.fromarray(digit).save(tmp_path / "digit.png")

    def short_of_memory(self, *args, **kwargs):
        raise MemoryError("cannot allocate the decoded picture")

    run = tmp_path / "run"
    train(TrainConfig(backend="numpy", hidden=8, epochs=1, batch_size=256, seed=0), run,
          progress=False)  # fmt: skip
    monkeypatch.setattr(Image.Image, "convert", short_of_memory)
    with pytest.raises(MemoryError, match="cannot allocate"):
        read_images(tmp_path / "digit.png", (8, 8))
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "digit.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "rnncu: error: out of memory (cannot allocate the decoded picture)"


def test_colour_is_converted_a_slice_of_rows_at_a_time_to_the_same_bits(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    whole = read_images(tmp_path / "colour.png", (37, 29))
    expected = np.clip((rgb / 255) @ np.array([0.299, 0.587, 0.114]), 0, 1).astype(np.float32)
    np.testing.assert_array_equal(whole[0], expected)
    for chunk in (1, 29, 30, 100):  # a row at a time (or less), one, a row and a bit, three
        monkeypatch.setattr(rnncu_data, "_LUMINANCE_CHUNK", chunk)
        np.testing.assert_array_equal(read_images(tmp_path / "colour.png", (37, 29)), whole)


@pytest.mark.parametrize(
    ("subfile_type", "read"),
    [(1, True), (None, False), (2, False), (5, False)],
    ids=["thumbnail", "second-picture", "page", "thumbnail-mask"],
)
def test_a_tiff_s_thumbnail_after_its_picture_is_no_matter(
    tmp_path: Path, digit: np.ndarray, subfile_type: int | None, read: bool
) -> None:
    """A scanner or camera may store a reduced-resolution copy after the picture (its
    NewSubfileType bit 0): the picture is read. Another picture, a page of a document, or a
    transparency mask (bit 2) makes it more than one image: refused."""
    thumbnail = digit.reshape(4, 2, 4, 2).mean(axis=(1, 3)).astype(np.uint8)
    write_grey_tiff(tmp_path / "scan.tif", [(digit, None), (thumbnail, subfile_type)])
    with Image.open(tmp_path / "scan.tif") as image:
        assert image.n_frames == 2
        image.seek(1)
        assert image.tag_v2.get(254) == subfile_type
    if read:
        np.testing.assert_array_equal(read_images(tmp_path / "scan.tif", (8, 8))[0],
                                      (digit / 255).astype(np.float32))  # fmt: skip
    else:
        with pytest.raises(ValueError, match=r"scan.tif: the TIFF holds 2 frames"):
            read_images(tmp_path / "scan.tif", (8, 8))
