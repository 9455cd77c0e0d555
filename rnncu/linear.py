"""``rnncu.Linear``: ``y = x W^T + b``, the seed's output layer ``y_t = W_hy h_t + b_y``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rnncu.backend import Array, Backend
from rnncu.module import (
    BackwardBeforeForwardError,
    Module,
    check_bool,
    check_positive_int,
    check_seed,
    stream_seed,
)


class Linear(Module):
    """Affine map over the last axis, ``torch.nn.Linear``-compatible.

    Args:
        in_features: input features, I.
        out_features: output features, O.
        bias: whether to add ``bias``.
        dtype, backend, seed: as for :class:`rnncu.RNN`. Initialisation as torch:
            U(-1/sqrt(I), 1/sqrt(I)) for both ``weight`` (O, I) and ``bias`` (O,).

    ``y = lin(x)`` takes x (..., I) and returns (..., O); ``dx = lin.backward(dy)`` fills
    ``grads["weight"]`` and ``grads["bias"]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: Any = "float32",
        backend: str | Backend | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(dtype=dtype, backend=backend)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.bias = check_bool("bias", bias)
        rng = np.random.default_rng(stream_seed(check_seed("seed", seed), "Linear.weights"))
        bound = 1.0 / math.sqrt(self.in_features)
        shapes: list[tuple[str, tuple[int, ...]]] = [
            ("weight", (self.out_features, self.in_features))
        ]
        if self.bias:
            shapes.append(("bias", (self.out_features,)))
        call = f"Linear(in_features={self.in_features}, out_features={self.out_features})"
        self._draw_uniform_params(shapes, rng, bound, call)
        self._input: Any = None

    def __repr__(self) -> str:
        return (
            f"Linear({self.in_features}, {self.out_features}, bias={self.bias}, "
            f"dtype={self.dtype.name}, backend={self.backend.name!r})"
        )

    def __call__(self, x: Array) -> Array:
        """``forward(x)``: (..., in_features) -> (..., out_features), see :meth:`forward`."""
        return self.forward(x)

    def forward(self, x: Array) -> Array:
        """x (..., in_features) -> (..., out_features), of the layer's backend and dtype (no
        implicit casts or transfers).

        ``backward`` reads ``x`` as it is then, without a copy (as the RNN layer does): change
        it in place between the two calls and the weight gradient is that of the new values.
        """
        x = self._check_input("x", x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: expected {self.in_features} features (in_features) in the last axis, "
                f"got shape {tuple(x.shape)}"
            )
        self._input = x
        # one 2-D product whatever the leading axes: CuPy runs (B, T, I) @ (I, O) as a
        # batched GEMM over B, the weight broadcast through arrays of pointers, and that path
        # ignores the compute type the backend's matmul_precision sets
        rows = x.reshape(-1, self.in_features)
        y = self.backend.matmul(rows, self.params["weight"].T)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.bias:
            y += self.params["bias"]
        return y

    def backward(self, dy: Array) -> Array:
        """dy (..., out_features), the output's shape, backend and dtype -> dx
        (..., in_features); fills ``grads`` (``weight``, and ``bias`` if the layer has one)."""
        if self._input is None:
            raise BackwardBeforeForwardError(
                "backward: no forward pass to differentiate; call forward (lin(x)) first"
            )
        dy = self._check_input("dy", dy)
        expected = tuple(self._input.shape[:-1]) + (self.out_features,)
        if tuple(dy.shape) != expected:
            raise ValueError(
                f"dy: expected the shape of the output {expected}, got {tuple(dy.shape)}"
            )
        x_2d = self._input.reshape(-1, self.in_features)
        dy_2d = dy.reshape(-1, self.out_features)
        grads = {"weight": self.backend.matmul(dy_2d.T, x_2d)}
        if self.bias:
            grads["bias"] = dy_2d.sum(axis=0)
        self.grads = grads
        dx = self.backend.matmul(dy_2d, self.params["weight"])
        return dx.reshape(*dy.shape[:-1], self.in_features)
