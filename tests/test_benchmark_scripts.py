"""The CPU benchmark scripts run end to end on their smallest shape and print a full table
(their figures are for benchmarks/RESULTS.md, not for assertions)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import rnncu
from rnncu.backend import host_kernels

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_row(output: str, shape: str) -> list[str]:
    rows = [line for line in output.splitlines() if line.startswith(f"| {shape} |")]
    assert rows, output
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_cpu_compare_prints_every_contender(capsys) -> None:
    pytest.importorskip("torch")
    cpu_compare = _load("cpu_compare")
    assert cpu_compare.main(["--shapes", "rowdigits", "--repeats", "1", "--numpy-loop"]) == 0
    output = capsys.readouterr().out
    cells = _table_row(output, "rowdigits")
    assert cells[1] == "8, 128, 8, 64"
    has_jax = importlib.util.find_spec("jax") is not None
    for index in (2, 3, 5, 6, 9, 10) + ((4, 7) if has_jax else ()):
        # milliseconds with two decimals: a number, not its size (a fast machine prints 0.00)
        assert re.fullmatch(r"\d+\.\d\d", cells[index]), output
    if not has_jax:
        assert cells[4] == cells[7] == "-", output
    assert re.fullmatch(r"\d+\.\d\dx", cells[8]), output
    assert "with host_rnn.c | NumPy only" in output


def test_the_jax_contender_is_the_same_rnn(rng) -> None:
    """The JAX peer computes what rnncu and torch compute (float32, the same weights), and
    its gradient covers the input and every weight."""
    jax = pytest.importorskip("jax")
    cpu_compare = _load("cpu_compare")
    steps, batch, features, hidden = 5, 3, 4, 7
    rnn = rnncu.RNN(features, hidden, backend="numpy", dtype="float32", seed=0)
    weights = {name: rnn.backend.to_numpy(rnn.params[name]) for name in rnn.params}
    params = {
        "w_ih": weights["weight_ih_l0"],
        "w_hh": weights["weight_hh_l0"],
        "b_ih": weights["bias_ih_l0"],
        "b_hh": weights["bias_hh_l0"],
    }
    x = rng.standard_normal((steps, batch, features)).astype(np.float32)
    out, _ = rnn(x)
    np.testing.assert_allclose(
        np.asarray(cpu_compare.jax_rnn(params, x)), out, rtol=1e-5, atol=1e-6
    )
    dx, _ = rnn.backward(np.ones_like(out))
    jax_params, jax_x = jax.grad(lambda p, xs: cpu_compare.jax_rnn(p, xs).sum(), argnums=(0, 1))(
        params, x
    )
    np.testing.assert_allclose(np.asarray(jax_x), dx, rtol=1e-4, atol=1e-5)
    for ours, theirs in (
        ("weight_hh_l0", "w_hh"),
        ("weight_ih_l0", "w_ih"),
        ("bias_hh_l0", "b_hh"),
    ):
        np.testing.assert_allclose(
            np.asarray(jax_params[theirs]),
            rnn.backend.to_numpy(rnn.grads[ours]),
            rtol=1e-4,
            atol=1e-5,
        )


class _FakeClockJax:
    """A stand-in ``jax`` module over a fake clock: each call of the timed function costs
    ``call_ms`` and each wait costs ``wake_ms`` whatever it waits for, so the figures the
    timer must produce are known exactly."""

    def __init__(self, call_ms: float, wake_ms: float) -> None:
        self.now_ms, self.call_ms, self.wake_ms = 0.0, call_ms, wake_ms
        self.waited_for: list[int] = []

    def perf_counter(self) -> float:
        return self.now_ms / 1e3

    def call(self) -> object:
        self.now_ms += self.call_ms
        return object()

    def block_until_ready(self, value: object) -> object:
        self.waited_for.append(len(value) if isinstance(value, list) else 1)
        self.now_ms += self.wake_ms
        return value


@pytest.mark.parametrize(
    ("call_ms", "wake_ms", "expected_ms"),
    [
        # a short call: the wake-up dominates a call waited for alone, and is paid once per
        # 5 calls back to back (repeats 20 -> 5 calls a round)
        (0.3, 0.05, 0.3 + 0.05 / 5),
        # a wait that costs nothing: both ways give the call's own time
        (2.0, 0.0, 2.0),
    ],
)
def test_the_gpu_jax_peer_is_timed_the_faster_of_two_ways(
    monkeypatch, call_ms: float, wake_ms: float, expected_ms: float
) -> None:
    """JAX runs on its own streams, so gpu_compare times it by wall clock. The bar must not be
    slower than JAX runs: per call, the lower of a call waited for alone and of back-to-back
    calls waited for once (all of a round's results, not the last one only)."""
    gpu_compare = _load("gpu_compare")
    fake = _FakeClockJax(call_ms, wake_ms)
    monkeypatch.setitem(sys.modules, "jax", fake)
    monkeypatch.setattr(gpu_compare.time, "perf_counter", fake.perf_counter)
    assert gpu_compare.time_jax(fake.call, repeats=20, warmup=2) == pytest.approx(expected_ms)
    # 2 warm-ups and 20 calls waited for alone, then 3 rounds of 5 waited for together
    assert fake.waited_for == [1] * 22 + [5] * 3


def test_the_gpu_jax_peer_runs_under_the_installed_jax(monkeypatch) -> None:
    """gpu_compare's JAX peer (jit of lax.scan, its gradient, the timing) under the JAX this
    machine has, told it sees a GPU: the one device run must not lose the peer to an API
    change (the device image had JAX 0.11.2)."""
    jax = pytest.importorskip("jax")
    gpu_compare = _load("gpu_compare")

    class Gpu:
        platform = "gpu"

    monkeypatch.setattr(jax, "devices", lambda *args: [Gpu()])
    result = gpu_compare.bench_jax((4, 3, 5, 7), repeats=4, warmup=1)
    assert result is not None and set(result) == {"fwd", "fwd+bwd"}
    assert all(np.isfinite(v) and v > 0 for v in result.values()), result


def test_cpu_recurrence_times_both_paths(capsys) -> None:
    if host_kernels.load() is None:
        pytest.skip(f"compiled kernels unavailable: {host_kernels.status()}")
    cpu_recurrence = _load("cpu_recurrence")
    args = ["--shapes", "rowdigits", "--rounds", "1", "--repeats", "1"]
    assert cpu_recurrence.main(args) == 0
    output = capsys.readouterr().out
    cells = _table_row(output, "rowdigits")
    assert cells[1] == "8, 128, 64" and cells[2] == "2^19"
    for cell in cells[3:]:
        assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d", cell), output
    with pytest.raises(SystemExit):
        cpu_recurrence.main(["--shapes", "nosuchshape"])
