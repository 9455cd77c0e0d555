"""Persistent whole-sequence recurrence: one kernel launch runs all T steps.

Three kernel families (``kernels/persistent_rnn.cu``, ``kernels/persistent_cluster.cu`` and
``kernels/persistent_grid.cu``, shared device code in ``kernels/persistent_common.cuh``) keep
the recurrent weight in registers for the whole launch:

* ``batch``: each block owns ``RB`` whole batch rows and ALL hidden units; steps are separated
  by ``__syncthreads()`` only, so any number of blocks may be launched (ordinary launch). This
  is the small-H kernel (H <= 128 in float32 on an H200).
* ``cluster`` (sm_90 and newer): the ``CX`` blocks of a thread-block cluster own ``nu`` hidden
  units each of the same ``RB`` rows; every block keeps all of h_{t-1} in shared memory, the
  epilogues push h_t (grad_z_t) into every block of the cluster through distributed shared
  memory, and one cluster barrier per step replaces the grid barrier. Clusters are
  independent (ordinary launch). CuPy's launch takes no cluster attribute, so ``CX`` is a
  template parameter (``__cluster_dims__``): 2, 4, 8, or 16 (non-portable, allowed per kernel
  with ``cuFuncSetAttribute``). Before launching, ``cuOccupancyMaxActiveClusters`` must say
  that every cluster of the launch is resident at once; otherwise the planner tries fewer
  clusters (more rows per block), then smaller ones, then the other variants.
* ``grid``: block (x, y) owns ``nu`` hidden units of ``RB`` rows; the blocks of one
  cooperative launch meet at ``cooperative_groups::this_grid().sync()`` once per step and
  exchange h_t (forward) or grad_z_t (backward) through the output arrays themselves. All
  blocks must be co-resident, which the occupancy API checks before launching.

The variants the planner may choose are all three, or those named in the environment variable
``RNNCU_PERSISTENT_VARIANTS`` (comma-separated, e.g. ``grid``), read at every call: for tests
and for benchmarking one variant against another on the same shape.

The planning functions (:func:`plan_forward`, :func:`plan_backward`) are pure Python: they take
the device's limits as a :class:`DeviceLimits` value, so the dispatch decisions are unit
tested on the CPU with an H200's numbers. :func:`persistent_forward` and
:func:`persistent_backward` are what :mod:`rnncu.backend.cupy_backend` calls.

Shapes: ``states`` (T, B, H), ``w_hh`` (H, H), ``h0`` (B, H), ``lengths`` (B,) int32 or None;
C-contiguous CuPy arrays of one dtype (float32 or float64) on one device.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from typing import Any

from rnncu._warnings import warn_at_caller
from rnncu.backend import kernel_loader

__all__ = [
    "BATCH_KERNEL_FILE",
    "CLUSTER_KERNEL_FILE",
    "CLUSTER_SIZES",
    "GRID_KERNEL_FILE",
    "DeviceLimits",
    "Plan",
    "backward_args",
    "chunk_stride",
    "forward_args",
    "max_threads_for",
    "name_expression",
    "persistent_backward",
    "persistent_forward",
    "plan_backward",
    "plan_forward",
    "VARIANTS",
    "VARIANTS_ENV",
    "last_plans",
    "variants_in_force",
]

BATCH_KERNEL_FILE = "persistent_rnn.cu"
GRID_KERNEL_FILE = "persistent_grid.cu"
CLUSTER_KERNEL_FILE = "persistent_cluster.cu"
#: every persistent variant, in the order ties are broken
VARIANTS: tuple[str, ...] = ("batch", "cluster", "grid")
VARIANTS_ENV = "RNNCU_PERSISTENT_VARIANTS"
#: blocks per cluster (the CX template parameter); above 8 the size is "non-portable" (Hopper
#: allows 16 per kernel on request; the occupancy API says whether a launch fits)
CLUSTER_SIZES: tuple[int, ...] = (2, 4, 8, 16)
PORTABLE_CLUSTER_SIZE = 8

#: weights per thread (the KC template parameter) instantiated per element type
WEIGHTS_PER_THREAD: dict[str, tuple[int, ...]] = {"float32": (16, 32, 64), "float64": (8, 16, 32)}
#: batch rows per block (the RB template parameter)
ROWS_PER_BLOCK: tuple[int, ...] = (1, 2, 4, 8)
_CTYPES = {"float32": "float", "float64": "double"}
_ITEMSIZE = {"float32": 4, "float64": 8}
_VECTOR_WIDTH = {"float32": 4, "float64": 2}
_FILES = {"batch": BATCH_KERNEL_FILE, "cluster": CLUSTER_KERNEL_FILE, "grid": GRID_KERNEL_FILE}

# Cost model constants, in SM clock cycles (H200 figures from /work/shared/ANCHORS.md: a grid
# barrier ~1.0 us, a block-barrier loop iteration ~0.1 us, at ~1.98 GHz). They only rank
# candidate launch shapes; they are not a performance promise.
_BLOCK_BARRIER_CYCLES = 200
_GRID_BARRIER_CYCLES = 2000
# cluster barrier: 0.40 us for 2 blocks, 0.51 us for 4 and 8 (ANCHORS.md); 16 not measured,
# assumed 0.6 us. Pushed values land in the peers' shared memory before the barrier completes.
_CLUSTER_BARRIER_CYCLES = {2: 800, 4: 1000, 8: 1000, 16: 1200}
_DSMEM_LATENCY_CYCLES = 200
_GATHER_LATENCY_CYCLES = 800  # one dependent L2 round trip for the per-step gather
_L2_BYTES_PER_CYCLE_PER_SM = 64
_EPILOGUE_INSTRUCTIONS = 40  # activation, masking, stores of one row
_FIXED_STEP_INSTRUCTIONS = 30
#: CUDA's limit on gridDim.y (the kernels' row slices)
_MAX_GRID_Y = 65535
#: cudaDevAttrClusterLaunch: CuPy 14's runtime module has no name for it
_CUDA_DEV_ATTR_CLUSTER_LAUNCH = 120


# ------------------------------------------------------------------------ kernel geometry
def max_threads_for(itemsize: int, kc: int, rb: int) -> int:
    """The largest block the (T, KC, RB) instantiation is compiled for; mirrors
    ``LaunchLimits`` in kernels/persistent_common.cuh (change both together)."""
    registers = (3 * kc // 2 + 12 * rb) * (itemsize // 4) + 32
    if registers <= 64:
        return 1024
    if registers <= 128:
        return 512
    return 256


def register_cap(itemsize: int, kc: int, rb: int) -> int:
    """Registers per thread ptxas may use for that instantiation (65536 / max threads)."""
    return min(255, 65536 // max_threads_for(itemsize, kc, rb))


def chunk_stride(itemsize: int, kc: int, rb: int) -> int:
    """Elements per KC-slice chunk of the shared buffer; mirrors ``BufferLayout``: a chunk of
    RB * KC elements padded so consecutive chunks start 16 bytes apart modulo 128."""
    chunk_bytes = rb * kc * itemsize
    pad = (16 - chunk_bytes) % 128
    return (chunk_bytes + pad) // itemsize


def name_expression(
    variant: str, direction: str, dtype: str, kc: int, rb: int, cluster: int = 1
) -> str:
    """``persistent_batch_forward<float, 32, 2>``, ``persistent_cluster_backward<float, 64, 8,
    16>`` and the like (``cluster``: the blocks per cluster, for the cluster variant only)."""
    if variant not in _FILES:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if variant == "cluster":
        if cluster not in CLUSTER_SIZES:
            raise ValueError(f"cluster must be one of {CLUSTER_SIZES}, got {cluster!r}")
        return f"persistent_cluster_{direction}<{_CTYPES[dtype]}, {kc}, {rb}, {cluster}>"
    if cluster != 1:
        raise ValueError(f"the {variant} variant has no clusters, got cluster={cluster!r}")
    return f"persistent_{variant}_{direction}<{_CTYPES[dtype]}, {kc}, {rb}>"


def all_name_expressions(variant: str) -> list[str]:
    """Every instantiation of one kernel file (what the loader registers and tests compile)."""
    sizes = CLUSTER_SIZES if variant == "cluster" else (1,)
    return [
        name_expression(variant, direction, dtype, kc, rb, cx)
        for dtype, kcs in WEIGHTS_PER_THREAD.items()
        for kc in kcs
        for rb in ROWS_PER_BLOCK
        for cx in sizes
        for direction in ("forward", "backward")
    ]


# One module per name expression: compiling all 48 instantiations of a file costs 15 to 20 s
# of NVRTC, one of them 0.5 s (batch) or 3 s (grid, mostly cooperative_groups' headers).
kernel_loader.register_kernel_file(BATCH_KERNEL_FILE, all_name_expressions("batch"), per_name=True)
kernel_loader.register_kernel_file(
    CLUSTER_KERNEL_FILE, all_name_expressions("cluster"), per_name=True
)
kernel_loader.register_kernel_file(
    GRID_KERNEL_FILE, all_name_expressions("grid"), per_name=True, cooperative=True
)


# ------------------------------------------------------------------------ device limits
@dataclass(frozen=True)
class DeviceLimits:
    """What planning needs to know about a device (all read off the device at run time)."""

    sm_count: int
    #: dynamic + static shared memory one block may opt in to (bytes)
    smem_per_block_optin: int
    smem_per_sm: int
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    compute_capability: tuple[int, int] = (9, 0)
    cooperative_launch: bool = True
    #: thread-block clusters (compute capability 9.0 and newer)
    cluster_launch: bool = True
    #: the largest cluster the planner may use, and ((size, clusters), ...): at most that many
    #: clusters of that size per launch. Both are tightened at run time when the occupancy API
    #: says the clusters of a plan do not all fit at once (see _launchable).
    max_cluster_size: int = CLUSTER_SIZES[-1]
    cluster_caps: tuple[tuple[int, int], ...] = ()
    #: shared memory the system reserves per block (1 KB on sm_80+)
    reserved_smem_per_block: int = 1024

    @classmethod
    def from_device(cls, device_id: int) -> DeviceLimits:
        """Read the limits of a CUDA device through CuPy's runtime API."""
        import cupy
        from cupy.cuda import runtime

        capability = str(cupy.cuda.Device(device_id).compute_capability)  # e.g. "90"

        def attr(name: str | int) -> int:  # CuPy's name of the attribute, or its number
            number = getattr(runtime, name) if isinstance(name, str) else name
            return int(runtime.deviceGetAttribute(number, device_id))

        return cls(
            sm_count=attr("cudaDevAttrMultiProcessorCount"),
            smem_per_block_optin=attr("cudaDevAttrMaxSharedMemoryPerBlockOptin"),
            smem_per_sm=attr("cudaDevAttrMaxSharedMemoryPerMultiprocessor"),
            regs_per_sm=attr("cudaDevAttrMaxRegistersPerMultiprocessor"),
            max_threads_per_sm=attr("cudaDevAttrMaxThreadsPerMultiProcessor"),
            max_blocks_per_sm=attr("cudaDevAttrMaxBlocksPerMultiprocessor"),
            # CuPy's runtime module has no compute-capability attribute enums; Device has it
            compute_capability=(int(capability[:-1]), int(capability[-1])),
            cooperative_launch=bool(attr("cudaDevAttrCooperativeLaunch")),
            cluster_launch=attr(_CUDA_DEV_ATTR_CLUSTER_LAUNCH) == 1,
            reserved_smem_per_block=attr("cudaDevAttrReservedSharedMemoryPerBlock"),
        )


def estimate_blocks_per_sm(threads: int, registers: int, smem: int, limits: DeviceLimits) -> int:
    """Co-resident blocks per multiprocessor for a block shape, assuming ptxas used the whole
    register cap (an upper bound, so the estimate never exceeds the occupancy API's answer).
    Registers are allocated per warp in units of 256."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = limits.regs_per_sm // (regs_per_warp * warps)
    by_threads = limits.max_threads_per_sm // threads
    by_smem = limits.smem_per_sm // (smem + limits.reserved_smem_per_block)
    return max(0, min(by_regs, by_threads, by_smem, limits.max_blocks_per_sm))


# --------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    """One launch of a persistent kernel."""

    variant: str  # "batch", "cluster" or "grid"
    direction: str  # "forward" or "backward"
    dtype: str  # "float32" or "float64"
    kc: int  # weights per thread (template)
    rb: int  # batch rows per block (template)
    ks: int  # threads sharing one unit's dot product (power of two <= 32)
    units_per_block: int  # nu; threads = nu * ks
    grid: tuple[int, int]  # (unit slices, row slices)
    threads: int
    shared_mem: int  # dynamic shared memory, bytes
    blocks_per_sm: int  # the estimate the plan was made with
    est_step_cycles: float  # cost model, for ranking only
    cluster: int = 1  # blocks per cluster (CX; 1 outside the cluster variant)

    @property
    def filename(self) -> str:
        """The kernel file of the variant (``persistent_grid.cu``, ...)."""
        return _FILES[self.variant]

    @property
    def name_expression(self) -> str:
        """The instantiation launched, e.g. ``persistent_grid_forward<float, 64, 2>``."""
        return name_expression(
            self.variant, self.direction, self.dtype, self.kc, self.rb, self.cluster
        )

    @property
    def blocks(self) -> int:
        """Blocks in the launch (all co-resident: the kernels never leave the device)."""
        return self.grid[0] * self.grid[1]

    @property
    def cooperative(self) -> bool:
        """Whether the launch must be cooperative (the grid barrier)."""
        return self.variant == "grid"


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _dtype_name(dtype: Any) -> str:
    """``"float32"`` for numpy.float32, numpy.dtype("float32"), "float32", "float", ..."""
    import numpy

    try:
        name: str = numpy.dtype(dtype).name
        return name
    except TypeError:
        return str(dtype)


def _step_cycles(
    variant: str,
    dtype: str,
    kc: int,
    rb: int,
    ks: int,
    threads: int,
    hidden: int,
    resident_per_sm: int,
    waves: int,
    cluster: int = 1,
) -> float:
    """Rough cycles per recurrence step: the larger of issue throughput (4 schedulers, one
    instruction per cycle each) and the dependent chain, plus the barrier and, for the grid
    variant, the per-step gather of RB rows from L2 (for the cluster variant, the pushes into
    the peers' shared memory)."""
    width = _VECTOR_WIDTH[dtype]
    words = _ITEMSIZE[dtype] // 4
    per_thread = (
        rb * kc * words  # FMAs (a double FMA issues at half rate or worse: count it twice)
        + rb * kc // width  # 16-byte shared loads
        + rb * 5 * int(math.log2(ks))  # shuffle butterfly
        + _EPILOGUE_INSTRUCTIONS * math.ceil(rb / ks)
        + _FIXED_STEP_INSTRUCTIONS
    )
    if variant == "cluster":
        per_thread += 2 * cluster * math.ceil(rb / ks)  # address mapping + remote store
    warps = resident_per_sm * threads / 32
    issue = per_thread * warps / 4
    chain = 2 * kc * words + 5 * 4 * int(math.log2(ks)) + 150
    cycles = max(issue, chain)
    if variant == "batch":
        cycles += _BLOCK_BARRIER_CYCLES
    elif variant == "cluster":
        cycles += _CLUSTER_BARRIER_CYCLES[cluster] + _DSMEM_LATENCY_CYCLES
    else:
        gather_bytes = rb * hidden * _ITEMSIZE[dtype] * resident_per_sm
        cycles += (
            _GRID_BARRIER_CYCLES
            + _GATHER_LATENCY_CYCLES
            + gather_bytes / _L2_BYTES_PER_CYCLE_PER_SM
            + _BLOCK_BARRIER_CYCLES
        )
    return cycles * waves


def _candidates(
    direction: str,
    batch: int,
    hidden: int,
    dtype: str,
    limits: DeviceLimits,
    variants: tuple[str, ...] = VARIANTS,
) -> list[Plan]:
    itemsize = _ITEMSIZE[dtype]
    plans: list[Plan] = []
    for kc in WEIGHTS_PER_THREAD[dtype]:
        ks = _next_pow2(math.ceil(hidden / kc))
        if ks > 32:
            continue
        # units per block come in steps that keep the block a whole number of warps
        unit_step = max(1, 32 // ks)
        for rb in ROWS_PER_BLOCK:
            max_threads = max_threads_for(itemsize, kc, rb)
            registers = register_cap(itemsize, kc, rb)
            row_slices = math.ceil(batch / rb)
            if row_slices > _MAX_GRID_Y:
                continue  # the row slices are gridDim.y: a larger grid fails to launch
            buffer_bytes = ks * chunk_stride(itemsize, kc, rb) * itemsize
            # batch variant: one block holds every unit, double-buffered shared rows
            nu = math.ceil(hidden / unit_step) * unit_step
            smem = 2 * buffer_bytes
            fits = nu * ks <= max_threads and smem <= limits.smem_per_block_optin
            if "batch" in variants and fits:
                per_sm = estimate_blocks_per_sm(nu * ks, registers, smem, limits)
                if per_sm > 0:
                    capacity = per_sm * limits.sm_count
                    waves = math.ceil(row_slices / capacity)
                    resident = math.ceil(min(row_slices, capacity) / limits.sm_count)
                    cost = _step_cycles(
                        "batch", dtype, kc, rb, ks, nu * ks, hidden, resident, waves
                    )
                    plans.append(
                        Plan(
                            variant="batch",
                            direction=direction,
                            dtype=dtype,
                            kc=kc,
                            rb=rb,
                            ks=ks,
                            units_per_block=nu,
                            grid=(1, row_slices),
                            threads=nu * ks,
                            shared_mem=smem,
                            blocks_per_sm=per_sm,
                            est_step_cycles=cost,
                        )  # fmt: skip
                    )
            # cluster variant: CX blocks of nu units each, every block all of h in shared memory
            clusters_possible = (
                "cluster" in variants
                and limits.cluster_launch
                and limits.compute_capability >= (9, 0)
                and smem <= limits.smem_per_block_optin
            )
            caps = dict(limits.cluster_caps)
            for cx in CLUSTER_SIZES if clusters_possible else ():
                if cx > limits.max_cluster_size:
                    break
                if row_slices > caps.get(cx, row_slices):
                    continue  # the occupancy API admitted fewer clusters of this size
                nu = math.ceil(math.ceil(hidden / cx) / unit_step) * unit_step
                if nu * (cx - 1) >= hidden or nu * ks > max_threads:
                    continue  # a block of only padding units (a smaller CX does it), or too big
                # one wave only: the runtime checks it with the occupancy API
                plans += _unit_sliced(
                    "cluster", direction, dtype, kc, rb, ks, nu, (cx, row_slices), registers,
                    smem, hidden, limits, cx,
                )  # fmt: skip
            # grid variant: unit slices of nu units; every block must be co-resident
            if (
                "grid" not in variants
                or not limits.cooperative_launch
                or buffer_bytes > limits.smem_per_block_optin
            ):
                continue
            seen_slices: set[int] = set()
            for nu in range(unit_step, max_threads // ks + 1, unit_step):
                unit_slices = math.ceil(hidden / nu)
                if unit_slices in seen_slices or unit_slices < 2:
                    continue  # one slice is the batch variant; same slices, fewer dummies
                seen_slices.add(unit_slices)
                nu_tight = math.ceil(math.ceil(hidden / unit_slices) / unit_step) * unit_step
                unit_slices = math.ceil(hidden / nu_tight)  # no block of only padding units
                plans += _unit_sliced(
                    "grid", direction, dtype, kc, rb, ks, nu_tight, (unit_slices, row_slices),
                    registers, buffer_bytes, hidden, limits,
                )  # fmt: skip
    return plans


def _unit_sliced(
    variant: str,
    direction: str,
    dtype: str,
    kc: int,
    rb: int,
    ks: int,
    nu: int,
    grid: tuple[int, int],
    registers: int,
    smem: int,
    hidden: int,
    limits: DeviceLimits,
    cluster: int = 1,
) -> list[Plan]:
    """The cluster or grid plan of ``grid`` blocks of ``nu`` units, or nothing when its blocks
    cannot all be resident at once (the grid barrier needs it; the cluster cost assumes it)."""
    threads = nu * ks
    per_sm = estimate_blocks_per_sm(threads, registers, smem, limits)
    blocks = grid[0] * grid[1]
    if per_sm == 0 or blocks > per_sm * limits.sm_count:
        return []
    resident = math.ceil(blocks / limits.sm_count)
    cost = _step_cycles(variant, dtype, kc, rb, ks, threads, hidden, resident, 1, cluster)
    return [
        Plan(
            variant=variant,
            direction=direction,
            dtype=dtype,
            kc=kc,
            rb=rb,
            ks=ks,
            units_per_block=nu,
            grid=grid,
            threads=threads,
            shared_mem=smem,
            blocks_per_sm=per_sm,
            est_step_cycles=cost,
            cluster=cluster,
        )
    ]


def _check_variants(variants: Any, source: str) -> tuple[str, ...]:
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    chosen = tuple(v for v in VARIANTS if v in variants)  # canonical order, no repeats
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not chosen:
        raise ValueError(
            f"{source}: expected a non-empty subset of {', '.join(VARIANTS)}, got {variants!r}"
        )
    return chosen


def variants_in_force() -> tuple[str, ...]:
    """The variants the planner may choose at run time: ``RNNCU_PERSISTENT_VARIANTS``
    (comma-separated) when set, else all of :data:`VARIANTS`."""
    value = os.environ.get(VARIANTS_ENV, "")
    if not value.strip():
        return VARIANTS
    return _check_variants(value, f"environment variable {VARIANTS_ENV}")


def _plan(
    direction: str,
    steps: int,
    batch: int,
    hidden: int,
    dtype: Any,
    limits: DeviceLimits,
    variants: Any,
) -> Plan | None:
    name = _dtype_name(dtype)
    if name not in _ITEMSIZE or steps < 0 or batch < 1 or hidden < 1:
        return None
    return _plan_shape(
        direction, batch, hidden, name, limits, _check_variants(variants, "variants")
    )


@functools.lru_cache(maxsize=4096)
def _plan_shape(
    direction: str,
    batch: int,
    hidden: int,
    dtype: str,
    limits: DeviceLimits,
    variants: tuple[str, ...],
) -> Plan | None:
    """The plan does not depend on T; memoised because the search takes ~0.3 ms, which a
    training loop would otherwise pay on every call."""
    if limits.compute_capability < (8, 0):
        return None  # compiled and checked for sm_80 and newer only
    candidates = _candidates(direction, batch, hidden, dtype, limits, variants)
    if not candidates:
        return None
    # cheapest per step; ties go to the batch variant, then the cluster variant, then fewer
    # threads, then smaller KC
    return min(
        candidates,
        key=lambda p: (p.est_step_cycles, VARIANTS.index(p.variant), p.blocks * p.threads, p.kc),
    )


def plan_forward(
    steps: int,
    batch: int,
    hidden: int,
    dtype: Any,
    limits: DeviceLimits,
    variants: Any = VARIANTS,
) -> Plan | None:
    """The persistent launch for a forward recurrence of shape (T, B, H), or None when no
    persistent kernel applies (then the step kernels run). Pure Python: ``limits`` carries
    the device's numbers; ``variants`` (names from :data:`VARIANTS`, a sequence or a
    comma-separated string) restricts the choice."""
    return _plan("forward", steps, batch, hidden, dtype, limits, variants)


def plan_backward(
    steps: int,
    batch: int,
    hidden: int,
    dtype: Any,
    limits: DeviceLimits,
    variants: Any = VARIANTS,
) -> Plan | None:
    """As :func:`plan_forward`, for the backward recurrence (same geometry: the kernels hold
    W_hh^T instead of W_hh)."""
    return _plan("backward", steps, batch, hidden, dtype, limits, variants)


# ------------------------------------------------------------------------------- runtime
_limits_cache: dict[int, DeviceLimits] = {}
_occupancy_cache: dict[tuple[str, int, int, int], int] = {}
_cluster_cache: dict[tuple[str, int, int, int, int], int] = {}
#: device id -> the variants whose kernel failed to load or launch there (a refused cluster
#: or cooperative launch, an install whose CuPy cannot link the grid module): they are not
#: planned on that device again, and the planner falls back to the next variant or the step
#: path instead of failing the layer
_variants_failed: dict[int, set[str]] = {}
#: device id -> the largest cluster size still planned there, after a cluster of twice that
#: failed (16-block clusters are non-portable: a driver may refuse them and take 8)
_largest_cluster: dict[int, int] = {}
#: (file, name expression, device id) -> the loaded kernel: a persistent call looks it up
#: instead of building a kernel object per call
_kernels: dict[tuple[str, str, int], Any] = {}
#: CUDA errors that poison the context (an earlier kernel's fault, reported by the next
#: call): no variant is to blame, and falling back would only hide it
_STICKY_CUDA_ERRORS = frozenset({214, 700, 702, 710, 714, 715, 716, 717, 718, 719, 999})
#: the plan of the latest persistent launch per direction ("forward", "backward"): what ran,
#: after the occupancy checks (benchmarks and ``rnncu info`` report it)
last_plans: dict[str, Plan] = {}
_dummy_cache: dict[tuple[int, str], Any] = {}


def _device_limits(device_id: int) -> DeviceLimits:
    limits = _limits_cache.get(device_id)
    if limits is None:
        limits = DeviceLimits.from_device(device_id)
        _limits_cache[device_id] = limits
    return limits


def _kernel(plan: Plan, device_id: int) -> Any:
    """The compiled kernel for a plan (its own module: the files register ``per_name``)."""
    key = (plan.filename, plan.name_expression, device_id)
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = kernel_loader.get_kernel(plan.filename, plan.name_expression)
        _kernels[key] = kernel
    return kernel


def _prepare(kernel: Any, plan: Plan, device_id: int) -> int:
    """Raise the kernel's dynamic shared-memory limit when needed and return the occupancy
    API's co-resident blocks per multiprocessor for the plan's block shape."""
    _allow_shared_mem(kernel, plan)
    key = (plan.name_expression, plan.threads, plan.shared_mem, device_id)
    blocks = _occupancy_cache.get(key)
    if blocks is None:
        blocks = _occupancy(kernel, plan.threads, plan.shared_mem)
        _occupancy_cache[key] = blocks
    return blocks


def _allow_shared_mem(kernel: Any, plan: Plan) -> None:
    """Raise the kernel's dynamic shared-memory limit to the plan's where it exceeds 48 KB."""
    if plan.shared_mem > 48 * 1024 and kernel.max_dynamic_shared_size_bytes < plan.shared_mem:
        kernel.max_dynamic_shared_size_bytes = plan.shared_mem


def _prepare_cluster(kernel: Any, plan: Plan, device_id: int) -> int:
    """Raise the shared-memory limit and return how many clusters of ``plan`` can be
    resident at once (the occupancy API; 0 when the query fails)."""
    _allow_shared_mem(kernel, plan)
    key = (plan.name_expression, plan.grid[1], plan.threads, plan.shared_mem, device_id)
    clusters = _cluster_cache.get(key)
    if clusters is None:
        clusters = _cluster_occupancy(kernel, plan)
        _cluster_cache[key] = clusters
    return clusters


class _LaunchConfig(ctypes.Structure):
    """``CUlaunchConfig`` of the CUDA driver API (cuda.h)."""

    _fields_ = [
        ("gridDimX", ctypes.c_uint),
        ("gridDimY", ctypes.c_uint),
        ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint),
        ("blockDimY", ctypes.c_uint),
        ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint),
        ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.c_void_p),
        ("numAttrs", ctypes.c_uint),
    ]


_CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14


@functools.lru_cache(maxsize=1)
def _libcuda() -> Any:
    """The CUDA driver library CuPy already loaded (CuPy wraps no cluster occupancy query)."""
    return ctypes.CDLL("libcuda.so.1")


def _cluster_occupancy(kernel: Any, plan: Plan) -> int:
    """``cuOccupancyMaxActiveClusters`` for ``plan``'s launch of ``kernel`` (a
    :class:`cupy.RawKernel` compiled with ``__cluster_dims__``), after allowing a
    non-portable cluster size where the plan needs one; 0 when the driver refuses either."""
    try:
        function = kernel.kernel.ptr
        if plan.cluster > PORTABLE_CLUSTER_SIZE:
            from cupy_backends.cuda.api import driver

            driver.funcSetAttribute(
                function, _CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1
            )
        config = _LaunchConfig(
            plan.grid[0], plan.grid[1], 1, plan.threads, 1, 1, plan.shared_mem, None, None, 0
        )
        count = ctypes.c_int(0)
        status = _libcuda().cuOccupancyMaxActiveClusters(
            ctypes.byref(count), ctypes.c_void_p(function), ctypes.byref(config)
        )
    except Exception:  # no driver symbol, an old driver, a refused attribute: no clusters
        return 0
    return count.value if status == 0 else 0


def _occupancy(kernel: Any, threads: int, shared_mem: int) -> int:
    """The occupancy API's co-resident blocks per multiprocessor of ``kernel`` (a
    :class:`cupy.RawKernel`) launched with ``threads`` threads and ``shared_mem`` bytes."""
    from cupy_backends.cuda.api import driver

    return int(
        driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.kernel.ptr, threads, shared_mem)
    )


def _dummy(device_id: int, dtype: Any) -> Any:
    """A one-element array standing in for an absent optional input (its flag is 0, so the
    kernel never reads it); cached, so no per-call allocation."""
    import cupy

    key = (device_id, str(dtype))
    array = _dummy_cache.get(key)
    if array is None:
        with cupy.cuda.Device(device_id):  # the states' device, whichever is current
            array = cupy.zeros(1, dtype=dtype)
        _dummy_cache[key] = array
    return array


def _reject(force: bool, reason: str) -> None:
    if force:
        raise ValueError(f"persistent recurrence not applicable: {reason}")


def _check_arrays(
    states: Any, w_hh: Any, h0: Any, lengths: Any, nonlinearity: str, extra: dict[str, Any]
) -> str | None:
    """None when the arguments fit the kernels' contract, else why not."""
    import cupy

    if nonlinearity not in ("tanh", "relu"):
        return f"nonlinearity {nonlinearity!r} is not 'tanh' or 'relu'"
    arrays = {"states": states, "w_hh": w_hh, "h0": h0, **extra}
    for label, array in arrays.items():
        if array is None:
            continue
        if not isinstance(array, cupy.ndarray):
            return f"{label} is not a CuPy array"
        if not array.flags.c_contiguous:
            return f"{label} is not C-contiguous"
        if array.dtype != states.dtype:
            return f"{label} has dtype {array.dtype}, states {states.dtype}"
    if states.dtype.name not in _ITEMSIZE:
        return f"dtype {states.dtype} is not float32 or float64"
    if states.ndim != 3:
        return f"states must be (T, B, H), got shape {states.shape}"
    steps, batch, hidden = states.shape
    if w_hh.shape != (hidden, hidden) or h0.shape != (batch, hidden):
        return f"w_hh {w_hh.shape} / h0 {h0.shape} do not match states {states.shape}"
    for label, array in extra.items():
        expected = states.shape if label == "grad_states" else (batch, hidden)
        if array is not None and array.shape != expected:
            return f"{label} has shape {array.shape}, expected {expected}"
    if lengths is not None:
        if not isinstance(lengths, cupy.ndarray) or lengths.dtype != cupy.int32:
            return "lengths must be a CuPy int32 array"
        if lengths.shape != (batch,) or not lengths.flags.c_contiguous:
            return f"lengths must be a contiguous ({batch},) array, got {lengths.shape}"
    device = states.device.id
    for label, array in {**arrays, "lengths": lengths}.items():
        if array is not None and array.device.id != device:
            return f"{label} is on device {array.device.id}, states on device {device}"
    return None


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the device or the toolchain refusing a kernel (a CUDA error that
    leaves the context usable, a compile or link failure): only those fall back. A sticky
    CUDA error (the context is broken, no variant is to blame), out of memory and Python
    errors (a bug) are raised as they are."""
    if getattr(exc, "status", None) in _STICKY_CUDA_ERRORS:
        return False
    # CuPy's CUDA errors and its toolchain errors are RuntimeErrors; CompileException is not
    return isinstance(exc, RuntimeError) or type(exc).__name__ == "CompileException"


def _give_up(plan: Plan, device_id: int, what: str, exc: BaseException) -> None:
    """Turn ``plan``'s variant off on the device (for clusters: this size and larger), with
    a warning saying why; what :func:`_refused` does not cover is re-raised."""
    if not _refused(exc):
        raise exc
    if plan.variant == "cluster" and plan.cluster // 2 >= CLUSTER_SIZES[0]:
        _largest_cluster[device_id] = plan.cluster // 2
        dropped = f"clusters of {plan.cluster} blocks or more"
    else:
        _variants_failed.setdefault(device_id, set()).add(plan.variant)
        dropped = f"the {plan.variant} variant"
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    warn_at_caller(
        f"rnncu: {what} {plan.name_expression} (grid {plan.grid}, {plan.threads} threads) "
        f"failed ({detail}); persistent kernels on device {device_id} no longer use "
        f"{dropped} in this process",
        RuntimeWarning,
    )


def _load(plan: Plan, states: Any, device_id: int) -> tuple[Any, int] | None:
    """The plan's kernel, prepared, and its occupancy figure (resident clusters for the
    cluster variant, blocks per SM otherwise); None when loading or preparing it failed,
    which turns the variant off (:func:`_give_up`)."""
    try:
        with states.device:
            kernel = _kernel(plan, device_id)
            if plan.variant == "cluster":
                return kernel, _prepare_cluster(kernel, plan, device_id)
            return kernel, _prepare(kernel, plan, device_id)
    except Exception as exc:  # compile or link error, a refused attribute, ...
        _give_up(plan, device_id, "loading", exc)
        return None


def _launchable(direction: str, states: Any, force: bool) -> tuple[Plan, Any, int] | None:
    steps, batch, hidden = states.shape
    device_id = states.device.id
    limits = _device_limits(device_id)
    if device_id in _largest_cluster:
        largest = min(limits.max_cluster_size, _largest_cluster[device_id])
        limits = dataclasses.replace(limits, max_cluster_size=largest)
    planner = plan_forward if direction == "forward" else plan_backward
    failed = _variants_failed.get(device_id, set())
    variants = tuple(v for v in variants_in_force() if v not in failed)
    plan = planner(steps, batch, hidden, states.dtype, limits, variants) if variants else None
    why_not_cluster = ""
    while plan is not None and plan.variant == "cluster":
        loaded = _load(plan, states, device_id)
        if loaded is None:
            return _launchable(direction, states, force)  # with smaller clusters, or none
        kernel, clusters = loaded
        if clusters >= plan.grid[1]:
            return plan, kernel, device_id
        # Not every cluster resident at once (the cost model assumes one wave): plan again
        # with at most that many clusters of this size (more rows per block), or, when none
        # fits, with smaller clusters only, down to none. Each round tightens a limit, so
        # the loop ends.
        why_not_cluster = (
            f"; {plan.name_expression} with {plan.threads} threads: the occupancy API allows "
            f"{clusters} resident clusters, the plan needs {plan.grid[1]}"
        )
        if clusters >= 1:
            caps = dict(limits.cluster_caps)
            caps[plan.cluster] = min(caps.get(plan.cluster, clusters), clusters)
            limits = dataclasses.replace(limits, cluster_caps=tuple(sorted(caps.items())))
        else:
            limits = dataclasses.replace(limits, max_cluster_size=plan.cluster // 2)
        plan = planner(steps, batch, hidden, states.dtype, limits, variants)
    if plan is None:
        _reject(
            force,
            f"no persistent launch fits (T, B, H) = {states.shape} in {states.dtype} on a "
            f"device with {limits.sm_count} SMs, {limits.smem_per_block_optin} bytes of "
            f"shared memory per block, compute capability {limits.compute_capability} "
            f"(variants {', '.join(variants) or 'none'}"
            + (f"; failed here: {', '.join(sorted(failed))}" if failed else "")
            + f"){why_not_cluster}",
        )
        return None
    loaded = _load(plan, states, device_id)
    if loaded is None:
        return _launchable(direction, states, force)  # without this variant now
    kernel, per_sm = loaded
    if per_sm < 1 or (plan.cooperative and plan.blocks > per_sm * limits.sm_count):
        _reject(
            force,
            f"{plan.name_expression} with {plan.threads} threads: the occupancy API allows "
            f"{per_sm} blocks per SM, the plan needs {plan.blocks} co-resident blocks",
        )
        return None
    return plan, kernel, device_id


def forward_args(
    plan: Plan,
    states: Any,
    w_hh: Any,
    h0: Any,
    lengths: Any | None,
    nonlinearity: str,
    reverse: bool,
    int_dummy: Any,
) -> tuple[Any, ...]:
    """The forward kernel's arguments, in its parameter order. Pure (any array type), so the
    host emulation in the tests checks the very tuple the device gets; ``int_dummy`` (one
    int32 element) stands in for absent lengths."""
    import numpy as np

    steps, batch, hidden = states.shape
    has_lengths = lengths is not None
    return (
        states, w_hh, h0, lengths if has_lengths else int_dummy, np.int32(has_lengths),
        np.int32(steps), np.int32(batch), np.int32(hidden), np.int32(plan.ks),
        np.int32(nonlinearity == "relu"), np.int32(bool(reverse)),
    )  # fmt: skip


def backward_args(
    plan: Plan,
    grad_z: Any,
    grad_h0: Any,
    states: Any,
    w_hh: Any,
    grad_states: Any | None,
    grad_h_last: Any | None,
    lengths: Any | None,
    nonlinearity: str,
    reverse: bool,
    dummy: Any,
    int_dummy: Any,
) -> tuple[Any, ...]:
    """The backward kernel's arguments, in its parameter order (see :func:`forward_args`);
    ``dummy`` (one element of the states' dtype) stands in for absent gradients."""
    import numpy as np

    steps, batch, hidden = states.shape
    return (
        grad_z, grad_h0, states, w_hh,
        grad_states if grad_states is not None else dummy, np.int32(grad_states is not None),
        grad_h_last if grad_h_last is not None else dummy, np.int32(grad_h_last is not None),
        lengths if lengths is not None else int_dummy, np.int32(lengths is not None),
        np.int32(steps), np.int32(batch), np.int32(hidden), np.int32(plan.ks),
        np.int32(nonlinearity == "relu"), np.int32(bool(reverse)),
    )  # fmt: skip


def supports(
    shape: tuple[int, int, int],
    dtype: Any,
    nonlinearity: str = "tanh",
    reverse: bool = False,
) -> bool:
    """Whether the persistent path has a plan for both the forward and the backward
    recurrence of ``shape`` = (T, B, H) in ``dtype`` on the current device (the activation and
    direction do not change the plan; they are accepted for a uniform query)."""
    import cupy

    limits = _device_limits(cupy.cuda.runtime.getDevice())
    steps, batch, hidden = shape
    return (
        plan_forward(steps, batch, hidden, dtype, limits) is not None
        and plan_backward(steps, batch, hidden, dtype, limits) is not None
    )


def _launch(plan: Plan, kernel: Any, args: tuple[Any, ...], device: Any, device_id: int) -> bool:
    """Launch; False when the launch is refused (a cluster or cooperative launch the driver
    will not schedule, resources the occupancy API did not foresee: reported at once, before
    anything ran). The variant is then off for the device, with a warning, and the caller
    plans again (another variant, or the step path)."""
    try:
        with device:
            kernel((plan.grid[0], plan.grid[1], 1), (plan.threads, 1, 1), args,
                   shared_mem=plan.shared_mem)  # fmt: skip
    except Exception as exc:
        _give_up(plan, device_id, "the launch of", exc)
        return False
    last_plans[plan.direction] = plan
    return True


def persistent_forward(
    states: Any,
    w_hh: Any,
    h0: Any,
    lengths: Any | None,
    nonlinearity: str,
    reverse: bool,
    force: bool = False,
) -> bool:
    """Run ``h_t = act(Z_t + h_{t-1} W_hh^T)`` for all T steps in one launch, in place in
    ``states`` (T, B, H) (Z on entry, h on exit); padding steps (``t >= lengths[b]``) carry
    the previous state. Returns False, having done nothing, when no persistent kernel
    applies; with ``force=True`` raises ValueError saying why instead. Never synchronises."""
    import numpy as np

    reason = _check_arrays(states, w_hh, h0, lengths, nonlinearity, {})
    if reason is not None:
        _reject(force, reason)
        return False
    launch = _launchable("forward", states, force)
    if launch is None:
        return False
    plan, kernel, device_id = launch
    args = forward_args(
        plan, states, w_hh, h0, lengths, nonlinearity, reverse, _dummy(device_id, np.int32)
    )
    if not _launch(plan, kernel, args, states.device, device_id):
        return persistent_forward(states, w_hh, h0, lengths, nonlinearity, reverse, force)
    return True


def persistent_backward(
    states: Any,
    w_hh: Any,
    h0: Any,
    grad_states: Any | None,
    grad_h_last: Any | None,
    lengths: Any | None,
    nonlinearity: str,
    reverse: bool,
    force: bool = False,
) -> tuple[Any, Any] | None:
    """Backpropagate through all T steps in one launch. Returns freshly allocated
    ``(grad_z, grad_h0)``, (T, B, H) and (B, H), with
    ``grad_z_t = valid_t * (grad_states_t + dh_t) * act'(h_t)`` and
    ``dh_{t-1} = grad_z_t W_hh + (1 - valid_t) * dh_t``; None (nothing done) when no
    persistent kernel applies, or ValueError with ``force=True``. ``grad_states`` and
    ``grad_h_last`` may be None (zeros). Never synchronises."""
    import cupy
    import numpy as np

    extra = {"grad_states": grad_states, "grad_h_last": grad_h_last}
    reason = _check_arrays(states, w_hh, h0, lengths, nonlinearity, extra)
    if reason is not None:
        _reject(force, reason)
        return None
    launch = _launchable("backward", states, force)
    if launch is None:
        return None
    plan, kernel, device_id = launch
    with states.device:
        grad_z = cupy.empty_like(states)
        grad_h0 = cupy.empty_like(h0)
        args = backward_args(
            plan, grad_z, grad_h0, states, w_hh, grad_states, grad_h_last, lengths,
            nonlinearity, reverse, _dummy(device_id, states.dtype), _dummy(device_id, np.int32),
        )  # fmt: skip
    if not _launch(plan, kernel, args, states.device, device_id):
        return persistent_backward(
            states, w_hh, h0, grad_states, grad_h_last, lengths, nonlinearity, reverse, force
        )
    return grad_z, grad_h0
