"""Warnings that point at the caller's code, not at rnncu's.

A fixed ``stacklevel`` is right for one call path only: the same fallback warning is reached
from ``RNN.forward``, from ``backward``, from a task model or from the trainer, each a
different number of frames deep. :func:`warn_at_caller` counts them instead.
"""

from __future__ import annotations

import sys
import warnings
from types import FrameType


def _inside_rnncu(frame: FrameType) -> bool:
    # by module name, not file path: a pyc-only or frozen install records relative paths
    name: str = frame.f_globals.get("__name__", "")
    return name == "rnncu" or name.startswith("rnncu.")


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` attributed to the innermost frame outside the
    rnncu package (the user's line that called into rnncu), so that the warning names that
    line and warning filters by module match the user's module."""
    frame: FrameType | None = sys._getframe(1)
    level = 2  # 1 is this function, 2 its caller
    while frame is not None and _inside_rnncu(frame):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
