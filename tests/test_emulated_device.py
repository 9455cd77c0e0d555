"""The CuPy backend's own code, end to end, on an emulated device (tests/emulated_cupy.py): the
real ``CupyBackend`` and ``rnncu.backend.persistent`` (argument checks, step/persistent
dispatch, tiles, launch plans, pointers, ping-pong buffers) over a stand-in ``cupy`` whose
kernels are the real ``kernels/*.cu`` run by the host emulation, compared with the NumPy
backend. Outputs start as NaN bits (the stand-in's ``cupy.empty``), inputs are fresh random
draws. No GPU needed; skipped only where g++ is missing. The same comparisons on a real
device are tests/test_cupy_backend.py (marker ``gpu``)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from device_limits import H200
from emulated_cupy import LINALG, EmulatedDevice, SurfaceRecorder
from kernel_emulation import ASCENDING, DESCENDING, RANDOM, RUN_AHEAD, KernelEmulation
from rnn_reference import assert_same_nans, recurrence_cases, with_nans
from training_comparison import predict_on_both_backends, train_on_both_backends

from rnncu.backend import kernel_loader, persistent
from rnncu.backend.cupy_backend import (
    MAX_GRID_Y,
    STEP_TILE_ENV,
    CupyBackend,
    StepKernel,
    check_step_grid,
    choose_step_kernel,
    choose_tile,
    forced_step_kernel,
)
from rnncu.backend.numpy_backend import NumpyBackend

REFERENCE = NumpyBackend()
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
# (T, B, H): H in {1, 7, 33, 257}, B in {1, odd}; the emulation runs every CUDA thread as a
# fiber, so T stays short here (the device suite runs T = 2000)
SHAPES = [(1, 1, 1), (3, 1, 7), (4, 7, 33), (2, 3, 257)]
CONFIGS = [("tanh", False, False), ("relu", True, True), ("tanh", True, True)]


@pytest.fixture
def device(kernel_emulation: KernelEmulation, monkeypatch: pytest.MonkeyPatch):
    with EmulatedDevice(kernel_emulation).installed(monkeypatch) as installed:
        yield installed


def _inputs(rng: np.random.Generator, shape, dtype, use_lengths: bool) -> dict:
    steps, batch, hidden = shape
    lengths = None
    if use_lengths:
        lengths = rng.integers(0, steps + 1, batch).astype(np.int32)
        lengths[0] = steps
        if batch > 2:
            lengths[-1] = 0  # a row with no step: its state passes through
    data = {
        "z": rng.standard_normal(shape).astype(dtype),
        "w_hh": (rng.uniform(-1.0, 1.0, (hidden, hidden)) / np.sqrt(hidden)).astype(dtype),
        "h0": rng.standard_normal((batch, hidden)).astype(dtype),
        "lengths": lengths,
        "grad_states": rng.standard_normal(shape).astype(dtype),
        "grad_h_last": rng.standard_normal((batch, hidden)).astype(dtype),
    }
    if lengths is not None:  # the gradient at a padded output is ignored, even when not finite
        data["grad_states"][np.arange(steps)[:, None] >= lengths[None, :]] = np.nan
    return data


def _close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    rtol = TOL[expected.dtype]
    atol = rtol * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    assert type(actual) is np.ndarray and actual.dtype == expected.dtype, what
    assert not np.isnan(actual).any(), f"{what}: NaN left (an element was never written)"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _run(backend: CupyBackend, device: EmulatedDevice, data: dict, nonlinearity: str,
         reverse: bool, grads: tuple[bool, bool]) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Forward then backward on the emulated device; host copies of (h, grad_z, grad_h0)."""
    cp = device.module

    def dev(name: str):
        return None if data[name] is None else cp.asarray(data[name])

    states = dev("z")
    w_hh, h0, lengths = dev("w_hh"), dev("h0"), dev("lengths")
    backend.recurrence_forward(states, w_hh, h0, lengths, nonlinearity, reverse)
    grad_z, grad_h0 = backend.recurrence_backward(
        states, w_hh, h0,
        dev("grad_states") if grads[0] else None, dev("grad_h_last") if grads[1] else None,
        lengths, nonlinearity, reverse,
    )  # fmt: skip
    return cp.asnumpy(states), cp.asnumpy(grad_z), cp.asnumpy(grad_h0)


def _step_launches(device: EmulatedDevice) -> int:
    """Launches of either step kernel family (tiles for B > 8, the small-batch kernels)."""
    return sum(
        device.launches(f)
        for f in (kernel_loader.STEP_KERNEL_FILE, kernel_loader.MATVEC_KERNEL_FILE)
    )


def _reference(data: dict, nonlinearity: str, reverse: bool, grads: tuple[bool, bool]):
    states = data["z"].copy()
    REFERENCE.recurrence_forward(
        states, data["w_hh"], data["h0"], data["lengths"], nonlinearity, reverse
    )
    grad_z, grad_h0 = REFERENCE.recurrence_backward(
        states, data["w_hh"], data["h0"],
        data["grad_states"] if grads[0] else None, data["grad_h_last"] if grads[1] else None,
        data["lengths"], nonlinearity, reverse,
    )  # fmt: skip
    return states, grad_z, grad_h0


# ----------------------------------------------------------------------------- recurrence
@pytest.mark.parametrize("mode", ["step", "persistent"])
@pytest.mark.parametrize(
    ("dtype", "shape", "nonlinearity", "reverse", "use_lengths"),
    # H = 257 runs for float32 tanh only, to keep the emulated suite short
    recurrence_cases(SHAPES, CONFIGS, lambda shape: shape[2] == 257),
)
def test_recurrence_matches_numpy(
    device, rng, mode, dtype, shape, nonlinearity, reverse, use_lengths
) -> None:
    data = _inputs(rng, shape, dtype, use_lengths)
    grads = (True, not use_lengths)  # both gradients, or grad_h_last absent
    backend = CupyBackend(recurrence=mode)
    actual = _run(backend, device, data, nonlinearity, reverse, grads)
    expected = _reference(data, nonlinearity, reverse, grads)
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        _close(a, e, f"{mode} {what}")
    step_launches = _step_launches(device)
    persistent_launches = sum(
        device.launches(filename)
        for filename in (
            persistent.BATCH_KERNEL_FILE,
            persistent.CLUSTER_KERNEL_FILE,
            persistent.GRID_KERNEL_FILE,
        )
    )
    if mode == "step":  # one launch per step and direction, nothing persistent
        assert (step_launches, persistent_launches) == (2 * shape[0], 0)
    else:  # one launch per direction, no step kernel
        assert (step_launches, persistent_launches) == (0, 2)


@pytest.mark.parametrize("grads", [(False, False), (True, False), (False, True)])
def test_absent_gradients_are_zeros(device, rng, grads) -> None:
    data = _inputs(rng, (3, 5, 33), np.float64, use_lengths=True)
    for mode in ("step", "persistent"):
        actual = _run(CupyBackend(recurrence=mode), device, data, "tanh", False, grads)
        expected = _reference(data, "tanh", False, grads)
        for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
            _close(a, e, f"{mode} {what} with gradients {grads}")


def test_auto_uses_persistent_where_it_fits_and_steps_elsewhere(device, rng) -> None:
    fits = (2, 3, 33)
    data = _inputs(rng, fits, np.float32, use_lengths=False)
    assert persistent.supports(fits, np.float32)
    _run(CupyBackend(recurrence="auto"), device, data, "tanh", False, (True, True))
    assert _step_launches(device) == 0
    # float64 at B = 33 stops fitting on chip at H = 421 on an H200
    too_big = (1, 33, 421)
    assert not persistent.supports(too_big, np.float64)
    data = _inputs(rng, too_big, np.float64, use_lengths=True)
    actual = _run(CupyBackend(recurrence="auto"), device, data, "relu", True, (True, True))
    expected = _reference(data, "relu", True, (True, True))
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        _close(a, e, f"auto fallback {what}")
    assert _step_launches(device) == 2
    with pytest.raises(ValueError, match="persistent recurrence not applicable"):
        _run(CupyBackend(recurrence="persistent"), device, data, "relu", True, (True, True))


def _boundary(dtype, batch: int) -> int:
    """The smallest H whose (T = 1, B = batch) shape the persistent path does not take."""
    hidden = 1
    while persistent.supports((1, batch, hidden), dtype):
        hidden += 1
    return hidden


@pytest.mark.parametrize(("dtype", "batch"), [(np.float32, 33), (np.float64, 5)])
def test_auto_at_the_persistent_boundary(device, rng, dtype, batch: int) -> None:
    """The largest persistent H and the smallest step H in ``auto`` mode: both correct, each
    on the path the planner says."""
    limit = _boundary(dtype, batch)
    for hidden, expected_path in ((limit - 1, "persistent"), (limit, "step")):
        data = _inputs(rng, (1, batch, hidden), dtype, use_lengths=True)
        before = _step_launches(device)
        actual = _run(CupyBackend(recurrence="auto"), device, data, "tanh", False, (True, True))
        expected = _reference(data, "tanh", False, (True, True))
        for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
            _close(a, e, f"H = {hidden} ({expected_path}) {what}")
        step_launches = _step_launches(device) - before
        assert step_launches == (0 if expected_path == "persistent" else 2), hidden


@pytest.mark.parametrize(
    ("mode", "step_kernel"),
    [("step", ""), ("step", "32x32"), ("step", "64x64"), ("persistent", "")],
)
def test_every_schedule_gives_identical_bits(device, rng, monkeypatch, mode, step_kernel) -> None:
    """A race between threads changes results between schedule orders (kernel_emulation).
    B = 7: the step path's own choice is the small-batch kernel; two tiles are forced."""
    monkeypatch.setenv(STEP_TILE_ENV, step_kernel)
    data = _inputs(rng, (3, 7, 65), np.float32, use_lengths=True)
    scheduled = []  # the schedule each launch ran under: the one set on the device
    launch_raw = device.emulation.launch_raw

    def spy(*args, **kwargs):
        scheduled.append(args[6:8])
        return launch_raw(*args, **kwargs)

    monkeypatch.setattr(device.emulation, "launch_raw", spy)
    results = []
    for policy in (ASCENDING, DESCENDING, RANDOM, RUN_AHEAD):
        device.policy = policy
        device.seed = 7
        before = len(scheduled)
        results.append(_run(CupyBackend(recurrence=mode), device, data, "tanh", False, (1, 1)))
        assert set(scheduled[before:]) == {(policy, 7)}, (policy, scheduled[before:])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a.tobytes() == b.tobytes()


# ------------------------------------------------------------------------------ clusters
CLUSTER_SHAPE = (3, 3, 200)  # float32: a cluster of 8 blocks per row slice on an H200


def _launched(device: EmulatedDevice, filename: str) -> list[str]:
    return sorted(n for (f, n), k in device.kernels.items() if f == filename and k.launches)


def _check(device, rng, backend: CupyBackend, shape=CLUSTER_SHAPE) -> None:
    data = _inputs(rng, shape, np.float32, use_lengths=True)
    actual = _run(backend, device, data, "tanh", True, (True, True))
    expected = _reference(data, "tanh", True, (True, True))
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        _close(a, e, what)


def test_auto_runs_the_cluster_kernels_where_they_fit(device, rng) -> None:
    _check(device, rng, CupyBackend(recurrence="auto"))
    assert _launched(device, persistent.CLUSTER_KERNEL_FILE) == [
        "persistent_cluster_backward<float, 32, 1, 8>",
        "persistent_cluster_forward<float, 32, 1, 8>",
    ]
    assert device.launches(persistent.GRID_KERNEL_FILE) == 0
    assert _step_launches(device) == 0


def test_refused_cluster_sizes_fall_back_to_smaller_clusters_then_the_grid(device, rng) -> None:
    # the occupancy API refuses clusters of 8: the planner halves the size
    device.max_active_clusters = lambda plan: 0 if plan.cluster >= 8 else 64
    _check(device, rng, CupyBackend(recurrence="persistent"))
    launched = _launched(device, persistent.CLUSTER_KERNEL_FILE)
    assert launched and all(name.endswith(", 4>") for name in launched), launched
    # no cluster fits at all: the grid-synchronised kernels
    persistent._cluster_cache.clear()
    device.max_active_clusters = lambda plan: 0
    before = device.launches(persistent.CLUSTER_KERNEL_FILE)
    _check(device, rng, CupyBackend(recurrence="persistent"))
    assert device.launches(persistent.CLUSTER_KERNEL_FILE) == before
    assert device.launches(persistent.GRID_KERNEL_FILE) == 2


def test_fewer_resident_clusters_mean_more_rows_per_block(device, rng) -> None:
    # one 16-block cluster resident at a time (say): four row slices become one of 4 rows
    device.max_active_clusters = lambda plan: 1 if plan.cluster == 16 else 64
    _check(device, rng, CupyBackend(recurrence="persistent"), shape=(3, 4, 512))
    assert _launched(device, persistent.CLUSTER_KERNEL_FILE) == [
        "persistent_cluster_backward<float, 64, 4, 16>",
        "persistent_cluster_forward<float, 64, 4, 16>",
    ]


def test_variants_environment_variable(device, rng, monkeypatch) -> None:
    monkeypatch.setenv(persistent.VARIANTS_ENV, "batch,grid")
    _check(device, rng, CupyBackend(recurrence="persistent"))
    assert device.launches(persistent.CLUSTER_KERNEL_FILE) == 0
    assert device.launches(persistent.GRID_KERNEL_FILE) == 2
    # clusters only, and the occupancy API refuses them: forced persistent says why
    monkeypatch.setenv(persistent.VARIANTS_ENV, "cluster")
    device.max_active_clusters = lambda plan: 0
    with pytest.raises(ValueError, match="allows 0 resident clusters"):
        _check(device, rng, CupyBackend(recurrence="persistent"))
    # ... and auto takes the step kernels instead
    _check(device, rng, CupyBackend(recurrence="auto"))
    assert _step_launches(device) == 2 * CLUSTER_SHAPE[0]
    monkeypatch.setenv(persistent.VARIANTS_ENV, "grid,warp")
    with pytest.raises(ValueError, match="RNNCU_PERSISTENT_VARIANTS"):
        _check(device, rng, CupyBackend(recurrence="auto"))


def _refuse_launches(monkeypatch, prefix: str, error: str):
    """Make the driver refuse launches of kernels named ``prefix...`` with ``error``; returns
    the real launch, to put back."""
    from emulated_cupy import EmulatedKernel

    launch = EmulatedKernel.__call__

    def refuse(self, *args, **kwargs):
        if self.name.startswith(prefix):
            raise RuntimeError(f"{error} (emulated)")
        return launch(self, *args, **kwargs)

    monkeypatch.setattr(EmulatedKernel, "__call__", refuse)
    return launch


def test_a_failed_cluster_launch_turns_clusters_off(device, rng, monkeypatch) -> None:
    """A driver that refuses the launch itself (it reports a bad cluster configuration at
    once): a warning per size tried (8, then smaller), the same call runs on the grid
    kernels, later calls skip the refused sizes without a warning."""
    from emulated_cupy import EmulatedKernel

    launch = _refuse_launches(monkeypatch, "persistent_cluster_", "cudaErrorClusterOutOfResources")
    with pytest.warns(RuntimeWarning) as caught:
        _check(device, rng, CupyBackend(recurrence="persistent"))
    # the planned size first (8), then smaller ones while the planner still prefers them
    dropped = [str(w.message).rsplit("no longer use ", 1)[1] for w in caught]
    assert dropped[0] == "clusters of 8 blocks or more in this process", dropped
    sizes = [int(d.split()[2]) for d in dropped if d.startswith("clusters of")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), dropped
    assert all("the launch of persistent_cluster_forward<" in str(w.message) for w in caught)
    # attributed to the caller's line (here this file's _check), not to rnncu's internals
    assert {w.filename for w in caught} == {__file__}
    assert device.launches(persistent.GRID_KERNEL_FILE) == 2
    monkeypatch.setattr(EmulatedKernel, "__call__", launch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check(device, rng, CupyBackend(recurrence="persistent"))  # no warning, no cluster
    assert device.launches(persistent.GRID_KERNEL_FILE) == 4
    assert device.launches(persistent.CLUSTER_KERNEL_FILE) == 0


def test_a_refused_16_block_cluster_leaves_smaller_clusters_on(device, rng) -> None:
    """16-block clusters are non-portable: a driver that refuses them turns off that size
    only. The same call runs on what the planner picks without it (for this shape the grid
    kernels), and a shape planned with 8-block clusters still gets them, without a warning."""
    from emulated_cupy import EmulatedKernel

    launch = EmulatedKernel.__call__

    def refuse_16(self, *args, **kwargs):
        if self.name.startswith("persistent_cluster_") and self.name.endswith(", 16>"):
            raise RuntimeError("CUDA_ERROR_INVALID_CLUSTER_SIZE (emulated)")
        return launch(self, *args, **kwargs)

    shape = (3, 4, 512)  # clusters of 16 on an H200
    assert persistent.plan_forward(*shape, np.float32, H200).cluster == 16
    without_16 = dataclasses.replace(H200, max_cluster_size=8)
    fallback = persistent.plan_forward(*shape, np.float32, without_16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EmulatedKernel, "__call__", refuse_16)
        with pytest.warns(RuntimeWarning, match=r"no longer use clusters of 16 blocks or more"):
            _check(device, rng, CupyBackend(recurrence="persistent"), shape=shape)
        assert device.launches(fallback.filename) == 2
        assert _launched(device, persistent.CLUSTER_KERNEL_FILE) == []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _check(device, rng, CupyBackend(recurrence="persistent"))  # CLUSTER_SHAPE
    assert _launched(device, persistent.CLUSTER_KERNEL_FILE) == [
        "persistent_cluster_backward<float, 32, 1, 8>",
        "persistent_cluster_forward<float, 32, 1, 8>",
    ]


def test_a_sticky_cuda_error_is_raised_not_blamed_on_a_variant(device, rng, monkeypatch) -> None:
    """An illegal address in an earlier kernel is reported by the next launch: the context
    is broken, so the error surfaces instead of turning variants off one by one. A Python
    error at launch is a bug of ours: raised too, not a fallback."""

    class CUDADriverError(RuntimeError):
        status = 700  # CUDA_ERROR_ILLEGAL_ADDRESS

    from emulated_cupy import EmulatedKernel

    def broken_context(self, *args, **kwargs):
        raise CUDADriverError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access")

    def a_bug(self, *args, **kwargs):
        raise TypeError("bad argument 3 (a bug of ours, not the device's refusal)")

    for launch, error, match in (
        (broken_context, CUDADriverError, "ILLEGAL_ADDRESS"),
        (a_bug, TypeError, "bad argument 3"),
    ):
        monkeypatch.setattr(EmulatedKernel, "__call__", launch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(error, match=match):
                _check(device, rng, CupyBackend(recurrence="auto"))
        assert persistent._variants_failed == {} and persistent._largest_cluster == {}


def test_a_grid_kernel_that_cannot_be_loaded_turns_the_grid_variant_off(
    device, rng, monkeypatch
) -> None:
    """Older CuPy links a cooperative module against libcudadevrt, which an install from
    wheels alone lacks: loading the grid kernels fails. Auto warns once and runs the step
    kernels (same results); forced persistent says why it cannot."""
    monkeypatch.setenv(persistent.VARIANTS_ENV, "grid")  # the grid or nothing persistent

    def unlinkable(filename: str, name: str):
        if filename == persistent.GRID_KERNEL_FILE:
            raise RuntimeError("libcudadevrt.a not found (emulated)")
        return device.get_kernel(filename, name)

    # a context of its own: undone before the device fixture restores the real get_kernel
    # (the test's monkeypatch is undone after it, and would put the emulation's back)
    with monkeypatch.context() as patch:
        patch.setattr(kernel_loader, "get_kernel", unlinkable)
        with pytest.warns(RuntimeWarning, match=r"loading persistent_grid_forward<.*"
                          r"libcudadevrt.*no longer use the grid variant"):  # fmt: skip
            _check(device, rng, CupyBackend(recurrence="auto"))
        assert _step_launches(device) == 2 * CLUSTER_SHAPE[0]
        assert device.launches(persistent.GRID_KERNEL_FILE) == 0
        with pytest.raises(ValueError, match=r"\(variants none; failed here: grid\)"):
            _check(device, rng, CupyBackend(recurrence="persistent"))


def test_a_refused_cooperative_launch_falls_back(device, rng, monkeypatch) -> None:
    """A driver may refuse a cooperative launch the occupancy check allowed (MPS, an SM
    limit): the same call runs on the next variant, here the step kernels."""
    from emulated_cupy import EmulatedKernel

    monkeypatch.setenv(persistent.VARIANTS_ENV, "grid")
    launch = _refuse_launches(monkeypatch, "persistent_grid_", "cudaErrorCooperativeLaunchTooLarge")
    with pytest.warns(RuntimeWarning, match=r"the launch of persistent_grid_forward.*TooLarge"):
        _check(device, rng, CupyBackend(recurrence="auto"))
    assert _step_launches(device) == 2 * CLUSTER_SHAPE[0]
    monkeypatch.setattr(EmulatedKernel, "__call__", launch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the grid variant stays off
        _check(device, rng, CupyBackend(recurrence="auto"))
    assert device.launches(persistent.GRID_KERNEL_FILE) == 0


def test_operands_that_share_memory_with_states_are_refused(device, rng) -> None:
    """The kernels overwrite states while other blocks read h0 and w_hh: a view of states as
    either is a race on a device (the NumPy reference would not show it)."""
    cp = device.module
    states = cp.asarray(rng.standard_normal((3, 4, 4)).astype(np.float32))
    w_hh = cp.asarray(rng.standard_normal((4, 4)).astype(np.float32))
    h0 = cp.asarray(rng.standard_normal((4, 4)).astype(np.float32))
    for mode in ("step", "persistent", "auto"):
        backend = CupyBackend(recurrence=mode)
        with pytest.raises(ValueError, match=r"h0: shares memory with states, which the rec"):
            backend.recurrence_forward(states, w_hh, states[1], None, "tanh", False)
        with pytest.raises(ValueError, match=r"w_hh: shares memory with states"):
            backend.recurrence_forward(states, states[2], h0, None, "tanh", False)
    assert _step_launches(device) == 0
    # a non-contiguous view is copied before the launch: no overlap, and the result is right
    data = {"z": states, "w_hh": w_hh, "h0": states[0].T}
    expected = cp.asnumpy(states).copy()
    REFERENCE.recurrence_forward(
        expected, cp.asnumpy(w_hh), cp.asnumpy(data["h0"]).copy(), None, "tanh", False
    )
    CupyBackend(recurrence="step").recurrence_forward(states, w_hh, data["h0"], None, "tanh", False)
    _close(cp.asnumpy(states), expected, "states")


def test_zero_steps(device, rng) -> None:
    data = _inputs(rng, (0, 3, 7), np.float32, use_lengths=False)
    for mode in ("step", "persistent", "auto"):
        states, grad_z, grad_h0 = _run(CupyBackend(recurrence=mode), device, data, "tanh",
                                       False, (True, True))  # fmt: skip
        assert states.shape == grad_z.shape == (0, 3, 7)
        np.testing.assert_array_equal(grad_h0, data["grad_h_last"])


# ----------------------------------------------------------------------------- step tiles
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_step_kernel_matches_numpy_and_the_tiles_give_identical_bits(
    device, rng, monkeypatch, dtype
) -> None:
    """``RNNCU_STEP_TILE`` forces each tile of the step kernels and the small-batch kernel:
    each matches the NumPy backend and launches its own instantiation with its own block size
    (the emulation refuses a block larger than the kernel's ``__launch_bounds__``; a smaller
    one leaves NaN); the tiles all give the same bits (every output sums its products in
    ascending k, whatever the tile; the small-batch kernel sums in another fixed order)."""
    shape = (3, 9, 70)
    data = _inputs(rng, shape, dtype, use_lengths=True)
    expected = _reference(data, "tanh", True, (True, True))
    results = {}
    for label in [f"{t[0]}x{t[1]}" for t in kernel_loader.STEP_TILES] + ["matvec"]:
        monkeypatch.setenv(STEP_TILE_ENV, label)
        actual = _run(CupyBackend(recurrence="step"), device, data, "tanh", True, (True, True))
        for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
            _close(a, e, f"{label}: {what}")
        tile = next((t for t in kernel_loader.STEP_TILES if f"{t[0]}x{t[1]}" == label), None)
        for direction in ("forward", "backward"):
            if tile is None:  # B = 9 > 8: two blocks of 8 rows
                name = kernel_loader.matvec_name_expression(direction, np.dtype(dtype), "tanh", 8)
                filename = kernel_loader.MATVEC_KERNEL_FILE
            else:
                name = kernel_loader.step_name_expression(direction, np.dtype(dtype), "tanh", tile)
                filename = kernel_loader.STEP_KERNEL_FILE
            assert device.kernels[(filename, name)].launches == shape[0]
        results[label] = actual
    first = results.pop("64x64")
    results.pop("matvec")
    for label, other in results.items():
        for what, a, b in zip(("states", "grad_z", "grad_h0"), first, other, strict=True):
            assert a.tobytes() == b.tobytes(), f"tile {label}: {what} bits differ"


def test_bad_step_tile_environment_variable_names_it(device, rng, monkeypatch) -> None:
    monkeypatch.setenv(STEP_TILE_ENV, "48x48")
    with pytest.raises(ValueError, match=r"RNNCU_STEP_TILE: expected one of 64x64, .*'48x48'"):
        _run(CupyBackend(recurrence="step"), device, _inputs(rng, (2, 3, 7), np.float32, False),
             "tanh", False, (True, True))  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (STEP_TILE_ENV, "garbage", r"RNNCU_STEP_TILE: expected one of 64x64, .*'garbage'"),
        ("RNNCU_STEP_GRAPHS", "maybe", r"RNNCU_STEP_GRAPHS: expected 'on' or 'off'.*'maybe'"),
    ],
)
def test_step_variables_are_checked_where_the_persistent_path_runs(
    device, rng, monkeypatch, variable: str, value: str, message: str
) -> None:
    """They were read only where a shape fell back to the step path: a typo ran silently, or
    failed mid-run at the first shape that fell back."""
    monkeypatch.setenv(variable, value)
    inputs = _inputs(rng, (2, 3, 7), np.float32, False)
    with pytest.raises(ValueError, match=message):
        _run(CupyBackend(), device, inputs, "tanh", False, (True, True))
    assert device.launches(persistent.BATCH_KERNEL_FILE) == 0


@pytest.mark.parametrize(
    ("batch", "hidden", "tile"),
    [
        (256, 1024, (64, 32, 4, 4)),  # ANCHORS' large: 128 blocks for 132 SMs, one wave
        (512, 2048, (64, 64, 4, 4)),  # 2 waves of 64 x 64 = 4 of 64 x 32: the larger
        (64, 2048, (32, 32, 4, 4)),
        (16, 4096, (32, 32, 4, 4)),  # 64 x 32 would also be one wave, half of it padding
        (4, 2048, (16, 16, 1, 1)),
        (1, 1, (16, 16, 1, 1)),
        # 32-row tiles would need 93750 row blocks along grid y, above CUDA's 65535
        (3_000_000, 8, (64, 32, 4, 4)),
    ],
)
def test_choose_tile_on_an_h200(batch: int, hidden: int, tile) -> None:
    assert choose_tile(batch, hidden, 132) == tile
    assert -(-batch // tile[0]) <= MAX_GRID_Y


def test_a_batch_beyond_the_grid_limit_is_a_clear_error(device, monkeypatch) -> None:
    # the backend's own choice goes through the check (no array needed: B is all it takes)
    with pytest.raises(ValueError, match=r"B = 4194241 takes \d+ blocks along y"):
        CupyBackend(recurrence="step")._step_kernel(4194241, 8, np.dtype(np.float32))
    float32 = np.dtype(np.float32)
    assert CupyBackend(recurrence="step")._step_kernel(4194240, 8, float32).tile[0] == 64
    monkeypatch.setenv(STEP_TILE_ENV, "16x16")  # and a forced tile
    with pytest.raises(ValueError, match=r"with the 16x16 step kernel"):
        CupyBackend(recurrence="step")._step_kernel(16 * MAX_GRID_Y + 1, 8, np.dtype(np.float32))
    check_step_grid(StepKernel(tile=(64, 32, 4, 4)), 64 * MAX_GRID_Y, 8)  # the largest
    with pytest.raises(ValueError, match=r"B = 4194241 takes \d+ blocks along y with the "
                       r"\d+x\d+ step kernel, above CUDA's 65535; .* B <= 4194240"):  # fmt: skip
        check_step_grid(StepKernel(tile=choose_tile(4194241, 8, 132)), 4194241, 8)
    with pytest.raises(ValueError, match=r"with the 16x16 step kernel"):  # a forced tile
        check_step_grid(StepKernel(tile=(16, 16, 1, 1)), 16 * MAX_GRID_Y + 1, 8)


@pytest.mark.parametrize(
    ("batch", "hidden", "itemsize", "expected"),
    [
        (1, 2048, 4, StepKernel(rows=1)),
        (3, 1000, 8, StepKernel(rows=4)),
        (8, 1024, 4, StepKernel(rows=8)),
        # 8 rows of H = 8192 floats are 256 KB: halved until they fit the 227 KB per block
        (8, 8192, 4, StepKernel(rows=4)),
        # one row of H = 65536 doubles does not fit: the tiles take it
        (2, 65536, 8, StepKernel(tile=(32, 32, 4, 4))),
        (9, 1024, 4, StepKernel(tile=(16, 16, 1, 1))),
        (256, 1024, 4, StepKernel(tile=(64, 32, 4, 4))),
    ],
)
def test_choose_step_kernel_takes_the_small_batch_kernel_up_to_8_rows(
    batch: int, hidden: int, itemsize: int, expected: StepKernel
) -> None:
    assert choose_step_kernel(batch, hidden, itemsize, 132, 227 * 1024) == expected


def test_forced_small_batch_kernel_that_cannot_fit_says_why(monkeypatch) -> None:
    monkeypatch.setenv(STEP_TILE_ENV, "MatVec")
    assert forced_step_kernel(9, 1024, 4, 227 * 1024) == StepKernel(rows=8)
    with pytest.raises(ValueError, match=r"RNNCU_STEP_TILE=matvec: one row of H = 65536 takes "
                                         r"524288 bytes .* 232448 per block"):  # fmt: skip
        forced_step_kernel(2, 65536, 8, 227 * 1024)
    monkeypatch.setenv(STEP_TILE_ENV, "")
    assert forced_step_kernel(2, 65536, 8, 227 * 1024) is None


def test_small_batch_kernel_over_48_kb_raises_the_kernel_limit(device, rng) -> None:
    """8 rows of H = 1600 floats stage 51200 bytes: above the default 48 KB of dynamic shared
    memory, so the backend raises the kernel's limit (the emulated kernel refuses a launch
    beyond it, as the device does)."""
    data = _inputs(rng, (2, 8, 1600), np.float32, use_lengths=False)
    actual = _run(CupyBackend(recurrence="step"), device, data, "tanh", False, (True, True))
    expected = _reference(data, "tanh", False, (True, True))
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        _close(a, e, what)
    name = kernel_loader.matvec_name_expression("forward", np.dtype(np.float32), "tanh", 8)
    kernel = device.kernels[(kernel_loader.MATVEC_KERNEL_FILE, name)]
    assert kernel.launches == 2 and kernel.max_dynamic_shared_size_bytes == 8 * 1600 * 4


# --------------------------------------------------------------------------- bad arguments
def test_host_arrays_are_a_mixed_device_error(device, rng) -> None:
    data = _inputs(rng, (2, 3, 7), np.float32, use_lengths=False)
    cp = device.module
    backend = CupyBackend(recurrence="step")
    with pytest.raises(TypeError, match="mixed devices: w_hh is a numpy.ndarray"):
        backend.recurrence_forward(cp.asarray(data["z"]), data["w_hh"], cp.asarray(data["h0"]),
                                   None, "tanh", False)  # fmt: skip
    with pytest.raises(TypeError, match="lengths: expected int32"):
        backend.recurrence_forward(
            cp.asarray(data["z"]), cp.asarray(data["w_hh"]), cp.asarray(data["h0"]),
            cp.asarray(np.array([2, 1, 2], np.int64)), "tanh", False,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"h0: expected shape \(3, 7\)"):
        backend.recurrence_forward(cp.asarray(data["z"]), cp.asarray(data["w_hh"]),
                                   cp.asarray(data["h0"][:2]), None, "tanh", False)  # fmt: skip
    assert _step_launches(device) == 0


def test_non_contiguous_operands_are_copied_once(device, rng) -> None:
    """A transposed W_hh view is made contiguous before the step loop, not read strided."""
    data = _inputs(rng, (3, 2, 7), np.float64, use_lengths=False)
    cp = device.module
    w_t = cp.asarray(np.ascontiguousarray(data["w_hh"].T)).T  # a non-contiguous view of W_hh
    states = cp.asarray(data["z"])
    CupyBackend(recurrence="step").recurrence_forward(states, w_t, cp.asarray(data["h0"]),
                                                      None, "tanh", False)  # fmt: skip
    expected = _reference(data, "tanh", False, (True, True))[0]
    _close(cp.asnumpy(states), expected, "states from a strided w_hh")


# ---------------------------------------------------------------------------- layer level
@pytest.mark.parametrize("mode", ["step", "persistent"])
@pytest.mark.parametrize(
    ("dtype", "config", "use_lengths"),
    [
        ("float64", {"nonlinearity": "tanh", "num_layers": 2, "bidirectional": True}, True),
        ("float32", {"nonlinearity": "relu", "num_layers": 1, "batch_first": True}, False),
    ],
)
def test_layer_matches_numpy(device, rng, mode, dtype, config, use_lengths) -> None:
    import rnncu

    steps, batch, features, hidden = 5, 3, 4, 33
    backend = CupyBackend(recurrence=mode)
    cpu = rnncu.RNN(features, hidden, dtype=dtype, backend="numpy", seed=0, **config)
    emulated = rnncu.RNN(features, hidden, dtype=dtype, backend=backend, seed=1, **config)
    emulated.load_state_dict(cpu.state_dict())
    directions = 2 if config.get("bidirectional") else 1
    x_shape = (batch, steps, features) if config.get("batch_first") else (steps, batch, features)
    x = rng.standard_normal(x_shape).astype(dtype)
    h0 = rng.standard_normal((config["num_layers"] * directions, batch, hidden)).astype(dtype)
    lengths = rng.integers(0, steps + 1, batch) if use_lengths else None
    if lengths is not None:
        lengths[0] = steps
        if batch > 2:
            lengths[-1] = 0  # a row with no step: its state passes through
    cp = device.module

    out_ref, hn_ref = cpu(x, h0, lengths)
    out, hn = emulated(cp.asarray(x), cp.asarray(h0), lengths)
    _close(cp.asnumpy(out), out_ref, "out")
    _close(cp.asnumpy(hn), hn_ref, "h_n")

    dout = rng.standard_normal(out_ref.shape).astype(dtype)
    dhn = rng.standard_normal(hn_ref.shape).astype(dtype)
    dx_ref, dh0_ref = cpu.backward(dout, dhn)
    dx, dh0 = emulated.backward(cp.asarray(dout), cp.asarray(dhn))
    _close(cp.asnumpy(dx), dx_ref, "dx")
    _close(cp.asnumpy(dh0), dh0_ref, "dh0")
    assert set(emulated.grads) == set(cpu.grads)
    for name, grad in cpu.grads.items():
        _close(cp.asnumpy(emulated.grads[name]), grad, f"grads[{name!r}]")
    if mode == "step":
        assert _step_launches(device) > 0


def test_layer_rejects_host_input(device, rng) -> None:
    import rnncu

    layer = rnncu.RNN(3, 7, backend=CupyBackend(), seed=0)
    with pytest.raises(TypeError, match="mixed devices|cupy"):
        layer(rng.standard_normal((4, 2, 3)).astype(np.float32))


def test_the_numpy_backend_tells_device_arrays_from_its_own(device, rng) -> None:
    """The emulated device arrays subclass ndarray: the NumPy backend took them for its own,
    so the emulated suite could not see a device array reaching host code (real CuPy
    arrays are no ndarray, so this holds on a device by construction)."""
    import rnncu
    from rnncu import optim

    cp = device.module
    on_device = cp.asarray(rng.standard_normal((2, 2, 2)).astype(np.float32))
    host = rnncu.get_backend("numpy")
    assert not host.owns(on_device) and host.owns(np.ones(2))
    with pytest.raises(TypeError, match=r"^x: expected a numpy array .* got cupy\.\w+ float32"):
        rnncu.RNN(2, 4, backend="numpy", seed=0)(on_device)
    copied = host.to_numpy(on_device)
    assert type(copied) is np.ndarray
    np.testing.assert_array_equal(copied, cp.asnumpy(on_device))
    assert type(host.asarray(on_device)) is np.ndarray
    # the optimiser's state comes to the host as plain NumPy arrays
    head = rnncu.Linear(2, 3, backend=CupyBackend(), seed=0)
    head.backward(head(on_device[0]) * 0 + 1)
    opt = optim.Adam([head])
    opt.step()
    state = opt.state_dict()
    assert {type(value) for value in state.values()} == {np.ndarray}


def test_asarray_takes_a_device_object_on_the_device(device, monkeypatch) -> None:
    """An object CuPy reads in place (``__cuda_array_interface__``: a torch CUDA tensor) goes
    to ``cupy.asarray`` as it is; reading it on the host first, as lists are, would fail."""
    cp = device.module
    backend = CupyBackend()

    class OnDevice:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "version": 3}

        def __array__(self, *args, **kwargs):
            raise TypeError("can't convert cuda:0 device type tensor to numpy")

    taken = []
    original = cp.asarray

    def asarray(value, dtype=None):
        taken.append(value)
        return original(np.arange(2, dtype=np.float32) if isinstance(value, OnDevice) else value,
                        dtype=dtype)  # fmt: skip

    monkeypatch.setattr(cp, "asarray", asarray)
    out = backend.asarray(OnDevice(), dtype="float64")
    assert isinstance(taken[0], OnDevice) and out.dtype == np.float64
    np.testing.assert_array_equal(cp.asnumpy(out), [0.0, 1.0])


def test_optimizer_refuses_a_host_gradient_of_a_device_module(device, rng) -> None:
    """Checked before any update: a host gradient would copy to the device on every step."""
    import rnncu
    from rnncu import optim

    cp = device.module
    head = rnncu.Linear(3, 2, backend=CupyBackend(), seed=0)
    x = head.backend.asarray(rng.standard_normal((4, 3)), dtype="float32")
    head.backward(head(x) * 0 + 1)
    weight = cp.asnumpy(head.params["weight"])
    head.grads["bias"] = np.ones(2, np.float32)
    opt = optim.Adam([head])
    with pytest.raises(TypeError, match=r"of 'bias' of Linear: expected a cupy array \(the mod"):
        opt.step()
    np.testing.assert_array_equal(cp.asnumpy(head.params["weight"]), weight)
    assert opt.step_count == 0


# ------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("task", "seq", "dataset", "fields"),
    [
        ("classify", "rows", "digits", {}),
        ("generate", "rows", "digits", {}),
        ("generate", "rows", "moving-digits", {}),
        ("classify", "rows", "digits", {"val_fraction": 0.2, "patience": 1}),
        ("generate", "rows", "digits", {"val_fraction": 0.2}),
    ],
)
def test_training_matches_numpy(
    device, monkeypatch, task: str, seq: str, dataset: str, fields: dict
) -> None:
    """Two epochs of the trainer (tests/test_train_gpu.py on a real device): float64 weights
    and metrics on the emulated device equal the NumPy backend's to rounding."""
    results = train_on_both_backends(task, seq, monkeypatch, dataset, **fields)
    assert results["cupy"].model.backend.xp is device.module
    assert device.launches(persistent.BATCH_KERNEL_FILE) > 0


@pytest.mark.parametrize(
    ("dtype", "seq", "task"),
    [("float64", "rows", "classify"), ("float32", "pixels", "classify"),
     ("float32", "rows", "generate")],
)  # fmt: skip
def test_predictions_match_numpy(device, tmp_path, dtype: str, seq: str, task: str) -> None:
    """tests/test_train_gpu.py's predictions on the emulated device: a saved run loaded on
    the CuPy backend recognises the test images as the NumPy backend does."""
    results = predict_on_both_backends(tmp_path / "run", dtype, seq, task)
    assert isinstance(results["cupy"]["probabilities"], np.ndarray)  # host arrays
    assert device.launches(persistent.BATCH_KERNEL_FILE) > 0


# ------------------------------------------------------------------------------ benchmark
def _gpu_compare(monkeypatch: pytest.MonkeyPatch, shapes: dict[str, tuple]) -> Any:
    """benchmarks/gpu_compare.py, imported as ``gpu_compare_under_test``, timing ``shapes``
    with rnncu and the naive CuPy loop only."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_compare.py"
    spec = importlib.util.spec_from_file_location("gpu_compare_under_test", path)
    gpu_compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_compare)
    monkeypatch.setattr(gpu_compare, "SHAPES", shapes)
    # the peers need a real device; and torch, imported beside the stand-in cupy, fails half
    # way and leaves a broken module behind for later tests: both read as not installed
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "jax", None)
    return gpu_compare


def test_gpu_benchmark_runs_on_the_emulated_device(device, monkeypatch, capsys, tmp_path):
    """benchmarks/gpu_compare.py's own code (rnncu on both paths, the naive CuPy loop, the
    table) on a tiny shape, so the one device run is not lost to a bug in the script. The
    times measure the emulation, not a GPU; only their presence is checked."""
    gpu_compare = _gpu_compare(monkeypatch, {"tiny": (3, 5, 4, 33), "wide": (2, 3, 4, 200)})
    monkeypatch.setattr(gpu_compare, "TF32_SHAPES", ("tiny",))
    # whether each rnncu run changed CuPy's compute type (TF32) around its products: the
    # TF32 runner must, the float32 ones must not, RNNCU_MATMUL_PRECISION=high or not
    monkeypatch.setenv("RNNCU_MATMUL_PRECISION", "high")
    bench_rnncu, tf32_runs = gpu_compare.bench_rnncu, []

    def recorded_bench_rnncu(*args: Any, **kwargs: Any) -> Any:
        sets = LINALG.sets
        try:
            return bench_rnncu(*args, **kwargs)
        finally:
            tf32_runs.append((kwargs.get("matmul_precision"), LINALG.sets > sets))

    monkeypatch.setattr(gpu_compare, "bench_rnncu", recorded_bench_rnncu)

    done: list[int] = []
    rows = gpu_compare.run(["tiny", "wide"], 2, 1, progress=lambda rows: done.append(len(rows)))
    assert ("high", True) in tf32_runs
    assert all(ran == (precision == "high") for precision, ran in tf32_runs), tf32_runs
    assert done == [1, 2, 2]  # each shape, then the TF32 pass on tiny
    errors = capsys.readouterr().err
    assert "rnncu" not in errors and "naive_cupy" not in errors, errors
    tiny, wide = rows
    assert tiny["auto_path"].startswith("persistent_batch_forward<float")
    assert "rnncu_grid" not in tiny["ms"], "no clusters, no grid comparison"
    assert wide["auto_path"].startswith("persistent_cluster_forward<float, 32, 1, 8> grid (8, 3)")
    assert wide["grid_path"].startswith("persistent_grid_forward<float")
    for row in rows:
        runners = ["rnncu_step", "rnncu_step_graphs", "rnncu_auto"]
        runners += ["rnncu_grid"] if row is wide else []
        for runner in runners:
            for mode in ("fwd", "fwd+bwd"):
                assert row["ms"][runner][mode] > 0, (runner, mode)
        assert row["ms"]["naive_cupy"]["fwd"] > 0
        # every loop of the graph runner went through the cache: 2 timings of warm-up 1 and
        # 2 repeats, forward then forward and backward (the emulation has no memory pool to
        # hand out the same addresses again, so its loops are launched, not replayed)
        counts = row["graph_counts"]
        assert counts["replayed"] + counts["captured"] + counts["launched"] == 3 + 6, counts
        # the step path with every other step kernel forced, beside the one it picks (B <= 8:
        # the small-batch kernel)
        assert row["step_tile"] == "matvec"
        swept = {k for k in row["ms"] if k.startswith("step_") and "tf32" not in k}
        assert swept == {f"step_{t[0]}x{t[1]}" for t in kernel_loader.STEP_TILES}
        assert all(row["ms"][key]["fwd+bwd"] > 0 for key in swept)
    assert _step_launches(device) > 0
    table = gpu_compare.format_table(rows)
    assert "| tiny |" in table and "| wide |" in table and "us/step" in table
    assert "fwd+bwd ms by step kernel" in table
    assert "graphs us/step" in table and "| rnncu_step_graphs |" in table
    assert "| 64x64 | 64x32 | 32x32 | 16x16 | matvec |" in table
    # the opt-in TF32 runner on its shapes only (cuDNN's needs torch: absent here)
    for runner in ("rnncu_tf32", "rnncu_tf32_step"):
        assert all(tiny["ms"][runner][mode] > 0 for mode in ("fwd", "fwd+bwd")), runner
    assert "rnncu_tf32" not in wide["ms"] and "cudnn_tf32" not in tiny["ms"]
    # each TF32 step kernel forced on the TF32 shapes (B = 5 takes the small-batch kernel:
    # no pick to star), and its launches reached the TF32 file
    swept = {key for key in tiny["ms"] if key.startswith("step_tf32-")}
    assert swept == {f"step_tf32-{t[0]}x{t[1]}" for t in kernel_loader.TF32_STEP_TILES}
    assert all(tiny["ms"][key]["fwd+bwd"] > 0 for key in swept)
    assert "tf32_tile" not in tiny and not any(k.startswith("step_tf32-") for k in wide["ms"])
    assert device.launches(kernel_loader.TF32_STEP_KERNEL_FILE) > 0
    assert "by TF32 step kernel" in table
    assert "opt-in TF32" in table and "| tiny |" in table.split("opt-in TF32")[1]
    # the tables of a saved run (what gpu_check.sh prints when the benchmark was cut short)
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"rows": rows}))
    assert gpu_compare.main(["--table-from", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == table.strip()


def test_cli_train_resume_and_evaluate_on_the_device(device, tmp_path, capsys) -> None:
    """``rnncu train --backend cupy`` on the emulated device: 1 epoch, then ``--resume`` to 2,
    gives the checkpoint of 2 epochs straight on the NumPy backend (float64, to rounding);
    ``rnncu evaluate`` on the device agrees with the saved metrics."""
    import json

    from rnncu.checkpoint import load_checkpoint
    from rnncu.cli import main

    recipe = ["train", "--hidden", "16", "--dtype", "float64", "--seed", "5"]
    cpu_run, device_run = str(tmp_path / "cpu"), str(tmp_path / "device")
    assert main([*recipe, "--epochs", "2", "--backend", "numpy", "--out", cpu_run]) == 0
    assert main([*recipe, "--epochs", "1", "--backend", "cupy", "--out", device_run]) == 0
    assert main(["train", "--epochs", "2", "--backend", "cupy", "--resume", device_run]) == 0
    assert device.launches(persistent.BATCH_KERNEL_FILE) > 0

    expected, _ = load_checkpoint(tmp_path / "cpu" / "checkpoint.npz")
    actual, _ = load_checkpoint(tmp_path / "device" / "checkpoint.npz")
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-9, atol=1e-11, err_msg=name)
    saved = json.loads((tmp_path / "device" / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", device_run, "--backend", "cupy"]) == 0
    printed = capsys.readouterr().out
    assert f"{saved['test_accuracy']:.4f}" in printed, printed


def test_asarray_checks_an_overflowing_cast_on_the_host_only(device) -> None:
    """A host array is checked before its upload; a device array is cast as CuPy casts it
    (counting its infinities would synchronise)."""
    cp = device.module
    backend = CupyBackend()
    with pytest.raises(ValueError, match=r"^asarray: 2 value\(s\) beyond float32's range"):
        backend.asarray(np.array([2.0, -1e39, 1e300, np.inf]), dtype="float32")
    uploaded = backend.asarray(np.array([2.0, -3e38, np.inf]), dtype="float32")
    assert backend.owns(uploaded) and uploaded.dtype == np.float32
    np.testing.assert_array_equal(cp.asnumpy(uploaded), np.array([2.0, -3e38, np.inf], np.float32))
    with np.errstate(over="ignore"):  # the emulation casts with NumPy
        on_device = backend.asarray(cp.asarray(np.array([1.0, 1e300])), dtype="float32")
    np.testing.assert_array_equal(cp.asnumpy(on_device), np.array([1.0, np.inf], np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_kernels_take_a_w_hh_view_that_is_not_16_byte_aligned(device, rng, dtype) -> None:
    """W_hh a C-contiguous view one element past a 16-byte boundary (a slice of a packed
    parameter buffer) with H a multiple of the vector width: the small-batch kernels must
    not issue 16-byte loads from it (the device would fault)."""
    shape = (3, 5, 36)
    data = _inputs(rng, shape, dtype, use_lengths=True)
    cp = device.module
    hidden = shape[2]
    flat = cp.asarray(np.concatenate([np.zeros(1, dtype), data["w_hh"].ravel()]))
    w_view = flat[1:].reshape(hidden, hidden)
    assert w_view.ctypes.data % 16 != 0
    states = cp.asarray(data["z"])
    backend = CupyBackend(recurrence="step")
    backend.recurrence_forward(
        states, w_view, cp.asarray(data["h0"]), cp.asarray(data["lengths"]), "tanh", False
    )
    grad_z, grad_h0 = backend.recurrence_backward(
        states, w_view, cp.asarray(data["h0"]), cp.asarray(data["grad_states"]),
        cp.asarray(data["grad_h_last"]), cp.asarray(data["lengths"]), "tanh", False,
    )  # fmt: skip
    expected = _reference(data, "tanh", False, (True, True))
    actual = (cp.asnumpy(states), cp.asnumpy(grad_z), cp.asnumpy(grad_h0))
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        _close(a, e, what)
    assert _step_launches(device) == 2 * shape[0]


@pytest.mark.parametrize("mode", ["step", "persistent"])
@pytest.mark.parametrize("batch", [3, 40], ids=["small-batch", "tile"])
@pytest.mark.parametrize(("nonlinearity", "reverse"), [("tanh", False), ("relu", True)])
def test_nan_propagates_as_in_numpy(device, rng, mode, batch, nonlinearity, reverse) -> None:
    """A NaN in Z or in the output gradient reaches exactly the elements it reaches on the
    NumPy backend, through relu too (the persistent relu had turned it into 0), and never
    another row. The device suite has the same check (tests/test_cupy_backend.py); this one
    runs without a GPU."""
    data = {**with_nans(rng, 5, batch, 33, np.float32), "lengths": None}
    actual = _run(CupyBackend(recurrence=mode), device, data, nonlinearity, reverse, (True, True))
    expected = _reference(data, nonlinearity, reverse, (True, True))
    assert np.isnan(expected[0][:, 0]).any() and not np.isnan(expected[0][:, 1:]).any()
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        assert_same_nans(a, e, TOL[np.dtype(np.float32)], what)


# ----------------------------------------------------------------- settings, caches, graphs
def _persistent_launches(device: EmulatedDevice) -> int:
    return sum(
        device.launches(filename)
        for filename in (
            persistent.BATCH_KERNEL_FILE,
            persistent.CLUSTER_KERNEL_FILE,
            persistent.GRID_KERNEL_FILE,
        )
    )


def test_recurrence_environment_variable_chooses_the_path(device, rng, monkeypatch) -> None:
    """``RNNCU_RECURRENCE`` decides where the ``recurrence`` attribute is None: ``step`` runs
    a shape the persistent path takes on the step kernels, ``persistent`` refuses a shape it
    cannot take; the attribute, where set, wins over the variable."""
    fits = (2, 3, 33)
    assert persistent.supports(fits, np.float32)
    data = _inputs(rng, fits, np.float32, use_lengths=True)
    expected = _reference(data, "tanh", True, (True, True))
    monkeypatch.setenv("RNNCU_RECURRENCE", "step")
    actual = _run(CupyBackend(), device, data, "tanh", True, (True, True))
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        _close(a, e, f"RNNCU_RECURRENCE=step: {what}")
    assert (_step_launches(device), _persistent_launches(device)) == (2 * fits[0], 0)
    _run(CupyBackend(recurrence="auto"), device, data, "tanh", True, (True, True))
    assert (_step_launches(device), _persistent_launches(device)) == (2 * fits[0], 2)
    too_big = _inputs(rng, (1, 33, 421), np.float64, use_lengths=False)
    monkeypatch.setenv("RNNCU_RECURRENCE", "persistent")
    with pytest.raises(ValueError, match="persistent recurrence not applicable"):
        _run(CupyBackend(), device, too_big, "tanh", False, (True, True))


def test_forced_persistent_refuses_a_shape_it_cannot_take_in_each_direction(device, rng) -> None:
    """``recurrence="persistent"`` is the persistent path or an error in forward and in
    backward alike: neither direction falls back to the step kernels on its own."""
    cp = device.module
    shape = (1, 33, 421)  # float64 at B = 33 does not fit on chip at H = 421 (an H200)
    assert not persistent.supports(shape, np.float64)
    data = _inputs(rng, shape, np.float64, use_lengths=False)
    states, w_hh, h0 = (cp.asarray(data[k]) for k in ("z", "w_hh", "h0"))
    backend = CupyBackend(recurrence="persistent")
    with pytest.raises(ValueError, match="persistent recurrence not applicable"):
        backend.recurrence_forward(states, w_hh, h0, None, "tanh", False)
    np.testing.assert_array_equal(cp.asnumpy(states), data["z"])
    with pytest.raises(ValueError, match="persistent recurrence not applicable"):
        backend.recurrence_backward(
            states, w_hh, h0, cp.asarray(data["grad_states"]), None, None, "tanh", False
        )
    assert _step_launches(device) == 0


def test_step_graphs_environment_variable_turns_the_graph_cache_on(
    device, rng, monkeypatch
) -> None:
    """``RNNCU_STEP_GRAPHS=on`` sends the step loops through the graph cache where the
    ``step_graphs`` attribute is None (captured at the second call, replayed at the third);
    ``off``, or the attribute False, launches them one by one."""
    cp = device.module
    shape = (3, 5, 33)
    data = _inputs(rng, shape, np.float32, use_lengths=True)
    expected = _reference(data, "tanh", False, (True, True))[0]
    w_hh, h0, lengths = (cp.asarray(data[k]) for k in ("w_hh", "h0", "lengths"))
    states = cp.asarray(data["z"])
    backend = CupyBackend(recurrence="step")

    def forward() -> None:
        states[...] = cp.asarray(data["z"])
        backend.recurrence_forward(states, w_hh, h0, lengths, "tanh", False)
        _close(cp.asnumpy(states), expected, "states")

    monkeypatch.setenv("RNNCU_STEP_GRAPHS", "on")
    for _ in range(3):
        forward()
    assert backend.graphs.counts == {"replayed": 1, "captured": 1, "launched": 1, "dropped": 0}
    backend.step_graphs = False
    forward()
    monkeypatch.setenv("RNNCU_STEP_GRAPHS", "off")
    backend.step_graphs = None
    forward()
    assert backend.graphs.counts == {"replayed": 1, "captured": 1, "launched": 1, "dropped": 0}
    assert _step_launches(device) == 5 * shape[0]  # each call ran each step once


def test_one_backend_runs_each_activation_and_dtype_on_its_own_kernels(device, rng) -> None:
    """The backend caches its compiled kernels: one backend (``rnncu.get_backend("cupy")`` is
    one per process) running tanh and relu, float32 and float64, each on either kernel family,
    must launch the kernel of each, never the first one it compiled."""
    backend = CupyBackend(recurrence="step")
    for batch in (5, 9):  # the small-batch kernel, a tile
        for dtype, nonlinearity in (
            (np.float32, "tanh"),
            (np.float32, "relu"),
            (np.float64, "relu"),
            (np.float64, "tanh"),
        ):
            data = _inputs(rng, (3, batch, 33), dtype, use_lengths=True)
            actual = _run(backend, device, data, nonlinearity, False, (True, True))
            expected = _reference(data, nonlinearity, False, (True, True))
            for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
                _close(a, e, f"B = {batch} {np.dtype(dtype)} {nonlinearity}: {what}")


class _SteadyPool:
    """CuPy's memory pool in a training loop's steady state: the n-th allocation of a shape
    and dtype since :meth:`new_round` gets the same buffer each round (re-poisoned), where
    the emulation would allocate anew. Installed over the stand-in's ``empty``/``empty_like``."""

    def __init__(self, module, monkeypatch: pytest.MonkeyPatch) -> None:
        self._empty = module.empty
        self._buffers: dict[tuple, list] = {}
        self._taken: dict[tuple, int] = {}
        monkeypatch.setattr(module, "empty", self.empty)
        monkeypatch.setattr(module, "empty_like", self.empty_like)

    def new_round(self) -> None:
        self._taken.clear()

    def empty(self, shape, dtype=float):
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        key = (shape, np.dtype(dtype).str)
        index = self._taken.get(key, 0)
        self._taken[key] = index + 1
        buffers = self._buffers.setdefault(key, [])
        if index == len(buffers):
            buffers.append(self._empty(shape, dtype))
        buffer = buffers[index]
        buffer.view(np.ndarray).view(np.uint8)[...] = 0xFF  # NaN, as a fresh allocation
        return buffer

    def empty_like(self, prototype, dtype=None, shape=None):
        return self.empty(prototype.shape if shape is None else shape, dtype or prototype.dtype)


def test_a_step_graph_is_replayed_only_for_the_launches_it_recorded(
    device, rng, monkeypatch
) -> None:
    """A graph replays its loop with the pointers and settings it was captured with: a call
    that differs in any input of its launches (the activation, the direction, h0, lengths,
    the incoming gradients) must not replay it. With the pool handing back the same buffers
    (as CuPy's does in a training loop), a missing field in the key would replay a stale
    graph: silently wrong states or gradients. Every call is checked against NumPy."""
    cp = device.module
    pool = _SteadyPool(cp, monkeypatch)
    shape = (3, 9, 33)  # B = 9: a tile, which reads W_hh in place in both directions
    data = _inputs(rng, shape, np.float32, use_lengths=True)
    padding = np.isnan(data["grad_states"])
    host = {
        "h0": data["h0"],
        "h0 b": rng.standard_normal(data["h0"].shape).astype(np.float32),
        "lengths": data["lengths"],
        "lengths b": np.roll(data["lengths"], 1),
        "grad_states": data["grad_states"],
        "grad_states b": np.where(padding, np.nan, rng.standard_normal(shape)).astype(np.float32),
        "grad_h_last": data["grad_h_last"],
        "grad_h_last b": rng.standard_normal(data["grad_h_last"].shape).astype(np.float32),
    }
    dev = {name: cp.asarray(value) for name, value in host.items()}
    w_hh = cp.asarray(data["w_hh"])
    states = cp.asarray(data["z"])
    backend = CupyBackend(recurrence="step", step_graphs=True)

    def forward(nonlinearity="tanh", reverse=False, h0="h0", lengths="lengths") -> None:
        states[...] = cp.asarray(data["z"])
        backend.recurrence_forward(states, w_hh, dev[h0], dev[lengths], nonlinearity, reverse)
        expected = data["z"].copy()
        REFERENCE.recurrence_forward(
            expected, data["w_hh"], host[h0], host[lengths], nonlinearity, reverse
        )
        _close(cp.asnumpy(states), expected, f"states of {nonlinearity} {reverse} {h0} {lengths}")

    forward()
    forward()  # captured
    forward()  # replayed
    assert backend.graphs.counts == {"replayed": 1, "captured": 1, "launched": 1, "dropped": 0}
    forward(nonlinearity="relu")
    forward(reverse=True)
    forward(h0="h0 b")
    forward(lengths="lengths b")
    assert backend.graphs.counts["replayed"] == 1, backend.graphs.counts
    forward()

    host_states = cp.asnumpy(states)

    def backward(grad_states="grad_states", grad_h_last="grad_h_last", held=False) -> None:
        pool.new_round()
        if held:  # the last grad_z still referenced: this one gets another buffer
            pool.empty_like(states)
        grad_z, grad_h0 = backend.recurrence_backward(
            states, w_hh, dev["h0"], dev[grad_states], dev[grad_h_last], dev["lengths"],
            "tanh", False,
        )  # fmt: skip
        want_z, want_h0 = REFERENCE.recurrence_backward(
            host_states, data["w_hh"], data["h0"], host[grad_states], host[grad_h_last],
            data["lengths"], "tanh", False,
        )  # fmt: skip
        _close(cp.asnumpy(grad_z), want_z, f"grad_z of {grad_states} {grad_h_last}")
        _close(cp.asnumpy(grad_h0), want_h0, f"grad_h0 of {grad_states} {grad_h_last}")

    before = dict(backend.graphs.counts)
    backward()
    backward()  # captured: the pool handed out the same grad_z and dh buffers
    backward()  # replayed
    assert backend.graphs.counts["replayed"] - before["replayed"] == 1, backend.graphs.counts
    backward(grad_states="grad_states b")
    backward(grad_h_last="grad_h_last b")
    backward(held=True)
    assert backend.graphs.counts["replayed"] - before["replayed"] == 1, backend.graphs.counts


# ------------------------------------------------------------------- arguments, edge cases
def test_zero_steps_without_grad_h_last_give_zeros_and_never_alias_it(device, rng) -> None:
    """T = 0: grad_h0 is zeros where no grad_h_last came (not uninitialised memory), else a
    copy of it (the layer may accumulate into it; the caller's array must not change)."""
    cp = device.module
    data = _inputs(rng, (0, 3, 7), np.float32, use_lengths=False)
    for mode in ("step", "persistent", "auto"):
        backend = CupyBackend(recurrence=mode)
        states, w_hh, h0 = (cp.asarray(data[k]) for k in ("z", "w_hh", "h0"))
        grad_z, grad_h0 = backend.recurrence_backward(
            states, w_hh, h0, None, None, None, "tanh", False
        )
        assert grad_z.shape == (0, 3, 7), mode
        np.testing.assert_array_equal(cp.asnumpy(grad_h0), np.zeros((3, 7), np.float32), mode)
        grad_h_last = cp.asarray(data["grad_h_last"])
        _, grad_h0 = backend.recurrence_backward(
            states, w_hh, h0, None, grad_h_last, None, "tanh", False
        )
        np.testing.assert_array_equal(cp.asnumpy(grad_h0), data["grad_h_last"], mode)
        grad_h0 += 1.0
        np.testing.assert_array_equal(cp.asnumpy(grad_h_last), data["grad_h_last"], mode)


def test_operands_the_kernels_would_misread_are_refused(device, rng) -> None:
    """The step kernels take raw pointers: states that are not C-contiguous or not float32 /
    float64, an operand of another dtype than states, or lengths of another length than B
    would be read or written wrongly on a device. Each is refused before any launch, in
    forward and backward."""
    cp = device.module
    data = _inputs(rng, (3, 5, 7), np.float32, use_lengths=True)
    states, w_hh, h0, lengths = (cp.asarray(data[k]) for k in ("z", "w_hh", "h0", "lengths"))
    grad_states = cp.asarray(data["grad_states"])
    backend = CupyBackend(recurrence="step")
    strided = cp.asarray(np.repeat(data["z"], 2, axis=2))[:, :, ::2]
    assert strided.shape == states.shape and not strided.flags.c_contiguous
    with pytest.raises(ValueError, match=r"^states: must be C-contiguous"):
        backend.recurrence_forward(strided, w_hh, h0, lengths, "tanh", False)
    with pytest.raises(ValueError, match=r"^states: must be C-contiguous"):
        backend.recurrence_backward(strided, w_hh, h0, None, None, lengths, "tanh", False)
    with pytest.raises(TypeError, match=r"^states: expected float32 or float64, got float16"):
        backend.recurrence_forward(
            states.astype(np.float16), w_hh.astype(np.float16), h0.astype(np.float16), lengths,
            "tanh", False,
        )  # fmt: skip
    as_double = {"w_hh": w_hh.astype(np.float64), "h0": h0.astype(np.float64)}
    for name in ("w_hh", "h0"):
        args = {"w_hh": w_hh, "h0": h0, name: as_double[name]}
        message = rf"^{name}: expected dtype float32 \(that of states\), got float64"
        with pytest.raises(TypeError, match=message):
            backend.recurrence_forward(states, args["w_hh"], args["h0"], lengths, "tanh", False)
        with pytest.raises(TypeError, match=message):
            backend.recurrence_backward(
                states, args["w_hh"], args["h0"], None, None, lengths, "tanh", False
            )
    with pytest.raises(TypeError, match=r"^grad_states: expected dtype float32 \(that of st"):
        backend.recurrence_backward(
            states, w_hh, h0, grad_states.astype(np.float64), None, lengths, "tanh", False
        )
    for wrong in (lengths[:4], cp.asarray(np.append(data["lengths"], 1).astype(np.int32))):
        with pytest.raises(ValueError, match=r"^lengths: expected shape \(5,\), got \(\d,\)"):
            backend.recurrence_forward(states, w_hh, h0, wrong, "tanh", False)
        with pytest.raises(ValueError, match=r"^lengths: expected shape \(5,\), got \(\d,\)"):
            backend.recurrence_backward(states, w_hh, h0, None, None, wrong, "tanh", False)
    assert _step_launches(device) == 0
    np.testing.assert_array_equal(cp.asnumpy(states), data["z"])


@pytest.mark.parametrize("mode", ["step", "persistent"])
def test_strided_lengths_are_read_as_their_values(device, rng, mode) -> None:
    """lengths a strided view (every other element of a longer array) is copied before the
    launch, not read as if contiguous."""
    cp = device.module
    data = _inputs(rng, (4, 5, 33), np.float64, use_lengths=True)
    data["lengths"][1:4] = [1, 3, 2]  # neighbours differ, so a misread shows
    padding = np.arange(4)[:, None, None] >= data["lengths"][None, :, None]
    data["grad_states"] = np.where(padding, np.nan, rng.standard_normal((4, 5, 33)))
    interleaved = np.stack([data["lengths"], 4 - data["lengths"]], axis=1).ravel()
    interleaved = interleaved.astype(np.int32)
    lengths = cp.asarray(interleaved)[::2]
    assert not lengths.flags.c_contiguous
    np.testing.assert_array_equal(cp.asnumpy(lengths), data["lengths"])
    backend = CupyBackend(recurrence=mode)
    states = cp.asarray(data["z"])
    w_hh, h0 = cp.asarray(data["w_hh"]), cp.asarray(data["h0"])
    backend.recurrence_forward(states, w_hh, h0, lengths, "tanh", True)
    grad_z, grad_h0 = backend.recurrence_backward(
        states, w_hh, h0, cp.asarray(data["grad_states"]), cp.asarray(data["grad_h_last"]),
        lengths, "tanh", True,
    )  # fmt: skip
    expected = _reference(data, "tanh", True, (True, True))
    actual = (cp.asnumpy(states), cp.asnumpy(grad_z), cp.asnumpy(grad_h0))
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        _close(a, e, f"{mode} {what}")


def test_an_operand_overlapping_the_start_of_states_is_refused(device, rng) -> None:
    """An overlap is refused whichever array starts first: h0 or w_hh ending inside states
    (the tail of one buffer, the head of the other) races as much as one inside it."""
    cp = device.module
    batch, hidden = 2, 4
    flat = cp.asarray(rng.standard_normal(batch * hidden + 3 * batch * hidden).astype(np.float32))
    states = flat[batch * hidden - 1 : batch * hidden - 1 + 3 * batch * hidden].reshape(
        3, batch, hidden
    )
    h0 = flat[: batch * hidden].reshape(batch, hidden)  # its last element is states' first
    w_hh = flat[: hidden * hidden].reshape(hidden, hidden)  # ends inside states too
    assert states.flags.c_contiguous and h0.ctypes.data < states.ctypes.data
    fresh_w = cp.asarray(rng.standard_normal((hidden, hidden)).astype(np.float32))
    fresh_h0 = cp.asarray(rng.standard_normal((batch, hidden)).astype(np.float32))
    for mode in ("step", "persistent", "auto"):
        backend = CupyBackend(recurrence=mode)
        with pytest.raises(ValueError, match=r"^h0: shares memory with states"):
            backend.recurrence_forward(states, fresh_w, h0, None, "tanh", False)
        with pytest.raises(ValueError, match=r"^w_hh: shares memory with states"):
            backend.recurrence_forward(states, w_hh, fresh_h0, None, "tanh", False)
    assert _step_launches(device) == 0


# ----------------------------------------------------------------------------- rnncu info
def test_info_describes_the_device_and_compiles_for_its_architecture(device, monkeypatch) -> None:
    """``rnncu info`` on a device: ``describe()`` gives CUDA's versions as major.minor (12080
    is 12.8) and the settings in force; every kernel file is compiled for the device's own
    architecture (not the sm_90 fallback), a file that fails to compile is reported without
    hiding the others, and a kernel that spills only on loads or only on stores is flagged."""
    import types

    from rnncu.backend import diagnostics

    runtime = device.module.cuda.runtime
    properties = runtime.getDeviceProperties(0)
    monkeypatch.setattr(runtime, "getDeviceProperties", lambda i: {**properties, "major": 8})
    monkeypatch.setattr(runtime, "runtimeGetVersion", lambda: 12080)
    monkeypatch.setattr(runtime, "driverGetVersion", lambda: 13010)
    monkeypatch.setenv("RNNCU_RECURRENCE", "step")
    monkeypatch.setenv("RNNCU_STEP_GRAPHS", "on")
    described = CupyBackend().describe()
    assert (described["cuda_runtime"], described["cuda_driver"]) == ("12.8", "13.1")
    assert described["compute_capability"] == "8.0"
    assert (described["recurrence"], described["step_graphs"]) == ("step", "on")
    assert CupyBackend(recurrence="auto", step_graphs=False).describe()["step_graphs"] == "off"

    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.nvrtc = types.SimpleNamespace(getVersion=lambda: (12, 8))
    for name in ("cupy_backends", "cupy_backends.cuda"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs", libs)
    files = {"broken.cu": ["broken_kernel"], "fine.cu": ["loads<float>", "stores<float>"]}
    archs = []

    def nvrtc_compile(filename: str, names: list[str], arch: str):
        archs.append(arch)
        if filename == "broken.cu":
            raise RuntimeError("broken.cu(3): error: expected a ';'")
        return types.SimpleNamespace(
            registers={"loads<float>": 40, "stores<float>": 32},
            spills={"loads<float>": (0, 8), "stores<float>": (16, 0)},
        )

    monkeypatch.setattr(kernel_loader, "all_name_expressions", lambda: files)
    monkeypatch.setattr(kernel_loader, "nvrtc_compile", nvrtc_compile)
    info = diagnostics.collect_info()
    assert archs == ["sm_80", "sm_80"]
    kernels = info["kernels"]
    assert (kernels["arch"], kernels["nvrtc"]) == ("sm_80", "12.8")
    assert kernels["files"]["broken.cu"] == {
        "ok": False,
        "error": "broken.cu(3): error: expected a ';'",
    }
    assert kernels["files"]["fine.cu"]["kernels"]["loads<float>"] == {
        "registers": 40, "spill_stores": 0, "spill_loads": 8
    }  # fmt: skip
    text = diagnostics.format_info(info)
    assert "recurrence step" in text and "CUDA runtime 12.8" in text, text
    assert "broken.cu: FAILED" in text and "fine.cu: ok, 2 kernels" in text, text
    assert "SPILLS 0/8 B" in text and "SPILLS 16/0 B" in text, text


# ------------------------------------------------------------- what rnncu asks of real CuPy
def _keywords_accepted(function: Any) -> set[str] | None:
    """The keyword names ``function`` of the installed CuPy takes (None: any), from its
    signature, or where Cython compiled it, from the signature lines its docstring opens
    with, the most specific first (``RawKernel.__call__`` has ``**kwargs``, then its
    keywords)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        name = function.__name__.removeprefix("cupy_")  # a ufunc's name, as documented
        pattern = rf"^\s*(?:[\w.]+\.)?{re.escape(name)}\((.*)\)"
        lines = re.findall(pattern, function.__doc__ or "", re.M)
        assert lines, f"{function!r}: no signature to check keywords against"
        # "str path=None": Cython writes the parameter's type before its name
        signatures = [[(part.replace("\\", "").split("=")[0].split() or [""])[-1]
                       for part in line.split(",")] for line in lines]  # fmt: skip
        for names in signatures:
            if not any(name.startswith("**") for name in names):
                return {name for name in names if name.isidentifier()}
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}


def _assert_the_installed_cupy_has(real: Any, names: Any, keywords: Any) -> None:
    """Each recorded ``(path, attribute)`` is in ``real`` CuPy, and each recorded call's
    keywords (``(path, attribute, names)``; ``__init__`` for a class) are in its signature."""

    def located(path: str) -> Any:
        return functools.reduce(getattr, path.split("."), real) if path else real

    def label(path: str, name: str) -> str:
        return ".".join(("cupy", path, name) if path else ("cupy", name))

    # an attribute CuPy sets per instance (a Stream's ptr) is absent from the class: the
    # null stream is an instance that needs no device
    samples = {"cuda.Stream": real.cuda.Stream.null}
    missing = sorted(
        label(p, n)
        for p, n in names
        if not hasattr(located(p), n) and not hasattr(samples.get(p), n)
    )
    assert not missing, (
        f"reached on the emulated device, absent from CuPy {real.__version__}: {missing}"
    )
    refused = []
    for path, name, given in sorted(keywords):
        called = located(path) if name == "__init__" else getattr(located(path), name)
        accepted = _keywords_accepted(called) if given else None
        if accepted is not None and not set(given) <= accepted:
            refused.append(f"{label(path, name)}: {sorted(set(given) - accepted)}")
    assert not refused, f"keywords CuPy {real.__version__} does not take: {refused}"


def test_rnncu_reaches_only_what_the_installed_cupy_has(kernel_emulation, rng, monkeypatch,
                                                        tmp_path, capsys) -> None:  # fmt: skip
    """The stand-in answers to all of NumPy's namespace, with NumPy's keywords, and to every
    method of a NumPy array and of NumPy's Generator: CuPy has fewer of each. So every
    name the library and the GPU benchmark reach while they train, generate, run each
    recurrence path (graphs included), save, evaluate and benchmark on the emulated device
    is looked up in the installed CuPy, with the keywords of each call: a name only the
    emulation has would fail first on the one GPU run."""
    real = pytest.importorskip("cupy")
    if real.__version__ == "emulated":
        pytest.skip("CuPy is not installed: nothing to compare the stand-in with")
    import rnncu
    from rnncu.cli import main

    emulated = EmulatedDevice(kernel_emulation)
    recorder = SurfaceRecorder(("rnncu", "gpu_compare_under_test"))
    with recorder.recording(emulated, monkeypatch), emulated.installed(monkeypatch):
        cp = emulated.module
        train_on_both_backends("classify", "rows", monkeypatch)
        train_on_both_backends("generate", "rows", monkeypatch)
        for mode in ("step", "persistent"):
            # "high": CuPy's compute type changed around each product and restored
            backend = CupyBackend(recurrence=mode, step_graphs=True, matmul_precision="high")
            backend.describe()
            layer = rnncu.RNN(4, 33, num_layers=2, bidirectional=True, dropout=0.25,
                              backend=backend, dtype="float32", seed=0)  # fmt: skip
            x = cp.asarray(rng.standard_normal((5, 3, 4)).astype(np.float32))
            out, h_n = layer(x, None, np.array([5, 2, 0]))
            dout, dh_n = (rng.standard_normal(a.shape).astype(np.float32) for a in (out, h_n))
            layer.backward(cp.asarray(dout), cp.asarray(dh_n))
            states = cp.asarray(rng.standard_normal((3, 5, 33)).astype(np.float32))
            w_hh = cp.asarray(rng.uniform(-0.1, 0.1, (33, 33)).astype(np.float32))
            h0 = cp.asarray(rng.standard_normal((5, 33)).astype(np.float32))
            for _ in range(3):  # the step path captures the loop, then replays it
                backend.recurrence_forward(states, w_hh, h0, None, "tanh", False)
            if mode == "step":
                assert backend.graphs.counts["replayed"] == 1, backend.graphs.counts
        # 8 rows of H = 1600 floats staged: above 48 KB, the kernel's limit is raised first
        states = cp.asarray(rng.standard_normal((1, 8, 1600)).astype(np.float32))
        w_hh = cp.asarray(rng.uniform(-0.02, 0.02, (1600, 1600)).astype(np.float32))
        h0 = cp.asarray(rng.standard_normal((8, 1600)).astype(np.float32))
        CupyBackend(recurrence="step").recurrence_forward(states, w_hh, h0, None, "tanh", False)
        run = str(tmp_path / "run")
        assert main(["train", "--hidden", "16", "--epochs", "1", "--backend", "cupy",
                     "--out", run]) == 0  # fmt: skip
        assert main(["evaluate", "--checkpoint", run, "--backend", "cupy"]) == 0
        _gpu_compare(monkeypatch, {"tiny": (3, 5, 4, 33)}).run(["tiny"], 2, 1)
    capsys.readouterr()

    _assert_the_installed_cupy_has(real, recorder.names, recorder.keywords)
    # and the workload reached each part of the stand-in, so the checks above had work to do
    paths = {p for p, _ in recorder.names}
    for path in ("", "cuda", "cuda.runtime", "ndarray", "cuda.Stream", "cuda.graph.Graph",
                 "cuda.Event", "cuda.Device", "random.Generator", "RawKernel",
                 "_core._routines_linalg"):  # fmt: skip
        assert path in paths, (path, sorted(paths))
    assert ("RawKernel", "max_dynamic_shared_size_bytes") in recorder.names
    assert ("_core._routines_linalg", "set_compute_type") in recorder.names
    constructed = {path for path, name, _ in recorder.keywords if name == "__init__"}
    assert {"cuda.Event", "cuda.Device"} <= constructed, constructed


@pytest.mark.slow
def test_gpu_tests_reach_only_what_the_installed_cupy_has(kernel_emulation, tmp_path) -> None:
    """The gpu-marked tests call CuPy themselves (to make inputs, to read results back), and
    a name only the stand-in answers to would fail them first on the one GPU run, spending
    its minutes. So the first case of each gpu test function runs on the emulated device in
    a pytest of its own that records what rnncu and the tests reach, checked as above."""
    import subprocess
    from pathlib import Path

    real = pytest.importorskip("cupy")
    if real.__version__ == "emulated":
        pytest.skip("CuPy is not installed: nothing to compare the stand-in with")
    root = Path(__file__).resolve().parent.parent
    pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
    listing = subprocess.run([*pytest_run, "--emulated-device", "--collect-only", "tests"],
                             cwd=root, capture_output=True, text=True, check=True)  # fmt: skip
    first_cases: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        if "::" in line:
            first_cases.setdefault(line.split("[")[0], line.strip())
    assert len(first_cases) >= 20, listing.stdout  # tests/test_*gpu*.py, test_cupy_backend.py
    record = tmp_path / "surface.json"
    recording = ["--emulated-device", f"--record-cupy-surface={record}"]
    run = subprocess.run([*pytest_run, *recording, *first_cases.values()],
                         cwd=root, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    surface = json.loads(record.read_text(encoding="utf-8"))
    assert surface["tests"] == len(first_cases), (surface["tests"], len(first_cases))
    names = {tuple(name) for name in surface["names"]}
    keywords = {(path, name, tuple(given)) for path, name, given in surface["keywords"]}
    _assert_the_installed_cupy_has(real, names, keywords)
    # the tests' own reads are in the record, beside rnncu's
    callers = set(surface["callers"])
    assert {"test_cupy_backend", "test_persistent_gpu"} <= callers, callers
    assert any(caller.startswith("rnncu.") for caller in callers), callers
