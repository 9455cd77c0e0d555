"""Backend selection: by argument, then the ``RNNCU_BACKEND`` environment variable, then auto.

``auto`` picks CuPy only when it imports *and* a CUDA device answers; otherwise NumPy. The
NumPy path never imports CuPy. Asking for ``cupy`` explicitly where it cannot work raises
:class:`BackendUnavailableError` saying why (not installed, no device, driver error).
"""

from __future__ import annotations

import os
from typing import Any

from rnncu.backend.base import NONLINEARITIES, Array, Backend, is_array, is_cupy_array, type_name

__all__ = [
    "Array",
    "Backend",
    "BackendUnavailableError",
    "NONLINEARITIES",
    "available_backends",
    "backend_for",
    "get_backend",
    "is_array",
    "is_cupy_array",
    "set_backend",
    "type_name",
]

BACKEND_NAMES = ("numpy", "cupy", "auto")
ENV_VAR = "RNNCU_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine; the message says why."""


_instances: dict[str, Backend] = {}
_current: Backend | None = None


def _cupy_unavailable_reason() -> str | None:
    """None when CuPy imports and sees at least one CUDA device, else the reason why not."""
    try:
        import cupy
    except ImportError as exc:
        return (
            f"CuPy is not installed ({exc}); install rnncu[cuda12] or rnncu[cuda13] "
            "to match your CUDA driver"
        )
    except Exception as exc:  # a broken install raises other errors at import time
        return f"CuPy failed to import: {type(exc).__name__}: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old, ...
        return f"the CUDA driver did not answer: {type(exc).__name__}: {exc}"
    if count < 1:
        return "CuPy is installed but no CUDA device is present"
    return None


def _make(name: str) -> Backend:
    if name in _instances:
        return _instances[name]
    if name == "numpy":
        from rnncu.backend.numpy_backend import NumpyBackend

        backend: Backend = NumpyBackend()
    elif name == "cupy":
        reason = _cupy_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"backend 'cupy' is unavailable: {reason}")
        from rnncu.backend.cupy_backend import CupyBackend

        backend = CupyBackend()
    else:  # pragma: no cover - guarded by _resolve
        raise AssertionError(name)
    _instances[name] = backend
    return backend


def _resolve(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(
            f"backend: expected one of {', '.join(repr(n) for n in BACKEND_NAMES)}, got {name!r}"
        )
    name = name.lower()
    if name == "auto":
        return "cupy" if _cupy_unavailable_reason() is None else "numpy"
    return name


def set_backend(name: str) -> Backend:
    """Select the backend used by layers created from now on: ``"numpy"``, ``"cupy"`` or
    ``"auto"``. Returns the backend object."""
    global _current
    _current = _make(_resolve(name))
    return _current


def get_backend(name: str | None = None) -> Backend:
    """The backend named ``name``; without a name, the current one (first use: the
    ``RNNCU_BACKEND`` environment variable, default ``auto``; set but empty counts as unset,
    as on the command line)."""
    global _current
    if name is not None:
        return _make(_resolve(name))
    if _current is None:
        env = os.environ.get(ENV_VAR, "").strip() or "auto"
        try:
            _current = _make(_resolve(env))
        except ValueError as exc:
            raise ValueError(f"environment variable {ENV_VAR}: {exc}") from None
    return _current


def available_backends() -> dict[str, str | None]:
    """``{"numpy": None, "cupy": None or reason}``: None means usable."""
    return {"numpy": None, "cupy": _cupy_unavailable_reason()}


def backend_for(array: Any) -> Backend:
    """The backend whose array module owns ``array`` (NumPy for anything that is not a CuPy
    array). Never imports CuPy: a CuPy array's type already carries its module name."""
    if is_cupy_array(array):
        return _make("cupy")
    return _make("numpy")
