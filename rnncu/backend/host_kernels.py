"""Host kernels: the NumPy backend's float32 recurrence, compiled at first use.

``kernels/host_rnn.c`` holds two things. The whole recurrence of a layer direction in one
call, forward and backward: W_hh packed once per call into the layout of its own
matrix-product micro-kernel, and the step's element-wise part (add, tanh or relu, padding; the
gradient) after each product. And the element-wise part of a step alone (add and tanh; the
tanh gradient), for the backend's step loop around one BLAS product per step: NumPy has no SIMD
tanh without AVX-512 (measured on the project's AVX2 machine: 3 to 4.5 ns per float32
element). :mod:`rnncu.backend.numpy_backend` says which runs when.

The file is compiled like the CUDA kernels are, at run time, with the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``), into a cache directory (``RNNCU_CACHE_DIR``, else
``$XDG_CACHE_HOME/rnncu``, else ``~/.cache/rnncu``) under a name that hashes the source, the
compiler and its flags, and is loaded through ctypes. Nothing is needed at install time.

When it cannot be used (no compiler, a compile error, a platform without ``dlopen``, or
``RNNCU_HOST_KERNELS=0`` or ``off``), :func:`load` returns None, :func:`status` says why,
and the backend runs its NumPy loop: the same results to float32 rounding, slower. float64,
the reference dtype, always runs the NumPy loop.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from rnncu.backend.base import check_switch

__all__ = ["HostKernels", "SOURCE_FILE", "load", "status"]

SOURCE_FILE = "host_rnn.c"
SWITCH_ENV = "RNNCU_HOST_KERNELS"  # off (or 0, false) runs NumPy's functions instead

# -ffp-contract=off: no fused multiply-adds but those the code asks for, so the results do not
# depend on the CPU or on the compiler's choices; -fno-trapping-math lets the compiler compute
# both halves of tanh and select (no branch in the loop, so it vectorises); results are
# unchanged, only floating-point exception flags are not modelled.
_BASE_FLAGS = (
    "-O3",
    "-std=c11",
    "-shared",
    "-fPIC",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=off",
)


class HostKernels:
    """The compiled float32 kernels.

    :meth:`recurrence_forward` and :meth:`recurrence_backward` (the whole recurrence) take
    NumPy arrays; the step loop's element-wise functions ``add_tanh_f32`` and
    ``tanh_grad_f32`` take raw addresses (``array.ctypes.data`` plus byte offsets) and
    element counts, so that a step costs one foreign call. The caller guarantees C-contiguous
    float32 memory of consistent shapes (the backend checks once per call); nothing is checked
    here.
    """

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        pointer, count, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self.tanh_f32 = library.rnncu_tanh_f32
        self.tanh_f32.argtypes = [pointer, count]
        self.tanh_f32.restype = None
        self.add_tanh_f32 = library.rnncu_add_tanh_f32
        self.add_tanh_f32.argtypes = [pointer, pointer, count]
        self.add_tanh_f32.restype = None
        self.tanh_grad_f32 = library.rnncu_tanh_grad_f32
        self.tanh_grad_f32.argtypes = [pointer, pointer, pointer, pointer, count]
        self.tanh_grad_f32.restype = None
        self._forward = library.rnncu_recurrence_forward_f32
        self._forward.argtypes = [pointer] * 4 + [count] * 3 + [flag] * 2
        self._forward.restype = flag
        self._backward = library.rnncu_recurrence_backward_f32
        self._backward.argtypes = [pointer] * 6 + [count] * 3 + [flag] * 2
        self._backward.restype = flag
        self._library = library  # keeps the shared object loaded
        #: the micro-kernel's vector width: 512 (AVX-512), 256 (AVX2 and FMA), 0 (portable)
        self.vector_bits: int = int(library.rnncu_vector_bits())

    def recurrence_forward(
        self,
        states: np.ndarray,
        w_hh: np.ndarray,
        h0: np.ndarray,
        lengths: np.ndarray | None,
        relu: bool,
        reverse: bool,
    ) -> None:
        """``states`` (T, B, H) holds Z_t on entry and h_t on return; ``lengths`` int64 (B,)
        or None."""
        steps, batch, hidden = states.shape
        _check_status(
            self._forward(
                states.ctypes.data,
                w_hh.ctypes.data,
                h0.ctypes.data,
                None if lengths is None else lengths.ctypes.data,
                steps,
                batch,
                hidden,
                int(reverse),
                int(relu),
            )
        )

    def recurrence_backward(
        self,
        grad_z: np.ndarray,
        grad_h: np.ndarray,
        grad_states: np.ndarray | None,
        states: np.ndarray,
        w_hh: np.ndarray,
        lengths: np.ndarray | None,
        relu: bool,
        reverse: bool,
    ) -> None:
        """``grad_z`` (T, B, H) receives dz_t; ``grad_h`` (B, H) holds dL/dh_T on entry and
        dL/dh_0 on return."""
        steps, batch, hidden = states.shape
        _check_status(
            self._backward(
                grad_z.ctypes.data,
                grad_h.ctypes.data,
                None if grad_states is None else grad_states.ctypes.data,
                states.ctypes.data,
                w_hh.ctypes.data,
                None if lengths is None else lengths.ctypes.data,
                steps,
                batch,
                hidden,
                int(reverse),
                int(relu),
            )
        )


def _check_status(status: int) -> None:
    """A failed call wrote nothing."""
    if status == errno.ENOMEM:
        raise MemoryError("the compiled recurrence could not allocate its packed W_hh")
    if status != 0:
        raise RuntimeError(f"the compiled recurrence failed: {os.strerror(status)}")


_lock = threading.Lock()
_loaded: HostKernels | None = None
_reason: str | None = None
_downgraded: str | None = None  # why the AVX-512 build failed where the CPU has AVX-512
_tried = False


def _cache_dir() -> Path:
    configured = os.environ.get("RNNCU_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rnncu"


def _compiler() -> str | None:
    """``$CC`` when set, else the first of cc, gcc and clang on the PATH."""
    configured = os.environ.get("CC", "").strip()
    for name in (configured,) if configured else ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def cpu_features() -> dict[str, bool]:
    """NumPy's probe of this CPU's instruction sets ({"AVX2": True, ...}); empty where the
    NumPy in use has none."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # 2, 1
        try:
            features: dict[str, bool] = importlib.import_module(module).__cpu_features__
            return features
        except (ImportError, AttributeError):
            continue
    return {}


def _arch_flags() -> tuple[str, ...]:
    """AVX2 and FMA where NumPy's CPU probe finds them (x86), and AVX-512F (the
    micro-kernel's wider registers); the compiler's default elsewhere (ARM64 has FMA)."""
    features = cpu_features()
    flags: tuple[str, ...] = ("-mavx2",) if features.get("AVX2") else ()
    flags += ("-mfma",) if features.get("FMA3") else ()
    return flags + (("-mavx512f",) if features.get("AVX512F") and flags else ())


def _user() -> str:
    getuid = getattr(os, "getuid", None)
    return str(getuid()) if getuid is not None else "user"


def _private(directory: Path) -> bool:
    """Whether only this user can create files in ``directory`` (owned by the user, not
    writable by group or others): the library loaded from it runs in this process."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return True  # no POSIX ownership to check (Windows)
    info = directory.stat()
    return info.st_uid == getuid() and not info.st_mode & 0o022


def _build(source: Path, compiler: str, flags: tuple[str, ...]) -> Path:
    """The cached shared object for this source, compiler and flags; compiled if missing."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    digest = hashlib.sha256(
        "\0".join([source.read_text(), compiler, version, *flags]).encode()
    ).hexdigest()[:20]
    name = f"host_rnn-{digest}.so"
    for directory in (_cache_dir(), Path(tempfile.gettempdir()) / f"rnncu-{_user()}"):
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue  # not writable: try the next directory
        if not _private(directory):
            continue  # someone else could have put a library there: never load from it
        target = directory / name
        if target.is_file():
            return target
        try:
            # a private name, then an atomic rename: a concurrent process never loads a
            # half-written file
            handle, partial = tempfile.mkstemp(prefix=name, suffix=".tmp", dir=directory)
        except OSError:
            continue
        os.close(handle)
        try:
            done = subprocess.run(
                [compiler, *flags, str(source), "-o", partial],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"{compiler} failed on kernels/{SOURCE_FILE}: "
                    + " ".join(done.stderr.strip().splitlines()[:3])
                )
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return target
    raise RuntimeError("no writable cache directory for the compiled host kernels")


def _load() -> HostKernels:
    switch = os.environ.get(SWITCH_ENV, "")
    if switch.strip() and not check_switch(switch, f"environment variable {SWITCH_ENV}"):
        raise RuntimeError(f"disabled by {SWITCH_ENV}={switch.strip()}")
    from rnncu.backend.kernel_loader import kernel_dir

    source = kernel_dir() / SOURCE_FILE
    if not source.is_file():
        raise RuntimeError(f"kernels/{SOURCE_FILE} not found in {source.parent}")
    compiler = _compiler()
    if compiler is None:
        searched = os.environ.get("CC") or "cc, gcc, clang"
        raise RuntimeError(f"no C compiler found (looked for {searched})")
    global _downgraded
    flags = _BASE_FLAGS + _arch_flags()
    try:
        path = _build(source, compiler, flags)
    except RuntimeError as exc:
        if "-mavx512f" not in flags:
            raise
        # a compiler older than AVX-512 (gcc before 4.9) on a CPU that has it: the AVX2
        # build, with the reason kept for status() (a new process tries AVX-512 again)
        path = _build(source, compiler, tuple(f for f in flags if f != "-mavx512f"))
        _downgraded = str(exc) or type(exc).__name__
    return HostKernels(ctypes.CDLL(str(path)), path)


def load() -> HostKernels | None:
    """The compiled host kernels, compiled or read from the cache on the first call of the
    process; None when they cannot be used (:func:`status` says why)."""
    global _loaded, _reason, _tried
    if _tried:
        return _loaded
    with _lock:
        if not _tried:
            try:
                _loaded = _load()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _reason = str(exc) or type(exc).__name__
            _tried = True
    return _loaded


def status() -> str:
    """One line for ``rnncu info``: where the compiled loops came from, or why NumPy's
    functions run instead."""
    kernels = load()
    if kernels is not None:
        isa = {512: "AVX-512", 256: "AVX2"}.get(kernels.vector_bits, "portable C")
        text = f"compiled, {isa} micro-kernel ({kernels.path})"
        if _downgraded:
            text += f"; the AVX-512 build failed: {_downgraded}"
        return text
    return f"not used, NumPy's functions run instead: {_reason}"


def _reset_for_tests() -> None:
    """Forget the loaded kernels so that the next :func:`load` tries again."""
    global _loaded, _reason, _downgraded, _tried
    with _lock:
        _loaded, _reason, _downgraded, _tried = None, None, None, False
