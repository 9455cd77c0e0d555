"""The persistent kernels (kernels/persistent_rnn.cu, kernels/persistent_grid.cu) run on the
host under an emulation of the CUDA features they use (tests/kernel_emulation.py: every CUDA
thread of the grid a fiber, block / warp / grid barriers, shuffles, per-block dynamic shared
memory), driven by the planner's own launch plans and the backend's own argument tuples
(``forward_args`` / ``backward_args``), and compared with the NumPy backend. Every output is
poisoned with NaN and every array sits between NaN guard margins that must survive the
launch. No GPU needed; skipped only where g++ is missing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from device_limits import H200
from kernel_emulation import ASCENDING, DESCENDING, RANDOM, RUN_AHEAD, KernelEmulation

from rnncu.backend import persistent
from rnncu.backend.numpy_backend import NumpyBackend
from rnncu.backend.persistent import (
    Plan,
    backward_args,
    forward_args,
    plan_backward,
    plan_forward,
)

REFERENCE = NumpyBackend()
MARGIN = 64  # guard elements on each side of every array


@pytest.fixture
def emulation(kernel_emulation: KernelEmulation) -> KernelEmulation:
    return kernel_emulation


# ------------------------------------------------------------------------------ helpers
class Guarded:
    """Arrays placed inside larger buffers whose margins are poisoned; :meth:`check` asserts
    that no launch wrote outside its arrays."""

    def __init__(self) -> None:
        self.buffers: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, shape: tuple[int, ...], dtype, fill=None, shift: int = 0) -> np.ndarray:
        dtype = np.dtype(dtype)
        poison = np.nan if dtype.kind == "f" else -(2**31)
        size = int(np.prod(shape))
        buffer = np.full(size + 2 * MARGIN + shift, poison, dtype=dtype)
        view = buffer[MARGIN + shift : MARGIN + shift + size].reshape(shape)
        if fill is not None:
            view[...] = fill
        self.buffers.append((buffer, buffer.copy()))
        return view

    def check(self) -> None:
        for buffer, initial in self.buffers:
            for edge in (slice(0, MARGIN), slice(-MARGIN, None)):
                assert buffer[edge].tobytes() == initial[edge].tobytes(), "write out of bounds"


def _tolerance(dtype) -> dict[str, float]:
    if np.dtype(dtype) == np.float64:
        return {"rtol": 1e-12, "atol": 1e-12}
    return {"rtol": 1e-5, "atol": 2e-5}


def _problem(rng: np.random.Generator, steps: int, batch: int, hidden: int, dtype, lengths: bool):
    z = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    w_hh = (rng.uniform(-1, 1, (hidden, hidden)) / np.sqrt(hidden)).astype(dtype)
    h0 = rng.standard_normal((batch, hidden)).astype(dtype)
    lens = None
    if lengths and steps > 0:
        lens = rng.integers(0, steps + 1, batch).astype(np.int32)
        lens[0] = steps  # one full row; the others padded (unless the draw says otherwise)
        if batch > 2:
            lens[-1] = 0  # and one with no step: its state passes through
    grad_states = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    if lens is not None:  # the gradient at a padded output is ignored, even when not finite
        grad_states[np.arange(steps)[:, None] >= lens[None, :]] = np.nan
    grad_h_last = rng.standard_normal((batch, hidden)).astype(dtype)
    return z, w_hh, h0, lens, grad_states, grad_h_last


def run_forward(
    emulation: KernelEmulation,
    plan: Plan,
    z: np.ndarray,
    w_hh: np.ndarray,
    h0: np.ndarray,
    lengths: np.ndarray | None,
    nonlinearity: str,
    reverse: bool,
    policy: int = ASCENDING,
    seed: int = 0,
    shift: int = 0,
) -> np.ndarray:
    guard = Guarded()
    states = guard(z.shape, z.dtype, z, shift=shift)
    args = forward_args(
        plan,
        states,
        guard(w_hh.shape, w_hh.dtype, w_hh),
        guard(h0.shape, h0.dtype, h0, shift=shift),
        None if lengths is None else guard(lengths.shape, np.int32, lengths),
        nonlinearity,
        reverse,
        guard((1,), np.int32),
    )
    inputs = [a.copy() for a in args[1:4] if isinstance(a, np.ndarray)]
    emulation.launch(plan, args, policy, seed)
    guard.check()
    outputs = [a for a in args[1:4] if isinstance(a, np.ndarray)]
    for before, after in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(after, before, "the forward kernel wrote to an input")
    return states.copy()


def run_backward(
    emulation: KernelEmulation,
    plan: Plan,
    states: np.ndarray,
    w_hh: np.ndarray,
    grad_states: np.ndarray | None,
    grad_h_last: np.ndarray | None,
    lengths: np.ndarray | None,
    nonlinearity: str,
    reverse: bool,
    policy: int = ASCENDING,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    guard = Guarded()
    dtype = states.dtype
    steps, batch, hidden = states.shape
    grad_z = guard(states.shape, dtype)  # NaN: every element must be written
    grad_h0 = guard((batch, hidden), dtype)

    def copy(array):
        return None if array is None else guard(array.shape, array.dtype, array)

    args = backward_args(
        plan,
        grad_z,
        grad_h0,
        copy(states),
        copy(w_hh),
        copy(grad_states),
        copy(grad_h_last),
        copy(lengths),
        nonlinearity,
        reverse,
        guard((1,), dtype),  # NaN dummies: reading one through a 0 flag would show
        guard((1,), np.int32),
    )
    emulation.launch(plan, args, policy, seed)
    guard.check()
    return grad_z.copy(), grad_h0.copy()


def check_case(
    emulation: KernelEmulation,
    rng: np.random.Generator,
    steps: int,
    batch: int,
    hidden: int,
    dtype,
    nonlinearity: str,
    reverse: bool,
    use_lengths: bool,
    forward: Plan,
    backward: Plan,
    gradients: tuple[tuple[bool, bool], ...] = ((True, True), (False, False)),
    policy: int = ASCENDING,
) -> None:
    """Forward against NumPy, then backward (from NumPy's states) for each combination of
    (grad_states given, grad_h_last given), the fibers scheduled by ``policy``."""
    z, w_hh, h0, lengths, grad_states, grad_h_last = _problem(
        rng, steps, batch, hidden, dtype, use_lengths
    )
    tol = _tolerance(dtype)
    expected = z.copy()
    REFERENCE.recurrence_forward(expected, w_hh, h0, lengths, nonlinearity, reverse)
    states = run_forward(emulation, forward, z, w_hh, h0, lengths, nonlinearity, reverse, policy)
    np.testing.assert_allclose(states, expected, **tol, err_msg=forward.name_expression)
    for with_states, with_last in gradients:
        gs = grad_states if with_states else None
        gl = grad_h_last if with_last else None
        expected_z, expected_h0 = REFERENCE.recurrence_backward(
            expected, w_hh, h0, gs, gl, lengths, nonlinearity, reverse
        )
        grad_z, grad_h0 = run_backward(
            emulation, backward, expected, w_hh, gs, gl, lengths, nonlinearity, reverse, policy
        )
        label = f"{backward.name_expression} grad_states={with_states} grad_h_last={with_last}"
        np.testing.assert_allclose(grad_z, expected_z, **tol, err_msg=label)
        np.testing.assert_allclose(grad_h0, expected_h0, **tol, err_msg=label)


ALL_GRADIENTS = ((True, True), (False, False), (True, False), (False, True))


# --------------------------------------------------------------- the planner's launches
@pytest.mark.parametrize(
    ("steps", "batch", "hidden", "dtype", "nonlinearity", "reverse", "use_lengths", "variant"),
    [
        (1, 1, 1, np.float64, "tanh", False, False, "batch"),
        (20, 3, 1, np.float32, "relu", True, True, "batch"),
        (20, 3, 7, np.float32, "tanh", False, True, "batch"),
        (20, 5, 7, np.float64, "relu", True, True, "batch"),
        (20, 1, 33, np.float32, "tanh", True, True, "batch"),
        (1, 5, 33, np.float32, "relu", False, False, "batch"),
        (20, 3, 33, np.float64, "tanh", False, True, "batch"),
        (12, 3, 64, np.float64, "tanh", True, True, "batch"),  # largest batch-sliced H (f64)
        (6, 3, 128, np.float32, "tanh", False, True, "batch"),  # largest batch-sliced H (f32)
        # the smallest H past the batch variant, then clusters of 2, 8 and 16 blocks
        (8, 3, 65, np.float64, "relu", False, True, "cluster"),
        (20, 1, 129, np.float32, "tanh", True, True, "cluster"),
        (5, 3, 128, np.float64, "tanh", True, True, "cluster"),
        (4, 2, 200, np.float32, "relu", True, True, "cluster"),
        (3, 2, 384, np.float32, "tanh", False, True, "cluster"),
        (3, 2, 257, np.float32, "relu", True, True, "grid"),  # no cluster fits: grid sync
        # without clusters (RNNCU_PERSISTENT_VARIANTS=batch,grid): the grid-synced kernels
        (8, 3, 65, np.float64, "relu", False, True, "grid"),  # smallest grid-synced H (f64)
        (20, 1, 129, np.float32, "tanh", True, True, "grid"),  # smallest grid-synced H (f32)
        (1, 3, 129, np.float32, "relu", False, False, "grid"),
        (5, 3, 128, np.float64, "tanh", True, True, "grid"),  # 16-byte gathers
        (4, 2, 200, np.float32, "relu", True, True, "grid"),  # 16-byte gathers
    ],
)
def test_planned_launch_matches_numpy(
    emulation: KernelEmulation,
    rng: np.random.Generator,
    steps: int,
    batch: int,
    hidden: int,
    dtype,
    nonlinearity: str,
    reverse: bool,
    use_lengths: bool,
    variant: str,
) -> None:
    # a "grid" case whose H a cluster could take is planned without clusters
    variants = ("batch", "grid") if variant == "grid" else persistent.VARIANTS
    forward = plan_forward(steps, batch, hidden, dtype, H200, variants)
    backward = plan_backward(steps, batch, hidden, dtype, H200, variants)
    assert forward is not None and backward is not None
    assert forward.variant == backward.variant == variant
    check_case(
        emulation,
        rng,
        steps,
        batch,
        hidden,
        dtype,
        nonlinearity,
        reverse,
        use_lengths,
        forward,
        backward,
        ALL_GRADIENTS,
        # blocks that meet at cluster or grid barriers race ahead of each other: a barrier
        # too narrow for the exchange (a block's own, where the cluster's is needed) then
        # lets a block read what its peers have not written yet
        ASCENDING if variant == "batch" else RUN_AHEAD,
    )


# ---------------------------------------------------------- every kernel instantiation
#: shapes whose candidate launches, together, use every registered name expression: H = 33
#: (scalar gathers) and 36 (16-byte gathers) give every KC its own ks; H = 17 keeps the
#: double KC = 8 blocks within the launch bounds of RB = 4 and 8; B = 3 and 5 pad rows for
#: RB > 1; the grid candidates split H over 2 to 8 blocks
CANDIDATE_SHAPES = [(3, 3, 33), (3, 3, 36), (2, 5, 17)]
#: larger clusters need larger H: shapes that reach the cluster instantiations the shapes
#: above do not (only those candidates run)
CLUSTER_SHAPES = {"float32": [(2, 3, 121), (2, 3, 241)], "float64": [(2, 3, 121), (2, 3, 25)]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_instantiation_matches_numpy(
    emulation: KernelEmulation, rng: np.random.Generator, dtype
) -> None:
    """Every launch shape the planner considers (not only the one it picks), so that every
    (variant, KC, RB[, CX]) instantiation runs, with ks from 1 to 32 and several unit
    slicings."""
    name = np.dtype(dtype).name
    seen: set[str] = set()
    count = 0
    shapes = [(shape, False) for shape in CANDIDATE_SHAPES]
    shapes += [(shape, True) for shape in CLUSTER_SHAPES[name]]
    for (steps, batch, hidden), only_new in shapes:
        forwards = persistent._candidates("forward", batch, hidden, name, H200)
        backwards = persistent._candidates("backward", batch, hidden, name, H200)
        assert len(forwards) == len(backwards)
        for forward, backward in zip(forwards, backwards, strict=True):
            assert dataclasses.replace(backward, direction="forward") == forward
            if only_new and (forward.variant != "cluster" or forward.name_expression in seen):
                continue
            nonlinearity, reverse = [("tanh", False), ("relu", True)][count % 2]
            check_case(
                emulation,
                rng,
                steps,
                batch,
                hidden,
                dtype,
                nonlinearity,
                reverse,
                True,
                forward,
                backward,
                [ALL_GRADIENTS[count % 4]],
            )
            seen.update((forward.name_expression, backward.name_expression))
            count += 1
    wanted = {
        n
        for variant in persistent.VARIANTS
        for n in persistent.all_name_expressions(variant)
        if f"<{'float' if name == 'float32' else 'double'}," in n
    }
    assert seen == wanted, sorted(wanted - seen)


@pytest.mark.parametrize("variant", persistent.VARIANTS)
def test_zero_steps(emulation: KernelEmulation, rng: np.random.Generator, variant) -> None:
    """T = 0: the forward launch changes nothing; the backward one still writes grad_h0
    (grad_h_last, or zeros)."""
    batch, hidden, dtype = 3, 36, np.float32
    plans = [
        p
        for p in persistent._candidates("backward", batch, hidden, "float32", H200)
        if p.variant == variant
    ]
    backward = plans[0]
    forward = dataclasses.replace(backward, direction="forward")
    z, w_hh, h0, _, _, grad_h_last = _problem(rng, 0, batch, hidden, dtype, False)
    assert run_forward(emulation, forward, z, w_hh, h0, None, "tanh", False).shape == z.shape
    for gl in (grad_h_last, None):
        grad_z, grad_h0 = run_backward(emulation, backward, z, w_hh, None, gl, None, "tanh", False)
        assert grad_z.shape == z.shape
        np.testing.assert_array_equal(grad_h0, np.zeros_like(h0) if gl is None else gl)


# -------------------------------------------------------------- determinism, alignment
@pytest.mark.parametrize(
    ("batch", "hidden", "variant"),
    [(5, 33, "batch"), (3, 129, "grid"), (3, 129, "cluster"), (2, 384, "cluster")],
)
def test_bitwise_identical_under_every_schedule(
    emulation: KernelEmulation, rng: np.random.Generator, batch, hidden, variant
) -> None:
    """The same launch, with the fibers resumed in ascending, descending and random orders
    after every barrier (a race between two threads would see the accesses in opposite
    orders; for the cluster kernels, a push into a peer's buffer racing that peer's reads),
    gives the same bits each time."""
    steps, dtype = 6, np.float32
    forward = plan_forward(steps, batch, hidden, dtype, H200, ("batch", variant))
    backward = plan_backward(steps, batch, hidden, dtype, H200, ("batch", variant))
    assert forward.variant == variant
    z, w_hh, h0, lengths, grad_states, grad_h_last = _problem(
        rng, steps, batch, hidden, dtype, True
    )
    results = []
    schedules = [(ASCENDING, 0), (DESCENDING, 0), (RANDOM, 1), (RANDOM, 2), (RANDOM, 3)]
    schedules.append((RUN_AHEAD, 0))
    for policy, seed in schedules:
        states = run_forward(emulation, forward, z, w_hh, h0, lengths, "tanh", True, policy, seed)
        grad_z, grad_h0 = run_backward(
            emulation, backward, states, w_hh, grad_states, grad_h_last, lengths, "tanh",
            True, policy, seed,
        )  # fmt: skip
        results.append(b"".join(a.tobytes() for a in (states, grad_z, grad_h0)))
    assert all(r == results[0] for r in results[1:])
    expected = z.copy()
    REFERENCE.recurrence_forward(expected, w_hh, h0, lengths, "tanh", True)
    np.testing.assert_allclose(states, expected, **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_views_that_are_not_16_byte_aligned(
    emulation: KernelEmulation, rng: np.random.Generator, dtype
) -> None:
    """C-contiguous states and h0 that start one element past a 16-byte boundary (a view such
    as flat[1:].reshape(T, B, H)) with H a multiple of the vector width: the grid kernels'
    gathers must not issue 16-byte loads there (the device would fault)."""
    steps, batch, hidden = 4, 3, 36
    forward = next(
        p
        for p in persistent._candidates("forward", batch, hidden, np.dtype(dtype).name, H200)
        if p.variant == "grid"
    )
    z, w_hh, h0, lengths, _, _ = _problem(rng, steps, batch, hidden, dtype, True)
    expected = z.copy()
    REFERENCE.recurrence_forward(expected, w_hh, h0, lengths, "tanh", False)
    states = run_forward(emulation, forward, z, w_hh, h0, lengths, "tanh", False, shift=1)
    np.testing.assert_allclose(states, expected, **_tolerance(dtype))


def test_plans_respect_the_grid_y_limit() -> None:
    """Row slices are gridDim.y, at most 65535 (the emulator refuses larger grids, as the
    device does): beyond 65535 * 8 rows there is no persistent plan."""
    for batch in (65535 * 8, 65535 * 8 + 1, 10**6):
        for dtype in ("float32", "float64"):
            for hidden in (1, 32, 64):
                for planner in (plan_forward, plan_backward):
                    plan = planner(10, batch, hidden, dtype, H200)
                    assert plan is None or plan.grid[1] <= 65535, (batch, dtype, hidden)
    assert plan_forward(10, 65535 * 8, 32, "float32", H200) is not None
    assert plan_forward(10, 65535 * 8 + 1, 32, "float32", H200) is None


# ----------------------------------------------------------------- the emulator itself
def test_emulator_reports_bad_launches(
    emulation: KernelEmulation, rng: np.random.Generator
) -> None:
    """The emulation is a checker, not only a calculator: launches that would fail or
    misbehave on the device raise with a diagnosis."""
    steps, batch, hidden, dtype = 3, 3, 36, np.float32
    z, w_hh, h0, _, _, _ = _problem(rng, steps, batch, hidden, dtype, False)
    grid = next(
        p
        for p in persistent._candidates("forward", batch, hidden, "float32", H200)
        if p.variant == "grid" and p.ks > 1
    )
    batch_plan = plan_forward(steps, batch, hidden, dtype, H200)

    def fails(plan: Plan, match: str) -> None:
        with pytest.raises(RuntimeError, match=match):
            run_forward(emulation, plan, z, w_hh, h0, None, "tanh", False)

    class NotCooperative(Plan):
        @property
        def cooperative(self) -> bool:
            return False

    fails(NotCooperative(**dataclasses.asdict(grid)), "not cooperative")
    fails(dataclasses.replace(batch_plan, shared_mem=batch_plan.shared_mem - 16), "wrote past")
    fails(dataclasses.replace(grid, threads=grid.threads + 16), "whole warps")
    limit = persistent.max_threads_for(4, grid.kc, grid.rb)
    fails(dataclasses.replace(grid, threads=2 * limit), "__launch_bounds__|1024")
    fails(dataclasses.replace(batch_plan, grid=(1, 70000)), "out of range")
    cluster = next(
        p
        for p in persistent._candidates("forward", batch, hidden, "float32", H200)
        if p.variant == "cluster"
    )
    fails(dataclasses.replace(cluster, grid=(cluster.cluster + 1, 3)), "multiple of the cluster")


def test_emulator_checks_cluster_operations(tmp_path) -> None:
    """The cluster primitives refuse what the device would fault on or never do: a rank
    outside the cluster, an address outside dynamic shared memory; and the cluster barrier
    spans exactly the cluster's blocks (each block sees its peers' pushes, never another
    cluster's)."""
    import ctypes

    from kernel_emulation import Compiler

    source = r"""
#include <cooperative_groups.h>
__global__ void __cluster_dims__(2, 1, 1) probe(int* out, int mode) {
    int* buf = reinterpret_cast<int*>(::emu::dynamic_smem());
    auto cluster = cooperative_groups::this_cluster();
    int local = 0;
    if (mode == 1) cluster.map_shared_rank(buf, 2u);            // rank outside the cluster
    if (mode == 2) cluster.map_shared_rank(&local, 0u);         // not shared memory
    const unsigned peer = cluster.block_rank() ^ 1u;
    cluster.map_shared_rank(buf, peer)[threadIdx.x] = 100 * blockIdx.x + threadIdx.x;
    cluster.sync();
    out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}
extern "C" int run(int* out, int mode, unsigned blocks) {
    return emu::launch(blocks, 1, 32, 32 * sizeof(int), false, 1024, 2, 3, 0,
                       [=] { probe(out, mode); });
}
"""
    lib = Compiler(tmp_path).build("cluster_probe", {"probe": source})
    lib.run.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
    out = np.full(4 * 32, -1, dtype=np.int32)
    assert lib.run(out.ctypes.data, 0, 4) == 0, lib.emu_last_error()
    peers = np.array([1, 0, 3, 2])  # blocks (0, 1) and (2, 3) are the clusters
    expected = (100 * peers[:, None] + np.arange(32)[None, :]).ravel()
    np.testing.assert_array_equal(out, expected)
    assert lib.run(out.ctypes.data, 1, 4) == 1
    assert b"rank 2 of a cluster of 2" in lib.emu_last_error()
    assert lib.run(out.ctypes.data, 2, 4) == 1
    assert b"outside the block's dynamic shared memory" in lib.emu_last_error()
    assert lib.run(out.ctypes.data, 0, 3) == 1
    assert b"not a multiple of the cluster width" in lib.emu_last_error()
