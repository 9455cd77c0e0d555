"""The TF32 step kernels (kernels/rnn_step_tf32.cu): under ``matmul_precision="high"``, on a
device of compute capability 8.0 or later, the step path runs each step's float32 product
on the tensor cores, in TF32. On the emulated device (tests/emulated_cupy.py, whose
``<mma.h>`` stand-in is tests/kernel_emulation.py's): each step of each tile against a model
of that step written here (the operands rounded to TF32, everything else float32), whole
sequences against float64, the kernel chosen where it should be and nowhere else, and the
same bits under every schedule order. The same on a real GPU:
tests/test_cupy_backend.py::test_tf32_step_kernels_stay_near_float64."""

from __future__ import annotations

import numpy as np
import pytest
from emulated_cupy import EmulatedDevice, to_tf32
from kernel_emulation import ASCENDING, DESCENDING, RANDOM, RUN_AHEAD, KernelEmulation

import rnncu
from rnncu.backend import cupy_backend, kernel_loader
from rnncu.backend.base import MATMUL_PRECISION_ENV
from rnncu.backend.cupy_backend import (
    MAX_GRID_Y,
    STEP_TILE_ENV,
    CupyBackend,
    StepKernel,
    choose_tf32_tile,
)
from rnncu.backend.numpy_backend import NumpyBackend

TF32_FILE = kernel_loader.TF32_STEP_KERNEL_FILE
FMA_FILES = (kernel_loader.STEP_KERNEL_FILE, kernel_loader.MATVEC_KERNEL_FILE)


@pytest.fixture
def device(kernel_emulation: KernelEmulation, monkeypatch: pytest.MonkeyPatch):
    with EmulatedDevice(kernel_emulation).installed(monkeypatch) as installed:
        yield installed


def _inputs(rng: np.random.Generator, shape: tuple[int, int, int], use_lengths: bool) -> dict:
    """float32 inputs of one recurrence: fresh draws; with lengths, a full row, a row of no
    step, and NaN gradients at the padded steps (which must be ignored)."""
    steps, batch, hidden = shape
    lengths = None
    if use_lengths:
        lengths = rng.integers(0, steps + 1, batch).astype(np.int32)
        lengths[0] = steps
        lengths[-1] = 0
    data = {
        "z": rng.standard_normal(shape).astype(np.float32),
        "w_hh": (rng.uniform(-1.0, 1.0, (hidden, hidden)) / np.sqrt(hidden)).astype(np.float32),
        "h0": rng.standard_normal((batch, hidden)).astype(np.float32),
        "lengths": lengths,
        "grad_states": rng.standard_normal(shape).astype(np.float32),
        "grad_h_last": rng.standard_normal((batch, hidden)).astype(np.float32),
    }
    if lengths is not None:
        data["grad_states"][np.arange(steps)[:, None] >= lengths[None, :]] = np.nan
    return data


def _run(backend: CupyBackend, device: EmulatedDevice, data: dict, nonlinearity: str,
         reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Forward then backward on the emulated device: host copies of (h, grad_z, grad_h0)."""
    cp = device.module
    states = cp.asarray(data["z"])
    w_hh, h0 = cp.asarray(data["w_hh"]), cp.asarray(data["h0"])
    lengths = None if data["lengths"] is None else cp.asarray(data["lengths"])
    backend.recurrence_forward(states, w_hh, h0, lengths, nonlinearity, reverse)
    grad_z, grad_h0 = backend.recurrence_backward(
        states, w_hh, h0, cp.asarray(data["grad_states"]), cp.asarray(data["grad_h_last"]),
        lengths, nonlinearity, reverse,
    )  # fmt: skip
    return cp.asnumpy(states), cp.asnumpy(grad_z), cp.asnumpy(grad_h0)


def _valid(data: dict, t: int) -> np.ndarray:
    """(B, 1): whether step t is a real step of each row."""
    lengths = data["lengths"]
    batch = data["h0"].shape[0]
    return np.ones((batch, 1), bool) if lengths is None else (t < lengths)[:, None]


def _walk(steps: int, reverse: bool) -> list[int]:
    return list(range(steps))[::-1] if reverse else list(range(steps))


def _tf32_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b with both operands rounded to TF32 and the sum exact (float64): the tensor
    core's product, less its float32 accumulation."""
    return to_tf32(a).astype(np.float64) @ to_tf32(b).astype(np.float64)


def _check_each_step(data: dict, actual: tuple[np.ndarray, ...], nonlinearity: str,
                     reverse: bool, what: str) -> None:  # fmt: skip
    """Every step the kernels took, from their own previous state (so that a state's TF32
    rounding is the kernel's, not a model's that differs in the last bit): the forward
    states, each dz of grad_z, and grad_h0 from the first step's dz, each to float32's
    accumulation error; and the same steps in float32 without the rounding are further off
    (the test can tell TF32 from float32)."""
    states, grad_z, grad_h0 = actual
    for array, name in ((states, "states"), (grad_z, "grad_z"), (grad_h0, "grad_h0")):
        assert not np.isnan(array).any(), f"{what}: {name} has NaN (an element never written)"
    w = data["w_hh"]
    act = np.tanh if nonlinearity == "tanh" else (lambda v: np.maximum(v, 0.0))
    walk = _walk(states.shape[0], reverse)
    previous = [data["h0"]] + [states[t] for t in walk[:-1]]
    expected_h, plain_h = [], []
    for t, h_prev in zip(walk, previous, strict=True):
        valid = _valid(data, t)
        expected_h.append(np.where(valid, act(data["z"][t] + _tf32_product(h_prev, w.T)), h_prev))
        plain_h.append(np.where(valid, act(data["z"][t] + h_prev.astype(np.float64) @ w.T),
                                h_prev))  # fmt: skip
    got_h = np.stack([states[t] for t in walk])
    # backward: dz_t = valid ? (grad_states_t + dh_t) act'(h_t) : 0, and
    # dh_{t-1} = dz_t W + (valid ? 0 : dh_t), so each dz follows from the next step's
    expected_dz, plain_dz, got_dz = [], [], []
    backward = walk[::-1]
    dh = dh_plain = data["grad_h_last"].astype(np.float64)  # dh_t of the step being taken
    for index, t in enumerate(backward):
        if index > 0:  # dh_t from the kernel's own dz of the step after t
            later = backward[index - 1]
            carried = np.where(~_valid(data, later), dh, 0.0)
            dh_plain = grad_z[later].astype(np.float64) @ w + carried
            dh = _tf32_product(grad_z[later], w) + carried
        valid = _valid(data, t)
        h = states[t].astype(np.float64)
        slope = 1.0 - h * h if nonlinearity == "tanh" else (h > 0).astype(np.float64)
        gs = np.where(valid, data["grad_states"][t], 0.0)
        expected_dz.append(np.where(valid, (gs + dh) * slope, 0.0))
        plain_dz.append(np.where(valid, (gs + dh_plain) * slope, 0.0))
        got_dz.append(grad_z[t])
    first = walk[0]
    expected_h0 = _tf32_product(grad_z[first], w) + np.where(~_valid(data, first), dh, 0.0)
    plain_h0 = grad_z[first].astype(np.float64) @ w + np.where(~_valid(data, first), dh, 0.0)
    pairs = [
        ("states", got_h, np.stack(expected_h), np.stack(plain_h)),
        ("grad_z", np.stack(got_dz), np.stack(expected_dz), np.stack(plain_dz)),
        ("grad_h0", grad_h0, expected_h0, plain_h0),
    ]
    for name, got, expected, plain in pairs:
        scale = max(1.0, float(np.max(np.abs(expected))))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=f"{what}: {name}")  # fmt: skip
        if name != "grad_z":  # grad_z's first dz takes no product
            assert np.max(np.abs(got - plain)) > 1e-5 * scale, f"{what}: {name} is not TF32's"


@pytest.mark.parametrize("tile", kernel_loader.TF32_STEP_TILES)
@pytest.mark.parametrize(
    ("shape", "nonlinearity", "reverse", "use_lengths"),
    [
        ((3, 33, 7), "tanh", False, False),
        ((4, 37, 70), "tanh", True, True),
        ((2, 65, 33), "relu", False, True),
    ],
)
def test_each_tile_takes_each_step_in_tf32(device, rng, monkeypatch, tile, shape, nonlinearity,
                                           reverse, use_lengths) -> None:  # fmt: skip
    """Each tile, on shapes that leave partial tiles along B and H (so the zero padding of
    the staged slices matters) and partial K slices, forced through the tile choice."""
    monkeypatch.setattr(cupy_backend, "choose_tf32_tile", lambda *args: tile)
    data = _inputs(rng, shape, use_lengths)
    actual = _run(CupyBackend(recurrence="step", matmul_precision="high"), device, data,
                  nonlinearity, reverse)  # fmt: skip
    _check_each_step(data, actual, nonlinearity, reverse, f"tile {tile}")
    for direction in ("forward", "backward"):
        name = kernel_loader.tf32_step_name_expression(direction, nonlinearity, tile)
        assert device.kernels[(TF32_FILE, name)].launches == shape[0], direction
    assert sum(device.launches(f) for f in FMA_FILES) == 0


def test_whole_sequences_stay_near_float64(device, rng) -> None:
    """Eight steps of H = 70 with lengths: the TF32 kernels' states and gradients within 2e-3
    (norm-wise, relative) of float64, where the float32 kernels stay within 1e-5: the
    rounding compounds over the steps, boundedly."""
    data = _inputs(rng, (8, 21, 70), use_lengths=True)
    reference = NumpyBackend()
    states = data["z"].astype(np.float64)
    w64, h064 = data["w_hh"].astype(np.float64), data["h0"].astype(np.float64)
    reference.recurrence_forward(states, w64, h064, data["lengths"], "tanh", False)
    grad_z, grad_h0 = reference.recurrence_backward(
        states, w64, h064, data["grad_states"].astype(np.float64),
        data["grad_h_last"].astype(np.float64), data["lengths"], "tanh", False,
    )  # fmt: skip
    expected = (states, grad_z, grad_h0)
    errors = {}
    for precision in ("highest", "high"):
        actual = _run(CupyBackend(recurrence="step", matmul_precision=precision), device, data,
                      "tanh", False)  # fmt: skip
        for name, got, want in zip(("states", "grad_z", "grad_h0"), actual, expected,
                                   strict=True):  # fmt: skip
            errors[precision, name] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert device.launches(TF32_FILE) == 2 * 8
    for name in ("states", "grad_z", "grad_h0"):
        assert errors["highest", name] < 1e-5, errors
        assert 10 * errors["highest", name] < errors["high", name] < 2e-3, errors


def test_every_schedule_gives_identical_bits(device, rng) -> None:
    """A race between the threads of a block (a missing barrier around the staged slices or
    the accumulators' round trip through shared memory) changes results between schedule
    orders: each order must give the bits of the ascending one."""
    data = _inputs(rng, (3, 40, 45), use_lengths=True)
    backend = CupyBackend(recurrence="step", matmul_precision="high")
    first = _run(backend, device, data, "tanh", True)
    for policy, seed in ((DESCENDING, 0), (RANDOM, 1), (RANDOM, 2), (RUN_AHEAD, 0)):
        device.policy, device.seed = policy, seed
        other = _run(backend, device, data, "tanh", True)
        for name, a, b in zip(("states", "grad_z", "grad_h0"), first, other, strict=True):
            assert a.tobytes() == b.tobytes(), (policy, seed, name)
    device.policy, device.seed = ASCENDING, 0
    assert device.launches(TF32_FILE) == 5 * 2 * 3


def _kernel_files(device: EmulatedDevice, backend: CupyBackend, data: dict) -> set[str]:
    before = {f: device.launches(f) for f in (TF32_FILE, *FMA_FILES)}
    _run(backend, device, data, "tanh", False)
    return {f for f, count in before.items() if device.launches(f) > count}


def test_tf32_runs_only_where_it_should(device, rng, monkeypatch) -> None:
    """The TF32 kernels run for float32 under "high" where the step path takes a tile; not
    under "highest" (nor by default), not for float64, not for a batch of at most 8 rows
    (the small-batch kernel's), not with a step kernel forced by ``RNNCU_STEP_TILE``, and
    not on a device below compute capability 8.0."""
    data = _inputs(rng, (2, 17, 9), use_lengths=False)
    data64 = {k: v if v is None or v.dtype != np.float32 else v.astype(np.float64)
              for k, v in data.items()}  # fmt: skip
    small = _inputs(rng, (2, 8, 9), use_lengths=False)
    high = CupyBackend(recurrence="step", matmul_precision="high")
    assert _kernel_files(device, high, data) == {TF32_FILE}
    assert _kernel_files(device, CupyBackend(recurrence="step"), data) == {FMA_FILES[0]}
    monkeypatch.setenv(MATMUL_PRECISION_ENV, "high")
    assert _kernel_files(device, CupyBackend(recurrence="step"), data) == {TF32_FILE}
    assert _kernel_files(device, high, data64) == {FMA_FILES[0]}
    assert _kernel_files(device, high, small) == {FMA_FILES[1]}
    monkeypatch.setenv(STEP_TILE_ENV, "32x32")
    assert _kernel_files(device, high, data) == {FMA_FILES[0]}
    monkeypatch.delenv(STEP_TILE_ENV)
    runtime = device.module.cuda.runtime
    properties = runtime.getDeviceProperties
    monkeypatch.setattr(runtime, "getDeviceProperties",
                        lambda i: {**properties(i), "major": 7, "minor": 5})  # fmt: skip
    assert _kernel_files(device, CupyBackend(recurrence="step", matmul_precision="high"),
                         data) == {FMA_FILES[0]}  # fmt: skip


def test_a_layer_trains_under_high_near_float64(device, rng) -> None:
    """A two-layer bidirectional layer with lengths on the step path under "high" (TF32 in
    the products over all steps and in each step's): outputs and every gradient within 2e-3
    of the float64 layer."""
    cp = device.module
    steps, batch, features, hidden = 5, 19, 6, 40
    x = rng.standard_normal((steps, batch, features))
    dout = rng.standard_normal((steps, batch, 2 * hidden))
    lengths = np.array([steps, 3, 0, 1] + [steps - 1] * (batch - 4))
    kwargs = {"num_layers": 2, "bidirectional": True, "seed": 3}
    reference = rnncu.RNN(features, hidden, backend="numpy", dtype="float64", **kwargs)
    out_ref, h_ref = reference(x, None, lengths)
    dx_ref, dh0_ref = reference.backward(dout)
    backend = CupyBackend(recurrence="step", matmul_precision="high")
    rnn = rnncu.RNN(features, hidden, backend=backend, dtype="float32", **kwargs)
    out, h_n = rnn(cp.asarray(x.astype(np.float32)), None, lengths)
    dx, dh0 = rnn.backward(cp.asarray(dout.astype(np.float32)))
    assert device.launches(TF32_FILE) == 2 * 2 * 2 * steps
    pairs = {"out": (out, out_ref), "h_n": (h_n, h_ref), "dx": (dx, dx_ref),
             "dh0": (dh0, dh0_ref)}  # fmt: skip
    pairs.update({f"grads[{k}]": (rnn.grads[k], v) for k, v in reference.grads.items()})
    for name, (got, want) in pairs.items():
        got = backend.to_numpy(got).astype(np.float64)
        error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        assert error < 2e-3, (name, error)


@pytest.mark.parametrize(
    ("batch", "hidden", "tile"),
    [
        (256, 1024, (32, 64)),  # 128 blocks for 132 SMs, where 64 x 64 leaves half idle
        (1024, 1024, (64, 64)),  # 2, 4 or 8 waves of the same work: a tie, the larger tile
        (64, 512, (32, 32)),  # 32 blocks: the smallest tile spreads the most
        (9, 7, (32, 32)),  # one block whatever the tile: the least padding
    ],
)
def test_choose_tf32_tile_on_an_h200(batch: int, hidden: int, tile) -> None:
    assert choose_tf32_tile(batch, hidden, 132) == tile
    assert -(-batch // tile[0]) <= MAX_GRID_Y


def test_tf32_step_kernel_names_and_refusals() -> None:
    step = StepKernel(tile=(32, 64), tf32=True)
    assert step.label == "tf32-32x64"
    assert step.filename == TF32_FILE
    assert step.threads == kernel_loader.TF32_STEP_THREADS == 128
    assert step.grid(33, 65) == (2, 2, 1)
    assert step.name_expression("backward", np.float32, "relu") == (
        "rnn_step_tf32_backward<1, 32, 64>"
    )
    with pytest.raises(ValueError, match="float32"):
        step.name_expression("forward", np.float64, "tanh")
    with pytest.raises(ValueError, match="tile: expected one of"):
        kernel_loader.tf32_step_name_expression("forward", "tanh", (16, 16))
    with pytest.raises(ValueError, match="direction"):
        kernel_loader.tf32_step_name_expression("sideways", "tanh", (32, 32))


def test_a_forced_tf32_tile_runs_tf32_and_refuses_what_it_cannot_run(
    device, rng, monkeypatch
) -> None:
    """``RNNCU_STEP_TILE=tf32-BMxBN`` forces a TF32 step kernel (the benchmark's sweep of
    them), whatever ``matmul_precision`` says: float32 only, on 8.0 or later; anything else
    is an error naming the variable, the dtype or the device."""
    data = _inputs(rng, (2, 9, 20), use_lengths=True)
    monkeypatch.setenv(STEP_TILE_ENV, "TF32-32x64")
    actual = _run(CupyBackend(recurrence="step"), device, data, "relu", False)
    _check_each_step(data, actual, "relu", False, "forced tf32-32x64")
    for direction in ("forward", "backward"):
        name = kernel_loader.tf32_step_name_expression(direction, "relu", (32, 64))
        assert device.kernels[(TF32_FILE, name)].launches == 2
    data64 = {k: v if v is None or v.dtype != np.float32 else v.astype(np.float64)
              for k, v in data.items()}  # fmt: skip
    with pytest.raises(ValueError, match=r"RNNCU_STEP_TILE=tf32-32x64: .* not dtype float64"):
        _run(CupyBackend(recurrence="step"), device, data64, "tanh", False)
    runtime = device.module.cuda.runtime
    properties = runtime.getDeviceProperties
    monkeypatch.setattr(runtime, "getDeviceProperties",
                        lambda i: {**properties(i), "major": 7, "minor": 0})  # fmt: skip
    with pytest.raises(ValueError, match=r"tf32-32x64: .* not a device below 8\.0"):
        _run(CupyBackend(recurrence="step"), device, data, "tanh", False)
    monkeypatch.setenv(STEP_TILE_ENV, "tf32-16x16")
    with pytest.raises(ValueError, match=r"expected one of .*matvec, tf32-64x64, tf32-32x64"):
        _run(CupyBackend(recurrence="step"), device, data, "tanh", False)
