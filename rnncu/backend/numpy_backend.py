"""The NumPy backend: the reference implementation, float32 and float64, on the host.

The step loop is the only sequential part. Each step does one BLAS GEMM into a preallocated
buffer and applies the bias-free remainder in place, so a forward pass allocates nothing per
step; the layers do the large all-steps GEMMs themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnncu.backend.base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def owns(self, array: Any) -> bool:
        return isinstance(array, np.ndarray)

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
        w_hh_t = w_hh.T  # a transposed view: BLAS takes it without a copy
        recurrent = np.empty_like(h0)
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        h_prev = h0
        for t in order:
            h_t = states[t]
            np.matmul(h_prev, w_hh_t, out=recurrent)
            h_t += recurrent
            if nonlinearity == "tanh":
                np.tanh(h_t, out=h_t)
            else:
                np.maximum(h_t, 0, out=h_t)
            if lengths is not None:
                padding = t >= lengths
                if padding.any():
                    h_t[padding] = h_prev[padding]
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
        grad_z = np.empty_like(states)
        grad_h = np.zeros_like(h0) if grad_h_last is None else grad_h_last.copy()
        # reverse-mode runs the steps in the opposite order of the forward pass
        order = range(steps) if reverse else range(steps - 1, -1, -1)
        for t in order:
            dz = grad_z[t]
            if grad_states is not None:
                np.add(grad_states[t], grad_h, out=dz)
            else:
                dz[...] = grad_h
            h_t = states[t]
            if nonlinearity == "tanh":
                dz *= 1 - h_t * h_t
            else:
                dz *= h_t > 0
            if lengths is not None:
                padding = t >= lengths
                if padding.any():
                    dz[padding] = 0
                    carried = grad_h[padding]
                    np.matmul(dz, w_hh, out=grad_h)
                    grad_h[padding] += carried
                    continue
            np.matmul(dz, w_hh, out=grad_h)
        return grad_z, grad_h
