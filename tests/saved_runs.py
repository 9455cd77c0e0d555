"""A saved run's checkpoint rewritten with one edit, as a user editing the file would: the
tests of an older, damaged or hand-edited checkpoint (a field removed, a config changed, an
array spoilt) each made it with the same load, strip and save."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rnncu.checkpoint import RESERVED_META, load_checkpoint, save_checkpoint


def resave_checkpoint(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    edit: Callable[[dict[str, np.ndarray], dict[str, Any]], object],
) -> Path:
    """The checkpoint in ``source`` (a run directory or file) saved again as ``target``
    after ``edit(arrays, meta)`` changed it in place; meta without the entries
    save_checkpoint writes itself (RESERVED_META). Returns the file written."""
    arrays, meta = load_checkpoint(source)
    kept = {k: v for k, v in meta.items() if k not in RESERVED_META}
    edit(arrays, kept)
    return save_checkpoint(target, arrays, kept)
