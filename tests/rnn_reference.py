"""Test helpers: a plain float64 loop RNN written independently of rnncu, and finite differences.

The loop follows the textbook definition step by step (no masks-as-multiplications, no
in-place buffers), so agreement with it checks rnncu's vectorised algorithm, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


def loop_rnn(
    x: np.ndarray,
    params: dict[str, np.ndarray],
    num_layers: int,
    bidirectional: bool,
    nonlinearity: str,
    h0: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """x (T, B, D) -> out (T, B, H*dirs), h_n (L*dirs, B, H); padded steps give zero output.

    Each row b runs only its first ``lengths[b]`` steps (forward direction t = 0..len-1,
    reverse direction t = len-1..0), exactly like a packed sequence.
    """
    act = np.tanh if nonlinearity == "tanh" else (lambda v: np.maximum(v, 0.0))
    steps, batch, _ = x.shape
    dirs = 2 if bidirectional else 1
    hidden = params["weight_hh_l0"].shape[0]
    if lengths is None:
        lengths = np.full(batch, steps)
    if h0 is None:
        h0 = np.zeros((num_layers * dirs, batch, hidden))
    layer_input = x.astype(np.float64)
    h_n = np.zeros((num_layers * dirs, batch, hidden))
    for layer in range(num_layers):
        out = np.zeros((steps, batch, hidden * dirs))
        for direction in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih = params[f"weight_ih{suffix}"]
            w_hh = params[f"weight_hh{suffix}"]
            b = params.get(f"bias_ih{suffix}", 0.0) + params.get(f"bias_hh{suffix}", 0.0)
            for row in range(batch):
                h = h0[layer * dirs + direction, row].astype(np.float64)
                valid = range(lengths[row])
                for t in reversed(valid) if direction else valid:
                    h = act(w_ih @ layer_input[t, row] + w_hh @ h + b)
                    out[t, row, direction * hidden : (direction + 1) * hidden] = h
                h_n[layer * dirs + direction, row] = h
        layer_input = out
    return layer_input, h_n


def numerical_gradient(
    loss: Callable[[], float], array: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central differences of ``loss()`` with respect to every element of ``array`` (float64),
    perturbing ``array`` in place and restoring it."""
    grad = np.zeros_like(array, dtype=np.float64)
    flat = array.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        plus = loss()
        flat[i] = saved - eps
        minus = loss()
        flat[i] = saved
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def with_nans(
    rng: np.random.Generator, steps: int, batch: int, hidden: int, dtype: type
) -> dict[str, np.ndarray]:
    """A recurrence's inputs with NaN in two places: Z at step 1 of row 0 (one unit), which
    the forward must carry into that row's later states (through relu too: relu(NaN) is NaN,
    as numpy.maximum gives), and the output gradient at step 0 of the last row, which only
    the backward reads. Every other row stays finite: a NaN must not leak across rows."""
    assert steps >= 2 and batch >= 3 and hidden >= 1
    z = rng.standard_normal((steps, batch, hidden))
    # half scale: a relu recurrence stays bounded over a few steps
    w_hh = rng.uniform(-0.5, 0.5, (hidden, hidden)) / np.sqrt(hidden)
    grad_states = rng.standard_normal((steps, batch, hidden))
    z[1, 0, hidden // 2] = np.nan
    grad_states[0, batch - 1, 0] = np.nan
    arrays = {
        "z": z,
        "w_hh": w_hh,
        "h0": rng.standard_normal((batch, hidden)),
        "grad_states": grad_states,
        "grad_h_last": rng.standard_normal((batch, hidden)),
    }
    return {name: a.astype(dtype) for name, a in arrays.items()}


def assert_same_nans(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
    """NaN exactly where the reference has NaN, and the other elements close."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan_actual, nan_expected = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_actual, nan_expected), (
        f"{what}: NaN at {np.argwhere(nan_actual).tolist()[:8]}, the reference at "
        f"{np.argwhere(nan_expected).tolist()[:8]} ({int(nan_actual.sum())} against "
        f"{int(nan_expected.sum())})"
    )
    finite = ~nan_expected
    atol = rtol * max(1.0, float(np.max(np.abs(expected[finite]), initial=0.0)))
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol, err_msg=what)


def recurrence_cases(
    shapes: list[tuple[int, int, int]],
    configs: list[tuple[str, bool, bool]],
    is_long: Callable[[tuple[int, int, int]], bool],
) -> list[Any]:
    """(dtype, shape, nonlinearity, reverse, use_lengths) for every combination, except that
    the long shapes (``is_long``) run in float32 tanh only: left out of the grid, not
    skipped, so that the skip count shows only what a machine could not run."""
    cases = []
    for dtype in (np.float32, np.float64):
        for shape in shapes:
            for nonlinearity, reverse, use_lengths in configs:
                if is_long(shape) and (dtype != np.float32 or nonlinearity != "tanh"):
                    continue
                label = f"{nonlinearity}-{reverse}-{use_lengths}-{'x'.join(map(str, shape))}"
                cases.append(
                    pytest.param(
                        dtype,
                        shape,
                        nonlinearity,
                        reverse,
                        use_lengths,
                        id=f"{label}-{np.dtype(dtype).name}",
                    )  # fmt: skip
                )
    return cases
