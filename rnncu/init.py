"""Parameter initialisers, drawn on the host from a NumPy Generator and copied into the
module's existing arrays in place (so the same seed gives the same weights on every backend).

Array-level functions return a host array of the requested shape; module-level functions
(:func:`init_rnn`, :func:`init_linear`) apply a named scheme to every parameter:

* ``torch``: PyTorch's defaults, U(-1/sqrt(H), 1/sqrt(H)) for every RNN tensor and
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for a Linear layer.
* ``xavier``: Glorot uniform weights, zero biases.
* ``orthogonal``: Glorot input weights, an orthogonal W_hh (its eigenvalues lie on the unit
  circle, so gradients neither grow nor vanish through the linear part of the recurrence:
  the standard help for long sequences), zero biases.
* ``irnn``: for ReLU RNNs (Le, Jaitly & Hinton 2015): W_hh = identity (times ``scale``),
  small Gaussian input weights, zero biases; at the start the state just integrates inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rnncu.module import check_number, check_seed, checked_param_value

__all__ = [
    "INIT_SCHEMES",
    "identity",
    "init_linear",
    "init_rnn",
    "orthogonal",
    "set_param",
    "torch_uniform",
    "xavier_uniform",
]

INIT_SCHEMES = ("torch", "xavier", "orthogonal", "irnn")


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(check_seed("rng", rng))


def _matrix_shape(function: str, shape: Any) -> tuple[int, int]:
    """A 2-d shape of positive sizes, or an error naming ``function``."""
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in shape)
    ):
        raise ValueError(
            f"{function}: shape: expected (rows, cols) of positive sizes, got {shape!r}"
        )
    return int(shape[0]), int(shape[1])


def torch_uniform(
    shape: int | tuple[int, ...], bound: float, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """U(-bound, bound), float64, on the host, of ``shape`` (a tuple of sizes, or one size for
    (n,)). ``rng``: a NumPy Generator (drawn from), a seed, or None (fresh entropy)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or any(
        isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in shape
    ):  # NumPy's own errors ("negative dimensions are not allowed") name no argument
        raise ValueError(f"torch_uniform: shape: expected sizes >= 0, got {shape!r}")
    bound = check_number("bound", bound, low=0.0, high_open=True)
    return _generator(rng).uniform(-bound, bound, size=shape)


def xavier_uniform(
    shape: tuple[int, int], gain: float = 1.0, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Glorot uniform for a (fan_out, fan_in) weight: U(-a, a), a = gain sqrt(6/(in+out));
    float64 of ``shape``, on the host. ``rng`` as in :func:`torch_uniform`."""
    fan_out, fan_in = _matrix_shape("xavier_uniform", shape)
    gain = check_number("gain", gain, low=0.0, high_open=True)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _generator(rng).uniform(-bound, bound, size=shape)


def orthogonal(
    shape: tuple[int, int], gain: float = 1.0, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal rows or columns (whichever are fewer), from the
    QR decomposition of a Gaussian matrix with the sign of R's diagonal folded in, so the
    result is uniformly (Haar) distributed, as ``torch.nn.init.orthogonal_``; times
    ``gain``, float64 on the host. ``rng`` as in :func:`torch_uniform`."""
    rows, cols = _matrix_shape("orthogonal", shape)
    gain = _finite("gain", gain)
    flat = _generator(rng).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    scaled: np.ndarray = gain * q[:rows, :cols]
    return scaled


def _finite(name: str, value: Any) -> float:
    # any sign: a negative gain or scale flips the weights, which is still an initialisation
    return check_number(name, value, low=-math.inf, low_open=True, high_open=True)


def identity(shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """``scale`` times the identity (square shapes only: it is meant for W_hh)."""
    rows, cols = _matrix_shape("identity", shape)
    scale = _finite("scale", scale)
    if rows != cols:
        raise ValueError(f"identity init needs a square matrix, got {shape}")
    return scale * np.eye(rows)


def set_param(module: Any, name: str, value: np.ndarray) -> None:
    """Copy the host array ``value`` into ``module.params[name]`` in place (dtype cast to the
    parameter's), keeping the array object the layer and the optimizer refer to. ``value``
    must be a floating array of the parameter's shape, finite in the parameter's dtype (as
    ``load_state_dict`` requires); else an error naming ``name``."""
    if name not in module.params:
        raise ValueError(
            f"{name!r}: no such parameter; {type(module).__name__} has {', '.join(module.params)}"
        )
    param = module.params[name]
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a host (NumPy) array, got {type(value).__name__}")
    param[...] = checked_param_value(name, np.ascontiguousarray(value), module, param)


def init_rnn(
    rnn: Any,
    scheme: str = "torch",
    rng: np.random.Generator | int | None = None,
    irnn_scale: float = 1.0,
    irnn_input_std: float = 0.001,
) -> None:
    """Initialise every parameter of an :class:`rnncu.RNN` with ``scheme`` (see the module
    docstring), in place. ``rng`` is a NumPy Generator (drawn from), a seed, or None (fresh
    entropy); parameters are visited in ``rnn.params`` order, so a seed fixes the result.
    ``irnn`` only: W_hh = ``irnn_scale`` * identity, input weights N(0, ``irnn_input_std``^2).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init: expected one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    if not hasattr(rnn, "hidden_size") or not any(n.startswith("weight_hh") for n in rnn.params):
        raise TypeError(f"init_rnn: rnn: expected an rnncu.RNN, got {type(rnn).__name__}")
    irnn_input_std = check_number("irnn_input_std", irnn_input_std, low=0.0, high_open=True)
    irnn_scale = _finite("irnn_scale", irnn_scale)
    gen = _generator(rng)
    bound = 1.0 / math.sqrt(rnn.hidden_size)
    for name, param in rnn.params.items():
        shape = tuple(param.shape)
        if scheme == "torch":
            value = torch_uniform(shape, bound, gen)
        elif name.startswith("bias"):
            value = np.zeros(shape)
        elif name.startswith("weight_hh"):
            if scheme == "irnn":
                value = identity(shape, irnn_scale)
            elif scheme == "orthogonal":
                value = orthogonal(shape, rng=gen)
            else:
                value = xavier_uniform(shape, rng=gen)
        else:  # weight_ih
            if scheme == "irnn":
                value = gen.normal(0.0, irnn_input_std, size=shape)
            else:
                value = xavier_uniform(shape, rng=gen)
        set_param(rnn, name, value)


def init_linear(
    linear: Any, scheme: str = "torch", rng: np.random.Generator | int | None = None
) -> None:
    """Initialise an :class:`rnncu.Linear` in place: ``torch`` (U(+-1/sqrt(fan_in)) for
    weight and bias) or ``xavier`` (Glorot weight, zero bias). ``rng`` as in
    :func:`init_rnn`."""
    if set(getattr(linear, "params", {})) - {"weight", "bias"} or "weight" not in getattr(
        linear, "params", {}
    ):
        raise TypeError(
            f"init_linear: linear: expected an rnncu.Linear, got {type(linear).__name__}"
        )
    gen = _generator(rng)
    weight = linear.params["weight"]
    fan_in = weight.shape[1]
    if scheme == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        set_param(linear, "weight", torch_uniform(tuple(weight.shape), bound, gen))
        if "bias" in linear.params:
            set_param(linear, "bias", torch_uniform(tuple(linear.params["bias"].shape), bound, gen))
    elif scheme == "xavier":
        set_param(linear, "weight", xavier_uniform(tuple(weight.shape), rng=gen))
        if "bias" in linear.params:
            set_param(linear, "bias", np.zeros(linear.params["bias"].shape))
    else:
        raise ValueError(f"init_linear: expected 'torch' or 'xavier', got {scheme!r}")
