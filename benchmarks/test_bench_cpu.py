"""pytest-benchmark suite for the NumPy backend: float32 forward+backward on the CPU shapes
of shared/ANCHORS.md, with kernels/host_rnn.c (the compiled recurrence or tanh loops) and
without it (NumPy's functions only).

    PYTHONPATH=$PWD python -m pytest benchmarks/test_bench_cpu.py --benchmark-only \
        --benchmark-group-by=param:name

Not part of the test suite (testpaths is tests/); the comparison against PyTorch is
benchmarks/cpu_compare.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnncu.backend import host_kernels

SHAPES = {  # T, B, D, H
    "rowdigits": (8, 128, 8, 64),
    "rowmnist": (28, 256, 28, 128),
    "pixeldigits": (64, 128, 1, 128),
    "medium": (100, 64, 256, 512),
    "pixelmnist": (784, 32, 1, 128),
}


@pytest.mark.parametrize("loops", ["compiled", "numpy"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_backward(benchmark, monkeypatch, name: str, loops: str) -> None:
    import rnncu

    if loops == "compiled" and host_kernels.load() is None:
        pytest.skip(f"compiled kernels unavailable: {host_kernels.status()}")
    if loops == "numpy":
        monkeypatch.setattr(host_kernels, "load", lambda: None)
    steps, batch, features, hidden = SHAPES[name]
    rnn = rnncu.RNN(features, hidden, dtype="float32", backend="numpy", seed=0)
    x = np.random.default_rng(0).standard_normal((steps, batch, features), dtype=np.float32)
    dout = np.ones((steps, batch, hidden), np.float32)

    def step() -> None:
        rnn(x)
        rnn.backward(dout)

    benchmark.pedantic(step, rounds=10, warmup_rounds=2)
