"""The NumPy backend: the reference implementation, float32 and float64, on the host.

The step loop is the only sequential part. Each step does one BLAS GEMM into a preallocated
buffer and applies the bias-free remainder in place, so a forward pass allocates nothing per
step; the layers do the large all-steps GEMMs themselves.

In float32, when a C compiler is available, ``kernels/host_rnn.c``
(:mod:`rnncu.backend.host_kernels`) takes over one of two ways:

* **small steps** (B * H^2 at most 2^21 multiply-adds; with the AVX-512 micro-kernel, which
  does twice the work per instruction, 2^24 at batches of at most 32 rows) run the whole
  recurrence as one compiled call: W_hh packed once, the element-wise part after each
  product. A BLAS call costs about what such a product is worth;
* **larger steps** keep the step loop, whose product a multi-threaded BLAS does faster than
  one thread can (measured on two cores; more cores favour it more), and run its
  element-wise part (tanh and its gradient) as compiled loops: NumPy's float32 tanh is
  scalar without AVX-512. So does a call whose packed copy of W_hh does not fit in memory
  (its product then reads W_hh^T through a view, where a contiguous copy would not fit
  either).

Otherwise, and always in float64 (the reference), the step loop runs NumPy's functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnncu.backend import host_kernels
from rnncu.backend.base import Backend, is_cupy_array
from rnncu.backend.host_kernels import HostKernels


class NumpyBackend(Backend):
    """The host backend and the reference: NumPy arrays, BLAS for the products, and (in
    float32, for small steps) the whole recurrence in one compiled call
    (``kernels/host_rnn.c``)."""

    name = "numpy"
    xp = np

    def owns(self, array: Any) -> bool:
        return isinstance(array, np.ndarray) and not is_cupy_array(array)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "numpy": np.__version__}
        try:
            from threadpoolctl import threadpool_info

            info["blas"] = [
                f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
                for p in threadpool_info()
                if p.get("user_api") == "blas"
            ]
        except ImportError:
            pass
        return info

    def input_projection(
        self, inputs: np.ndarray, w_ih: np.ndarray, bias: np.ndarray | None
    ) -> np.ndarray:
        # OpenBLAS is slow for GEMMs with a tiny inner dimension (pixel sequences, D = 1)
        # and with a transposed-view operand; an outer product and a contiguous W_ih^T avoid
        # both.
        out: np.ndarray
        if inputs.shape[1] == 1:
            out = np.multiply(inputs, w_ih[:, 0])
        else:
            out = self.matmul(inputs, np.ascontiguousarray(w_ih.T))
        if bias is not None:
            out += bias
        return out

    def recurrence_forward(
        self,
        states: np.ndarray,
        w_hh: np.ndarray,
        h0: np.ndarray,
        lengths: np.ndarray | None,
        nonlinearity: str,
        reverse: bool,
    ) -> None:
        steps = states.shape[0]
        if steps == 0:
            return
        whole = _whole_recurrence(states, w_hh, h0)
        if whole is not None:
            try:
                whole.recurrence_forward(
                    states,
                    np.ascontiguousarray(w_hh),
                    np.ascontiguousarray(h0),
                    _int64_lengths(lengths),
                    nonlinearity == "relu",
                    reverse,
                )
                return
            except MemoryError:
                pass  # its packed copy of W_hh did not fit (nothing written): the step loop
        try:
            w_hh_t = np.ascontiguousarray(w_hh.T)  # BLAS is faster on it than on a view
        except MemoryError:
            w_hh_t = w_hh.T  # where the copy does not fit: slower, but it runs
        recurrent = np.empty_like(h0)
        padding = _padding_masks(lengths, steps)
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        host = _host_tanh(nonlinearity, states, recurrent)
        if host is not None:
            # addresses computed once: the per-step call costs about a microsecond
            base, stride, count = states.ctypes.data, states.strides[0], states[0].size
            recurrent_address = recurrent.ctypes.data
        h_prev = h0
        for t in order:
            h_t = states[t]
            np.matmul(h_prev, w_hh_t, out=recurrent)
            if host is not None:
                host.add_tanh_f32(base + t * stride, recurrent_address, count)
            else:
                h_t += recurrent
                if nonlinearity == "tanh":
                    np.tanh(h_t, out=h_t)
                else:
                    np.maximum(h_t, 0, out=h_t)
            if padding is not None and padding.has_padding[t]:
                np.copyto(h_t, h_prev, where=padding.masks[t])
            h_prev = h_t

    def recurrence_backward(
        self,
        states: np.ndarray,
        w_hh: np.ndarray,
        h0: np.ndarray,
        grad_states: np.ndarray | None,
        grad_h_last: np.ndarray | None,
        lengths: np.ndarray | None,
        nonlinearity: str,
        reverse: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        steps = states.shape[0]
        grad_h = (
            np.zeros(h0.shape, h0.dtype)
            if grad_h_last is None
            else np.array(grad_h_last, order="C", copy=True)
        )
        whole = _whole_recurrence(states, w_hh, h0, grad_h, grad_states)
        if whole is not None and steps > 0:
            grad_z = np.empty_like(states)
            try:
                whole.recurrence_backward(
                    grad_z,
                    grad_h,
                    None if grad_states is None else np.ascontiguousarray(grad_states),
                    states,
                    np.ascontiguousarray(w_hh),
                    _int64_lengths(lengths),
                    nonlinearity == "relu",
                    reverse,
                )
                return grad_z, grad_h
            except MemoryError:
                del grad_z  # as in the forward: grad_h untouched, the step loop takes over
        padding = _padding_masks(lengths, steps)
        next_grad_h = np.empty_like(h0)
        host = _host_tanh(nonlinearity, states, grad_h, grad_states)
        if host is not None:
            # dz_t = (grad_states_t + dh_t) * (1 - h_t^2) in one compiled pass per step, the
            # same operations in the same order as below: the same bits
            grad_z = np.empty_like(states)
            stride, count = states.strides[0], states[0].size
            z_base, h_base = grad_z.ctypes.data, states.ctypes.data
            g_base = 0 if grad_states is None else grad_states.ctypes.data
            dh_address, next_dh_address = grad_h.ctypes.data, next_grad_h.ctypes.data
        elif nonlinearity == "tanh":
            # grad_z starts as act'(h) for all steps (one vectorised pass), and step t
            # overwrites its slice with dz_t = (grad_states_t + dh_t) * act'(h_t) once it has
            # been read: one (T, B, H) buffer, allocated once, serves as both.
            grad_z = np.multiply(states, states)
            np.subtract(1, grad_z, out=grad_z)
        else:
            grad_z = np.greater(states, 0).astype(states.dtype)
        incoming = np.empty_like(h0)
        # reverse-mode runs the steps in the opposite order of the forward pass
        order = range(steps) if reverse else range(steps - 1, -1, -1)
        for t in order:
            dz = grad_z[t]
            if host is not None:
                offset = t * stride
                host.tanh_grad_f32(
                    z_base + offset,
                    g_base + offset if g_base else None,
                    dh_address,
                    h_base + offset,
                    count,
                )
            elif grad_states is not None:
                np.add(grad_states[t], grad_h, out=incoming)
                dz *= incoming
            else:
                dz *= grad_h
            padded = padding.masks[t] if padding is not None and padding.has_padding[t] else None
            if padded is not None:
                # a select, not a product: the gradient arriving at a padded (constant)
                # output is ignored even when it is not finite
                np.copyto(dz, 0, where=padded)
            np.matmul(dz, w_hh, out=next_grad_h)
            if padded is not None:
                # A padding row has dz = 0, so its product row is exactly 0: dh_t passes
                # through unchanged.
                np.copyto(next_grad_h, grad_h, where=padded)
            grad_h, next_grad_h = next_grad_h, grad_h
            if host is not None:
                dh_address, next_dh_address = next_dh_address, dh_address
        return grad_z, grad_h


# Which steps run the whole compiled recurrence, by the micro-kernel's vector width
# (HostKernels.vector_bits): (the largest B * H^2, in multiply-adds per step, at any batch;
# the largest at batches of at most SMALL_BATCH rows, where BLAS's product is least
# efficient). Measured on the project's 2-core machines, the recurrence's forward +
# backward, float32, the step loop's time over the whole recurrence's:
# - AVX2 (AMD EPYC Zen 3, layer forward + backward, two runs): at 2^19 rowdigits 1.08 and 1.02,
#   pixel MNIST (T 784, B 32, H 128) 1.58 and 1.49, T 200 / B 8 / H 256 1.60 and 1.47; at 2^20
#   (B 64, H 128) 1.14 and 1.20; at 2^21 pixeldigits 1.12 and 1.12; at 2^22 B 16 / H 512 1.14
#   and 1.06 but rowmnist (B 256, H 128) 0.93 and 0.90; medium (2^24) 0.87 and 0.86.
# - AVX-512 (AMD EPYC Zen 5, the recurrence alone, BLAS idle / right after a BLAS product,
#   benchmarks/RESULTS.md), against OpenBLAS's own (AVX-512) kernels: rowdigits 1.15 / 1.31,
#   pixel MNIST 1.33 / 1.33, T 200 / B 8 / H 256 1.50 / 1.41, T 40 / B 16 / H 1024 (2^24)
#   2.00 / 1.89, pixeldigits (2^21) 1.04 / 0.85, rowmnist (B 256, 2^22) 1.04 / 0.80, medium
#   (B 64, 2^24) 0.87 / 0.88, B 64 / H 1024 0.97 / 0.95, B 128 / H 512 0.89 / 0.93, B 256 /
#   H 1024 0.82 / 0.72. So at batches above 32 the two tie at 2^21 and 2^22 (pixeldigits,
#   rowmnist: the step loop ahead right after a BLAS product, as inside a layer, behind with
#   BLAS idle) and the step loop wins from 2^24; 2^21, the AVX2 build's bound, is kept. Against
#   OpenBLAS's AVX2 kernels (the whole recurrence won on all ten shapes there, 1.12 to 2.11)
#   the step loop is slower than it need be: that is a setting of the environment
#   (OPENBLAS_CORETYPE), which `rnncu info` shows.
# - AVX-512 on Zen 4 (AMD EPYC, which runs a 512-bit operation as two halves; the recurrence
#   alone, two runs, OpenBLAS's own kernels): at 2^19 1.05 to 1.41, T 40 / B 16 / H 1024
#   (2^24) 1.02 to 1.18, pixeldigits (2^21) 0.86 to 1.03 in four runs (in a layer, bounds of
#   2^21 and 2^20 timed alike), rowmnist 0.82 to 1.13, from 2^24 at B >= 64 0.67 to 0.82. The
#   same rule; there the AVX2 build runs the whole recurrence as fast as the AVX-512 one.
# Only two cores were measured: BLAS's threads scale with the cores where one thread does not.
SMALL_BATCH = 32
_WHOLE_LIMITS: dict[int, tuple[int, int]] = {
    512: (1 << 21, 1 << 24),
    256: (1 << 21, 1 << 21),
    0: (1 << 21, 1 << 21),
}


def _whole_recurrence(states: np.ndarray, *operands: np.ndarray | None) -> HostKernels | None:
    """The whole compiled recurrence, when it runs: small steps (``_WHOLE_LIMITS``), every
    array float32 and ``states`` C-contiguous (the layer allocates it so; the other operands
    are made contiguous). None means the step loop runs."""
    _, batch, hidden = states.shape
    if not states.flags.c_contiguous:
        return None
    for array in (states, *operands):
        if array is not None and array.dtype != np.float32:
            return None
    kernels = host_kernels.load()
    if kernels is None:
        return None
    any_batch, small_batch = _WHOLE_LIMITS[kernels.vector_bits]
    largest = small_batch if batch <= SMALL_BATCH else any_batch
    return kernels if batch * hidden * hidden <= largest else None


def _int64_lengths(lengths: np.ndarray | None) -> np.ndarray | None:
    return None if lengths is None else np.ascontiguousarray(lengths, dtype=np.int64)


def _host_tanh(nonlinearity: str, *arrays: np.ndarray | None) -> HostKernels | None:
    """The compiled float32 tanh loops, when they apply: tanh, and every array float32 and
    C-contiguous (the loops take raw addresses). None means NumPy's functions run."""
    if nonlinearity != "tanh":
        return None
    for array in arrays:
        if array is not None and (array.dtype != np.float32 or not array.flags.c_contiguous):
            return None
    return host_kernels.load()


class _PaddingMasks:
    """Per-step padding masks of a batch: ``masks[t]`` (B, 1) is True where row b is past
    its length at step t; ``has_padding[t]`` says whether step t has any such row, so that
    the steps before the shortest length cost nothing."""

    __slots__ = ("masks", "has_padding")

    def __init__(self, lengths: np.ndarray, steps: int) -> None:
        self.masks: np.ndarray = (np.arange(steps)[:, None] >= lengths[None, :])[:, :, None]
        self.has_padding: list[bool] = np.any(self.masks, axis=(1, 2)).tolist()


def _padding_masks(lengths: np.ndarray | None, steps: int) -> _PaddingMasks | None:
    return None if lengths is None else _PaddingMasks(lengths, steps)
