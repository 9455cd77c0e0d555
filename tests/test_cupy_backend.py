"""The CuPy backend against the NumPy reference: ``recurrence_forward``/``recurrence_backward``
and the ``rnncu.RNN`` layer, float32 and float64, tanh and relu, reverse, lengths, odd sizes,
for each recurrence path (``step``, and ``persistent`` where that module supports the shape).

Never zeros: inputs are fresh random draws, and every device allocation starts as NaN (on a
real device the conftest fixture poisons CuPy's allocator, tests/device_memory.py; the emulated
device's ``empty`` is NaN), so an unwritten element fails. Skipped where CuPy or a device is
missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from rnn_reference import assert_same_nans, recurrence_cases, with_nans

from rnncu.optim import SGD, Adam, RMSprop

pytestmark = pytest.mark.gpu

TOL = {np.float64: 1e-10, np.float32: 1e-5}
# (T, B, H): every H in {1, 7, 33, 257, 1000}, B in {1, odd, 8}; only a few T = 2000 cases;
# H = 200 is where the persistent path of an H200 takes a thread-block cluster
SHAPES = [
    (1, 1, 1),
    (2, 1, 7),
    (1, 7, 33),
    (3, 8, 33),  # the largest batch of the small-batch (matvec) step kernels; 9 takes a tile
    (3, 9, 200),
    (2, 33, 257),
    (2, 5, 1000),
    (2000, 1, 33),
    (2000, 7, 257),
]
MODES = ("step", "persistent")


@contextlib.contextmanager
def recurrence(backend, mode: str) -> Iterator[None]:
    previous = backend.recurrence
    backend.recurrence = mode
    try:
        yield
    finally:
        backend.recurrence = previous


def _cupy_backend():
    import rnncu

    return rnncu.get_backend("cupy")


def _skip_unless_supported(mode: str, shape, dtype, nonlinearity, reverse, lengths) -> None:
    """Skip a persistent case the persistent module says it does not cover."""
    if mode != "persistent":
        return
    from rnncu.backend import persistent

    if not persistent.supports(shape, np.dtype(dtype), nonlinearity, reverse):
        pytest.skip(f"persistent path does not support {shape} {np.dtype(dtype)}")


def _inputs(rng, shape, dtype, use_lengths):
    steps, batch, hidden = shape
    z = rng.standard_normal(shape).astype(dtype)
    # |W| ~ U(-1, 1)/sqrt(H): a contracting recurrence, so T = 2000 stays well conditioned
    w_hh = (rng.uniform(-1.0, 1.0, (hidden, hidden)) / np.sqrt(hidden)).astype(dtype)
    h0 = rng.standard_normal((batch, hidden)).astype(dtype)
    lengths = rng.integers(0, steps + 1, batch).astype(np.int32) if use_lengths else None
    if lengths is not None and batch > 1:
        lengths[0] = steps  # at least one full-length row
    if lengths is not None and batch > 2:
        lengths[-1] = 0  # and one with no step: its state passes through
    grad_states = rng.standard_normal(shape).astype(dtype)
    if lengths is not None:  # the gradient at a padded output is ignored, even when not finite
        grad_states[np.arange(steps)[:, None] >= lengths[None, :]] = np.nan
    grad_h_last = rng.standard_normal((batch, hidden)).astype(dtype)
    return z, w_hh, h0, lengths, grad_states, grad_h_last


def _close(actual, expected, dtype, what: str) -> None:
    rtol = TOL[dtype]
    atol = rtol * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    assert not np.isnan(actual).any(), f"{what}: NaN left (an element was never written)"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _forward_backward(backend, z, w_hh, h0, lengths, grad_states, grad_h_last, nonlinearity,
                      reverse):  # fmt: skip
    """The backend's forward from host Z, then its backward from the states it made, with
    device copies of the host inputs (``w_hh`` may be a device array already); host copies
    of (states, grad_z, grad_h0)."""
    import cupy

    def dev(a):  # a device array as it is (a view stays the view)
        return a if a is None or isinstance(a, cupy.ndarray) else cupy.asarray(a)

    w_hh, h0, lengths = dev(w_hh), dev(h0), dev(lengths)
    states = cupy.asarray(z)
    backend.recurrence_forward(states, w_hh, h0, lengths, nonlinearity, reverse)
    grad_z, grad_h0 = backend.recurrence_backward(
        states, w_hh, h0, dev(grad_states), dev(grad_h_last), lengths, nonlinearity, reverse
    )
    return tuple(cupy.asnumpy(a) for a in (states, grad_z, grad_h0))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("dtype", "shape", "nonlinearity", "reverse", "use_lengths"),
    # T = 2000 runs for float32 tanh only, to keep the GPU suite short
    recurrence_cases(
        SHAPES,
        [
            ("tanh", False, False),
            ("relu", True, True),
            ("tanh", True, True),
            ("relu", False, False),
        ],
        lambda shape: shape[0] == 2000,
    ),
)
def test_recurrence_matches_numpy(rng, mode, dtype, shape, nonlinearity, reverse, use_lengths):
    import cupy

    from rnncu.backend.numpy_backend import NumpyBackend

    _skip_unless_supported(mode, shape, dtype, nonlinearity, reverse, use_lengths)
    backend = _cupy_backend()
    reference = NumpyBackend()
    z, w_hh, h0, lengths, grad_states, grad_h_last = _inputs(rng, shape, dtype, use_lengths)

    expected = z.copy()
    reference.recurrence_forward(expected, w_hh, h0, lengths, nonlinearity, reverse)
    d_w, d_h0 = cupy.asarray(w_hh), cupy.asarray(h0)
    d_len = None if lengths is None else cupy.asarray(lengths)
    with recurrence(backend, mode):
        states = cupy.asarray(z)
        backend.recurrence_forward(states, d_w, d_h0, d_len, nonlinearity, reverse)
        _close(cupy.asnumpy(states), expected, dtype, "states")

        # every combination: (None, dh_n) is a classifier's backward
        for gs, gl in (
            (grad_states, grad_h_last),
            (None, grad_h_last),
            (grad_states, None),
            (None, None),
        ):
            want_z, want_h0 = reference.recurrence_backward(
                expected, w_hh, h0, gs, gl, lengths, nonlinearity, reverse
            )
            grad_z, grad_h0 = backend.recurrence_backward(
                cupy.asarray(expected),
                d_w,
                d_h0,
                None if gs is None else cupy.asarray(gs),
                None if gl is None else cupy.asarray(gl),
                d_len,
                nonlinearity,
                reverse,
            )
            _close(cupy.asnumpy(grad_z), want_z, dtype, "grad_z")
            _close(cupy.asnumpy(grad_h0), want_h0, dtype, "grad_h0")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape", [(3, 1, 7), (4, 33, 257), (3, 129, 300)], ids=lambda s: "x".join(map(str, s))
)
def test_every_step_kernel_matches_numpy(rng, monkeypatch, dtype, shape):
    """Each step kernel, forced through RNNCU_STEP_TILE (every tile, and the small-batch
    kernel, 8 rows per block past B = 8), against the NumPy backend; all tiles give the same
    bits (each output sums its products in ascending k)."""

    from rnncu.backend import kernel_loader
    from rnncu.backend.cupy_backend import STEP_TILE_ENV
    from rnncu.backend.numpy_backend import NumpyBackend

    backend = _cupy_backend()
    reference = NumpyBackend()
    z, w_hh, h0, lengths, grad_states, grad_h_last = _inputs(rng, shape, dtype, True)
    expected = z.copy()
    reference.recurrence_forward(expected, w_hh, h0, lengths, "tanh", False)
    want_z, want_h0 = reference.recurrence_backward(
        expected, w_hh, h0, grad_states, grad_h_last, lengths, "tanh", False
    )
    results = {}
    with recurrence(backend, "step"):
        for label in [f"{t[0]}x{t[1]}" for t in kernel_loader.STEP_TILES] + ["matvec"]:
            monkeypatch.setenv(STEP_TILE_ENV, label)
            results[label] = _forward_backward(
                backend, z, w_hh, h0, lengths, grad_states, grad_h_last, "tanh", False
            )
            for what, a, e in zip(("states", "grad_z", "grad_h0"), results[label],
                                  (expected, want_z, want_h0), strict=True):  # fmt: skip
                _close(a, e, dtype, f"{label}: {what}")
    del results["matvec"]  # another summation order: close, not the same bits
    first = results.pop("64x64")
    for label, arrays in results.items():
        for what, a, b in zip(("states", "grad_z", "grad_h0"), first, arrays, strict=True):
            assert a.tobytes() == b.tobytes(), f"tile {label}: {what} bits differ"


@pytest.mark.parametrize("mode", MODES)
def test_same_inputs_give_identical_bits(rng, mode):
    import cupy

    shape = (50, 7, 257)
    _skip_unless_supported(mode, shape, np.float32, "tanh", False, True)
    backend = _cupy_backend()
    z, w_hh, h0, lengths, grad_states, grad_h_last = _inputs(rng, shape, np.float32, True)
    args = (cupy.asarray(w_hh), cupy.asarray(h0))
    d_len = cupy.asarray(lengths)
    results = []
    with recurrence(backend, mode):
        for _ in range(2):
            states = cupy.asarray(z)
            backend.recurrence_forward(states, *args, d_len, "tanh", False)
            grad_z, grad_h0 = backend.recurrence_backward(
                states, *args, cupy.asarray(grad_states), cupy.asarray(grad_h_last), d_len,
                "tanh", False,
            )  # fmt: skip
            results.append([cupy.asnumpy(a) for a in (states, grad_z, grad_h0)])
    for first, second in zip(*results, strict=True):
        assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("step_kernel", ["matvec", "32x32"])
@pytest.mark.parametrize(
    ("dtype", "reverse", "use_lengths"), [(np.float32, False, True), (np.float64, True, False)]
)
def test_step_graphs_give_the_bits_of_launches(
    rng, monkeypatch, step_kernel, dtype, reverse, use_lengths
):
    """The step loops as CUDA graphs (captured at a key's second call, replayed after) give
    the bits of the same loops launched one by one. Forward's arrays are held fixed, so its
    third and fourth calls must be replays; backward allocates its outputs, so whether its
    key comes again is the memory pool's affair."""
    import cupy

    from rnncu.backend.cupy_backend import STEP_TILE_ENV, CupyBackend

    monkeypatch.setenv(STEP_TILE_ENV, step_kernel)
    shape = (6, 5 if step_kernel == "matvec" else 37, 65)
    backend = CupyBackend(recurrence="step")
    z, w_hh, h0, lengths, grad_states, grad_h_last = _inputs(rng, shape, dtype, use_lengths)
    d_w, d_h0, d_gs, d_gh = map(cupy.asarray, (w_hh, h0, grad_states, grad_h_last))
    d_len = None if lengths is None else cupy.asarray(lengths)
    d_z = cupy.asarray(z)
    states = cupy.empty_like(d_z)
    runs = {}
    for graphs in (False, True):
        backend.step_graphs = graphs
        runs[graphs] = []
        for _ in range(4):
            states[...] = d_z
            backend.recurrence_forward(states, d_w, d_h0, d_len, "tanh", reverse)
            grad_z, grad_h0 = backend.recurrence_backward(
                states, d_w, d_h0, d_gs, d_gh, d_len, "tanh", reverse
            )
            runs[graphs].append([cupy.asnumpy(a) for a in (states, grad_z, grad_h0)])
            del grad_z, grad_h0
    counts = backend.graphs.counts
    loops = counts["replayed"] + counts["captured"] + counts["launched"]
    assert loops == 8, counts  # 4 forward and 4 backward loops
    assert counts["captured"] >= 1 and counts["replayed"] >= 2, counts
    first = runs[False][0]
    for index, run in enumerate(runs[False][1:] + runs[True]):
        for what, a, b in zip(("states", "grad_z", "grad_h0"), first, run, strict=True):
            assert not np.isnan(b).any(), f"run {index}: {what} has NaN"
            assert a.tobytes() == b.tobytes(), f"run {index}: {what} bits differ"


def test_numpy_array_is_a_clear_type_error(rng):
    import cupy

    backend = _cupy_backend()
    z, w_hh, h0, *_ = _inputs(rng, (3, 2, 7), np.float32, False)
    with pytest.raises(TypeError, match=r"mixed devices: w_hh is a numpy\.ndarray.*asarray"):
        backend.recurrence_forward(cupy.asarray(z), w_hh, cupy.asarray(h0), None, "tanh", False)
    with pytest.raises(TypeError, match=r"mixed devices: states is a numpy\.ndarray"):
        backend.recurrence_forward(z, cupy.asarray(w_hh), cupy.asarray(h0), None, "tanh", False)


def test_to_numpy_is_a_copy_of_device_and_host_arrays(rng):
    """``to_numpy`` is a copy on every backend: ``cupy.asnumpy`` hands a host array back as
    it is, so writing to the result would change the caller's array."""
    import cupy

    backend = _cupy_backend()
    host = rng.standard_normal((3, 5)).astype(np.float32)
    device = cupy.asarray(host)
    from_device = backend.to_numpy(device)
    assert isinstance(from_device, np.ndarray) and from_device.dtype == np.float32
    np.testing.assert_array_equal(from_device, host)
    from_host = backend.to_numpy(host)
    np.testing.assert_array_equal(from_host, host)
    assert not np.shares_memory(from_host, host)
    from_host[...] = np.nan
    from_device[...] = np.nan
    assert np.isfinite(host).all() and bool(cupy.isfinite(device).all())


OPTIMIZERS = {
    "adam": lambda modules: Adam(modules, lr=0.05),
    "adamw": lambda modules: Adam(modules, lr=0.05, weight_decay=0.1, decoupled=True),
    "sgd": lambda modules: SGD(modules, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "rmsprop": lambda modules: RMSprop(
        modules, lr=0.01, momentum=0.5, centered=True, weight_decay=0.01
    ),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimizers_step_as_on_numpy(rng, dtype):
    """Three steps of each optimiser on a Linear of each backend, from the same weights and
    gradients: the same weights and state after, to TOL. (One case runs every optimiser, so
    that the first case, which CI runs on the emulated device with its CuPy calls checked
    against the installed CuPy, reaches them all.)"""
    import rnncu

    dtype_name = np.dtype(dtype).name
    start = rnncu.Linear(7, 33, backend="numpy", dtype=dtype_name, seed=0).params
    for name, build in OPTIMIZERS.items():
        layers = {
            backend: rnncu.Linear(7, 33, backend=backend, dtype=dtype_name, seed=0)
            for backend in ("numpy", "cupy")
        }
        optimizers = {backend: build([layer]) for backend, layer in layers.items()}
        for _ in range(3):
            grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in start.items()}
            for backend, layer in layers.items():
                layer.grads = {
                    k: layer.backend.asarray(g, dtype=dtype_name) for k, g in grads.items()
                }
                optimizers[backend].step()
        host, device = (optimizers[b].state_dict() for b in ("numpy", "cupy"))
        assert sorted(host) == sorted(device), name
        for key in host:
            np.testing.assert_allclose(
                device[key], host[key], rtol=TOL[dtype], atol=TOL[dtype], err_msg=f"{name} {key}"
            )
        for key, value in layers["numpy"].params.items():
            moved = layers["cupy"].backend.to_numpy(layers["cupy"].params[key])
            assert moved.dtype == dtype and np.isfinite(moved).all(), (name, key)
            np.testing.assert_allclose(
                moved, value, rtol=TOL[dtype], atol=TOL[dtype], err_msg=f"{name} {key}"
            )
            assert not np.allclose(value, start[key]), (name, key)  # the steps moved it


def test_bad_recurrence_env_names_the_variable(monkeypatch):
    from rnncu.backend.cupy_backend import CupyBackend

    monkeypatch.setenv("RNNCU_RECURRENCE", "fastest")
    with pytest.raises(ValueError, match="RNNCU_RECURRENCE"):
        CupyBackend().recurrence_mode()
    with pytest.raises(ValueError, match="recurrence"):
        CupyBackend(recurrence="fastest")


def test_describe_reports_the_device():
    info = _cupy_backend().describe()
    for key in ("device", "compute_capability", "multiprocessors", "cupy", "cuda_runtime"):
        assert info[key], key


# ------------------------------------------------------------------------------ layer level
def _layer_pair(dtype: str, **kwargs):
    import rnncu

    cpu = rnncu.RNN(dtype=dtype, backend="numpy", seed=0, **kwargs)
    gpu = rnncu.RNN(dtype=dtype, backend="cupy", seed=1, **kwargs)
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("dtype", "config", "use_lengths"),
    [
        ("float64", {"nonlinearity": "tanh", "num_layers": 2, "bidirectional": True}, True),
        ("float32", {"nonlinearity": "relu", "num_layers": 1, "bidirectional": False}, False),
        ("float32", {"nonlinearity": "tanh", "num_layers": 1, "bidirectional": True}, True),
    ],
)
def test_layer_matches_numpy(rng, mode, dtype, config, use_lengths):
    import cupy

    steps, batch, features, hidden = 9, 5, 3, 33
    _skip_unless_supported(mode, (steps, batch, hidden), dtype, config["nonlinearity"], True, True)
    cpu, gpu = _layer_pair(dtype, input_size=features, hidden_size=hidden, **config)
    np_dtype = np.dtype(dtype).type
    x = rng.standard_normal((steps, batch, features)).astype(dtype)
    directions = 2 if config["bidirectional"] else 1
    h0 = rng.standard_normal((config["num_layers"] * directions, batch, hidden)).astype(dtype)
    lengths = rng.integers(0, steps + 1, batch) if use_lengths else None
    if lengths is not None:
        lengths[0] = steps
        lengths[-1] = 0  # a row with no step: its state passes through
        # padding is never read: NaN there must reach no output and no gradient
        x[np.arange(steps)[:, None] >= lengths[None, :]] = np.nan

    backend = gpu.backend
    with recurrence(backend, mode):
        out_ref, hn_ref = cpu(x, h0, lengths)
        out, hn = gpu(cupy.asarray(x), cupy.asarray(h0), lengths)
        _close(cupy.asnumpy(out), out_ref, np_dtype, "out")
        _close(cupy.asnumpy(hn), hn_ref, np_dtype, "h_n")

        dout = rng.standard_normal(out_ref.shape).astype(dtype)
        dhn = rng.standard_normal(hn_ref.shape).astype(dtype)
        dx_ref, dh0_ref = cpu.backward(dout, dhn)
        dx, dh0 = gpu.backward(cupy.asarray(dout), cupy.asarray(dhn))
        _close(cupy.asnumpy(dx), dx_ref, np_dtype, "dx")
        _close(cupy.asnumpy(dh0), dh0_ref, np_dtype, "dh0")
        assert set(gpu.grads) == set(cpu.grads)
        for name, grad in cpu.grads.items():
            _close(cupy.asnumpy(gpu.grads[name]), grad, np_dtype, f"grads[{name!r}]")


def test_tf32_products_stay_near_float64(rng):
    """``matmul_precision="high"``: the products over all steps may run in TF32 (10 bits of
    mantissa in each operand), the rest as before. Every output and gradient of a layer whose
    products sum over 256 to 1024 terms stays within 2e-3 (norm-wise, relative) of the
    float64 reference, where "highest" stays within 1e-5; on a GPU of compute capability 8.0
    or later a product of 1024-wide operands differs from float32's (TF32 did run), and
    CuPy's own setting is as it was."""
    import cupy

    import rnncu
    from rnncu.backend.cupy_backend import CupyBackend

    steps, batch, features, hidden = 7, 33, 1024, 256
    reference = rnncu.RNN(features, hidden, backend="numpy", dtype="float64", seed=0)
    x = rng.standard_normal((steps, batch, features))
    dout = rng.standard_normal((steps, batch, hidden))
    out_ref, _ = reference(x)
    dx_ref, _ = reference.backward(dout)
    expected = {"out": out_ref, "dx": dx_ref, **reference.grads}
    linalg = cupy._core._routines_linalg
    before = linalg.get_compute_type(np.float32)
    errors = {}
    for precision, limit in (("highest", 1e-5), ("high", 2e-3)):
        backend = CupyBackend(matmul_precision=precision)
        rnn = rnncu.RNN(features, hidden, backend=backend, dtype="float32", seed=1)
        rnn.load_state_dict(reference.state_dict())
        out, _ = rnn(cupy.asarray(x, dtype=cupy.float32))
        dx, _ = rnn.backward(cupy.asarray(dout, dtype=cupy.float32))
        actual = {"out": out, "dx": dx, **rnn.grads}
        for name, value in expected.items():
            got = cupy.asnumpy(actual[name]).astype(np.float64)
            assert not np.isnan(got).any(), (precision, name)
            error = float(np.linalg.norm(got - value) / np.linalg.norm(value))
            errors[precision, name] = error
            assert error < limit, (precision, name, error)
        assert linalg.get_compute_type(np.float32) == before
    major = int(cupy.cuda.Device().compute_capability) // 10
    a = cupy.asarray(rng.standard_normal((1024, 1024)), dtype=cupy.float32)
    b = cupy.asarray(rng.standard_normal((1024, 1024)), dtype=cupy.float32)
    fast = CupyBackend(matmul_precision="high").matmul(a, b)
    exact = CupyBackend(matmul_precision="highest").matmul(a, b)
    differs = not bool(cupy.array_equal(fast, exact))
    assert differs == (major >= 8), (major, errors)


def test_tf32_step_kernels_stay_near_float64(rng):
    """``matmul_precision="high"`` on the step path: each step's product runs on the tensor
    cores in TF32 too (kernels/rnn_step_tf32.cu), on a GPU of compute capability 8.0 or
    later. A bidirectional layer over 16 steps of H = 96 with lengths (partial tiles along B
    and H; small enough for CI's run of it on the emulated device): every output and
    gradient within 3e-3 (norm-wise, relative) of float64, where "highest" stays within 1e-5;
    on such a GPU the TF32 step kernels were the ones launched, and below it none was."""
    import cupy

    import rnncu
    from rnncu.backend.cupy_backend import CupyBackend

    steps, batch, features, hidden = 16, 40, 32, 96
    kwargs = {"bidirectional": True, "seed": 0}
    reference = rnncu.RNN(features, hidden, backend="numpy", dtype="float64", **kwargs)
    x = rng.standard_normal((steps, batch, features))
    dout = rng.standard_normal((steps, batch, 2 * hidden))
    lengths = rng.integers(1, steps + 1, batch)
    lengths[0] = steps
    out_ref, h_ref = reference(x, None, lengths)
    dx_ref, dh_ref = reference.backward(dout)
    expected = {"out": out_ref, "h_n": h_ref, "dx": dx_ref, "dh0": dh_ref, **reference.grads}
    errors = {}
    tf32_ran = {}
    for precision, limit in (("highest", 1e-5), ("high", 3e-3)):
        backend = CupyBackend(recurrence="step", matmul_precision=precision)
        rnn = rnncu.RNN(features, hidden, backend=backend, dtype="float32", **kwargs)
        out, h_n = rnn(cupy.asarray(x, dtype=cupy.float32), None, lengths)
        dx, dh0 = rnn.backward(cupy.asarray(dout, dtype=cupy.float32))
        actual = {"out": out, "h_n": h_n, "dx": dx, "dh0": dh0, **rnn.grads}
        for name, value in expected.items():
            got = cupy.asnumpy(actual[name]).astype(np.float64)
            assert not np.isnan(got).any(), (precision, name)
            errors[precision, name] = float(np.linalg.norm(got - value) / np.linalg.norm(value))
            assert errors[precision, name] < limit, (precision, name, errors[precision, name])
        tf32_ran[precision] = sorted({key[0].label for key in backend._kernels if key[0].tf32})
    major = int(cupy.cuda.Device().compute_capability) // 10
    assert tf32_ran["highest"] == [], tf32_ran
    assert bool(tf32_ran["high"]) == (major >= 8), (major, tf32_ran, errors)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_truncated_bptt_carries_h_n_as_numpy_does(rng, mode, dtype):
    """A sequence in chunks of 4, 4 and 1 steps through one two-layer layer, each chunk
    starting from the h_n the last call returned (on the device, uncopied) and backpropagated
    alone: outputs, states and gradients of every chunk match the NumPy layer doing the
    same."""
    import cupy

    steps, batch, features, hidden = 9, 5, 3, 33
    _skip_unless_supported(mode, (4, batch, hidden), dtype, "tanh", False, None)
    cpu, gpu = _layer_pair(dtype, input_size=features, hidden_size=hidden, num_layers=2)
    np_dtype = np.dtype(dtype).type
    x = rng.standard_normal((steps, batch, features)).astype(dtype)
    dout = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    h_ref = rng.standard_normal((2, batch, hidden)).astype(dtype)
    h = cupy.asarray(h_ref)
    with recurrence(gpu.backend, mode):
        for start in (0, 4, 8):
            chunk = slice(start, start + 4)
            out_ref, h_ref = cpu(x[chunk], h_ref)
            out, h = gpu(cupy.asarray(x[chunk]), h)
            _close(cupy.asnumpy(out), out_ref, np_dtype, f"out from step {start}")
            _close(cupy.asnumpy(h), h_ref, np_dtype, f"h_n from step {start}")
            dx_ref, dh0_ref = cpu.backward(dout[chunk], None)
            dx, dh0 = gpu.backward(cupy.asarray(dout[chunk]), None)
            _close(cupy.asnumpy(dx), dx_ref, np_dtype, f"dx from step {start}")
            _close(cupy.asnumpy(dh0), dh0_ref, np_dtype, f"dh0 from step {start}")
            for name, grad in cpu.grads.items():
                _close(cupy.asnumpy(gpu.grads[name]), grad, np_dtype, f"grads[{name!r}]")


def test_layer_training_with_step_graphs_gives_the_bits_of_launches(rng):
    """Three forward and backward passes of a two-layer bidirectional layer with lengths, on
    the step path, with and without CUDA graphs: the same outputs and gradients, bit for
    bit; every loop went through the graph cache."""
    import cupy

    import rnncu

    steps, batch, features, hidden = 7, 3, 4, 17
    config = {"num_layers": 2, "bidirectional": True, "nonlinearity": "tanh"}
    layer = rnncu.RNN(features, hidden, dtype="float32", backend="cupy", seed=0, **config)
    x = cupy.asarray(rng.standard_normal((steps, batch, features)).astype(np.float32))
    dout = cupy.asarray(rng.standard_normal((steps, batch, 2 * hidden)).astype(np.float32))
    lengths = np.array([steps, 2, 5])
    backend = layer.backend
    saved = (backend.recurrence, backend.step_graphs)
    results = {}
    try:
        backend.recurrence = "step"
        for graphs in (False, True):
            backend.step_graphs = graphs
            before = dict(backend.graphs.counts)
            runs = []
            for _ in range(3):
                out, _ = layer(x, None, lengths)
                dx, _ = layer.backward(dout)
                arrays = [out, dx, *(layer.grads[name] for name in sorted(layer.grads))]
                runs.append([cupy.asnumpy(a) for a in arrays])
            results[graphs] = runs
            loops = sum(
                backend.graphs.counts[k] - before[k] for k in ("replayed", "captured", "launched")
            )
            # 2 layers x 2 directions, forward and backward, 3 times
            assert loops == (24 if graphs else 0), backend.graphs.counts
    finally:
        backend.recurrence, backend.step_graphs = saved
    first = results[False][0]
    for run in results[False][1:] + results[True]:
        for a, b in zip(first, run, strict=True):
            assert a.tobytes() == b.tobytes()


def test_layer_rejects_numpy_input_on_cupy(rng):
    import rnncu

    gpu = rnncu.RNN(3, 7, backend="cupy", seed=0)
    with pytest.raises(TypeError, match="mixed devices|cupy"):
        gpu(rng.standard_normal((4, 2, 3)).astype(np.float32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [3, 40], ids=["small-batch", "tile"])
@pytest.mark.parametrize(("nonlinearity", "reverse"), [("tanh", False), ("relu", True)])
def test_nan_propagates_as_in_numpy(rng, mode, dtype, batch, nonlinearity, reverse):
    """A NaN in Z or in the output gradient reaches exactly the elements it reaches on the
    NumPy backend, through relu too, and never another row (a kernel that read a
    neighbour's row would spread it)."""
    import cupy

    from rnncu.backend.numpy_backend import NumpyBackend

    steps, hidden = 5, 33
    _skip_unless_supported(mode, (steps, batch, hidden), dtype, nonlinearity, reverse, False)
    arrays = with_nans(rng, steps, batch, hidden, dtype)
    backend, reference = _cupy_backend(), NumpyBackend()

    expected = arrays["z"].copy()
    w_hh, h0 = arrays["w_hh"], arrays["h0"]
    reference.recurrence_forward(expected, w_hh, h0, None, nonlinearity, reverse)
    want_z, want_h0 = reference.recurrence_backward(
        expected, w_hh, h0, arrays["grad_states"], arrays["grad_h_last"], None, nonlinearity,
        reverse,
    )  # fmt: skip
    assert np.isnan(expected[:, 0]).any() and not np.isnan(expected[:, 1:]).any()
    device = {name: cupy.asarray(a) for name, a in arrays.items()}
    with recurrence(backend, mode):
        states = device["z"].copy()
        d_w, d_h0 = device["w_hh"], device["h0"]
        backend.recurrence_forward(states, d_w, d_h0, None, nonlinearity, reverse)
        assert_same_nans(cupy.asnumpy(states), expected, TOL[dtype], "states")
        grad_z, grad_h0 = backend.recurrence_backward(
            cupy.asarray(expected), d_w, d_h0, device["grad_states"], device["grad_h_last"],
            None, nonlinearity, reverse,
        )  # fmt: skip
    assert_same_nans(cupy.asnumpy(grad_z), want_z, TOL[dtype], "grad_z")
    assert_same_nans(cupy.asnumpy(grad_h0), want_h0, TOL[dtype], "grad_h0")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 36), (3, 40, 36)], ids=["small-batch", "tile"])
def test_a_w_hh_view_off_a_16_byte_boundary(rng, mode, dtype, shape):
    """W_hh a C-contiguous view one element past a 16-byte boundary (a slice of a packed
    parameter buffer), H a multiple of the vector width: no kernel may issue 16-byte loads
    from it (the device faults: misaligned address)."""
    import cupy

    from rnncu.backend.numpy_backend import NumpyBackend

    _skip_unless_supported(mode, shape, dtype, "tanh", False, True)
    z, w_hh, h0, lengths, grad_states, grad_h_last = _inputs(rng, shape, dtype, True)
    hidden = shape[2]
    flat = cupy.empty(hidden * hidden + 1, dtype)
    w_view = flat[1:].reshape(hidden, hidden)
    w_view[...] = cupy.asarray(w_hh)
    assert w_view.flags.c_contiguous and w_view.data.ptr % 16 != 0
    reference = NumpyBackend()
    expected = z.copy()
    reference.recurrence_forward(expected, w_hh, h0, lengths, "tanh", False)
    want_z, want_h0 = reference.recurrence_backward(
        expected, w_hh, h0, grad_states, grad_h_last, lengths, "tanh", False
    )
    backend = _cupy_backend()
    with recurrence(backend, mode):
        actual = _forward_backward(
            backend, z, w_view, h0, lengths, grad_states, grad_h_last, "tanh", False
        )
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, (expected, want_z, want_h0),
                          strict=True):  # fmt: skip
        _close(a, e, dtype, what)
