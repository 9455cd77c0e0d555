"""Task models: gradients of the whole model (RNN + head + loss) against finite differences in
float64, the generator's teacher-forcing inputs, sampling and completion."""

from __future__ import annotations

import numpy as np
import pytest

from rnncu.tasks import RowGenerator, SequenceClassifier, build_model, generator_inputs


def check_model_gradients(model, loss_fn, eps: float = 1e-6) -> None:
    """Every parameter's gradient from ``loss_fn`` (which runs train_step) against central
    differences of the loss, on a few entries per parameter."""
    loss_fn()
    grads = {(i, k): g.copy() for i, m in enumerate(model.modules) for k, g in m.grads.items()}
    rng = np.random.default_rng(0)
    for (i, name), grad in grads.items():
        param = model.modules[i].params[name]
        for flat in rng.choice(param.size, size=min(6, param.size), replace=False):
            idx = np.unravel_index(flat, param.shape)
            old = param[idx]
            param[idx] = old + eps
            plus = float(loss_fn())
            param[idx] = old - eps
            minus = float(loss_fn())
            param[idx] = old
            numeric = (plus - minus) / (2 * eps)
            # float64 central differences with eps 1e-6: truncation error ~eps^2, rounding
            # ~1e-16 / eps, both far below 1e-9 for these O(1e-2) gradients
            assert abs(grad[idx] - numeric) <= 1e-9 + 1e-6 * abs(numeric), (name, idx)


@pytest.mark.parametrize("layers", [1, 2])
def test_classifier_gradients(rng: np.random.Generator, layers: int) -> None:
    model = SequenceClassifier(
        3, 5, 4, layers=layers, init="orthogonal", seed=1, dtype="float64", backend="numpy"
    )
    x = rng.standard_normal((6, 7, 3))
    y = rng.integers(0, 4, size=7)
    check_model_gradients(model, lambda: model.train_step(x, y)[0])
    logits = model.forward(x)
    assert logits.shape == (7, 4)
    _, correct = model.train_step(x, y)
    assert int(correct) == int(np.sum(np.argmax(logits, axis=1) == y))


def test_generator_gradients(rng: np.random.Generator) -> None:
    model = RowGenerator(4, 6, 3, layers=2, seed=2, dtype="float64", backend="numpy")
    rows = rng.random((5, 8, 4))
    labels = rng.integers(0, 3, size=8)
    check_model_gradients(model, lambda: model.train_step(rows, labels)[0])


def test_generator_inputs() -> None:
    rows = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) + 1
    labels = np.array([2, 0, 1])
    inputs = generator_inputs(rows, labels, 3)
    assert inputs.shape == (2, 3, 5)
    np.testing.assert_array_equal(inputs[0, :, :2], 0)  # no row above the first
    np.testing.assert_array_equal(inputs[1, :, :2], rows[0])
    for t in range(2):
        np.testing.assert_array_equal(inputs[t, :, 2:], np.eye(3)[labels])


def test_sampling_and_completion() -> None:
    model = RowGenerator(4, 8, 3, seed=0, backend="numpy")
    labels = np.array([0, 1, 2, 2])
    images = model.sample(labels, 6, noise=0.1, rng=5)
    assert images.shape == (4, 6, 4) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, model.sample(labels, 6, noise=0.1, rng=5))
    mean = model.sample(labels, 6)
    np.testing.assert_array_equal(mean[2], mean[3])  # no noise: same class, same image
    top = np.random.default_rng(0).random((4, 2, 4)).astype(np.float32)
    done = model.sample(labels, 6, top_rows=top)
    np.testing.assert_array_equal(done[:, :2], top)
    # the continuation is what teacher forcing predicts for row 2 from the given rows
    forced = model.forward(np.concatenate([top, done[:, 2:]], axis=1).transpose(1, 0, 2), labels)
    np.testing.assert_allclose(done[:, 2], np.clip(forced[2], 0, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="top_rows"):
        model.sample(labels, 6, top_rows=top[:, :, :3])
    # given rows were copied into the "[0, 1]" images unchecked (7.0 came back as 7.0)
    for bad, shown in ((7.0, "max 7.0"), (-0.5, "min -0.5"), (np.nan, "nan")):
        outside = top.copy()
        outside[1, 0, 2] = bad
        with pytest.raises(ValueError, match=rf"top_rows: expected values in \[0, 1\].*{shown}"):
            model.sample(labels, 6, top_rows=outside)
    with pytest.raises(TypeError, match="top_rows: expected real pixel values, got <U"):
        model.sample(labels, 6, top_rows=top.astype(str))
    assert model.rnn.training and model.head.training  # sampling restored the mode


def test_task_model_state_round_trip_and_errors() -> None:
    """Keys are "<module>.<param>"; a missing one was a bare KeyError, and a bad head entry
    left the RNN already overwritten."""
    model = SequenceClassifier(3, 5, 4, seed=1, backend="numpy")
    other = SequenceClassifier(3, 5, 4, seed=2, backend="numpy")
    assert model.eval() is model and not model.rnn.training and not model.head.training
    assert model.train() is model and model.rnn.training
    before = model.state_dict()
    assert set(before) == set(model.param_shapes()) and "head.weight" in before
    model.load_state_dict(other.state_dict())
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value)
    model.load_state_dict(before)
    missing = {k: v for k, v in other.state_dict().items() if k != "rnn.weight_hh_l0"}
    with pytest.raises(ValueError, match=r"missing \['rnn.weight_hh_l0'\]"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected \['rnn.extra'\]"):
        model.load_state_dict({**other.state_dict(), "rnn.extra": np.ones(2)})
    bad_head = {**other.state_dict(), "head.weight": np.ones((4, 6))}
    with pytest.raises(ValueError, match=r"state\['head.weight'\]: expected shape \(4, 5\)"):
        model.load_state_dict(bad_head)
    for key, value in before.items():  # the RNN's part, valid, was not loaded either
        np.testing.assert_array_equal(model.state_dict()[key], value)
    # a diverged model (NaN weights), the usual reason to load: still nothing changes, and
    # the error names the caller's key (a rollback through load_state_dict refused the NaN)
    model.rnn.params["weight_hh_l0"][...] = np.nan
    diverged = model.state_dict()
    with pytest.raises(ValueError, match=r"^state\['head.weight'\]: expected finite values"):
        model.load_state_dict({**other.state_dict(), "head.weight": np.full((4, 5), np.inf)})
    for key, value in diverged.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)


def test_task_models_name_their_own_arguments() -> None:
    """Errors name the task model's arguments (num_classes, hidden, width, steps), not those
    of the layers inside (out_features, hidden_size), and NumPy integers are accepted."""
    for build, name, error in [
        (lambda: SequenceClassifier(8, 16, 0, backend="numpy"), "num_classes", ValueError),
        (lambda: SequenceClassifier(8, 16, 2.5, backend="numpy"), "num_classes", TypeError),
        (lambda: SequenceClassifier(8, 0, 3, backend="numpy"), "hidden", ValueError),
        (lambda: RowGenerator(0, 8, 3, backend="numpy"), "width", ValueError),
        (lambda: RowGenerator(4, 8, 0, backend="numpy"), "num_classes", ValueError),
    ]:
        with pytest.raises(error, match=rf"^{name}: expected a positive integer"):
            build()
    model = RowGenerator(4, 8, np.int64(3), seed=np.int64(1), backend="numpy")
    labels = np.array([0, 2])
    np.testing.assert_array_equal(model.sample(labels, np.int64(5)), model.sample(labels, 5))
    for steps, error in ((0, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match=r"^sample: steps: expected a positive integer"):
            model.sample(labels, steps)


def test_generator_metrics_baseline() -> None:
    model = RowGenerator(2, 4, 2, seed=0, backend="numpy")
    rows = np.array([[[1.0, 0.0]], [[1.0, 1.0]]], dtype=np.float32)  # (T=2, N=1, W=2)
    res = model.evaluate(rows, np.array([0]))
    # baseline: row 0 predicted as zeros (err 1), row 1 as row 0 (err 1): 2 / 4 elements
    assert res["baseline_mse"] == pytest.approx(0.5)


def test_build_model_rejects_unknown_task() -> None:
    with pytest.raises(ValueError, match="task"):
        build_model("segment", (8, 8), 10, 4, 1, "tanh", "torch", 0, backend="numpy")


def test_generator_rejects_bad_labels() -> None:
    rows = np.zeros((4, 2, 3), np.float32)
    # -1 would set the last column's one-hot, 1.7 would be truncated to class 1
    expected = r"expected class indices in \[0, 3\), got values in"
    with pytest.raises(ValueError, match=rf"generator_inputs: labels: {expected} \[-1, 0\]"):
        generator_inputs(rows, np.array([0, -1]), 3)
    with pytest.raises(ValueError, match=r"generator_inputs: labels: .* got values in \[0, 3\]"):
        generator_inputs(rows, np.array([0, 3]), 3)
    with pytest.raises(TypeError, match="generator_inputs: labels: expected integer class"):
        generator_inputs(rows, np.array([0.0, 1.0]), 3)
    model = RowGenerator(3, 4, 3, seed=0, backend="numpy")
    with pytest.raises(TypeError, match="sample: labels: expected integer class indices, got"):
        model.sample(np.array([1.7]), 4)
    with pytest.raises(ValueError, match=rf"sample: labels: {expected} \[5, 5\]"):
        model.sample(np.array([5]), 4)
    with pytest.raises(ValueError, match=r"sample: noise: expected a number in \[0, inf\)"):
        model.sample(np.array([1]), 4, noise=-1.0)
    for not_a_number in (True, "0.1"):
        with pytest.raises(TypeError, match="sample: noise: expected a number, got"):
            model.sample(np.array([1]), 4, noise=not_a_number)
    # NumPy's scalars are numbers: the same draw as the float
    drawn = model.sample(np.array([1]), 4, noise=np.float32(0.25), rng=3)
    np.testing.assert_array_equal(drawn, model.sample(np.array([1]), 4, noise=0.25, rng=3))
    # a noise beyond float32's range saturates every drawn pixel at 0 or 1, as it did before
    # the casts refused overflow (a draw is clipped to the dtype's range first)
    wild = model.sample(np.array([1, 2]), 4, noise=1e39, rng=3)
    assert set(np.unique(wild)) <= {0.0, 1.0} and wild.shape == (2, 4, 3)


def test_task_models_name_their_bad_arguments(rng: np.random.Generator) -> None:
    """Each had failed inside the batch loop or NumPy with a message naming no argument
    (``range() arg 3 must not be zero``, ``need at least one array to concatenate``,
    ``x: the batch is empty``)."""
    classifier = SequenceClassifier(4, 5, 3, backend="numpy", dtype="float64", seed=0)
    generator = RowGenerator(4, 5, 3, backend="numpy", dtype="float64", seed=0)
    x, y = rng.random((6, 10, 4)), rng.integers(0, 3, 10)
    cases = [
        (lambda: classifier.evaluate(x, y, batch_size=0), "evaluate: batch_size: expected a"),
        (lambda: classifier.evaluate(x, y, batch_size=2.5), "evaluate: batch_size: expected"),
        (lambda: classifier.evaluate(x[:, :0], y[:0]), "evaluate: x: the split is empty"),
        (
            lambda: classifier.evaluate(x, y[:3]),
            r"evaluate: y: expected \(10,\), one label per sequence of x \(T, N, D\), got "
            r"numpy.ndarray int64 \(3,\)$",
        ),
        # batch-first x, its labels fitting the first axis: the message says what to look at
        (
            lambda: classifier.evaluate(x.transpose(1, 0, 2), y),
            r"evaluate: y: expected \(6,\), one label per sequence of x \(T, N, D\), got "
            r"numpy.ndarray int64 \(10,\); x \(10, 6, 4\) reads as T = 10 steps of N = 6: is "
            r"it batch-first \(N, T, D\)\? The task models take time-major",
        ),
        (
            lambda: generator.evaluate(x.transpose(1, 0, 2), y),
            r"evaluate: labels: expected \(6,\), one label per sequence of rows .*; rows "
            r"\(10, 6, 4\) reads as T = 10 steps of N = 6: is it batch-first",
        ),
        (lambda: classifier.evaluate(x.tolist(), y), r"evaluate: x: expected \(T, N, D\)"),
        (lambda: classifier.predict(x[:, 0]), r"predict: x: expected \(T, N, D\), got numpy"),
        (lambda: classifier.predict(x, batch_size=-1), "predict: batch_size: expected a posi"),
        (lambda: generator.evaluate(x[:, :0], y[:0]), "evaluate: rows: the split is empty"),
        (lambda: generator.train_step(x[:, 0], y), r"generator_inputs: rows: expected \(T, B"),
        (lambda: generator_inputs(x, y, 0), "generator_inputs: num_classes: expected a posi"),
        (lambda: generator.sample(np.array([], int), 3), "sample: labels: expected at least"),
        (lambda: generator.sample(y[:2], 3, rng=-1), "sample: rng: expected a NumPy Generator"),
        (lambda: generator.sample(y[:2], 3, rng=1.5), "sample: rng: expected a NumPy Generator"),
        (lambda: generator.sample(y[:2], 3, rng="x"), "sample: rng: expected a NumPy Generator"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, TypeError), match="^" + message):
            call()
    # seeds as NumPy takes them, sequences too (the trainer's own are [seed, 3])
    labels = y[:2]
    for seed in ([1, 2], np.random.SeedSequence(4), np.array([1, 2])):
        drawn = generator.sample(labels, 3, noise=0.1, rng=seed)
        again = generator.sample(labels, 3, noise=0.1, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(drawn, again)
    # batches that do not divide the split still cover it
    whole = classifier.evaluate(x, y)
    assert classifier.evaluate(x, y, batch_size=3)["loss"] == pytest.approx(whole["loss"])
    np.testing.assert_array_equal(classifier.predict(x, batch_size=4), whole["predictions"])


@pytest.mark.parametrize("seq_shape", [8, None, (6,), (6, 4, 2)])
def test_build_model_names_a_bad_seq_shape(seq_shape) -> None:
    with pytest.raises(TypeError, match=r"^seq_shape: expected \(T, D\), got"):
        build_model("classify", seq_shape, 3, 4, 1, "tanh", "torch", 0, backend="numpy")
    for good in ((6, 4), [6, 4], np.array([6, 4])):
        model = build_model("classify", good, 3, 5, 1, "tanh", "torch", 0, backend="numpy")
        assert model.rnn.input_size == 4


def test_classifier_evaluate_is_the_mean_cross_entropy_and_accuracy(
    rng: np.random.Generator,
) -> None:
    """Against the formulas on the whole split's logits, in batches that do not divide it."""
    model = SequenceClassifier(3, 6, 4, seed=2, dtype="float64", backend="numpy")
    x = rng.standard_normal((5, 11, 3))
    y = rng.integers(0, 4, size=11)
    res = model.evaluate(x, y, batch_size=4)
    logits = model.forward(x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert res["loss"] == pytest.approx(-np.mean(logp[np.arange(11), y]), rel=1e-12)
    np.testing.assert_array_equal(res["predictions"], np.argmax(logits, axis=1))
    assert res["accuracy"] == pytest.approx(np.mean(np.argmax(logits, axis=1) == y))


def test_generator_evaluate_is_the_next_row_mse(rng: np.random.Generator) -> None:
    model = RowGenerator(4, 6, 3, seed=3, dtype="float64", backend="numpy")
    rows = rng.random((5, 7, 4))
    labels = rng.integers(0, 3, size=7)
    res = model.evaluate(rows, labels, batch_size=3)
    pred = model.forward(rows, labels)
    assert res["mse"] == pytest.approx(np.mean((pred - rows) ** 2), rel=1e-12)
    above = np.concatenate([np.zeros_like(rows[:1]), rows[:-1]])
    assert res["baseline_mse"] == pytest.approx(np.mean((rows - above) ** 2), rel=1e-12)


def test_sampling_keeps_evaluation_mode_and_refuses_too_many_given_rows(
    rng: np.random.Generator,
) -> None:
    model = RowGenerator(4, 8, 3, seed=0, backend="numpy").eval()
    labels = rng.integers(0, 3, size=3)
    model.sample(labels, 6, noise=0.1, rng=1)
    assert not model.rnn.training and not model.head.training  # not switched to training
    top = rng.random((3, 7, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^top_rows: 7 rows given but the image has 6"):
        model.sample(labels, 6, top_rows=top)
