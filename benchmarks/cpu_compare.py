"""NumPy backend against PyTorch CPU ``nn.RNN`` and a jitted JAX ``lax.scan`` RNN (where
JAX imports) in one run: forward and forward+backward.

Float32, single layer, unidirectional tanh, time-major (T, B, D). forward+backward is
``out, h = rnn(x); out.sum().backward()`` in torch, ``jax.grad`` of ``out.sum()`` with
respect to the weights and the input in JAX, and ``rnn(x)`` then ``rnn.backward(ones)`` in
rnncu, all three with the input gradient. Wall-clock medians after a warm-up; the machine is
small and noisy, so read the ratio column: rnncu's time over the best peer's. JAX's figure is
the lower of its call waited for alone and of calls issued back to back (its dispatch is
asynchronous), as in ``gpu_compare.py``; the JSON keeps both.

    python benchmarks/cpu_compare.py [--repeats N] [--shapes rowdigits,medium] [--json PATH]
        [--numpy-loop]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

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


def blockwise_medians(
    contenders: dict[str, Callable[[], object]], repeats: int, rounds: int = 5, warmup: int = 3
) -> dict[str, float]:
    """Median wall time (ms) of each contender. Each round runs every contender in a block
    of its own (warm-up, then ``repeats`` timed calls), and the rounds alternate the
    contenders, so slow drift of this shared machine falls on all of them alike. Blocks,
    not call-by-call alternation: OpenBLAS's and torch's OpenMP worker threads keep spinning
    for a while after each call, and alternating calls would make each pay for the other."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, fn in contenders.items():
            for _ in range(warmup):
                fn()
            calls = getattr(fn, "calls", 1)  # a BackToBack contender: per call
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3 / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def _lengths(steps: int, batch: int) -> np.ndarray:
    """Lengths spread over [T/2, T]: the masked path must cost about what the plain one does
    (torch's packed sequences are the comparison)."""
    return np.linspace(max(1, steps // 2), steps, batch).astype(np.int64)


def rnncu_contenders(
    shape: tuple[int, int, int, int], numpy_loop: bool = False
) -> dict[str, Callable[[], object]]:
    """rnncu's contenders; with ``numpy_loop`` also fwd+bwd with ``kernels/host_rnn.c``
    switched off (the backend's step loop on NumPy's functions), to measure what it brings."""
    steps, batch, features, hidden = shape
    rnn = rnncu.RNN(features, hidden, backend="numpy", dtype="float32", seed=0)
    x = np.random.default_rng(1).standard_normal((steps, batch, features), dtype=np.float32)
    ones = np.ones((steps, batch, hidden), dtype=np.float32)
    lengths = _lengths(steps, batch)

    def forward_backward() -> None:
        rnn(x)
        rnn.backward(ones)

    def forward_backward_lengths() -> None:
        rnn(x, lengths=lengths)
        rnn.backward(ones)

    contenders = {
        "rnncu_fwd": lambda: rnn(x),
        "rnncu_fwd_bwd": forward_backward,
        "rnncu_fwd_bwd_lengths": forward_backward_lengths,
    }
    if numpy_loop:
        from rnncu.backend import host_kernels

        def forward_backward_numpy_loop() -> None:
            compiled = host_kernels.load
            host_kernels.load = lambda: None
            try:
                forward_backward()
            finally:
                host_kernels.load = compiled

        contenders["rnncu_fwd_bwd_numpy_loop"] = forward_backward_numpy_loop
    return contenders


def torch_contenders(shape: tuple[int, int, int, int]) -> dict[str, Callable[[], object]]:
    try:
        import torch
    except ImportError:
        return {}
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

    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lengths = torch.from_numpy(_lengths(steps, batch))

    def forward_backward_packed() -> None:
        xg = x.detach().requires_grad_(True)
        packed = pack_padded_sequence(xg, lengths, enforce_sorted=False)
        out, _ = pad_packed_sequence(rnn(packed)[0], total_length=steps)
        out.sum().backward()

    return {
        "torch_fwd": forward,
        "torch_fwd_bwd": forward_backward,
        "torch_fwd_bwd_packed": forward_backward_packed,
    }


def jax_rnn(params: dict[str, object], x: object) -> object:
    """The Elman RNN of torch and rnncu in JAX: the input projection of all steps as one
    product, then ``lax.scan`` over the steps; ``out`` (T, B, H)."""
    import jax
    import jax.numpy as jnp

    w_ih, w_hh, b_ih, b_hh = (params[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh"))
    z = jnp.einsum("tbd,hd->tbh", x, w_ih) + (b_ih + b_hh)

    def step(h: object, z_t: object) -> tuple[object, object]:
        h = jnp.tanh(z_t + h @ w_hh.T)
        return h, h

    batch, hidden = z.shape[1], z.shape[2]
    _, out = jax.lax.scan(step, jnp.zeros((batch, hidden), z.dtype), z)
    return out


class BackToBack:
    """``calls`` calls of a JAX function issued back to back and waited for once: JAX
    dispatches asynchronously, so its Python dispatch may overlap the previous call's work.
    :func:`blockwise_medians` divides the time by ``calls``."""

    def __init__(self, fn: Callable[[], object], calls: int = 8) -> None:
        self.fn, self.calls = fn, calls

    def __call__(self) -> None:
        import jax

        jax.block_until_ready([self.fn() for _ in range(self.calls)])


#: JAX's figures, each the lower of its call waited for alone and :class:`BackToBack` calls
#: (the peer is never timed slower than it runs)
JAX_TIMINGS = {"jax_fwd": "jax_fwd_back_to_back", "jax_fwd_bwd": "jax_fwd_bwd_back_to_back"}


def best_jax_timings(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with each JAX figure the lower of its two timings, the call waited for alone
    kept as ``<name>_alone``."""
    row = dict(row)
    for name, back_to_back in JAX_TIMINGS.items():
        if name in row and back_to_back in row:
            row[f"{name}_alone"] = row[name]
            row[name] = min(row[name], row[back_to_back])
    return row


def jax_contenders(shape: tuple[int, int, int, int]) -> dict[str, Callable[[], object]]:
    """JAX's contenders, jitted (compiled in the warm-up), where JAX imports; no lengths
    contender (JAX has no packed sequences: a masked scan would be our design, not its)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}
    steps, batch, features, hidden = shape
    rng = np.random.default_rng(2)
    bound = 1 / np.sqrt(hidden)  # torch's default init, for like-sized numbers
    params = {
        name: jnp.asarray(rng.uniform(-bound, bound, size).astype(np.float32))
        for name, size in (
            ("w_ih", (hidden, features)),
            ("w_hh", (hidden, hidden)),
            ("b_ih", (hidden,)),
            ("b_hh", (hidden,)),
        )
    }
    x = jnp.asarray(np.random.default_rng(1).standard_normal((steps, batch, features), np.float32))
    forward = jax.jit(jax_rnn)
    # the weights' gradients and the input's, as torch and rnncu compute them
    gradients = jax.jit(jax.grad(lambda p, xs: jax_rnn(p, xs).sum(), argnums=(0, 1)))
    return {
        "jax_fwd": lambda: jax.block_until_ready(forward(params, x)),
        "jax_fwd_bwd": lambda: jax.block_until_ready(gradients(params, x)),
        "jax_fwd_back_to_back": BackToBack(lambda: forward(params, x)),
        "jax_fwd_bwd_back_to_back": BackToBack(lambda: gradients(params, x)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    parser.add_argument(
        "--numpy-loop",
        action="store_true",
        help="also time rnncu fwd+bwd on NumPy's functions only (no kernels/host_rnn.c)",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; known: {list(SHAPES)}")

    rows = []
    for name in names:
        shape = SHAPES[name]
        contenders = {
            **rnncu_contenders(shape, args.numpy_loop),
            **torch_contenders(shape),
            **jax_contenders(shape),
        }
        medians = blockwise_medians(contenders, args.repeats)
        rows.append(best_jax_timings({"shape": name, "TBDH": shape, **medians}))

    try:
        import torch

        torch_version = torch.__version__
        threads = torch.get_num_threads()
    except ImportError:
        torch_version, threads = None, None
    try:
        import jax

        jax_version = jax.__version__
    except ImportError:
        jax_version = None
    timed = 5 * max(1, args.repeats // 5)  # blockwise_medians: 5 rounds of repeats // 5 calls
    print(
        f"# {platform.machine()}, numpy {np.__version__}, torch {torch_version} "
        f"({threads} threads), jax {jax_version}, median of {timed} (5 rounds of "
        "blocks), float32, ms; ratio: rnncu fwd+bwd over the best peer's"
    )
    print(
        "| shape | T, B, D, H | rnncu fwd | torch fwd | jax fwd | rnncu fwd+bwd | torch fwd+bwd "
        "| jax fwd+bwd | fwd+bwd ratio | rnncu fwd+bwd, lengths | torch fwd+bwd, packed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def cell(row: dict[str, object], key: str) -> str:
        value = row.get(key)
        return f"{value:.2f}" if isinstance(value, float) else "-"

    for row in rows:
        dims = ", ".join(map(str, row["TBDH"]))
        peers = [row[k] for k in ("torch_fwd_bwd", "jax_fwd_bwd") if k in row]
        ratio = f"{row['rnncu_fwd_bwd'] / min(peers):.2f}x" if peers else "-"
        print(
            f"| {row['shape']} | {dims} | {cell(row, 'rnncu_fwd')} | {cell(row, 'torch_fwd')} "
            f"| {cell(row, 'jax_fwd')} | {cell(row, 'rnncu_fwd_bwd')} "
            f"| {cell(row, 'torch_fwd_bwd')} | {cell(row, 'jax_fwd_bwd')} | {ratio} "
            f"| {cell(row, 'rnncu_fwd_bwd_lengths')} | {cell(row, 'torch_fwd_bwd_packed')} |"
        )
    if args.numpy_loop:
        print("\nfwd+bwd, ms: rnncu with kernels/host_rnn.c, and with NumPy's functions only")
        print("| shape | with host_rnn.c | NumPy only | ratio |")
        print("|---|---|---|---|")
        for row in rows:
            compiled, plain = row["rnncu_fwd_bwd"], row["rnncu_fwd_bwd_numpy_loop"]
            print(f"| {row['shape']} | {compiled:.2f} | {plain:.2f} | {compiled / plain:.2f}x |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
