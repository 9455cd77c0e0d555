"""rnncu.RNN against torch.nn.RNN (float64, CPU): a converted torch state_dict loads and gives
torch's outputs and gradients to float64 rounding, packed sequences included."""

from __future__ import annotations

import numpy as np
import pytest
from rnn_reference import assert_close

import rnncu

torch = pytest.importorskip("torch", reason="torch is the reference for these tests")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

CONFIGS = [
    {},
    {"num_layers": 2},
    {"bidirectional": True},
    {"num_layers": 3, "bidirectional": True, "nonlinearity": "relu"},
    {"batch_first": True, "num_layers": 2},
    {"bias": False, "bidirectional": True},
]


def _torch_rnn(config: dict, features: int, hidden: int, rng: np.random.Generator):
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = torch.nn.RNN(features, hidden, dtype=torch.float64, **config)
    ours = rnncu.RNN(features, hidden, dtype="float64", backend="numpy", **config)
    ours.load_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()})
    return model, ours


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_matches_torch(rng: np.random.Generator, config: dict, with_lengths: bool) -> None:
    steps, batch, features, hidden = 7, 5, 4, 6
    model, ours = _torch_rnn(config, features, hidden, rng)
    assert list(ours.state_dict()) == list(model.state_dict())
    batch_first = config.get("batch_first", False)
    dirs = 2 if config.get("bidirectional") else 1
    layers = config.get("num_layers", 1)
    x = rng.standard_normal((batch, steps, features) if batch_first else (steps, batch, features))
    h0 = rng.standard_normal((layers * dirs, batch, hidden))
    lengths = rng.integers(1, steps + 1, size=batch) if with_lengths else None
    if with_lengths:
        lengths[1] = steps

    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0, requires_grad=True)
    if with_lengths:
        packed = pack_padded_sequence(
            x_t, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        out_t, hn_t = model(packed, h0_t)
        out_t, _ = pad_packed_sequence(out_t, batch_first=batch_first, total_length=steps)
    else:
        out_t, hn_t = model(x_t, h0_t)
    out, h_n = ours(x, h0, lengths=lengths)
    assert_close(out, out_t.detach().numpy(), 1e-12, 1e-13, "out")
    assert_close(h_n, hn_t.detach().numpy(), 1e-12, 1e-13, "h_n")

    dout = rng.standard_normal(out.shape)
    dhn = rng.standard_normal(h_n.shape)
    ((out_t * torch.tensor(dout)).sum() + (hn_t * torch.tensor(dhn)).sum()).backward()
    dx, dh0 = ours.backward(dout, dhn)
    assert_close(dx, x_t.grad.numpy(), 1e-11, 1e-12, "dx")
    assert_close(dh0, h0_t.grad.numpy(), 1e-11, 1e-12, "dh0")
    for name, param in model.named_parameters():
        assert_close(ours.grads[name], param.grad.numpy(), 1e-11, 1e-12, name)


def test_hx_keyword_and_parameters_follow_torch(rng: np.random.Generator) -> None:
    """torch's keyword for the initial state gives what h0 gives, and parameters() yields the
    arrays themselves in torch's order."""
    config = {"num_layers": 2, "bidirectional": True}
    model, ours = _torch_rnn(config, 3, 5, rng)
    x = rng.standard_normal((6, 4, 3))
    h0 = rng.standard_normal((4, 4, 5))
    out_t, hn_t = model(torch.tensor(x), hx=torch.tensor(h0))
    out, h_n = ours(x, hx=h0)
    assert_close(out, out_t.detach().numpy(), 1e-12, 1e-13, "out")
    assert_close(h_n, hn_t.detach().numpy(), 1e-12, 1e-13, "h_n")
    out_h0, _ = ours.forward(x, h0)
    np.testing.assert_array_equal(out, out_h0)
    ours_params = list(ours.parameters())
    torch_params = [p.detach().numpy() for p in model.parameters()]
    assert len(ours_params) == len(torch_params) == 16  # 2 layers, 2 directions, 4 each
    for mine, theirs in zip(ours_params, torch_params, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert all(p is ours.params[name] for p, name in zip(ours_params, ours.params, strict=True))
    assert sum(p.size for p in ours_params) == ours.num_parameters()


def test_hx_keyword_with_an_unbatched_sequence_follows_torch(rng: np.random.Generator) -> None:
    """An unbatched (T, D) sequence takes an unbatched (layers * directions, H) hx, as torch's
    does, and gives what the same state given as h0 gives."""
    model, ours = _torch_rnn({"num_layers": 2, "bidirectional": True}, 3, 5, rng)
    x = rng.standard_normal((6, 3))
    h0 = rng.standard_normal((4, 5))
    out_t, hn_t = model(torch.tensor(x), hx=torch.tensor(h0))
    out, h_n = ours(x, hx=h0)
    assert out.shape == (6, 10) and h_n.shape == (4, 5)
    assert_close(out, out_t.detach().numpy(), 1e-12, 1e-13, "out")
    assert_close(h_n, hn_t.detach().numpy(), 1e-12, 1e-13, "h_n")
    np.testing.assert_array_equal(h_n, ours(x, h0)[1])


def test_linear_matches_torch(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4, dtype=torch.float64)
    ours = rnncu.Linear(6, 4, dtype="float64", backend="numpy")
    ours.load_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()})
    x = rng.standard_normal((3, 5, 6))
    x_t = torch.tensor(x, requires_grad=True)
    y_t = model(x_t)
    y = ours(x)
    assert_close(y, y_t.detach().numpy(), 1e-13, 1e-14, "y")
    dy = rng.standard_normal(y.shape)
    (y_t * torch.tensor(dy)).sum().backward()
    assert_close(ours.backward(dy), x_t.grad.numpy(), 1e-13, 1e-14, "dx")
    assert_close(ours.grads["weight"], model.weight.grad.numpy(), 1e-12, 1e-13, "weight")
    assert_close(ours.grads["bias"], model.bias.grad.numpy(), 1e-12, 1e-13, "bias")


def test_initialisation_follows_torch_bounds() -> None:
    hidden = 64
    ours = rnncu.RNN(10, hidden, num_layers=2, bidirectional=True, backend="numpy", seed=0)
    torch_shapes = {
        k: tuple(v.shape)
        for k, v in torch.nn.RNN(10, hidden, num_layers=2, bidirectional=True).state_dict().items()
    }
    assert {k: v.shape for k, v in ours.params.items()} == torch_shapes
    bound = 1 / np.sqrt(hidden)
    for name, value in ours.params.items():
        assert np.abs(value).max() <= bound, name
        # U(-b, b) has standard deviation b / sqrt(3): the draw is uniform over the interval
        assert abs(value.std() - bound / np.sqrt(3)) < 0.2 * bound / np.sqrt(3), name
