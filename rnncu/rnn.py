"""``rnncu.RNN``: the Elman RNN with ``torch.nn.RNN``'s interface and an explicit, exact BPTT.

For each layer ``k`` and direction, with ``act`` = tanh or relu::

    h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)

The algorithm, per layer and direction:

* forward: one GEMM projects the inputs of all steps at once, ``Z = X W_ih^T + b_ih + b_hh``
  (T*B, H), into the buffer that then becomes the state sequence; the backend's recurrence
  overwrites it step by step in place (``states[t] = act(states[t] + h_{t-1} W_hh^T)``).
* backward: only the recurrence of ``dh`` is sequential (the backend); the weight, bias and
  input gradients are then a few large GEMMs over all steps.

Variable lengths are a mask, not a packing: a padded step carries the state unchanged, its
output is zero, and ``h_n`` is the state at each row's last valid step. The reverse direction
starts at each row's last valid step, as torch's packed sequences do. Unlike torch, a length
may be 0 (the row's state passes through the call), so that variable-length sequences can run
in chunks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rnncu._warnings import warn_at_caller
from rnncu.backend import NONLINEARITIES, Array, Backend, backend_for
from rnncu.module import (
    BackwardBeforeForwardError,
    Module,
    check_bool,
    check_number,
    check_positive_int,
    check_seed,
    describe_array,
    stream_seed,
)


class _LayerCache:
    """What backward needs from one layer's forward pass."""

    __slots__ = ("inputs", "states", "h0", "dropout_mask")

    def __init__(self, inputs: Any, states: list[Any], h0: list[Any], dropout_mask: Any) -> None:
        self.inputs = inputs  # (T*B, D_in) the layer's input after dropout
        self.states = states  # per direction (T, B, H)
        self.h0 = h0  # per direction (B, H)
        self.dropout_mask = dropout_mask  # (T*B, D_in) scaled keep-mask, or None


class RNN(Module):
    """Multi-layer Elman RNN, ``torch.nn.RNN``-compatible.

    Args:
        input_size: features per step, D.
        hidden_size: hidden units per direction, H.
        num_layers: stacked layers.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        bias: whether the layers have ``bias_ih``/``bias_hh``.
        batch_first: input and output are (B, T, ·) instead of (T, B, ·).
        dropout: dropout probability on the input of every layer but the first, in training.
        bidirectional: add a reverse direction per layer (output features 2H).
        dtype: ``"float32"`` or ``"float64"``.
        backend: ``"numpy"``, ``"cupy"``, ``"auto"``, a Backend, or None for the current one.
        seed: seed of the initialisation (U(-1/sqrt(H), 1/sqrt(H)), as torch) and of the
            dropout masks (two independent streams; :meth:`seed_dropout` restarts the second).

    Parameters (``params``, ``state_dict()``, and ``grads`` after ``backward``), for layer k
    and suffix ``""`` or ``"_reverse"``: ``weight_ih_l{k}`` (H, D_k) with D_0 = D and
    D_k = H * directions; ``weight_hh_l{k}`` (H, H); ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H,).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: Any = "float32",
        backend: str | Backend | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(dtype=dtype, backend=backend)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity: expected one of {NONLINEARITIES}, got {nonlinearity!r}"
            )
        self.nonlinearity = nonlinearity
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)
        if self.dropout > 0 and self.num_layers == 1:
            # As torch: dropout acts between layers, so a single layer never applies it.
            warn_at_caller(
                f"dropout={self.dropout} has no effect with num_layers=1: dropout applies to "
                "the input of every layer but the first",
                UserWarning,
            )
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.num_directions = 2 if self.bidirectional else 1

        seed = check_seed("seed", seed)
        host_rng = np.random.default_rng(stream_seed(seed, "RNN.weights"))
        bound = 1.0 / math.sqrt(self.hidden_size)
        call = (
            f"RNN(input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional})"
        )
        self._draw_uniform_params(self._parameter_shapes(), host_rng, bound, call)
        self.seed_dropout(seed)
        self._cache: dict[str, Any] | None = None

    def seed_dropout(self, seed: int | None) -> None:
        """Restart the dropout masks' random stream from ``seed`` (None: fresh entropy).

        The stream lives on the layer's device and is not part of :meth:`state_dict` (as in
        torch, whose generator state is saved apart from the model's). A run that reseeds it
        at the start of each epoch, e.g. ``seed_dropout(seed * 1000 + epoch)``, draws the
        same masks whether or not it was stopped and resumed in between."""
        seed = check_seed("seed", seed)
        self._dropout_rng = self.backend.xp.random.default_rng(stream_seed(seed, "RNN.dropout"))

    # -- structure --------------------------------------------------------------------------
    def _suffix(self, layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def _parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        hidden = self.hidden_size
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else hidden * self.num_directions
            for direction in range(self.num_directions):
                suffix = self._suffix(layer, direction)
                shapes.append((f"weight_ih{suffix}", (hidden, layer_input)))
                shapes.append((f"weight_hh{suffix}", (hidden, hidden)))
                if self.bias:
                    shapes.append((f"bias_ih{suffix}", (hidden,)))
                    shapes.append((f"bias_hh{suffix}", (hidden,)))
        return shapes

    def extra_repr(self) -> str:
        """The constructor's arguments, as ``repr`` shows them."""
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"nonlinearity={self.nonlinearity!r}, bias={self.bias}, "
            f"batch_first={self.batch_first}, dropout={self.dropout}, "
            f"bidirectional={self.bidirectional}, dtype={self.dtype.name}, "
            f"backend={self.backend.name!r}"
        )

    def __repr__(self) -> str:
        return f"RNN({self.extra_repr()})"

    # -- argument checks --------------------------------------------------------------------
    def _check_sequence(self, x: Any) -> tuple[Any, bool]:
        """Validate x; return it time-major (T, B, D) and whether it was unbatched."""
        x = self._check_input("x", x)
        if x.ndim not in (2, 3):
            layout = "(B, T, D)" if self.batch_first else "(T, B, D)"
            raise ValueError(
                f"x: expected a 3-d array {layout} or an unbatched 2-d array (T, D), "
                f"got {x.ndim}-d {tuple(x.shape)}"
            )
        unbatched = x.ndim == 2
        given = tuple(x.shape)  # as the caller passed it, before the time-major view
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        steps, batch, features = x.shape
        if features != self.input_size:
            raise ValueError(
                f"x: expected {self.input_size} features (input_size) in the last axis, "
                f"got {features} (shape {given})"
            )
        if steps == 0:
            raise ValueError("x: the sequence is empty (0 time steps)")
        if batch == 0:
            raise ValueError("x: the batch is empty (0 sequences)")
        return x, unbatched

    def _check_h0(self, h0: Any, batch: int, unbatched: bool, name: str = "h0") -> list[Any]:
        states = self.num_layers * self.num_directions
        xp = self.backend.xp
        if h0 is None:
            zeros = xp.zeros((batch, self.hidden_size), dtype=self.dtype)
            return [zeros] * states
        h0 = self._check_input(name, h0)
        expected = (states, self.hidden_size) if unbatched else (states, batch, self.hidden_size)
        if tuple(h0.shape) != expected:
            raise ValueError(
                f"{name}: expected shape {expected} (num_layers * num_directions, "
                f"{'' if unbatched else 'batch, '}hidden_size), got {tuple(h0.shape)}"
            )
        if unbatched:
            h0 = h0[:, None, :]
        return [xp.ascontiguousarray(h0[i]) for i in range(states)]

    def _check_lengths(self, lengths: Any, steps: int, batch: int, unbatched: bool) -> Any:
        """Host validation (lengths live on the host, as torch's do), one copy to the device."""
        if lengths is None:
            return None
        if unbatched:
            raise ValueError("lengths: not supported for unbatched (T, D) input; add a batch axis")
        if backend_for(lengths).name == "cupy":
            lengths = lengths.get()  # a device array: one explicit copy to validate it
        try:
            host = np.asarray(lengths)
        except Exception:
            raise TypeError(
                f"lengths: expected an integer array of shape ({batch},), "
                f"got {describe_array(lengths)}"
            ) from None
        if host.dtype.kind not in "iu":
            raise TypeError(f"lengths: expected integers, got dtype {host.dtype}")
        if host.shape != (batch,):
            raise ValueError(
                f"lengths: expected shape ({batch},) (one per sequence), got {host.shape}"
            )
        if host.size and (host.min() < 0 or host.max() > steps):
            raise ValueError(
                f"lengths: expected values in [0, {steps}] (the number of steps), "
                f"got min {host.min()} and max {host.max()}"
            )
        return self.backend.asarray(host.astype(np.int32), dtype=np.int32)

    # -- forward ----------------------------------------------------------------------------
    def __call__(
        self, x: Array, h0: Array | None = None, lengths: Any = None, *, hx: Array | None = None
    ) -> tuple[Array, Array]:
        """``forward(x, h0, lengths)``: ``(out, h_n)``, see :meth:`forward`."""
        return self.forward(x, h0, lengths, hx=hx)

    def forward(
        self, x: Array, h0: Array | None = None, lengths: Any = None, *, hx: Array | None = None
    ) -> tuple[Array, Array]:
        """Run the network over a sequence.

        Args:
            x: (T, B, D), (B, T, D) with ``batch_first``, or unbatched (T, D); an array of
                this layer's backend and exactly its dtype (no implicit casts or transfers).
            h0: (num_layers * directions, B, H), or (num_layers * directions, H) unbatched;
                default zeros. Same backend and dtype as ``x``.
            lengths: optional (B,) integers in [0, T] (host array or list): row b's steps
                ``t >= lengths[b]`` are padding. A row of length 0 has no step in this call
                (a sequence that ended in an earlier chunk): its state passes through,
                ``h_n = h0``, and its output is zero.
            hx: torch's name for ``h0``, by keyword; give one of the two.

        Returns:
            Arrays of the layer's backend and dtype.
            ``out`` (T, B, H * directions) (or batch-first / unbatched like ``x``), the last
            layer's states, zero at padding steps; ``h_n`` shaped like ``h0``, the state of
            every layer and direction after each row's last valid step.

        ``backward`` reads what this call saw and made, without copies: ``x`` and ``h0`` (when
        contiguous) and, for one direction without ``lengths``, ``out`` itself. Modifying
        them in place before ``backward`` changes the gradients; copy first (``out.copy()``).
        """
        xp = self.backend.xp
        x, unbatched = self._check_sequence(x)
        steps, batch, _ = x.shape
        if hx is not None:
            if h0 is not None:
                raise TypeError(
                    "hx: the initial state was given twice, as h0 and as hx (torch's name for "
                    "it); give one"
                )
            h0_list = self._check_h0(hx, batch, unbatched, "hx")
        else:
            h0_list = self._check_h0(h0, batch, unbatched)
        lengths_dev = self._check_lengths(lengths, steps, batch, unbatched)
        valid = None
        layer_input = xp.ascontiguousarray(x).reshape(steps * batch, -1)
        if lengths_dev is not None:
            valid = (xp.arange(steps, dtype=np.int32)[:, None] < lengths_dev[None, :])[
                :, :, None
            ]  # (T, B, 1) bool
            # Selected, not multiplied: a NaN in a padding step of x would otherwise reach
            # dW_ih through 0 * NaN, though nothing else reads padding.
            layer_input = xp.where(valid.reshape(steps * batch, 1), layer_input, self.dtype.type(0))

        hidden = self.hidden_size
        caches: list[_LayerCache] = []
        h_n = []
        layer_output: Array = None  # every layer (at least one) sets it
        for layer in range(self.num_layers):
            dropout_mask = None
            if layer > 0 and self.training and self.dropout > 0.0:
                keep = 1.0 - self.dropout
                dropout_mask = (
                    self._dropout_rng.random(layer_input.shape, dtype=self.dtype) < keep
                ).astype(self.dtype) * self.dtype.type(1.0 / keep)
                layer_input = layer_input * dropout_mask
            direction_states = []
            direction_h0 = []
            for direction in range(self.num_directions):
                suffix = self._suffix(layer, direction)
                bias = None
                if self.bias:
                    bias = self.params[f"bias_ih{suffix}"] + self.params[f"bias_hh{suffix}"]
                states = self.backend.input_projection(
                    layer_input, self.params[f"weight_ih{suffix}"], bias
                ).reshape(steps, batch, hidden)
                initial = h0_list[layer * self.num_directions + direction]
                self.backend.recurrence_forward(
                    states,
                    self.params[f"weight_hh{suffix}"],
                    initial,
                    lengths_dev,
                    self.nonlinearity,
                    direction == 1,
                )
                direction_states.append(states)
                direction_h0.append(initial)
                # Padding carries the state, so the last state sits at the end of the walk.
                h_n.append(states[0] if direction == 1 else states[steps - 1])
            caches.append(_LayerCache(layer_input, direction_states, direction_h0, dropout_mask))
            if self.num_directions == 1:
                layer_output = direction_states[0]
            else:
                layer_output = xp.concatenate(direction_states, axis=2)
            if valid is not None:
                # a new array (states stay intact), +0.0 at padding as torch gives
                layer_output = xp.where(valid, layer_output, self.dtype.type(0))
            layer_input = layer_output.reshape(steps * batch, -1)

        out = layer_output
        h_n_array = xp.stack(h_n)
        self._cache = {
            "layers": caches,
            "lengths": lengths_dev,
            "shape": (steps, batch),
            "unbatched": unbatched,
        }
        if unbatched:
            return out[:, 0, :], h_n_array[:, 0, :]
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, h_n_array

    # -- backward ---------------------------------------------------------------------------
    def backward(self, dout: Array | None = None, dh_n: Array | None = None) -> tuple[Array, Array]:
        """Exact backpropagation through time for the last forward pass.

        Args:
            dout: gradient of the loss w.r.t. ``out`` (same shape as ``out``), or None.
            dh_n: gradient w.r.t. ``h_n`` (same shape as ``h_n``), or None.
            Both of the layer's backend and dtype; gradients at padding steps are ignored.

        Returns:
            ``(dx, dh0)``: ``dx`` shaped like ``x``, ``dh0`` like ``h_n`` ((num_layers *
            directions, B, H), or (num_layers * directions, H) unbatched; also where ``h0``
            was None). Parameter gradients go to ``self.grads`` (same names as ``params``),
            replacing earlier ones.
        """
        if self._cache is None:
            raise BackwardBeforeForwardError(
                "backward: no forward pass to differentiate; call forward (rnn(x)) first"
            )
        if dout is None and dh_n is None:
            raise ValueError("backward: dout and dh_n are both None; pass at least one")
        xp = self.backend.xp
        cache = self._cache
        steps, batch = cache["shape"]
        unbatched = cache["unbatched"]
        lengths_dev = cache["lengths"]
        hidden = self.hidden_size
        dirs = self.num_directions
        out_features = hidden * dirs
        total_states = self.num_layers * dirs

        grad_out: Array = None  # None: no gradient reaches out; each layer's loop sets it
        expected: tuple[int, ...]
        if dout is not None:
            dout = self._check_input("dout", dout)
            if unbatched:
                expected = (steps, out_features)
            elif self.batch_first:
                expected = (batch, steps, out_features)
            else:
                expected = (steps, batch, out_features)
            if tuple(dout.shape) != expected:
                raise ValueError(
                    f"dout: expected the shape of out {expected}, got {tuple(dout.shape)}"
                )
            if unbatched:
                grad_out = dout[:, None, :]
            elif self.batch_first:
                grad_out = dout.transpose(1, 0, 2)
            else:
                grad_out = dout
        grad_h_n = None
        if dh_n is not None:
            dh_n = self._check_input("dh_n", dh_n)
            expected = (total_states, hidden) if unbatched else (total_states, batch, hidden)
            if tuple(dh_n.shape) != expected:
                raise ValueError(
                    f"dh_n: expected the shape of h_n {expected}, got {tuple(dh_n.shape)}"
                )
            grad_h_n = dh_n[:, None, :] if unbatched else dh_n

        grads: dict[str, Any] = {}
        grad_h0: list[Any] = [None] * total_states
        for layer in range(self.num_layers - 1, -1, -1):
            layer_cache = cache["layers"][layer]
            grad_input: Array = None  # every direction (at least one) adds to it
            for direction in range(dirs):
                suffix = self._suffix(layer, direction)
                index = layer * dirs + direction
                states = layer_cache.states[direction]
                initial = layer_cache.h0[direction]
                w_hh = self.params[f"weight_hh{suffix}"]
                w_ih = self.params[f"weight_ih{suffix}"]
                grad_states = None
                if grad_out is not None:
                    columns = slice(direction * hidden, (direction + 1) * hidden)
                    grad_states = xp.ascontiguousarray(grad_out[:, :, columns])
                grad_last = None
                if grad_h_n is not None:
                    grad_last = xp.ascontiguousarray(grad_h_n[index])
                grad_z, grad_h0[index] = self.backend.recurrence_backward(
                    states,
                    w_hh,
                    initial,
                    grad_states,
                    grad_last,
                    lengths_dev,
                    self.nonlinearity,
                    direction == 1,
                )
                # dW_hh = sum_t grad_z_t^T h_{t-1}, split so that h_{t-1} needs no copy:
                # the step that reads h0 is the first of the walk (t=0 forward, T-1 reverse).
                if direction == 0:
                    first, rest_z, rest_h = 0, grad_z[1:], states[:-1]
                else:
                    first, rest_z, rest_h = steps - 1, grad_z[:-1], states[1:]
                matmul = self.backend.matmul
                grad_w_hh = matmul(grad_z[first].T, initial)
                if steps > 1:
                    grad_w_hh += matmul(rest_z.reshape(-1, hidden).T, rest_h.reshape(-1, hidden))
                grad_z_2d = grad_z.reshape(steps * batch, hidden)
                grads[f"weight_ih{suffix}"] = matmul(grad_z_2d.T, layer_cache.inputs)
                grads[f"weight_hh{suffix}"] = grad_w_hh
                if self.bias:
                    grad_bias = grad_z_2d.sum(axis=0)
                    grads[f"bias_ih{suffix}"] = grad_bias
                    grads[f"bias_hh{suffix}"] = grad_bias.copy()
                contribution = matmul(grad_z_2d, w_ih)
                grad_input = contribution if grad_input is None else grad_input + contribution
            if layer_cache.dropout_mask is not None:
                grad_input *= layer_cache.dropout_mask
            grad_out = grad_input.reshape(steps, batch, -1)

        # Parameter order as in params, for readability of grads.
        self.grads = {name: grads[name] for name in self.params}
        dx = grad_out
        dh0 = xp.stack(grad_h0)
        if unbatched:
            return dx[:, 0, :], dh0[:, 0, :]
        if self.batch_first:
            dx = xp.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, dh0
