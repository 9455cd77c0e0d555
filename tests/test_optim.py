"""Optimizers against the update formulas written out by hand (and torch.optim when torch
imports), clipping, schedules, and exact state save/restore."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from rnncu.backend import get_backend
from rnncu.optim import (
    SGD,
    Adam,
    ConstantLR,
    CosineLR,
    ExponentialLR,
    RMSprop,
    StepLR,
    clip_grad_norm,
    grad_norm,
    make_optimizer,
    make_schedule,
)


class FakeModule:
    """Just what the optimizers read: params, grads and a backend."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        self.params = {k: v.copy() for k, v in params.items()}
        self.grads: dict[str, np.ndarray] = {}
        self.backend = get_backend("numpy")


def make_problem(rng: np.random.Generator, dtype=np.float64):
    params = {
        "w": rng.standard_normal((4, 3)).astype(dtype),
        "b": rng.standard_normal(4).astype(dtype),
    }
    grads = [
        {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()} for _ in range(5)
    ]
    return params, grads


def adam_reference(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """Kingma & Ba, Algorithm 1, with L2 weight decay added to the gradient."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_reference_formula(rng: np.random.Generator, wd: float) -> None:
    params, grads = make_problem(rng)
    module = FakeModule(params)
    ids = {k: id(v) for k, v in module.params.items()}
    opt = Adam([module], lr=0.01, weight_decay=wd)
    for g in grads:
        module.grads = g
        opt.step()
    for name in params:
        assert id(module.params[name]) == ids[name]  # updated in place
        expected = adam_reference(params[name], [g[name] for g in grads], 0.01, wd=wd)
        np.testing.assert_allclose(module.params[name], expected, rtol=1e-12, atol=1e-14)
    assert opt.step_count == len(grads)


def test_adamw_decoupled(rng: np.random.Generator) -> None:
    params, grads = make_problem(rng)
    module = FakeModule(params)
    opt = Adam([module], lr=0.01, weight_decay=0.5, decoupled=True)
    module.grads = grads[0]
    opt.step()
    # first step: m_hat = g, v_hat = g^2, so the Adam part is -lr * g / (|g| + eps)
    g = grads[0]["w"]
    expected = params["w"] * (1 - 0.01 * 0.5) - 0.01 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(module.params["w"], expected, rtol=1e-12)


def assert_steps_match_torch(rng: np.random.Generator, ours, theirs) -> None:
    """Five steps of ``ours(modules)`` and of ``theirs(torch_params)`` (a torch.optim class,
    partially applied) on the same parameters and gradients: the same parameters after."""
    torch = pytest.importorskip("torch")
    params, grads = make_problem(rng)
    module = FakeModule(params)
    opt = ours([module])
    tparams = [torch.tensor(params[k], requires_grad=True) for k in params]
    topt = theirs(tparams)
    for g in grads:
        module.grads = g
        opt.step()
        for tp, k in zip(tparams, params, strict=True):
            tp.grad = torch.tensor(g[k])
        topt.step()
    for tp, k in zip(tparams, params, strict=True):
        np.testing.assert_allclose(module.params[k], tp.detach().numpy(), rtol=1e-12)


def test_adam_matches_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")

    settings = {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}
    assert_steps_match_torch(
        rng, lambda m: Adam(m, **settings), lambda p: torch.optim.Adam(p, **settings)
    )


def sgd_reference(p, grads, lr, momentum, nesterov, wd):
    buf = None
    for g in grads:
        g = g + wd * p
        buf = g.copy() if buf is None else momentum * buf + g
        step = g + momentum * buf if nesterov else buf
        p = p - lr * step
    return p


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_reference(rng: np.random.Generator, nesterov: bool) -> None:
    params, grads = make_problem(rng)
    module = FakeModule(params)
    opt = SGD([module], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    for g in grads:
        module.grads = g
        opt.step()
    for name in params:
        expected = sgd_reference(params[name], [g[name] for g in grads], 0.1, 0.9, nesterov, 0.01)
        np.testing.assert_allclose(module.params[name], expected, rtol=1e-12)


def test_sgd_keeps_momentum_for_0d_parameters(rng: np.random.Generator) -> None:
    # grad + wd * p of 0-d arrays is a NumPy scalar: the buffer must still be updated in place
    p0, grads = np.asarray(0.3), rng.standard_normal(20)
    module = FakeModule({"w": p0})
    opt = SGD([module], lr=0.1, momentum=0.9, weight_decay=0.05)
    for g in grads:
        module.grads = {"w": np.asarray(g)}
        opt.step()
    assert isinstance(opt.state["momentum_buffer"]["0.w"], np.ndarray)
    expected = sgd_reference(p0, list(grads), 0.1, 0.9, False, 0.05)
    np.testing.assert_allclose(module.params["w"], expected, rtol=1e-12)


@pytest.mark.parametrize(
    "build",
    [
        lambda m: Adam([m], lr=0.1),
        lambda m: SGD([m], momentum=0.9),
        lambda m: RMSprop([m], momentum=0.9, centered=True),
    ],
)
def test_a_failed_step_changes_nothing(rng: np.random.Generator, build) -> None:
    module = FakeModule({"w": rng.standard_normal(3), "b": rng.standard_normal(2)})
    opt = build(module)
    before = {k: v.copy() for k, v in module.params.items()}
    for grads, match in (
        ({"w": np.ones(3)}, r"no gradient for parameter 'b'"),  # 'w' came first
        ({"w": np.ones(3), "b": np.ones(3)}, r"gradient of 'b' .* shape \(3,\), the param"),
        ({"w": np.ones((2, 3)), "b": np.ones(2)}, r"gradient of 'w' .* shape \(2, 3\)"),
        # 'b' is checked after 'w', so a check inside the update loop would have moved 'w':
        # complex64 failed halfway in Adam and lost its imaginary part in SGD
        ({"w": np.ones(3), "b": np.ones(2, np.complex128)}, r"of 'b' .* dtype complex128, exp"),
        ({"w": np.ones(3), "b": np.ones(2, np.int64)}, r"of 'b' .* dtype int64, expected a real"),
        ({"w": np.ones(3), "b": [1.0, 1.0]}, r"of 'b' of FakeModule: expected a numpy array \(the"),
    ):
        module.grads = grads
        with pytest.raises((ValueError, TypeError), match=match):
            opt.step()
        assert opt.step_count == 0 and opt.state_dict() == {"step": 0}
        for name, value in before.items():
            np.testing.assert_array_equal(module.params[name], value)


def test_each_module_once() -> None:
    module = FakeModule({"w": np.ones(3)})
    module.grads = {"w": np.ones(3)}
    for build in (
        lambda: Adam([module, module]),
        lambda: SGD([module, module]),
        lambda: RMSprop([module, module]),
    ):
        with pytest.raises(ValueError, match=r"modules\[1\]: the same module as modules\[0\]"):
            build()
    with pytest.raises(ValueError, match=r"modules\[1\]: the same module"):
        clip_grad_norm([module, module], 1.0)  # the norm would count it twice


def test_adamw_matches_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    settings = {"lr": 0.02, "betas": (0.8, 0.99), "weight_decay": 0.3}
    assert_steps_match_torch(
        rng,
        lambda m: Adam(m, decoupled=True, **settings),
        lambda p: torch.optim.AdamW(p, **settings),
    )


def test_sgd_matches_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    settings = {"lr": 0.05, "momentum": 0.9, "nesterov": True}
    assert_steps_match_torch(
        rng, lambda m: SGD(m, **settings), lambda p: torch.optim.SGD(p, **settings)
    )


def rmsprop_reference(p, grads, lr, alpha, eps, wd, momentum, centered):
    """Tieleman & Hinton's RMSprop as torch writes it (no bias correction; eps outside the
    root; the momentum buffer accumulates the scaled gradient; centered: the running mean of
    the gradient's square taken off)."""
    s = np.zeros_like(p)
    a = np.zeros_like(p)
    buf = np.zeros_like(p)
    for g in grads:
        g = g + wd * p
        s = alpha * s + (1 - alpha) * g * g
        a = alpha * a + (1 - alpha) * g
        d = np.sqrt(s - a * a if centered else s) + eps
        if momentum:
            buf = momentum * buf + g / d
            p = p - lr * buf
        else:
            p = p - lr * g / d
    return p


RMSPROP_SETTINGS = [
    {},
    {"momentum": 0.9},
    {"centered": True},
    {"momentum": 0.5, "centered": True, "weight_decay": 0.1, "alpha": 0.9, "eps": 1e-6},
]


@pytest.mark.parametrize("settings", RMSPROP_SETTINGS, ids=["plain", "momentum", "centered", "all"])
def test_rmsprop_matches_reference_formula(rng: np.random.Generator, settings: dict) -> None:
    params, grads = make_problem(rng)
    module = FakeModule(params)
    opt = RMSprop([module], lr=0.01, **settings)
    for g in grads:
        module.grads = g
        opt.step()
    full = {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False}
    full.update(settings)
    for k in params:
        expected = rmsprop_reference(
            params[k], [g[k] for g in grads], 0.01, full["alpha"], full["eps"],
            full["weight_decay"], full["momentum"], full["centered"],
        )  # fmt: skip
        np.testing.assert_allclose(module.params[k], expected, rtol=1e-12)
        assert not np.allclose(module.params[k], params[k])


@pytest.mark.parametrize("settings", RMSPROP_SETTINGS, ids=["plain", "momentum", "centered", "all"])
def test_rmsprop_matches_torch(rng: np.random.Generator, settings: dict) -> None:
    torch = pytest.importorskip("torch")
    assert_steps_match_torch(
        rng,
        lambda m: RMSprop(m, lr=0.02, **settings),
        lambda p: torch.optim.RMSprop(p, lr=0.02, **settings),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_centered_rmsprop_stays_finite_where_rounding_takes_the_variance_below_zero(
    rng: np.random.Generator, dtype
) -> None:
    """A gradient that never changes has a centered variance of alpha^t (1 - alpha^t) g^2,
    which falls below the rounding of its two terms: s - a^2 then comes out negative in some
    elements (torch takes their square root: NaN, measured in 39 of 1000 elements in float64
    and 486 in float32 after 400 steps). Here the variance is floored at 0, so the step is
    the one eps bounds, as where the variance is exactly 0. The first steps are torch's."""
    g = rng.standard_normal(1000).astype(dtype)
    start = rng.standard_normal(1000).astype(dtype)
    module = FakeModule({"w": start})
    opt = RMSprop([module], lr=1e-3, alpha=0.9, centered=True)
    module.grads = {"w": g}
    for _ in range(5):
        opt.step()
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(
        module.params["w"], rmsprop_reference(start, [g] * 5, 1e-3, 0.9, 1e-8, 0, 0, True),
        rtol=tolerance,
    )  # fmt: skip
    s, a = opt.state["square_avg"]["0.w"], opt.state["grad_avg"]["0.w"]
    for _ in range(395):
        opt.step()
    assert (s - a * a < 0).any()  # the case this test is about arose
    assert np.isfinite(module.params["w"]).all()
    assert module.params["w"].dtype == dtype


@pytest.mark.parametrize(
    ("name", "cls", "momentum", "expected"),
    [
        ("adam", Adam, 0.0, {"betas": (0.9, 0.999), "eps": 1e-8, "decoupled": False}),
        ("adamw", Adam, 0.0, {"betas": (0.9, 0.999), "eps": 1e-8, "decoupled": True}),
        ("rmsprop", RMSprop, 0.3, {"alpha": 0.99, "eps": 1e-8, "centered": False}),
        ("sgd", SGD, 0.3, {"nesterov": False}),
    ],
)
def test_make_optimizer_passes_its_settings_on(name, cls, momentum, expected) -> None:
    """The trainer's ``--optimizer``: the class named, with ``lr``, ``weight_decay`` and
    ``momentum`` as given and torch's defaults for the rest (a setting dropped on the way,
    weight decay say, would train without it and pass every run-level test)."""
    opt = make_optimizer(name, [FakeModule({"w": np.ones(3)})], lr=0.2, weight_decay=0.1,
                         momentum=momentum)  # fmt: skip
    assert type(opt) is cls
    assert (opt.lr, opt.weight_decay) == (0.2, 0.1)
    assert getattr(opt, "momentum", 0.0) == momentum
    for attribute, value in expected.items():
        assert getattr(opt, attribute) == value, attribute


def test_make_optimizer_refuses_what_it_cannot_build() -> None:
    modules = [FakeModule({"w": np.ones(3)})]
    with pytest.raises(ValueError, match=r"^momentum: Adam takes none .*got 0.5"):
        make_optimizer("adam", modules, lr=0.1, momentum=0.5)
    with pytest.raises(ValueError, match=r"^momentum: Adam takes none .*got 0.5"):
        make_optimizer("adamw", modules, lr=0.1, momentum=0.5)
    with pytest.raises(
        ValueError, match=r"^optimizer: expected one of adam, adamw, rmsprop, sgd, got 'adag"
    ):
        make_optimizer("adagrad", modules, lr=0.1)


def test_clip_grad_norm(rng: np.random.Generator) -> None:
    params, grads = make_problem(rng)
    a, b = FakeModule(params), FakeModule(params)
    a.grads = {k: v.copy() for k, v in grads[0].items()}
    b.grads = {k: 3 * v for k, v in grads[1].items()}
    before = math.sqrt(sum(float((g * g).sum()) for m in (a, b) for g in m.grads.values()))
    norm = clip_grad_norm([a, b], 1.0)
    assert norm.shape == () and abs(float(norm) - before) < 1e-12 * before
    after = math.sqrt(sum(float((g * g).sum()) for m in (a, b) for g in m.grads.values()))
    assert abs(after - before / (before + 1e-6)) < 1e-12
    np.testing.assert_allclose(a.grads["w"], grads[0]["w"] / (before + 1e-6), rtol=1e-12)
    # below the limit nothing changes
    a.grads = {k: v * 1e-3 for k, v in grads[0].items()}
    kept = {k: v.copy() for k, v in a.grads.items()}
    clip_grad_norm([a], 10.0)
    for k in kept:
        np.testing.assert_array_equal(a.grads[k], kept[k])


def test_a_float32_norm_past_its_range_zeroes_the_gradients_as_torch_does(
    rng: np.random.Generator,
) -> None:
    """Finite float32 gradients whose squares sum past 3.4e38 (a norm above about 1.8e19)
    give an infinite norm, and clipping by it zeroes them: what torch's clip_grad_norm_ does,
    documented in clip_grad_norm rather than left to be found."""
    torch = pytest.importorskip("torch")
    params, grads = make_problem(rng, np.float32)
    huge = {k: (v * np.float32(1e20)).astype(np.float32) for k, v in grads[0].items()}
    assert all(np.isfinite(g).all() for g in huge.values())
    module = FakeModule(params)
    module.grads = {k: v.copy() for k, v in huge.items()}
    with np.errstate(over="ignore"):
        norm = clip_grad_norm([module], 1.0)
    assert np.isinf(norm)
    tensors = [torch.tensor(params[k], requires_grad=True) for k in params]
    for tensor, k in zip(tensors, params, strict=True):
        tensor.grad = torch.tensor(huge[k])
    assert torch.nn.utils.clip_grad_norm_(tensors, 1.0).isinf()
    for tensor, k in zip(tensors, params, strict=True):
        np.testing.assert_array_equal(module.grads[k], tensor.grad.numpy())
        assert not module.grads[k].any(), k


def test_grad_norm_reads_without_changing(rng: np.random.Generator) -> None:
    params, grads = make_problem(rng)
    a, b = FakeModule(params), FakeModule(params)
    a.grads = {k: v.copy() for k, v in grads[0].items()}
    b.grads = {k: 3 * v for k, v in grads[1].items()}
    kept = [{k: v.copy() for k, v in m.grads.items()} for m in (a, b)]
    expected = math.sqrt(sum(float((g * g).sum()) for m in (a, b) for g in m.grads.values()))
    norm = grad_norm([a, b])
    assert norm.shape == () and float(norm) == pytest.approx(expected, rel=1e-12)
    for module, before in zip((a, b), kept, strict=True):
        for k in before:
            np.testing.assert_array_equal(module.grads[k], before[k])
    assert float(clip_grad_norm([a, b], 1.0)) == float(norm)  # the norm clipping starts from
    with pytest.raises(ValueError, match=r"^grad_norm: no gradients \(call backward first\)"):
        grad_norm([FakeModule(params)])
    with pytest.raises(TypeError, match=r"modules: expected a list of modules, got FakeModule"):
        grad_norm(a)


def assert_round_trip_is_exact(rng: np.random.Generator, build) -> tuple[Any, dict]:
    """Five float32 steps of ``build(modules)`` straight, and two, saved, loaded into a new
    optimizer and three more: the same bits. Returns the new optimizer and the saved state."""
    params, grads = make_problem(rng, np.float32)
    straight = FakeModule(params)
    opt = build([straight])
    for g in grads:
        straight.grads = g
        opt.step()
    first = FakeModule(params)
    opt1 = build([first])
    for g in grads[:2]:
        first.grads = g
        opt1.step()
    state = opt1.state_dict()
    assert state["step"] == 2
    second = FakeModule({k: v.copy() for k, v in first.params.items()})
    opt2 = build([second])
    opt2.load_state_dict(state)
    for g in grads[2:]:
        second.grads = g
        opt2.step()
    for k in params:
        np.testing.assert_array_equal(second.params[k], straight.params[k])
    return opt2, state


def test_state_dict_round_trip_is_exact(rng: np.random.Generator) -> None:
    opt2, state = assert_round_trip_is_exact(rng, lambda modules: Adam(modules, lr=0.01))
    assert state["exp_avg.0.w"].dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict({**state, "exp_avg.0.w": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="unexpected"):
        opt2.load_state_dict({**state, "exp_avg.1.w": np.zeros((4, 3), np.float32)})


@pytest.mark.parametrize("settings", RMSPROP_SETTINGS, ids=["plain", "momentum", "centered", "all"])
def test_rmsprop_state_round_trip_is_exact(rng: np.random.Generator, settings: dict) -> None:
    """Stopped after two steps, saved, loaded into a new optimizer: the last three steps give
    the bits of five straight ones. The state holds the kinds the settings use, and no more."""
    opt2, state = assert_round_trip_is_exact(
        rng, lambda modules: RMSprop(modules, lr=0.01, **settings)
    )
    kinds = {"square_avg"}
    kinds |= {"momentum_buffer"} if settings.get("momentum") else set()
    kinds |= {"grad_avg"} if settings.get("centered") else set()
    assert {k.partition(".")[0] for k in state} - {"step"} == kinds
    for kind in kinds:  # each kind the settings use is needed to go on as saved
        with pytest.raises(ValueError, match=rf"missing '{kind}.0.[wb]' and 1 more at step 2"):
            opt2.load_state_dict({k: v for k, v in state.items() if not k.startswith(kind)})
    with pytest.raises(ValueError, match=r"'square_avg.0.b' holds NaN, infinite or negative"):
        opt2.load_state_dict({**state, "square_avg.0.b": -state["square_avg.0.b"]})
    if "grad_avg" in kinds:  # a mean of gradients may be negative
        opt2.load_state_dict({**state, "grad_avg.0.b": -np.abs(state["grad_avg.0.b"])})


@pytest.mark.parametrize(
    ("build", "keeps"),
    [
        (lambda m: SGD(m, lr=0.1), "none"),
        (lambda m: RMSprop(m, lr=0.1), "'square_avg'"),
    ],
    ids=["sgd", "rmsprop"],
)
def test_state_of_a_momentum_the_settings_lack_is_refused(rng, build, keeps: str) -> None:
    """Momentum buffers saved with momentum > 0, loaded where momentum is 0: not carried along
    unused (and saved again) as if the state fitted, but named."""
    module = FakeModule({"w": rng.standard_normal(3)})
    module.grads = {"w": rng.standard_normal(3)}
    with_momentum = SGD([module], lr=0.1, momentum=0.9)
    with_momentum.step()
    state = with_momentum.state_dict()
    if keeps != "none":
        state["square_avg.0.w"] = np.ones(3)
    with pytest.raises(
        ValueError,
        match=rf"entry 'momentum_buffer.0.w' \(the state .*momentum 0.0\) keeps: {keeps}",
    ):
        build([FakeModule({"w": np.ones(3)})]).load_state_dict(state)


def test_state_without_moments_is_complete_where_none_are_kept(rng: np.random.Generator) -> None:
    module = FakeModule({"w": rng.standard_normal(3)})
    module.grads = {"w": rng.standard_normal(3)}
    plain = SGD([module], lr=0.1)  # no momentum: no state to save
    plain.step()
    assert set(plain.state_dict()) == {"step"}
    fresh = SGD([FakeModule({"w": np.ones(3)})], lr=0.1)
    fresh.load_state_dict(plain.state_dict())
    assert fresh.step_count == 1
    # before any step, no state yet is the state
    adam = Adam([FakeModule({"w": np.ones(3)})])
    adam.load_state_dict({"step": np.asarray(0)})
    assert adam.step_count == 0


def test_missing_gradient_and_bad_arguments() -> None:
    module = FakeModule({"w": np.zeros(3)})
    with pytest.raises(ValueError, match="backward"):
        Adam([module]).step()
    with pytest.raises(ValueError, match="lr"):
        Adam([module], lr=-1)
    with pytest.raises(ValueError, match="momentum"):
        SGD([module], momentum=1.5)


def test_schedules() -> None:
    exp = ExponentialLR(1.0, steps_per_epoch=10, gamma=0.5)
    assert exp(0) == 1.0 and exp(10) == 0.5 and exp(20) == 0.25
    cos = CosineLR(2.0, steps_per_epoch=4, total_epochs=2)
    assert cos(0) == 2.0 and abs(cos(4) - 1.0) < 1e-12 and cos(8) == 0.0 and cos(100) == 0.0
    step = StepLR(1.0, steps_per_epoch=2, step_epochs=3, gamma=0.1)
    assert step(5) == 1.0 and abs(step(6) - 0.1) < 1e-15
    # a fractional interval is kept, not truncated to whole epochs (2.5 is not 2)
    half = StepLR(1.0, steps_per_epoch=2, step_epochs=2.5, gamma=0.1)
    assert half(4) == 1.0 and abs(half(5) - 0.1) < 1e-15 and abs(half(10) - 0.01) < 1e-15
    warm = make_schedule("constant", 1.0, 10, warmup_epochs=1)
    assert warm(0) == 0.1 and warm(9) == 1.0 and warm(50) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        make_schedule("nope", 1.0, 10)
    # a cosine with no horizon would decay to 0 wherever a default put it
    with pytest.raises(ValueError, match="total_epochs: the cosine schedule needs its horizon"):
        make_schedule("cosine", 1.0, 10)


def test_step_schedule_decays_at_decimal_intervals() -> None:
    # 0.1 and 0.07 epochs are not exact in binary (0.7 / 0.1 is 6.999999999999999): the rate
    # must still fall at every interval's end, not one update late
    for steps_per_epoch, step_epochs, updates in ((10, 0.1, 1), (100, 0.07, 7), (20, 0.35, 7)):
        schedule = StepLR(1.0, steps_per_epoch, step_epochs=step_epochs, gamma=0.5)
        for step in range(40 * updates):
            assert schedule(step) == 0.5 ** (step // updates), (step_epochs, step)
    # the rounding grows with the quotient: ten million intervals in, 1000000.2 / 0.1 is
    # 10000001.999999998, within rounding of the whole number, but not within 1e-9 of it
    gamma = 1 - 1e-7  # a rate that has not yet fallen to 0.0 there
    schedule = StepLR(1.0, 10, step_epochs=0.1, gamma=gamma)
    assert schedule(10_000_002) == gamma**10_000_002
    assert schedule(10_000_001) == gamma**10_000_001


def test_schedules_between_their_landmarks() -> None:
    """The curves' shapes, at points where a staircase or a straight line would differ from
    them (whole epochs and the cosine's 0, 1/2, 1 do not tell them apart), and min_factor."""
    exp = ExponentialLR(1.0, steps_per_epoch=10, gamma=0.5)
    # smooth per step: half an epoch in, the rate is 0.5 ** 0.5, not a stair's 1.0
    assert exp(5) == pytest.approx(math.sqrt(0.5), rel=1e-15)
    assert exp(13) == pytest.approx(0.5**1.3, rel=1e-15)
    cos = CosineLR(2.0, steps_per_epoch=4, total_epochs=2)
    # a quarter of the horizon: 1 + cos(pi / 4) = 1.7071..., a straight line gives 1.5
    assert cos(2) == pytest.approx(1.0 + math.cos(math.pi / 4), rel=1e-15)
    assert cos(6) == pytest.approx(1.0 + math.cos(3 * math.pi / 4), rel=1e-15)
    floor = CosineLR(1.0, steps_per_epoch=4, total_epochs=2, min_factor=0.2)
    assert floor(0) == 1.0
    assert floor(4) == pytest.approx(0.6, rel=1e-15)  # halfway between 1 and the floor
    assert floor(2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-15)
    assert floor(8) == pytest.approx(0.2, rel=1e-15) and floor(100) == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["exp", "step", "cosine", "constant"])
def test_the_schedule_starts_where_the_warm_up_ends(name: str) -> None:
    """The warm-up rises to base_lr and the schedule then starts from base_lr: shifted by
    the warm-up, so the rate has no jump at its end (it had: exp with gamma 0.5 and 2 epochs
    of warm-up fell from base_lr to base_lr / 4 in one step)."""
    spe, warmup = 10, 2
    plain = make_schedule(name, 0.5, spe, gamma=0.5, total_epochs=4, step_epochs=1)
    warmed = make_schedule(
        name, 0.5, spe, gamma=0.5, total_epochs=4 + warmup, step_epochs=1, warmup_epochs=warmup
    )
    rising = [warmed(step) for step in range(warmup * spe)]
    assert rising == [0.5 * (s + 1) / (warmup * spe) for s in range(warmup * spe)]
    after = [warmed(step) for step in range(warmup * spe, (warmup + 6) * spe)]
    # the cosine's horizon includes the warm-up, so its decay keeps the length it had alone
    assert after == [plain(step) for step in range(6 * spe)]
    assert warmed(warmup * spe) == 0.5


def test_cosine_horizon_includes_the_warm_up() -> None:
    cos = CosineLR(1.0, steps_per_epoch=4, total_epochs=3, warmup_epochs=1)
    assert cos(3) == 1.0 and cos(4) == 1.0 and abs(cos(8) - 0.5) < 1e-15 and cos(12) == 0.0
    for warmup in (3, 4):  # nothing would be left of the decay: the rate would sit at 0
        with pytest.raises(ValueError, match=r"warmup_epochs: expected a warm-up shorter than "):
            CosineLR(1.0, steps_per_epoch=4, total_epochs=3, warmup_epochs=warmup)
    # what the trainer's config check (on epochs) cannot see: 1.96 epochs round to 20 steps,
    # the whole 2-epoch horizon; the message gives the steps
    with pytest.raises(ValueError, match=r"of 2.0 epochs \(20 steps\).* 1.96 epochs \(20 steps"):
        CosineLR(1.0, steps_per_epoch=10, total_epochs=2, warmup_epochs=1.96)
    with pytest.raises(ValueError, match=r"total_epochs: expected a number in \(0, inf\)"):
        CosineLR(1.0, steps_per_epoch=4, total_epochs=0)


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda m: Adam([m], eps=float("nan")), ValueError, r"eps: expected a number in \(0, inf"),
        (lambda m: Adam([m], weight_decay=float("inf")), ValueError, r"weight_decay"),
        (lambda m: Adam([m], weight_decay=float("nan")), ValueError, r"weight_decay"),
        (lambda m: Adam([m], betas=(0.9, 1.0)), ValueError, r"betas\[1\]: expected a number"),
        (lambda m: Adam([m], betas=(0.9, 0.9, 0.9)), TypeError, r"betas: expected a pair"),
        (lambda m: Adam([m], betas=0.9), TypeError, r"betas: expected a pair"),
        (lambda m: Adam([m], betas=np.array(0.9)), TypeError, r"betas: expected a pair"),
        (lambda m: Adam([m], betas=np.full((1, 2), 0.9)), TypeError, r"betas: expected a pair"),
        (lambda m: Adam([m], betas=np.full((2, 2), 0.9)), TypeError, r"betas: expected a pair"),
        (lambda m: Adam([m], betas=np.array([0.9, 1.5])), ValueError, r"betas\[1\]: expected"),
        (lambda m: Adam([m], betas="ab"), TypeError, r"betas: expected a pair"),
        (lambda m: Adam([m], lr="0.1"), TypeError, r"lr: expected a number, got '0.1'"),
        (lambda m: Adam([m], lr=None), TypeError, r"lr: expected a number, got None"),
        (lambda m: Adam([m], lr=True), TypeError, r"lr: expected a number, got True"),
        (lambda m: Adam([m], lr=float("inf")), ValueError, r"lr: expected a number in \(0, inf"),
        (lambda m: Adam(m), TypeError, r"modules: expected a list of modules, got FakeModule"),
        (lambda m: Adam([m, 3]), TypeError, r"modules\[1\]: expected an rnncu module, got int"),
        (lambda m: SGD([m], weight_decay=-1), ValueError, r"weight_decay: expected a number"),
        (lambda m: SGD([m], weight_decay=float("nan")), ValueError, r"weight_decay"),
        (lambda m: SGD([m], momentum=float("nan")), ValueError, r"momentum"),
        # bool("False") is True: a string would silently turn Adam into AdamW
        (lambda m: Adam([m], decoupled="False"), TypeError, r"decoupled: expected True or False"),
        (lambda m: SGD([m], momentum=0.9, nesterov="no"), TypeError, r"nesterov: expected True"),
        (lambda m: Adam([m], eps=0.0), ValueError, r"eps: expected a number in \(0, inf\)"),
        (lambda m: RMSprop([m], alpha=1.0), ValueError, r"alpha: expected a number in \[0, 1\)"),
        (lambda m: RMSprop([m], alpha=float("nan")), ValueError, r"alpha: expected a number"),
        (lambda m: RMSprop([m], momentum=1.0), ValueError, r"momentum: expected a number in"),
        (lambda m: RMSprop([m], eps=0.0), ValueError, r"eps: expected a number in \(0, inf\)"),
        (lambda m: RMSprop([m], weight_decay=-0.1), ValueError, r"weight_decay: expected a"),
        (lambda m: RMSprop([m], centered="yes"), TypeError, r"centered: expected True or False"),
        (lambda m: RMSprop([m], lr=0), ValueError, r"lr: expected a number in \(0, inf\)"),
        (lambda m: RMSprop(m), TypeError, r"modules: expected a list of modules, got FakeModule"),
    ],
)
def test_optimizer_arguments_are_checked(build, error, match: str) -> None:
    module = FakeModule({"w": np.ones(3)})
    with pytest.raises(error, match=match):
        build(module)


def test_adam_takes_its_betas_as_any_pair_of_numbers() -> None:
    """A list, a tuple or a NumPy array of two (torch's Adam indexes them all alike); each
    kept as a Python float."""
    module = FakeModule({"w": np.ones(3)})
    for betas in ([0.8, 0.99], (0.8, 0.99), np.array([0.8, 0.99]), np.float32([0.8, 0.99])):
        kept = Adam([module], betas=betas).betas
        assert kept == pytest.approx((0.8, 0.99)) and all(type(b) is float for b in kept)


def test_clip_grad_norm_checks_its_modules_as_the_optimizers_do(monkeypatch) -> None:
    module = FakeModule({"w": np.ones(3)})
    module.grads = {"w": np.ones(3)}
    with pytest.raises(TypeError, match=r"modules: expected a list of modules, got FakeModule"):
        clip_grad_norm(module, 1.0)  # was: 'FakeModule' object is not iterable
    with pytest.raises(TypeError, match=r"modules: expected a list of modules, got int"):
        clip_grad_norm(5, 1.0)
    # any iterable is read once: a generator was used up by the duplicate check, then
    # "no gradients (call backward first)"; dict views were taken, generators refused by Adam
    assert float(clip_grad_norm((m for m in [module]), 10.0)) == pytest.approx(math.sqrt(3))
    assert float(clip_grad_norm({"rnn": module}.values(), 10.0)) == pytest.approx(math.sqrt(3))
    assert Adam(m for m in [module]).modules == [module]
    with pytest.raises(ValueError, match=r"clip_grad_norm: expected at least one module"):
        clip_grad_norm([], 1.0)
    with pytest.raises(TypeError, match=r"modules\[1\]: expected an rnncu module, got dict"):
        clip_grad_norm([module, {"w": 1}], 1.0)
    np.testing.assert_array_equal(module.grads["w"], np.ones(3))

    # gradients on two backends cannot make one norm: named, before anything is scaled
    import rnncu.backend

    class OnDevice(np.ndarray):
        pass

    numpy_backend = rnncu.backend.get_backend("numpy")
    device = type("FakeBackend", (), {"name": "cupy", "xp": np})()
    monkeypatch.setattr(
        rnncu.backend,
        "backend_for",
        lambda a: device if isinstance(a, OnDevice) else numpy_backend,
    )
    other = FakeModule({"w": np.ones(3)})
    other.grads = {"w": np.ones(3).view(OnDevice)}
    with pytest.raises(ValueError, match=r"modules\[1\]: gradients on the cupy backend, the first"):
        clip_grad_norm([module, other], 0.5)
    np.testing.assert_array_equal(module.grads["w"], np.ones(3))


@pytest.mark.parametrize("max_norm", [-1.0, 0.0, float("nan"), float("inf"), "1"])
def test_clip_grad_norm_refuses_bad_max_norm(max_norm) -> None:
    # a negative max_norm used to flip the gradients' sign, NaN to poison them
    module = FakeModule({"w": np.ones(3)})
    module.grads = {"w": np.ones(3)}
    with pytest.raises((ValueError, TypeError), match=r"max_norm: expected a number"):
        clip_grad_norm([module], max_norm)
    np.testing.assert_array_equal(module.grads["w"], np.ones(3))


class _TorchLike:
    """A shape and a dtype without NumPy's ``kind`` (a torch tensor's), which had failed with
    ``'torch.dtype' object has no attribute 'kind'``."""

    shape = (3,)
    dtype = object()


def _adam_state(rng: np.random.Generator) -> tuple[Adam, dict[str, np.ndarray]]:
    module = FakeModule({"w": rng.standard_normal(3)})
    module.grads = {"w": rng.standard_normal(3)}
    opt = Adam([module])
    opt.step()
    return opt, opt.state_dict()


@pytest.mark.parametrize(
    "change,match",
    [
        ({"step": np.asarray(-5)}, r"'step' must be a non-negative integer scalar"),
        ({"step": np.asarray(2.7)}, r"'step' must be a non-negative integer scalar"),
        ({"step": np.asarray([1, 2])}, r"'step' must be a non-negative integer scalar"),
        # loaded, then state_dict's int64 overflowed
        ({"step": np.uint64(2**63)}, r"'step' must be a .* below 2\*\*63, got uint64 \(\) 92"),
        ({"step": np.asarray(0), 3: np.ones(3)}, r"unexpected entry 3 \(not a str\)"),
        ({"exp_avg_sq.0.w": np.array([1.0, -1.0, 1.0])}, r"'exp_avg_sq.0.w' holds NaN, inf"),
        ({"exp_avg.0.w": np.array([1.0, np.nan, 1.0])}, r"'exp_avg.0.w' holds NaN, infinite v"),
        ({"exp_avg.0.w": [1.0, 2.0, 3.0]}, r"'exp_avg.0.w' must be a floating array, got list"),
        ({"exp_avg.0.w": np.arange(3)}, r"'exp_avg.0.w' must be a floating array, got int64"),
        ({"exp_avg.0.w": _TorchLike()}, r"'exp_avg.0.w' must be a floating array, got _Torch"),
        # after a step every moment exists: without one, the run would not continue as saved
        ({"exp_avg.0.w": None}, r"missing 'exp_avg.0.w' at step 1"),
    ],
)
def test_optimizer_state_is_checked(rng: np.random.Generator, change: dict, match: str) -> None:
    opt, state = _adam_state(rng)
    before = {kind: {k: v.copy() for k, v in slots.items()} for kind, slots in opt.state.items()}
    changed = {k: v for k, v in {**state, **change}.items() if v is not None}
    with pytest.raises((ValueError, TypeError), match=match):
        opt.load_state_dict(changed)
    assert opt.step_count == 1
    for kind, slots in before.items():
        for key, value in slots.items():
            np.testing.assert_array_equal(opt.state[kind][key], value)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: make_schedule("step", 0.1, 10, gamma=-1), r"gamma: expected a number in \(0, 1\]"),
        (lambda: make_schedule("step", 0.1, 10, gamma=5), r"gamma: expected a number in \(0, 1\]"),
        (lambda: make_schedule("exp", 0.1, 10, gamma=0), r"gamma: expected a number in \(0, 1\]"),
        (lambda: make_schedule("constant", -1.0, 10), r"base_lr: expected a number in \(0, inf"),
        (lambda: make_schedule("constant", 0.1, 0), r"steps_per_epoch: expected a positive"),
        (lambda: make_schedule("constant", 0.1, 10, warmup_epochs=-1), r"warmup_epochs"),
        (lambda: StepLR(0.1, 10, step_epochs=0), r"step_epochs: expected a number in \(0, inf"),
        (lambda: CosineLR(0.1, 10, 5, min_factor=2), r"min_factor: expected a number in \[0, 1\]"),
    ],
)
def test_schedule_arguments_are_checked(build, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_schedules_check_the_step_and_extreme_intervals() -> None:
    """A negative step gave a negative rate (warm-up) or a ZeroDivisionError; 1e308 warm-up
    epochs and a 1e-320-epoch interval ended in an OverflowError from the command line, and
    intervals shorter than one update silently took the rate to zero."""
    warm = ConstantLR(0.1, 10, warmup_epochs=1)
    for bad in (-5, -1):
        with pytest.raises(ValueError, match=rf"^step: expected an integer >= 0 .*got {bad}"):
            warm(bad)
    for bad in ("3", 2.0, True, None):
        with pytest.raises(TypeError, match=r"^step: expected an integer >= 0"):
            ExponentialLR(0.1, 10, 0.5)(bad)
    assert warm(np.int64(4)) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"^warmup_epochs: 1e\+308 epochs of 10 steps are more"):
        ConstantLR(0.1, 10, warmup_epochs=1e308)
    # the rate would fall several times per update: to 0.0 after one, for 1e-320 epochs
    for interval, steps in ((1e-320, 1), (0.05, 10)):
        with pytest.raises(
            ValueError,
            match=rf"^step_epochs: expected an interval of at least "
            rf"one update \(1/{steps} epoch\), got {interval!r} epochs",
        ):
            StepLR(0.1, steps, step_epochs=interval, gamma=0.5)
    assert StepLR(0.1, 10, step_epochs=0.5, gamma=0.5)(10) == pytest.approx(0.025)


def test_optimizer_state_must_be_a_mapping() -> None:
    opt = Adam([FakeModule({"w": np.ones(3)})])
    with pytest.raises(TypeError, match=r"^optimizer state: expected a mapping .* got NoneType"):
        opt.load_state_dict(None)  # type: ignore[arg-type]


class _OwnModule:
    """A module of one's own: params and grads, and a backend that is no rnncu Backend."""

    def __init__(self, backend: object = None) -> None:
        self.params = {"w": np.ones(3, np.float32)}
        self.grads = {"w": np.full(3, 0.5)}  # float64, as a hand-written backward may give
        if backend is not None:
            self.backend = backend


@pytest.mark.parametrize("backend", [None, "numpy"])
def test_modules_of_ones_own_still_step(backend) -> None:
    """The gradient checks took such modules' backend for a Backend (AttributeError) and
    refused float64 gradients of float32 parameters, which update in place as before."""
    # Adam's first step moves by lr; SGD's by lr * gradient
    for build, after in (
        (lambda m: Adam([m], lr=0.1), 0.9),
        (lambda m: SGD([m], lr=0.1, momentum=0.9), 0.95),
    ):
        module = _OwnModule(backend)
        build(module).step()
        assert module.params["w"].dtype == np.float32
        np.testing.assert_allclose(module.params["w"], after, rtol=1e-6)
        with pytest.raises(TypeError, match=r"of 'w' of _OwnModule: expected a NumPy or CuPy"):
            module.grads = {"w": [0.5, 0.5, 0.5]}
            build(module).step()


def test_grad_norm_refuses_a_parameter_without_its_gradient() -> None:
    """It had counted the others only: a partial norm passed for the whole model's, and
    clipping scaled the others alone. A module without parameters has nothing to miss."""
    a, b = FakeModule({"w": np.ones(3)}), FakeModule({"w": np.ones(2), "b": np.ones(1)})
    a.grads = {"w": np.full(3, 2.0)}
    for grads, missing in (({}, "'w'"), ({"w": np.full(2, 2.0)}, "'b'")):
        b.grads = grads
        for call in (lambda: grad_norm([a, b]), lambda: clip_grad_norm([a, b], 1.0)):
            with pytest.raises(
                ValueError, match=rf"modules\[1\] \(FakeModule\) has no gr.*{missing}"
            ):
                call()
        np.testing.assert_array_equal(a.grads["w"], np.full(3, 2.0))
    b.grads = {"w": np.full(2, 2.0), "b": np.full(1, 2.0)}
    empty = FakeModule({})
    assert float(grad_norm([a, b, empty])) == pytest.approx(np.sqrt(24.0))


@pytest.mark.parametrize(
    "build",
    [
        lambda modules: SGD(modules, lr=0.1, momentum=0.9),
        lambda modules: SGD(modules, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
        lambda modules: Adam(modules, lr=0.1),
        lambda modules: Adam(modules, lr=0.1, weight_decay=0.1, decoupled=True),
        lambda modules: RMSprop(modules, lr=0.1, momentum=0.9, centered=True),
    ],
    ids=["sgd-momentum", "sgd-nesterov", "adam", "adamw", "rmsprop"],
)
def test_modules_with_the_same_parameter_names_keep_their_own_state(rng, build) -> None:
    """Two modules with a "w" each (two Linear layers): one optimiser over both gives what one
    optimiser per module gives, so neither reads the other's momentum or moments."""
    start = [{"w": rng.standard_normal((3, 2))} for _ in range(2)]
    together = [FakeModule(p) for p in start]
    alone = [FakeModule(p) for p in start]
    joint = build(together)
    separate = [build([module]) for module in alone]
    for _ in range(4):
        for a, b in zip(together, alone, strict=True):
            a.grads = {"w": rng.standard_normal((3, 2))}
            b.grads = {"w": a.grads["w"].copy()}
        joint.step()
        for opt in separate:
            opt.step()
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert not np.allclose(together[0].params["w"], together[1].params["w"])
