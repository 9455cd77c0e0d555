"""The one place where rnncu's CUDA sources are found, compiled and registered.

Sources live in ``kernels/`` (``.cu`` kernel files and ``.cuh`` headers). At run time they are
compiled by NVRTC through :class:`cupy.RawModule` on first use, once per device and per
(file, name expressions, options); CuPy's disk cache (``CUPY_CACHE_DIR``) keeps the binaries
between processes. Kernels are C++ templates, picked by explicit name expressions such as
``rnn_step_forward<float, 0, 64, 64>``.

Two properties every kernel file gets from :func:`read_source`:

* ``#line`` directives, so a compile error points at ``kernels/<file>.cu:<line>`` (the
  messages of :class:`KernelCompileError` are rewritten from NVRTC's ``file(line)`` form);
* quoted includes of files in ``kernels/`` (``#include "common.cuh"``) are inlined, each
  under its own ``#line``, so no ``-I`` option is needed and CuPy's disk-cache key, which
  hashes the source text only, changes whenever a header changes.

:func:`nvrtc_compile` compiles without a CUDA device (straight through
``cupy_backends.cuda.libs.nvrtc``) for a named architecture, with ptxas' verbose report, so
tests and ``rnncu info`` can check every kernel's registers and spills on any machine.

Registry. :data:`KERNEL_FILES` maps each kernel file to its full list of name expressions,
its extra compile options, and how it is cut into modules (the whole file, or one module per
name expression) and launched (cooperatively or not). :func:`module_spec` names the module
that holds a kernel and :func:`module_specs` lists them all, so that :func:`get_kernel` and
:func:`precompile` (``rnncu precompile``: every module into CuPy's disk cache, in parallel
processes) always agree on what a module is. A module that owns kernels registers them at
import time with :func:`register_kernel_file`; this module registers ``rnn_step.cu`` itself.
The persistent kernels register from ``rnncu/backend/persistent.py``;
:func:`all_name_expressions` imports that module (when it exists) before answering, so its
files are always included.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CompileResult",
    "DEFAULT_OPTIONS",
    "KERNEL_FILES",
    "KernelCompileError",
    "MATVEC_KERNEL_FILE",
    "MATVEC_ROWS",
    "ModuleSpec",
    "PrecompileResult",
    "STEP_KERNEL_FILE",
    "STEP_TILES",
    "TF32_STEP_KERNEL_FILE",
    "TF32_STEP_THREADS",
    "TF32_STEP_TILES",
    "all_name_expressions",
    "get_kernel",
    "kernel_dir",
    "kernel_options",
    "load_module",
    "matvec_name_expression",
    "module_spec",
    "module_specs",
    "nvrtc_compile",
    "precompile",
    "read_source",
    "register_kernel_file",
    "step_name_expression",
    "step_threads",
    "tf32_step_name_expression",
]

#: options every kernel file is compiled with, on the device and by :func:`nvrtc_compile`
DEFAULT_OPTIONS: tuple[str, ...] = ("-std=c++17",)

#: modules that register kernel files when imported (see the module docstring)
_REGISTERING_MODULES = ("rnncu.backend.persistent",)

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
# NVRTC reports "kernels/rnn_step.cu(42): error: ..."; rewritten to "kernels/rnn_step.cu:42:"
_LOCATION_RE = re.compile(r"(kernels/[\w./-]+)\((\d+)\):?")


class KernelCompileError(RuntimeError):
    """A kernel file failed to compile; the message holds the compiler log, with locations
    written as ``kernels/<file>.cu:<line>``."""

    def __init__(self, filename: str, log: str, options: Sequence[str] = ()) -> None:
        self.filename = filename
        self.log = _map_locations(log)
        self.options = tuple(options)
        hint = ""
        if f'"{_TOOLKIT_HEADER}"' in log or f"<{_TOOLKIT_HEADER}>" in log:
            hint = (
                f"\n{_TOOLKIT_HEADER} was not found: point CUDA_PATH at a CUDA toolkit (or "
                "install NVIDIA's nvidia-cuda-runtime wheel, whose include/ has it)"
            )
        super().__init__(
            f"compiling kernels/{filename} failed (options {' '.join(self.options)}):"
            f"\n{self.log}{hint}"
        )


def _map_locations(log: str) -> str:
    return _LOCATION_RE.sub(r"\1:\2:", log)


# ---------------------------------------------------------------------------------- sources
def kernel_dir() -> Path:
    """The directory holding the kernel sources: ``rnncu/kernels`` inside an installed wheel
    (setup.py copies them there), else ``kernels/`` at the top of a checkout (editable install
    or ``PYTHONPATH=<checkout>``)."""
    import rnncu

    package = Path(rnncu.__file__).resolve().parent
    candidates = (package / "kernels", package.parent / "kernels")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "rnncu kernel sources not found; looked in "
        + " and ".join(str(c) for c in candidates)
        + " (a wheel must ship rnncu/kernels; a checkout has kernels/ beside rnncu/)"
    )


def _inline(filename: str, directory: Path, seen: set[str]) -> str:
    """``filename``'s text with its quoted includes of files in ``directory`` inlined, each
    once per translation unit: ``seen`` (the files inlined so far, anywhere in the tree, this
    one included) is shared by the whole recursion and grows as it goes."""
    path = directory / filename
    if not path.is_file():
        raise FileNotFoundError(f"kernel source kernels/{filename} not found in {directory}")
    lines = [f'#line 1 "kernels/{filename}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _INCLUDE_RE.match(line)
        if match and (directory / match.group(1)).is_file():
            header = match.group(1)
            if header in seen:
                # a header included twice (directly or through another) is already inlined;
                # its `#pragma once` would not help in a single concatenated buffer
                lines.append(f"// {line.strip()} (already inlined)")
            else:
                seen.add(header)
                lines.append(_inline(header, directory, seen))
            lines.append(f'#line {number + 1} "kernels/{filename}"')
        else:
            lines.append(line)
    return "\n".join(lines)


def read_source(filename: str) -> str:
    """The source of ``kernels/<filename>``, with ``#line 1 "kernels/<filename>"`` prepended and
    its quoted includes of other files in ``kernels/`` inlined (each under its own ``#line``)."""
    return _inline(filename, kernel_dir(), {filename}) + "\n"


# --------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _KernelFile:
    name_expressions: tuple[str, ...]
    options: tuple[str, ...] = ()
    #: one module per name expression, compiled when that kernel is first used, instead of
    #: one module for the whole file (worth it when a file has many costly instantiations)
    per_name: bool = False
    #: the file's kernels use a grid-wide sync and are launched cooperatively
    cooperative: bool = False


@dataclass(frozen=True)
class ModuleSpec:
    """One module the runtime may load: exactly the arguments of :func:`load_module`."""

    filename: str
    name_expressions: tuple[str, ...]
    options: tuple[str, ...]
    cooperative: bool


#: every registered kernel file: filename -> its name expressions and extra options
KERNEL_FILES: dict[str, _KernelFile] = {}
_registry_lock = threading.Lock()


def register_kernel_file(
    filename: str,
    name_expressions: Sequence[str],
    options: Sequence[str] = (),
    *,
    per_name: bool = False,
    cooperative: bool = False,
) -> None:
    """Declare that ``kernels/<filename>`` exists and instantiates ``name_expressions``
    (compiled with ``options`` on top of :data:`DEFAULT_OPTIONS`). ``per_name`` compiles each
    name expression into its own module on first use (else the whole file is one module);
    ``cooperative`` builds the modules for cooperative launches. Registering the same file
    again replaces its entry, so re-importing a module is harmless."""
    if not name_expressions:
        raise ValueError(f"register_kernel_file({filename!r}): no name expressions")
    entry = _KernelFile(tuple(name_expressions), tuple(options), per_name, cooperative)
    with _registry_lock:
        KERNEL_FILES[filename] = entry


def _import_registering_modules() -> None:
    import importlib

    for module_name in _REGISTERING_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # the module not being written yet (or CuPy absent) is fine; a bug inside it is not
            if exc.name != module_name and not (exc.name or "").startswith("cupy"):
                raise


def all_name_expressions() -> dict[str, list[str]]:
    """``{kernel file: [name expression, ...]}`` for every registered kernel file, including
    those of modules that register on import (``rnncu.backend.persistent``)."""
    _import_registering_modules()
    with _registry_lock:
        return {name: list(entry.name_expressions) for name, entry in KERNEL_FILES.items()}


def kernel_options(filename: str) -> tuple[str, ...]:
    """The full option tuple a registered file is compiled with (defaults + its own)."""
    entry = KERNEL_FILES.get(filename)
    return DEFAULT_OPTIONS + (entry.options if entry is not None else ())


# The step kernels' tiles: (BM, BN, TM, TN) = BM batch rows x BN hidden units per block,
# each thread a TM x TN micro-tile, so (BM / TM) * (BN / TN) threads. Ordered from the most
# work per shared-memory load to the least; the backend takes the first whose grid still
# keeps (almost) every multiprocessor busy (cupy_backend.choose_tile).
STEP_KERNEL_FILE = "rnn_step.cu"
STEP_TILES: tuple[tuple[int, int, int, int], ...] = (
    (64, 64, 4, 4),
    (64, 32, 4, 4),
    (32, 32, 4, 4),
    (16, 16, 1, 1),
)
_ACTIVATION_IDS = {"tanh": 0, "relu": 1}
_CTYPES = {"float32": "float", "float64": "double"}


def step_threads(tile: tuple[int, int, int, int]) -> int:
    """Threads per block of a step kernel tile ``(BM, BN, TM, TN)``."""
    bm, bn, tm, tn = tile
    return (bm // tm) * (bn // tn)


def step_name_expression(
    direction: str, dtype: Any, nonlinearity: str, tile: tuple[int, int, int, int]
) -> str:
    """``rnn_step_forward<float, 0, 64, 32, 4, 4>``: the instantiation for a direction
    (``"forward"``/``"backward"``), dtype (float32/float64), nonlinearity and
    ``(BM, BN, TM, TN)`` tile (one of :data:`STEP_TILES`)."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if tuple(tile) not in STEP_TILES:
        raise ValueError(f"tile: expected one of {STEP_TILES}, got {tile!r}")
    ctype = _CTYPES[str(getattr(dtype, "name", dtype))]
    dims = ", ".join(str(d) for d in tile)
    return f"rnn_step_{direction}<{ctype}, {_ACTIVATION_IDS[nonlinearity]}, {dims}>"


register_kernel_file(
    STEP_KERNEL_FILE,
    [
        step_name_expression(direction, dtype, act, tile)
        for direction in ("forward", "backward")
        for dtype in _CTYPES
        for act in _ACTIVATION_IDS
        for tile in STEP_TILES
    ],
)

# The float32 step kernels on the tensor cores (kernels/rnn_step_tf32.cu), for matmul precision
# "high": (BM, BN) = BM batch rows x BN hidden units per block of TF32_STEP_THREADS threads (four
# warps). Largest first: the backend takes the one with the least estimated step time, ties
# to the larger (cupy_backend.choose_tf32_tile).
TF32_STEP_KERNEL_FILE = "rnn_step_tf32.cu"
TF32_STEP_TILES: tuple[tuple[int, int], ...] = ((64, 64), (32, 64), (32, 32))
TF32_STEP_THREADS = 128


def tf32_step_name_expression(direction: str, nonlinearity: str, tile: tuple[int, int]) -> str:
    """``rnn_step_tf32_forward<0, 64, 64>``: the TF32 step kernel for a direction
    (``"forward"``/``"backward"``), nonlinearity and ``(BM, BN)`` tile (one of
    :data:`TF32_STEP_TILES`); float32 only."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if tuple(tile) not in TF32_STEP_TILES:
        raise ValueError(f"tile: expected one of {TF32_STEP_TILES}, got {tile!r}")
    dims = ", ".join(str(d) for d in tile)
    return f"rnn_step_tf32_{direction}<{_ACTIVATION_IDS[nonlinearity]}, {dims}>"


register_kernel_file(
    TF32_STEP_KERNEL_FILE,
    [
        tf32_step_name_expression(direction, act, tile)
        for direction in ("forward", "backward")
        for act in _ACTIVATION_IDS
        for tile in TF32_STEP_TILES
    ],
)

# The small-batch step kernels (kernels/rnn_matvec.cu): RB batch rows per block, a warp per two
# hidden units reading whole W rows. MATVEC_THREADS and MATVEC_UNITS_PER_BLOCK mirror the
# file's kMatvecThreads and kMatvecWarps * kUnits: change both together.
MATVEC_KERNEL_FILE = "rnn_matvec.cu"
MATVEC_ROWS: tuple[int, ...] = (1, 2, 4, 8)
MATVEC_THREADS = 256
MATVEC_UNITS_PER_BLOCK = 16


def matvec_name_expression(direction: str, dtype: Any, nonlinearity: str, rows: int) -> str:
    """``rnn_matvec_forward<float, 0, 4>``: the small-batch step kernel for a direction, dtype,
    nonlinearity and ``rows`` per block (one of :data:`MATVEC_ROWS`)."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if rows not in MATVEC_ROWS:
        raise ValueError(f"rows: expected one of {MATVEC_ROWS}, got {rows!r}")
    ctype = _CTYPES[str(getattr(dtype, "name", dtype))]
    return f"rnn_matvec_{direction}<{ctype}, {_ACTIVATION_IDS[nonlinearity]}, {rows}>"


register_kernel_file(
    MATVEC_KERNEL_FILE,
    [
        matvec_name_expression(direction, dtype, act, rows)
        for direction in ("forward", "backward")
        for dtype in _CTYPES
        for act in _ACTIVATION_IDS
        for rows in MATVEC_ROWS
    ],
)


# ----------------------------------------------------------------------- device compilation
_modules: dict[tuple[Any, ...], Any] = {}
_modules_lock = threading.Lock()


def load_module(
    filename: str,
    name_expressions: Sequence[str],
    options: Sequence[str] = (),
    cooperative: bool = False,
) -> Any:
    """The :class:`cupy.RawModule` of ``kernels/<filename>`` instantiating ``name_expressions``
    for the current device, compiled on the first call for each (file, name expressions,
    options, cooperative, device) and memoised. ``options`` come on top of
    :data:`DEFAULT_OPTIONS`. ``cooperative`` builds the module for cooperative launches
    (grid-wide sync); CuPy fixes that per module. A compile error raises
    :class:`KernelCompileError`."""
    import cupy

    device_id = cupy.cuda.runtime.getDevice()
    full_options = DEFAULT_OPTIONS + tuple(options) + header_options()
    key = (filename, tuple(name_expressions), full_options, cooperative, device_id)
    module = _modules.get(key)
    if module is not None:
        return module
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            module = cupy.RawModule(
                code=read_source(filename),
                options=full_options,
                name_expressions=tuple(name_expressions),
                enable_cooperative_groups=cooperative,
            )
            try:
                module.compile()  # now, so the error surfaces here rather than at a launch
            except cupy.cuda.compiler.CompileException as exc:
                raise KernelCompileError(filename, str(exc), full_options) from None
            _modules[key] = module
    return module


def module_spec(filename: str, name_expression: str) -> ModuleSpec:
    """The module that holds one kernel: for a registered file, as its entry says (the
    whole file, or the name expression alone when ``per_name``); for an unregistered one,
    the name expression alone with the default options."""
    entry = KERNEL_FILES.get(filename)
    if entry is None or name_expression not in entry.name_expressions:
        return ModuleSpec(filename, (name_expression,), (), False)
    names = (name_expression,) if entry.per_name else entry.name_expressions
    return ModuleSpec(filename, names, entry.options, entry.cooperative)


def module_specs() -> list[ModuleSpec]:
    """Every module the runtime may load for the registered kernel files, each once: what
    :func:`precompile` builds."""
    _import_registering_modules()
    with _registry_lock:
        entries = list(KERNEL_FILES.items())
    specs: list[ModuleSpec] = []
    for filename, entry in entries:
        names = entry.name_expressions
        groups = [(name,) for name in names] if entry.per_name else [names]
        specs += [ModuleSpec(filename, g, entry.options, entry.cooperative) for g in groups]
    return specs


def get_kernel(filename: str, name_expression: str) -> Any:
    """One kernel (a :class:`cupy.RawKernel`-like callable, ``kernel(grid, block, args)``)
    from the module :func:`module_spec` names, compiled on first use."""
    spec = module_spec(filename, name_expression)
    module = load_module(spec.filename, spec.name_expressions, spec.options, spec.cooperative)
    return module.get_function(name_expression)


@dataclass
class PrecompileResult:
    """One module built by :func:`precompile`: how long it took, or why it failed."""

    spec: ModuleSpec
    seconds: float
    error: str | None = None


def _precompile_one(spec: ModuleSpec) -> PrecompileResult:
    import time

    start = time.perf_counter()
    try:
        load_module(spec.filename, spec.name_expressions, spec.options, spec.cooperative)
    except Exception as exc:  # reported per module; one bad kernel must not hide the others
        # the headline and the compiler's first error line, not the whole log
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines[1:] if "error" in line), None)
        message = " ".join(lines[:1] + ([detail] if detail else []))
        error = f"{type(exc).__name__}: {message}"
        return PrecompileResult(spec, time.perf_counter() - start, error)
    return PrecompileResult(spec, time.perf_counter() - start)


def precompile(
    jobs: int | None = None, specs: Sequence[ModuleSpec] | None = None
) -> list[PrecompileResult]:
    """Compile every module of :func:`module_specs` (or ``specs``) for the current device,
    so that no kernel compiles at its first use.

    The binaries land in CuPy's disk cache (``CUPY_CACHE_DIR``), which later processes read;
    NVRTC holds one thread per process, so ``jobs`` > 1 compiles in that many worker
    processes (default: the CPU count). Each worker needs the CUDA device, as the compile
    targets its architecture. Results come in the order of ``specs``.
    """
    import os

    specs = module_specs() if specs is None else list(specs)
    jobs = min(jobs or os.cpu_count() or 1, len(specs)) if specs else 1
    if jobs <= 1:
        return [_precompile_one(spec) for spec in specs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child would inherit this process's CUDA state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        # the slowest (cooperative) modules first, so the pool does not end waiting on one
        first = sorted(specs, key=lambda spec: not spec.cooperative)
        futures = {spec: pool.submit(_precompile_one, spec) for spec in first}
        return [futures[spec].result() for spec in specs]


# ------------------------------------------------------------------ device-free compilation
@dataclass
class CompileResult:
    """What :func:`nvrtc_compile` produced for one file and architecture."""

    filename: str
    arch: str
    cubin: bytes
    #: name expression -> mangled (lowered) name
    lowered_names: dict[str, str]
    log: str
    #: name expression -> registers per thread (from ptxas' report)
    registers: dict[str, int] = field(default_factory=dict)
    #: name expression -> (spill store bytes, spill load bytes)
    spills: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: name expression -> stack frame bytes
    stack_frame: dict[str, int] = field(default_factory=dict)

    @property
    def has_spills(self) -> bool:
        return any(stores or loads for stores, loads in self.spills.values())


_PTXAS_ENTRY_RE = re.compile(r"Function properties for (\S+)")
_PTXAS_FRAME_RE = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_REGS_RE = re.compile(r"Compiling entry function '([^']+)'|Used (\d+) registers")


def _parse_ptxas(
    log: str, lowered: dict[str, str]
) -> tuple[dict[str, int], dict[str, tuple[int, int]], dict[str, int]]:
    by_mangled = {mangled: name for name, mangled in lowered.items()}
    registers: dict[str, int] = {}
    spills: dict[str, tuple[int, int]] = {}
    frames: dict[str, int] = {}
    current: str | None = None
    for line in log.splitlines():
        entry = _PTXAS_ENTRY_RE.search(line)
        if entry:
            current = entry.group(1)
            continue
        regs = _PTXAS_REGS_RE.search(line)
        if regs and regs.group(1):
            current = regs.group(1)
            continue
        if current is None or current not in by_mangled:
            continue
        name = by_mangled[current]
        frame = _PTXAS_FRAME_RE.search(line)
        if frame:
            frames[name] = int(frame.group(1))
            spills[name] = (int(frame.group(2)), int(frame.group(3)))
        elif regs and regs.group(2):
            registers[name] = int(regs.group(2))
    return registers, spills, frames


def _with_cupy_includes(options: tuple[str, ...]) -> tuple[str, ...]:
    """``options`` plus the include paths CuPy gives every RawModule (its own headers, CCCL's
    libcudacxx, the CUDA toolkit's include/), so ``<cooperative_groups.h>`` and friends
    resolve here exactly as on the device. A private CuPy helper: without it, no extra paths."""
    try:
        import cupy  # noqa: F401  (importing cupy._core first is a circular import)
        from cupy._core.core import assemble_cupy_compiler_options
    except Exception:  # pragma: no cover - CuPy absent or reorganised
        return options
    return tuple(assemble_cupy_compiler_options(tuple(options)))


_TOOLKIT_HEADER = "cooperative_groups.h"
_header_options: tuple[str, ...] | None = None


def _toolkit_include_candidates() -> list[Path]:
    """Where a CUDA toolkit's include/ may be when CuPy found none: the usual environment
    variables, the default install path, and NVIDIA's pip wheels (``nvidia/cu13/include``,
    ``nvidia/cuda_runtime/include``)."""
    candidates = [
        Path(os.environ[var]) / "include"
        for var in ("CUDA_PATH", "CUDA_HOME")
        if os.environ.get(var)
    ]
    candidates.append(Path("/usr/local/cuda/include"))
    try:
        import nvidia  # a namespace package of NVIDIA's CUDA wheels

        for root in map(Path, nvidia.__path__):
            candidates.extend(sorted(root.glob("*/include")))
    except ImportError:
        pass
    return candidates


def header_options() -> tuple[str, ...]:
    """An ``-I`` option for the CUDA toolkit headers when CuPy's own include paths lack
    them (``<cooperative_groups.h>``, needed by the grid and cluster kernels), else ().

    CuPy adds ``-I<CUDA path>/include`` only when it finds a toolkit; a pip-only install
    has the headers in NVIDIA's wheels instead. Searched once per process."""
    global _header_options
    if _header_options is None:
        given = [Path(option[2:]) for option in _with_cupy_includes(()) if option.startswith("-I")]
        if any((folder / _TOOLKIT_HEADER).is_file() for folder in given):
            _header_options = ()
        else:
            found = next(
                (c for c in _toolkit_include_candidates() if (c / _TOOLKIT_HEADER).is_file()),
                None,
            )
            _header_options = (f"-I{found}",) if found is not None else ()
    return _header_options


def nvrtc_compile(
    filename: str,
    name_expressions: Sequence[str],
    arch: str = "sm_90",
    options: Sequence[str] = (),
    source: str | None = None,
) -> CompileResult:
    """Compile ``kernels/<filename>`` to a cubin for ``arch`` with NVRTC directly, without a
    CUDA device, and read ptxas' report of registers and spills per name expression.

    ``source`` replaces the file's text (tests use it to compile a deliberately broken
    variant); it is still labelled ``kernels/<filename>`` in messages. The options match the
    device path (:data:`DEFAULT_OPTIONS`, CuPy's ``-ftz=true``, the file's registered
    options). Raises :class:`KernelCompileError` with the NVRTC log on failure."""
    from cupy_backends.cuda.libs import nvrtc

    if source is None:
        source = read_source(filename)
    elif not source.lstrip().startswith("#line"):
        source = f'#line 1 "kernels/{filename}"\n{source}'
    full_options = _with_cupy_includes(kernel_options(filename) + tuple(options) + header_options())
    full_options += ("-ftz=true", f"-arch={arch}", "-Xptxas=-v")
    program = nvrtc.createProgram(source, f"kernels/{filename}", [], [])
    try:
        for name in name_expressions:
            nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, list(full_options))
        except nvrtc.NVRTCError:
            raise KernelCompileError(
                filename, nvrtc.getProgramLog(program).rstrip("\x00"), full_options
            ) from None
        log = nvrtc.getProgramLog(program).rstrip("\x00")
        lowered = {name: nvrtc.getLoweredName(program, name) for name in name_expressions}
        cubin = nvrtc.getCUBIN(program)
    finally:
        nvrtc.destroyProgram(program)
    registers, spills, frames = _parse_ptxas(log, lowered)
    return CompileResult(filename, arch, cubin, lowered, log, registers, spills, frames)


def device_arch() -> str | None:
    """``sm_XY`` of the current CUDA device, or None when there is none (never raises)."""
    try:
        import cupy

        return f"sm_{cupy.cuda.Device().compute_capability}"
    except Exception:
        return None
