"""CPU-side checks of the persistent recurrence: the pure-Python dispatch (plan_forward /
plan_backward) on an H200's numbers, the launch-shape invariants the kernels rely on, and that
every persistent kernel instantiation compiles through NVRTC for sm_80 and sm_90 without
register spills and within the register cap the planner assumes. No GPU needed."""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from device_limits import H200
from nvrtc_cache import compile_file, one_worker

from rnncu.backend import kernel_loader, persistent
from rnncu.backend.persistent import DeviceLimits, Plan, plan_backward, plan_forward

# (T, B, H) of the anchor shapes in /work/shared/ANCHORS.md
ANCHORS = {
    "rowmnist": (28, 256, 128),
    "pixelmnist": (784, 128, 128),
    "medium": (100, 64, 512),
    "large": (256, 256, 1024),
    "latency_b4": (1000, 4, 1024),
    "b32_h512": (512, 32, 512),
}

DTYPES = ("float32", "float64")
ODD = (1, 7, 33, 257, 1000)


def check_plan(plan: Plan, batch: int, hidden: int, limits: DeviceLimits = H200) -> None:
    """The invariants the kernels assume about their launch shape."""
    itemsize = 4 if plan.dtype == "float32" else 8
    assert plan.ks & (plan.ks - 1) == 0 and 1 <= plan.ks <= 32
    assert plan.ks * plan.kc >= hidden, "the padded row must cover every hidden unit"
    assert plan.threads == plan.units_per_block * plan.ks
    assert plan.threads % 32 == 0, "shuffles use a full mask: whole warps only"
    assert plan.threads <= persistent.max_threads_for(itemsize, plan.kc, plan.rb)
    assert plan.grid[1] * plan.rb >= batch
    assert (plan.grid[1] - 1) * plan.rb < batch, "no block of only padding rows"
    assert plan.grid[0] * plan.units_per_block >= hidden
    assert (plan.grid[0] - 1) * plan.units_per_block < hidden, "no block of only padding units"
    buffer = plan.ks * persistent.chunk_stride(itemsize, plan.kc, plan.rb) * itemsize
    assert plan.shared_mem <= limits.smem_per_block_optin
    if plan.variant == "batch":
        assert plan.grid[0] == 1 and plan.units_per_block >= hidden
        assert plan.shared_mem == 2 * buffer
        assert not plan.cooperative and plan.cluster == 1
    elif plan.variant == "cluster":
        assert limits.compute_capability >= (9, 0) and limits.cluster_launch
        assert plan.cluster in persistent.CLUSTER_SIZES and plan.cluster <= limits.max_cluster_size
        assert plan.grid[1] <= dict(limits.cluster_caps).get(plan.cluster, plan.grid[1])
        assert plan.grid[0] == plan.cluster, "one cluster spans a grid row exactly"
        assert plan.shared_mem == 2 * buffer, "every block holds all of h, double-buffered"
        assert not plan.cooperative
        assert plan.blocks <= plan.blocks_per_sm * limits.sm_count, "one wave"
    else:
        assert plan.variant == "grid" and plan.cooperative and plan.cluster == 1
        assert plan.grid[0] >= 2, "one unit slice is the batch variant's launch"
        assert plan.shared_mem == buffer
        assert plan.blocks <= plan.blocks_per_sm * limits.sm_count, "must be co-resident"
    assert plan.blocks_per_sm >= 1
    assert plan.name_expression in persistent.all_name_expressions(plan.variant)


# ------------------------------------------------------------------------- anchor shapes
@pytest.mark.parametrize("planner", [plan_forward, plan_backward])
def test_anchor_shapes_on_h200(planner) -> None:
    plans = {name: planner(*shape, "float32", H200) for name, shape in ANCHORS.items()}
    # small H: batch-sliced, block barriers only, one block per row slice in a single wave
    for name in ("rowmnist", "pixelmnist"):
        plan = plans[name]
        assert plan is not None and plan.variant == "batch", name
        assert plan.blocks <= plan.blocks_per_sm * H200.sm_count, "one wave"
    assert plans["pixelmnist"].rb == 1, "latency-bound: the fewest rows per block"
    # H = 512 at small batch: W_hh fits the registers of 16 blocks, one cluster per row slice
    for name in ("medium", "b32_h512"):
        plan = plans[name]
        assert plan is not None and plan.variant == "cluster" and plan.cluster == 16, name
    # H = 1024 needs 64 blocks' registers: more than a cluster, grid-synchronised
    assert plans["latency_b4"] is not None and plans["latency_b4"].variant == "grid"
    # large batch and H is compute-bound: W_hh would have to be replicated per row slice
    assert plans["large"] is None
    for name, plan in plans.items():
        if plan is not None:
            check_plan(plan, ANCHORS[name][1], ANCHORS[name][2])
    # without clusters (RNNCU_PERSISTENT_VARIANTS=batch,grid) H = 512 is grid-synchronised
    for name in ("medium", "b32_h512"):
        plan = planner(*ANCHORS[name], "float32", H200, "batch,grid")
        assert plan is not None and plan.variant == "grid", name
        check_plan(plan, ANCHORS[name][1], ANCHORS[name][2])
        assert plan.est_step_cycles > plans[name].est_step_cycles


def test_forward_and_backward_share_geometry() -> None:
    for steps, batch, hidden in [*ANCHORS.values(), (5, 7, 33), (3, 1, 1)]:
        for dtype in DTYPES:
            fwd = plan_forward(steps, batch, hidden, dtype, H200)
            bwd = plan_backward(steps, batch, hidden, dtype, H200)
            if fwd is None:
                assert bwd is None
                continue
            assert bwd is not None and bwd.direction == "backward" and fwd.direction == "forward"
            assert (fwd.variant, fwd.kc, fwd.rb, fwd.ks, fwd.grid, fwd.threads) == (
                bwd.variant,
                bwd.kc,
                bwd.rb,
                bwd.ks,
                bwd.grid,
                bwd.threads,
            )
            assert "backward" in bwd.name_expression


# ------------------------------------------------------------------------------ boundaries
def _largest_hidden(batch: int, dtype: str, variant: str | None = None) -> int:
    largest = 0
    for hidden in range(1, 2200):
        plan = plan_forward(10, batch, hidden, dtype, H200)
        if plan is not None and (variant is None or plan.variant == variant):
            largest = hidden
    return largest


def test_batch_variant_boundary_float32() -> None:
    # H <= 128 fits one block's registers: batch-sliced, whatever the batch size
    for batch in (1, 4, 128, 256, 4096):
        for hidden in (1, 2, 31, 32, 33, 64, 65, 127, 128):
            plan = plan_forward(10, batch, hidden, "float32", H200)
            assert plan is not None and plan.variant == "batch", (batch, hidden)
            check_plan(plan, batch, hidden)
        above = plan_forward(10, batch, 129, "float32", H200)
        assert above is None or above.variant in ("cluster", "grid")
    assert _largest_hidden(4, "float32", "batch") == 128


def test_largest_persistent_hidden() -> None:
    # Registers across 132 SMs bound the grid variant: at B <= 8 the largest persistent H is
    # 1056 in float32 (132 blocks x 8 units, 64 weights per thread) and 1024 in float64.
    assert _largest_hidden(1, "float32") == 1056
    assert _largest_hidden(4, "float32") == 1056
    assert _largest_hidden(1, "float64") == 1024
    assert plan_forward(10, 4, 1056, "float32", H200) is not None
    assert plan_forward(10, 4, 1057, "float32", H200) is None
    assert plan_forward(10, 4, 1024, "float64", H200) is not None
    assert plan_forward(10, 4, 1025, "float64", H200) is None
    # more rows need more co-resident blocks (W_hh is replicated per row slice)
    assert _largest_hidden(32, "float32") < 1056


def test_float64_batch_variant_is_smaller() -> None:
    # doubles take twice the registers: the batch-sliced kernel stops at H = 64
    assert _largest_hidden(128, "float64", "batch") == 64
    plan = plan_forward(784, 128, 128, "float64", H200)
    # ... and H = 128 in doubles splits over a cluster of two blocks
    assert plan is not None and plan.variant == "cluster" and plan.cluster == 2
    check_plan(plan, 128, 128)


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_sizes_plan_consistently(dtype: str) -> None:
    for batch, hidden in itertools.product(ODD, ODD):
        plan = plan_forward(10, batch, hidden, dtype, H200)
        if hidden <= 64:
            assert plan is not None and plan.variant == "batch", (batch, hidden)
        if plan is not None:
            check_plan(plan, batch, hidden)


def test_sweep_invariants() -> None:
    for dtype in DTYPES:
        for batch in (1, 2, 3, 8, 9, 31, 64, 100, 257):
            for hidden in (1, 3, 16, 17, 96, 100, 130, 200, 256, 300, 511, 512, 513, 700, 1024):
                plan = plan_forward(4, batch, hidden, dtype, H200)
                if plan is not None:
                    check_plan(plan, batch, hidden)


def test_too_large_and_unsupported() -> None:
    assert plan_forward(10, 4, 4096, "float32", H200) is None
    assert plan_forward(10, 100000, 1024, "float32", H200) is None
    assert plan_forward(10, 0, 128, "float32", H200) is None
    assert plan_forward(10, 4, 0, "float32", H200) is None
    assert plan_forward(10, 4, 128, "float16", H200) is None
    assert plan_forward(10, 4, 128, "int32", H200) is None
    old = DeviceLimits(sm_count=80, smem_per_block_optin=96 * 1024, smem_per_sm=96 * 1024,
                       compute_capability=(7, 0))  # fmt: skip
    assert plan_forward(10, 4, 128, "float32", old) is None


def test_shared_memory_exactly_at_the_opt_in_limit_fits() -> None:
    """The per-block opt-in limit is inclusive, for each variant: a plan whose shared memory
    equals it is still chosen; one byte less and that plan is gone."""
    for name, variant in (("rowmnist", "batch"), ("b32_h512", "cluster"), ("latency_b4", "grid")):
        plan = plan_forward(*ANCHORS[name], "float32", H200)
        assert plan is not None and plan.variant == variant
        exact = dataclasses.replace(H200, smem_per_block_optin=plan.shared_mem)
        assert plan_forward(*ANCHORS[name], "float32", exact) == plan, name
        tight = dataclasses.replace(H200, smem_per_block_optin=plan.shared_mem - 1)
        assert plan_forward(*ANCHORS[name], "float32", tight) != plan, name


def test_the_grid_variant_alone_never_plans_one_unit_slice() -> None:
    for dtype in DTYPES:
        for batch, hidden in itertools.product((1, 4, 33), (1, 16, 17, 64, 200, 512)):
            plan = plan_forward(10, batch, hidden, dtype, H200, "grid")
            if plan is not None:
                check_plan(plan, batch, hidden)
    assert plan_forward(10, 4, 16, "float32", H200, "grid") is None  # 16 units: one warp


def test_zero_steps_still_plans() -> None:
    # T = 0 is a valid (empty) launch: the backward kernel still writes grad_h0
    assert plan_backward(0, 4, 64, "float32", H200) is not None


def test_no_cooperative_launch_means_no_grid_variant() -> None:
    limits = DeviceLimits(
        sm_count=132, smem_per_block_optin=227 * 1024, smem_per_sm=228 * 1024,
        cooperative_launch=False,
    )  # fmt: skip
    assert plan_forward(1000, 4, 1024, "float32", limits) is None
    plan = plan_forward(28, 256, 128, "float32", limits)
    assert plan is not None and plan.variant == "batch"


def test_fewer_multiprocessors_shrink_the_grid_variant() -> None:
    a100 = DeviceLimits(sm_count=108, smem_per_block_optin=163 * 1024, smem_per_sm=164 * 1024,
                        compute_capability=(8, 0))  # fmt: skip
    assert plan_forward(10, 4, 1056, "float32", a100) is None
    plan = plan_forward(10, 4, 512, "float32", a100)
    assert plan is not None and plan.variant == "grid"
    check_plan(plan, 4, 512, a100)


# --------------------------------------------------------------------------- clusters
def test_clusters_need_sm90_and_cluster_launch() -> None:
    a100 = DeviceLimits(sm_count=108, smem_per_block_optin=163 * 1024, smem_per_sm=164 * 1024,
                        compute_capability=(8, 0))  # fmt: skip
    no_clusters = DeviceLimits(sm_count=132, smem_per_block_optin=227 * 1024,
                               smem_per_sm=228 * 1024, cluster_launch=False)  # fmt: skip
    for limits in (a100, no_clusters):
        for batch, hidden in itertools.product((1, 4, 64), (129, 200, 256, 512)):
            plan = plan_forward(10, batch, hidden, "float32", limits)
            if plan is None:  # B = 64 at H = 512 outgrows 108 SMs
                assert limits is a100 and hidden == 512
                continue
            assert plan.variant == "grid", (limits, batch, hidden)
            check_plan(plan, batch, hidden, limits)


def test_max_cluster_size_bounds_the_clusters() -> None:
    # what the runtime does when the occupancy API refuses a plan's clusters: halve the size
    sizes = []
    limits = H200
    while True:
        plan = plan_forward(*ANCHORS["b32_h512"], "float32", limits)
        assert plan is not None
        check_plan(plan, 32, 512, limits)
        if plan.variant != "cluster":
            break
        sizes.append(plan.cluster)
        limits = dataclasses.replace(limits, max_cluster_size=plan.cluster // 2)
    # at H = 512 only 16 blocks hold W_hh in registers; without them the grid kernel runs
    assert sizes == [16] and plan.variant == "grid"
    sizes = []
    limits = H200
    for _ in range(5):
        plan = plan_forward(10, 3, 200, "float32", limits)
        if plan.variant != "cluster":
            break
        check_plan(plan, 3, 200, limits)
        sizes.append(plan.cluster)
        limits = dataclasses.replace(limits, max_cluster_size=plan.cluster // 2)
    assert sizes == sorted(sizes, reverse=True) and len(sizes) >= 2, sizes


def test_cluster_caps_trade_row_slices_for_rows_per_block() -> None:
    # what the runtime does when the occupancy API admits some clusters but fewer than a plan
    # needs (a GPC holds one cluster of 16 blocks at one block per SM): more rows per block
    caps = dataclasses.replace(H200, cluster_caps=((16, 7),))
    plan = plan_forward(*ANCHORS["b32_h512"], "float32", caps)
    assert plan.variant == "cluster" and plan.cluster == 16 and plan.grid == (16, 4)
    check_plan(plan, 32, 512, caps)
    # medium's 64 rows need 8 clusters even at 8 rows per block: the grid kernel
    assert plan_forward(*ANCHORS["medium"], "float32", caps).variant == "grid"
    for cap in (1, 2, 3):
        limits = dataclasses.replace(H200, cluster_caps=((16, cap),))
        plan = plan_forward(3, 4, 512, "float32", limits)
        assert plan.variant == "cluster" and plan.grid[1] <= cap
        check_plan(plan, 4, 512, limits)


def test_clusters_win_where_they_fit_and_batch_keeps_small_h() -> None:
    for dtype in DTYPES:
        for batch, hidden in itertools.product((1, 3, 8, 33, 64), (96, 129, 200, 256, 384)):
            auto = plan_forward(10, batch, hidden, dtype, H200)
            if auto is None:
                continue
            for variants in ("batch", "grid", "batch,grid"):
                other = plan_forward(10, batch, hidden, dtype, H200, variants)
                assert other is None or other.est_step_cycles >= auto.est_step_cycles
            only = plan_forward(10, batch, hidden, dtype, H200, "cluster")
            if auto.variant == "cluster":
                assert only == auto
    # the batch variant keeps every H it can hold: no exchange, no cluster barrier
    for hidden in (1, 33, 128):
        plan = plan_forward(10, 7, hidden, "float32", H200)
        assert plan is not None and plan.variant == "batch"


def test_variants_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = ANCHORS["medium"]
    assert plan_forward(*shape, "float32", H200, ["grid"]).variant == "grid"
    assert plan_forward(*shape, "float32", H200, ("grid", "cluster")).variant == "cluster"
    assert plan_forward(*shape, "float32", H200, "batch") is None
    for bad in ("", "warp", ["grid", "warp"], ()):
        with pytest.raises(ValueError, match="subset of batch, cluster, grid"):
            plan_forward(*shape, "float32", H200, bad)
    monkeypatch.delenv(persistent.VARIANTS_ENV, raising=False)
    assert persistent.variants_in_force() == persistent.VARIANTS
    monkeypatch.setenv(persistent.VARIANTS_ENV, "  ")  # set but blank: unset
    assert persistent.variants_in_force() == persistent.VARIANTS
    monkeypatch.setenv(persistent.VARIANTS_ENV, " grid , batch ")
    assert persistent.variants_in_force() == ("batch", "grid")
    monkeypatch.setenv(persistent.VARIANTS_ENV, "grid,cluser")
    with pytest.raises(ValueError, match="RNNCU_PERSISTENT_VARIANTS"):
        persistent.variants_in_force()


def test_cluster_name_expressions() -> None:
    assert (
        persistent.name_expression("cluster", "backward", "float64", 32, 2, 16)
        == "persistent_cluster_backward<double, 32, 2, 16>"
    )
    for cluster in (1, 3, 32):
        with pytest.raises(ValueError, match="cluster"):
            persistent.name_expression("cluster", "forward", "float32", 32, 1, cluster)
    with pytest.raises(ValueError, match="no clusters"):
        persistent.name_expression("grid", "forward", "float32", 32, 1, 2)


def test_dtype_spellings() -> None:
    import numpy as np

    a = plan_forward(28, 256, 128, np.float32, H200)
    b = plan_forward(28, 256, 128, np.dtype("float32"), H200)
    c = plan_forward(28, 256, 128, "float32", H200)
    assert a == b == c


def test_estimated_occupancy() -> None:
    # 512 threads at the 128-register cap fill the register file: one block per SM
    assert persistent.estimate_blocks_per_sm(512, 128, 0, H200) == 1
    assert persistent.estimate_blocks_per_sm(256, 64, 0, H200) == 4
    assert persistent.estimate_blocks_per_sm(32, 40, 0, H200) == 32
    assert persistent.estimate_blocks_per_sm(128, 64, 200 * 1024, H200) == 1
    # registers are allocated per warp in units of 256: 33 a thread take 1280 a warp (not
    # 1056), 10240 for 8 warps, so 6 blocks of 256 threads fit in 64K registers, not 7
    assert persistent.estimate_blocks_per_sm(256, 33, 0, H200) == 6


def test_geometry_helpers_mirror_the_kernel_header() -> None:
    header = (kernel_loader.kernel_dir() / "persistent_common.cuh").read_text()
    # the C++ register estimate and the Python one must be the same expression
    assert "kRegisters = (3 * KC / 2 + 12 * RB) * kWords + 32" in header
    assert "kPadBytes = ((16 - kChunkBytes) % 128 + 128) % 128" in header
    for itemsize, kc, rb in itertools.product((4, 8), (8, 16, 32, 64), (1, 2, 4, 8)):
        stride_bytes = persistent.chunk_stride(itemsize, kc, rb) * itemsize
        assert stride_bytes % 128 == 16 and stride_bytes >= rb * kc * itemsize
        assert persistent.max_threads_for(itemsize, kc, rb) in (256, 512, 1024)
    with pytest.raises(ValueError):
        persistent.name_expression("cluster", "forward", "float32", 32, 1)
    with pytest.raises(ValueError):
        persistent.name_expression("batch", "sideways", "float32", 32, 1)


def test_block_size_bound_mirrors_the_kernel_header() -> None:
    """max_threads_for is LaunchLimits::kMaxThreads (the kernels' __launch_bounds__): a
    threshold that differs launches more threads than a kernel was compiled for, or caps
    its registers below what ptxas assumed."""
    header = (kernel_loader.kernel_dir() / "persistent_common.cuh").read_text()
    match = re.search(
        r"kMaxThreads = kRegisters <= (\d+) \? (\d+) : \(kRegisters <= (\d+) \? (\d+) : (\d+)\);",
        header,
    )
    assert match is not None, "LaunchLimits::kMaxThreads changed: update this test"
    low, most, high, middle, fewest = map(int, match.groups())
    bounds = set()
    for itemsize, kc, rb in itertools.product((4, 8), (8, 16, 32, 64), (1, 2, 4, 8)):
        registers = (3 * kc // 2 + 12 * rb) * (itemsize // 4) + 32  # kRegisters (see above)
        expected = most if registers <= low else middle if registers <= high else fewest
        assert persistent.max_threads_for(itemsize, kc, rb) == expected, (itemsize, kc, rb)
        assert persistent.register_cap(itemsize, kc, rb) == min(255, 65536 // expected)
        bounds.add(registers)
    assert high in bounds, "no instantiation sits on the upper threshold: pick another case"


def test_a_refused_cluster_size_halves_the_largest_then_turns_clusters_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the runtime does when a cluster launch fails: sizes above the refused one's half
    are no longer planned on that device, down to clusters of 2, whose refusal turns the
    cluster variant off (each with a warning); other devices are not affected."""
    monkeypatch.setattr(persistent, "_largest_cluster", {})
    monkeypatch.setattr(persistent, "_variants_failed", {})
    base = plan_forward(*ANCHORS["b32_h512"], "float32", H200)
    assert base is not None and base.variant == "cluster"
    for size in (16, 8, 4):
        with pytest.warns(RuntimeWarning, match=f"no longer use clusters of {size} blocks or m"):
            persistent._give_up(dataclasses.replace(base, cluster=size), 3, "the launch of",
                                RuntimeError("refused"))  # fmt: skip
        assert persistent._largest_cluster == {3: size // 2}
        assert persistent._variants_failed == {}
    with pytest.warns(RuntimeWarning, match="no longer use the cluster variant in this process"):
        persistent._give_up(dataclasses.replace(base, cluster=2), 3, "loading",
                            RuntimeError("refused"))  # fmt: skip
    assert persistent._variants_failed == {3: {"cluster"}}


def test_only_a_refusal_falls_back() -> None:
    """A CUDA error that breaks the context (CUDA's sticky errors: illegal address, launch
    failure, ...) and a Python error are raised, not taken for a variant's refusal."""

    class DriverError(RuntimeError):
        def __init__(self, status: int) -> None:
            super().__init__(f"status {status}")
            self.status = status

    class CompileException(Exception):  # CuPy's compile error is not a RuntimeError
        pass

    # cudaErrorECCUncorrectable, IllegalAddress, LaunchTimeout, Assert, HardwareStackError,
    # IllegalInstruction, MisalignedAddress, InvalidAddressSpace, InvalidPc, LaunchFailure,
    # Unknown
    for status in (214, 700, 702, 710, 714, 715, 716, 717, 718, 719, 999):
        assert not persistent._refused(DriverError(status)), status
    for refusal in (DriverError(1), DriverError(720), RuntimeError("no status"),
                    CompileException("error: x")):  # fmt: skip
        assert persistent._refused(refusal), refusal
    assert not persistent._refused(TypeError("a bug of ours"))
    with pytest.raises(TypeError, match="a bug of ours"):
        persistent._give_up(
            plan_forward(*ANCHORS["rowmnist"], "float32", H200), 0, "loading",
            TypeError("a bug of ours"),
        )  # fmt: skip


def test_registered_with_the_loader() -> None:
    names = kernel_loader.all_name_expressions()
    assert names[persistent.BATCH_KERNEL_FILE] == persistent.all_name_expressions("batch")
    assert names[persistent.GRID_KERNEL_FILE] == persistent.all_name_expressions("grid")
    assert names[persistent.CLUSTER_KERNEL_FILE] == persistent.all_name_expressions("cluster")
    assert len(names[persistent.BATCH_KERNEL_FILE]) == 48
    assert len(names[persistent.CLUSTER_KERNEL_FILE]) == 48 * len(persistent.CLUSTER_SIZES)


def test_kernels_start_with_a_header_comment() -> None:
    for filename in (
        "persistent_rnn.cu",
        "persistent_cluster.cu",
        "persistent_grid.cu",
        "persistent_common.cuh",
    ):
        text = (kernel_loader.kernel_dir() / filename).read_text()
        assert text.startswith("// "), filename


def _calls_enclosing(text: str, position: int) -> list[str]:
    """The names of the calls whose parentheses are open at ``position`` of ``text``."""
    names, depth = [], 0
    for index in range(position - 1, -1, -1):
        if text[index] == ")":
            depth += 1
        elif text[index] == "(":
            if depth:
                depth -= 1
            else:
                names.append(re.search(r"([\w:]*)\s*$", text[:index])[1])
    return names


def test_gathered_rows_are_read_through_l2() -> None:
    """gather_rows reads rows other blocks wrote during the launch; L1 is not coherent across
    SMs, so every read of ``src`` must be an __ldcg (a plain load could hit a stale line).
    The emulation is sequentially consistent and cannot show a stale read: this is read off
    the source."""
    text = (kernel_loader.kernel_dir() / "persistent_common.cuh").read_text()
    start = text.index("__device__ __forceinline__ void gather_rows(")
    body = text[text.index("{", start) : text.index("\n}\n", start)]
    body = re.sub(r"//[^\n]*", "", body)
    # an element's address (src + offset, src[i]) or a dereference; the alignment test of
    # the pointer itself reads nothing
    reads = [m.start() for m in re.finditer(r"\bsrc\s*[+\[]|\*\s*\(?\s*src\b", body)]
    assert len(reads) >= 2, "gather_rows no longer reads src: update this test"
    for position in reads:
        calls = _calls_enclosing(body, position)
        assert "__ldcg" in calls, (
            f"a read of src outside __ldcg: {body[position - 60 : position + 40]!r}"
        )


# ------------------------------------------------------------------------- NVRTC compile
try:
    from cupy_backends.cuda.libs import nvrtc  # noqa: F401

    _NVRTC_REASON = None
except Exception as exc:  # ImportError, or libnvrtc missing at load time
    _NVRTC_REASON = f"NVRTC is not importable ({type(exc).__name__}: {exc})"


@pytest.mark.slow
@pytest.mark.skipif(_NVRTC_REASON is not None, reason=str(_NVRTC_REASON))
@pytest.mark.parametrize(
    ("variant", "arch"),
    [
        pytest.param(
            variant,
            arch,
            marks=one_worker(persistent._FILES[variant], arch),
            id=f"{variant}-{arch}",
        )
        for variant in persistent.VARIANTS
        for arch in ("sm_80", "sm_90")
    ],
)
def test_every_persistent_kernel_compiles_without_spills(variant: str, arch: str) -> None:
    names = persistent.all_name_expressions(variant)
    result = compile_file(persistent._FILES[variant], arch)
    assert set(result.spills) == set(names), result.log
    spilling = {name: s for name, s in result.spills.items() if s != (0, 0)}
    assert not spilling, f"register spills (stores, loads) on {arch}: {spilling}"
    assert not any(result.stack_frame.values()), result.stack_frame
    # the planner's occupancy estimate assumes ptxas stayed within the cap of the bound
    for name in names:
        ctype, kc, rb = re.search(r"<(\w+), (\d+), (\d+)[,>]", name).groups()
        itemsize = 4 if ctype == "float" else 8
        assert result.registers[name] <= persistent.register_cap(itemsize, int(kc), int(rb))


def _cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include folder ($CUDA_PATH, then /usr/local/cuda), or None."""
    for root in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda.h").is_file():
            return Path(root) / "include"
    return None


def test_driver_api_declarations_written_by_hand_match_the_toolkit_headers(tmp_path) -> None:
    """CuPy wraps no cluster occupancy query, so ``persistent`` declares ``CUlaunchConfig``
    in ctypes and names a function attribute, a device attribute and the context-poisoning
    errors by number. A C program compiled against the toolkit's headers prints what those
    are there: a wrong offset or number would make the query read garbage on the device (and
    the planner drop clusters) or blame a variant for a sticky fault."""
    include = _cuda_include_dir()
    if include is None or shutil.which("gcc") is None:
        pytest.skip("no CUDA toolkit headers (cuda.h) or no gcc to compile against them")
    fields = [name for name, _ in persistent._LaunchConfig._fields_]
    sticky = ["cudaErrorECCUncorrectable", "cudaErrorIllegalAddress", "cudaErrorLaunchTimeout",
              "cudaErrorAssert", "cudaErrorHardwareStackError", "cudaErrorIllegalInstruction",
              "cudaErrorMisalignedAddress", "cudaErrorInvalidAddressSpace", "cudaErrorInvalidPc",
              "cudaErrorLaunchFailure", "cudaErrorUnknown"]  # fmt: skip
    lines = [
        'printf("sizeof %zu\\n", sizeof(CUlaunchConfig));',
        *(
            f'printf("{f} %zu %zu\\n", offsetof(CUlaunchConfig, {f}), '
            f"sizeof(((CUlaunchConfig *)0)->{f}));"
            for f in fields
        ),
        'printf("non_portable %d\\n", (int)CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED);',
        'printf("cluster_launch %d\\n", (int)cudaDevAttrClusterLaunch);',
        *(f'printf("{name} %d\\n", (int){name});' for name in sticky),
    ]
    source = tmp_path / "declarations.c"
    source.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <cuda.h>\n#include <driver_types.h>\n"
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    binary = tmp_path / "declarations"
    subprocess.run(["gcc", f"-I{include}", str(source), "-o", str(binary)], check=True,
                   capture_output=True, text=True)  # fmt: skip
    printed = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    headers = {line.split()[0]: line.split()[1:] for line in printed.splitlines()}
    assert int(headers["sizeof"][0]) == ctypes.sizeof(persistent._LaunchConfig)
    for field in fields:
        declared = getattr(persistent._LaunchConfig, field)
        assert [int(v) for v in headers[field]] == [declared.offset, declared.size], field
    assert (
        int(headers["non_portable"][0])
        == persistent._CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED
    )
    assert int(headers["cluster_launch"][0]) == persistent._CUDA_DEV_ATTR_CLUSTER_LAUNCH
    assert {int(headers[name][0]) for name in sticky} == persistent._STICKY_CUDA_ERRORS
