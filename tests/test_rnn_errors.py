"""Bad input: a clear ValueError or TypeError naming the argument, what was expected, what came."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import rnncu
from rnncu.module import BackwardBeforeForwardError


@pytest.fixture
def rnn() -> rnncu.RNN:
    return rnncu.RNN(4, 3, num_layers=2, backend="numpy", dtype="float32", seed=0)


def _x(*shape: int, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"input_size": 0}, ValueError, r"input_size: expected a positive integer, got 0"),
        ({"hidden_size": -2}, ValueError, r"hidden_size: expected a positive integer, got -2"),
        ({"num_layers": 0}, ValueError, r"num_layers: expected a positive integer, got 0"),
        # no integer at all: a TypeError, as torch.nn.RNN raises for them
        ({"hidden_size": 2.5}, TypeError, r"hidden_size: expected a positive integer, got 2.5"),
        ({"hidden_size": 2.0}, TypeError, r"hidden_size: expected a positive integer, got 2.0"),
        ({"hidden_size": True}, TypeError, r"hidden_size: expected a positive integer, got True"),
        ({"input_size": "4"}, TypeError, r"input_size: expected a positive integer, got '4'"),
        (
            {"nonlinearity": "sigmoid"},
            ValueError,
            r"nonlinearity: expected one of .*'tanh'.*got 'sigmoid'",
        ),
        ({"dropout": 1.0}, ValueError, r"dropout: expected a number in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, ValueError, r"dropout: expected a number in \[0, 1\)"),
    ],
)
def test_constructor_rejects(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"input_size": 4, "hidden_size": 3, **kwargs}
    with pytest.raises(error, match="^" + match):
        rnncu.RNN(backend="numpy", **args)


def test_unknown_dtype_and_backend() -> None:
    with pytest.raises(TypeError, match=r"dtype: expected 'float32' or 'float64', got 'int32'"):
        rnncu.RNN(4, 3, dtype="int32", backend="numpy")
    with pytest.raises(TypeError, match=r"dtype: expected 'float32' or 'float64', got 'float16'"):
        rnncu.Linear(4, 3, dtype="float16", backend="numpy")
    with pytest.raises(
        ValueError, match=r"backend: expected one of 'numpy', 'cupy', 'auto', got 'tpu'"
    ):
        rnncu.RNN(4, 3, backend="tpu")
    with pytest.raises(ValueError, match=r"backend: expected one of"):
        rnncu.set_backend("jax")


def test_wrong_rank(rnn: rnncu.RNN) -> None:
    with pytest.raises(
        ValueError,
        match=r"x: expected a 3-d array \(T, B, D\) or an unbatched 2-d array \(T, D\), "
        r"got 4-d \(2, 3, 4, 5\)",
    ):
        rnn(_x(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"x: expected a 3-d array .* got 1-d"):
        rnn(_x(4))


def test_wrong_feature_size(rnn: rnncu.RNN) -> None:
    with pytest.raises(
        ValueError, match=r"x: expected 4 features \(input_size\) in the last axis, got 5"
    ):
        rnn(_x(6, 2, 5))


def test_empty_sequence_and_batch(rnn: rnncu.RNN) -> None:
    with pytest.raises(ValueError, match=r"x: the sequence is empty \(0 time steps\)"):
        rnn(_x(0, 2, 4))
    with pytest.raises(ValueError, match=r"x: the batch is empty"):
        rnn(_x(3, 0, 4))


def test_non_array_input(rnn: rnncu.RNN) -> None:
    with pytest.raises(TypeError, match=r"x: expected a numpy array, got builtins.list"):
        rnn([[[0.5] * 4]])


def test_dtype_mismatch(rnn: rnncu.RNN) -> None:
    with pytest.raises(
        TypeError, match=r"x: expected dtype float32 \(the parameters' dtype\), got float64"
    ):
        rnn(_x(3, 2, 4, dtype="float64"))
    with pytest.raises(TypeError, match=r"h0: expected dtype float32 .*got float64"):
        rnn(_x(3, 2, 4), _x(2, 2, 3, dtype="float64"))


def test_h0_wrong_shape(rnn: rnncu.RNN) -> None:
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 2, 3\) .*got \(1, 2, 3\)"):
        rnn(_x(3, 2, 4), _x(1, 2, 3))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 3\)"):
        rnn(_x(3, 4), _x(2, 1, 3))


def test_hx_is_checked_under_its_own_name(rnn: rnncu.RNN) -> None:
    with pytest.raises(ValueError, match=r"hx: expected shape \(2, 2, 3\) .*got \(1, 2, 3\)"):
        rnn(_x(3, 2, 4), hx=_x(1, 2, 3))
    with pytest.raises(TypeError, match=r"hx: expected dtype float32 .*got float64"):
        rnn.forward(_x(3, 2, 4), hx=_x(2, 2, 3, dtype="float64"))
    with pytest.raises(TypeError, match=r"hx: the initial state was given twice, as h0 and as hx"):
        rnn(_x(3, 2, 4), _x(2, 2, 3), hx=_x(2, 2, 3))


def test_backward_before_forward(rnn: rnncu.RNN) -> None:
    with pytest.raises(BackwardBeforeForwardError, match=r"backward: no forward pass"):
        rnn.backward(_x(3, 2, 3))
    assert issubclass(BackwardBeforeForwardError, ValueError)
    lin = rnncu.Linear(3, 2, backend="numpy")
    with pytest.raises(ValueError, match=r"backward: no forward pass"):
        lin.backward(_x(2, 2))


def test_backward_wrong_gradients(rnn: rnncu.RNN) -> None:
    rnn(_x(3, 2, 4))
    with pytest.raises(
        ValueError, match=r"dout: expected the shape of out \(3, 2, 3\), got \(3, 2, 4\)"
    ):
        rnn.backward(_x(3, 2, 4))
    with pytest.raises(
        ValueError, match=r"dh_n: expected the shape of h_n \(2, 2, 3\), got \(2, 3\)"
    ):
        rnn.backward(None, _x(2, 3))
    with pytest.raises(ValueError, match=r"dout and dh_n are both None"):
        rnn.backward()
    with pytest.raises(TypeError, match=r"dout: expected dtype float32"):
        rnn.backward(_x(3, 2, 3, dtype="float64"))


def test_backward_refuses_dout_with_steps_and_batch_swapped(rnn: rnncu.RNN) -> None:
    """The feature axis alone does not tell (T, B, F) from (B, T, F): the whole shape is
    checked, so a batch-first gradient given to a time-major layer is refused."""
    rnn(_x(3, 2, 4))
    with pytest.raises(
        ValueError, match=r"dout: expected the shape of out \(3, 2, 3\), got \(2, 3, 3\)"
    ):
        rnn.backward(_x(2, 3, 3))


def test_backward_refuses_dh_n_with_another_number_of_states(rnn: rnncu.RNN) -> None:
    """One state per layer and direction: a dh_n of three states for two layers is refused,
    not partly read."""
    rnn(_x(3, 2, 4))
    with pytest.raises(
        ValueError, match=r"dh_n: expected the shape of h_n \(2, 2, 3\), got \(3, 2, 3\)"
    ):
        rnn.backward(None, _x(3, 2, 3))


def test_backward_checks_the_dtype_of_dh_n(rnn: rnncu.RNN) -> None:
    rnn(_x(3, 2, 4))
    with pytest.raises(TypeError, match=r"dh_n: expected dtype float32 .*got float64"):
        rnn.backward(None, _x(2, 2, 3, dtype="float64"))
    with pytest.raises(TypeError, match=r"dh_n: expected a numpy array, got builtins.list"):
        rnn.backward(None, _x(2, 2, 3).tolist())


def test_lengths_validation(rnn: rnncu.RNN) -> None:
    x = _x(5, 3, 4)
    with pytest.raises(
        ValueError,
        match=r"lengths: expected values in \[0, 5\] \(the number of steps\), got min -1 and max 5",
    ):
        rnn(x, lengths=[-1, 5, 2])
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\].*max 6"):
        rnn(x, lengths=[6, 5, 2])
    with pytest.raises(
        ValueError, match=r"lengths: expected shape \(3,\) \(one per sequence\), got \(2,\)"
    ):
        rnn(x, lengths=[5, 2])
    with pytest.raises(TypeError, match=r"lengths: expected integers, got dtype float64"):
        rnn(x, lengths=[5.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"lengths: not supported for unbatched"):
        rnn(_x(5, 4), lengths=[5])


def test_lengths_of_booleans_are_refused(rnn: rnncu.RNN) -> None:
    """True is not a length of 1: booleans are refused like floats, unsigned integers taken."""
    x = _x(5, 3, 4)
    with pytest.raises(TypeError, match=r"lengths: expected integers, got dtype bool"):
        rnn(x, lengths=np.array([True, True, False]))
    out, h_n = rnn(x, lengths=np.array([5, 2, 1], np.uint8))
    expected_out, expected_h_n = rnn(x, lengths=np.array([5, 2, 1]))
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(h_n, expected_h_n)


def test_lengths_that_are_no_array_are_named(rnn: rnncu.RNN) -> None:
    with pytest.raises(
        TypeError,
        match=r"^lengths: expected an integer array of shape \(3,\), got builtins.list$",
    ):
        rnn(_x(5, 3, 4), lengths=[[5, 2], [1]])  # ragged


def test_load_state_dict_checks(rnn: rnncu.RNN) -> None:
    state = rnn.state_dict()
    before = {k: v.copy() for k, v in state.items()}
    missing = dict(state)
    del missing["bias_hh_l1"]
    with pytest.raises(
        ValueError, match=r"state: keys do not match the parameters: missing \['bias_hh_l1'\]"
    ):
        rnn.load_state_dict(missing)
    extra = dict(state, weight_ih_l2=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"unexpected \['weight_ih_l2'\]"):
        rnn.load_state_dict(extra)
    wrong = dict(state)
    wrong["weight_hh_l0"] = np.ones((3, 4), np.float32)
    wrong["weight_ih_l0"] = np.ones((3, 4), np.float32) * 7  # valid, must not be applied
    with pytest.raises(
        ValueError, match=r"state\['weight_hh_l0'\]: expected shape \(3, 3\), got \(3, 4\)"
    ):
        rnn.load_state_dict(wrong)
    for name, value in rnn.state_dict().items():
        np.testing.assert_array_equal(
            value, before[name], err_msg=f"{name} changed by a failed load"
        )
    with pytest.raises(TypeError, match=r"state: expected a mapping"):
        rnn.load_state_dict([1, 2])


def test_load_state_dict_copies_into_the_parameters_in_place(rng: np.random.Generator) -> None:
    """A load keeps each parameter array (optimisers update them in place, device work holds
    their pointers) and copies the values: the arrays given stay the caller's."""
    rnn = rnncu.RNN(3, 4, num_layers=2, dtype="float64", backend="numpy", seed=0)
    arrays = dict(rnn.params)
    state = {name: rng.standard_normal(p.shape) for name, p in arrays.items()}
    expected = {name: value.copy() for name, value in state.items()}
    rnn.load_state_dict(state)
    for name, value in state.items():
        assert rnn.params[name] is arrays[name], name
        value[...] = np.nan
    for name, value in rnn.params.items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def test_linear_errors() -> None:
    with pytest.raises(ValueError, match=r"in_features: expected a positive integer, got 0"):
        rnncu.Linear(0, 3, backend="numpy")
    lin = rnncu.Linear(3, 2, backend="numpy")
    with pytest.raises(
        ValueError,
        match=r"x: expected 3 features \(in_features\) in the last axis, got shape \(4, 5\)",
    ):
        lin(_x(4, 5))
    lin(_x(4, 3))
    with pytest.raises(
        ValueError, match=r"dy: expected the shape of the output \(4, 2\), got \(4, 3\)"
    ):
        lin.backward(_x(4, 3))


@pytest.mark.parametrize("dtype", [None, "bogus", object, 3])
def test_dtype_none_or_unknown_is_refused(dtype) -> None:
    # np.dtype(None) is float64 and np.dtype("float64") == None holds: neither may pass
    with pytest.raises(TypeError, match=r"dtype: expected 'float32' or 'float64', got"):
        rnncu.RNN(4, 3, dtype=dtype, backend="numpy")
    with pytest.raises(TypeError, match=r"dtype: expected 'float32' or 'float64', got"):
        rnncu.Linear(4, 3, dtype=dtype, backend="numpy")


@pytest.mark.parametrize("flag", ["bias", "batch_first", "bidirectional"])
@pytest.mark.parametrize("value", ["False", 0, None])
def test_flags_must_be_bools(flag: str, value) -> None:
    # bool("False") is True: a string must not turn a flag on
    with pytest.raises(TypeError, match=rf"{flag}: expected True or False, got {value!r}"):
        rnncu.RNN(4, 3, backend="numpy", **{flag: value})
    if flag == "bias":
        with pytest.raises(TypeError, match=r"bias: expected True or False"):
            rnncu.Linear(4, 3, bias=value, backend="numpy")
    assert rnncu.RNN(4, 3, backend="numpy", **{flag: np.bool_(True)}).__dict__[flag] is True


@pytest.mark.parametrize("seed,error", [(-1, ValueError), ("a", TypeError), (1.5, TypeError)])
def test_seed_is_checked(seed, error) -> None:
    with pytest.raises(error, match=r"seed: expected None or a non-negative integer"):
        rnncu.RNN(4, 3, seed=seed, backend="numpy")
    with pytest.raises(error, match=r"seed: expected None or a non-negative integer"):
        rnncu.Linear(4, 3, seed=seed, backend="numpy")


def test_train_mode_must_be_a_bool() -> None:
    rnn = rnncu.RNN(4, 3, backend="numpy")
    with pytest.raises(TypeError, match=r"mode: expected True or False, got 'False'"):
        rnn.train("False")
    with pytest.raises(TypeError, match=r"mode: expected True or False, got None"):
        rnn.train(None)
    assert rnn.train(np.bool_(False)).training is False and rnn.train().training is True


def test_anything_with_a_get_method_is_not_taken_for_a_device_array() -> None:
    rnn = rnncu.RNN(3, 4, backend="numpy", dtype="float64", seed=0)
    x = np.ones((5, 2, 3))
    with pytest.raises(TypeError, match=r"lengths: expected integers, got dtype object"):
        rnn(x, None, {0: 1})
    state = rnn.state_dict()
    state["bias_ih_l0"] = {"x": 1}
    with pytest.raises(TypeError, match=r"state\['bias_ih_l0'\]: expected a floating array"):
        rnn.load_state_dict(state)


def test_numpy_scalars_are_numbers() -> None:
    for dropout in (np.float32(0.25), np.float64(0.25)):
        assert rnncu.RNN(4, 3, num_layers=2, dropout=dropout, backend="numpy").dropout == 0.25


def test_warnings_skip_rnncu_frames_by_module_name() -> None:
    """A frame of the rnncu package is known by its module's name: a pyc-only or frozen
    install records relative file names, which a test of the path did not recognise."""
    from rnncu._warnings import warn_at_caller

    namespace = {"__name__": "rnncu.compiled", "warn_at_caller": warn_at_caller}
    source = "def inner():\n    warn_at_caller('rnncu: a test', RuntimeWarning)\n"
    exec(compile(source, "compiled.py", "exec"), namespace)  # a relative co_filename
    with pytest.warns(RuntimeWarning, match="rnncu: a test") as caught:
        namespace["inner"]()
    assert [w.filename for w in caught] == [__file__]


def test_dropout_on_one_layer_warns() -> None:
    with pytest.warns(UserWarning, match=r"dropout=0.5 has no effect with num_layers=1") as caught:
        rnncu.RNN(4, 3, dropout=0.5, backend="numpy")
    assert [w.filename for w in caught] == [__file__]  # the user's line, not rnncu's
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a second layer, dropout acts: no warning
        rnncu.RNN(4, 3, num_layers=2, dropout=0.5, backend="numpy")


@pytest.mark.parametrize(
    "value,dtype",
    [(np.nan, "float32"), (np.inf, "float64"), (-np.inf, "float32"), (1e300, "float32")],
)
def test_load_state_dict_refuses_non_finite(value: float, dtype: str) -> None:
    rnn = rnncu.RNN(4, 3, backend="numpy", dtype=dtype, seed=0)
    before = rnn.state_dict()
    state = {k: v.astype(np.float64) for k, v in before.items()}
    state["weight_hh_l0"][1, 2] = value  # 1e300 is finite in float64, inf in float32
    state["weight_ih_l0"] += 1.0  # valid, must not be applied
    with pytest.raises(ValueError, match=r"state\['weight_hh_l0'\]: expected finite values"):
        rnn.load_state_dict(state)
    for name, array in rnn.state_dict().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)


def test_load_state_dict_refuses_strings() -> None:
    rnn = rnncu.RNN(4, 3, backend="numpy", seed=0)
    state = dict(rnn.state_dict(), weight_hh_l0="abc")
    with pytest.raises(TypeError, match=r"state\['weight_hh_l0'\]: expected a floating array"):
        rnn.load_state_dict(state)


def test_load_state_dict_names_the_key_of_a_value_that_does_not_convert() -> None:
    """NumPy's and torch's own messages came without the key."""
    rnn = rnncu.RNN(1, 2, backend="numpy", seed=0)
    values = [[[1.0], [2.0, 3.0]]]  # ragged
    torch = _torch_or_none()
    if torch is not None:
        values += [torch.ones(2, 1, requires_grad=True), torch.ones(2, 1, dtype=torch.bfloat16)]
    for value in values:
        state = dict(rnn.state_dict(), weight_ih_l0=value)
        with pytest.raises(TypeError, match=r"^state\['weight_ih_l0'\]: expected a floating"):
            rnn.load_state_dict(state)
    assert torch is None or len(values) == 3


def _torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def test_masked_arrays_are_refused(rng: np.random.Generator) -> None:
    """The mask was ignored without a word."""
    rnn = rnncu.RNN(3, 4, backend="numpy", seed=0)
    data = rng.standard_normal((2, 1, 3)).astype(np.float32)
    with pytest.raises(TypeError, match=r"^x: a masked array, whose mask the layer would ign"):
        rnn(np.ma.masked_array(data, mask=data > 0))
    head = rnncu.Linear(3, 2, backend="numpy", seed=0)
    with pytest.raises(TypeError, match=r"^x: a masked array"):
        head(np.ma.masked_array(data[0], mask=False))


def test_parameters_too_large_for_memory_name_the_constructor_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NumPy's own MemoryError names a shape, not the argument behind it. The sizes here ask
    for 80 TB and more: no machine allocates them, so nothing is drawn."""
    said = (
        r"^RNN\(input_size=1000000, hidden_size=10000000, num_layers=1, bidirectional=False\): "
        r"its 110,000,020,000,000 parameters \(4\.1e\+05 GiB in float32; the largest, "
        r"weight_hh_l0, of shape \(10000000, 10000000\), drawn in float64 on the host first\) "
        r"do not fit in memory \(.+\)$"
    )
    with pytest.raises(MemoryError, match=said):
        rnncu.RNN(10**6, 10**7, backend="numpy")
    said = r"^Linear\(in_features=10000000, out_features=10000000\): its 100,000,010,000,000 "
    with pytest.raises(MemoryError, match=said):
        rnncu.Linear(10**7, 10**7, backend="numpy")
    # a device that runs out part-way (CuPy's OutOfMemoryError is a MemoryError): the layer
    # keeps no half of its parameters, and other errors pass as they are
    from rnncu.backend import get_backend

    backend = get_backend("numpy")
    moved: list[tuple[int, ...]] = []

    def out_of_memory_at_the_second(host: np.ndarray, dtype: object = None) -> np.ndarray:
        if moved:
            raise MemoryError("Out of memory allocating 1,024 bytes")
        moved.append(host.shape)
        return host.astype(dtype)

    monkeypatch.setattr(backend, "asarray", out_of_memory_at_the_second)
    layer = rnncu.Linear.__new__(rnncu.Linear)
    with pytest.raises(MemoryError, match=r"^Linear\(in_features=3, out_features=2\): its 8 "):
        rnncu.Linear.__init__(layer, 3, 2, backend=backend)
    assert moved == [(2, 3)] and layer.params == {}


def test_numpy_integer_sizes_are_kept_as_python_ints() -> None:
    """check_positive_int takes NumPy's integers and gives back a Python int: a layer's
    sizes are plain ints, as written to JSON and shown in its repr."""
    from rnncu.module import check_positive_int

    for value in (np.int64(3), np.int32(3), np.uint8(3), 3):
        checked = check_positive_int("n", value)
        assert type(checked) is int and checked == 3
    rnn = rnncu.RNN(np.int64(3), np.int32(4), num_layers=np.uint8(1), backend="numpy")
    sizes = (rnn.input_size, rnn.hidden_size, rnn.num_layers)
    assert sizes == (3, 4, 1) and all(type(size) is int for size in sizes)
    assert repr(rnn).startswith("RNN(3, 4, num_layers=1,")


@pytest.mark.parametrize(
    ("batch_first", "shape"), [(False, (6, 2, 5)), (True, (2, 6, 5)), (False, (6, 5))]
)
def test_wrong_feature_size_names_the_shape_given(
    batch_first: bool, shape: tuple[int, ...]
) -> None:
    # the shape as the caller passed it, not the time-major view the layer makes of it
    rnn = rnncu.RNN(4, 3, batch_first=batch_first, backend="numpy")
    expected = re.escape(f"got 5 (shape {shape})")
    with pytest.raises(ValueError, match=expected):
        rnn(np.random.default_rng(1).random(shape, dtype=np.float32))
