"""An emulated CUDA device for the CuPy backend, so that its host code runs end to end on a
machine without a GPU: ``rnncu.backend.cupy_backend.CupyBackend`` and
``rnncu.backend.persistent``, unchanged, over a stand-in ``cupy`` module whose arrays live in
host memory and whose kernels run in the host emulation of ``tests/kernel_emulation.py``.

What is real: every line of the backend (argument checks, dispatch between the step and the
persistent paths, tile choice, launch plans, pointer arithmetic, ping-pong buffers, dummy
arguments, the kernels' C++ source). What is stood in for: CuPy's array module (NumPy under
a :class:`DeviceArray` subclass), the device's properties (an H200's, see
``tests/device_limits.py``), the occupancy API (an estimate), and NVRTC (g++).

The stand-in is strict where CuPy is strict, so host arrays leaking into device code fail
here as they would on a GPU: a NumPy array mixed with a device array in an operation raises
TypeError, and ``cupy.empty`` memory starts as NaN bits (all bytes 0xFF), so an element a
kernel should write but does not shows up as NaN.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from device_limits import H200
from kernel_emulation import ASCENDING, KernelEmulation

import rnncu.backend as backend_package
from rnncu.backend import kernel_loader, persistent

DEVICE_ID = 0


class DeviceArray(np.ndarray):
    """A host array posing as a ``cupy.ndarray`` on emulated device 0 (its module name is
    ``cupy``, which is how ``rnncu.backend.backend_for`` recognises a CuPy array)."""

    __module__ = "cupy"

    @property
    def data(self) -> Any:  # cupy.cuda.MemoryPointer: only .ptr is used
        return types.SimpleNamespace(ptr=self.ctypes.data)

    @property
    def device(self) -> Device:
        return Device(DEVICE_ID)

    def get(self) -> np.ndarray:
        """A host copy, as ``cupy.ndarray.get()``."""
        return np.array(self.view(np.ndarray), copy=True)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o, ufunc.__name__) for o in out)
        operands = [_unwrap(x, ufunc.__name__) for x in inputs]
        if ufunc is np.matmul and LINALG.takes_tf32(operands):
            operands = [to_tf32(x) for x in operands]
        result = getattr(ufunc, method)(*operands, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        name = getattr(func, "__name__", "function")
        args = _unwrap_tree(args, name)
        kwargs = _unwrap_tree(kwargs, name)
        return _wrap(func(*args, **kwargs))


def _unwrap(value: Any, what: str) -> Any:
    if isinstance(value, DeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, np.ndarray):
        raise TypeError(
            f"emulated cupy: {what} got a numpy.ndarray mixed with device arrays "
            "(CuPy raises TypeError: Unsupported type <class 'numpy.ndarray'>)"
        )
    return value


def _unwrap_tree(value: Any, what: str) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap_tree(v, what) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap_tree(v, what) for k, v in value.items()}
    return _unwrap(value, what)


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_function(function: Any) -> Any:
    """A NumPy function as a CuPy one: device arrays in (host arrays rejected), device out."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        name = getattr(function, "__name__", "function")
        return _wrap(function(*_unwrap_tree(args, name), **_unwrap_tree(kwargs, name)))

    return call


def to_tf32(array: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32's 10 bits of mantissa (to nearest, ties away from zero,
    as ``cvt.rna.tf32.f32``), still stored as float32: what a tensor core reads of a TF32
    product's operands."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    finite = np.isfinite(array)
    rounded = ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(finite, rounded, array).astype(np.float32)


class _Linalg:
    """``cupy._core._routines_linalg``'s compute types: one setting per dtype for the whole
    process, as CuPy keeps them; a float32 product under ``COMPUTE_TYPE_TF32`` rounds its
    operands to TF32 (:func:`to_tf32`), as cuBLAS's ``CUBLAS_COMPUTE_32F_FAST_TF32`` may."""

    COMPUTE_TYPE_TBD = 0
    COMPUTE_TYPE_DEFAULT = 1
    COMPUTE_TYPE_PEDANTIC = 2
    COMPUTE_TYPE_FP16 = 3
    COMPUTE_TYPE_FP32 = 4
    COMPUTE_TYPE_FP64 = 5
    COMPUTE_TYPE_BF16 = 6
    COMPUTE_TYPE_TF32 = 7

    def __init__(self) -> None:
        self.reset()

    def reset(self, compute_capability: tuple[int, int] = H200.compute_capability) -> None:
        self.compute_types = {"e": 0, "f": 0, "d": 0}
        self.compute_capability = compute_capability
        self.sets = 0  # callers' calls of set_compute_type, for tests

    @staticmethod
    def _index(dtype: Any) -> str:
        char = np.dtype(dtype).char
        if char not in "efdFD":
            raise TypeError(f"dtype is not supported: {dtype}")
        return {"F": "f", "D": "d"}.get(char, char)

    def get_compute_type(self, dtype: Any) -> int:
        index = self._index(dtype)
        if self.compute_types[index] == self.COMPUTE_TYPE_TBD:
            # CuPy resolves the default once, from CUPY_TF32 for float32
            tf32 = index == "f" and int(os.environ.get("CUPY_TF32", "0")) > 0
            self.set_compute_type(dtype, self.COMPUTE_TYPE_TF32 if tf32 else 1)
            self.sets -= 1  # CuPy's own resolution, not a caller's change
        return self.compute_types[index]

    def set_compute_type(self, dtype: Any, compute_type: int) -> None:
        if compute_type not in range(8):
            raise ValueError(f"Unknown compute type: {compute_type}")
        self.sets += 1
        if compute_type in (self.COMPUTE_TYPE_BF16, self.COMPUTE_TYPE_TF32):
            if self.compute_capability < (8, 0):
                warnings.warn(
                    "COMPUTE_TYPE_BF16 and COMPUTE_TYPE_TF32 are only available on GPUs with "
                    "compute capability 8.0 or higher. COMPUTE_TYPE_DEFAULT will be used "
                    "instead.",
                    stacklevel=2,
                )
                compute_type = self.COMPUTE_TYPE_DEFAULT
        self.compute_types[self._index(dtype)] = compute_type

    def takes_tf32(self, operands: list[Any]) -> bool:
        """Whether a product of ``operands`` runs in TF32: float32 both, under TF32, and of
        at most two axes each (CuPy's stacked products, batched GEMMs, ignore the setting),
        on a device that has TF32 (compute capability 8.0 or later)."""
        arrays = [x for x in operands if isinstance(x, np.ndarray)]
        return (
            len(arrays) == 2
            and all(x.dtype == np.float32 and x.ndim <= 2 for x in arrays)
            and self.compute_types["f"] == self.COMPUTE_TYPE_TF32
            and self.compute_capability >= (8, 0)
        )


#: the one compute-type setting of the stand-in (reset by :func:`make_module`)
LINALG = _Linalg()


def _poisoned(shape: Any, dtype: Any = float) -> DeviceArray:
    """Uninitialised device memory: all bytes 0xFF (NaN in float32 and float64)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    raw = np.full(int(np.prod(shape)) * dtype.itemsize, 0xFF, dtype=np.uint8)
    return raw.view(dtype).reshape(shape).view(DeviceArray)


class Device:
    """``cupy.cuda.Device``: the emulated device 0."""

    def __init__(self, device: int | None = None) -> None:  # CuPy's name: device=None, current
        device_id = DEVICE_ID if device is None else int(device)
        if device_id != DEVICE_ID:
            raise RuntimeError(f"emulated cupy has one device (0), asked for {device_id}")
        self.id = device_id
        self.compute_capability = "".join(map(str, H200.compute_capability))

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None


class _Runtime:
    """``cupy.cuda.runtime``: what the backend and ``DeviceLimits.from_device`` ask."""

    cudaDevAttrMultiProcessorCount = 16
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81
    cudaDevAttrMaxRegistersPerMultiprocessor = 82
    cudaDevAttrMaxThreadsPerMultiProcessor = 39
    cudaDevAttrMaxBlocksPerMultiprocessor = 106
    cudaDevAttrCooperativeLaunch = 95
    cudaDevAttrReservedSharedMemoryPerBlock = 111

    _ATTRIBUTES = {
        16: H200.sm_count,
        97: H200.smem_per_block_optin,
        81: H200.smem_per_sm,
        82: H200.regs_per_sm,
        39: H200.max_threads_per_sm,
        106: H200.max_blocks_per_sm,
        95: int(H200.cooperative_launch),
        111: H200.reserved_smem_per_block,
        120: int(H200.cluster_launch),  # cudaDevAttrClusterLaunch (no CuPy name)
    }

    @staticmethod
    def getDevice() -> int:  # noqa: N802 - CuPy's name
        return DEVICE_ID

    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802
        return 1

    @staticmethod
    def getDeviceProperties(device_id: int) -> dict[str, Any]:  # noqa: N802
        Device(device_id)
        major, minor = H200.compute_capability
        return {
            "name": b"Emulated H200 (host fibers)",
            "major": major,
            "minor": minor,
            "multiProcessorCount": H200.sm_count,
            "totalGlobalMem": 141 * 2**30,
        }

    def deviceGetAttribute(self, attribute: int, device_id: int) -> int:  # noqa: N802
        Device(device_id)
        return self._ATTRIBUTES[attribute]

    @staticmethod
    def runtimeGetVersion() -> int:  # noqa: N802
        return 13000

    @staticmethod
    def driverGetVersion() -> int:  # noqa: N802
        return 13000


class _Generator:
    """``cupy.random.Generator`` over NumPy's: draws land on the device."""

    def __init__(self, seed: Any = None) -> None:
        self._generator = np.random.default_rng(seed)

    def __getattr__(self, name: str) -> Any:
        return _device_function(getattr(self._generator, name))


class CUDARuntimeError(RuntimeError):
    """``cupy.cuda.runtime.CUDARuntimeError``."""


class CUDADriverError(RuntimeError):
    """``cupy.cuda.driver.CUDADriverError``."""


class _Streams:
    """The emulated device's streams: the current one (CuPy's ``with stream:`` nests) and,
    for each capturing stream, the launches recorded so far."""

    def __init__(self) -> None:
        self.null = _Stream(self, null=True)
        self.stack: list[_Stream] = [self.null]

    def current(self) -> _Stream:
        return self.stack[-1]

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` now, or record it into the graph the current stream is capturing."""
        captured = self.current().captured
        if captured is None:
            work()
        else:
            captured.append(work)

    def new(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> _Stream:
        """``cupy.cuda.Stream(null, non_blocking, ptds)``."""
        return _Stream(self, null=null)


class _Stream:
    """``cupy.cuda.Stream``: work runs at once (the emulation is synchronous), except while
    capturing, when kernel launches are recorded into a :class:`_Graph` as CUDA records them,
    arguments by value. Strict as CUDA is: the legacy stream cannot capture, and a capture
    cannot begin twice or end without beginning."""

    def __init__(self, streams: _Streams, null: bool = False) -> None:
        self._streams = streams
        self.null = null
        self.captured: list[Callable[[], None]] | None = None

    def synchronize(self) -> None:
        if self.captured is not None:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: synchronize in capture")

    def __enter__(self) -> _Stream:
        self._streams.stack.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._streams.stack.remove(self)

    def begin_capture(self, mode: Any = None) -> None:
        if self.null:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: the legacy stream")
        if self.captured is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is capturing already")
        self.captured = []

    def is_capturing(self) -> bool:
        return self.captured is not None

    def end_capture(self) -> _Graph:
        if self.captured is None:
            raise CUDARuntimeError("cudaErrorIllegalState: the stream is not capturing")
        launches, self.captured = self.captured, None
        return _Graph(launches)


class _Graph:
    """``cupy.cuda.graph.Graph``: the recorded launches, run again at each ``launch()``."""

    def __init__(self, launches: list[Callable[[], None]]) -> None:
        self.nodes = launches
        self.launches = 0

    def launch(self, stream: _Stream | None = None) -> None:
        if stream is not None and stream.captured is not None:
            raise CUDARuntimeError("emulated cupy: launching a graph into a capture")
        self.launches += 1
        for node in self.nodes:
            node()


class _Event:
    """``cupy.cuda.Event``: the host clock at ``record()`` (the emulation runs synchronously)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.time: float | None = None

    def record(self, stream: Any = None) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None:
        if self.time is None:
            raise RuntimeError("emulated cupy: synchronize() on an event never recorded")


def _elapsed_ms(start: _Event, stop: _Event) -> float:
    """``cupy.cuda.get_elapsed_time``."""
    if start.time is None or stop.time is None:
        raise RuntimeError("emulated cupy: get_elapsed_time() of an event never recorded")
    return (stop.time - start.time) * 1e3


class CompileException(Exception):
    """``cupy.cuda.compiler.CompileException``."""


def _asarray(array: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
    if isinstance(array, DeviceArray):
        return array if dtype is None or array.dtype == np.dtype(dtype) else array.astype(dtype)
    return np.array(array, dtype=dtype, order=order or "K", copy=True).view(DeviceArray)


def _array(
    array: Any,
    dtype: Any = None,
    copy: Any = True,
    order: Any = "K",
    subok: bool = False,
    ndmin: int = 0,
    *,
    blocking: bool = False,
) -> DeviceArray:
    """``cupy.array`` (CuPy 14's signature): a copy where ``copy`` is True; where it is None,
    a copy only where needed (``cupy.asarray`` hands a device array of the right dtype back
    as it is; ``cupy.array`` by default does not); where it is False, never: ValueError where
    one is needed (a host array, another dtype or order), as in CuPy 14 and NumPy 2."""
    if subok:
        raise NotImplementedError("emulated cupy: subok=True (CuPy does not support it)")
    if copy is False:
        layout = {"C": "C_CONTIGUOUS", "F": "F_CONTIGUOUS"}.get(order)
        if (
            not isinstance(array, DeviceArray)
            or (dtype is not None and np.dtype(dtype) != array.dtype)
            or (layout is not None and not array.flags[layout])
        ):
            raise ValueError(
                "emulated cupy: unable to avoid copy while creating an array as requested "
                "(copy=False never copies in CuPy 14; copy=None copies where needed)"
            )
    if not copy:
        held = _asarray(array, dtype=dtype, order=None if order == "K" else order)
        return held.reshape((1,) * (ndmin - held.ndim) + held.shape) if held.ndim < ndmin else held
    source = array.view(np.ndarray) if isinstance(array, DeviceArray) else array
    return np.array(source, dtype=dtype, order=order, copy=True, ndmin=ndmin).view(DeviceArray)


def _asnumpy(array: Any) -> np.ndarray:
    if isinstance(array, DeviceArray):
        return array.get()
    return np.asarray(array)


def _empty_like(prototype: Any, dtype: Any = None, shape: Any = None) -> DeviceArray:
    return _poisoned(prototype.shape if shape is None else shape, dtype or prototype.dtype)


def make_module() -> types.ModuleType:
    """A fresh stand-in ``cupy`` module: CuPy's names the backend uses, the rest of NumPy's
    namespace as device functions."""
    module = types.ModuleType("cupy", "emulated cupy (tests/emulated_cupy.py)")
    module.__version__ = "emulated"
    module.ndarray = DeviceArray
    module.asarray = _asarray
    module.array = _array
    module.asnumpy = _asnumpy
    module.empty = _poisoned
    module.empty_like = _empty_like
    module.random = types.SimpleNamespace(default_rng=_Generator)
    LINALG.reset()
    module._core = types.SimpleNamespace(_routines_linalg=LINALG)
    runtime = _Runtime()
    runtime.CUDARuntimeError = CUDARuntimeError
    streams = _Streams()
    module.cuda = types.SimpleNamespace(
        runtime=runtime,
        driver=types.SimpleNamespace(CUDADriverError=CUDADriverError),
        Device=Device,
        Stream=streams.new,
        streams=streams,
        get_current_stream=streams.current,
        Event=_Event,
        get_elapsed_time=_elapsed_ms,
        compiler=types.SimpleNamespace(CompileException=CompileException),
    )

    def fallback(name: str) -> Any:
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):
            return _device_function(value)
        return value

    module.__getattr__ = fallback
    return module


def _import_cupy_backend() -> types.ModuleType:
    """``rnncu.backend.cupy_backend``; where CuPy is not installed, imported against a
    stand-in (the module binds ``cupy`` at import), so the emulated suite runs there too."""
    try:
        from rnncu.backend import cupy_backend
    except ModuleNotFoundError as exc:
        if exc.name != "cupy":
            raise
        sys.modules["cupy"] = make_module()
        try:
            from rnncu.backend import cupy_backend
        finally:
            del sys.modules["cupy"]
    return cupy_backend


cupy_backend = _import_cupy_backend()


class EmulatedKernel:
    """A ``cupy.RawKernel`` whose launches run in the host emulation."""

    def __init__(
        self,
        emulation: KernelEmulation,
        filename: str,
        name: str,
        streams: _Streams,
        device: EmulatedDevice,
    ) -> None:
        self.emulation = emulation
        self.streams = streams
        #: whose ``policy`` and ``seed`` schedule the launches (read at each launch)
        self.device = device
        self.name = name
        self.cooperative = kernel_loader.module_spec(filename, name).cooperative
        self.max_dynamic_shared_size_bytes = 48 * 1024
        self.kernel = types.SimpleNamespace(ptr=id(self))
        self.launches = 0

    def __call__(
        self, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0, **kwargs: Any
    ) -> None:
        if kwargs:
            raise TypeError(f"emulated RawKernel: unexpected keyword arguments {sorted(kwargs)}")
        grid, block = tuple(grid), tuple(block)
        if len(grid) != 3 or grid[2] != 1 or len(block) != 3 or block[1:] != (1, 1):
            raise ValueError(f"{self.name}: the emulation runs grids (x, y, 1) of blocks "
                             f"(x, 1, 1), got grid {grid} block {block}")  # fmt: skip
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError(
                f"{self.name}: {shared_mem} bytes of dynamic shared memory requested but the "
                f"kernel's limit is {self.max_dynamic_shared_size_bytes} "
                "(CUDA_ERROR_INVALID_VALUE on a device)"
            )
        for index, value in enumerate(args):
            if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
                raise TypeError(f"{self.name}: argument {index} is a host numpy.ndarray")
        self.streams.submit(functools.partial(self._run, grid, block, tuple(args), shared_mem))

    def _run(self, grid: tuple, block: tuple, args: tuple, shared_mem: int) -> None:
        self.launches += 1
        self.emulation.launch_raw(self.name, grid[:2], block[0], shared_mem, self.cooperative,
                                  args, self.device.policy, self.device.seed)  # fmt: skip


class EmulatedDevice:
    """Installs the stand-in: ``with EmulatedDevice(emulation).installed(monkeypatch):``
    makes ``import cupy`` (in ``rnncu.backend`` and ``rnncu.backend.persistent``),
    ``cupy_backend.cupy`` and ``CupyBackend.xp`` the stand-in, so that
    ``rnncu.get_backend("cupy")`` answers with a backend on the emulated device;
    ``kernel_loader.get_kernel`` returns :class:`EmulatedKernel` objects; the per-device
    caches start empty. Everything is restored on exit, so nothing leaks into a real-device
    test in the same process."""

    #: schedule order and seed of every launch (see tests/kernel_emulation.py)
    policy = ASCENDING
    seed = 0

    def __init__(self, emulation: KernelEmulation) -> None:
        self.emulation = emulation
        self.module = make_module()
        self.kernels: dict[tuple[str, str], EmulatedKernel] = {}

    def get_kernel(self, filename: str, name: str) -> EmulatedKernel:
        key = (filename, name)
        if key not in self.kernels:
            self.kernels[key] = EmulatedKernel(
                self.emulation, filename, name, self.module.cuda.streams, device=self
            )
        return self.kernels[key]

    #: what the cluster occupancy query answers for a plan; None: an estimate (see
    #: _cluster_occupancy)
    max_active_clusters: Callable[[Any], int] | None = None

    def _cluster_occupancy(self, kernel: EmulatedKernel, plan: Any) -> int:
        """``cuOccupancyMaxActiveClusters`` as the emulated H200 would answer it: a cluster's
        blocks share one GPC, taken here as 16 SMs (8 of them), unless a test set
        :attr:`max_active_clusters`."""
        if self.max_active_clusters is not None:
            return self.max_active_clusters(plan)
        per_sm = _estimated_occupancy(kernel, plan.threads, plan.shared_mem)
        return (H200.sm_count // 16) * ((16 * per_sm) // plan.cluster)

    def launches(self, filename: str) -> int:
        """Launches so far of the kernels of one file."""
        return sum(k.launches for (f, _), k in self.kernels.items() if f == filename)

    @contextmanager
    def installed(self, monkeypatch: Any) -> Iterator[EmulatedDevice]:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "cupy", self.module)
            patch.setitem(sys.modules, "cupy.cuda", self.module.cuda)
            patch.setitem(sys.modules, "cupy.cuda.runtime", self.module.cuda.runtime)
            patch.setattr(cupy_backend, "cupy", self.module)
            patch.setattr(cupy_backend.CupyBackend, "xp", self.module)
            patch.setattr(kernel_loader, "get_kernel", self.get_kernel)
            patch.setattr(persistent, "_occupancy", _estimated_occupancy)
            patch.setattr(persistent, "_cluster_occupancy", self._cluster_occupancy)
            for cache in ("_limits_cache", "_occupancy_cache", "_cluster_cache", "_dummy_cache"):
                patch.setattr(persistent, cache, {})
            for state in ("_kernels", "_variants_failed", "_largest_cluster"):
                patch.setattr(persistent, state, {})
            # rnncu.get_backend("cupy" | "auto") and backend_for(device array) see the device
            patch.setattr(backend_package, "_instances", {})
            patch.setattr(backend_package, "_current", None)
            yield self


def _estimated_occupancy(kernel: EmulatedKernel, threads: int, shared_mem: int) -> int:
    """What the occupancy API would answer, from the block's threads and shared memory (the
    emulation has no register count; the planner's own estimate covers registers)."""
    by_threads = H200.max_threads_per_sm // threads
    by_smem = H200.smem_per_sm // (shared_mem + H200.reserved_smem_per_block)
    return max(0, min(by_threads, by_smem, H200.max_blocks_per_sm))


# ------------------------------------------------------------------ the surface rnncu reaches
#: the stand-in's classes and the CuPy classes they stand in for (dotted paths in real CuPy)
STAND_INS: dict[type, str] = {
    DeviceArray: "ndarray",
    _Stream: "cuda.Stream",
    _Graph: "cuda.graph.Graph",
    _Event: "cuda.Event",
    Device: "cuda.Device",
    _Generator: "random.Generator",
    EmulatedKernel: "RawKernel",
    _Runtime: "cuda.runtime",
    _Linalg: "_core._routines_linalg",
}
#: the stand-in's namespaces (plain objects, wrapped while recording), by their CuPy paths
NAMESPACES = frozenset({"cuda", "cuda.driver", "cuda.compiler", "random", "_core"})


def _recorded_caller(depth: int, modules: tuple[str, ...]) -> str | None:
    """The module whose code runs ``depth`` frames up, if it is one of ``modules`` (a package
    name covers its submodules); None for the stand-in's own code, NumPy's and the rest."""
    name = sys._getframe(depth + 1).f_globals.get("__name__", "")
    return name if any(name == m or name.startswith(m + ".") for m in modules) else None


class SurfaceRecorder:
    """What code of ``modules`` reaches of the stand-in ``cupy`` while :meth:`recording`:
    ``names`` holds ``(path, attribute)`` pairs, the path being where the attribute lives in
    real CuPy (``""`` for the ``cupy`` module itself, ``"cuda.runtime"``, ``"ndarray"``, ...),
    ``keywords`` the keyword arguments of each call, as ``(path, attribute, names)``, a
    class's construction as ``(path, "__init__", names)``. The
    stand-in answers to NumPy's whole namespace and to every method of a NumPy array, where
    CuPy has fewer; a test checks each recorded name against the installed CuPy, so code that
    only the emulation accepts is caught before it reaches a GPU."""

    def __init__(self, modules: tuple[str, ...] = ("rnncu",)) -> None:
        self.modules = modules
        self.names: set[tuple[str, str]] = set()
        self.keywords: set[tuple[str, str, tuple[str, ...]]] = set()
        self.callers: set[str] = set()  # the modules whose reads were recorded

    def _seen(self, path: str, name: str, value: Any) -> Any:
        """Records ``path.name`` and returns ``value``, a callable wrapped so that its keyword
        arguments are recorded too."""
        self.names.add((path, name))
        if not callable(value) or isinstance(value, type):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            self.keywords.add((path, name, tuple(sorted(kwargs))))
            return value(*args, **kwargs)

        return call

    @contextmanager
    def recording(self, device: EmulatedDevice, monkeypatch: Any) -> Iterator[SurfaceRecorder]:
        """Records while the block runs: for ``device``, which must not be installed yet."""
        modules = self.modules

        def reached(path: str, name: str, value: Any) -> Any:
            """``value``, read as ``path.name`` two frames up: a namespace wrapped, and
            recorded where rnncu's code read it."""
            inner = f"{path}.{name}" if path else name
            if inner in NAMESPACES and not isinstance(value, Namespace):
                value = Namespace(value, inner)
            caller = None if name.startswith("__") else _recorded_caller(2, modules)
            if caller is None:
                return value
            self.callers.add(caller)
            return self._seen(path, name, value)

        class Namespace:
            """A stand-in namespace whose attributes are recorded, as the module's are."""

            def __init__(self, target: Any, path: str) -> None:
                object.__setattr__(self, "_target", target)
                object.__setattr__(self, "_path", path)

            def __getattr__(self, name: str) -> Any:
                return reached(self._path, name, getattr(self._target, name))

            def __setattr__(self, name: str, value: Any) -> None:  # monkeypatching in tests
                setattr(self._target, name, value)

        class RecordedModule(types.ModuleType):
            def __getattribute__(self, name: str) -> Any:
                return reached("", name, types.ModuleType.__getattribute__(self, name))

        def attribute_of(stand_in: type, path: str) -> Callable[[Any, str], Any]:
            def __getattribute__(instance: Any, name: str) -> Any:  # noqa: N807
                try:
                    value = stand_in.__mro__[1].__getattribute__(instance, name)
                except AttributeError:  # what the class's __getattr__ forwards
                    if not hasattr(stand_in, "__getattr__"):
                        raise
                    value = stand_in.__getattr__(instance, name)
                return reached(path, name, value)

            return __getattribute__

        def assignment_of(stand_in: type, path: str) -> Callable[[Any, str, Any], None]:
            def __setattr__(instance: Any, name: str, value: Any) -> None:  # noqa: N807
                if _recorded_caller(1, modules):
                    self.names.add((path, name))
                stand_in.__mro__[1].__setattr__(instance, name, value)

            return __setattr__

        def construction_of(stand_in: type, path: str) -> Callable[..., None]:
            init = stand_in.__dict__["__init__"]

            @functools.wraps(init)
            def __init__(instance: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
                if _recorded_caller(1, modules):  # type.__call__ leaves no Python frame
                    self.keywords.add((path, "__init__", tuple(sorted(kwargs))))
                init(instance, *args, **kwargs)

            return __init__

        with monkeypatch.context() as patch:
            for stand_in, path in STAND_INS.items():
                patch.setattr(stand_in, "__getattribute__", attribute_of(stand_in, path))
                patch.setattr(stand_in, "__setattr__", assignment_of(stand_in, path))
                if "__init__" in stand_in.__dict__:  # not ndarray's: CuPy builds those
                    patch.setattr(stand_in, "__init__", construction_of(stand_in, path))
            patch.setattr(device.module, "__class__", RecordedModule)
            yield self
