"""Warnings that point at the caller's code, not at rnncu's.

A fixed ``stacklevel`` is right for one call path only: the same fallback warning is reached
from ``RNN.forward``, from ``backward``, from a task model or from the trainer, each a
different number of frames deep. :func:`warn_at_caller` counts them instead.
"""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _inside_rnncu(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` attributed to the innermost frame outside the
    rnncu package (the user's line that called into rnncu), so that the warning names that
    line and warning filters by module match the user's module."""
    frame = sys._getframe(1)
    level = 2  # 1 is this function, 2 its caller
    while frame is not None and _inside_rnncu(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
