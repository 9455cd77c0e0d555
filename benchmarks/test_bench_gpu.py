"""pytest-benchmark suite for the CuPy backend (marked gpu: skipped without CuPy and a device).

PYTHONPATH=$PWD python -m pytest benchmarks/test_bench_gpu.py -m gpu --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

SHAPES = {  # T, B, D, H
    "rowmnist": (28, 256, 28, 128),
    "medium": (100, 64, 256, 512),
    "b32_h512": (512, 32, 512, 512),
}


@pytest.fixture(autouse=True)
def _needs_device() -> None:
    from rnncu.backend import available_backends

    reason = available_backends()["cupy"]
    if reason is not None:
        pytest.skip(f"GPU benchmark skipped: {reason}")


@pytest.mark.parametrize("recurrence", ["step", "auto"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_backward(benchmark, name: str, recurrence: str) -> None:
    import cupy

    import rnncu

    steps, batch, features, hidden = SHAPES[name]
    rnn = rnncu.RNN(features, hidden, dtype="float32", backend="cupy", seed=0)
    x = cupy.asarray(
        np.random.default_rng(0).standard_normal((steps, batch, features)), dtype=cupy.float32
    )
    dout = cupy.ones((steps, batch, hidden), cupy.float32)
    rnn.backend.recurrence = recurrence

    def step() -> None:
        rnn(x)
        rnn.backward(dout)
        rnn.backend.synchronize()

    try:
        benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    finally:
        rnn.backend.recurrence = None
