"""A generate run as a classifier: the class under which its class-conditional generator
predicts an image's rows best. ``RowGenerator.class_mse`` against each class's teacher-forced
MSE computed one class at a time, the posterior against a Gaussian likelihood written out,
the run's ``test_recognition_accuracy``, ``predict_images`` and ``rnncu predict`` on a
generate run, the classes a run was trained on (labels with gaps), and the errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from predict_output import predictions_and_table
from saved_runs import resave_checkpoint

from rnncu.checkpoint import CheckpointError, load_checkpoint
from rnncu.cli import main
from rnncu.data import ImageDataset, load_dataset, load_digits, to_sequences
from rnncu.tasks import RowGenerator, class_log_loss, class_posterior, fit_noise_variance
from rnncu.trainer import (
    evaluate_run,
    load_model,
    load_run,
    make_config,
    predict_images,
    train,
)


def small(**kw) -> dict:
    base = dict(backend="numpy", task="generate", hidden=16, epochs=2, batch_size=64, seed=3)
    return {**base, **kw}


@pytest.fixture(autouse=True)
def small_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generate run's judge (the classifier of its samples): one epoch at H = 8, as it is
    not what these tests look at."""
    from rnncu import trainer

    recipe = trainer.classifier_config
    monkeypatch.setattr(trainer, "classifier_config",
                        lambda c: dataclasses.replace(recipe(c), epochs=1, hidden=8))  # fmt: skip


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory: pytest.TempPathFactory, digits: ImageDataset) -> Path:
    """A generate run on digits: four epochs of a small model."""
    from rnncu import trainer

    recipe = trainer.classifier_config
    out = tmp_path_factory.mktemp("generative") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "classifier_config",
                      lambda c: dataclasses.replace(recipe(c), epochs=1, hidden=8))  # fmt: skip
        train(make_config(**small(epochs=4, lr=0.05)), data=digits, progress=False,
              out_dir=out, plots=False)  # fmt: skip
    return out


def _one_class_at_a_time(model: RowGenerator, rows: np.ndarray) -> np.ndarray:
    steps, n, width = rows.shape
    errors = np.empty((n, model.num_classes))
    for c in range(model.num_classes):
        predicted = model.forward(rows, np.full(n, c))
        errors[:, c] = ((predicted - rows) ** 2).sum(axis=(0, 2)) / (steps * width)
    return errors


# -- the model ------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 7, 33, 512])
def test_class_mse_is_each_class_s_next_row_mse(rng: np.random.Generator, batch_size: int) -> None:
    """Sizes odd on every axis; the copies of a batch are the same sequences, so every
    batching gives each class's own error."""
    model = RowGenerator(5, 7, 4, dtype="float64", backend="numpy", seed=int(rng.integers(99)))
    rows = rng.uniform(0, 1, (7, 33, 5))
    expected = _one_class_at_a_time(model, rows)
    passes: list[int] = []
    forward = model.forward
    model.forward = lambda r, labels: passes.append(r.shape[1]) or forward(r, labels)  # type: ignore[method-assign]
    errors = model.class_mse(rows, batch_size=batch_size)
    # batch_size bounds a pass, but for one sequence's four copies, which go together
    assert sum(passes) == 33 * 4 and max(passes) <= max(batch_size, 4)
    assert errors.shape == (33, 4) and errors.dtype == np.float64
    np.testing.assert_allclose(errors, expected, rtol=1e-12)
    assert len({tuple(row) for row in np.round(errors, 6)}) > 1  # not one value copied
    np.testing.assert_array_equal(model.predict(rows, batch_size=batch_size),
                                  expected.argmin(axis=1))  # fmt: skip


def test_classes_left_out_never_win(rng: np.random.Generator) -> None:
    model = RowGenerator(6, 9, 5, dtype="float64", backend="numpy", seed=int(rng.integers(99)))
    rows = rng.uniform(0, 1, (4, 12, 6))
    every = model.class_mse(rows)
    some = model.class_mse(rows, classes=[4, 1])  # in any order
    np.testing.assert_array_equal(np.isinf(some).any(axis=0), [True, False, True, True, False])
    np.testing.assert_allclose(some[:, [1, 4]], every[:, [1, 4]], rtol=1e-12)
    picked = model.predict(rows, classes=(1, 4))
    np.testing.assert_array_equal(picked, np.where(every[:, 1] <= every[:, 4], 1, 4))
    p = model.predict_proba(rows, 0.05, classes=[1, 4])
    assert (p[:, [0, 2, 3]] == 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)


def test_the_posterior_is_a_gaussian_likelihood_s(rng: np.random.Generator) -> None:
    """Written out: log N(x | prediction, var) summed over the pixels, a uniform prior,
    normalised over the classes."""
    model = RowGenerator(3, 5, 4, dtype="float64", backend="numpy", seed=int(rng.integers(99)))
    rows = rng.uniform(0, 1, (7, 9, 3))
    variance = 0.8
    log_likelihood = np.empty((9, 4))
    for c in range(4):
        predicted = model.forward(rows, np.full(9, c))
        log_density = -0.5 * np.log(2 * np.pi * variance) - (rows - predicted) ** 2 / (
            2 * variance)  # fmt: skip
        log_likelihood[:, c] = log_density.sum(axis=(0, 2))
    expected = np.exp(log_likelihood - log_likelihood.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    p = model.predict_proba(rows, variance)
    np.testing.assert_allclose(p, expected, rtol=1e-10)
    assert 0.05 < p.max(axis=1).min() and p.min() > 0  # a variance where none is 0 or 1
    np.testing.assert_array_equal(p.argmax(axis=1), model.predict(rows))
    # far apart: the exponent underflows for the losers, never to NaN
    sharp = class_posterior(np.array([[0.0, 1.0, np.inf], [2.0, 1e300, 1.5]]), 64, 1e-6)
    np.testing.assert_array_equal(sharp, [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def gaussian_class_errors(
    rng: np.random.Generator, n: int, pixels: int, variance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Images drawn as their class's mean plus a Gaussian noise of ``variance`` on each of
    ``pixels`` independent pixels, and each image's MSE from each class's mean: the model
    class_posterior assumes, so its posterior at ``variance`` is the exact Bayes posterior."""
    means = rng.uniform(0, 1, (5, pixels))
    labels = rng.integers(0, 5, n)
    images = means[labels] + rng.normal(0, math.sqrt(variance), (n, pixels))
    errors = ((images[:, None, :] - means[None]) ** 2).mean(axis=2)
    return errors, labels


def test_the_fitted_noise_variance_is_the_one_of_least_log_loss(rng: np.random.Generator) -> None:
    """Where the Gaussian model holds, the variance of least log-loss is the noise's own (to
    sampling error); it is the minimum of class_log_loss, the posterior's mean negative
    log-probability of the labels."""
    true_variance = float(rng.uniform(0.5, 2.0))
    errors, labels = gaussian_class_errors(rng, 4000, 16, true_variance)
    fitted = fit_noise_variance(errors, labels, 16)
    assert fitted is not None and abs(fitted / true_variance - 1) < 0.1
    best = class_log_loss(errors, labels, 16, fitted)
    for factor in (0.99, 1.01, 0.5, 2.0):
        assert class_log_loss(errors, labels, 16, fitted * factor) > best
    grid = np.geomspace(fitted / 4, fitted * 4, 801)
    losses = [class_log_loss(errors, labels, 16, v) for v in grid]
    assert abs(grid[int(np.argmin(losses))] / fitted - 1) < 0.01
    # the loss written out from the posterior
    posterior = class_posterior(errors, 16, fitted)
    expected = -np.mean(np.log(posterior[np.arange(4000), labels]))
    assert best == pytest.approx(expected, rel=1e-12)
    # pixels that are not independent (each repeated 4 times, errors unchanged): the training
    # MSE's variance counts 64 pixels where 16 carry the information, and the fit takes four
    # times the variance for it
    assert fit_noise_variance(errors, labels, 64) == pytest.approx(4 * fitted, rel=1e-9)


def test_no_finite_noise_variance_fits_where_every_image_is_right_or_none_better_than_chance(
    rng: np.random.Generator,
) -> None:
    errors = rng.uniform(1.0, 2.0, (50, 4))
    labels = errors.argmin(axis=1)
    assert fit_noise_variance(errors, labels, 64) is None  # all right: the smaller the better
    worst = errors.argmax(axis=1)
    assert fit_noise_variance(errors, worst, 64) is None  # all wrong: the uniform is best
    tied = errors.copy()
    tied[:, 0] = tied.min(axis=1)  # the own class tied for least: still no finite fit
    assert fit_noise_variance(tied, np.zeros(50, np.int64), 64) is None
    # one mistake among many right: a finite fit, and classes left out (inf) are skipped
    labels[0] = worst[0]
    errors[:, 3] = np.inf
    labels[labels == 3] = 2
    mixed = errors.copy()
    mixed[labels == 2, 2] = mixed[labels == 2, :3].min(axis=1)
    fitted = fit_noise_variance(mixed, labels, 64)
    assert fitted is not None and fitted > 0
    loss = class_log_loss(mixed, labels, 64, fitted)
    assert loss < class_log_loss(mixed, labels, 64, fitted * 1.01)
    assert loss < class_log_loss(mixed, labels, 64, fitted / 1.01)


def test_the_fit_is_the_loss_s_minimum_written_out() -> None:
    """Two classes, all labels 0: three ties (log 2 each, whatever b), two right by 1 and
    one wrong by 1. The mean loss is (3 log(1 + exp(-b)) + b) / 6 plus a constant, least at
    exp(-b) = 1/2: b = log 2, the variance pixels / (2 log 2). More zeros than not among the
    excess errors (the ties), and a class left out (inf) beside them, change nothing: the
    uniform posterior is over the classes with an error."""
    errors = np.array([[1.0, 1.0]] * 3 + [[1.0, 2.0]] * 2 + [[2.0, 1.0]])
    labels = np.zeros(6, np.int64)
    exact = 64 / (2 * math.log(2))
    assert fit_noise_variance(errors, labels, 64) == pytest.approx(exact, rel=1e-12)
    left_out = np.concatenate([errors, np.full((6, 1), np.inf)], axis=1)
    assert fit_noise_variance(left_out, labels, 64) == pytest.approx(exact, rel=1e-12)
    loss = (3 * math.log(2) + 2 * math.log(1.5) + math.log(2) + math.log(1.5)) / 6
    assert class_log_loss(left_out, labels, 64, exact) == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("scale", [2.0**-600, 2.0**600], ids=["tiny", "huge"])
def test_the_fit_scales_with_errors_of_any_size(rng: np.random.Generator, scale: float) -> None:
    """Errors times a power of two: the variance exactly times it. The bracket's product
    low * high under- or overflowed past 1e+154 or 1e-154 (a ZeroDivisionError for huge
    errors, a variance of 0.0 for tiny ones)."""
    errors = rng.uniform(1.0, 2.0, (40, 4))
    labels = errors.argmin(axis=1)
    labels[:10] = errors[:10].argmax(axis=1)
    fitted = fit_noise_variance(errors, labels, 64)
    assert fitted is not None
    assert fit_noise_variance(errors * scale, labels, 64) == fitted * scale


def _at_chance(base: list[list[float]], nudge: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``base`` under each label: exactly at chance (the mean slope at b = 0 is
    0); with ``nudge``, the first image's own error an ulp lower (a hair below 0)."""
    errors = np.tile(np.array(base), (len(base[0]), 1))
    labels = np.repeat(np.arange(len(base[0])), len(base))
    if nudge:
        errors[0, 0] = np.nextafter(errors[0, 0], -1)
    return errors, labels


@pytest.mark.parametrize(
    ("errors", "labels"),
    [
        # rounded slopes > 0 at b = 0+ where the exact one is 0: a finite variance of 1e17
        # came of a `> 0` for the `>= 0` that sends exact chance to None
        _at_chance([[0.7762508383284301, 0.2838218737224989, 0.5413361583199616],
                    [0.018895037570864193, 0.12642743909442145, 0.5835966249506752],
                    [0.8927777766845439, 0.39436875032195073, 0.10351425581042195]], False),
        # the mean slope at b = 0 a hair below 0, but the rounded slopes >= 0 at every b:
        # the search halved b to 0 and stayed there
        _at_chance([[0.9504636963259353, 0.14415961271963373, 0.9486494471372439],
                    [0.31183145201048545, 0.42332644897257565, 0.8277025938204418],
                    [0.4091991363691613, 0.5495936876730595, 0.027559113243068367]], True),
        # subnormal errors: 1 / their median is inf, and the best b lies past float64's
        # largest, where the search started and doubled forever
        (np.array([[0.0, 1e-320], [1e-320, 0.0], [0.0, 5e-321]]), np.zeros(3, np.int64)),
    ],
    ids=["at-chance", "an-ulp-below-chance", "subnormal"],
)  # fmt: skip
def test_the_fit_ends_where_float64_cannot_find_a_variance(
    monkeypatch: pytest.MonkeyPatch, errors: np.ndarray, labels: np.ndarray
) -> None:
    """None, in a bounded number of steps, where the best b rounds past float64's range."""
    from rnncu import tasks

    calls = []
    scores = tasks._scores

    def counted(excess: np.ndarray, factor: float) -> np.ndarray:
        calls.append(factor)
        # float64's exponents span 2,100 doublings: a search past that never ends
        assert len(calls) < 2500, "the search for the variance does not end"
        return scores(excess, factor)

    monkeypatch.setattr(tasks, "_scores", counted)
    assert fit_noise_variance(errors, labels, 64) is None
    assert all(0 < factor < math.inf for factor in calls)


def test_a_confident_mistake_costs_its_score_not_an_infinity() -> None:
    """The posterior of the right class underflows to 0; its log-loss is computed from the
    scores: the excess error times pixels / (2 var)."""
    errors = np.array([[0.0, 10.0], [0.0, 10.0]])
    assert class_posterior(errors, 64, 1e-3)[1, 1] == 0.0
    loss = class_log_loss(errors, np.array([0, 1]), 64, 1e-3)
    assert loss == pytest.approx((0.0 + 10.0 * 64 / 2e-3) / 2, rel=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda e: fit_noise_variance(e, [0, 1], 64), TypeError,
         r"fit_noise_variance: labels: expected a NumPy array, got list"),
        (lambda e: fit_noise_variance(e, np.array([0]), 64), ValueError,
         r"fit_noise_variance: labels: expected labels of shape \(2,\), got \(1,\)"),
        (lambda e: fit_noise_variance(e, np.array([0, 3]), 64), ValueError,
         r"fit_noise_variance: labels: expected class indices in \[0, 3\)"),
        (lambda e: fit_noise_variance(e, np.array([0, 2]), 64), ValueError,
         r"fit_noise_variance: labels: class 2 was left out \(inf error\)"),
        (lambda e: fit_noise_variance(e, np.array([0.0, 1.0]), 64), TypeError,
         r"fit_noise_variance: labels: expected integer class indices"),
        (lambda e: fit_noise_variance(e[:, :0], np.array([0, 1]), 64), ValueError,
         r"fit_noise_variance: errors: expected a non-empty \(N, C\) array"),
        (lambda e: fit_noise_variance(e, np.array([0, 1]), 0), ValueError,
         r"fit_noise_variance: pixels: expected"),
        (lambda e: class_log_loss(e, np.array([0, 1]), 64, 0.0), ValueError,
         r"class_log_loss: noise_variance: expected a number in \(0, "),
        (lambda e: class_log_loss(e * np.nan, np.array([0, 1]), 64, 1.0), ValueError,
         r"class_log_loss: errors: expected numbers with a finite one in every row"),
    ],
)  # fmt: skip
def test_the_fit_s_bad_arguments_are_named(call, error, message) -> None:
    errors = np.array([[0.1, 0.2, np.inf], [0.3, 0.1, np.inf]])
    with pytest.raises(error, match="^" + message):
        call(errors)


def test_the_posterior_of_errors_far_apart_or_a_tiny_variance_is_no_nan() -> None:
    """Errors times pixels / (2 var) past float64's range: the likeliest class still gets 1
    (it was NaN for every class, -inf - -inf)."""
    np.testing.assert_array_equal(class_posterior(np.array([[1e305, 2e305]]), 64, 1e-6),
                                  [[1.0, 0.0]])  # fmt: skip
    np.testing.assert_array_equal(class_posterior(np.array([[0.1, 0.2, np.inf]]), 64, 5e-324),
                                  [[1.0, 0.0, 0.0]])  # fmt: skip


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((np.array([0.1, 0.2]), 64, 1.0), ValueError, r"errors: expected a non-empty \(N, C\)"),
        ((np.zeros((2, 0)), 64, 1.0), ValueError, r"errors: expected a non-empty \(N, C\)"),
        ((np.array([[0.1, np.nan]]), 64, 1.0), ValueError, r"errors: expected numbers with a "
         r"finite one in every row"),
        ((np.array([[np.inf, np.inf]]), 64, 1.0), ValueError, r"errors: .*a row of infinities"),
        ((np.zeros((1, 2)), 0, 1.0), ValueError, r"pixels: expected a positive integer, got 0"),
        ((np.zeros((1, 2)), 64, 0.0), ValueError, r"noise_variance: expected a number in \(0, "
         r"inf\), got 0.0"),
        ((np.zeros((1, 2)), 64, -1.0), ValueError, r"noise_variance: .*got -1.0"),
    ],
)  # fmt: skip
def test_bad_posterior_arguments_are_named(args: tuple, error: type, message: str) -> None:
    """A negative variance made the worst class the likeliest, a zero one a bare
    ZeroDivisionError, a row without a finite error NaN."""
    with pytest.raises(error, match="class_posterior: " + message):
        class_posterior(*args)


def test_float32_errors_are_summed_in_float64(rng: np.random.Generator) -> None:
    weights = RowGenerator(8, 16, 3, dtype="float64", backend="numpy", seed=2).state_dict()
    single = RowGenerator(8, 16, 3, dtype="float32", backend="numpy", seed=2)
    single.load_state_dict({k: v.astype(np.float32) for k, v in weights.items()})
    double = RowGenerator(8, 16, 3, dtype="float64", backend="numpy", seed=2)
    double.load_state_dict(weights)
    rows = rng.uniform(0, 1, (8, 40, 8))
    errors = single.class_mse(rows.astype(np.float32))
    assert errors.dtype == np.float64
    np.testing.assert_allclose(errors, double.class_mse(rows), rtol=1e-5)
    # the float32 predictions' errors squared and summed in float64, not squared in float32;
    # predicted in the batch class_mse runs (each sequence beside its copies, one per class):
    # BLAS may round a float32 product otherwise in a batch of another size
    copies = np.repeat(rows.astype(np.float32), 3, axis=1)
    diff = single.forward(copies, np.tile(np.arange(3), 40)) - copies
    ref = (diff.astype(np.float64) ** 2).sum(axis=(0, 2)).reshape(40, 3) / 64
    np.testing.assert_allclose(errors, ref, rtol=1e-10)


@pytest.mark.parametrize(
    ("classes", "error", "message"),
    [
        ([], ValueError, r"class_mse: classes: expected a non-empty sequence of class indices"),
        ([[0, 1]], ValueError, r"class_mse: classes: expected a non-empty sequence"),
        (
            [0, 4],
            ValueError,
            r"class_mse: classes: expected class indices in \[0, 4\), got "
            r"values in \[0, 4\]",
        ),  # fmt: skip
        ([-1], ValueError, r"class_mse: classes: expected class indices in \[0, 4\)"),
        (
            [0.0, 1.0],
            TypeError,
            r"class_mse: classes: expected integer class indices, got "
            "dtype float64",
        ),  # fmt: skip
        ([2, 1, 2], ValueError, r"class_mse: classes: expected distinct classes, got \[2, 1, 2\]"),
    ],
)
def test_bad_classes_are_named(classes: list, error: type, message: str) -> None:
    model = RowGenerator(5, 7, 4, dtype="float64", backend="numpy")
    rows = np.full((3, 2, 5), 0.5)
    with pytest.raises(error, match=message):
        model.class_mse(rows, classes=classes)


def test_bad_rows_and_variances_are_named() -> None:
    model = RowGenerator(5, 7, 4, dtype="float64", backend="numpy")
    rows = np.full((3, 2, 5), 0.5)
    with pytest.raises(ValueError, match=r"class_mse: rows: expected \(T, N, 5\), rows of the "
                       r"model's width, got .*\(3, 2, 6\)"):  # fmt: skip
        model.class_mse(np.full((3, 2, 6), 0.5))
    with pytest.raises(ValueError, match=r"class_mse: rows: expected \(T, N, D\)"):
        model.predict(rows[0])
    with pytest.raises(ValueError, match=r"class_mse: rows: the sequences are empty \(T = 0"):
        model.class_mse(rows[:0])
    # named as the caller gave them, not as the RNN inside calls them ("x")
    for other in (rows.astype(np.float32), (rows * 255).astype(np.uint8)):
        with pytest.raises(TypeError, match=r"class_mse: rows: expected dtype float64 \(the "
                           rf"parameters' dtype\), got {other.dtype}"):  # fmt: skip
            model.predict(other)
    with pytest.raises(ValueError, match=r"class_mse: batch_size"):
        model.class_mse(rows, batch_size=0)
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"predict_proba: noise_variance: expected a number "
                           r"in \(0, inf\)"):  # fmt: skip
            model.predict_proba(rows, bad)
    with pytest.raises(TypeError, match=r"predict_proba: noise_variance: expected a number"):
        model.predict_proba(rows, True)


# -- a trained run --------------------------------------------------------------------------
def test_the_run_reports_how_well_its_generator_recognises(
    gen_dir: Path, digits: ImageDataset
) -> None:
    run, _ = load_run(gen_dir)
    expected = np.mean(run.model.predict(run.x_test, list(range(10))) == digits.y_test)
    metrics = json.loads((gen_dir / "metrics.json").read_text())
    assert metrics["test_recognition_accuracy"] == expected
    assert evaluate_run(gen_dir)["test_recognition_accuracy"] == expected
    # without a validation split, its probabilities take the training MSE as the variance
    variance = run.history[-1]["train_loss"]
    assert metrics["recognition_variance"] == variance
    errors = run.model.class_mse(run.x_test)
    assert metrics["test_recognition_log_loss"] == pytest.approx(
        class_log_loss(errors, digits.y_test, 64, variance), rel=1e-12
    )
    # four small epochs: below the recipe's 0.96, far above chance (0.1, sd 0.014 on 450)
    assert expected > 0.5


def test_predict_images_of_a_generate_run(
    gen_dir: Path, digits: ImageDataset, tmp_path: Path
) -> None:
    _, meta = load_checkpoint(gen_dir)
    assert meta["data"]["trained_classes"] == list(range(10))
    saved = load_model(gen_dir)
    assert saved.trained_classes == tuple(range(10))
    last = [r for r in meta["history"] if r["epoch"] == meta["epoch"]][0]
    assert saved.train_loss == saved.noise_variance == last["train_loss"]  # no validation split
    assert "recognition_variance" not in last
    result = predict_images(saved, digits.x_test)
    x = to_sequences(digits.x_test, "rows")
    errors = saved.model.class_mse(x)
    np.testing.assert_array_equal(result["mse"], errors)
    np.testing.assert_array_equal(result["classes"], errors.argmin(axis=1))
    np.testing.assert_array_equal(result["probabilities"],
                                  class_posterior(errors, 64, last["train_loss"]))  # fmt: skip
    assert result["classes"].dtype == np.int64
    # the record of the checkpoint's own epoch, not the history's last
    resave_checkpoint(gen_dir, tmp_path / "second.npz", lambda _, meta: meta.update(epoch=2))
    second = [r for r in meta["history"] if r["epoch"] == 2][0]["train_loss"]
    assert load_model(tmp_path / "second.npz").train_loss == second != saved.train_loss
    assert load_model(tmp_path / "second.npz").noise_variance == second


def test_a_run_with_a_validation_split_fits_its_recognition_s_variance(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each epoch records the noise variance that fits the validation images best (the first
    RECOGNITION_FIT_IMAGES of them: 20 here), which predict_images then takes, and the
    metrics give it with the test split's log-loss under it; without a split, the training
    MSE (test_predict_images_of_a_generate_run)."""
    from rnncu import trainer

    monkeypatch.setattr(trainer, "RECOGNITION_FIT_IMAGES", 20)
    out = tmp_path / "val"
    config = make_config(**small(epochs=3, lr=0.05, val_fraction=0.2))
    result = train(config, data=digits, progress=False, out_dir=out, plots=False)
    assert all("recognition_variance" in record for record in result.history)
    run, _ = load_run(out)
    rows = run.x_val[:, :20]
    errors = run.model.class_mse(rows)
    labels = run.y_val[:20]
    fitted = fit_noise_variance(errors, labels, 64)
    last = result.history[-1]
    assert fitted == last["recognition_variance"] != last["train_loss"]
    assert result.metrics["recognition_variance"] == fitted
    test_errors = run.model.class_mse(run.x_test)
    assert result.metrics["test_recognition_log_loss"] == pytest.approx(
        class_log_loss(test_errors, digits.y_test, 64, fitted), rel=1e-12
    )
    assert load_model(out).noise_variance == fitted
    predicted = predict_images(out, digits.x_test[:30])
    np.testing.assert_array_equal(
        predicted["probabilities"], class_posterior(predicted["mse"], 64, fitted)
    )
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert header.index("recognition_variance") == header.index("val_mse") + 1
    assert evaluate_run(out)["recognition_variance"] == fitted


def test_classes_a_run_never_saw_are_not_guessed(
    tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    """Labels {1, 4, 6}: seven outputs, three of them trained; the four others' one-hot
    inputs kept their initial weights, and are never a guess."""

    def only(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.isin(y, [1, 4, 6])
        return x[keep], y[keep]

    x_train, y_train = only(digits.x_train, digits.y_train)
    x_test, y_test = only(digits.x_test, digits.y_test)
    np.savez(tmp_path / "gaps.npz", x=x_train, y=y_train, x_test=x_test, y_test=y_test)
    out = tmp_path / "gaps"
    config = make_config(**small(epochs=3, dataset=str(tmp_path / "gaps.npz")))
    result = train(config, progress=False, out_dir=out, plots=False)
    assert load_checkpoint(out)[1]["data"]["trained_classes"] == [1, 4, 6]
    saved = load_model(out)
    assert saved.trained_classes == (1, 4, 6) and saved.num_classes == 7
    assert saved.num_classes == 7  # the largest label + 1
    found = predict_images(saved, x_test)
    assert set(found["classes"].tolist()) <= {1, 4, 6}
    assert np.isinf(found["mse"][:, [0, 2, 3, 5]]).all()
    assert (found["probabilities"][:, [0, 2, 3, 5]] == 0).all()
    # an untrained class can predict the rows better: it is not a candidate, so not guessed
    sequences = to_sequences(x_test, "rows")
    trained = saved.model.class_mse(sequences, [1, 4, 6])
    np.testing.assert_array_equal(found["mse"][:, [1, 4, 6]], trained[:, [1, 4, 6]])
    # all seven classes in a batch: BLAS may round float32 otherwise in a batch of 7 copies
    every = saved.model.class_mse(sequences)
    np.testing.assert_allclose(found["mse"][:, [1, 4, 6]], every[:, [1, 4, 6]], rtol=1e-5)
    accuracy = np.mean(found["classes"] == y_test)
    assert result.metrics["test_recognition_accuracy"] == accuracy
    # the command line lists the trained classes only, and writes valid JSON (no Infinity)
    np.save(tmp_path / "four.npy", x_test[:4])
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "four.npy"),
                 "--top", "5"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "Infinity" not in text
    records = json.loads(text)["predictions"]
    # the four alone, as the command line runs them: BLAS may round float32 otherwise in a
    # batch of another size
    four = predict_images(saved, x_test[:4])
    np.testing.assert_allclose(four["mse"], found["mse"][:4], rtol=1e-5)
    for row, record in enumerate(records):
        assert [t["class"] for t in record["top"]] == sorted(
            [1, 4, 6], key=lambda k: four["mse"][row, k])  # fmt: skip
        assert record["class"] == four["classes"][row] == record["top"][0]["class"]
        assert record["mse"] == four["mse"][row, record["class"]]


def test_an_older_checkpoint_takes_every_class(gen_dir: Path, tmp_path: Path,
                                               digits: ImageDataset) -> None:  # fmt: skip
    """Written before runs recorded their classes: every class is a candidate."""
    resave_checkpoint(
        gen_dir, tmp_path / "old.npz", lambda _, meta: meta["data"].pop("trained_classes")
    )
    saved = load_model(tmp_path / "old.npz")
    assert saved.trained_classes == tuple(range(10))
    np.testing.assert_array_equal(predict_images(saved, digits.x_test[:50])["mse"],
                                  predict_images(gen_dir, digits.x_test[:50])["mse"])  # fmt: skip


@pytest.mark.parametrize(
    "classes",
    ["4", [], [0, 10], [3, 3], [5, 2], [True], [1.0]],
)
def test_a_corrupt_class_list_is_refused(gen_dir: Path, tmp_path: Path, classes: object) -> None:
    resave_checkpoint(
        gen_dir, tmp_path / "bad.npz", lambda _, meta: meta["data"].update(trained_classes=classes)
    )
    with pytest.raises(
        CheckpointError,
        match=r"bad.npz: metadata field 'data.trained_classes':"
        r" expected distinct ascending class indices in \[0, num_classes\)",
    ):
        load_model(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    ("key", "loss"), [("train_loss", None), ("train_loss", 0.0), ("recognition_variance", -1.0)]
)
def test_a_run_without_a_noise_variance_is_named(
    gen_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture,
    key: str, loss: float | None,
) -> None:  # fmt: skip
    """The variance comes from the checkpoint's epoch: the one fitted on a validation split
    (none here: a corrupt one given), else the training MSE (none, or 0)."""

    def drop_the_loss(_: object, meta: dict[str, Any]) -> None:
        if loss is None:
            meta["history"] = [r for r in meta["history"] if r["epoch"] != meta["epoch"]]
        else:
            meta["history"][-1][key] = loss

    resave_checkpoint(gen_dir, tmp_path / "bare.npz", drop_the_loss)
    with pytest.raises(ValueError, match=r"bare.npz: records no positive noise variance for "
                       r"its epoch \(fitted on a validation split, else the training MSE\), which "
                       rf"a generate run's recognition takes \(got {loss}\)"):  # fmt: skip
        predict_images(tmp_path / "bare.npz", digits.x_test[:3])
    np.save(tmp_path / "x.npy", digits.x_test[:3])
    assert main(["predict", "--checkpoint", str(tmp_path / "bare.npz"),
                 str(tmp_path / "x.npy")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnncu: error: ") and "records no positive noise variance" in err
    assert "\n" not in err


def test_the_command_line_on_a_generate_run(
    gen_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "three.npy", digits.x_test[:3])
    assert main(["predict", "--checkpoint", str(gen_dir), str(tmp_path / "three.npy"),
                 "--top", "2"]) == 0  # fmt: skip
    records = json.loads(capsys.readouterr().out)["predictions"]
    expected = predict_images(gen_dir, digits.x_test[:3])
    for row, record in enumerate(records):
        cls = int(expected["classes"][row])
        figures = {"class": cls, "probability": expected["probabilities"][row, cls],
                   "mse": expected["mse"][row, cls]}  # fmt: skip
        assert {k: record[k] for k in figures} == figures
        assert record["top"][0] == figures and len(record["top"]) == 2
        second = record["top"][1]
        assert second["mse"] == np.sort(expected["mse"][row])[1] >= figures["mse"]


def test_a_trained_class_whose_error_overflowed_prints_as_null(
    gen_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """An error that overflowed to inf (broken weights) printed as ``Infinity``, which is not
    JSON: null there, ``inf`` in the table; the --top count is the trained classes', not
    the finite errors of the first image."""
    from rnncu import trainer

    real = trainer.predict_images

    def overflowing(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        result = real(*args, **kwargs)
        result["mse"][0, 9] = np.inf  # class 9 of the first image
        result["probabilities"][0, 9] = 0.0
        return result

    monkeypatch.setattr(trainer, "predict_images", overflowing)
    np.save(tmp_path / "two.npy", digits.x_test[:2])
    args = ["predict", "--checkpoint", str(gen_dir), str(tmp_path / "two.npy"), "--top", "10"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out
    records = json.loads(out)["predictions"]
    assert [len(r["top"]) for r in records] == [10, 10]
    assert records[0]["top"][-1] == {"class": 9, "probability": 0.0, "mse": None}
    assert all(t["mse"] is not None for t in records[1]["top"])
    assert main([*args, "--format", "table"]) == 0
    first = capsys.readouterr().out.splitlines()[1]
    assert first.endswith("9 (0.0000, mse inf)")


def test_another_dataset_is_recognised_among_the_run_s_classes(
    gen_dir: Path, digits: ImageDataset, tmp_path: Path
) -> None:
    """``evaluate --dataset OTHER``: the candidates are the classes the run was trained on
    (its checkpoint's), not those OTHER's training labels hold (here three of the ten), which
    would make the recognition a three-way choice."""
    train_kept = np.isin(digits.y_train, [1, 4, 6])
    test_kept = np.isin(digits.y_test, [1, 4, 6])
    x_test, y_test = digits.x_test[test_kept], digits.y_test[test_kept]
    np.savez(tmp_path / "some.npz", x=digits.x_train[train_kept], y=digits.y_train[train_kept],
             x_test=x_test, y_test=y_test)  # fmt: skip
    metrics = evaluate_run(gen_dir, dataset=str(tmp_path / "some.npz"))
    expected = np.mean(predict_images(gen_dir, x_test)["classes"] == y_test)
    assert metrics["test_recognition_accuracy"] == expected


def test_a_resumed_run_keeps_the_classes_it_was_trained_on(
    gen_dir: Path, digits: ImageDataset, tmp_path: Path
) -> None:
    """Resumed on other images (as many: the steps agree) whose labels lack class 9: the
    run was trained on it all the same, and its checkpoint still says so."""
    np.savez(tmp_path / "nine.npz", x=digits.x_train, y=np.where(digits.y_train == 9, 8,
             digits.y_train), x_test=digits.x_test, y_test=digits.y_test)  # fmt: skip
    relabelled = load_dataset(str(tmp_path / "nine.npz"))
    assert relabelled.trained_classes == list(range(9))
    with pytest.warns(UserWarning, match="not those the run was trained on"):
        train(make_config(epochs=5), resume=gen_dir, data=relabelled, out_dir=tmp_path / "on",
              progress=False, plots=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "on")[1]["data"]["trained_classes"] == list(range(10))
    assert load_model(tmp_path / "on").trained_classes == tuple(range(10))


def test_a_resumed_run_adds_the_classes_it_trains_on(
    gen_dir: Path, digits: ImageDataset, tmp_path: Path
) -> None:
    """A checkpoint that says it never saw class 9, resumed on the digits (all ten): the
    classes it trains on from then on are added to its own."""
    resave_checkpoint(
        gen_dir,
        tmp_path / "nine.npz",
        lambda _, meta: meta["data"].update(trained_classes=list(range(9))),
    )
    assert load_model(tmp_path / "nine.npz").trained_classes == tuple(range(9))
    train(make_config(epochs=5), resume=tmp_path / "nine.npz", data=digits,
          out_dir=tmp_path / "on", progress=False, plots=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "on")[1]["data"]["trained_classes"] == list(range(10))


def test_a_run_recognises_among_the_classes_its_checkpoint_names(
    gen_dir: Path, digits: ImageDataset, tmp_path: Path
) -> None:
    """evaluate_run takes the candidates from the checkpoint (here edited to three of the
    ten), as predict_images does, not every class of the model."""
    resave_checkpoint(
        gen_dir,
        tmp_path / "three.npz",
        lambda _, meta: meta["data"].update(trained_classes=[1, 4, 6]),
    )
    three = np.mean(predict_images(tmp_path / "three.npz", digits.x_test)["classes"]
                    == digits.y_test)  # fmt: skip
    assert three != np.mean(predict_images(gen_dir, digits.x_test)["classes"] == digits.y_test)
    with pytest.warns(UserWarning, match="no classifier that judges the samples"):
        metrics = evaluate_run(tmp_path / "three.npz")  # copied without its judge
    assert metrics["test_recognition_accuracy"] == three


def test_no_test_recognition_log_loss_without_a_variance_or_a_trained_class(
    gen_dir: Path, digits: ImageDataset, tmp_path: Path
) -> None:
    """The metrics leave test_recognition_log_loss out (None) where the checkpoint's epoch
    records no positive variance (a training MSE of 0), or where no test image is of a class
    the run was trained on (evaluate --dataset on others: each has probability 0), instead of
    failing in class_log_loss."""
    resave_checkpoint(
        gen_dir, tmp_path / "zero.npz", lambda _, meta: meta["history"][-1].update(train_loss=0.0)
    )
    with pytest.warns(UserWarning, match="no classifier that judges the samples"):
        metrics = evaluate_run(tmp_path / "zero.npz")
    assert metrics["recognition_variance"] == 0.0
    assert metrics["test_recognition_log_loss"] is None
    assert (
        metrics["test_recognition_accuracy"] == evaluate_run(gen_dir)["test_recognition_accuracy"]
    )
    # a variance so small that pixels / (2 variance) overflows: a mistake's score is inf,
    # which metrics.json cannot hold (the run gets some test images wrong)
    assert metrics["test_recognition_accuracy"] < 1
    resave_checkpoint(
        gen_dir,
        tmp_path / "tiny.npz",
        lambda _, meta: meta["history"][-1].update(train_loss=1e-310),
    )
    with pytest.warns(UserWarning, match="no classifier that judges the samples"):
        metrics = evaluate_run(tmp_path / "tiny.npz")
    assert metrics["recognition_variance"] == 1e-310
    assert metrics["test_recognition_log_loss"] is None
    resave_checkpoint(
        gen_dir,
        tmp_path / "three.npz",
        lambda _, meta: meta["data"].update(trained_classes=[1, 4, 6]),
    )
    others = ~np.isin(digits.y_test, [1, 4, 6])
    np.savez(tmp_path / "others.npz", x=digits.x_train, y=digits.y_train,
             x_test=digits.x_test[others], y_test=digits.y_test[others])  # fmt: skip
    with pytest.warns(UserWarning, match="no classifier that judges the samples"):
        metrics = evaluate_run(tmp_path / "three.npz", dataset=str(tmp_path / "others.npz"))
    assert metrics["test_recognition_accuracy"] == 0.0
    assert metrics["test_recognition_log_loss"] is None
    last = load_checkpoint(gen_dir)[1]["history"][-1]
    assert metrics["recognition_variance"] == last["train_loss"]


def test_an_older_run_on_its_own_images_takes_their_classes(
    tmp_path: Path, digits: ImageDataset
) -> None:
    """A checkpoint without trained_classes resumed on the images it was trained on (the
    digest says so): their classes, the gaps left out, not every class of the model."""
    keep = np.isin(digits.y_train, [1, 4, 6])
    kept_test = np.isin(digits.y_test, [1, 4, 6])
    np.savez(tmp_path / "gaps.npz", x=digits.x_train[keep], y=digits.y_train[keep],
             x_test=digits.x_test[kept_test], y_test=digits.y_test[kept_test])  # fmt: skip
    config = make_config(**small(epochs=1, dataset=str(tmp_path / "gaps.npz")))
    train(config, progress=False, out_dir=tmp_path / "gaps", plots=False)
    resave_checkpoint(
        tmp_path / "gaps", tmp_path / "old.npz", lambda _, meta: meta["data"].pop("trained_classes")
    )
    train(make_config(epochs=2), resume=tmp_path / "old.npz", out_dir=tmp_path / "on",
          progress=False, plots=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "on")[1]["data"]["trained_classes"] == [1, 4, 6]


def test_the_command_line_ranks_a_generate_run_s_classes_by_their_errors(
    gen_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Probabilities that underflow to 0 tie; their errors still rank them (by index, class
    1 would come before class 2)."""
    from rnncu import trainer

    found = {
        "classes": np.array([0]),
        "probabilities": np.array([[1.0, 0.0, 0.0, 0.0]]),
        "mse": np.array([[0.01, 9.0, 3.0, np.inf]]),
    }
    monkeypatch.setattr(trainer, "predict_images", lambda saved, images: found)
    real = trainer.load_model  # a run of four classes, class 3 never trained (inf)
    monkeypatch.setattr(trainer, "load_model", lambda *a, **k: dataclasses.replace(
        real(*a, **k), trained_classes=(0, 1, 2)))  # fmt: skip
    np.save(tmp_path / "one.npy", digits.x_test[:1])
    assert main(["predict", "--checkpoint", str(gen_dir), str(tmp_path / "one.npy"),
                 "--top", "4"]) == 0  # fmt: skip
    (record,) = json.loads(capsys.readouterr().out)["predictions"]
    assert [t["class"] for t in record["top"]] == [0, 2, 1]


def test_the_command_line_s_table_of_a_generate_run(
    gen_dir: Path, tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "two.npy", digits.x_test[:2])
    command = ["predict", "--checkpoint", str(gen_dir), str(tmp_path / "two.npy"), "--top", "2"]
    records, lines = predictions_and_table(command, capsys)
    assert lines[0].split() == ["file", "index", "class", "probability", "mse", "top"]
    assert len(records) == 2
    for line, record in zip(lines[1:], records, strict=True):
        assert line.split()[2:5] == [
            str(record["class"]),
            f"{record['probability']:.4f}",
            f"{record['mse']:.4f}",
        ]
        assert line.endswith(", ".join(
            f"{t['class']} ({t['probability']:.4f}, mse {t['mse']:.4f})" for t in record["top"]
        ))  # fmt: skip
