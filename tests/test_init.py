"""Initialisers: distributions, orthogonality, identity, reproducibility from a seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import rnncu
from rnncu.init import (
    identity,
    init_linear,
    init_rnn,
    orthogonal,
    set_param,
    torch_uniform,
    xavier_uniform,
)


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


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: xavier_uniform((3,)), ValueError, r"xavier_uniform: shape: expected \(rows, c"),
        (lambda: xavier_uniform((0, 0)), ValueError, r"xavier_uniform: shape: expected"),
        (lambda: orthogonal((4, 2.5)), ValueError, r"orthogonal: shape: expected"),
        (lambda: identity((3, 0)), ValueError, r"identity: shape: expected"),
        (lambda: torch_uniform((2, 2), -1.0), ValueError, r"bound: expected a number in \[0, inf"),
        (lambda: torch_uniform((-1, 2), 0.1), ValueError, r"torch_uniform: shape: expected siz"),
        (lambda: torch_uniform(-3, 0.1), ValueError, r"torch_uniform: shape: expected sizes >="),
        (lambda: torch_uniform("3", 0.1), ValueError, r"torch_uniform: shape: expected sizes"),
        (lambda: torch_uniform((2, 2), float("nan")), ValueError, r"bound: expected a number in"),
        (lambda: xavier_uniform((2, 2), rng=-1), ValueError, r"rng: expected None or a non-neg"),
        (lambda: orthogonal((2, 2), rng="a"), TypeError, r"rng: expected None or a non-negative"),
        (lambda: orthogonal((2, 2), gain=float("nan")), ValueError, r"gain: expected a number in"),
        (lambda: orthogonal((2, 2), gain="2"), TypeError, r"gain: expected a number, got '2'"),
        (lambda: identity((2, 2), scale=float("inf")), ValueError, r"scale: expected a number in"),
        (
            lambda: identity((2, 2), scale=-float("inf")),
            ValueError,
            r"scale: expected a number in \(-inf, inf\), got -inf",
        ),
    ],
)
def test_array_initialisers_check_arguments(call, error, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_module_initialisers_check_the_module() -> None:
    rnn = rnncu.RNN(3, 4, backend="numpy", seed=0)
    lin = rnncu.Linear(4, 2, backend="numpy", seed=0)
    with pytest.raises(TypeError, match=r"init_rnn: rnn: expected an rnncu.RNN, got Linear"):
        init_rnn(lin)
    with pytest.raises(TypeError, match=r"init_linear: linear: expected an rnncu.Linear, got RNN"):
        init_linear(rnn)
    with pytest.raises(ValueError, match=r"irnn_input_std: expected a number in \[0, inf\)"):
        init_rnn(rnn, "irnn", irnn_input_std=-1)
    with pytest.raises(ValueError, match=r"irnn_scale: expected a number in \(-inf, inf\)"):
        init_rnn(rnn, "irnn", irnn_scale=float("nan"))
    with pytest.raises(TypeError, match=r"weight_hh_l0: expected a host \(NumPy\) array, got list"):
        set_param(rnn, "weight_hh_l0", np.eye(4).tolist())
    with pytest.raises(ValueError, match=r"'nope': no such parameter; RNN has weight_ih_l0, "):
        set_param(rnn, "nope", np.eye(4))
    # the checks of load_state_dict: NaN, complex and 1e300 (inf in float32) had been loaded
    before = rnn.state_dict()
    for value, error, message in (
        (np.full((4, 4), np.nan), ValueError, "expected finite values in float32, got NaN or in"),
        (np.full((4, 4), 1e300), ValueError, "expected finite .*, got values beyond float32's ra"),
        (
            np.diag([np.nan, 1e300, 1, 1]),
            ValueError,
            r"expected finite .*, got NaN or infinity and",
        ),
        (np.eye(4) + 1j, TypeError, "expected a floating array, got complex128"),
        (np.full((4, 4), "a"), TypeError, "expected a floating array, got <U1"),
        (np.eye(3), ValueError, r"expected shape \(4, 4\), got \(3, 3\)"),
    ):
        with pytest.raises(error, match=r"^weight_hh_l0: " + message):
            set_param(rnn, "weight_hh_l0", value)
    for name, array in rnn.state_dict().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)
    # a negative gain or scale is still an initialisation
    np.testing.assert_array_equal(identity((2, 2), scale=-0.5), -0.5 * np.eye(2))
    np.testing.assert_array_equal(orthogonal((3, 3), -1.0, 4), -orthogonal((3, 3), 1.0, 4))


@pytest.mark.parametrize("scheme", ["torch", "xavier"])
def test_init_rnn_uniform_schemes_have_their_bounds_and_spread(scheme: str) -> None:
    """Every tensor uniform on [-a, a] with the scheme's own a: its extremes near +-a and its
    standard deviation a / sqrt(3) (a one-sided check would pass shrunken or zero weights)."""
    inputs, hidden = 48, 64
    rnn = rnncu.RNN(inputs, hidden, backend="numpy", dtype="float64", seed=0)
    init_rnn(rnn, scheme, np.random.default_rng(3))
    torch_bound = 1 / math.sqrt(hidden)
    bounds = {
        "weight_ih_l0": torch_bound if scheme == "torch" else math.sqrt(6 / (inputs + hidden)),
        "weight_hh_l0": torch_bound if scheme == "torch" else math.sqrt(6 / (2 * hidden)),
        "bias_ih_l0": torch_bound if scheme == "torch" else 0.0,
        "bias_hh_l0": torch_bound if scheme == "torch" else 0.0,
    }
    for name, bound in bounds.items():
        values = rnn.params[name]
        if bound == 0.0:
            np.testing.assert_array_equal(values, 0.0, err_msg=name)
            continue
        assert np.abs(values).max() <= bound, name
        assert values.max() > 0.9 * bound and values.min() < -0.9 * bound, name
        # n >= 64 draws: the sample std of U(-a, a) is within 15 % of a/sqrt(3) by far
        assert abs(values.std() / (bound / math.sqrt(3)) - 1) < 0.15, name


def test_orthogonal_is_haar_distributed_in_sign() -> None:
    """R's diagonal signs folded in, as torch does: a bare Householder QR makes Q[0, 0]
    negative every time (a biased, non-Haar draw). The first entry's sign is a fair coin."""
    rng = np.random.default_rng(11)
    for shape in ((4, 4), (3, 5)):
        firsts = np.array([orthogonal(shape, rng=rng)[0, 0] for _ in range(400)])
        assert 0.4 < np.mean(firsts > 0) < 0.6, shape


def test_irnn_takes_its_scale_and_input_std() -> None:
    rnn = rnncu.RNN(48, 64, backend="numpy", dtype="float64", seed=0)
    init_rnn(rnn, "irnn", np.random.default_rng(2), irnn_scale=0.5, irnn_input_std=0.05)
    np.testing.assert_array_equal(rnn.params["weight_hh_l0"], 0.5 * np.eye(64))
    w_ih = rnn.params["weight_ih_l0"]
    # 3072 Gaussian draws: the sample std is within a few percent of 0.05
    assert abs(w_ih.std() / 0.05 - 1) < 0.1 and abs(w_ih.mean()) < 0.005


def test_linear_default_init_follows_torch_bounds() -> None:
    """U(-1/sqrt(in_features), 1/sqrt(in_features)) for weight and bias, as torch.nn.Linear."""
    lin = rnncu.Linear(64, 16, backend="numpy", dtype="float64", seed=3)
    bound = 1 / math.sqrt(64)
    weight, bias = lin.params["weight"], lin.params["bias"]
    assert np.abs(weight).max() <= bound and np.abs(bias).max() <= bound
    assert weight.max() > 0.9 * bound and weight.min() < -0.9 * bound
    assert abs(weight.std() / (bound / math.sqrt(3)) - 1) < 0.15


def test_torch_uniform_takes_one_size_as_numpy_does() -> None:
    values = torch_uniform(5, 0.5, 7)
    assert values.shape == (5,) and np.abs(values).max() <= 0.5 and np.unique(values).size == 5
    np.testing.assert_array_equal(values, torch_uniform((5,), 0.5, 7))


def test_torch_uniform_takes_the_shapes_numpy_takes() -> None:
    # a list, NumPy integers and a zero size are shapes NumPy's uniform takes
    assert torch_uniform([2, 3], 0.5, 7).shape == (2, 3)
    assert torch_uniform(np.int64(4), 0.5, 7).shape == (4,)
    assert torch_uniform((np.int32(2), 3), 0.5, 7).shape == (2, 3)
    assert torch_uniform((0, 3), 0.5, 7).shape == (0, 3)
    # a bool is no size, alone or in a tuple, and the error shows it as given
    for shape in ((True, 2), (2, False)):
        with pytest.raises(ValueError, match=r"torch_uniform: shape: expected sizes >= 0, got \("):
            torch_uniform(shape, 0.5)
    with pytest.raises(ValueError, match=r"torch_uniform: shape: expected sizes >= 0, got True$"):
        torch_uniform(True, 0.5)
