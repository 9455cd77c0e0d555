"""rnncu on the GPU against its peers, in one run: forward and forward+backward, float32.

Peers (each only where it imports and sees a GPU): PyTorch ``nn.RNN`` (cuDNN), a jitted JAX
``lax.scan`` RNN, and a naive CuPy loop (one ``X @ W_ih^T`` GEMM, then per step
``h = tanh(xw[t] + h @ W_hh^T)`` from Python). rnncu runs the CuPy backend twice: the step
path (``recurrence="step"``) and the default ``auto`` path (persistent where supported).
On the shapes of ``TF32_SHAPES`` it also runs the opt-in TF32 mode: rnncu's ``auto`` and
``step`` paths with ``matmul_precision="high"`` (the step path's TF32 step kernels where it
takes a tile) against cuDNN with TF32 allowed (``rnncu_tf32``, ``rnncu_tf32_step``,
``cudnn_tf32``; a table of their own, apart from the float32 comparison).
"forward+backward" is ``out, h = rnn(x)`` then the gradients of ``out.sum()`` for the input
and all weights (rnncu: ``rnn.backward(ones)``).

Timing: CUDA events on the current stream around each call, median of ``--repeats`` after
warm-up. JAX runs on streams of its own: its wall time, the lower of the median call waited
for alone and the median per call of back-to-back calls waited for once (``time_jax``).

    PYTHONPATH=$PWD python benchmarks/gpu_compare.py [--quick] [--shapes a,b] [--json out.json]
    python benchmarks/gpu_compare.py --table-from out.json    # the tables of a saved run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np

# JAX takes 75 % of the GPU's memory when it starts unless told otherwise; CuPy and torch,
# which run before and after it in this one process, would then work in what is left.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

SHAPES: dict[str, tuple[int, int, int, int]] = {  # T, B, D, H
    "rowmnist": (28, 256, 28, 128),
    "pixelmnist": (784, 128, 1, 128),
    "medium": (100, 64, 256, 512),
    "large": (256, 256, 1024, 1024),
    "latency_b4": (1000, 4, 256, 1024),
    "b32_h512": (512, 32, 512, 512),
}
QUICK_SHAPES = ("rowmnist", "medium", "b32_h512")
#: where the products over all steps are large enough for TF32 to matter (D and H of 256 and
#: up): rowmnist's and pixelmnist's are a few microseconds in float32 already
TF32_SHAPES = ("medium", "large", "latency_b4", "b32_h512")


def time_cuda(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median milliseconds of ``fn`` between two CUDA events on the current CuPy stream."""
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` for the duration (nothing changes when value is None)."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def bench_rnncu(
    shape,
    repeats,
    warmup,
    recurrence: str,
    variants: str | None = None,
    step_tile: str | None = None,
    step_graphs: bool = False,
    report: dict[str, Any] | None = None,
    matmul_precision: str | None = None,
) -> dict[str, float]:
    """rnncu's CuPy backend on ``recurrence`` ("step" or "auto"); ``variants`` restricts the
    persistent kernels (``RNNCU_PERSISTENT_VARIANTS``), ``step_tile`` forces the step
    kernels' tile (``RNNCU_STEP_TILE``) for the duration of the call, ``step_graphs``
    replays the step loops as CUDA graphs, whose counts (loops replayed, captured, launched
    step by step) go to ``report["graph_counts"]``, and ``matmul_precision`` sets the
    backend's (``"high"``: TF32 in the products over all steps; default ``"highest"``,
    whatever ``RNNCU_MATMUL_PRECISION`` says)."""
    import cupy

    import rnncu
    from rnncu.backend import cupy_backend, persistent

    steps, batch, features, hidden = shape
    rnn = rnncu.RNN(features, hidden, dtype="float32", backend="cupy", seed=0)
    rnn.backend.recurrence = recurrence
    rnn.backend.step_graphs = step_graphs
    # float32 unless asked: RNNCU_MATMUL_PRECISION=high must not slip TF32 into those rows
    rnn.backend.matmul_precision = matmul_precision or "highest"
    counts_before = dict(rnn.backend.graphs.counts)
    with (
        _environment(persistent.VARIANTS_ENV, variants),
        _environment(cupy_backend.STEP_TILE_ENV, step_tile),
    ):
        try:
            x = cupy.asarray(np.random.default_rng(0).standard_normal((steps, batch, features)))
            x = x.astype(cupy.float32)
            dout = cupy.ones((steps, batch, hidden), cupy.float32)

            def forward() -> None:
                rnn(x)

            def forward_backward() -> None:
                rnn(x)
                rnn.backward(dout)

            result = {
                "fwd": time_cuda(forward, repeats, warmup),
                "fwd+bwd": time_cuda(forward_backward, repeats, warmup),
            }
            if report is not None and step_graphs:
                counts = rnn.backend.graphs.counts
                report["graph_counts"] = {k: v - counts_before[k] for k, v in counts.items()}
            return result
        finally:
            rnn.backend.recurrence = None
            rnn.backend.step_graphs = None
            rnn.backend.matmul_precision = None


def bench_naive_cupy(shape, repeats, warmup) -> dict[str, float]:
    import cupy

    steps, batch, features, hidden = shape
    rng = cupy.random.default_rng(0)
    x = rng.standard_normal((steps, batch, features), dtype=cupy.float32)
    w_ih = rng.standard_normal((hidden, features), dtype=cupy.float32) / math.sqrt(features)
    w_hh = rng.standard_normal((hidden, hidden), dtype=cupy.float32) / math.sqrt(hidden)
    b = rng.standard_normal((hidden,), dtype=cupy.float32)
    # A NumPy float64 scalar is not "weak" in CuPy's (or NumPy 2's) promotion: dividing by
    # np.sqrt(...) once made this float32 peer time float64 products.
    if any(array.dtype != cupy.float32 for array in (x, w_ih, w_hh, b)):
        raise TypeError("naive CuPy loop: its arrays must be float32, as the other peers'")

    def forward() -> None:
        xw = (x.reshape(-1, features) @ w_ih.T).reshape(steps, batch, hidden)
        h = cupy.zeros((batch, hidden), cupy.float32)
        for t in range(steps):
            h = cupy.tanh(xw[t] + h @ w_hh.T + b)

    return {"fwd": time_cuda(forward, repeats, warmup)}


def bench_torch(shape, repeats, warmup, tf32: bool = False) -> dict[str, float] | None:
    """torch ``nn.RNN`` on cuDNN, float32; ``tf32`` lets cuDNN and cuBLAS use TF32."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    steps, batch, features, hidden = shape
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    rnn = torch.nn.RNN(features, hidden).cuda()
    x = torch.randn(steps, batch, features, device="cuda", requires_grad=True)

    def timed(fn: Callable[[], Any]) -> float:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    def forward() -> None:
        with torch.no_grad():
            rnn(x)

    def forward_backward() -> None:
        out, _ = rnn(x)
        out.sum().backward()

    try:
        return {"fwd": timed(forward), "fwd+bwd": timed(forward_backward)}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def bench_jax(shape, repeats, warmup) -> dict[str, float] | None:
    try:
        import jax
        import jax.numpy as jnp
    except Exception:
        return None
    try:
        if not any(d.platform == "gpu" for d in jax.devices()):
            return None
    except Exception:
        return None
    steps, batch, features, hidden = shape
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w_ih": jax.random.normal(k1, (hidden, features), jnp.float32) / np.sqrt(features),
        "w_hh": jax.random.normal(k2, (hidden, hidden), jnp.float32) / np.sqrt(hidden),
        "b": jnp.zeros((hidden,), jnp.float32),
    }
    x = jax.random.normal(k3, (steps, batch, features), jnp.float32)
    precision = jax.lax.Precision.HIGHEST

    def run(params, x):
        xw = jnp.einsum("tbd,hd->tbh", x, params["w_ih"], precision=precision) + params["b"]

        def step(h, z):
            h = jnp.tanh(z + jnp.dot(h, params["w_hh"].T, precision=precision))
            return h, h

        _, out = jax.lax.scan(step, jnp.zeros((batch, hidden), jnp.float32), xw)
        return out

    forward = jax.jit(run)
    grad = jax.jit(jax.grad(lambda p, x: run(p, x).sum(), argnums=(0, 1)))

    return {
        "fwd": time_jax(lambda: forward(params, x), repeats, warmup),
        "fwd+bwd": time_jax(lambda: grad(params, x), repeats, warmup),
    }


def time_jax(fn: Callable[[], Any], repeats: int, warmup: int, rounds: int = 3) -> float:
    """Milliseconds per call of a JAX ``fn``, the better of two wall-clock medians, as JAX runs
    on streams of its own that CuPy's events cannot bracket: each call waited for alone (pays
    the wake-up after ``block_until_ready``, tens of microseconds), and ``rounds`` runs of
    back-to-back calls waited for once (dispatch overlaps the device, which then works without
    gaps). The lower one is the bar, so the peer is never timed slower than it runs."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    alone = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        alone.append((time.perf_counter() - start) * 1e3)
    calls = max(3, repeats // 4)
    pipelined = []
    for _ in range(rounds):
        start = time.perf_counter()
        results = [fn() for _ in range(calls)]
        jax.block_until_ready(results)
        pipelined.append((time.perf_counter() - start) * 1e3 / calls)
    return min(statistics.median(alone), statistics.median(pipelined))


def ran_path() -> str:
    """The persistent kernels the latest rnncu run launched (forward / backward, with the
    grid and block), or ``step``: read after the run, so after the occupancy checks."""
    from rnncu.backend import persistent

    plans = [persistent.last_plans.get(d) for d in ("forward", "backward")]
    if any(p is None for p in plans):
        return "step"
    return " / ".join(f"{p.name_expression} grid {p.grid} x {p.threads}" for p in plans)


def _forget_plans() -> None:
    try:
        from rnncu.backend import persistent
    except ImportError:
        return
    persistent.last_plans.clear()


def run(
    shapes: list[str],
    repeats: int,
    warmup: int,
    progress: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every float32 runner on every shape, then the opt-in TF32 runners on the shapes of
    ``TF32_SHAPES``: last, so that a run cut short by a time limit (gpu_check.sh's) has the
    float32 comparison of as many shapes as it can. ``progress(rows so far)`` after each
    shape of either pass."""
    rows: list[dict[str, Any]] = []
    for name in shapes:
        shape = SHAPES[name]
        row: dict[str, Any] = {"shape": name, "TBDH": shape, "ms": {}}
        # rnncu_grid: the persistent kernels without clusters, the same run's comparison of
        # the cluster barrier with the grid barrier (measured only where auto took clusters)
        _run_runners(
            row,
            (
                ("rnncu_step", partial(bench_rnncu, shape, repeats, warmup, "step")),
                (
                    "rnncu_step_graphs",
                    partial(
                        bench_rnncu, shape, repeats, warmup, "step", step_graphs=True, report=row
                    ),
                ),
                ("rnncu_auto", partial(bench_rnncu, shape, repeats, warmup, "auto")),
                ("rnncu_grid", partial(bench_rnncu, shape, repeats, warmup, "auto", "batch,grid")),
                ("cudnn", partial(bench_torch, shape, repeats, warmup)),
                ("jax", partial(bench_jax, shape, repeats, warmup)),
                ("naive_cupy", partial(bench_naive_cupy, shape, max(3, repeats // 4), 1)),
            ),
        )
        _sweep_step_tiles(row, shape, repeats, warmup)
        rows.append(row)
        if progress is not None:
            progress(rows)
    for row in rows:
        if row["shape"] not in TF32_SHAPES:
            continue
        shape = SHAPES[row["shape"]]
        _run_runners(
            row,
            (
                (
                    "rnncu_tf32",
                    partial(bench_rnncu, shape, repeats, warmup, "auto", matmul_precision="high"),
                ),
                # the step path under "high": its TF32 step kernels where it takes a tile
                (
                    "rnncu_tf32_step",
                    partial(bench_rnncu, shape, repeats, warmup, "step", matmul_precision="high"),
                ),
                ("cudnn_tf32", partial(bench_torch, shape, repeats, warmup, tf32=True)),
            ),
        )
        _sweep_tf32_tiles(row, shape, repeats)
        if progress is not None:
            progress(rows)
    return rows


def _run_runners(row: dict[str, Any], runners: tuple[tuple[str, Callable[[], Any]], ...]) -> None:
    """Each ``(name, bench)`` of ``runners`` on ``row``'s shape, its figures (if any) into
    ``row["ms"][name]``; a runner that raises is reported on stderr and leaves no entry."""
    for runner, bench in runners:
        if runner == "rnncu_grid" and "cluster" not in row.get("auto_path", ""):
            continue
        try:
            if runner.startswith("rnncu"):
                _forget_plans()
            result = bench()
        except Exception as exc:  # one runner failing must not hide the others' numbers
            print(f"# {runner} failed on {row['shape']}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)  # fmt: skip
            result = None
        if result is not None:
            row["ms"][runner] = result
        if runner == "rnncu_auto":
            row["auto_path"] = ran_path()
        elif runner == "rnncu_grid":
            row["grid_path"] = ran_path()


def _device_facts() -> tuple[int, int]:
    """The current device's multiprocessors and opt-in shared memory per block (bytes)."""
    import cupy

    runtime = cupy.cuda.runtime
    device_id = runtime.getDevice()
    sms = runtime.getDeviceProperties(device_id)["multiProcessorCount"]
    shared = runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id)
    return int(sms), int(shared)


def _time_forced_step_kernels(
    row: dict[str, Any], shape, repeats: int, labels: list[str], **options: Any
) -> None:
    """The step path with each step kernel of ``labels`` forced (``RNNCU_STEP_TILE``), into
    ``row["ms"]["step_<label>"]``; ``options`` go to :func:`bench_rnncu`. Half the repeats:
    extra runs per shape, inside gpu_check.sh's time limit."""
    for label in labels:
        try:
            result = bench_rnncu(shape, max(5, repeats // 2), 1, "step", step_tile=label, **options)
        except Exception as exc:
            print(f"# step tile {label} failed on {row['shape']}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)  # fmt: skip
            continue
        row["ms"][f"step_{label}"] = result


def _sweep_step_tiles(row: dict[str, Any], shape, repeats: int, warmup: int) -> None:
    """The step path with every other step kernel forced (``step_<BM>x<BN>``, ``step_matvec``),
    beside rnncu_step's own choice (``row["step_tile"]``): the data to tune the choice with."""
    try:
        from rnncu.backend import cupy_backend, kernel_loader

        sms, shared = _device_facts()
        chosen = cupy_backend.choose_step_kernel(shape[1], shape[3], 4, sms, shared).label
    except Exception as exc:
        print(f"# step tiles skipped on {row['shape']}: {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return
    row["step_tile"] = chosen
    labels = [f"{t[0]}x{t[1]}" for t in kernel_loader.STEP_TILES] + ["matvec"]
    _time_forced_step_kernels(row, shape, repeats, [label for label in labels if label != chosen])


#: the row keys of the TF32 step kernels forced one by one (``step_tf32-64x64``)
TF32_TILE_PREFIX = "step_tf32-"


def _sweep_tf32_tiles(row: dict[str, Any], shape, repeats: int) -> None:
    """The step path under ``matmul_precision="high"`` with each TF32 step kernel forced
    (``RNNCU_STEP_TILE=tf32-<BM>x<BN>``), beside the one the planner picks
    (``row["tf32_tile"]``, absent where the step path takes the small-batch kernel, B <= 8,
    and runs no TF32 kernel): the data to check ``choose_tf32_tile`` with. All three run, the
    pick too (rnncu_tf32_step timed it with the products over all steps in TF32 as well)."""
    try:
        from rnncu.backend import cupy_backend, kernel_loader

        sms, shared = _device_facts()
        takes_tile = cupy_backend.choose_step_kernel(shape[1], shape[3], 4, sms, shared).tile
        bm, bn = cupy_backend.choose_tf32_tile(shape[1], shape[3], sms)
    except Exception as exc:
        print(f"# TF32 step tiles skipped on {row['shape']}: {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return
    if takes_tile is not None:
        row["tf32_tile"] = f"tf32-{bm}x{bn}"
    labels = [f"tf32-{t[0]}x{t[1]}" for t in kernel_loader.TF32_STEP_TILES]
    _time_forced_step_kernels(row, shape, repeats, labels, matmul_precision="high")


def _format_tf32_tiles(rows: list[dict[str, Any]]) -> list[str]:
    """The step path's fwd+bwd ms under "high" by TF32 step kernel; * marks the planner's."""
    measured = [r for r in rows if any(key.startswith(TF32_TILE_PREFIX) for key in r["ms"])]
    if not measured:
        return []
    from rnncu.backend import kernel_loader

    labels = [f"tf32-{t[0]}x{t[1]}" for t in kernel_loader.TF32_STEP_TILES]
    lines = [
        "\nrnncu step path under matmul_precision='high', fwd+bwd ms by TF32 step kernel "
        "(forced; * = the one it picks)"
    ]
    lines.append("| shape | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for row in measured:
        cells = []
        for label in labels:
            value = row["ms"].get(f"step_{label}", {}).get("fwd+bwd")
            mark = "*" if label == row.get("tf32_tile") else ""
            cells.append("-" if value is None else f"{value:.3f}{mark}")
        lines.append(f"| {row['shape']} | " + " | ".join(cells) + " |")
    return lines


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each runner's ms, and rnncu's best path's speed-up over the best peer."""
    runners = [
        "rnncu_step",
        "rnncu_step_graphs",
        "rnncu_auto",
        "rnncu_grid",
        "cudnn",
        "jax",
        "naive_cupy",
    ]
    lines = []
    for mode in ("fwd", "fwd+bwd"):
        lines.append(f"\n{mode}, ms (median)")
        lines.append("| shape | " + " | ".join(runners) + " | speed-up vs best peer |")
        lines.append("|---" * (len(runners) + 2) + "|")
        for row in rows:
            ms = {r: row["ms"].get(r, {}).get(mode) for r in runners}
            mine = [v for k, v in ms.items() if k.startswith("rnncu") and v is not None]
            peers = [v for k, v in ms.items() if not k.startswith("rnncu") and v is not None]
            speedup = f"{min(peers) / min(mine):.2f}x" if peers and mine else "n/a"
            cells = ["-" if v is None else f"{v:.3f}" for v in ms.values()]
            lines.append(f"| {row['shape']} | " + " | ".join(cells) + f" | {speedup} |")
    # Per step of the recurrence against the ~1 us of one grid-wide sync (ANCHORS.md):
    # what the persistent kernels pay per step at the least.
    # rnncu_grid: the same shape without clusters (grid barrier), where auto took clusters.
    lines.append("\nrnncu forward, microseconds per time step: auto, and without clusters")
    lines.append("| shape | T | auto us/step | grid us/step | auto path |")
    lines.append("|---|---|---|---|---|")
    for row in rows:
        cells = [_us_per_step(row, runner) for runner in ("rnncu_auto", "rnncu_grid")]
        lines.append(
            f"| {row['shape']} | {row['TBDH'][0]} | {cells[0]} | {cells[1]} "
            f"| {row.get('auto_path', '?')} |"
        )
    lines += _format_step_graphs(rows)
    lines += _format_tiles(rows)
    lines += _format_tf32(rows)
    lines += _format_tf32_tiles(rows)
    return "\n".join(lines)


def _format_tf32(rows: list[dict[str, Any]]) -> list[str]:
    """The opt-in TF32 mode, fwd and fwd+bwd ms: rnncu's auto and step paths in float32 and
    with ``matmul_precision="high"`` (the step path's TF32 step kernels where it takes a
    tile), and cuDNN with TF32 allowed (shapes where one was run); the auto path's speed-up
    against cuDNN's, and the step path's against its own float32 kernels."""
    measured = [r for r in rows if {"rnncu_tf32", "cudnn_tf32"} & set(r["ms"])]
    if not measured:
        return []
    runners = ("rnncu_auto", "rnncu_step", "rnncu_tf32", "rnncu_tf32_step", "cudnn_tf32")
    lines = ["\nopt-in TF32 (rnncu matmul_precision='high'; cuDNN allow_tf32), ms fwd / fwd+bwd"]
    lines.append(
        "| shape | " + " | ".join(runners) + " | rnncu_tf32 speed-up vs cudnn_tf32, fwd+bwd "
        "| rnncu_tf32_step speed-up vs rnncu_step, fwd+bwd |"
    )
    lines.append("|---" * (len(runners) + 3) + "|")

    def ratio(numerator: str, denominator: str, row: dict[str, Any]) -> str:
        top = row["ms"].get(numerator, {}).get("fwd+bwd")
        bottom = row["ms"].get(denominator, {}).get("fwd+bwd")
        return f"{top / bottom:.2f}x" if top and bottom else "n/a"

    for row in measured:
        cells = []
        for runner in runners:
            times = row["ms"].get(runner, {})
            cells.append(" / ".join("-" if times.get(m) is None else f"{times[m]:.3f}"
                                    for m in ("fwd", "fwd+bwd")))  # fmt: skip
        cells += [
            ratio("cudnn_tf32", "rnncu_tf32", row),
            ratio("rnncu_step", "rnncu_tf32_step", row),
        ]
        lines.append(f"| {row['shape']} | " + " | ".join(cells) + " |")
    return lines


def _us_per_step(row: dict[str, Any], runner: str) -> str:
    """A runner's forward time per time step in microseconds, or "-" where not measured."""
    fwd = row["ms"].get(runner, {}).get("fwd")
    return "-" if fwd is None else f"{fwd * 1e3 / row['TBDH'][0]:.2f}"


def _format_step_graphs(rows: list[dict[str, Any]]) -> list[str]:
    """The step path's forward per time step, launched step by step and as CUDA graphs (the
    host's launch cost per step shows where the first is well above the second), and how
    often the graph cache replayed, captured or launched a loop during the timing."""
    lines = ["\nrnncu step path, forward us per time step: launches and CUDA graphs"]
    lines.append(
        "| shape | step us/step | graphs us/step | loops replayed / captured / launched "
        "(graphs dropped) |"
    )
    lines.append("|---|---|---|---|")
    for row in rows:
        cells = [_us_per_step(row, runner) for runner in ("rnncu_step", "rnncu_step_graphs")]
        counts = row.get("graph_counts")
        counted = "-" if counts is None else " / ".join(
            str(counts.get(k, 0)) for k in ("replayed", "captured", "launched")
        ) + f" ({counts.get('dropped', 0)})"  # fmt: skip
        lines.append(f"| {row['shape']} | {cells[0]} | {cells[1]} | {counted} |")
    return lines


def _format_tiles(rows: list[dict[str, Any]]) -> list[str]:
    """The step path's fwd+bwd ms by step kernel; * marks the one rnncu_step chose."""
    found = {row["step_tile"] for row in rows if "step_tile" in row}
    found |= {key[5:] for row in rows for key in row["ms"]
              if key.startswith("step_") and not key.startswith(TF32_TILE_PREFIX)}  # fmt: skip
    # the tiles from the largest, then the small-batch kernel
    labels = sorted(found, key=lambda label: [-int(v) for v in label.split("x")] if "x" in label
                    else [1])  # fmt: skip
    if not labels:
        return []
    lines = [
        "\nrnncu step path, fwd+bwd ms by step kernel (tile BM x BN, or the small-batch "
        "matvec kernel; * = the one it picks)"
    ]
    lines.append("| shape | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for row in rows:
        cells = []
        for label in labels:
            if label == row.get("step_tile"):
                value = row["ms"].get("rnncu_step", {}).get("fwd+bwd")
                cells.append("-" if value is None else f"{value:.3f}*")
            else:
                value = row["ms"].get(f"step_{label}", {}).get("fwd+bwd")
                cells.append("-" if value is None else f"{value:.3f}")
        lines.append(f"| {row['shape']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", help=f"comma-separated subset of {', '.join(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="write the results to this path")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_SHAPES)}")
    parser.add_argument(
        "--table-from", metavar="JSON", help="print the tables of a saved run and exit"
    )
    args = parser.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as handle:
            print(format_table(json.load(handle)["rows"]))
        return 0
    shapes = list(QUICK_SHAPES if args.quick else SHAPES)
    if args.shapes:
        shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
        unknown = [s for s in shapes if s not in SHAPES]
        if unknown:
            parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")

    def save(rows: list[dict[str, Any]]) -> None:
        # after every shape, so a run stopped by a time limit keeps what it measured
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"rows": rows, "repeats": args.repeats}, handle, indent=2)

    rows = run(shapes, args.repeats, args.warmup, progress=save)
    print(format_table(rows))
    measured = any(key.startswith("rnncu") for row in rows for key in row["ms"])
    if not measured:
        print("# rnncu measured nothing (see the errors above)", file=sys.stderr)
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
