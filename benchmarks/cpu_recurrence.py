"""The NumPy backend's float32 recurrence alone, forward and backward, on each of its paths.

Paths: ``step`` (one BLAS product per step, compiled tanh loops) and ``whole`` (the whole
compiled recurrence, W_hh packed once). Each round times both paths in blocks of their own,
first with BLAS's worker threads idle (no BLAS call for 0.3 s), then right after a BLAS product
(as inside a layer, where the input projection comes just before: a multi-threaded OpenBLAS
keeps its workers spinning for about 0.1 s after a call). Wall-clock medians, ms. The backend
itself runs ``whole`` for steps of at most 2^21 multiply-adds (B * H^2; with the AVX-512
micro-kernel also up to 2^24 at batches of at most 32 rows), ``step`` above.

    python benchmarks/cpu_recurrence.py [--shapes medium,pixelmnist]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from rnncu.backend import host_kernels, numpy_backend
from rnncu.backend.numpy_backend import NumpyBackend

# name: (T, B, H)
SHAPES: dict[str, tuple[int, int, int]] = {
    "rowdigits": (8, 128, 64),
    "rowmnist": (28, 256, 128),
    "pixeldigits": (64, 128, 128),
    "medium": (100, 64, 512),
    "pixelmnist": (784, 32, 128),
    # beyond them, where the two paths cross on some machines (B * H^2 from 2^19 to 2^28)
    "t200_b8_h256": (200, 8, 256),
    "t40_b16_h1024": (40, 16, 1024),
    "t50_b128_h512": (50, 128, 512),
    "t20_b64_h1024": (20, 64, 1024),
    "t10_b256_h1024": (10, 256, 1024),
}
#: what runs without --shapes: the recurrences of benchmarks/cpu_compare.py's shapes
DEFAULT_SHAPES = ("rowdigits", "rowmnist", "pixeldigits", "medium", "pixelmnist")


def _with_path(path: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the backend forced onto one path."""

    def run() -> object:
        saved = numpy_backend._WHOLE_LIMITS
        largest = 2**62 if path == "whole" else 0
        numpy_backend._WHOLE_LIMITS = dict.fromkeys(saved, (largest, largest))
        try:
            return fn()
        finally:
            numpy_backend._WHOLE_LIMITS = saved

    return run


def _time_shape(
    shape: tuple[int, int, int], paths: list[str], rounds: int, repeats: int
) -> dict[tuple[str, bool], float]:
    """Median ms per (path, right after a BLAS product) for one (T, B, H)."""
    backend = NumpyBackend()
    rng = np.random.default_rng(0)
    steps, batch, hidden = shape
    z = rng.standard_normal(shape, dtype=np.float32)
    w_hh = (rng.uniform(-1, 1, (hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden), dtype=np.float32)
    grad = rng.standard_normal(shape, dtype=np.float32)
    states = np.empty_like(z)
    blas_a = rng.standard_normal((2048, 512), dtype=np.float32)
    blas_b = rng.standard_normal((512, 512), dtype=np.float32)

    def forward_backward() -> None:
        states[...] = z
        backend.recurrence_forward(states, w_hh, h0, None, "tanh", False)
        backend.recurrence_backward(states, w_hh, h0, grad, None, None, "tanh", False)

    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(rounds):
        for path in paths:
            run = _with_path(path, forward_backward)
            run()  # warm-up
            for after_blas in (False, True):
                for _ in range(repeats):
                    if after_blas:
                        blas_a @ blas_b
                    else:
                        time.sleep(0.3)
                    start = time.perf_counter()
                    run()
                    times.setdefault((path, after_blas), []).append(
                        (time.perf_counter() - start) * 1e3
                    )
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", default=",".join(DEFAULT_SHAPES), help=f"of {', '.join(SHAPES)}, or all"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per block")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    if names == ["all"]:
        names = list(SHAPES)
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; known: {list(SHAPES)}")
    if host_kernels.load() is None:
        parser.error(f"the compiled kernels are not available: {host_kernels.status()}")
    paths = ["step", "whole"]
    print("# float32 tanh, forward + backward of the recurrence alone, median ms of")
    print(f"# {args.rounds} rounds x {args.repeats} calls; BLAS idle / right after a BLAS product")
    print("| shape | T, B, H | B * H^2 | " + " | ".join(paths) + " |")
    print("|---|---|---|" + "---|" * len(paths))
    for name in names:
        medians = _time_shape(SHAPES[name], paths, args.rounds, args.repeats)
        cells = [f"{medians[(p, False)]:.2f} / {medians[(p, True)]:.2f}" for p in paths]
        steps, batch, hidden = SHAPES[name]
        size = f"2^{round(math.log2(batch * hidden * hidden), 1):g}"
        print(f"| {name} | {steps}, {batch}, {hidden} | {size} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
