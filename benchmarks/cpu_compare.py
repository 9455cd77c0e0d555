"""NumPy backend against PyTorch CPU ``nn.RNN`` in one run: forward and forward+backward.

Float32, single layer, unidirectional tanh, time-major (T, B, D). forward+backward is
``out, h = rnn(x); out.sum().backward()`` in torch and ``rnn(x)`` then
``rnn.backward(ones)`` in rnncu, both with the input gradient. Wall-clock medians after a
warm-up; the machine is small and noisy, so read the ratio column.

    python benchmarks/cpu_compare.py [--repeats N] [--shapes rowdigits,medium] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

import rnncu

# name: (T, B, D, H), the CPU shapes of shared/ANCHORS.md
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "rowdigits": (8, 128, 8, 64),
    "rowmnist": (28, 256, 28, 128),
    "pixeldigits": (64, 128, 1, 128),
    "medium": (100, 64, 256, 512),
    "pixelmnist": (784, 32, 1, 128),
}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_rnncu(shape: tuple[int, int, int, int], repeats: int) -> dict[str, float]:
    steps, batch, features, hidden = shape
    rnn = rnncu.RNN(features, hidden, backend="numpy", dtype="float32", seed=0)
    x = np.random.default_rng(1).standard_normal((steps, batch, features), dtype=np.float32)
    ones = np.ones((steps, batch, hidden), dtype=np.float32)

    def forward() -> None:
        rnn(x)

    def forward_backward() -> None:
        rnn(x)
        rnn.backward(ones)

    return {"fwd": median_ms(forward, repeats), "fwd_bwd": median_ms(forward_backward, repeats)}


def bench_torch(shape: tuple[int, int, int, int], repeats: int) -> dict[str, float] | None:
    try:
        import torch
    except ImportError:
        return None
    steps, batch, features, hidden = shape
    torch.manual_seed(0)
    rnn = torch.nn.RNN(features, hidden)
    x_host = np.random.default_rng(1).standard_normal((steps, batch, features), dtype=np.float32)
    x = torch.from_numpy(x_host)

    def forward() -> None:
        with torch.no_grad():
            rnn(x)

    def forward_backward() -> None:
        xg = x.detach().requires_grad_(True)
        out, _ = rnn(xg)
        out.sum().backward()

    return {"fwd": median_ms(forward, repeats), "fwd_bwd": median_ms(forward_backward, repeats)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; known: {list(SHAPES)}")

    rows = []
    for name in names:
        shape = SHAPES[name]
        ours = bench_rnncu(shape, args.repeats)
        theirs = bench_torch(shape, args.repeats)
        rows.append({"shape": name, "TBDH": shape, "rnncu": ours, "torch": theirs})

    try:
        import torch

        torch_version = torch.__version__
        threads = torch.get_num_threads()
    except ImportError:
        torch_version, threads = None, None
    print(
        f"# {platform.processor() or platform.machine()}, numpy {np.__version__}, "
        f"torch {torch_version} ({threads} threads), median of {args.repeats}, float32"
    )
    print(
        "| shape | T, B, D, H | rnncu fwd | torch fwd | rnncu fwd+bwd | torch fwd+bwd "
        "| fwd+bwd ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ours, theirs = row["rnncu"], row["torch"]
        t_f = f"{theirs['fwd']:.2f}" if theirs else "-"
        t_fb = f"{theirs['fwd_bwd']:.2f}" if theirs else "-"
        ratio = f"{ours['fwd_bwd'] / theirs['fwd_bwd']:.2f}x" if theirs else "-"
        dims = ", ".join(map(str, row["TBDH"]))
        print(
            f"| {row['shape']} | {dims} | {ours['fwd']:.2f} | {t_f} | {ours['fwd_bwd']:.2f} "
            f"| {t_fb} | {ratio} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
