"""Initialisers: distributions, orthogonality, identity, reproducibility from a seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import rnncu
from rnncu.init import identity, init_linear, init_rnn, orthogonal, xavier_uniform


@pytest.mark.parametrize("shape", [(16, 16), (8, 20), (20, 8)])
def test_orthogonal(shape: tuple[int, int]) -> None:
    q = orthogonal(shape, rng=0)
    small = min(shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_xavier_bound_and_identity() -> None:
    w = xavier_uniform((30, 50), rng=1)
    bound = math.sqrt(6 / 80)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    np.testing.assert_array_equal(identity((4, 4), 0.5), 0.5 * np.eye(4))
    with pytest.raises(ValueError, match="square"):
        identity((3, 4))


@pytest.mark.parametrize("scheme", ["torch", "xavier", "orthogonal", "irnn"])
def test_init_rnn_schemes_are_reproducible_and_in_place(scheme: str) -> None:
    a = rnncu.RNN(3, 8, num_layers=2, backend="numpy", seed=5)
    b = rnncu.RNN(3, 8, num_layers=2, backend="numpy", seed=9)
    ids = {k: id(v) for k, v in a.params.items()}
    init_rnn(a, scheme, np.random.default_rng(7))
    init_rnn(b, scheme, np.random.default_rng(7))
    for name in a.params:
        assert id(a.params[name]) == ids[name]  # the layer's own arrays, updated in place
        np.testing.assert_array_equal(a.params[name], b.params[name])
        assert a.params[name].dtype == np.float32
    w_hh = a.params["weight_hh_l0"].astype(np.float64)
    if scheme == "irnn":
        np.testing.assert_array_equal(w_hh, np.eye(8))
        np.testing.assert_array_equal(a.params["bias_ih_l0"], 0)
    if scheme == "orthogonal":
        np.testing.assert_allclose(w_hh @ w_hh.T, np.eye(8), atol=1e-6)
    if scheme == "torch":
        assert np.abs(w_hh).max() <= 1 / math.sqrt(8)


def test_init_linear_and_bad_scheme() -> None:
    lin = rnncu.Linear(16, 4, backend="numpy")
    init_linear(lin, "xavier", 0)
    np.testing.assert_array_equal(lin.params["bias"], 0)
    init_linear(lin, "torch", 0)
    assert np.abs(lin.params["weight"]).max() <= 0.25
    with pytest.raises(ValueError, match="expected"):
        init_rnn(rnncu.RNN(2, 2, backend="numpy"), "nope")
