"""The CPU benchmark scripts run end to end on their smallest shape and print a full table
(their figures are for benchmarks/RESULTS.md, not for assertions)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

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

    def __init__(self, call_ms: float | list[float], wake_ms: float) -> None:
        # a list: the cost of each call in turn
        self.now_ms, self.call_ms, self.wake_ms = 0.0, call_ms, wake_ms
        self.waited_for: list[int] = []

    def perf_counter(self) -> float:
        return self.now_ms / 1e3

    def call(self) -> object:
        self.now_ms += self.call_ms.pop(0) if isinstance(self.call_ms, list) else self.call_ms
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


def _markdown_tables(output: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of ``output``, in order, as rows of {column header: cell}."""
    tables: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in output.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables.append([])
        elif not all(set(cell) <= {"-"} for cell in cells):
            tables[-1].append(dict(zip(header, cells, strict=True)))
    return tables


# --------------------------------------------------------------------- the shapes of ANCHORS
ANCHORS_MD = Path(__file__).resolve().parents[2] / "shared" / "ANCHORS.md"


def _anchor_shapes(heading: str) -> dict[str, tuple[int, ...]]:
    """(T, B, D, H) by name from the table of ANCHORS.md's section whose heading starts so."""
    sections = ANCHORS_MD.read_text().split("\n## ")
    (section,) = [s for s in sections if s.startswith(heading)]
    found = re.findall(r"^\| (\w+) \| (\d+), (\d+), (\d+), (\d+) \|", section, re.M)
    return {name: tuple(map(int, dims)) for name, *dims in found}


def test_benchmark_shapes_agree_between_the_scripts() -> None:
    """The pytest-benchmark suites, the comparison scripts and the recurrence benchmark time
    the same (T, B, D, H) under one name, so their figures can be read side by side."""
    gpu_compare, cpu_compare = _load("gpu_compare"), _load("cpu_compare")
    cpu_recurrence = _load("cpu_recurrence")
    bench_gpu, bench_cpu = _load("test_bench_gpu"), _load("test_bench_cpu")
    assert set(gpu_compare.QUICK_SHAPES) <= set(gpu_compare.SHAPES)  # --quick must run
    for name, shape in bench_gpu.SHAPES.items():
        assert gpu_compare.SHAPES[name] == shape, name
    assert bench_cpu.SHAPES == cpu_compare.SHAPES
    # cpu_recurrence's default run: the recurrences (T, B, H) of cpu_compare's shapes
    assert list(cpu_recurrence.DEFAULT_SHAPES) == list(cpu_compare.SHAPES)
    for name, (steps, batch, _, hidden) in cpu_compare.SHAPES.items():
        assert cpu_recurrence.SHAPES[name] == (steps, batch, hidden), name


@pytest.mark.skipif(not ANCHORS_MD.exists(), reason=f"no {ANCHORS_MD} beside the checkout")
def test_benchmark_shapes_are_those_of_anchors_md() -> None:
    """The figures to beat (shared/ANCHORS.md) were measured on these shapes: a benchmark on
    another shape under the same name would be compared with the wrong figure."""
    gpu_shapes = _anchor_shapes("cuDNN")
    cpu_shapes = _anchor_shapes("CPU")
    assert len(gpu_shapes) == 6 and len(cpu_shapes) == 5, (gpu_shapes, cpu_shapes)
    assert _load("gpu_compare").SHAPES == gpu_shapes
    assert _load("cpu_compare").SHAPES == cpu_shapes


# ------------------------------------------------------------------- gpu_compare, host logic
def test_the_gpu_timer_is_the_median_of_event_times_after_the_warm_up(monkeypatch) -> None:
    """time_cuda on a stand-in CuPy whose events read a fake clock: the warm-up calls are not
    timed, each timed call is bracketed by its two events, and one slow call (a hiccup of
    the shared machine) does not move the figure: the median, not the lowest or the mean."""
    gpu_compare = _load("gpu_compare")
    clock = {"ms": 0.0}

    class Event:
        def record(self) -> None:
            self.ms = clock["ms"]

        def synchronize(self) -> None:
            pass

    class Stream:
        def synchronize(self) -> None:
            pass

    cuda = SimpleNamespace(
        Event=Event,
        get_current_stream=Stream,
        get_elapsed_time=lambda start, stop: stop.ms - start.ms,
    )
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace(cuda=cuda))
    warmup_costs, timed_costs = [40.0, 30.0], [2.0, 9.0, 1.5, 2.5, 3.0]
    costs = warmup_costs + timed_costs

    def fn() -> None:
        clock["ms"] += costs.pop(0)

    result = gpu_compare.time_cuda(fn, repeats=len(timed_costs), warmup=len(warmup_costs))
    assert not costs  # every call made, none more
    assert result == 2.5  # the median of the timed calls' own costs


def test_the_gpu_jax_peer_is_the_median_of_calls_waited_for_alone(monkeypatch) -> None:
    """One slow call among those waited for alone does not move the JAX bar (their median,
    not their mean), and where back-to-back calls run slower the lone calls' figure is it."""
    gpu_compare = _load("gpu_compare")
    # 2 warm-ups, 20 lone calls of 1 ms but one of 100 ms, then 3 rounds of 5 calls of 2 ms
    fake = _FakeClockJax([1.0] * 2 + [1.0] * 9 + [100.0] + [1.0] * 10 + [2.0] * 15, 0.0)
    monkeypatch.setitem(sys.modules, "jax", fake)
    monkeypatch.setattr(gpu_compare.time, "perf_counter", fake.perf_counter)
    assert gpu_compare.time_jax(fake.call, repeats=20, warmup=2) == pytest.approx(1.0)
    assert fake.call_ms == []


def _gpu_row(shape: str, tbdh: tuple[int, int, int, int], ms: dict) -> dict:
    return {"shape": shape, "TBDH": tbdh, "ms": ms}


def test_gpu_tables_put_each_figure_in_its_column_and_the_speedup_over_the_best_peer() -> None:
    """format_table on made-up rows: each runner's ms under its own header in both modes,
    the speed-up is the best peer's time over rnncu's best path's (here rnncu_auto beats the
    step path, and JAX beats cuDNN), and a shape with no peer says n/a instead of failing."""
    gpu_compare = _load("gpu_compare")
    fwd = {"rnncu_step": 4.0, "rnncu_step_graphs": 3.25, "rnncu_auto": 1.5, "rnncu_grid": 2.125,
           "cudnn": 6.0, "jax": 3.0, "naive_cupy": 30.0}  # fmt: skip
    both = {name: 2 * value + 0.0625 for name, value in fwd.items()}
    full = _gpu_row("full", (10, 4, 3, 8), {k: {"fwd": fwd[k], "fwd+bwd": both[k]} for k in fwd})
    alone = _gpu_row("alone", (5, 2, 3, 8), {"rnncu_step": {"fwd": 0.5, "fwd+bwd": 1.0}})
    tables = _markdown_tables(gpu_compare.format_table([full, alone]))
    for table, mode, values in ((tables[0], "fwd", fwd), (tables[1], "fwd+bwd", both)):
        by_shape = {row["shape"]: row for row in table}
        for runner, value in values.items():
            # the table's three decimals of the figure, not fewer
            assert float(by_shape["full"][runner]) == pytest.approx(value, abs=1e-3), (mode, runner)
        best_peer = min(values["cudnn"], values["jax"], values["naive_cupy"])
        best_mine = min(values["rnncu_step"], values["rnncu_step_graphs"], values["rnncu_auto"],
                        values["rnncu_grid"])  # fmt: skip
        speedup = by_shape["full"]["speed-up vs best peer"]
        assert float(speedup.removesuffix("x")) == pytest.approx(best_peer / best_mine, abs=5e-3)
        assert by_shape["alone"]["speed-up vs best peer"] == "n/a"
        assert by_shape["alone"]["cudnn"] == "-"


def test_gpu_tables_per_step_graph_counts_and_step_kernels() -> None:
    """The per-step tables divide the forward time by T (not B), the graph counts read in the
    header's order, and the step-kernel table marks the chosen tile with rnncu_step's own
    fwd+bwd time, the tiles from the largest down, then matvec."""
    gpu_compare = _load("gpu_compare")
    ms = {
        "rnncu_step": {"fwd": 0.8, "fwd+bwd": 2.25},
        "rnncu_step_graphs": {"fwd": 0.4, "fwd+bwd": 1.5},
        "rnncu_auto": {"fwd": 0.2, "fwd+bwd": 0.5},
        "rnncu_grid": {"fwd": 0.3, "fwd+bwd": 0.7},
        "step_64x64": {"fwd": 1.0, "fwd+bwd": 3.0},
        "step_16x16": {"fwd": 1.0, "fwd+bwd": 4.0},
        "step_matvec": {"fwd": 1.0, "fwd+bwd": 5.0},
    }
    row = _gpu_row("s", (40, 8, 3, 16), ms)
    counts = {"replayed": 7, "captured": 2, "launched": 1, "dropped": 3}
    row |= {"auto_path": "cluster kernels", "step_tile": "32x32", "graph_counts": counts}
    per_step, graphs, tiles = _markdown_tables(gpu_compare.format_table([row]))[2:]
    steps = row["TBDH"][0]
    assert float(per_step[0]["auto us/step"]) == pytest.approx(0.2e3 / steps, abs=5e-3)
    assert float(per_step[0]["grid us/step"]) == pytest.approx(0.3e3 / steps, abs=5e-3)
    assert per_step[0]["auto path"] == "cluster kernels"
    assert float(graphs[0]["step us/step"]) == pytest.approx(0.8e3 / steps, abs=5e-3)
    assert float(graphs[0]["graphs us/step"]) == pytest.approx(0.4e3 / steps, abs=5e-3)
    (counted,) = [v for k, v in graphs[0].items() if k.startswith("loops replayed")]
    assert counted == "7 / 2 / 1 (3)"
    assert list(tiles[0]) == ["shape", "64x64", "32x32", "16x16", "matvec"]
    assert tiles[0]["32x32"] == "2.250*"
    assert [tiles[0][k] for k in ("64x64", "16x16", "matvec")] == ["3.000", "4.000", "5.000"]


def _stub_runners(monkeypatch, gpu_compare, bench_rnncu, bench_torch) -> None:
    """gpu_compare's runners replaced: rnncu's and cuDNN's by the given stand-ins, JAX absent,
    the naive loop a constant, no step-tile sweeps."""
    monkeypatch.setattr(gpu_compare, "bench_rnncu", bench_rnncu)
    monkeypatch.setattr(gpu_compare, "bench_torch", bench_torch)
    monkeypatch.setattr(gpu_compare, "bench_jax", lambda *args: None)
    monkeypatch.setattr(gpu_compare, "bench_naive_cupy", lambda *args: {"fwd": 9.0})
    monkeypatch.setattr(gpu_compare, "_sweep_step_tiles", lambda *args: None)
    monkeypatch.setattr(gpu_compare, "_sweep_tf32_tiles", lambda *args: None)


def test_gpu_run_keeps_the_other_runners_when_one_fails_and_reports_the_path_that_ran(
    monkeypatch, capsys
) -> None:
    """gpu_compare.run with stand-in runners (no device): a runner that raises or returns
    None leaves no entry and the others' figures stand; rnncu_grid runs only where auto took
    clusters; and the auto path is read from this run's plans (cleared before each rnncu
    runner), so a shape where auto ran the step path does not show the previous shape's
    persistent kernels."""
    from rnncu.backend import persistent

    gpu_compare = _load("gpu_compare")
    monkeypatch.setattr(gpu_compare, "SHAPES", {"clustered": (3, 2, 4, 8), "stepped": (5, 2, 4, 8)})
    monkeypatch.setattr(persistent, "last_plans", {})
    calls: list[tuple] = []

    def plan(kind: str) -> SimpleNamespace:
        return SimpleNamespace(
            name_expression=f"persistent_{kind}_forward", grid=(2, 1), threads=64
        )

    def bench_rnncu(shape, repeats, warmup, recurrence, variants=None, step_graphs=False,
                    report=None):  # fmt: skip
        calls.append((shape[0], recurrence, variants, step_graphs))
        if recurrence == "auto" and shape[0] == 3:  # persistent on the first shape only
            kind = "grid" if variants else "cluster"
            persistent.last_plans.update(forward=plan(kind), backward=plan(kind))
        return {"fwd": 1.0, "fwd+bwd": 2.0}

    def cudnn_fails(*args):
        raise RuntimeError("no device")

    _stub_runners(monkeypatch, gpu_compare, bench_rnncu, cudnn_fails)
    clustered, stepped = gpu_compare.run(["clustered", "stepped"], 4, 1)
    assert "cudnn failed on clustered: RuntimeError: no device" in capsys.readouterr().err
    assert set(clustered["ms"]) == {
        "rnncu_step", "rnncu_step_graphs", "rnncu_auto", "rnncu_grid", "naive_cupy"
    }  # fmt: skip
    assert set(stepped["ms"]) == {"rnncu_step", "rnncu_step_graphs", "rnncu_auto", "naive_cupy"}
    assert "persistent_cluster_forward grid (2, 1) x 64" in clustered["auto_path"]
    assert clustered["grid_path"].startswith("persistent_grid_forward")
    assert stepped["auto_path"] == "step"
    assert (3, "auto", "batch,grid", False) in calls and (3, "step", None, True) in calls
    # the table of these rows prints (no runner entry is None)
    assert "| stepped |" in gpu_compare.format_table([clustered, stepped])


def test_gpu_tf32_runners_run_on_their_shapes_only_with_tf32_on(monkeypatch) -> None:
    """The opt-in TF32 runners: rnncu's auto and step paths with matmul_precision "high" and
    cuDNN with TF32 allowed, on the shapes of TF32_SHAPES only, after every shape's float32
    runners (a run cut short keeps those); the float32 runners stay float32."""
    gpu_compare = _load("gpu_compare")
    monkeypatch.setattr(gpu_compare, "SHAPES", {"big": (3, 2, 4, 8), "small": (5, 2, 4, 8)})
    monkeypatch.setattr(gpu_compare, "TF32_SHAPES", ("big",))
    rnncu_calls: list[tuple] = []
    torch_calls: list[tuple] = []

    def bench_rnncu(shape, repeats, warmup, recurrence, variants=None, step_graphs=False,
                    report=None, matmul_precision=None):  # fmt: skip
        rnncu_calls.append((shape[0], recurrence, matmul_precision))
        return {"fwd": 1.0, "fwd+bwd": 2.0 if matmul_precision is None else 1.5}

    def bench_torch(shape, repeats, warmup, tf32=False):
        torch_calls.append((shape[0], tf32))
        return {"fwd": 2.0, "fwd+bwd": 4.0 if not tf32 else 3.0}

    _stub_runners(monkeypatch, gpu_compare, bench_rnncu, bench_torch)
    saved: list[tuple[int, bool]] = []

    def progress(rows: list) -> None:
        saved.append((len(rows), "rnncu_tf32" in rows[0]["ms"]))

    big, small = gpu_compare.run(["big", "small"], 4, 1, progress=progress)
    # the TF32 pass comes after every shape's float32 runners, each shape saved as it ends
    assert saved == [(1, False), (2, False), (2, True)]
    assert big["ms"]["rnncu_tf32"] == {"fwd": 1.0, "fwd+bwd": 1.5}
    assert big["ms"]["cudnn_tf32"] == {"fwd": 2.0, "fwd+bwd": 3.0}
    assert "rnncu_tf32" not in small["ms"] and "cudnn_tf32" not in small["ms"]
    assert [c for c in rnncu_calls if c[2] is not None] == [
        (3, "auto", "high"),
        (3, "step", "high"),
    ]
    assert torch_calls == [(3, False), (5, False), (3, True)]
    # the float32 table is unchanged by them: its speed-up is float32 against float32
    tables = _markdown_tables(gpu_compare.format_table([big, small]))
    assert "rnncu_tf32" not in tables[1][0]
    assert tables[1][0]["speed-up vs best peer"] == "2.00x"
    (tf32,) = [t for t in tables if "rnncu_tf32" in t[0]]
    assert [row["shape"] for row in tf32] == ["big"]
    assert tf32[0]["rnncu_auto"] == tf32[0]["rnncu_step"] == "1.000 / 2.000"
    assert tf32[0]["rnncu_tf32"] == tf32[0]["rnncu_tf32_step"] == "1.000 / 1.500"
    assert tf32[0]["cudnn_tf32"] == "2.000 / 3.000"
    assert tf32[0]["rnncu_tf32 speed-up vs cudnn_tf32, fwd+bwd"] == "2.00x"
    assert tf32[0]["rnncu_tf32_step speed-up vs rnncu_step, fwd+bwd"] == "1.33x"
    assert "opt-in TF32" not in gpu_compare.format_table([small])


def test_gpu_ran_path_needs_both_directions_persistent(monkeypatch) -> None:
    """ran_path names the persistent kernels only when both forward and backward ran one;
    otherwise that run was (at least in part) the step path."""
    from rnncu.backend import persistent

    gpu_compare = _load("gpu_compare")
    forward = SimpleNamespace(name_expression="fwd_kernel", grid=(4, 1), threads=128)
    backward = SimpleNamespace(name_expression="bwd_kernel", grid=(2, 2), threads=256)
    monkeypatch.setattr(persistent, "last_plans", {"forward": forward})
    assert gpu_compare.ran_path() == "step"
    persistent.last_plans["backward"] = backward
    assert gpu_compare.ran_path() == "fwd_kernel grid (4, 1) x 128 / bwd_kernel grid (2, 2) x 256"


def test_gpu_compare_main_parses_shapes_saves_each_shape_and_reprints_the_saved_tables(
    monkeypatch, tmp_path, capsys
) -> None:
    """main with a stand-in run: --quick and --shapes (spaces allowed) pick the shapes, an
    unknown one is an argument error, --repeats/--warmup reach the runners (with at least one
    warm-up by default: the first calls compile), the JSON is written after every shape, and
    --table-from prints the same tables from it (what gpu_check.sh shows after a time-out);
    a run where rnncu measured nothing exits 1."""
    gpu_compare = _load("gpu_compare")
    seen: list[tuple] = []
    saved_after: list[int] = []
    path = tmp_path / "run.json"

    def run(shapes, repeats, warmup, progress=None):
        seen.append((shapes, repeats, warmup))
        rows = []
        for name in shapes:
            ms = {"rnncu_step": {"fwd": 1.25, "fwd+bwd": 2.5}, "cudnn": {"fwd": 2.0}}
            rows.append(_gpu_row(name, gpu_compare.SHAPES[name], ms))
            if progress is not None:
                progress(rows)
                if path.exists():  # written by then, with the shapes so far
                    saved_after.append(len(json.loads(path.read_text())["rows"]))
        return rows

    monkeypatch.setattr(gpu_compare, "run", run)
    assert gpu_compare.main(["--quick"]) == 0
    assert seen[-1][0] == list(gpu_compare.QUICK_SHAPES)
    assert seen[-1][2] >= 1
    args = ["--shapes", " medium , rowmnist", "--repeats", "7", "--warmup", "2"]
    assert gpu_compare.main([*args, "--json", str(path)]) == 0
    assert seen[-1] == (["medium", "rowmnist"], 7, 2)
    assert saved_after == [1, 2]
    printed = capsys.readouterr().out
    assert gpu_compare.main(["--table-from", str(path)]) == 0
    from_file = capsys.readouterr().out
    assert from_file.strip() and from_file.strip() in printed
    with pytest.raises(SystemExit):
        gpu_compare.main(["--shapes", "medium,nosuchshape"])
    monkeypatch.setattr(gpu_compare, "run", lambda *args, **kwargs: [
        _gpu_row("medium", (1, 1, 1, 1), {"cudnn": {"fwd": 1.0}})
    ])  # fmt: skip
    assert gpu_compare.main(["--shapes", "medium"]) == 1


# ------------------------------------------------------------------- cpu_compare, host logic
def test_cpu_blockwise_medians_alternate_blocks_and_take_the_median(monkeypatch) -> None:
    """Each round runs every contender in a block of its own (untimed warm-up calls, then its
    share of the repeats), round after round; the figure is the median of the timed calls,
    so one slow call (a hiccup of the shared machine) does not move it."""
    cpu_compare = _load("cpu_compare")
    clock = {"ms": 0.0}
    # a: 1 ms a call but 7 ms for its 2nd timed call; b: 3 ms a call; warm-ups cost 50 ms
    timed_costs = {"a": [1.0, 7.0, 1.0, 1.0], "b": [3.0] * 4}
    blocks: list[tuple[str, int]] = []

    def contender(name: str):
        def fn() -> None:
            if blocks and blocks[-1][0] == name:
                blocks[-1] = (name, blocks[-1][1] + 1)
            else:
                blocks.append((name, 1))
            warm = blocks[-1][1] <= 2  # warmup=2 below: the first two calls of a block
            clock["ms"] += 50.0 if warm else timed_costs[name].pop(0)

        return fn

    monkeypatch.setattr(cpu_compare.time, "perf_counter", lambda: clock["ms"] / 1e3)
    medians = cpu_compare.blockwise_medians(
        {"a": contender("a"), "b": contender("b")}, repeats=4, rounds=2, warmup=2
    )
    # 2 rounds, each a block of a then a block of b, 2 warm-ups and 4 // 2 timed calls each
    assert blocks == [("a", 4), ("b", 4), ("a", 4), ("b", 4)]
    assert medians == {"a": pytest.approx(1.0), "b": pytest.approx(3.0)}
    # a contender of several calls (BackToBack) is timed per call
    blocks.clear()
    timed_costs = {"a": [8.0] * 4, "b": [3.0] * 4}
    several = contender("a")
    several.calls = 4  # type: ignore[attr-defined]
    medians = cpu_compare.blockwise_medians(
        {"a": several, "b": contender("b")}, repeats=4, rounds=2, warmup=2
    )
    assert medians == {"a": pytest.approx(2.0), "b": pytest.approx(3.0)}
    # the default warm-up: every block starts with calls that are not timed
    blocks.clear()
    timed_costs = {"a": [1.0] * 10, "b": [3.0] * 10}  # the default warm-up may take some
    cpu_compare.blockwise_medians({"a": contender("a"), "b": contender("b")}, 4, rounds=2)
    assert all(count > 4 // 2 for _, count in blocks), blocks


def test_cpu_jax_back_to_back_issues_its_calls_then_waits_for_all_once(monkeypatch) -> None:
    cpu_compare = _load("cpu_compare")
    events: list[object] = []
    stand_in = SimpleNamespace(block_until_ready=lambda results: events.append(list(results)))
    monkeypatch.setitem(sys.modules, "jax", stand_in)
    issued = iter(range(100))
    back_to_back = cpu_compare.BackToBack(lambda: events.append(next(issued)) or "r", calls=3)
    back_to_back()
    assert back_to_back.calls == 3
    assert events == [0, 1, 2, ["r", "r", "r"]]  # no wait between the calls
    # a row without JAX keeps its figures as they were
    assert cpu_compare.best_jax_timings({"shape": "s", "torch_fwd": 1.0}) == {
        "shape": "s",
        "torch_fwd": 1.0,
    }
    # each JAX figure the lower of its two, the call alone kept beside it; a figure without
    # its back-to-back twin stays as it was, and the row given is left alone
    row = {"jax_fwd": 2.0, "jax_fwd_back_to_back": 1.5, "jax_fwd_bwd": 4.0}
    assert cpu_compare.best_jax_timings(row) == {
        "jax_fwd": 1.5,
        "jax_fwd_alone": 2.0,
        "jax_fwd_back_to_back": 1.5,
        "jax_fwd_bwd": 4.0,
    }
    assert row == {"jax_fwd": 2.0, "jax_fwd_back_to_back": 1.5, "jax_fwd_bwd": 4.0}


def test_cpu_jax_contenders_time_the_same_calls_alone_and_back_to_back() -> None:
    """Each back-to-back contender repeats its twin's call (the forward, or the gradients),
    8 times, as RESULTS.md reports the figures."""
    jax = pytest.importorskip("jax")
    cpu_compare = _load("cpu_compare")
    contenders = cpu_compare.jax_contenders((3, 2, 4, 5))
    assert set(contenders) == {*cpu_compare.JAX_TIMINGS, *cpu_compare.JAX_TIMINGS.values()}
    for alone, back_to_back in cpu_compare.JAX_TIMINGS.items():
        repeated = contenders[back_to_back]
        assert isinstance(repeated, cpu_compare.BackToBack) and repeated.calls == 8
        expected = jax.tree_util.tree_leaves(contenders[alone]())
        got = jax.tree_util.tree_leaves(repeated.fn())
        assert len(got) == len(expected), alone
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert repeated() is None


def test_cpu_lengths_span_half_to_the_whole_sequence() -> None:
    """The masked contender's lengths: every one from 1 (T/2 at least) up to T, the longest
    the whole sequence, so the masked path does about as much work as the plain one."""
    cpu_compare = _load("cpu_compare")
    for steps, batch in ((1, 4), (8, 5), (784, 32)):
        lengths = cpu_compare._lengths(steps, batch)
        assert lengths.dtype == np.int64 and lengths.shape == (batch,)
        assert lengths.min() >= max(1, steps // 2) and lengths.max() == steps, lengths


def test_cpu_rnncu_contenders_run_backward_and_switch_the_compiled_loops_off_only_inside(
    monkeypatch,
) -> None:
    """rnncu's fwd+bwd contenders call backward (the lengths one with lengths); the
    --numpy-loop one runs forward and backward with kernels/host_rnn.c switched off, and
    switches it back on (for the other contenders, timed after it in the same round)."""
    cpu_compare = _load("cpu_compare")
    loader = host_kernels.load
    during: list[tuple[str, bool]] = []  # (what ran, with the compiled loops off)
    forward, backward = rnncu.RNN.__call__, rnncu.RNN.backward

    def spy_forward(self, x, *args, **kwargs):
        what = "forward" if kwargs.get("lengths") is None else "lengths"
        during.append((what, host_kernels.load() is None))
        return forward(self, x, *args, **kwargs)

    def spy_backward(self, grad, *args, **kwargs):
        during.append(("backward", host_kernels.load() is None))
        return backward(self, grad, *args, **kwargs)

    monkeypatch.setattr(rnncu.RNN, "__call__", spy_forward)
    monkeypatch.setattr(rnncu.RNN, "backward", spy_backward)
    contenders = cpu_compare.rnncu_contenders((4, 3, 2, 5), numpy_loop=True)
    off = loader() is None  # no compiler here: off for all of them
    for name, expected in (
        ("rnncu_fwd", [("forward", off)]),
        ("rnncu_fwd_bwd", [("forward", off), ("backward", off)]),
        ("rnncu_fwd_bwd_lengths", [("lengths", off), ("backward", off)]),
        ("rnncu_fwd_bwd_numpy_loop", [("forward", True), ("backward", True)]),
    ):
        during.clear()
        contenders[name]()
        assert during == expected, name
        assert host_kernels.load is loader, name


def test_cpu_compare_table_and_json_put_each_median_in_its_place(monkeypatch, tmp_path, capsys):
    """cpu_compare.main with stand-in contenders and medians: each figure under its header,
    the ratio rnncu fwd+bwd over the best peer's fwd+bwd (JAX's here, the faster), the
    --numpy-loop ratio compiled over NumPy-only, --repeats passed on, every shape by default,
    the JSON holding the same medians, and an unknown shape an argument error."""
    cpu_compare = _load("cpu_compare")
    names = ["rnncu_fwd", "rnncu_fwd_bwd", "rnncu_fwd_bwd_lengths", "rnncu_fwd_bwd_numpy_loop"]
    names += ["torch_fwd", "torch_fwd_bwd", "torch_fwd_bwd_packed", "jax_fwd", "jax_fwd_bwd"]
    names += ["jax_fwd_back_to_back", "jax_fwd_bwd_back_to_back"]
    # JAX's back-to-back fwd+bwd (5.5) is faster than its call alone (6.0), its fwd slower
    times = (1.25, 4.5, 5.75, 9.0, 2.5, 8.0, 12.0, 3.25, 6.0, 3.5, 5.5)
    medians = dict(zip(names, times, strict=True))
    best = {**medians, "jax_fwd": 3.25, "jax_fwd_bwd": 5.5}
    repeats_seen: list[int] = []

    def fake_medians(contenders, repeats):
        repeats_seen.append(repeats)
        assert set(contenders) == set(names)
        return dict(medians)

    monkeypatch.setattr(cpu_compare, "rnncu_contenders", lambda shape, loop: {
        n: None for n in names if n.startswith("rnncu") and (loop or "loop" not in n)
    })  # fmt: skip
    monkeypatch.setattr(cpu_compare, "torch_contenders", lambda shape: {
        n: None for n in names if n.startswith("torch")
    })  # fmt: skip
    monkeypatch.setattr(cpu_compare, "jax_contenders", lambda shape: {
        n: None for n in names if n.startswith("jax")
    })  # fmt: skip
    monkeypatch.setattr(cpu_compare, "blockwise_medians", fake_medians)
    saved = tmp_path / "cpu.json"
    assert cpu_compare.main(["--repeats", "9", "--numpy-loop", "--json", str(saved)]) == 0
    output = capsys.readouterr().out
    assert repeats_seen == [9] * len(cpu_compare.SHAPES)
    main_table, loop_table = _markdown_tables(output)
    assert [row["shape"] for row in main_table] == list(cpu_compare.SHAPES)
    columns = {
        "rnncu fwd": "rnncu_fwd", "torch fwd": "torch_fwd", "jax fwd": "jax_fwd",
        "rnncu fwd+bwd": "rnncu_fwd_bwd", "torch fwd+bwd": "torch_fwd_bwd",
        "jax fwd+bwd": "jax_fwd_bwd", "rnncu fwd+bwd, lengths": "rnncu_fwd_bwd_lengths",
        "torch fwd+bwd, packed": "torch_fwd_bwd_packed",
    }  # fmt: skip
    row = main_table[0]
    for header, name in columns.items():
        assert float(row[header]) == pytest.approx(best[name], abs=5e-3), header
    best_peer = min(medians["torch_fwd_bwd"], medians["jax_fwd_bwd_back_to_back"])
    ratio = float(row["fwd+bwd ratio"].removesuffix("x"))
    assert ratio == pytest.approx(medians["rnncu_fwd_bwd"] / best_peer, abs=5e-3)
    ratio = float(loop_table[0]["ratio"].removesuffix("x"))
    compiled, plain = medians["rnncu_fwd_bwd"], medians["rnncu_fwd_bwd_numpy_loop"]
    assert ratio == pytest.approx(compiled / plain, abs=5e-3)
    rows = json.loads(saved.read_text())
    assert [r["shape"] for r in rows] == list(cpu_compare.SHAPES)
    assert all(r[name] == best[name] for r in rows for name in names)
    assert all(r["jax_fwd_alone"] == 3.25 and r["jax_fwd_bwd_alone"] == 6.0 for r in rows)
    assert [tuple(r["TBDH"]) for r in rows] == list(cpu_compare.SHAPES.values())
    with pytest.raises(SystemExit):
        cpu_compare.main(["--shapes", "rowdigits,nosuchshape"])


def test_cpu_compare_header_says_what_each_median_is_of(monkeypatch, capsys) -> None:
    """The header line: the number of timed calls behind each median (--repeats 21 times
    20 calls, 5 rounds of 4: the header said 21), and torch's intra-op thread count, set here
    apart from its inter-op count so that the two cannot be mistaken for each other."""
    cpu_compare = _load("cpu_compare")
    medians_of: list[int] = []

    def median(values: list[float]) -> float:
        medians_of.append(len(values))
        return 1.0

    monkeypatch.setattr(cpu_compare, "statistics", SimpleNamespace(median=median))
    monkeypatch.setattr(cpu_compare, "rnncu_contenders", lambda shape, loop: {
        "rnncu_fwd": lambda: None, "rnncu_fwd_bwd": lambda: None
    })  # fmt: skip
    monkeypatch.setattr(cpu_compare, "torch_contenders", lambda shape: {})
    monkeypatch.setattr(cpu_compare, "jax_contenders", lambda shape: {})
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch
    threads = None if torch is None else torch.get_num_threads()
    try:
        if torch is not None:
            torch.set_num_threads(torch.get_num_interop_threads() + 1)
        for repeats in (21, 3):
            medians_of.clear()
            assert cpu_compare.main(["--shapes", "rowdigits", "--repeats", str(repeats)]) == 0
            header = capsys.readouterr().out.splitlines()[0]
            assert medians_of and len(set(medians_of)) == 1, medians_of
            assert f"median of {medians_of[0]} (" in header, header
            if torch is not None:
                assert f"({torch.get_num_threads()} threads)" in header, header
    finally:
        if torch is not None:
            torch.set_num_threads(threads)


# ---------------------------------------------------------------- cpu_recurrence, host logic
def test_cpu_recurrence_forces_each_path_and_restores_the_limits() -> None:
    """_with_path("whole") makes the backend run the whole compiled recurrence even where it
    would pick the step loop, _with_path("step") the reverse, and the limits come back."""
    if host_kernels.load() is None:
        pytest.skip(f"compiled kernels unavailable: {host_kernels.status()}")
    from rnncu.backend import numpy_backend

    cpu_recurrence = _load("cpu_recurrence")
    saved = numpy_backend._WHOLE_LIMITS
    for steps, batch, hidden in ((2, 64, 512), (2, 4, 8)):  # B * H^2 2^24 and 2^8
        states = np.zeros((steps, batch, hidden), np.float32)
        w_hh, h0 = np.zeros((hidden, hidden), np.float32), np.zeros((batch, hidden), np.float32)
        for path in ("whole", "step"):

            def which() -> str:
                whole = numpy_backend._whole_recurrence(states, w_hh, h0)  # noqa: B023
                return "step" if whole is None else "whole"

            assert cpu_recurrence._with_path(path, which)() == path, (batch, hidden)
            assert numpy_backend._WHOLE_LIMITS is saved


def test_cpu_recurrence_labels_idle_and_after_blas_timings(monkeypatch) -> None:
    """_time_shape on a fake clock: a call right after the sleep (BLAS idle) costs the path's
    base time, one right after a BLAS product that plus 10 ms; each median lands under its
    own (path, after BLAS) key, and only the timed calls count (the warm-up does not)."""
    cpu_recurrence = _load("cpu_recurrence")
    clock = {"ms": 0.0, "idle": False}
    base = {"step": 1.0, "whole": 2.0}
    warmups: list[str] = []

    def sleep(seconds: float) -> None:
        clock["idle"] = True

    def with_path(path, fn):
        def run() -> None:
            if clock["idle"] is None:  # the first call after a path is set: its warm-up
                warmups.append(path)
                clock["ms"] += 1000.0
            else:
                clock["ms"] += base[path] + (0.0 if clock["idle"] else 10.0)
            clock["idle"] = False

        clock["idle"] = None
        return run

    fake_time = SimpleNamespace(sleep=sleep, perf_counter=lambda: clock["ms"] / 1e3)
    monkeypatch.setattr(cpu_recurrence, "time", fake_time)
    monkeypatch.setattr(cpu_recurrence, "_with_path", with_path)
    medians = cpu_recurrence._time_shape((2, 3, 4), ["step", "whole"], rounds=2, repeats=2)
    assert warmups == ["step", "whole"] * 2
    assert medians == {
        ("step", False): pytest.approx(1.0), ("step", True): pytest.approx(11.0),
        ("whole", False): pytest.approx(2.0), ("whole", True): pytest.approx(12.0),
    }  # fmt: skip


def test_cpu_recurrence_main_prints_idle_then_after_blas_and_takes_all(monkeypatch, capsys):
    """main with a stand-in _time_shape: --rounds and --repeats reach it in their places,
    each cell reads BLAS idle / right after a BLAS product, "all" runs every shape, and
    without the compiled kernels it is an argument error."""
    cpu_recurrence = _load("cpu_recurrence")
    seen: list[tuple] = []

    def time_shape(shape, paths, rounds, repeats):
        seen.append((shape, rounds, repeats))
        return {("step", False): 1.5, ("step", True): 2.5, ("whole", False): 3.5,
                ("whole", True): 4.5}  # fmt: skip

    monkeypatch.setattr(cpu_recurrence, "_time_shape", time_shape)
    monkeypatch.setattr(cpu_recurrence.host_kernels, "load", lambda: object())
    assert cpu_recurrence.main(["--shapes", "medium", "--rounds", "2", "--repeats", "3"]) == 0
    assert seen == [(cpu_recurrence.SHAPES["medium"], 2, 3)]
    (table,) = _markdown_tables(capsys.readouterr().out)
    assert table[0]["step"] == "1.50 / 2.50" and table[0]["whole"] == "3.50 / 4.50"
    assert cpu_recurrence.main(["--shapes", "all"]) == 0
    (table,) = _markdown_tables(capsys.readouterr().out)
    assert [row["shape"] for row in table] == list(cpu_recurrence.SHAPES)
    monkeypatch.setattr(cpu_recurrence.host_kernels, "load", lambda: None)
    with pytest.raises(SystemExit):
        cpu_recurrence.main(["--shapes", "medium"])


# -------------------------------------------------------- benchmarks/test_bench_cpu.py itself
def test_the_cpu_benchmark_suite_times_with_and_without_the_compiled_loops() -> None:
    """benchmarks/test_bench_cpu.py's "numpy" case runs with kernels/host_rnn.c switched off
    and its "compiled" case with it on (checked in a stand-in of pytest-benchmark's fixture,
    which makes one call instead of timing)."""
    bench_cpu = _load("test_bench_cpu")
    compiled_available = host_kernels.load() is not None

    class Benchmark:
        def __init__(self) -> None:
            self.compiled_on: list[bool] = []

        def pedantic(self, fn, rounds: int, warmup_rounds: int) -> None:
            self.compiled_on.append(host_kernels.load() is not None)
            fn()

    for loops in ("compiled", "numpy"):
        benchmark = Benchmark()
        with pytest.MonkeyPatch.context() as patch:
            if loops == "compiled" and not compiled_available:
                with pytest.raises(pytest.skip.Exception):
                    bench_cpu.test_forward_backward(benchmark, patch, "rowdigits", loops)
                continue
            bench_cpu.test_forward_backward(benchmark, patch, "rowdigits", loops)
        assert benchmark.compiled_on == [loops == "compiled"], loops


def test_gpu_tf32_tile_table_marks_the_pick_and_stays_out_of_the_float32_tiles() -> None:
    """The TF32 step kernels forced one by one: their own table, the planner's pick starred
    (none where B <= 8 took the small-batch kernel), and not mixed into the float32 step
    kernels' table (whose labels are BMxBN or matvec)."""
    gpu_compare = _load("gpu_compare")
    times = {"fwd": 1.0, "fwd+bwd": 2.0}
    wide = {"shape": "wide", "TBDH": (3, 256, 4, 1024), "ms": {"rnncu_step": times},
            "step_tile": "64x32", "tf32_tile": "tf32-32x64"}  # fmt: skip
    wide["ms"].update({"step_32x32": times, "step_tf32-64x64": {"fwd": 1.0, "fwd+bwd": 3.0},
                       "step_tf32-32x64": times, "step_tf32-32x32": times})  # fmt: skip
    narrow = {"shape": "narrow", "TBDH": (3, 4, 4, 1024), "ms": {"step_tf32-32x32": times}}
    tables = _markdown_tables(gpu_compare.format_table([wide, narrow]))
    (tf32,) = [t for t in tables if "tf32-64x64" in t[0]]
    assert tf32[0] == {"shape": "wide", "tf32-64x64": "3.000", "tf32-32x64": "2.000*",
                       "tf32-32x32": "2.000"}  # fmt: skip
    assert tf32[1] == {"shape": "narrow", "tf32-64x64": "-", "tf32-32x64": "-",
                       "tf32-32x32": "2.000"}  # fmt: skip
    (tiles,) = [t for t in tables if "32x32" in t[0] and "tf32-32x32" not in t[0]]
    assert set(tiles[0]) == {"shape", "64x32", "32x32"}
