"""The base class of rnncu layers: named parameters, their gradients, a backend, a mode.

A module owns ``params`` (name -> array on its backend) and, after ``backward``, ``grads``
with the same names. ``backward`` overwrites ``grads``; it does not accumulate (one forward,
one backward, as in the training loop). Optimisers update ``params`` in place, so arrays keep
their identity (and device pointers) for the life of the module.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from rnncu.backend import Backend, backend_for, get_backend, type_name

SUPPORTED_DTYPES = (np.dtype("float32"), np.dtype("float64"))


class BackwardBeforeForwardError(RuntimeError, ValueError):
    """``backward`` was called with no forward pass to differentiate."""


def resolve_dtype(dtype: Any) -> np.dtype:
    """``"float32"``/``"float64"`` (or the NumPy dtypes) -> a NumPy dtype; anything else is a
    TypeError naming the argument."""
    # np.dtype(None) is float64 and np.dtype("float64") == None is True: test None first, so
    # a missing dtype is an error rather than a silent float64.
    resolved: np.dtype | None = None
    if dtype is not None:
        try:
            resolved = np.dtype(dtype)
        except TypeError:
            resolved = None
    if resolved is None or not any(resolved == supported for supported in SUPPORTED_DTYPES):
        raise TypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return resolved


def resolve_backend(backend: str | Backend | None) -> Backend:
    """None -> the current backend; a name -> that backend; a Backend -> itself."""
    if backend is None:
        return get_backend()
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        return get_backend(backend)
    raise TypeError(f"backend: expected a backend name or Backend object, got {backend!r}")


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int when it is a positive integer (NumPy's included), else an error
    naming ``name``: a TypeError for what is no integer (bools, floats such as 2.0, strings),
    a ValueError for an integer below 1, as :func:`check_number` tells them apart."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float when it is a real number within the bounds (NumPy's included;
    bools, strings and NaN refused: a TypeError for what is no number, else a ValueError),
    the message naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    number = float(value)
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        left = "(" if low_open else "["
        right = ")" if high_open or high == math.inf else "]"
        raise ValueError(
            f"{name}: expected a number in {left}{low:g}, {high:g}{right}, got {value!r}"
        )
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is a bool (NumPy's too); anything else is a TypeError naming
    ``name``: ``bool("False")`` is True, so a string must never be coerced."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_seed(name: str, value: Any) -> int | None:
    """None or a non-negative integer (a NumPy seed); anything else is an error naming
    ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected None or a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: expected None or a non-negative integer, got {value!r}")
    return int(value)


def stream_seed(seed: int | None, purpose: str) -> list[int] | None:
    """The seed of one random stream of a module, ``[seed, crc32(purpose)]`` (NumPy's and
    CuPy's ``default_rng`` both take it): the streams that one seed drives (an RNN's weights,
    its dropout masks, a Linear's weights) are then independent, instead of the same numbers
    (``RNN(seed=0)`` and ``Linear(seed=0)`` drew proportional weights). None stays None:
    fresh entropy."""
    return None if seed is None else [seed, zlib.crc32(purpose.encode())]


def check_class_labels(
    where: str, labels: Any, batch: int, num_classes: int, *, check_range: bool | None = None
) -> None:
    """Class labels (batch,) of an integer dtype (else TypeError) in [0, num_classes) (else
    ValueError), the message starting with ``where``. A float label would be truncated and a
    negative one would index from the end, both silently. The range is read by default only
    from host arrays (``check_range`` overrides): on a device it would wait for the device on
    every batch, so callers there must make an invalid label visible some other way (the
    cross-entropy makes its loss NaN)."""
    dtype = getattr(labels, "dtype", None)
    if getattr(dtype, "kind", None) not in ("i", "u"):
        got = f"dtype {dtype}" if dtype is not None else type(labels).__name__
        raise TypeError(f"{where}: expected integer class indices, got {got}")
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"{where}: expected labels of shape ({batch},), got {labels.shape}")
    if check_range is None:
        check_range = isinstance(labels, np.ndarray)
    if check_range and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{where}: expected class indices in [0, {num_classes}), got values in "
                f"[{low}, {high}]"
            )


def checked_param_value(where: str, value: Any, module: Any, param: Any) -> Any:
    """``value`` (an array of either backend, a list, a torch tensor) as an array of
    ``module``'s backend and dtype for ``param``: a floating array of ``param``'s shape whose
    values are finite in that dtype; else an error naming ``where``."""
    backend = module.backend
    if not backend.owns(value):
        try:
            value = value.get() if backend_for(value).name == "cupy" else np.asarray(value)
        except (ValueError, TypeError, RuntimeError) as exc:
            # a ragged list; a torch tensor that requires grad, or of a dtype NumPy lacks
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TypeError(
                f"{where}: expected a floating array, got {type(value).__name__} that does not "
                f"convert to one ({reason})"
            ) from None
    if value.dtype.kind != "f":
        raise TypeError(f"{where}: expected a floating array, got {value.dtype}")
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"{where}: expected shape {tuple(param.shape)}, got {tuple(value.shape)}")
    # Checked after the cast: 1e300 is finite in float64 and inf in float32. The cast is
    # xp.asarray, not backend.asarray, whose own overflow error would not name ``where``.
    with np.errstate(over="ignore"):  # an overflow is reported just below, by name
        cast = backend.xp.asarray(value, dtype=param.dtype)
    made = int(backend.xp.count_nonzero(~backend.xp.isfinite(cast)))
    if made:
        src = backend_for(value).xp
        given = value.size - int(src.count_nonzero(src.isfinite(value)))
        got = ["NaN or infinity"] if given else []
        got += [f"values beyond {param.dtype}'s range"] if made > given else []
        raise ValueError(
            f"{where}: expected finite values in {param.dtype}, got {' and '.join(got)}"
        )
    return cast


def check_state_keys(state: Any, expected: Iterable[str]) -> None:
    """``state`` a mapping whose keys are exactly ``expected`` (a state dict's parameter
    names); else a TypeError or a ValueError listing what is missing and what unexpected."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a mapping of name -> array, got {describe_array(state)}")
    names = list(expected)
    missing = [name for name in names if name not in state]
    extra = [name for name in state if name not in names]
    if missing or extra:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        raise ValueError(f"state: keys do not match the parameters: {'; '.join(parts)}")


def describe_array(value: Any) -> str:
    """A short description of what came: 'numpy.ndarray float32 (3, 4)', 'list', ..."""
    name = type_name(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{name} {value.dtype} {tuple(value.shape)}"
    return name


class Module:
    """Base class: ``params``, ``grads``, ``backend``, ``dtype``, ``training``."""

    def __init__(self, dtype: Any = "float32", backend: str | Backend | None = None) -> None:
        self.dtype = resolve_dtype(dtype)
        self.backend = resolve_backend(backend)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.training = True

    # -- mode -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active). Returns self."""
        self.training = check_bool("mode", mode)
        return self

    def eval(self) -> Module:
        """Evaluation mode (dropout off). Returns self."""
        return self.train(False)

    # -- parameters -------------------------------------------------------------------------
    def _draw_uniform_params(
        self,
        shapes: list[tuple[str, tuple[int, ...]]],
        rng: np.random.Generator,
        bound: float,
        call: str,
    ) -> None:
        """``params`` drawn from U(-bound, bound) in ``shapes`` order (in float64 on the host,
        then moved to the module's device and dtype). Where they do not fit in memory, a
        MemoryError names the constructor ``call`` and the sizes, and ``params`` stay empty."""
        try:
            for name, shape in shapes:
                host = rng.uniform(-bound, bound, size=shape)
                self.params[name] = self.backend.asarray(host, dtype=self.dtype)
        except MemoryError as exc:  # CuPy's OutOfMemoryError is one too
            self.params.clear()
            count = sum(math.prod(shape) for _, shape in shapes)
            name, shape = max(shapes, key=lambda item: math.prod(item[1]))
            size = count * self.dtype.itemsize
            raise MemoryError(
                f"{call}: its {count:,} parameters ({size / 2**30:.3g} GiB in {self.dtype.name}; "
                f"the largest, {name}, of shape {shape}, drawn in float64 on the host first) "
                f"do not fit in memory ({exc})"
            ) from None

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """``(name, array)`` for every parameter, in a fixed order."""
        yield from self.params.items()

    def parameters(self) -> Iterator[Any]:
        """Every parameter array (the backend's, not a copy), in :meth:`named_parameters`'
        order. The optimisers take modules, whose ``grads`` they read, not these arrays."""
        yield from self.params.values()

    def num_parameters(self) -> int:
        """The number of scalar parameters."""
        return int(sum(p.size for p in self.params.values()))

    def zero_grad(self) -> None:
        """Forget the gradients of the last backward pass."""
        self.grads = {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter name -> host NumPy copy, in parameter order."""
        return {name: self.backend.to_numpy(p) for name, p in self.params.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``state`` (name -> array-like; NumPy, CuPy, or anything ``np.asarray`` takes)
        into the parameters in place. Names must match exactly, shapes must agree, values
        must be floating and finite in the module's dtype; a failed load changes nothing."""
        self._commit_state(self._checked_state(state))

    def _checked_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """``state`` checked and converted to this module's backend and dtype, parameters
        untouched (so that a model of several modules can check all before loading any)."""
        check_state_keys(state, self.params)
        return {
            name: checked_param_value(f"state[{name!r}]", state[name], self, param)
            for name, param in self.params.items()
        }

    def _commit_state(self, converted: Mapping[str, Any]) -> None:
        for name, value in converted.items():
            self.params[name][...] = value

    # -- checks shared by the layers --------------------------------------------------------
    def _check_input(self, name: str, value: Any) -> Any:
        """``value`` must be an array of this module's backend and dtype."""
        if not self.backend.owns(value):
            if isinstance(value, np.generic):  # a NumPy scalar: no device is involved
                raise TypeError(
                    f"{name}: expected a {self.backend.name} array, got the scalar "
                    f"{describe_array(value)}; a layer takes arrays of its input's shape"
                )
            if hasattr(value, "shape") and hasattr(value, "dtype"):
                raise TypeError(
                    f"{name}: expected a {self.backend.name} array (this module's backend), got "
                    f"{describe_array(value)}; mixed devices are not converted implicitly: use "
                    f"rnncu.get_backend({self.backend.name!r}).asarray(...)"
                )
            raise TypeError(
                f"{name}: expected a {self.backend.name} array, got {describe_array(value)}"
            )
        if isinstance(value, np.ma.MaskedArray):
            # the layers compute on the data: the mask would be ignored without a word
            raise TypeError(
                f"{name}: a masked array, whose mask the layer would ignore; give a plain "
                f"array ({name}.filled(0)); sequences of several lengths take an RNN's "
                "lengths=..."
            )
        if value.dtype != self.dtype:
            raise TypeError(
                f"{name}: expected dtype {self.dtype} (the parameters' dtype), got {value.dtype}"
            )
        return value
