"""The backend interface: the array module plus the few fused operations that differ per device.

Layers are written once against this interface. Everything that is a large dense operation
(the input projection of all steps, the weight gradients over all steps, the input gradient)
is done by the layers through :meth:`Backend.matmul` (``a @ b``); besides it, only the sequential
part of the recurrence, which is where a hand-written kernel pays off, goes through the backend.

Shapes (T steps, B batch rows, H hidden units):

* ``states``  (T, B, H), C-contiguous. On entry to :meth:`Backend.recurrence_forward` it holds
  the pre-activation input part ``Z_t = x_t W_ih^T + b_ih + b_hh``; on return, the hidden
  states ``h_t``. Overwriting in place means the forward pass allocates nothing per step.
* ``w_hh``    (H, H), the recurrent weight as stored by the layer (torch layout: ``W_hh``,
  used as ``h W_hh^T``).
* ``h0``      (B, H), the initial state.
* ``lengths`` None, or an int32 array (B,) on this backend with ``0 <= lengths[b] <= T``. A
  step ``t`` with ``t >= lengths[b]`` is *padding*: the state of row ``b`` is carried over
  unchanged (a row of length 0 carries ``h0`` through every step). For ``reverse=True`` the
  steps run from ``T-1`` down to ``0``, so padding steps are met first and carry ``h0`` until
  the row's last valid step, which is exactly where torch's packed reverse direction starts.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any, TypeAlias

import numpy

#: A ``numpy.ndarray`` or a ``cupy.ndarray``, on the backend of the call (CuPy's type cannot
#: be named without importing CuPy, which the NumPy path never does).
Array: TypeAlias = Any

NONLINEARITIES = ("tanh", "relu")
#: ``highest``: float32 products in float32; ``high``: TF32 tensor cores allowed (torch's
#: names, ``torch.set_float32_matmul_precision``)
MATMUL_PRECISIONS = ("highest", "high")
MATMUL_PRECISION_ENV = "RNNCU_MATMUL_PRECISION"
_SWITCH = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


def check_switch(value: Any, source: str) -> bool:
    """An on/off setting: a bool, or ``on``/``1``/``true`` and ``off``/``0``/``false`` (any
    case), as environment variables spell them; anything else is a ValueError naming
    ``source``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _SWITCH:
        return _SWITCH[value.strip().lower()]
    raise ValueError(f"{source}: expected 'on' or 'off' (or a bool), got {value!r}")


def check_matmul_precision(value: Any, source: str) -> str:
    """``"highest"`` or ``"high"`` (any case); anything else is a ValueError naming ``source``."""
    if not isinstance(value, str) or value.strip().lower() not in MATMUL_PRECISIONS:
        raise ValueError(
            f"{source}: expected one of {', '.join(repr(p) for p in MATMUL_PRECISIONS)}, "
            f"got {value!r}"
        )
    return value.strip().lower()


def _may_overflow(source: numpy.dtype, wanted: numpy.dtype) -> bool:
    """Whether converting finite ``source`` values to ``wanted`` can give infinities: a
    narrower float (float64 -> float32), or integers into float16 (65520 and up)."""
    if wanted.kind != "f":
        return False
    if source.kind == "f":
        return source.itemsize > wanted.itemsize
    return source.kind in "iu" and wanted.itemsize == 2 and source.itemsize >= 2


class Backend(ABC):
    """One device: its array module and the fused recurrence kernels."""

    #: registry name: ``"numpy"`` or ``"cupy"``
    name: str
    #: the array module (``numpy`` or ``cupy``)
    xp: ModuleType
    _matmul_precision: str | None = None

    @property
    def matmul_precision(self) -> str | None:
        """The precision of the float32 products set on this backend: ``"highest"`` (float32
        throughout) or ``"high"`` (on the CuPy backend, on a GPU of compute capability 8.0 or
        later, the products over all steps (:meth:`matmul`) may have cuBLAS round their
        operands to TF32, 10 bits of mantissa, and run them on the tensor cores, and the
        step path's kernels take each step's product there in TF32 too; elsewhere, as in
        torch, it changes nothing). None (the default): the environment variable
        ``RNNCU_MATMUL_PRECISION`` decides at every call, else ``"highest"``."""
        return self._matmul_precision

    @matmul_precision.setter
    def matmul_precision(self, value: str | None) -> None:
        self._matmul_precision = (
            None if value is None else check_matmul_precision(value, "matmul_precision")
        )

    def matmul_precision_in_force(self) -> str:
        """The setting in force: the ``matmul_precision`` attribute, else
        ``RNNCU_MATMUL_PRECISION`` (set but empty counts as unset), else ``"highest"``."""
        if self._matmul_precision is not None:
            return self._matmul_precision
        env = os.environ.get(MATMUL_PRECISION_ENV, "").strip() or "highest"
        return check_matmul_precision(env, f"environment variable {MATMUL_PRECISION_ENV}")

    @abstractmethod
    def owns(self, array: Any) -> bool:
        """True when ``array`` is an array of this backend's module (no conversion needed)."""

    def asarray(self, array: Any, dtype: Any = None) -> Array:
        """Convert a host (NumPy) array, a NumPy scalar or a nested sequence of numbers to this
        backend (on the NumPy backend, a CuPy array too: copied to the host), in ``dtype``
        (None: the input's). Explicit, never called implicitly on layer inputs: mixing devices
        in a call is an error. What is not real numbers or booleans (None, strings, objects,
        complex values, a ragged list) is a TypeError naming what came. A host array whose cast
        to a narrower float would make finite values infinite (1e300 to float32) is a
        ValueError; a device array is cast as CuPy casts it (no synchronisation)."""
        if dtype is not None:
            try:
                wanted = numpy.dtype(dtype)
            except TypeError as exc:
                raise TypeError(f"asarray: dtype: {exc}") from None
            if wanted.kind not in "biuf":
                raise TypeError(f"asarray: dtype: expected a real or boolean dtype, got {wanted}")
        if is_cupy_array(array) and self.name != "cupy":
            array = array.get()
        source = array
        if self.name == "cupy" and hasattr(array, "__cuda_array_interface__"):
            # already on a device (a torch CUDA tensor, Numba's arrays): CuPy takes it there
            array = self.xp.asarray(array)
        elif not is_array(array):
            # lists, Python scalars, torch tensors, None, strings: read on the host first, so
            # that their own type is checked (with a dtype, None became NaN and "1.5" 1.5)
            try:
                array = numpy.asarray(array)
            except (ValueError, TypeError, RuntimeError) as exc:
                # NumPy's "inhomogeneous shape", torch's "requires grad", a dtype NumPy lacks
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TypeError(
                    f"asarray: cannot convert {type_name(source)} to an array ({reason})"
                ) from None
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"asarray: expected real numbers or booleans, got {type_name(source)} of dtype "
                f"{array.dtype}"
            )
        if dtype is None or is_cupy_array(array) or not _may_overflow(array.dtype, wanted):
            # a device array is cast as CuPy casts it: counting infinities there would cost
            # a synchronisation in what may be a loop
            return self.xp.asarray(array, dtype=dtype)
        # a host array is cast on the host, where the check costs no device work (and the
        # narrower copy is the one uploaded)
        plain = numpy.asarray(array)  # a masked array's hidden values count too
        with numpy.errstate(over="ignore"):  # counted below, and refused with the figures
            cast = plain.astype(wanted)
        made = int(numpy.count_nonzero(~numpy.isfinite(cast)))
        if made:
            finite = numpy.isfinite(plain)
            given = plain.size - int(numpy.count_nonzero(finite))
            if made > given:
                given_values = plain[finite]
                if given_values.dtype.kind in "iu":  # abs of int64's minimum overflows
                    given_values = given_values.astype(numpy.float64)
                largest = numpy.abs(given_values).max()
                if largest.dtype.itemsize > 8:  # a longdouble beyond any Python float
                    shown = numpy.format_float_scientific(largest, precision=6, trim="-")
                else:
                    shown = f"{float(largest):.7g}"
                raise ValueError(
                    f"asarray: {made - given} value(s) beyond {wanted}'s range (magnitudes up to "
                    f"{float(numpy.finfo(wanted).max):.7g}) would become infinite; the largest "
                    f"magnitude given is {shown}"
                )
        return self.xp.asarray(cast)

    def to_numpy(self, array: Array) -> Any:
        """A new NumPy array on the host with the contents of ``array``: a copy on every
        backend, so that writing to it never changes a layer's parameters or cached state
        (on the NumPy backend too, where ``numpy.asarray`` would return the array itself)."""
        if is_cupy_array(array):
            return numpy.asarray(array.get())  # a device array given to the host backend
        return numpy.array(array, copy=True)

    def input_projection(self, inputs: Array, w_ih: Array, bias: Array | None) -> Array:
        """``inputs W_ih^T + bias`` for all steps at once: (N, D) x (H, D) -> new (N, H).

        One GEMM (:meth:`matmul`); a backend may special-case shapes its BLAS handles badly."""
        out = self.matmul(inputs, w_ih.T)
        if bias is not None:
            out += bias
        return out

    def matmul(self, a: Array, b: Array) -> Array:
        """``a @ b`` for the layers' products over all steps (the input projection, the
        weight and input gradients, a ``Linear``'s products): the one place where
        :attr:`matmul_precision` applies to them. The recurrence's own products are the
        backend's kernels' (the CuPy backend's step kernels follow the setting too)."""
        return a @ b

    @abstractmethod
    def recurrence_forward(
        self,
        states: Array,
        w_hh: Array,
        h0: Array,
        lengths: Array | None,
        nonlinearity: str,
        reverse: bool,
    ) -> None:
        """Run ``h_t = act(Z_t + h_{t-1} W_hh^T)`` over all steps, in place in ``states``.

        ``states`` (T, B, H) holds Z on entry and the states on return (padding steps, see
        the module docstring, carry the previous state). ``h_{-1}`` is ``h0`` (B, H).
        ``w_hh``, ``h0`` and ``lengths`` must not share memory with ``states`` (a device
        backend refuses that: its kernels would race).
        """

    @abstractmethod
    def recurrence_backward(
        self,
        states: Array,
        w_hh: Array,
        h0: Array,
        grad_states: Array | None,
        grad_h_last: Array | None,
        lengths: Array | None,
        nonlinearity: str,
        reverse: bool,
    ) -> tuple[Array, Array]:
        """Backpropagate through the recurrence; return ``(grad_z, grad_h0)``.

        ``states`` are the forward states (T, B, H). ``grad_states`` (T, B, H) or None is the
        gradient arriving at each step's output from outside the recurrence; it is ignored on
        padding steps, whose output is the constant zero. ``grad_h_last`` (B, H)
        or None is the gradient of the final state (``h_{T-1}``, or ``h_0`` of the sequence
        for ``reverse``). Returns ``grad_z`` (T, B, H), the gradient of the pre-activation
        (zero on padding steps), and ``grad_h0`` (B, H). With ``g_t = grad_states_t + dh_t``:

            grad_z_t    = valid_t * g_t * act'(h_t)
            dh_{t-1}    = grad_z_t W_hh + (1 - valid_t) * dh_t

        so that the layer finishes with large GEMMs: dW_hh = sum_t grad_z_t^T h_{t-1},
        dW_ih = sum_t grad_z_t^T x_t, db = sum_t grad_z_t, dx_t = grad_z_t W_ih.
        """

    def synchronize(self) -> None:  # noqa: B027 - a no-op by default, on purpose
        """Wait for queued device work (a no-op on the host)."""

    def describe(self) -> dict[str, Any]:
        """Facts for ``rnncu info``: versions, device."""
        return {"backend": self.name}


def is_cupy_array(array: Any) -> bool:
    """Whether ``array`` is a CuPy array, by its type's module: CuPy need not be imported
    (nor importable) to tell, and the tests' emulated device arrays, which subclass
    ``numpy.ndarray``, are told apart from host arrays."""
    return type(array).__module__.split(".")[0] == "cupy"


def is_array(value: Any) -> bool:
    """A NumPy array or scalar, or a CuPy array (a torch tensor has a shape and a dtype, but
    not NumPy's)."""
    return isinstance(value, (numpy.ndarray, numpy.generic)) or is_cupy_array(value)


def type_name(value: Any) -> str:
    """``"cupy.ndarray"``, ``"torch.Tensor"``, ``"builtins.list"``: a CuPy array's bare type
    name is ``ndarray`` too."""
    return f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
