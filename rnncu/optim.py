"""Optimizers, gradient clipping and learning-rate schedules.

Optimizers take a list of :class:`rnncu.Module` and update ``module.params[name]`` in place
from ``module.grads[name]`` (in place, so a layer's cached references to its weights and any
device buffers stay valid). All state lives in arrays on the modules' backend, created at
the first step, plus a host step counter, so :meth:`Optimizer.state_dict` /
:meth:`Optimizer.load_state_dict` restore the optimizer's state bit for bit. The learning
rate is a setting, not state (unlike torch's ``param_groups``): loading keeps ``lr`` as it
is, and a :class:`Schedule`, a pure function of the step count, gives a resumed run the
rates of an unbroken one (as the trainer does). Scalars (learning rate, bias
corrections) are Python floats computed on the host, which keeps the NumPy and CuPy updates
identical up to the device's floating-point arithmetic and never synchronises the device.

State keys are ``"<kind>.<module index>.<param name>"`` (``exp_avg.0.weight_ih_l0``) and
``"step"``: the index is the module's position in the list the optimizer was built from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rnncu.backend import Backend, is_array, is_cupy_array, type_name
from rnncu.module import check_bool, check_number, check_positive_int

__all__ = [
    "SGD",
    "Adam",
    "ConstantLR",
    "CosineLR",
    "OPTIMIZERS",
    "ExponentialLR",
    "Optimizer",
    "RMSprop",
    "Schedule",
    "StateKindError",
    "StepLR",
    "check_momentum",
    "clip_grad_norm",
    "grad_norm",
    "make_optimizer",
    "make_schedule",
]


def _params(modules: Sequence[Any]) -> list[tuple[str, Any, Any]]:
    """``(key, param, grad)`` for every parameter, in a fixed order (module, then name). Every
    gradient is checked before the caller uses any, so a step that fails changes nothing."""
    out = []
    for index, module in enumerate(modules):
        for name, param in module.params.items():
            grad = module.grads.get(name)
            if grad is None:
                # (for a norm: that of the others alone would pass for the whole model's)
                raise ValueError(
                    f"modules[{index}] ({type(module).__name__}) has no gradient for parameter "
                    f"{name!r} (call its backward first)"
                )
            where = f"the gradient of {name!r} of {type(module).__name__}"
            # a list, a torch tensor, or a host array for a device module: an update from it
            # would fail halfway or copy on every step
            backend = getattr(module, "backend", None)
            if isinstance(backend, Backend):
                owned, expected = backend.owns(grad), f"a {backend.name} array (the module's)"
            else:  # a module of one's own
                owned, expected = is_array(grad), "a NumPy or CuPy array"
            if not owned:
                raise TypeError(f"{where}: expected {expected}, got {type_name(grad)}")
            if grad.dtype.kind != "f":
                # a complex gradient failed after earlier parameters were updated (Adam) or
                # lost its imaginary part (SGD); another float type updates in place as well
                raise TypeError(
                    f"{where} has dtype {grad.dtype}, expected a real floating one (the "
                    f"parameter's is {param.dtype})"
                )
            if tuple(grad.shape) != tuple(param.shape):
                # in-place updates would broadcast a (3,) gradient over a (4, 3) weight
                raise ValueError(
                    f"the gradient of {name!r} of {type(module).__name__} has shape "
                    f"{tuple(grad.shape)}, the parameter {tuple(param.shape)}"
                )
            out.append((f"{index}.{name}", param, grad))
    return out


class StateKindError(ValueError):
    """Optimizer state of other kinds than the optimizer's settings keep (entries it does not
    keep, or kinds it keeps missing after a step): most likely another optimizer's state, or
    the same one's under other settings (a momentum)."""


def check_momentum(optimizer: str, momentum: float) -> None:
    """ValueError for a momentum given to Adam or AdamW (``optimizer`` as
    :func:`make_optimizer` names them), which would ignore it: a setting without effect."""
    if momentum and optimizer in ("adam", "adamw"):
        raise ValueError(f"momentum: Adam takes none (its moments are its betas), got {momentum}")


class Optimizer:
    """Base class: holds the modules, the learning rate, the step count and state arrays."""

    #: names of the per-parameter state arrays this optimizer keeps
    state_kinds: tuple[str, ...] = ()
    #: the state kinds that are means of squares: a negative value loaded into one would
    #: give the square root of a negative number
    squared_kinds: tuple[str, ...] = ()

    def __init__(self, modules: Iterable[Any], lr: float) -> None:
        self.modules = _module_list("optimizer", modules)
        self.lr = check_number("lr", lr, low=0.0, low_open=True, high_open=True)
        self.step_count = 0
        # kind -> key -> array on the params' backend; filled lazily at the first step
        self.state: dict[str, dict[str, Any]] = {kind: {} for kind in self.state_kinds}

    def _xp(self, param: Any) -> Any:
        from rnncu.backend import backend_for

        return backend_for(param).xp

    def _kinds_after_a_step(self) -> tuple[str, ...]:
        """The state kinds that every parameter holds once a step has been taken."""
        return self.state_kinds

    def _settings(self) -> str:
        """The optimizer and the settings that decide its state, for messages (a subclass
        whose state depends on its settings names them)."""
        return type(self).__name__

    def _state(self, kind: str, key: str, param: Any) -> Any:
        slot = self.state[kind].get(key)
        if slot is None:
            slot = self._xp(param).zeros_like(param)
            self.state[kind][key] = slot
        return slot

    def step(self) -> None:
        """Apply one update to every parameter from its current gradient."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the state: ``"step"`` and one array per (kind, parameter)."""
        out: dict[str, np.ndarray] = {"step": np.asarray(self.step_count, dtype=np.int64)}
        for kind, slots in self.state.items():
            for key, arr in slots.items():
                out[f"{kind}.{key}"] = _to_host(arr)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Every state array must match a parameter in
        name and shape (it is cast to the parameter's dtype, as torch does); a mismatch raises
        ValueError naming the key (TypeError for an array that is not floating), as do a
        kind of state these settings do not keep (momentum buffers where momentum is 0) and
        state missing after a step (``step`` > 0): the
        moments would restart from zero and the run would not continue as saved. (Stricter
        than torch, which starts missing state afresh: load into the optimizer the state was
        saved from.)"""
        if not isinstance(state, Mapping):
            raise TypeError(
                f"optimizer state: expected a mapping of name -> array, got {type(state).__name__}"
            )
        if "step" not in state:
            raise ValueError("optimizer state: missing 'step'")
        step = np.asarray(state["step"])
        # at most int64's largest: state_dict saves the count as an int64
        if (
            step.shape != ()
            or step.dtype.kind not in "iu"
            or not 0 <= int(step) <= np.iinfo(np.int64).max
        ):
            raise ValueError(
                f"optimizer state: 'step' must be a non-negative integer scalar below 2**63, "
                f"got {step.dtype} {step.shape}" + (f" {step}" if step.shape == () else "")
            )
        params = {key: param for key, param, _ in _params_nograd(self.modules)}
        new: dict[str, dict[str, Any]] = {kind: {} for kind in self.state_kinds}
        # the kinds these settings keep: a momentum buffer loaded into SGD or RMSprop without
        # momentum (state of another optimizer's settings) would be carried along unused
        kept = self._kinds_after_a_step()
        for full_key, value in state.items():
            if full_key == "step":
                continue
            if not isinstance(full_key, str):
                raise ValueError(f"optimizer state: unexpected entry {full_key!r} (not a str)")
            kind, _, key = full_key.partition(".")
            if kind not in kept:
                keeps = ", ".join(map(repr, kept)) or "none"
                raise StateKindError(
                    f"optimizer state: unexpected entry {full_key!r} (the state "
                    f"{self._settings()} keeps: {keeps})"
                )
            if key not in params:
                raise ValueError(f"optimizer state: unexpected entry {full_key!r}")
            param = params[key]
            array = is_array(value)
            if not array or value.dtype.kind != "f":
                # a torch tensor's dtype has no kind: named by its type, as a list is
                got = value.dtype if array else type(value).__name__
                raise TypeError(
                    f"optimizer state: {full_key!r} must be a floating array, got {got}"
                )
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"optimizer state: {full_key!r} has shape {tuple(value.shape)}, "
                    f"parameter has {tuple(param.shape)}"
                )
            xp = self._xp(param)
            slot = xp.asarray(value, dtype=param.dtype).copy()
            squared = kind in self.squared_kinds
            lowest = 0.0 if squared else -math.inf
            if not bool(xp.all(xp.isfinite(slot) & (slot >= lowest))):
                raise ValueError(
                    f"optimizer state: {full_key!r} holds NaN, infinite"
                    + (" or negative" if squared else "")
                    + " values"
                )
            new[kind][key] = slot
        if int(step) > 0:
            missing = [
                f"{kind}.{key}"
                for kind in self._kinds_after_a_step()
                for key in params
                if key not in new[kind]
            ]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise StateKindError(
                    f"optimizer state: missing {missing[0]!r}{more} at step {int(step)} (the "
                    "state of every parameter is saved after a step)"
                )
        self.state = new
        self.step_count = int(step)


def _module_list(where: str, modules: Any) -> list[Any]:
    """``modules`` (a list, tuple, generator or any iterable of distinct rnncu modules, at
    least one) as a list, read once; else an error naming ``modules``. A single module is
    the common slip: it is named as such."""
    if hasattr(modules, "params"):
        raise TypeError(
            f"modules: expected a list of modules, got {type(modules).__name__} "
            "(wrap a single module in a list)"
        )
    try:
        listed = list(modules)
    except TypeError:
        raise TypeError(
            f"modules: expected a list of modules, got {type(modules).__name__}"
        ) from None
    if not listed:
        raise ValueError(f"{where}: expected at least one module")
    for index, module in enumerate(listed):
        if not hasattr(module, "params") or not hasattr(module, "grads"):
            raise TypeError(
                f"modules[{index}]: expected an rnncu module, got {type(module).__name__}"
            )
    _check_distinct(listed)
    return listed


def _check_distinct(modules: Sequence[Any]) -> None:
    """A module listed twice would be updated (or counted in a norm) twice per step."""
    first: dict[int, int] = {}
    for index, module in enumerate(modules):
        if id(module) in first:
            raise ValueError(
                f"modules[{index}]: the same module as modules[{first[id(module)]}] (each "
                "module once)"
            )
        first[id(module)] = index


def _params_nograd(modules: Sequence[Any]) -> Iterator[tuple[str, Any, None]]:
    for index, module in enumerate(modules):
        for name, param in module.params.items():
            yield f"{index}.{name}", param, None


def _to_host(arr: Any) -> np.ndarray:
    if is_cupy_array(arr):  # copy to the host
        return np.asarray(arr.get())
    return np.array(arr, copy=True)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, written as ``torch.optim.Adam`` does:

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    ``weight_decay`` adds ``weight_decay * p`` to the gradient (L2, as torch's Adam); with
    ``decoupled=True`` it instead shrinks ``p *= 1 - lr * weight_decay`` (AdamW).
    """

    state_kinds = ("exp_avg", "exp_avg_sq")
    squared_kinds = ("exp_avg_sq",)

    def __init__(
        self,
        modules: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        super().__init__(modules, lr)
        pair = isinstance(betas, Sequence) and not isinstance(betas, (str, bytes))
        pair = pair or (isinstance(betas, np.ndarray) and betas.ndim == 1)  # np.array([.9, .99])
        if not pair or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        beta1 = check_number("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
        beta2 = check_number("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
        self.betas = (beta1, beta2)
        # eps = 0 divides 0 by 0 where a gradient has been zero at every step
        self.eps = check_number("eps", eps, low=0.0, low_open=True, high_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0, high_open=True)
        self.decoupled = check_bool("decoupled", decoupled)

    def step(self) -> None:
        """One Adam update of every parameter from its gradient."""
        params = _params(self.modules)
        self.step_count += 1
        beta1, beta2 = self.betas
        t = self.step_count
        step_size = self.lr / (1 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        for key, param, grad in params:
            xp = self._xp(param)
            if self.weight_decay:
                if self.decoupled:
                    param *= 1 - self.lr * self.weight_decay
                else:
                    grad = grad + self.weight_decay * param
            m = self._state("exp_avg", key, param)
            v = self._state("exp_avg_sq", key, param)
            # m += (1 - b1) (g - m) is torch's lerp form; spelled out so both backends round
            # the same way
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * (grad * grad)
            denom = xp.sqrt(v)
            denom /= bias_correction2_sqrt
            denom += self.eps
            param -= step_size * (m / denom)


class SGD(Optimizer):
    """SGD with optional momentum (torch semantics: ``buf = momentum * buf + g``, the first
    step sets ``buf = g``; Nesterov uses ``g + momentum * buf``) and L2 weight decay."""

    state_kinds = ("momentum_buffer",)

    def __init__(
        self,
        modules: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(modules, lr)
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.nesterov = check_bool("nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0, high_open=True)

    def _kinds_after_a_step(self) -> tuple[str, ...]:
        return self.state_kinds if self.momentum else ()

    def _settings(self) -> str:
        return f"SGD (momentum {self.momentum})"

    def step(self) -> None:
        """One SGD update of every parameter from its gradient."""
        params = _params(self.modules)
        self.step_count += 1
        for key, param, grad in params:
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            if self.momentum:
                buf = self.state["momentum_buffer"].get(key)
                if buf is None:
                    # an array even for a 0-d parameter (grad + wd * p is then a scalar, which
                    # `buf *= momentum` would rebind instead of updating the stored buffer)
                    buf = self._xp(param).array(grad, dtype=param.dtype, copy=True)
                    self.state["momentum_buffer"][key] = buf
                else:
                    buf *= self.momentum
                    buf += grad
                grad = grad + self.momentum * buf if self.nesterov else buf
            param -= self.lr * grad


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton), written as ``torch.optim.RMSprop`` does:

        s = alpha s + (1 - alpha) g^2;   d = sqrt(s) + eps
        p -= lr * g / d                       (momentum 0)
        buf = momentum * buf + g / d;   p -= lr * buf     (momentum > 0)

    ``centered=True`` divides by an estimate of the gradient's standard deviation instead of
    its root mean square: ``a = alpha a + (1 - alpha) g``, ``d = sqrt(s - a^2) + eps``.
    ``weight_decay`` adds ``weight_decay * p`` to the gradient (L2). There is no bias
    correction: the first steps divide by ``sqrt(1 - alpha)`` of the gradient's size, so they
    are about ten times ``lr`` at the default ``alpha``, as in torch.
    """

    state_kinds = ("square_avg", "momentum_buffer", "grad_avg")
    squared_kinds = ("square_avg",)

    def __init__(
        self,
        modules: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(modules, lr)
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0, high_open=True)
        # eps = 0 divides 0 by 0 where a gradient has been zero at every step
        self.eps = check_number("eps", eps, low=0.0, low_open=True, high_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0, high_open=True)
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.centered = check_bool("centered", centered)

    def _kinds_after_a_step(self) -> tuple[str, ...]:
        return (
            ("square_avg",)
            + (("momentum_buffer",) if self.momentum else ())
            + (("grad_avg",) if self.centered else ())
        )

    def _settings(self) -> str:
        return f"RMSprop (momentum {self.momentum}{' centered' if self.centered else ''})"

    def step(self) -> None:
        """One RMSprop update of every parameter from its gradient."""
        params = _params(self.modules)
        self.step_count += 1
        alpha = self.alpha
        for key, param, grad in params:
            xp = self._xp(param)
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            square_avg = self._state("square_avg", key, param)
            square_avg *= alpha
            square_avg += (1 - alpha) * (grad * grad)
            if self.centered:
                grad_avg = self._state("grad_avg", key, param)
                grad_avg *= alpha
                grad_avg += (1 - alpha) * grad
                # s - a^2 >= 0 exactly (a mean of squares against the square of the mean, with
                # the same weights summing to below 1), but rounding can take it just below
                # 0, whose square root is NaN; torch takes that NaN, the floor here does not
                avg = xp.sqrt(xp.maximum(square_avg - grad_avg * grad_avg, 0))
            else:
                avg = xp.sqrt(square_avg)
            avg += self.eps
            if self.momentum:
                buf = self._state("momentum_buffer", key, param)
                buf *= self.momentum
                buf += grad / avg
                param -= self.lr * buf
            else:
                param -= self.lr * (grad / avg)


def grad_norm(modules: Iterable[Any]) -> Any:
    """The global L2 norm of all gradients of ``modules`` (those of the last backward), on
    the device: a 0-d CuPy array, a NumPy scalar on the NumPy backend (``float()`` reads
    either; reading it waits for the device). Watching it over training shows exploding
    gradients (spikes) and vanishing ones (a norm that falls towards 0 while the loss stays
    high)."""
    return _global_norm("grad_norm", _module_list("grad_norm", modules))[0]


def _global_norm(where: str, modules: list[Any]) -> tuple[Any, list[Any], Any]:
    """``(norm, gradients, xp)`` of ``modules``; every gradient on one backend."""
    from rnncu.backend import backend_for

    if not any(g is not None for m in modules for g in m.grads.values()):
        raise ValueError(f"{where}: no gradients (call backward first)")
    checked = _params(modules)  # every parameter's gradient, as an optimizer step checks them
    grads = [grad for _, _, grad in checked]
    if not grads:  # gradients, but for no parameter
        raise ValueError(f"{where}: no gradients of parameters (call backward first)")
    backend = backend_for(grads[0])
    # one norm needs every gradient on one backend (the type test keeps the usual case cheap:
    # this runs every training step)
    if any(type(g) is not type(grads[0]) for g in grads):
        for key, _, grad in checked:
            if backend_for(grad).name != backend.name:
                raise ValueError(
                    f"modules[{key.partition('.')[0]}]: gradients on the "
                    f"{backend_for(grad).name} backend, the first module's on {backend.name}"
                )
    xp = backend.xp
    # summed from the first gradient's, not from sum()'s int 0: NumPy before 2.0 made
    # 0 + a float32 scalar a float64
    total = xp.sum(grads[0] * grads[0])
    for g in grads[1:]:
        total = total + xp.sum(g * g)
    return xp.sqrt(total), grads, xp


def clip_grad_norm(modules: Iterable[Any], max_norm: float) -> Any:
    """Scale all gradients of ``modules`` together so that their global L2 norm is at most
    ``max_norm`` (torch's ``clip_grad_norm_``: factor ``min(1, max_norm / (norm + 1e-6))``).

    Returns the norm before clipping, on the device (a 0-d CuPy array; a NumPy scalar on
    the NumPy backend); the factor is applied on the device, so clipping never waits for the
    device. A NaN norm leaves NaN gradients, which the trainer's loss check catches. An
    infinite one, as torch computes it, gives a factor of 0: in float32, finite gradients
    whose squares sum past 3.4e38 (a norm above about 1.8e19) are zeroed, not scaled down;
    float64 keeps such norms.
    """
    return _clip_grad_norm(modules, max_norm)[0]


def _clip_grad_norm(modules: Iterable[Any], max_norm: float) -> tuple[Any, Any]:
    """:func:`clip_grad_norm`, also returning the factor applied (on the device; below 1
    exactly where the gradients were scaled down)."""
    max_norm = check_number("max_norm", max_norm, low=0.0, low_open=True, high_open=True)
    total, grads, xp = _global_norm("clip_grad_norm", _module_list("clip_grad_norm", modules))
    # in the norm's dtype, as torch computes it: NumPy before 2.0 promoted a float32 scalar
    # plus a Python float to float64, where 1 / (0.99999905 + 1e-6) is just below 1
    dtype = total.dtype.type
    factor = xp.minimum(dtype(max_norm) / (total + dtype(1e-6)), 1.0).astype(grads[0].dtype)
    for g in grads:
        g *= factor
    return total, factor


class Schedule:
    """A learning rate as a pure function of the optimizer step count (the number of
    updates already made), so a resumed run sees exactly the rates of an unbroken one.

    An optional linear warm-up rises to ``base_lr`` over ``warmup_epochs``; the schedule
    proper starts there, from ``base_lr`` (it is shifted by the warm-up, not laid under it,
    so the rate does not jump when the warm-up ends)."""

    def __init__(self, base_lr: float, steps_per_epoch: int, warmup_epochs: float = 0.0) -> None:
        steps_per_epoch = check_positive_int("steps_per_epoch", steps_per_epoch)
        self.base_lr = check_number("base_lr", base_lr, low=0.0, low_open=True, high_open=True)
        self.steps_per_epoch = int(steps_per_epoch)
        warmup_epochs = check_number("warmup_epochs", warmup_epochs, low=0.0, high_open=True)
        warmup_steps = warmup_epochs * steps_per_epoch
        if not math.isfinite(warmup_steps):  # 1e308 epochs: int(round(inf)) would overflow
            raise ValueError(
                f"warmup_epochs: {warmup_epochs!r} epochs of {steps_per_epoch} steps are more "
                "steps than a float holds"
            )
        self.warmup_steps = int(round(warmup_steps))

    def factor(self, epoch: float) -> float:
        """The multiplier of ``base_lr`` ``epoch`` (fractional) epochs after the warm-up."""
        return 1.0

    def __call__(self, step: int) -> float:
        """The learning rate for the update after ``step`` updates (an integer >= 0)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step: expected an integer >= 0 (updates made), got {step!r}")
        if step < 0:
            # a negative step gave a negative rate in the warm-up, a ZeroDivisionError after
            raise ValueError(f"step: expected an integer >= 0 (updates made), got {step!r}")
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        return self.base_lr * self.factor((step - self.warmup_steps) / self.steps_per_epoch)


class ConstantLR(Schedule):
    """The base rate throughout (after the optional warm-up)."""


class ExponentialLR(Schedule):
    """``base_lr * gamma ** epoch`` (epochs after the warm-up), smoothly per step.
    Independent of the run's length, so training 2 epochs and resuming to 4 gives the rates
    of 4 epochs straight."""

    def __init__(
        self, base_lr: float, steps_per_epoch: int, gamma: float, warmup_epochs: float = 0.0
    ) -> None:
        super().__init__(base_lr, steps_per_epoch, warmup_epochs)
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0, low_open=True)

    def factor(self, epoch: float) -> float:
        return float(self.gamma**epoch)


class StepLR(Schedule):
    """``base_lr * gamma ** floor(epoch / step_epochs)`` (epochs after the warm-up)."""

    def __init__(
        self,
        base_lr: float,
        steps_per_epoch: int,
        step_epochs: float,
        gamma: float = 0.1,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__(base_lr, steps_per_epoch, warmup_epochs)
        self.step_epochs = check_number(
            "step_epochs", step_epochs, low=0.0, low_open=True, high_open=True
        )
        if self.step_epochs * self.steps_per_epoch < 1:
            # the rate would fall by gamma several times per update (to 0.0 for 1e-320)
            raise ValueError(
                f"step_epochs: expected an interval of at least one update (1/"
                f"{self.steps_per_epoch} epoch), got {self.step_epochs!r} epochs"
            )
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0, low_open=True)

    def factor(self, epoch: float) -> float:
        intervals = epoch / self.step_epochs
        # A decimal interval (0.1, 0.07 epochs) is not exact in binary: 0.7 / 0.1 gives
        # 6.999999999999999, whose floor would take the 7th decay one update late. A quotient
        # within rounding of a whole number is that number.
        whole = round(intervals)
        if abs(intervals - whole) <= 1e-9 * max(1.0, abs(intervals)):
            return self.gamma**whole
        return self.gamma ** math.floor(intervals)


class CosineLR(Schedule):
    """Half a cosine from ``base_lr`` down to ``min_factor * base_lr``, ending
    ``total_epochs`` after the start of the run (the warm-up, if any, is part of that
    horizon and must be shorter), then flat. The horizon is fixed when the run starts (a
    resumed run keeps it), unlike :class:`ExponentialLR`, which has none."""

    def __init__(
        self,
        base_lr: float,
        steps_per_epoch: int,
        total_epochs: float,
        min_factor: float = 0.0,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__(base_lr, steps_per_epoch, warmup_epochs)
        self.total_epochs = check_number(
            "total_epochs", total_epochs, low=0.0, low_open=True, high_open=True
        )
        self.min_factor = check_number("min_factor", min_factor, low=0.0, high=1.0)
        # the decay's own length: what the horizon leaves after the warm-up
        self.decay_epochs = self.total_epochs - self.warmup_steps / self.steps_per_epoch
        if self.decay_epochs <= 0:
            horizon = self.total_epochs * self.steps_per_epoch
            raise ValueError(
                f"warmup_epochs: expected a warm-up shorter than the cosine's horizon of "
                f"{self.total_epochs} epochs ({horizon:g} steps), which includes it; got "
                f"{warmup_epochs} epochs ({self.warmup_steps} steps, rounded)"
            )

    def factor(self, epoch: float) -> float:
        progress = min(epoch / self.decay_epochs, 1.0)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES = ("exp", "cosine", "step", "constant")


def make_schedule(
    name: str,
    base_lr: float,
    steps_per_epoch: int,
    *,
    gamma: float = 0.9,
    total_epochs: float | None = None,
    step_epochs: float = 10,
    warmup_epochs: float = 0.0,
) -> Schedule:
    """Build a schedule by name: ``exp`` (gamma per epoch), ``cosine`` (over total_epochs,
    which it needs: a default horizon would end the decay, at a rate of 0, wherever it
    happened to fall), ``step`` (gamma every step_epochs) or ``constant``."""
    if name == "exp":
        return ExponentialLR(base_lr, steps_per_epoch, gamma, warmup_epochs)
    if name == "cosine":
        if total_epochs is None:
            raise ValueError("total_epochs: the cosine schedule needs its horizon, got None")
        return CosineLR(base_lr, steps_per_epoch, total_epochs, warmup_epochs=warmup_epochs)
    if name == "step":
        return StepLR(base_lr, steps_per_epoch, step_epochs, gamma, warmup_epochs)
    if name == "constant":
        return ConstantLR(base_lr, steps_per_epoch, warmup_epochs)
    raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")


#: the optimizers :func:`make_optimizer` builds by name (the trainer's ``--optimizer``)
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")


def make_optimizer(
    name: str,
    modules: Iterable[Any],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> Optimizer:
    """Build an optimizer by name over ``modules``: ``adam`` (:class:`Adam`, ``weight_decay``
    added to the gradient, L2), ``adamw`` (:class:`Adam` with ``decoupled=True``: the weights
    shrink by ``lr * weight_decay`` each step, torch's AdamW), ``rmsprop`` (:class:`RMSprop`)
    or ``sgd`` (:class:`SGD`), these two with ``weight_decay`` as L2 and with ``momentum``.
    Their other settings are their defaults (torch's; AdamW's ``weight_decay`` is the one
    given, not torch's 0.01). Adam refuses a momentum, which it would otherwise ignore."""
    check_momentum(name, momentum)
    if name in ("adam", "adamw"):
        return Adam(modules, lr=lr, weight_decay=weight_decay, decoupled=name == "adamw")
    if name == "rmsprop":
        return RMSprop(modules, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if name == "sgd":
        return SGD(modules, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")
