"""``matmul_precision``: the opt-in TF32 of the float32 products over all steps.

On the NumPy backend the setting is checked and changes nothing. On the CuPy backend it is
run on the emulated device (tests/emulated_cupy.py), whose stand-in for CuPy's compute-type
setting rounds a float32 product's operands to TF32 when that setting says TF32, as cuBLAS's
``CUBLAS_COMPUTE_32F_FAST_TF32`` may: so the tests see that "high" reaches every product of
the layers, that the rounding stays within TF32's error of the float64 reference, and that
CuPy's own setting is left as it was found. The same comparison on a real device is
``test_tf32_products_stay_near_float64`` in tests/test_cupy_backend.py (marker ``gpu``).
"""

from __future__ import annotations

import json
import os
import threading
import warnings

import numpy as np
import pytest
from emulated_cupy import LINALG, EmulatedDevice, to_tf32

import rnncu
from rnncu.backend import base
from rnncu.backend.cupy_backend import CupyBackend
from rnncu.backend.numpy_backend import NumpyBackend

# Elman layer: T, B, D, H (D and H large enough that a product's rounding shows)
STEPS, BATCH, FEATURES, HIDDEN = 5, 6, 48, 40


@pytest.fixture
def device(kernel_emulation, monkeypatch: pytest.MonkeyPatch):
    with EmulatedDevice(kernel_emulation).installed(monkeypatch) as installed:
        yield installed


# ------------------------------------------------------------------------------ the setting
def test_setting_defaults_reads_the_environment_and_names_bad_values(monkeypatch):
    monkeypatch.delenv(base.MATMUL_PRECISION_ENV, raising=False)
    backend = NumpyBackend()
    assert backend.matmul_precision is None
    assert backend.matmul_precision_in_force() == "highest"
    for given, expected in (("HIGH", "high"), (" highest ", "highest"), ("", "highest")):
        monkeypatch.setenv(base.MATMUL_PRECISION_ENV, given)
        assert backend.matmul_precision_in_force() == expected, given
    monkeypatch.setenv(base.MATMUL_PRECISION_ENV, "medium")
    with pytest.raises(ValueError) as env_error:
        backend.matmul_precision_in_force()
    message = str(env_error.value)
    assert "environment variable RNNCU_MATMUL_PRECISION" in message
    assert "'highest', 'high'" in message and "'medium'" in message
    backend.matmul_precision = "High"  # the attribute wins over the environment
    assert backend.matmul_precision == "high" and backend.matmul_precision_in_force() == "high"
    backend.matmul_precision = None
    with pytest.raises(ValueError, match="RNNCU_MATMUL_PRECISION"):
        backend.matmul_precision_in_force()
    for bad in ("tf32", 32, True):
        with pytest.raises(ValueError) as attribute_error:
            backend.matmul_precision = bad
        assert str(attribute_error.value).startswith("matmul_precision: expected"), bad
        assert repr(bad) in str(attribute_error.value)
    assert backend.matmul_precision is None  # a refused value leaves the setting as it was


def test_numpy_backend_computes_the_same_bits_under_high(rng):
    """TF32 exists on NVIDIA GPUs only: on the host "high" changes nothing, as in torch."""
    x = rng.standard_normal((STEPS, BATCH, FEATURES)).astype(np.float32)
    dout = rng.standard_normal((STEPS, BATCH, 2 * HIDDEN)).astype(np.float32)
    results = []
    for precision in ("highest", "high"):
        backend = NumpyBackend()
        backend.matmul_precision = precision
        rnn = rnncu.RNN(FEATURES, HIDDEN, bidirectional=True, backend=backend, seed=3)
        head = rnncu.Linear(2 * HIDDEN, 3, backend=backend, seed=4)
        out, _ = rnn(x)
        logits = head(out)
        dx, _ = rnn.backward(head.backward(np.ones_like(logits)) + dout)
        results.append([out, logits, dx, *rnn.grads.values(), *head.grads.values()])
    for highest, high in zip(*results, strict=True):
        np.testing.assert_array_equal(highest, high)


def test_every_product_over_all_steps_goes_through_the_backends_matmul(rng):
    """The products the setting governs, counted: per layer and direction the input
    projection, dW_hh (the first step's and the rest's), dW_ih and dx; a Linear's forward,
    weight gradient and input gradient, each one 2-D product even for a 3-D input (CuPy's
    stacked products would ignore the setting)."""
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    class Counting(NumpyBackend):
        def matmul(self, a, b):
            shapes.append((a.shape, b.shape))
            return super().matmul(a, b)

    backend = Counting()
    layers, directions = 2, 2
    rnn = rnncu.RNN(FEATURES, HIDDEN, num_layers=layers, bidirectional=True, backend=backend)
    head = rnncu.Linear(2 * HIDDEN, 3, backend=backend)
    x = rng.standard_normal((STEPS, BATCH, FEATURES)).astype(np.float32)
    out, _ = rnn(x)
    logits = head(out)
    assert len(shapes) == layers * directions + 1
    assert shapes[0] == ((STEPS * BATCH, FEATURES), (FEATURES, HIDDEN))
    assert shapes[-1] == ((STEPS * BATCH, 2 * HIDDEN), (2 * HIDDEN, 3))
    shapes.clear()
    dhead = head.backward(np.ones_like(logits))
    assert dhead.shape == out.shape
    rnn.backward(dhead)
    assert len(shapes) == 2 + layers * directions * 4
    assert all(len(a) == 2 and len(b) == 2 for a, b in shapes), shapes


# -------------------------------------------------------------------- the emulated device
def _run_layers(device, backend, x, dout, dtype="float32"):
    """A bidirectional two-layer RNN and a Linear head on ``backend``, forward and backward:
    every product the layers make. Returns host copies of the outputs and gradients."""
    cp = device.module
    rnn = rnncu.RNN(
        FEATURES, HIDDEN, num_layers=2, bidirectional=True, backend=backend, dtype=dtype, seed=5
    )
    head = rnncu.Linear(2 * HIDDEN, 3, backend=backend, dtype=dtype, seed=6)
    out, h_n = rnn(cp.asarray(x.astype(dtype)), None, np.array([STEPS, 2, 0, 4, 1, STEPS]))
    logits = head(out)
    dhead = head.backward(cp.ones_like(logits))  # ones times the weight: rounded only in TF32
    dx, dh0 = rnn.backward(dhead + cp.asarray(dout.astype(dtype)), None)
    arrays = {"out": out, "h_n": h_n, "logits": logits, "dhead": dhead, "dx": dx, "dh0": dh0}
    arrays.update({f"rnn.{k}": v for k, v in rnn.grads.items()})
    arrays.update({f"head.{k}": v for k, v in head.grads.items()})
    return {name: backend.to_numpy(a) for name, a in arrays.items()}


def _inputs(rng):
    x = rng.standard_normal((STEPS, BATCH, FEATURES))
    dout = rng.standard_normal((STEPS, BATCH, 2 * HIDDEN))
    return x, dout


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def test_high_rounds_every_product_to_tf32_and_stays_near_float64(device, rng):
    x, dout = _inputs(rng)
    reference = _run_layers(device, CupyBackend(matmul_precision="highest"), x, dout, "float64")
    highest = _run_layers(device, CupyBackend(matmul_precision="highest"), x, dout)
    assert LINALG.sets == 0  # nothing to change: CuPy's setting was float32's already
    high = _run_layers(device, CupyBackend(matmul_precision="high"), x, dout)
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_DEFAULT  # restored
    assert LINALG.sets > 0
    for name, expected in reference.items():
        assert not np.isnan(high[name]).any(), name
        error_highest = _relative_error(highest[name], expected)
        error_high = _relative_error(high[name], expected)
        assert error_highest < 1e-5, (name, error_highest)
        # TF32 keeps 10 bits of mantissa (unit roundoff 2^-11 = 4.9e-4) in each operand
        assert error_high < 2e-3, (name, error_high)
        if name == "head.bias":  # a sum of the head's output gradient (ones): no product
            continue
        # every other array passes through a rounded product (the input projection at least)
        assert error_high > 50 * error_highest, (name, error_high, error_highest)


def test_highest_overrides_cupy_told_to_use_tf32_and_restores_it(device, rng, monkeypatch):
    """``CUPY_TF32=1`` makes CuPy's float32 products TF32 for everyone; rnncu's "highest" is
    float32 all the same, and CuPy's setting is TF32 again afterwards."""
    x, dout = _inputs(rng)
    plain = _run_layers(device, CupyBackend(matmul_precision="highest"), x, dout)
    LINALG.reset()
    monkeypatch.setenv("CUPY_TF32", "1")
    assert LINALG.get_compute_type(np.float32) == LINALG.COMPUTE_TYPE_TF32
    again = _run_layers(device, CupyBackend(matmul_precision="highest"), x, dout)
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_TF32
    high = _run_layers(device, CupyBackend(matmul_precision="high"), x, dout)
    for name in plain:
        np.testing.assert_array_equal(again[name], plain[name], err_msg=name)
    assert any(not np.array_equal(high[name], plain[name]) for name in plain)


def test_float64_and_pre_ampere_devices_are_untouched(device, rng, monkeypatch):
    """float64 products have no TF32; nor has a device below compute capability 8.0, where
    "high" runs float32 without a word (CuPy itself would warn at every product)."""
    x, dout = _inputs(rng)
    highest64 = _run_layers(device, CupyBackend(matmul_precision="highest"), x, dout, "float64")
    high64 = _run_layers(device, CupyBackend(matmul_precision="high"), x, dout, "float64")
    assert LINALG.sets == 0
    for name in highest64:
        np.testing.assert_array_equal(high64[name], highest64[name], err_msg=name)

    highest = _run_layers(device, CupyBackend(matmul_precision="highest"), x, dout)
    runtime = device.module.cuda.runtime
    properties = runtime.getDeviceProperties

    def volta(device_id: int) -> dict:
        return {**properties(device_id), "major": 7, "minor": 0}

    monkeypatch.setattr(runtime, "getDeviceProperties", volta)
    LINALG.reset(compute_capability=(7, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old_device = _run_layers(device, CupyBackend(matmul_precision="high"), x, dout)
    assert LINALG.sets == 0
    for name in highest:
        np.testing.assert_array_equal(old_device[name], highest[name], err_msg=name)


def test_cupys_tf32_from_a_newer_device_survives_a_pre_ampere_one(device, rng, monkeypatch):
    """A process with an Ampere-or-later GPU and an older one, CuPy told to use TF32
    (``CUPY_TF32=1``, resolved on the newer device): "highest" on the older device must not
    restore TF32 there, which CuPy refuses with a warning, keeping DEFAULT for the process
    (its products on the older device are float32 anyway)."""
    cp = device.module
    a = cp.asarray(rng.standard_normal((16, 24)).astype(np.float32))
    b = cp.asarray(rng.standard_normal((24, 8)).astype(np.float32))
    monkeypatch.setenv("CUPY_TF32", "1")
    assert LINALG.get_compute_type(np.float32) == LINALG.COMPUTE_TYPE_TF32  # on the H200
    runtime = device.module.cuda.runtime
    properties = runtime.getDeviceProperties

    def turing(device_id: int) -> dict:
        return {**properties(device_id), "major": 7, "minor": 5}

    monkeypatch.setattr(runtime, "getDeviceProperties", turing)
    LINALG.compute_capability = (7, 5)  # the older device is now the current one
    sets = LINALG.sets
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for precision in ("highest", "high"):
            product = CupyBackend(matmul_precision=precision).matmul(a, b)
            np.testing.assert_array_equal(product.get(), a.get() @ b.get(), err_msg=precision)
    assert LINALG.sets == sets
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_TF32


def test_threads_with_different_precisions_keep_their_own(device, rng):
    """CuPy's compute type is one setting per process: a thread under "high" must not lend
    it to a thread under "highest" (nor leave it behind)."""
    cp = device.module
    a = cp.asarray(rng.standard_normal((16, 24)).astype(np.float32))
    b = cp.asarray(rng.standard_normal((24, 8)).astype(np.float32))
    exact = a.get() @ b.get()
    rounded = to_tf32(a.get()) @ to_tf32(b.get())
    assert not np.array_equal(exact, rounded)
    backends = {"highest": CupyBackend(matmul_precision="highest"),
                "high": CupyBackend(matmul_precision="high")}  # fmt: skip
    wrong: list[str] = []
    start = threading.Barrier(2)

    def work(precision: str) -> None:
        expected = rounded if precision == "high" else exact
        start.wait()
        for _ in range(300):
            if not np.array_equal(backends[precision].matmul(a, b).get(), expected):
                wrong.append(precision)

    threads = [threading.Thread(target=work, args=(p,)) for p in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong, f"{len(wrong)} products in the other thread's precision: {set(wrong)}"
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_DEFAULT


def test_no_other_thread_changes_the_setting_between_its_check_and_the_product(
    device, rng, monkeypatch
):
    """The interleaving the lock is there for, forced rather than hoped for (the threads above
    seldom switch inside a product): the "highest" thread stops after reading CuPy's setting
    (float32's already: nothing to change) and before its product, until the "high" thread
    has set TF32 or half a second has passed, and "high" keeps TF32 set until "highest"'s
    product is done (or half a second). With the lock "high" cannot set it before then;
    without it "highest"'s product runs in TF32."""
    cp = device.module
    a = cp.asarray(rng.standard_normal((16, 24)).astype(np.float32))
    b = cp.asarray(rng.standard_normal((24, 8)).astype(np.float32))
    exact = a.get() @ b.get()
    rounded = to_tf32(a.get()) @ to_tf32(b.get())
    checked, changed, done = threading.Event(), threading.Event(), threading.Event()
    get_compute_type, set_compute_type = LINALG.get_compute_type, LINALG.set_compute_type

    def get_then_pause(dtype):
        value = get_compute_type(dtype)
        if threading.current_thread().name == "highest" and not checked.is_set():
            checked.set()
            changed.wait(timeout=0.5)
        return value

    def set_and_tell(dtype, compute_type):
        set_compute_type(dtype, compute_type)
        if compute_type == LINALG.COMPUTE_TYPE_TF32:
            changed.set()
            done.wait(timeout=0.5)

    monkeypatch.setattr(LINALG, "get_compute_type", get_then_pause)
    monkeypatch.setattr(LINALG, "set_compute_type", set_and_tell)
    results: dict[str, np.ndarray] = {}

    def highest() -> None:
        results["highest"] = CupyBackend(matmul_precision="highest").matmul(a, b).get()
        done.set()

    def high() -> None:
        checked.wait(timeout=5)
        results["high"] = CupyBackend(matmul_precision="high").matmul(a, b).get()

    threads = [threading.Thread(target=f, name=f.__name__) for f in (highest, high)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert checked.is_set() and changed.is_set()
    np.testing.assert_array_equal(results["highest"], exact)
    np.testing.assert_array_equal(results["high"], rounded)
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_DEFAULT


def test_a_product_that_fails_leaves_cupys_setting_as_it_was(device, monkeypatch):
    """A product that raises (operands that do not fit) restores CuPy's setting all the same:
    DEFAULT after "high", TF32 (``CUPY_TF32=1``) after "highest"."""
    cp = device.module
    a, b = cp.ones((2, 3), np.float32), cp.ones((4, 5), np.float32)
    with pytest.raises(ValueError):
        CupyBackend(matmul_precision="high").matmul(a, b)
    assert LINALG.sets == 2  # set to TF32, then back
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_DEFAULT
    LINALG.reset()
    monkeypatch.setenv("CUPY_TF32", "1")
    with pytest.raises(ValueError):
        CupyBackend(matmul_precision="highest").matmul(a, b)
    assert LINALG.sets == 2
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_TF32


def test_highest_leaves_a_pedantic_setting_in_place(device):
    """CuPy's COMPUTE_TYPE_PEDANTIC (``CUBLAS_COMPUTE_32F_PEDANTIC``) is float32 and stricter:
    "highest" runs under it untouched; "high" sets TF32 and then PEDANTIC again."""
    cp = device.module
    a = cp.ones((4, 3), np.float32)
    LINALG.set_compute_type(np.float32, LINALG.COMPUTE_TYPE_PEDANTIC)
    sets = LINALG.sets
    CupyBackend(matmul_precision="highest").matmul(a, a.T)
    assert LINALG.sets == sets
    CupyBackend(matmul_precision="high").matmul(a, a.T)
    assert LINALG.sets == sets + 2
    assert LINALG.compute_types["f"] == LINALG.COMPUTE_TYPE_PEDANTIC


def test_describe_and_the_environment_reach_the_cupy_backend(device, rng, monkeypatch):
    x, dout = _inputs(rng)
    by_attribute = _run_layers(device, CupyBackend(matmul_precision="high"), x, dout)
    monkeypatch.setenv(base.MATMUL_PRECISION_ENV, "high")
    backend = CupyBackend()
    assert backend.describe()["matmul_precision"] == "high"
    by_environment = _run_layers(device, backend, x, dout)
    for name in by_attribute:
        np.testing.assert_array_equal(by_environment[name], by_attribute[name], err_msg=name)
    monkeypatch.setenv(base.MATMUL_PRECISION_ENV, "low")
    with pytest.raises(ValueError, match="environment variable RNNCU_MATMUL_PRECISION"):
        ones = device.module.ones((2, 2), np.float32)
        backend.matmul(ones, ones)


def test_the_command_line_option_sets_the_precision_for_the_command(device, tmp_path, monkeypatch):
    """``--matmul-precision high`` reaches the products of a training run on the device (its
    loss moves by TF32's rounding, not more), and the environment is as it was afterwards."""
    from rnncu.cli import main

    monkeypatch.delenv(base.MATMUL_PRECISION_ENV, raising=False)
    metrics = {}
    for precision in ("highest", "high"):
        LINALG.reset()
        run = tmp_path / precision
        argv = ["train", "--hidden", "16", "--epochs", "1", "--backend", "cupy", "--out", str(run),
                "--matmul-precision", precision]  # fmt: skip
        assert main(argv) == 0
        assert base.MATMUL_PRECISION_ENV not in os.environ
        assert (LINALG.sets > 0) == (precision == "high"), precision
        metrics[precision] = json.loads((run / "metrics.json").read_text())
    highest, high = metrics["highest"]["test_loss"], metrics["high"]["test_loss"]
    assert highest != high
    assert abs(high - highest) < 1e-3 * highest, (highest, high)
    monkeypatch.setenv(base.MATMUL_PRECISION_ENV, "highest")
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "x"),
                 "--matmul-precision", "low"]) == 2  # fmt: skip
    assert os.environ[base.MATMUL_PRECISION_ENV] == "highest"
