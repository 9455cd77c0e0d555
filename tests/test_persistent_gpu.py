"""The persistent kernels against the NumPy reference, on a CUDA device (skipped elsewhere).

Every call writes into outputs poisoned with NaN first (every device allocation starts as NaN:
the conftest fixture, tests/device_memory.py), so a value the kernel forgot to write fails the
comparison; inputs are fresh random numbers from the ``rng`` fixture (never zeros).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rnn_reference import assert_same_nans, with_nans

from rnncu.backend.numpy_backend import NumpyBackend
from rnncu.backend.persistent import (
    DeviceLimits,
    persistent_backward,
    persistent_forward,
    plan_forward,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["batch,cluster,grid", "batch,grid"], ids=["auto", "no-clusters"])
def variants(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: with every variant the planner may pick, then without clusters, so
    that the grid-synchronised kernels keep running on the shapes clusters now take."""
    from rnncu.backend import persistent

    monkeypatch.setenv(persistent.VARIANTS_ENV, request.param)
    return request.param


TOLERANCES = {np.float32: (1e-5, 2e-5), np.float64: (1e-10, 1e-12)}  # rtol, atol
REFERENCE = NumpyBackend()

# (T, B, H) around each dispatch boundary on an H200 (see test_persistent_dispatch.py):
# H = 128 | 129 (batch -> cluster in float32), 64 | 65 (float64), odd sizes, clusters of 2
# to 16 blocks, and large-H grid.
SHAPES = [
    (5, 1, 1),
    (6, 7, 33),
    (4, 33, 64),
    (4, 3, 65),
    (5, 9, 127),
    (7, 256, 128),
    (4, 5, 129),
    (5, 3, 200),
    (3, 33, 257),
    (3, 4, 512),
    (3, 3, 1000),
    (2, 1, 1024),
    (2, 3, 1025),  # above the largest persistent H in float64 on an H200 (1024)
    (2, 3, 1056),  # the largest persistent H in float32 on an H200
    (2, 3, 1057),  # one above: the planner has no plan, the test says so and skips
]


def make_inputs(
    rng: np.random.Generator, shape: tuple[int, int, int], dtype: Any, with_lengths: bool
) -> dict[str, np.ndarray | None]:
    steps, batch, hidden = shape
    scale = 1.0 / np.sqrt(hidden)
    lengths = None
    if with_lengths:
        lengths = rng.integers(0, steps + 1, size=batch).astype(np.int32)
        lengths[0] = steps  # at least one full-length row
        if batch > 2:
            lengths[-1] = 0  # and one with no step: its state passes through
    inputs = {
        "z": rng.standard_normal(shape).astype(dtype),
        "w_hh": (rng.uniform(-scale, scale, (hidden, hidden))).astype(dtype),
        "h0": (0.5 * rng.standard_normal((batch, hidden))).astype(dtype),
        "grad_states": rng.standard_normal(shape).astype(dtype),
        "grad_h_last": rng.standard_normal((batch, hidden)).astype(dtype),
        "lengths": lengths,
    }
    if lengths is not None:  # the gradient at a padded output is ignored, even when not finite
        inputs["grad_states"][np.arange(steps)[:, None] >= lengths[None, :]] = np.nan
    return inputs


def run_forward(inputs: dict, nonlinearity: str, reverse: bool, force: bool = True) -> Any:
    import cupy

    states = cupy.asarray(inputs["z"])
    lengths = None if inputs["lengths"] is None else cupy.asarray(inputs["lengths"])
    ran = persistent_forward(
        states,
        cupy.asarray(inputs["w_hh"]),
        cupy.asarray(inputs["h0"]),
        lengths,
        nonlinearity,
        reverse,
        force=force,
    )
    assert ran
    return states


def skip_without_plan(shape: tuple[int, int, int], dtype: Any, variants: str) -> None:
    """Skip only a shape the planner rules out on this device: anything it plans must then
    launch (the tests pass force=True, which raises saying why, e.g. a failed occupancy
    query, where a plain call would return False and pass unnoticed)."""
    import cupy

    limits = DeviceLimits.from_device(cupy.cuda.Device().id)
    if plan_forward(*shape, np.dtype(dtype), limits, tuple(variants.split(","))) is None:
        pytest.skip(f"the planner has no persistent plan for {shape} {np.dtype(dtype).name}")


def reference_forward(inputs: dict, nonlinearity: str, reverse: bool) -> np.ndarray:
    states = inputs["z"].copy()
    REFERENCE.recurrence_forward(
        states, inputs["w_hh"], inputs["h0"], inputs["lengths"], nonlinearity, reverse
    )
    return states


def check(actual: Any, expected: np.ndarray, dtype: Any) -> None:
    import cupy

    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(cupy.asnumpy(actual), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_numpy(
    variants: str,
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    dtype: Any,
    nonlinearity: str,
    reverse: bool,
    with_lengths: bool,
) -> None:
    import cupy

    skip_without_plan(shape, dtype, variants)
    inputs = make_inputs(rng, shape, dtype, with_lengths)
    states = cupy.asarray(inputs["z"])
    lengths = None if inputs["lengths"] is None else cupy.asarray(inputs["lengths"])
    w_hh, h0 = cupy.asarray(inputs["w_hh"]), cupy.asarray(inputs["h0"])
    assert persistent_forward(states, w_hh, h0, lengths, nonlinearity, reverse, force=True)
    expected_states = reference_forward(inputs, nonlinearity, reverse)
    check(states, expected_states, dtype)

    # backward from the reference states so forward error does not leak into the check
    ref_states = expected_states
    # every combination of present and absent gradients: (None, dh_n) is a classifier's backward
    for with_states, with_last in ((True, True), (False, True), (True, False), (False, False)):
        grad_states = inputs["grad_states"] if with_states else None
        grad_h_last = inputs["grad_h_last"] if with_last else None
        expected_gz, expected_gh0 = REFERENCE.recurrence_backward(
            ref_states, inputs["w_hh"], inputs["h0"], grad_states, grad_h_last,
            inputs["lengths"], nonlinearity, reverse,
        )  # fmt: skip
        result = persistent_backward(
            cupy.asarray(ref_states), w_hh, h0,
            None if grad_states is None else cupy.asarray(grad_states),
            None if grad_h_last is None else cupy.asarray(grad_h_last),
            lengths, nonlinearity, reverse, force=True,
        )  # fmt: skip
        assert result is not None
        grad_z, grad_h0 = result
        check(grad_z, expected_gz, dtype)
        check(grad_h0, expected_gh0, dtype)


@pytest.mark.parametrize("shape", [(28, 256, 128), (64, 128, 128), (20, 4, 1024), (12, 64, 512)])
def test_anchor_like_shapes_float32(
    variants: str, rng: np.random.Generator, shape: tuple[int, int, int]
) -> None:
    import cupy

    inputs = make_inputs(rng, shape, np.float32, with_lengths=True)
    states = run_forward(inputs, "tanh", False)
    expected = reference_forward(inputs, "tanh", False)
    check(states, expected, np.float32)
    grad_z, grad_h0 = persistent_backward(
        cupy.asarray(expected), cupy.asarray(inputs["w_hh"]), cupy.asarray(inputs["h0"]),
        cupy.asarray(inputs["grad_states"]), cupy.asarray(inputs["grad_h_last"]),
        cupy.asarray(inputs["lengths"]), "tanh", False, force=True,
    )  # fmt: skip
    ref_gz, ref_gh0 = REFERENCE.recurrence_backward(
        expected, inputs["w_hh"], inputs["h0"], inputs["grad_states"], inputs["grad_h_last"],
        inputs["lengths"], "tanh", False,
    )  # fmt: skip
    check(grad_z, ref_gz, np.float32)
    check(grad_h0, ref_gh0, np.float32)


def test_backward_outputs_are_fully_written(rng: np.random.Generator) -> None:
    """grad_z and grad_h0 are fresh allocations, NaN until written (the conftest fixture), so
    an unwritten element shows up as NaN, three times over (the pool's blocks are reused)."""
    import cupy

    shape = (6, 7, 33)
    inputs = make_inputs(rng, shape, np.float32, with_lengths=True)
    states = cupy.asarray(reference_forward(inputs, "tanh", False))
    for _ in range(3):
        grad_z, grad_h0 = persistent_backward(
            states, cupy.asarray(inputs["w_hh"]), cupy.asarray(inputs["h0"]), None, None,
            cupy.asarray(inputs["lengths"]), "tanh", False, force=True,
        )  # fmt: skip
        assert not bool(cupy.isnan(grad_z).any()) and not bool(cupy.isnan(grad_h0).any())


@pytest.mark.parametrize(
    "dtype,nonlinearity,reverse", [(np.float32, "tanh", False), (np.float64, "relu", True)]
)
@pytest.mark.parametrize("shape", [(30, 64, 128), (10, 8, 700), (40, 8, 200), (20, 32, 512)])
def test_bit_identical_over_repeats(
    variants: str,
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    dtype: Any,
    nonlinearity: str,
    reverse: bool,
    _device_for_gpu_tests: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten repeats on a device. On the emulation (whose schedule is fixed per launch, so
    plain repeats would replay one interleaving) each repeat takes another schedule order:
    ascending, descending, a random permutation and run-ahead (tests/kernel_emulation.py),
    under which a race changes the bits."""
    import cupy

    skip_without_plan(shape, dtype, variants)
    inputs = make_inputs(rng, shape, dtype, with_lengths=True)
    schedules: list[tuple[int, int] | None] = [None] * 10
    if _device_for_gpu_tests is not None:
        from kernel_emulation import ASCENDING, DESCENDING, RANDOM, RUN_AHEAD

        schedules = [(ASCENDING, 0), (DESCENDING, 0), (RANDOM, 7), (RUN_AHEAD, 0)]
    forward_results, backward_results = [], []
    for schedule in schedules:
        if schedule is not None:
            monkeypatch.setattr(type(_device_for_gpu_tests), "policy", schedule[0])
            monkeypatch.setattr(type(_device_for_gpu_tests), "seed", schedule[1])
        states = cupy.full(shape, np.nan, dtype)
        states[...] = cupy.asarray(inputs["z"])
        assert persistent_forward(
            states, cupy.asarray(inputs["w_hh"]), cupy.asarray(inputs["h0"]),
            cupy.asarray(inputs["lengths"]), nonlinearity, reverse, force=True,
        )  # fmt: skip
        forward_results.append(cupy.asnumpy(states))
        grad_z, grad_h0 = persistent_backward(
            states, cupy.asarray(inputs["w_hh"]), cupy.asarray(inputs["h0"]),
            cupy.asarray(inputs["grad_states"]), cupy.asarray(inputs["grad_h_last"]),
            cupy.asarray(inputs["lengths"]), nonlinearity, reverse, force=True,
        )  # fmt: skip
        backward_results.append((cupy.asnumpy(grad_z), cupy.asnumpy(grad_h0)))
    for states in forward_results[1:]:
        assert states.tobytes() == forward_results[0].tobytes()
    for grad_z, grad_h0 in backward_results[1:]:
        assert grad_z.tobytes() == backward_results[0][0].tobytes()
        assert grad_h0.tobytes() == backward_results[0][1].tobytes()


def test_zero_steps() -> None:
    import cupy

    states = cupy.empty((0, 3, 16), np.float32)
    w_hh = cupy.ones((16, 16), np.float32)
    h0 = cupy.ones((3, 16), np.float32)
    assert persistent_forward(states, w_hh, h0, None, "tanh", False, force=True)
    grad_h_last = cupy.arange(48, dtype=np.float32).reshape(3, 16) + 1
    grad_z, grad_h0 = persistent_backward(
        states, w_hh, h0, None, grad_h_last, None, "tanh", False, force=True
    )
    assert grad_z.shape == (0, 3, 16)
    np.testing.assert_array_equal(cupy.asnumpy(grad_h0), cupy.asnumpy(grad_h_last))


def test_force_on_unsupported_shape_raises() -> None:
    import cupy

    states = cupy.zeros((2, 4, 4096), np.float32)
    w_hh = cupy.zeros((4096, 4096), np.float32)
    h0 = cupy.zeros((4, 4096), np.float32)
    assert persistent_forward(states, w_hh, h0, None, "tanh", False) is False
    with pytest.raises(ValueError, match="not applicable"):
        persistent_forward(states, w_hh, h0, None, "tanh", False, force=True)
    assert persistent_backward(states, w_hh, h0, None, None, None, "tanh", False) is None
    with pytest.raises(ValueError, match="not applicable"):
        persistent_backward(states, w_hh, h0, None, None, None, "tanh", False, force=True)
    # wrong dtype / layout are refused the same way
    with pytest.raises(ValueError, match="float32 or float64"):
        persistent_forward(
            cupy.zeros((2, 4, 8), np.float16), cupy.zeros((8, 8), np.float16),
            cupy.zeros((4, 8), np.float16), None, "tanh", False, force=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="C-contiguous"):
        persistent_forward(
            cupy.zeros((2, 8, 4), np.float32).transpose(0, 2, 1), cupy.zeros((8, 8), np.float32),
            cupy.zeros((4, 8), np.float32), None, "tanh", False, force=True,
        )  # fmt: skip


def test_device_limits_and_occupancy_agree_with_the_plan() -> None:
    """The planner's occupancy estimate must never exceed the occupancy API's answer, or a
    cooperative launch would be refused."""
    import cupy

    from rnncu.backend import persistent

    device_id = cupy.cuda.runtime.getDevice()
    limits = DeviceLimits.from_device(device_id)
    assert limits.sm_count > 0 and limits.smem_per_block_optin >= 48 * 1024
    # (the cluster plans are checked by cuOccupancyMaxActiveClusters: the test below)
    for shape in [(100, 64, 512), (1000, 4, 1024), (512, 32, 512), (28, 256, 128)]:
        plan = plan_forward(*shape, "float32", limits, "batch,grid")
        assert plan is not None
        kernel = persistent._kernel(plan, device_id)
        if plan.shared_mem > 48 * 1024:
            kernel.max_dynamic_shared_size_bytes = plan.shared_mem
        actual = persistent._occupancy(kernel, plan.threads, plan.shared_mem)
        assert actual >= plan.blocks_per_sm, (shape, plan, actual)


def test_cluster_occupancy_query_answers() -> None:
    """cuOccupancyMaxActiveClusters through ctypes (CuPy does not wrap it) must answer for
    portable and non-portable cluster sizes; a silent 0 would quietly turn clusters off."""
    import cupy

    from rnncu.backend import persistent

    device_id = cupy.cuda.runtime.getDevice()
    limits = DeviceLimits.from_device(device_id)
    if not limits.cluster_launch:
        pytest.skip("this device has no thread-block clusters")
    answers = {}
    for shape in [(10, 3, 200), (100, 64, 512), (512, 32, 512)]:
        plan = plan_forward(*shape, "float32", limits, "cluster")
        assert plan is not None, shape
        kernel = persistent._kernel(plan, device_id)
        answers[shape] = (plan.cluster, persistent._prepare_cluster(kernel, plan, device_id))
    print("\ncluster size, resident clusters:", answers)
    assert all(count >= 1 for _, count in answers.values()), answers


@pytest.mark.parametrize("shape", [(5, 3, 33), (5, 3, 200), (3, 3, 1000)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nan_propagates_as_in_numpy(
    variants: str, rng: np.random.Generator, shape: tuple[int, int, int], nonlinearity: str
) -> None:
    """A NaN in Z or the output gradient reaches exactly what it reaches in NumPy, in each
    variant (block, cluster and grid sizes of H). The persistent relu had turned NaN into 0
    (x > 0 ? x : 0), where NumPy and the step kernels keep it."""
    import cupy

    skip_without_plan(shape, np.float32, variants)
    inputs = with_nans(rng, *shape, np.float32)
    inputs["lengths"] = None
    expected = reference_forward(inputs, nonlinearity, False)
    assert np.isnan(expected[:, 0]).any() and not np.isnan(expected[:, 1:]).any()
    assert_same_nans(cupy.asnumpy(run_forward(inputs, nonlinearity, False)), expected, 1e-5, "h")
    want_z, want_h0 = REFERENCE.recurrence_backward(
        expected, inputs["w_hh"], inputs["h0"], inputs["grad_states"], inputs["grad_h_last"],
        None, nonlinearity, False,
    )  # fmt: skip
    result = persistent_backward(
        cupy.asarray(expected), cupy.asarray(inputs["w_hh"]), cupy.asarray(inputs["h0"]),
        cupy.asarray(inputs["grad_states"]), cupy.asarray(inputs["grad_h_last"]), None,
        nonlinearity, False, force=True,
    )  # fmt: skip
    assert result is not None
    assert_same_nans(cupy.asnumpy(result[0]), want_z, 1e-5, "grad_z")
    assert_same_nans(cupy.asnumpy(result[1]), want_h0, 1e-5, "grad_h0")
