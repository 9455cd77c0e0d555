"""Damaging one member of a zip archive (a checkpoint or a dataset .npz) while keeping the
archive itself valid: its CRC right, so that only the member's content is wrong."""

from __future__ import annotations

import zipfile
from pathlib import Path


def rewrite_member(path: Path, member: str, content: bytes) -> None:
    """Replace ``member`` of the zip at ``path`` by ``content``; the other members stay."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    assert member in members, (member, sorted(members))
    members[member] = content
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
