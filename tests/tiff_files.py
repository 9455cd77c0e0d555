"""Grey TIFF files written by hand, byte by byte: what Pillow (every version the extras admit)
cannot be asked to write, such as 16-bit WhiteIsZero, signed samples, big-endian order or a
NewSubfileType per page."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_grey_tiff(
    path: Path,
    pages: list[tuple[np.ndarray, int | None]],
    photometric: int = 1,
    order: str = "<",
    signed: bool = False,
) -> None:
    """An uncompressed TIFF of grey ``pages``, each (pixels (H, W) of 8 or 16 bits, written as
    they are, one strip; its NewSubfileType, or None for none), in byte ``order`` ("<" or
    ">"), with the photometric interpretation given (0: WhiteIsZero, 1: BlackIsZero);
    ``signed``: the SampleFormat says signed integers."""
    blob = bytearray((b"II*\x00" if order == "<" else b"MM\x00*") + b"\x00" * 4)
    link = 4  # where the offset of the next page's directory goes
    for pixels, subfile_type in pages:
        height, width = pixels.shape
        strip = len(blob)
        blob += pixels.astype(f"{order}u{pixels.dtype.itemsize}").tobytes()
        blob += b"\x00" * (len(blob) % 2)  # directories start on a word boundary
        # (tag, type: 3 SHORT or 4 LONG, value), in the tags' order
        tags = [(256, 4, width), (257, 4, height), (258, 3, 8 * pixels.dtype.itemsize),
                (259, 3, 1), (262, 3, photometric), (273, 4, strip), (277, 3, 1),
                (278, 4, height), (279, 4, pixels.nbytes)]  # fmt: skip
        if subfile_type is not None:
            tags.insert(0, (254, 4, subfile_type))
        if signed:
            tags.append((339, 3, 2))
        blob[link : link + 4] = struct.pack(f"{order}I", len(blob))
        blob += struct.pack(f"{order}H", len(tags))
        for tag, kind, value in tags:
            value_field = "H2x" if kind == 3 else "I"
            blob += struct.pack(f"{order}HHI{value_field}", tag, kind, 1, value)
        link = len(blob)
        blob += b"\x00" * 4  # no next page, until one is written
    path.write_bytes(bytes(blob))
