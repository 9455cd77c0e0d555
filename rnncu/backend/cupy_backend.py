"""The CuPy backend: CuPy arrays on one CUDA device, and the recurrence as CUDA kernels.

The sequential part runs one of two ways, chosen per call:

* the **persistent** path (``rnncu.backend.persistent``), one launch for all steps, where that
  module says the shape is supported;
* the **step** path: one fused launch per step. Forward computes
  ``h_t = act(Z_t + h_{t-1} W_hh^T)`` in place in ``states[t]`` (a tiled GEMM whose epilogue
  adds Z_t, applies act and carries padded rows); backward forms ``dz_t`` while loading its A
  tile, writes it to ``grad_z[t]``, and computes ``dh_{t-1} = dz_t W_hh (+ dh_t on padding
  rows)`` into the other of two ping-pong buffers. Two kernel families do this, with the
  same arguments: ``kernels/rnn_step.cu`` (register tiles, for B > 8) and
  ``kernels/rnn_matvec.cu`` (B <= 8: a warp reads whole W rows, the batch rows staged in
  shared memory; backward reads W^T, transposed once per call).

The choice: the ``recurrence`` attribute (constructor argument) if set, else the environment
variable ``RNNCU_RECURRENCE``: ``auto`` (default: persistent where supported, else step),
``step``, or ``persistent`` (persistent or an error). The step kernel comes from the shape
and the device (:func:`choose_step_kernel`), or from ``RNNCU_STEP_TILE`` (``BMxBN``, one of
``kernel_loader.STEP_TILES`` such as ``64x32``, or ``matvec``), for tests and benchmarks. The
tile applies to the step path only: under ``auto`` a shape that runs persistent ignores it, so
time a tile with ``RNNCU_RECURRENCE=step``. Every call checks both step-path variables, on
either path, so a typo is an error at the first call rather than where a shape falls back.

Host cost per step: the kernel handle, grid, block and every step's argument tuple are built
before the loop, so a step is one ``RawKernel.__call__`` (about 4.5 us of Python on an H200,
see ANCHORS.md), no allocation and no device-to-host synchronisation. Building the argument
tuples is vectorised: 0.5 us per step forward and 0.9 us backward, measured on the project's
2-core CPU machine of 2026-11-28 for T = 1000 (it was 2.6 and 5.7 us with a scalar loop; 0.09
and 0.16 us on the faster machine of 2026-11-30, best of 5 x 20 calls of ``plan_forward`` and
``plan_backward`` for T = 1000, B = 64, H = 512). Capturing the loop
in a CUDA graph cuts that to one ``cudaGraphLaunch`` per loop: :class:`StepLoopGraphs`,
opt-in (``step_graphs=True``, or ``RNNCU_STEP_GRAPHS=on``) until it has been timed on a device.
A graph is keyed by every input of the launch plan (the kernel, the shape and every pointer),
so a replay issues exactly the launches the loop would; it pays off where CuPy's memory pool
hands a training loop the same addresses at every iteration, as it does in steady state.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cupy
import numpy as np

from rnncu._warnings import warn_at_caller
from rnncu.backend import kernel_loader
from rnncu.backend.base import NONLINEARITIES, Backend, check_switch
from rnncu.backend.kernel_loader import step_threads

RECURRENCE_ENV = "RNNCU_RECURRENCE"
RECURRENCE_MODES = ("auto", "step", "persistent")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
STEP_TILE_ENV = "RNNCU_STEP_TILE"
STEP_GRAPHS_ENV = "RNNCU_STEP_GRAPHS"
#: CUDA's limit on gridDim.y, along which the step kernels lay the batch's row tiles
MAX_GRID_Y = 65535
#: batches up to this size run the small-batch step kernels (kernels/rnn_matvec.cu)
MATVEC_MAX_BATCH = 8
_INT32_MAX = 2**31 - 1
#: CuPy's compute type is one setting per process: changing it around a product and
#: restoring it must not interleave between threads
_COMPUTE_TYPE_LOCK = threading.Lock()


def _check_mode(value: Any, source: str) -> str:
    if not isinstance(value, str) or value.lower() not in RECURRENCE_MODES:
        raise ValueError(
            f"{source}: expected one of {', '.join(repr(m) for m in RECURRENCE_MODES)}, "
            f"got {value!r}"
        )
    return value.lower()


class CupyBackend(Backend):
    """CuPy arrays on the current device; the recurrence on fused CUDA kernels.

    Args:
        recurrence: ``"auto"``, ``"step"`` or ``"persistent"``; None (default) reads
            ``RNNCU_RECURRENCE`` at every call (default ``auto``).
        step_graphs: replay the step path's loops as CUDA graphs (:class:`StepLoopGraphs`);
            None (default) reads ``RNNCU_STEP_GRAPHS`` (``on`` or ``off``, default ``off``)
            at every call.
        matmul_precision: ``"highest"`` or ``"high"`` (TF32 in the float32 products over all
            steps, see :meth:`matmul`, and in each step's product on the step path where it
            takes a tile: ``kernels/rnn_step_tf32.cu``); None (default) reads
            ``RNNCU_MATMUL_PRECISION`` at every call (default ``highest``).
    """

    name = "cupy"
    xp = cupy

    def __init__(
        self,
        recurrence: str | None = None,
        step_graphs: bool | None = None,
        matmul_precision: str | None = None,
    ) -> None:
        self.recurrence = recurrence
        self.step_graphs = step_graphs
        self.matmul_precision = matmul_precision
        self.graphs = StepLoopGraphs()
        self._kernels: dict[tuple[Any, ...], Any] = {}
        # device id -> (multiprocessors, opt-in shared memory per block in bytes)
        self._device_facts: dict[int, tuple[int, int]] = {}
        # device id -> whether cuBLAS has TF32 there (compute capability 8.0 and later)
        self._tf32_devices: dict[int, bool] = {}

    # -- arrays ---------------------------------------------------------------------------
    @property
    def recurrence(self) -> str | None:
        """``"step"``, ``"persistent"`` or ``"auto"`` set on this backend; None: the
        environment variable ``RNNCU_RECURRENCE`` decides, else ``auto``."""
        return self._recurrence

    @recurrence.setter
    def recurrence(self, value: str | None) -> None:
        self._recurrence = None if value is None else _check_mode(value, "recurrence")

    @property
    def step_graphs(self) -> bool | None:
        """Whether the step loops replay as CUDA graphs; None: ``RNNCU_STEP_GRAPHS`` decides,
        else off."""
        return self._step_graphs

    @step_graphs.setter
    def step_graphs(self, value: bool | None) -> None:
        self._step_graphs = None if value is None else check_switch(value, "step_graphs")

    def step_graphs_enabled(self) -> bool:
        """The setting in force: the ``step_graphs`` attribute, else ``RNNCU_STEP_GRAPHS``."""
        if self._step_graphs is not None:
            return self._step_graphs
        return check_switch(
            os.environ.get(STEP_GRAPHS_ENV, "off"), f"environment variable {STEP_GRAPHS_ENV}"
        )

    def owns(self, array: Any) -> bool:
        return isinstance(array, cupy.ndarray)

    def to_numpy(self, array: Any) -> np.ndarray:
        if isinstance(array, cupy.ndarray):
            host: np.ndarray = cupy.asnumpy(array)
            return host
        return np.array(array, copy=True)  # cupy.asnumpy would return a host array itself

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def describe(self) -> dict[str, Any]:
        runtime = cupy.cuda.runtime
        device_id = runtime.getDevice()
        props = runtime.getDeviceProperties(device_id)
        name = props["name"]
        return {
            "backend": self.name,
            "device": name.decode() if isinstance(name, bytes) else str(name),
            "device_id": device_id,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": props["multiProcessorCount"],
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cupy": cupy.__version__,
            "cuda_runtime": _cuda_version(runtime.runtimeGetVersion()),
            "cuda_driver": _cuda_version(runtime.driverGetVersion()),
            "recurrence": self.recurrence_mode(),
            "step_graphs": "on" if self.step_graphs_enabled() else "off",
            "matmul_precision": self.matmul_precision_in_force(),
        }

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` through cuBLAS, the float32 products in the precision in force:
        ``"high"`` lets cuBLAS take TF32 (``CUBLAS_COMPUTE_32F_FAST_TF32``) on a device of
        compute capability 8.0 or later; ``"highest"`` keeps them in float32 even where CuPy
        itself was told to use TF32 (``CUPY_TF32=1``). Other dtypes are untouched.

        CuPy holds its compute type in one setting for the whole process, so this one is
        changed around the product and restored: a CuPy product launched meanwhile from
        another thread may run in the same precision."""
        if a.dtype != np.float32 and b.dtype != np.float32:
            return a @ b
        high = self.matmul_precision_in_force() == "high"  # a bad setting fails everywhere
        if not self._has_tf32():
            # float32 whatever either setting says (cuBLAS has no TF32 there); and a TF32
            # setting CuPy took on a newer device of the process is left alone, for CuPy
            # would refuse to restore it here (a warning, and DEFAULT for the whole process)
            return a @ b
        linalg = cupy._core._routines_linalg
        wanted = linalg.COMPUTE_TYPE_TF32 if high else linalg.COMPUTE_TYPE_DEFAULT
        with _COMPUTE_TYPE_LOCK:
            saved = linalg.get_compute_type(np.float32)
            # only TF32 changes a float32 product (CuPy maps the other types to float32
            # compute, or a stricter one: PEDANTIC is left as it is under "highest")
            if (saved == linalg.COMPUTE_TYPE_TF32) == (wanted == linalg.COMPUTE_TYPE_TF32):
                return a @ b
            linalg.set_compute_type(np.float32, wanted)
            try:
                return a @ b
            finally:
                linalg.set_compute_type(np.float32, saved)

    def _has_tf32(self) -> bool:
        """Whether the current device's cuBLAS runs TF32 (compute capability 8.0 or later);
        below that CuPy refuses TF32, warning at every product, and runs float32."""
        device_id = cupy.cuda.runtime.getDevice()
        known = self._tf32_devices.get(device_id)
        if known is None:
            major = cupy.cuda.runtime.getDeviceProperties(device_id)["major"]
            known = self._tf32_devices[device_id] = int(major) >= 8
        return known

    def _tf32_recurrence(self, dtype: np.dtype) -> bool:
        """Whether the step path's per-step products run in TF32: float32 under
        ``matmul_precision`` "high" on a device of compute capability 8.0 or later."""
        return (
            dtype == np.float32 and self.matmul_precision_in_force() == "high" and self._has_tf32()
        )

    def _checked_settings(self) -> str:
        """The recurrence mode in force, after checking the step path's environment variables
        (a bad value is an error on the persistent path too, not only once a shape falls
        back to the step path)."""
        self.step_graphs_enabled()
        check_step_tile_name()
        return self.recurrence_mode()

    def recurrence_mode(self) -> str:
        """The mode in force: the ``recurrence`` attribute, else ``RNNCU_RECURRENCE``."""
        if self._recurrence is not None:
            return self._recurrence
        return _check_mode(
            os.environ.get(RECURRENCE_ENV, "auto"), f"environment variable {RECURRENCE_ENV}"
        )

    # -- the recurrence -------------------------------------------------------------------
    def recurrence_forward(
        self,
        states: Any,
        w_hh: Any,
        h0: Any,
        lengths: Any | None,
        nonlinearity: str,
        reverse: bool,
    ) -> None:
        """``states`` (T, B, H): Z on entry, h on return; see :class:`Backend`."""
        steps, batch, hidden = _check_states("states", states)
        dtype = states.dtype
        w_hh = _check_array("w_hh", w_hh, (hidden, hidden), dtype)
        h0 = _check_array("h0", h0, (batch, hidden), dtype)
        lengths = _check_lengths(lengths, batch)
        _check_nonlinearity(nonlinearity)
        _check_apart("states", states, {"w_hh": w_hh, "h0": h0, "lengths": lengths})
        mode = self._checked_settings()
        if mode != "step":
            persistent = _persistent_module(mode)
            if persistent is not None and persistent.persistent_forward(
                states, w_hh, h0, lengths, nonlinearity, reverse, force=mode == "persistent"
            ):
                return
        if steps == 0 or batch == 0 or hidden == 0:
            return

        step = self._step_kernel(batch, hidden, dtype)
        kernel = self._kernel(step, "forward", dtype, nonlinearity, hidden)
        grid, block = step.grid(batch, hidden), (step.threads, 1, 1)
        shared_mem = step.shared_mem(hidden, dtype.itemsize)
        plan_inputs = (
            states.data.ptr,
            h0.data.ptr,
            w_hh.data.ptr,
            0 if lengths is None else lengths.data.ptr,
            states.shape,
            dtype.itemsize,
            reverse,
        )
        # h0, w_hh and lengths may be contiguous copies made above; they stay referenced
        # until every launch is queued, and CuPy's pool reuses memory in stream order.
        loop = StepLoop(kernel, grid, block, shared_mem, lambda: plan_forward(*plan_inputs))
        self._run_loop(("forward", step, dtype.char, nonlinearity, *plan_inputs), loop)

    def recurrence_backward(
        self,
        states: Any,
        w_hh: Any,
        h0: Any,
        grad_states: Any | None,
        grad_h_last: Any | None,
        lengths: Any | None,
        nonlinearity: str,
        reverse: bool,
    ) -> tuple[Any, Any]:
        """Return ``(grad_z (T, B, H), grad_h0 (B, H))``; see :class:`Backend`."""
        steps, batch, hidden = _check_states("states", states)
        dtype = states.dtype
        w_hh = _check_array("w_hh", w_hh, (hidden, hidden), dtype)
        h0 = _check_array("h0", h0, (batch, hidden), dtype)
        if grad_states is not None:
            grad_states = _check_array("grad_states", grad_states, states.shape, dtype)
        if grad_h_last is not None:
            grad_h_last = _check_array("grad_h_last", grad_h_last, (batch, hidden), dtype)
        lengths = _check_lengths(lengths, batch)
        _check_nonlinearity(nonlinearity)
        mode = self._checked_settings()
        if mode != "step":
            persistent = _persistent_module(mode)
            if persistent is not None:
                result: tuple[Any, Any] | None = persistent.persistent_backward(
                    states,
                    w_hh,
                    h0,
                    grad_states,
                    grad_h_last,
                    lengths,
                    nonlinearity,
                    reverse,
                    force=mode == "persistent",
                )
                if result is not None:
                    return result
        if steps == 0 or batch == 0 or hidden == 0:
            grad_h0 = (
                cupy.zeros((batch, hidden), dtype) if grad_h_last is None else grad_h_last.copy()
            )
            return cupy.zeros_like(states), grad_h0

        step = self._step_kernel(batch, hidden, dtype)
        kernel = self._kernel(step, "backward", dtype, nonlinearity, hidden)
        grid, block = step.grid(batch, hidden), (step.threads, 1, 1)
        shared_mem = step.shared_mem(hidden, dtype.itemsize)
        # the small-batch kernel reads rows of W^T: one transposed copy per call
        w_arg = w_hh if step.tile is not None else cupy.ascontiguousarray(w_hh.T)
        grad_z = cupy.empty_like(states)
        # dh ping-pongs between two buffers: blocks still read dh_t while others write dh_{t-1}
        dh_buffers = (cupy.empty((batch, hidden), dtype), cupy.empty((batch, hidden), dtype))
        dh_last = cupy.zeros((batch, hidden), dtype) if grad_h_last is None else grad_h_last
        plan_inputs = (
            states.data.ptr,
            grad_z.data.ptr,
            None if grad_states is None else grad_states.data.ptr,
            dh_last.data.ptr,
            (dh_buffers[0].data.ptr, dh_buffers[1].data.ptr),
            w_arg.data.ptr,
            0 if lengths is None else lengths.data.ptr,
            states.shape,
            dtype.itemsize,
            reverse,
        )
        loop = StepLoop(kernel, grid, block, shared_mem, lambda: plan_backward(*plan_inputs))
        self._run_loop(("backward", step, dtype.char, nonlinearity, *plan_inputs), loop)
        return grad_z, dh_buffers[backward_result_buffer(steps)]

    def _run_loop(self, key: tuple[Any, ...], loop: StepLoop) -> None:
        """Queue one step loop: as a CUDA graph where enabled, else launch by launch."""
        if self.step_graphs_enabled():
            self.graphs.run((cupy.cuda.runtime.getDevice(), *key), loop)
        else:
            loop.launch(loop.plan())

    # -- kernels --------------------------------------------------------------------------
    def _step_kernel(self, batch: int, hidden: int, dtype: np.dtype) -> StepKernel:
        """``RNNCU_STEP_TILE`` if set, else :func:`choose_step_kernel` for this device; where
        that is a tile and the recurrence may take TF32 (:meth:`_tf32_recurrence`), the TF32
        tile of :func:`choose_tf32_tile` instead."""
        itemsize = dtype.itemsize
        device_id = cupy.cuda.runtime.getDevice()
        facts = self._device_facts.get(device_id)
        if facts is None:
            runtime = cupy.cuda.runtime
            facts = (
                int(runtime.getDeviceProperties(device_id)["multiProcessorCount"]),
                int(
                    runtime.deviceGetAttribute(
                        runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id
                    )
                ),
            )
            self._device_facts[device_id] = facts
        sms, shared_limit = facts
        step = forced_step_kernel(batch, hidden, itemsize, shared_limit)
        if step is None:
            step = choose_step_kernel(batch, hidden, itemsize, sms, shared_limit)
            if step.tile is not None and self._tf32_recurrence(dtype):
                step = StepKernel(tile=choose_tf32_tile(batch, hidden, sms), tf32=True)
        elif step.tf32 and (dtype != np.float32 or not self._has_tf32()):
            problem = f"dtype {dtype}" if dtype != np.float32 else "a device below 8.0"
            raise ValueError(
                f"environment variable {STEP_TILE_ENV}={step.label}: the TF32 step kernels "
                f"take float32 on a GPU of compute capability 8.0 or later, not {problem}"
            )
        check_step_grid(step, batch, hidden)
        return step

    def _kernel(
        self, step: StepKernel, direction: str, dtype: np.dtype, nonlinearity: str, hidden: int
    ) -> Any:
        key = (step, direction, dtype.char, nonlinearity, cupy.cuda.runtime.getDevice())
        kernel = self._kernels.get(key)
        if kernel is None:
            name = step.name_expression(direction, dtype, nonlinearity)
            kernel = kernel_loader.get_kernel(step.filename, name)
            self._kernels[key] = kernel
        shared_mem = step.shared_mem(hidden, dtype.itemsize)
        if shared_mem > 48 * 1024 and kernel.max_dynamic_shared_size_bytes < shared_mem:
            kernel.max_dynamic_shared_size_bytes = shared_mem
        return kernel


@dataclasses.dataclass(frozen=True)
class StepLoop:
    """One step loop: a kernel, its launch shape, and its launch plan (a list of argument
    tuples, one per step, built only when called)."""

    kernel: Any
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    plan: Callable[[], list[tuple[Any, ...]]]

    def launch(self, launches: list[tuple[Any, ...]]) -> None:
        """Queue ``launches`` (from :attr:`plan`) on the current stream."""
        for args in launches:
            self.kernel(self.grid, self.block, args, shared_mem=self.shared_mem)


class StepLoopGraphs:
    """Whole step loops recorded once as CUDA graphs and replayed with one launch.

    A loop's launches are a pure function of its key: the kernel (direction, step kernel,
    dtype, nonlinearity, device) and every input of its launch plan, pointers included. So a
    replay issues exactly the launches the loop would, and a pointer that changed is a new
    key, never a stale graph. A key is captured the ``capture_at``-th time it comes (a
    one-off loop would pay capture and instantiation, about a launch's cost per step, for
    nothing); at most ``capacity`` graphs are kept, the least recently used dropped first (a
    graph still running when dropped is freed by the driver when it ends).

    The capacity is sized for training: a layer keeps its last forward's buffers while the
    next forward allocates, so CuPy's pool alternates between two sets of addresses and a
    layer of L layers and D directions cycles through 2 x 2 x L x D keys (forward and
    backward); 64 covers 8 bidirectional layers. Fewer graphs than keys in the cycle would
    capture every loop and replay none: ``counts["dropped"]`` then grows with
    ``counts["captured"]``.

    Capture runs on a private non-blocking stream per device (the legacy stream cannot
    capture) and the graph is launched on the caller's current stream. Should capture fail
    with a CUDA error, the loop runs launch by launch, a RuntimeWarning says why once, and
    this cache captures nothing more (:attr:`failure`).
    """

    def __init__(self, capacity: int = 64, capture_at: int = 2) -> None:
        if capacity < 1 or capture_at < 1:
            raise ValueError(
                f"StepLoopGraphs: capacity and capture_at must be >= 1, got {capacity} and "
                f"{capture_at}"
            )
        self.capacity = capacity
        self.capture_at = capture_at
        self.failure: str | None = None
        #: loops replayed from a graph, captured (and launched), launched step by step; and
        #: graphs dropped to stay within the capacity
        self.counts = {"replayed": 0, "captured": 0, "launched": 0, "dropped": 0}
        self._graphs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._sightings: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self._streams: dict[int, Any] = {}
        # one capture at a time: another thread's launches into the private stream while it
        # captures would land in this graph
        self._capture_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph and sighting (the counts stay)."""
        self._graphs.clear()
        self._sightings.clear()

    def run(self, key: tuple[Any, ...], loop: StepLoop) -> None:
        """Queue ``loop`` on the current stream, from its graph if one is cached under
        ``key``; its plan is built only when there is none."""
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            graph.launch(stream=cupy.cuda.get_current_stream())
            self.counts["replayed"] += 1
            return
        launches = loop.plan()
        seen = self._sightings.pop(key, 0) + 1
        if self.failure is None and seen >= self.capture_at:
            graph = self._capture(loop, launches)
            if graph is not None:
                self._graphs[key] = graph
                while len(self._graphs) > self.capacity:
                    self._graphs.popitem(last=False)
                    self.counts["dropped"] += 1
                graph.launch(stream=cupy.cuda.get_current_stream())
                self.counts["captured"] += 1
                return
        elif self.failure is None:
            self._sightings[key] = seen
            while len(self._sightings) > 4 * self.capacity:
                self._sightings.popitem(last=False)
        loop.launch(launches)
        self.counts["launched"] += 1

    def _capture(self, loop: StepLoop, launches: list[tuple[Any, ...]]) -> Any | None:
        cuda = cupy.cuda
        errors = (cuda.runtime.CUDARuntimeError, cuda.driver.CUDADriverError)
        device = cuda.runtime.getDevice()
        try:
            with self._capture_lock:
                stream = self._streams.get(device)
                if stream is None:
                    stream = self._streams[device] = cuda.Stream(non_blocking=True)
                with stream:
                    stream.begin_capture()
                    try:
                        loop.launch(launches)
                    finally:
                        # ends the capture even when a launch failed; the stream stays usable
                        graph = stream.end_capture()
        except errors as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.clear()
            warn_at_caller(
                f"rnncu: capturing the step loop as a CUDA graph failed ({self.failure}); "
                "the step path launches its kernels one by one from now on",
                RuntimeWarning,
            )
            return None
        return graph


# -- launch plans (pure host arithmetic, so the CPU tests can drive an emulation) ----------
def choose_tile(batch: int, hidden: int, multiprocessors: int) -> tuple[int, int, int, int]:
    """The tile of :data:`kernel_loader.STEP_TILES` with the least estimated step time: waves
    of blocks (``ceil(blocks / SMs)``) x a block's outputs, padding included, x their cost
    (1 for the 4 x 4 micro-tiles, 3 for the 1 x 1 tile: it issues three instructions per FMA,
    a 4 x 4 tile 18 per 16). Ties go to the larger tile, which reads W fewer times. On an
    H200 (132 SMs) B = 256, H = 1024 takes 64 x 32: 128 blocks, one wave."""

    def cost(tile: tuple[int, int, int, int]) -> int:
        bm, bn, tm, tn = tile
        blocks = -(-batch // bm) * -(-hidden // bn)
        return -(-blocks // multiprocessors) * bm * bn * (1 if tm * tn >= 16 else 3)

    # the row tiles go along grid y: a tile with too many of them cannot be launched
    fitting = [t for t in kernel_loader.STEP_TILES if -(-batch // t[0]) <= MAX_GRID_Y]
    return min(fitting or kernel_loader.STEP_TILES, key=cost)


def choose_tf32_tile(batch: int, hidden: int, multiprocessors: int) -> tuple[int, int]:
    """The tile of :data:`kernel_loader.TF32_STEP_TILES` with the least estimated step time:
    waves of blocks x a block's outputs, padding included (every tile runs four warps of
    16 x 16 fragments, so an output costs the same in each). Ties go to the larger tile,
    which reads W fewer times. On an H200 (132 SMs) B = 256, H = 1024 takes 32 x 64: 128
    blocks, one wave."""

    def cost(tile: tuple[int, int]) -> int:
        bm, bn = tile
        blocks = -(-batch // bm) * -(-hidden // bn)
        return -(-blocks // multiprocessors) * bm * bn

    fitting = [t for t in kernel_loader.TF32_STEP_TILES if -(-batch // t[0]) <= MAX_GRID_Y]
    return min(fitting or kernel_loader.TF32_STEP_TILES, key=cost)


def check_step_grid(step: StepKernel, batch: int, hidden: int) -> None:
    """ValueError when ``step``'s grid for B = ``batch`` exceeds CUDA's gridDim.y."""
    rows = step.grid(batch, hidden)[1]
    if rows > MAX_GRID_Y:
        most = MAX_GRID_Y * max(t[0] for t in kernel_loader.STEP_TILES)
        raise ValueError(
            f"states: a batch of B = {batch} takes {rows} blocks along y with the {step.label} "
            f"step kernel, above CUDA's {MAX_GRID_Y}; the step kernels take B <= {most} (with "
            "64-row tiles): split the batch"
        )


@dataclasses.dataclass(frozen=True)
class StepKernel:
    """The kernel that runs each step: a ``tile`` (BM, BN, TM, TN) of ``rnn_step.cu``; with
    ``tf32``, a ``tile`` (BM, BN) of ``rnn_step_tf32.cu`` (float32 only); or, with ``tile``
    None, ``rnn_matvec.cu`` with ``rows`` batch rows per block."""

    tile: tuple[int, ...] | None = None
    rows: int = 0
    tf32: bool = False

    @property
    def label(self) -> str:
        """``64x32`` for a tile, ``matvec`` for the small-batch kernel (RNNCU_STEP_TILE's
        names), ``tf32-64x64`` for a TF32 tile."""
        if self.tile is None:
            return "matvec"
        return f"{'tf32-' if self.tf32 else ''}{self.tile[0]}x{self.tile[1]}"

    @property
    def filename(self) -> str:
        if self.tile is None:
            return kernel_loader.MATVEC_KERNEL_FILE
        if self.tf32:
            return kernel_loader.TF32_STEP_KERNEL_FILE
        return kernel_loader.STEP_KERNEL_FILE

    @property
    def threads(self) -> int:
        if self.tile is None:
            return kernel_loader.MATVEC_THREADS
        if self.tf32:
            return kernel_loader.TF32_STEP_THREADS
        bm, bn, tm, tn = self.tile
        return step_threads((bm, bn, tm, tn))

    def name_expression(self, direction: str, dtype: Any, nonlinearity: str) -> str:
        if self.tile is None:
            return kernel_loader.matvec_name_expression(direction, dtype, nonlinearity, self.rows)
        if self.tf32:
            if np.dtype(dtype) != np.float32:
                raise ValueError(f"dtype: the TF32 step kernels take float32, got {dtype}")
            tf32_tile = (self.tile[0], self.tile[1])
            return kernel_loader.tf32_step_name_expression(direction, nonlinearity, tf32_tile)
        bm, bn, tm, tn = self.tile
        return kernel_loader.step_name_expression(direction, dtype, nonlinearity, (bm, bn, tm, tn))

    def grid(self, batch: int, hidden: int) -> tuple[int, int, int]:
        if self.tile is None:
            units = kernel_loader.MATVEC_UNITS_PER_BLOCK
            return (-(-hidden // units), -(-batch // self.rows), 1)
        return step_grid(batch, hidden, self.tile)

    def shared_mem(self, hidden: int, itemsize: int) -> int:
        """Dynamic shared memory of a launch (the tiles use static shared memory only)."""
        return 0 if self.tile is not None else matvec_shared_mem(self.rows, hidden, itemsize)


def matvec_shared_mem(rows: int, hidden: int, itemsize: int) -> int:
    """Bytes of ``rnn_matvec.cu``'s staged rows: ``rows`` x H, H rounded up to 16 bytes."""
    width = 16 // itemsize
    return rows * (-(-hidden // width) * width) * itemsize


def matvec_rows(batch: int, hidden: int, itemsize: int, shared_limit: int) -> int | None:
    """Rows per block of the small-batch kernel: the fewest of
    :data:`kernel_loader.MATVEC_ROWS` that hold all of ``batch`` (at most 8), halved until
    the staged rows fit ``shared_limit`` bytes; None when one row does not fit."""
    wanted = min(batch, kernel_loader.MATVEC_ROWS[-1])
    rows = next(r for r in kernel_loader.MATVEC_ROWS if r >= wanted)
    while matvec_shared_mem(rows, hidden, itemsize) > shared_limit:
        if rows == kernel_loader.MATVEC_ROWS[0]:
            return None
        rows //= 2
    return rows


def choose_step_kernel(
    batch: int, hidden: int, itemsize: int, multiprocessors: int, shared_limit: int
) -> StepKernel:
    """The small-batch kernel for B <= :data:`MATVEC_MAX_BATCH` (where its staged rows fit in
    shared memory), else the tile of :func:`choose_tile`."""
    if batch <= MATVEC_MAX_BATCH:
        rows = matvec_rows(batch, hidden, itemsize, shared_limit)
        if rows is not None:
            return StepKernel(rows=rows)
    return StepKernel(tile=choose_tile(batch, hidden, multiprocessors))


def forced_step_kernel(
    batch: int, hidden: int, itemsize: int, shared_limit: int
) -> StepKernel | None:
    """The step kernel named by ``RNNCU_STEP_TILE`` (``BMxBN``, ``tf32-BMxBN`` or ``matvec``),
    or None when the variable is unset or empty. A TF32 tile runs TF32 whatever the
    backend's ``matmul_precision`` (the caller checks dtype and device)."""
    value = check_step_tile_name()
    if value is None:
        return None
    tiles = {f"{t[0]}x{t[1]}": t for t in kernel_loader.STEP_TILES}
    if value in tiles:
        return StepKernel(tile=tiles[value])
    tf32_tiles = {f"tf32-{t[0]}x{t[1]}": t for t in kernel_loader.TF32_STEP_TILES}
    if value in tf32_tiles:
        return StepKernel(tile=tf32_tiles[value], tf32=True)
    if value == "matvec":
        rows = matvec_rows(batch, hidden, itemsize, shared_limit)
        if rows is None:
            raise ValueError(
                f"environment variable {STEP_TILE_ENV}=matvec: one row of H = {hidden} takes "
                f"{matvec_shared_mem(1, hidden, itemsize)} bytes of shared memory, more than "
                f"this device's {shared_limit} per block"
            )
        return StepKernel(rows=rows)
    raise AssertionError(value)  # check_step_tile_name admits only those


def step_kernel_names() -> list[str]:
    """Every name ``RNNCU_STEP_TILE`` takes: the tiles, ``matvec``, the TF32 tiles."""
    names = [f"{t[0]}x{t[1]}" for t in kernel_loader.STEP_TILES] + ["matvec"]
    return names + [f"tf32-{t[0]}x{t[1]}" for t in kernel_loader.TF32_STEP_TILES]


def check_step_tile_name() -> str | None:
    """``RNNCU_STEP_TILE`` lowered (``64x32``, ``matvec``, ``tf32-32x64``), None where unset
    or empty; any other value is a ValueError naming the variable."""
    raw = os.environ.get(STEP_TILE_ENV, "").strip()
    value = raw.lower()
    if not value:
        return None
    names = step_kernel_names()
    if value not in names:
        raise ValueError(
            f"environment variable {STEP_TILE_ENV}: expected one of {', '.join(names)}, got {raw!r}"
        )
    return value


def step_grid(batch: int, hidden: int, tile: tuple[int, ...]) -> tuple[int, int, int]:
    """Grid of a step kernel: (column tiles over H, row tiles over B, 1)."""
    return (-(-hidden // tile[1]), -(-batch // tile[0]), 1)


def _step_order(steps: int, reverse: bool, backward: bool) -> np.ndarray:
    """The time indices in execution order: the forward walk, or its reverse for backward."""
    order = np.arange(steps, dtype=np.int64)
    return order[::-1] if reverse != backward else order


def plan_forward(
    states_ptr: int,
    h0_ptr: int,
    w_ptr: int,
    lengths_ptr: int,
    shape: tuple[int, int, int],
    itemsize: int,
    reverse: bool,
) -> list[tuple[Any, ...]]:
    """Argument tuples of ``rnn_step_forward``, one per step in execution order:
    ``(h_out = states[t], h_prev, w_hh, lengths, t, B, H)``. Pointers are computed for all
    steps at once in 64-bit integers (no overflow for T * B * H beyond 2^31) and the tuples
    hold NumPy scalars, so the per-step host cost is one tuple."""
    steps, batch, hidden = shape
    order = _step_order(steps, reverse, backward=False)
    current = np.uint64(states_ptr) + order.astype(np.uint64) * np.uint64(batch * hidden * itemsize)
    previous = np.empty_like(current)
    previous[:1] = h0_ptr
    previous[1:] = current[:-1]
    w, lens = np.uint64(w_ptr), np.uint64(lengths_ptr)
    b32, h32 = np.int32(batch), np.int32(hidden)
    return [
        (out, prev, w, lens, t, b32, h32)
        for out, prev, t in zip(current, previous, order.astype(np.int32), strict=True)
    ]


def plan_backward(
    states_ptr: int,
    grad_z_ptr: int,
    grad_states_ptr: int | None,
    grad_h_last_ptr: int,
    dh_buffer_ptrs: tuple[int, int],
    w_ptr: int,
    lengths_ptr: int,
    shape: tuple[int, int, int],
    itemsize: int,
    reverse: bool,
) -> list[tuple[Any, ...]]:
    """Argument tuples of ``rnn_step_backward``, one per step in execution order (the reverse
    of the forward walk): ``(grad_z[t], dh_out, dh_in, states[t], grad_states[t] or 0, w_hh,
    lengths, t, B, H)``. Step ``i`` of the walk writes ``dh_buffer_ptrs[i % 2]`` and reads
    the other (``grad_h_last`` at ``i = 0``); see :func:`backward_result_buffer`."""
    steps, batch, hidden = shape
    order = _step_order(steps, reverse, backward=True)
    offsets = order.astype(np.uint64) * np.uint64(batch * hidden * itemsize)
    grad_z = np.uint64(grad_z_ptr) + offsets
    states = np.uint64(states_ptr) + offsets
    grad_states: np.ndarray  # (steps,) uint64 addresses
    if grad_states_ptr is None:
        grad_states = np.zeros(steps, dtype=np.uint64)  # a null pointer: no incoming gradient
    else:
        grad_states = np.uint64(grad_states_ptr) + offsets
    dh_out = np.array(dh_buffer_ptrs, dtype=np.uint64)[np.arange(steps) % 2]
    dh_in = np.empty_like(dh_out)
    dh_in[:1] = grad_h_last_ptr
    dh_in[1:] = dh_out[:-1]
    w, lens = np.uint64(w_ptr), np.uint64(lengths_ptr)
    b32, h32 = np.int32(batch), np.int32(hidden)
    return [
        (gz, out, inp, h, gs, w, lens, t, b32, h32)
        for gz, out, inp, h, gs, t in zip(
            grad_z, dh_out, dh_in, states, grad_states, order.astype(np.int32), strict=True
        )
    ]


def backward_result_buffer(steps: int) -> int:
    """Index of the ping-pong buffer that holds ``grad_h0`` after ``steps >= 1`` steps."""
    return (steps - 1) % 2


# -- checks -----------------------------------------------------------------------------------
def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def _check_device_array(name: str, array: Any) -> None:
    if not isinstance(array, cupy.ndarray):
        if isinstance(array, np.ndarray):
            raise TypeError(
                f"mixed devices: {name} is a numpy.ndarray, the cupy backend needs cupy "
                "arrays; convert with rnncu.get_backend('cupy').asarray(...)"
            )
        raise TypeError(f"{name}: expected a cupy.ndarray, got {type(array).__name__}")
    current = cupy.cuda.runtime.getDevice()
    if array.device.id != current:
        raise ValueError(
            f"mixed devices: {name} lives on device {array.device.id}, the current device is "
            f"{current}; use `with cupy.cuda.Device({array.device.id}):` or move the array"
        )


def _check_states(name: str, states: Any) -> tuple[int, int, int]:
    _check_device_array(name, states)
    if states.ndim != 3:
        raise ValueError(f"{name}: expected shape (T, B, H), got {states.shape}")
    if states.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {states.dtype}")
    if not states.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (it is written in place)")
    steps, batch, hidden = states.shape
    if batch > _INT32_MAX or hidden > _INT32_MAX or steps > _INT32_MAX:
        raise ValueError(f"{name}: T, B and H must each fit in int32, got {states.shape}")
    return steps, batch, hidden


def _check_array(name: str, array: Any, shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """A read-only operand: right device, shape and dtype; made C-contiguous (a copy, outside
    the step loop) only when it is not already."""
    _check_device_array(name, array)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(array.shape)}")
    if array.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (that of states), got {array.dtype}")
    return cupy.ascontiguousarray(array)


def _check_apart(written_name: str, written: Any, read: dict[str, Any | None]) -> None:
    """The kernels write ``written`` while other blocks still read the ``read`` operands
    (through the read-only cache, too): any overlap is a race. Contiguous arrays, so byte
    ranges decide."""
    start = written.data.ptr
    end = start + written.nbytes
    for name, array in read.items():
        if array is None or array.nbytes == 0 or written.nbytes == 0:
            continue
        other = array.data.ptr
        if other < end and start < other + array.nbytes:
            raise ValueError(
                f"{name}: shares memory with {written_name}, which the recurrence overwrites "
                f"while reading {name} (pass a copy)"
            )


def _check_lengths(lengths: Any | None, batch: int) -> Any | None:
    if lengths is None:
        return None
    _check_device_array("lengths", lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},), got {lengths.shape}")
    if lengths.dtype != np.int32:
        raise TypeError(f"lengths: expected int32, got {lengths.dtype}")
    return cupy.ascontiguousarray(lengths)


def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected one of {NONLINEARITIES}, got {nonlinearity!r}")


def _persistent_module(mode: str) -> Any | None:
    """``rnncu.backend.persistent``, or None in ``auto`` mode when it does not exist."""
    try:
        from rnncu.backend import persistent
    except ModuleNotFoundError as exc:
        if exc.name != "rnncu.backend.persistent":
            raise
        if mode == "persistent":
            raise RuntimeError(
                f"{RECURRENCE_ENV}=persistent (or recurrence='persistent') but "
                "rnncu.backend.persistent is not available in this installation"
            ) from None
        return None
    return persistent
