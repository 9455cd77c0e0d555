"""Float64 finite-difference checks of rnncu.RNN's backward: every parameter, the input, h0."""

from __future__ import annotations

import numpy as np
import pytest
from rnn_reference import assert_close, numerical_gradient

import rnncu
from rnncu.optim import clip_grad_norm

CASES = [
    # (T, B, D, H, layers, bidirectional, nonlinearity, batch_first, with_lengths)
    (1, 1, 1, 1, 1, False, "tanh", False, False),
    (5, 3, 4, 6, 1, False, "tanh", False, False),
    (5, 3, 4, 6, 1, False, "relu", False, False),
    (4, 2, 3, 5, 3, False, "tanh", False, False),
    (4, 3, 3, 5, 2, True, "tanh", False, False),
    (4, 3, 3, 5, 2, True, "relu", True, False),
    (6, 4, 2, 3, 2, True, "tanh", False, True),
    (6, 4, 2, 3, 1, False, "relu", True, True),
    (3, 1, 2, 1, 2, True, "tanh", True, True),
]


@pytest.mark.parametrize(
    "steps,batch,features,hidden,layers,bidirectional,nonlinearity,batch_first,with_lengths",
    CASES,
)
def test_backward_matches_finite_differences(
    rng: np.random.Generator,
    steps: int,
    batch: int,
    features: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    nonlinearity: str,
    batch_first: bool,
    with_lengths: bool,
) -> None:
    rnn = rnncu.RNN(
        features,
        hidden,
        num_layers=layers,
        nonlinearity=nonlinearity,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype="float64",
        backend="numpy",
        seed=int(rng.integers(1 << 30)),
    )
    dirs = 2 if bidirectional else 1
    # Larger weights than torch's init make relu units cross zero and tanh saturate a bit:
    # a stronger test of act', still far from the kinks at finite-difference scale.
    for value in rnn.params.values():
        value[...] = rng.uniform(-0.8, 0.8, size=value.shape)
    x_shape = (batch, steps, features) if batch_first else (steps, batch, features)
    x = rng.standard_normal(x_shape)
    h0 = rng.standard_normal((layers * dirs, batch, hidden))
    lengths = None
    if with_lengths:
        lengths = rng.integers(0, steps + 1, size=batch)
        lengths[0] = steps  # at least one full row
        if batch > 2:
            lengths[-1] = 0  # and one with no step (a sequence that ended in a past chunk)
    out, h_n = rnn(x, h0, lengths=lengths)
    weight_out = rng.standard_normal(out.shape)
    weight_hn = rng.standard_normal(h_n.shape)

    def loss() -> float:
        o, h = rnn(x, h0, lengths=lengths)
        return float(np.sum(o * weight_out) + np.sum(h * weight_hn))

    rnn(x, h0, lengths=lengths)
    dx, dh0 = rnn.backward(weight_out, weight_hn)
    grads = {name: g.copy() for name, g in rnn.grads.items()}
    assert list(grads) == list(rnn.params)

    assert_close(dx, numerical_gradient(loss, x), 1e-6, 1e-8, "dx")
    assert_close(dh0, numerical_gradient(loss, h0), 1e-6, 1e-8, "dh0")
    for name, param in rnn.params.items():
        assert_close(grads[name], numerical_gradient(loss, param), 1e-6, 1e-8, name)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_row_of_length_zero_passes_its_state_through(
    rng: np.random.Generator, bidirectional: bool
) -> None:
    """Length 0: the row has no step in this call. Its output is zero, h_n is h0 and dh0 is
    dh_n, bit for bit, dx is zero, and the other rows get what they get without it."""
    dirs = 2 if bidirectional else 1
    rnn = rnncu.RNN(3, 4, num_layers=2, bidirectional=bidirectional, dtype="float64",
                    backend="numpy", seed=8)  # fmt: skip
    x = rng.standard_normal((5, 3, 3))
    h0 = rng.standard_normal((2 * dirs, 3, 4))
    dout = rng.standard_normal((5, 3, 4 * dirs))
    dh_n = rng.standard_normal((2 * dirs, 3, 4))
    lengths = np.array([5, 0, 3])
    out, h_n = rnn(x, h0, lengths)
    dx, dh0 = rnn.backward(dout, dh_n)
    grads = {name: grad.copy() for name, grad in rnn.grads.items()}
    assert np.all(out[:, 1] == 0) and np.all(dx[:, 1] == 0)
    np.testing.assert_array_equal(h_n[:, 1], h0[:, 1])
    np.testing.assert_array_equal(dh0[:, 1], dh_n[:, 1])

    rest = [0, 2]
    out_rest, h_n_rest = rnn(x[:, rest], h0[:, rest], lengths[rest])
    dx_rest, dh0_rest = rnn.backward(dout[:, rest], dh_n[:, rest])
    assert_close(out[:, rest], out_rest, 1e-13, 1e-14, "out")
    assert_close(h_n[:, rest], h_n_rest, 1e-13, 1e-14, "h_n")
    assert_close(dx[:, rest], dx_rest, 1e-13, 1e-14, "dx")
    assert_close(dh0[:, rest], dh0_rest, 1e-13, 1e-14, "dh0")
    for name, grad in grads.items():
        assert_close(grad, rnn.grads[name], 1e-13, 1e-14, name)
    # a batch where nothing runs: everything passes through
    out, h_n = rnn(x, h0, [0, 0, 0])
    assert np.all(out == 0)
    np.testing.assert_array_equal(h_n, h0)
    np.testing.assert_array_equal(rnn.backward(dout, dh_n)[1], dh_n)


def test_backward_with_only_dout_or_only_dh_n(rng: np.random.Generator) -> None:
    rnn = rnncu.RNN(3, 4, num_layers=2, dtype="float64", backend="numpy", seed=3)
    x = rng.standard_normal((5, 2, 3))
    out, h_n = rnn(x)
    weight_out = rng.standard_normal(out.shape)
    weight_hn = rng.standard_normal(h_n.shape)

    dx_out, _ = rnn.backward(weight_out, None)
    grads_out = {k: v.copy() for k, v in rnn.grads.items()}
    dx_hn, _ = rnn.backward(None, weight_hn)
    grads_hn = {k: v.copy() for k, v in rnn.grads.items()}
    dx_both, _ = rnn.backward(weight_out, weight_hn)
    # Linearity of the backward pass in its incoming gradients.
    assert_close(dx_both, dx_out + dx_hn, 1e-12, 1e-14, "dx")
    for name in rnn.params:
        assert_close(rnn.grads[name], grads_out[name] + grads_hn[name], 1e-12, 1e-14, name)
    assert_close(
        dx_out,
        numerical_gradient(lambda: float(np.sum(rnn(x)[0] * weight_out)), x),
        1e-6,
        1e-8,
        "dx from dout only",
    )


@pytest.mark.parametrize(
    "dtype,layers,nonlinearity,split,lengths",
    [
        ("float64", 1, "tanh", 3, None),
        ("float64", 3, "relu", 1, None),
        ("float32", 2, "tanh", 7, None),
        # rows that end in an early chunk run the later ones with length 0
        ("float64", 2, "tanh", 4, [9, 3, 5, 1]),
        ("float32", 1, "relu", 2, [2, 9, 0, 7]),
    ],
)
def test_a_sequence_in_chunks_is_the_whole_sequence(
    rng: np.random.Generator,
    dtype: str,
    layers: int,
    nonlinearity: str,
    split: int,
    lengths: list[int] | None,
) -> None:
    """Long sequences in pieces (the seed's memory problem): each chunk starts from the last
    one's h_n. Forward, the chunks give the whole call's outputs. Backward, two layers with
    the same weights, the later chunk's dh0 fed to the earlier one as dh_n, give the whole
    call's gradients summed; truncated BPTT is the same with dh0 dropped. With variable
    lengths, each chunk gets what is left of each row (0 once a row has ended)."""
    steps, batch, features, hidden = 9, 4, 3, 5

    def chunk_lengths(start: int, stop: int) -> np.ndarray | None:
        return None if lengths is None else np.clip(np.array(lengths) - start, 0, stop - start)

    whole = rnncu.RNN(
        features, hidden, num_layers=layers, nonlinearity=nonlinearity, dtype=dtype,
        backend="numpy", seed=int(rng.integers(1 << 30)),
    )  # fmt: skip
    early, late = (
        rnncu.RNN(features, hidden, num_layers=layers, nonlinearity=nonlinearity, dtype=dtype,
                  backend="numpy", seed=0)
        for _ in range(2)
    )  # fmt: skip
    early.load_state_dict(whole.state_dict())
    late.load_state_dict(whole.state_dict())
    x = rng.standard_normal((steps, batch, features)).astype(dtype)
    h0 = rng.standard_normal((layers, batch, hidden)).astype(dtype)
    dout = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    dh_n = rng.standard_normal((layers, batch, hidden)).astype(dtype)
    rtol, atol = (1e-12, 1e-13) if dtype == "float64" else (2e-5, 2e-6)

    out, h_n = whole(x, h0, lengths)
    dx, dh0 = whole.backward(dout, dh_n)
    out_early, h_mid = early(x[:split], h0, chunk_lengths(0, split))
    out_late, h_n_late = late(x[split:], h_mid, chunk_lengths(split, steps))
    assert_close(np.concatenate([out_early, out_late]), out, rtol, atol, "out")
    assert_close(h_n_late, h_n, rtol, atol, "h_n")

    dx_late, dh_mid = late.backward(dout[split:], dh_n)
    dx_early, dh0_early = early.backward(dout[:split], dh_mid)
    assert_close(np.concatenate([dx_early, dx_late]), dx, rtol, atol, "dx")
    assert_close(dh0_early, dh0, rtol, atol, "dh0")
    for name, grad in whole.grads.items():
        assert_close(early.grads[name] + late.grads[name], grad, rtol, atol, name)

    # Truncated BPTT with one layer: forward and backward per chunk, h_n carried over as it is.
    state, outs = h0, []
    for start in range(0, steps, split):
        stop = min(start + split, steps)
        chunk_out, state = early(x[start:stop], state, chunk_lengths(start, stop))
        early.backward(dout[start : start + split], None)
        outs.append(chunk_out)
    assert_close(np.concatenate(outs), out, rtol, atol, "out, truncated BPTT")
    assert_close(state, h_n, rtol, atol, "h_n, truncated BPTT")


def test_unbatched_input_matches_batch_of_one(rng: np.random.Generator) -> None:
    rnn = rnncu.RNN(
        3, 4, num_layers=2, bidirectional=True, dtype="float64", backend="numpy", seed=11
    )
    x = rng.standard_normal((6, 3))
    h0 = rng.standard_normal((4, 4))
    out, h_n = rnn(x, h0)
    assert out.shape == (6, 8) and h_n.shape == (4, 4)
    dout = rng.standard_normal(out.shape)
    dhn = rng.standard_normal(h_n.shape)
    dx, dh0 = rnn.backward(dout, dhn)
    grads = {k: v.copy() for k, v in rnn.grads.items()}

    out_b, h_n_b = rnn(x[:, None, :], h0[:, None, :])
    dx_b, dh0_b = rnn.backward(dout[:, None, :], dhn[:, None, :])
    assert_close(out, out_b[:, 0], 0, 0, "out")
    assert_close(h_n, h_n_b[:, 0], 0, 0, "h_n")
    assert_close(dx, dx_b[:, 0], 0, 0, "dx")
    assert_close(dh0, dh0_b[:, 0], 0, 0, "dh0")
    for name in grads:
        assert_close(grads[name], rnn.grads[name], 0, 0, name)


def test_linear_backward_matches_finite_differences(rng: np.random.Generator) -> None:
    lin = rnncu.Linear(5, 3, dtype="float64", backend="numpy", seed=0)
    x = rng.standard_normal((4, 2, 5))
    weight = rng.standard_normal((4, 2, 3))

    def loss() -> float:
        return float(np.sum(lin(x) * weight))

    lin(x)
    dx = lin.backward(weight)
    assert_close(dx, numerical_gradient(loss, x), 1e-7, 1e-9, "dx")
    for name, param in lin.params.items():
        assert_close(lin.grads[name], numerical_gradient(loss, param), 1e-7, 1e-9, name)


def test_rnn_plus_linear_is_a_model(rng: np.random.Generator) -> None:
    """The seed's y_t = W_hy h_t + b_y on top of the RNN, differentiated end to end."""
    rnn = rnncu.RNN(2, 4, dtype="float64", backend="numpy", seed=1)
    head = rnncu.Linear(4, 3, dtype="float64", backend="numpy", seed=2)
    x = rng.standard_normal((5, 3, 2))
    target = rng.standard_normal((5, 3, 3))

    def loss() -> float:
        return float(np.mean((head(rnn(x)[0]) - target) ** 2))

    y = head(rnn(x)[0])
    dy = 2 * (y - target) / y.size
    dx, _ = rnn.backward(head.backward(dy))
    assert_close(dx, numerical_gradient(loss, x), 1e-6, 1e-9, "dx")
    assert_close(
        rnn.grads["weight_hh_l0"],
        numerical_gradient(loss, rnn.params["weight_hh_l0"]),
        1e-6,
        1e-9,
        "weight_hh_l0",
    )


def test_dropout_between_layers(rng: np.random.Generator) -> None:
    rnn = rnncu.RNN(3, 5, num_layers=3, dropout=0.4, dtype="float64", backend="numpy", seed=4)
    x = rng.standard_normal((6, 4, 3))
    weight = rng.standard_normal((6, 4, 5))

    rnn.eval()
    out_eval_1, _ = rnn(x)
    out_eval_2, _ = rnn(x)
    np.testing.assert_array_equal(out_eval_1, out_eval_2)  # no dropout in eval mode
    rnn.train()
    out_train, _ = rnn(x)
    assert not np.allclose(out_train, out_eval_1)
    masks = [c.dropout_mask for c in rnn._cache["layers"]]
    assert masks[0] is None and all(m is not None for m in masks[1:])
    for mask in masks[1:]:
        kept = mask != 0
        assert 0.3 < kept.mean() < 0.9  # keep probability 0.6
        np.testing.assert_allclose(mask[kept], 1 / 0.6)  # inverted dropout scaling

    def fixed_mask_loss() -> float:
        rnn.seed_dropout(11)  # the same masks for every evaluation
        return float(np.sum(rnn(x)[0] * weight))

    fixed_mask_loss()
    dx, _ = rnn.backward(weight)
    grads = {k: v.copy() for k, v in rnn.grads.items()}
    assert_close(dx, numerical_gradient(fixed_mask_loss, x), 1e-6, 1e-8, "dx")
    for name in ("weight_ih_l1", "weight_hh_l2", "bias_ih_l0"):
        assert_close(
            grads[name], numerical_gradient(fixed_mask_loss, rnn.params[name]), 1e-6, 1e-8, name
        )


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_dropout_zeroes_a_fraction_p_of_the_inputs(rng: np.random.Generator, p: float) -> None:
    """dropout=p drops each input of the layers after the first with probability p, not
    1 - p (the keep probability), and scales what it keeps by 1 / (1 - p)."""
    rnn = rnncu.RNN(
        3, 16, num_layers=3, dropout=p, dtype="float64", backend="numpy",
        seed=int(rng.integers(1 << 30)),
    )  # fmt: skip
    rnn(rng.standard_normal((50, 8, 3)))
    for layer in (1, 2):
        mask = rnn._cache["layers"][layer].dropout_mask
        assert mask.shape == (50 * 8, 16)
        # 6400 draws: the fraction's standard deviation is at most 0.00625
        assert abs(np.mean(mask == 0) - p) < 0.04, layer
        np.testing.assert_allclose(mask[mask != 0], 1 / (1 - p))


def test_seed_dropout_gives_a_resumed_run_the_masks_of_an_unbroken_one(
    rng: np.random.Generator,
) -> None:
    """The dropout stream is not in the state dict; reseeding it per epoch (the documented
    pattern) makes a layer rebuilt from a saved state draw the masks the unbroken one drew."""
    kwargs = dict(num_layers=2, dropout=0.5, dtype="float64", backend="numpy")
    x = rng.standard_normal((5, 3, 2))
    unbroken = rnncu.RNN(2, 4, seed=3, **kwargs)
    outputs = []
    for epoch in range(3):
        unbroken.seed_dropout(100 + epoch)
        outputs.append(unbroken(x)[0])
    assert not np.array_equal(outputs[1], outputs[2])  # a new mask each epoch
    resumed = rnncu.RNN(2, 4, seed=99, **kwargs)  # other weights, other stream
    resumed.load_state_dict(unbroken.state_dict())
    resumed.seed_dropout(102)
    np.testing.assert_array_equal(resumed(x)[0], outputs[2])
    with pytest.raises(ValueError, match="seed: expected None or a non-negative integer"):
        resumed.seed_dropout(-1)


def test_one_seed_drives_independent_streams() -> None:
    """RNN(seed=s) and Linear(seed=s) draw unrelated weights (they drew the same uniform
    numbers, so a head of the RNN's input size held a multiple of weight_ih_l0), and an RNN's
    dropout masks are not the numbers another seed's weights are made of."""
    size = 6
    rnn = rnncu.RNN(size, size, dtype="float64", backend="numpy", seed=0)
    head = rnncu.Linear(size, size, dtype="float64", backend="numpy", seed=0)
    ratio = head.params["weight"] / rnn.params["weight_ih_l0"]
    assert np.ptp(ratio) > 0.1, "proportional weights from one seed"
    # neither draws the plain default_rng(seed) stream any more
    plain = np.random.default_rng(0).uniform(-1, 1, size * size).reshape(size, size)
    for weight in (head.params["weight"], rnn.params["weight_ih_l0"]):
        assert np.ptp(weight / plain) > 0.1
    # the same seed still gives the same weights: reproducible, as before
    again = rnncu.RNN(size, size, dtype="float64", backend="numpy", seed=0)
    for name, value in rnn.params.items():
        np.testing.assert_array_equal(again.params[name], value)
    kwargs = dict(dtype="float64", backend="numpy")
    drop = rnncu.RNN(size, size, num_layers=2, dropout=0.5, seed=0, **kwargs)
    other = rnncu.RNN(size, size, seed=1, **kwargs)
    stream = drop._dropout_rng.random(size * size)
    bound = 1 / np.sqrt(size)
    weights = (other.params["weight_ih_l0"].ravel() + bound) / (2 * bound)  # back to U(0, 1)
    assert not np.allclose(stream, weights)
    # ... nor the numbers the same seed's weights were drawn from
    same = rnncu.RNN(size, size, num_layers=2, dropout=0.5, seed=0, **kwargs)
    own = (same.params["weight_ih_l0"].ravel() + bound) / (2 * bound)  # back to U(0, 1)
    assert not np.allclose(same._dropout_rng.random(size * size), own)


def test_padding_ignores_inputs_at_padded_steps(rng: np.random.Generator) -> None:
    """What x holds at a padding step reaches nothing: NaN there (0 * NaN would be NaN in
    dW_ih) and other numbers give the bits of zeros, and padded outputs are +0.0, as torch's
    packed sequences give."""
    rnn = rnncu.RNN(
        3, 4, num_layers=2, bidirectional=True, dtype="float64", backend="numpy", seed=12
    )
    lengths = np.array([6, 2, 4])
    padded = np.arange(6)[:, None] >= lengths[None, :]
    x = rng.standard_normal((6, 3, 3))
    dout = rng.standard_normal((6, 3, 8))
    results = []
    for fill in (0.0, np.nan, np.inf, 1e3):
        x_filled = x.copy()
        x_filled[padded] = fill
        out, h_n = rnn(x_filled, lengths=lengths)
        dx, dh0 = rnn.backward(dout, np.ones_like(h_n))
        results.append((out, h_n, dx, dh0, {k: v.copy() for k, v in rnn.grads.items()}))
    assert not np.signbit(results[0][0][padded]).any()
    np.testing.assert_array_equal(results[0][2][padded], 0.0)
    for out, h_n, dx, dh0, grads in results[1:]:
        for got, ref in zip((out, h_n, dx, dh0), results[0][:4], strict=True):
            np.testing.assert_array_equal(got, ref)
        for name, grad in grads.items():
            np.testing.assert_array_equal(grad, results[0][4][name], err_msg=name)


def test_padding_ignores_gradients_at_padded_outputs(rng: np.random.Generator) -> None:
    """A padded output is the constant zero: whatever gradient arrives there, NaN included,
    changes nothing."""
    rnn = rnncu.RNN(
        3, 4, num_layers=2, bidirectional=True, dtype="float64", backend="numpy", seed=11
    )
    x = rng.standard_normal((6, 3, 3))
    lengths = np.array([6, 2, 4])
    out, _ = rnn(x, lengths=lengths)
    padded = np.arange(6)[:, None] >= lengths[None, :]
    np.testing.assert_array_equal(out[padded], 0.0)
    dout = rng.standard_normal(out.shape)
    dx_clean, _ = rnn.backward(dout)
    grads_clean = {k: v.copy() for k, v in rnn.grads.items()}
    dout[padded] = np.nan
    dx_dirty, _ = rnn.backward(dout)
    np.testing.assert_array_equal(dx_dirty, dx_clean)
    for name, grad in grads_clean.items():
        np.testing.assert_array_equal(rnn.grads[name], grad, err_msg=name)


def test_every_gradient_is_its_own_array(rng: np.random.Generator) -> None:
    """In-place users of the gradients (clipping, the optimisers) touch each one once: two
    names sharing memory (bias_ih and bias_hh are the same sum) would be scaled twice."""
    rnn = rnncu.RNN(3, 4, num_layers=2, bidirectional=True, dtype="float64", backend="numpy")
    head = rnncu.Linear(8, 2, dtype="float64", backend="numpy")
    x = rng.standard_normal((5, 3, 3))
    out, h_n = rnn(x)
    y = head(out)
    head.backward(rng.standard_normal(y.shape))
    rnn.backward(head.backward(rng.standard_normal(y.shape)), rng.standard_normal(h_n.shape))
    arrays = [(f"rnn.{n}", g) for n, g in rnn.grads.items()]
    arrays += [(f"head.{n}", g) for n, g in head.grads.items()]
    arrays += [(f"rnn.param.{n}", p) for n, p in rnn.params.items()]
    arrays += [(f"head.param.{n}", p) for n, p in head.params.items()]
    for i, (name_a, a) in enumerate(arrays):
        for name_b, b in arrays[i + 1 :]:
            assert not np.shares_memory(a, b), f"{name_a} and {name_b} share memory"


def test_clipping_a_real_model_scales_every_gradient_once(rng: np.random.Generator) -> None:
    rnn = rnncu.RNN(3, 4, num_layers=2, bidirectional=True, dtype="float64", backend="numpy")
    head = rnncu.Linear(8, 2, dtype="float64", backend="numpy")
    out, h_n = rnn(rng.standard_normal((5, 3, 3)))
    y = head(out)
    rnn.backward(head.backward(rng.standard_normal(y.shape)), rng.standard_normal(h_n.shape))
    before = {f"{i}.{n}": g.copy() for i, m in enumerate((rnn, head)) for n, g in m.grads.items()}
    norm = float(np.sqrt(sum(np.sum(g * g) for g in before.values())))
    max_norm = norm / 7.0
    returned = clip_grad_norm([rnn, head], max_norm)
    assert float(returned) == pytest.approx(norm, rel=1e-14)
    factor = max_norm / (norm + 1e-6)
    for i, module in enumerate((rnn, head)):
        for name, grad in module.grads.items():
            np.testing.assert_allclose(
                grad, before[f"{i}.{name}"] * factor, rtol=1e-14, atol=0, err_msg=name
            )
