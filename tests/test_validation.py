"""A validation split held out of the training images (``val_fraction``), and the early stop
that watches it (``patience``): the split, what is trained on, the figures recorded, the stop,
resuming a stopped run, the command line and the plots."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from saved_runs import resave_checkpoint
from test_trainer import small_judge

from rnncu import plots, trainer
from rnncu.checkpoint import load_checkpoint
from rnncu.cli import main
from rnncu.data import (
    VALIDATION_SEED,
    ImageDataset,
    load_dataset,
    load_digits,
    split_stratified,
    to_sequences,
    validation_split,
)
from rnncu.trainer import (
    BEST_NAME,
    EARLY_STOP_NEWS,
    JUDGE_DIR,
    TrainConfig,
    TrainingDiverged,
    _postfix,
    _Run,
    classifier_config,
    evaluate_run,
    load_run,
    make_config,
    train,
)

SMALL = ["--hidden", "16", "--layers", "1", "--batch-size", "64", "--backend", "numpy"]


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


def small(**kw) -> TrainConfig:
    base = dict(backend="numpy", hidden=16, layers=1, epochs=2, batch_size=64, seed=3)
    return make_config(**{**base, **kw})


def stopping(**kw) -> TrainConfig:
    """A recipe whose validation loss stops falling within a few epochs on digits (measured:
    the 12th epoch ends it, the 10th being the best)."""
    base = dict(hidden=32, lr=0.01, epochs=30, val_fraction=0.2, patience=2)
    return small(**{**base, **kw})


def rows_of(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


# -- the split ------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_the_split_is_stratified_disjoint_and_whole(digits: ImageDataset, fraction: float) -> None:
    x_tr, x_val, y_tr, y_val = validation_split(digits, fraction)
    n = digits.y_train.shape[0]
    assert y_val.shape[0] == math.ceil(fraction * n) and y_tr.shape[0] + y_val.shape[0] == n
    assert x_tr.shape[1:] == x_val.shape[1:] == digits.x_train.shape[1:]
    # every training image lands on exactly one side, with its own label
    assert not rows_of(x_tr) & rows_of(x_val)
    assert rows_of(x_tr) | rows_of(x_val) == rows_of(digits.x_train)
    label_of = {img.tobytes(): y for img, y in zip(digits.x_train, digits.y_train, strict=True)}
    for images, labels in ((x_tr, y_tr), (x_val, y_val)):
        assert [label_of[img.tobytes()] for img in images] == labels.tolist()
    # stratified: each class's share of the validation images is its share of the split
    whole = np.bincount(digits.y_train) / n
    held = np.bincount(y_val, minlength=10) / y_val.shape[0]
    assert np.abs(held - whole).max() < 2 / y_val.shape[0] + 1e-12
    again = validation_split(digits, fraction)
    for first, second in zip((x_tr, x_val, y_tr, y_val), again, strict=True):
        np.testing.assert_array_equal(first, second)


def test_the_split_is_the_same_for_every_training_seed(digits: ImageDataset) -> None:
    held = []
    for seed in (0, 7):
        run = _Run(small(seed=seed, epochs=1, val_fraction=0.3), digits)
        held.append((run.backend.to_numpy(run.x_val), run.backend.to_numpy(run.y_val)))
    np.testing.assert_array_equal(held[0][0], held[1][0])
    np.testing.assert_array_equal(held[0][1], held[1][1])
    _, x_val, _, y_val = validation_split(digits, 0.3)
    np.testing.assert_array_equal(held[0][0], to_sequences(x_val, "rows"))
    np.testing.assert_array_equal(held[0][1], y_val)
    assert VALIDATION_SEED == 0
    # drawn with that seed, so that a run saved by another version resumes on its own split
    drawn = split_stratified(
        digits.x_train, digits.y_train, test_size=0.3, random_state=VALIDATION_SEED
    )
    for first, second in zip(validation_split(digits, 0.3), drawn, strict=True):
        np.testing.assert_array_equal(first, second)


def _tiny(labels: list[int]) -> ImageDataset:
    rng = np.random.default_rng(5)
    y = np.asarray(labels, dtype=np.int64)
    x = rng.random((y.shape[0], 4, 4), dtype=np.float32)
    return ImageDataset("tiny", x, y, x[:2].copy(), y[:2].copy(), int(y.max()) + 1)


@pytest.mark.parametrize(
    "labels, fraction, message",
    [
        ([0, 0, 1, 1, 2], 0.4, r"val_fraction: the training split of 'tiny' \(5 images of 3 "
         r"classes\) has one image of class 2; a stratified validation split needs at least 2"),
        ([0, 0, 1, 1, 3], 0.4, r"val_fraction: the training split of 'tiny' \(5 images of 3 "
         r"classes\) has one image of class 3; a stratified validation split needs at least 2"),
        ([0, 0, 1, 1, 2, 2], 0.2, r"val_fraction: 0.2 of the training split of 'tiny' \(6 images "
         r"of 3 classes\) holds out 2 images, fewer than the 3 classes"),
        ([0, 0, 1, 1], 0.25, r"val_fraction: 0.25 of the training split of 'tiny' \(4 images "
         r"of 2 classes\) holds out 1 image, fewer than the 2 classes"),
        ([0, 0, 1, 1], 0.6, r"val_fraction: expected a number in \(0, 0.5\], got 0.6"),
        ([0, 0, 1, 1], 0, r"val_fraction: expected a number in \(0, 0.5\], got 0"),
        ([0, 0, 1, 1], True, r"val_fraction: expected a number in \(0, 0.5\], got True"),
    ],
)  # fmt: skip
def test_a_split_that_cannot_be_made_names_val_fraction(
    labels: list[int], fraction: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validation_split(_tiny(labels), fraction)


def test_a_split_of_one_validation_image_a_class_can_be_made() -> None:
    """The fewest images a split may hold out is one of each class: 2 of 4 images of 2
    classes."""
    x_tr, x_val, y_tr, y_val = validation_split(_tiny([0, 0, 1, 1]), 0.5)
    assert sorted(y_val.tolist()) == sorted(y_tr.tolist()) == [0, 1]
    assert x_tr.shape == x_val.shape == (2, 4, 4)


def test_numpy_fractions_split_as_plain_ones(digits: ImageDataset) -> None:
    """A NumPy number (a sweep's) is a fraction as TrainConfig takes it: np.float32(0.2) holds
    out the images a run of val_fraction 0.2 validates on."""
    plain = validation_split(digits, 0.2)
    for fraction in (np.float32(0.2), np.float64(0.2)):
        for first, second in zip(validation_split(digits, fraction), plain, strict=True):
            np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match=r"expected a number in \(0, 0.5\], got 0.6$"):
        validation_split(digits, np.float32(0.6))
    # NumPy 2 writes np.True_, 1.x True
    with pytest.raises(ValueError, match=r"expected a number in \(0, 0.5\], got (np\.True_|True)$"):
        validation_split(digits, np.bool_(True))


def test_the_trainer_reports_a_split_that_cannot_be_made() -> None:
    with pytest.raises(ValueError, match=r"val_fraction: .* has one image of class 2"):
        train(small(val_fraction=0.4), data=_tiny([0, 0, 1, 1, 2]), progress=False)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"val_fraction": 0.51}, r"val_fraction: expected a number in \[0, 0.5\], got 0.51"),
        ({"val_fraction": -0.1}, r"val_fraction: expected a number in \[0, 0.5\], got -0.1"),
        ({"val_fraction": float("nan")}, r"val_fraction: expected a number in \[0, 0.5\], got nan"),
        ({"val_fraction": "0.1"}, r"val_fraction: expected a number in \[0, 0.5\], got '0.1'"),
        ({"val_fraction": True}, r"val_fraction: expected a number in \[0, 0.5\], got True"),
        ({"patience": -1}, r"patience: expected an integer >= 0, got -1"),
        ({"patience": 2.0}, r"patience: expected an integer >= 0, got 2.0"),
        ({"patience": 3}, r"patience: stopping early needs a validation split \(val_fraction > 0"),
    ],
)  # fmt: skip
def test_config_checks_the_new_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(backend="numpy", **fields)


def test_config_takes_the_largest_val_fraction() -> None:
    """0.5, the most --val-fraction says it takes, is taken."""
    config = make_config(backend="numpy", val_fraction=0.5, patience=1)
    assert (config.val_fraction, config.patience) == (0.5, 1)
    assert TrainConfig.from_dict(config.to_dict()).val_fraction == 0.5


def test_numpy_numbers_become_plain_ones() -> None:
    config = make_config(backend="numpy", val_fraction=np.float32(0.2), patience=np.int64(4))
    assert config.val_fraction == 0.2 and type(config.val_fraction) is float
    assert config.patience == 4 and type(config.patience) is int
    assert json.loads(json.dumps(config.to_dict()))["val_fraction"] == 0.2


# -- training with a validation split --------------------------------------------------------
def test_training_leaves_the_validation_images_out(digits: ImageDataset) -> None:
    config = small(val_fraction=0.25, epochs=2)
    result = train(config, data=digits, progress=False)
    x_tr, x_val, y_tr, y_val = validation_split(digits, 0.25)
    m = result.metrics
    assert (m["num_train"], m["num_val"], m["num_test"]) == (y_tr.shape[0], y_val.shape[0], 450)
    # an epoch is the training images alone, in batches of 64
    run = _Run(config, digits)
    assert run.steps_per_epoch == math.ceil(y_tr.shape[0] / 64) < math.ceil(1347 / 64)
    np.testing.assert_array_equal(run.backend.to_numpy(run.x_train), to_sequences(x_tr, "rows"))
    # the figures are those of the model on the held-out images, every epoch
    model = result.model.eval()
    val = model.evaluate(to_sequences(x_val, "rows"), y_val)
    assert m["val_loss"] == pytest.approx(val["loss"], rel=1e-12)
    assert m["val_accuracy"] == val["accuracy"] and 0.3 < val["accuracy"] <= 1
    assert result.history[-1]["val_loss"] == m["val_loss"]
    assert all({"val_loss", "val_accuracy", "test_loss"} <= set(r) for r in result.history)
    assert m["best_epoch"] in (1, 2) and m["stopped_early"] is False
    best = min(result.history, key=lambda r: r["val_loss"])
    assert m["best_epoch"] == best["epoch"] and m["best_val_loss"] == best["val_loss"]


def test_augment_shifts_the_training_images_alone(digits: ImageDataset, monkeypatch) -> None:
    """With a validation split, each epoch's shifted images are the training images less
    the validation ones, in their order (their labels are y_train's)."""
    shifted: list[np.ndarray] = []
    shift = trainer.shift_images
    monkeypatch.setattr(
        trainer, "shift_images", lambda images, *a: shifted.append(images) or shift(images, *a)
    )
    result = train(small(val_fraction=0.2, augment=1, epochs=1), data=digits, progress=False)
    x_tr, _, y_tr, _ = validation_split(digits, 0.2)
    assert len(shifted) == 1
    np.testing.assert_array_equal(shifted[0], x_tr)
    assert result.metrics["num_train"] == y_tr.shape[0]


def test_without_a_split_nothing_changes(digits: ImageDataset) -> None:
    result = train(small(), data=digits, progress=False)
    assert result.metrics["num_train"] == 1347
    for key in ("num_val", "val_loss", "val_accuracy", "best_epoch", "stopped_early"):
        assert key not in result.metrics
    assert not any(k.startswith("best_") for k in result.metrics)
    assert not any(k.startswith("val_") for r in result.history for k in r)


def test_a_generate_run_validates_its_mse(digits: ImageDataset, monkeypatch) -> None:
    small_judge(monkeypatch)
    config = small(task="generate", val_fraction=0.1, epochs=2)
    result = train(config, data=digits, progress=False)
    m = result.metrics
    _, x_val, _, y_val = validation_split(digits, 0.1)
    mse = result.model.eval().evaluate(to_sequences(x_val, "rows"), y_val)["mse"]
    assert m["val_mse"] == pytest.approx(mse, rel=1e-12) and 0 < mse < 1
    assert m["best_val_mse"] == min(r["val_mse"] for r in result.history)
    best = result.history[m["best_epoch"] - 1]
    assert m["best_test_mse"] == best["test_mse"] and "best_test_accuracy" not in m
    assert "val_loss" not in m and "val_accuracy" not in m
    # the samples' judge is the classify recipe on the whole training split, as before
    assert classifier_config(config).val_fraction == 0


# -- the early stop ---------------------------------------------------------------------------
def test_patience_ends_the_run_after_that_many_epochs_without_progress(
    digits: ImageDataset,
) -> None:
    news: list[str] = []
    result = train(stopping(), data=digits, progress=False, log=news.append)
    m, history = result.metrics, result.history
    losses = [r["val_loss"] for r in history]
    end, best = m["epochs"], m["best_epoch"]
    assert m["stopped_early"] is True and end < 30 and len(history) == end
    assert best == 1 + int(np.argmin(losses)) and end - best == 2
    assert m["best_val_loss"] == losses[best - 1] == min(losses)
    # the test figures of the best epoch's model, as that epoch recorded them
    assert m["best_test_accuracy"] == history[best - 1]["test_accuracy"]
    assert m["best_test_loss"] == history[best - 1]["test_loss"]
    assert m["best_test_loss"] != m["test_loss"]
    # no earlier epoch met the rule: every epoch before the end was within 2 of its best
    for k in range(1, end):
        assert k - (1 + int(np.argmin(losses[:k]))) < 2
    assert news[-1] == (
        f"{EARLY_STOP_NEWS} at epoch {end} of 30: val_loss has not improved since epoch "
        f"{best} for 2 epochs, patience 2"
    )
    # without patience the same run goes on, the same up to the stop
    longer = train(stopping(patience=0, epochs=end + 2), data=digits, progress=False)
    assert [r["val_loss"] for r in longer.history[:end]] == losses
    assert longer.metrics["epochs"] == end + 2 and longer.metrics["stopped_early"] is False


def test_a_tie_is_no_improvement(digits: ImageDataset) -> None:
    """The best epoch is the first of equal lowest figures, and patience counts from it: an
    epoch that only matches the best does not improve on it."""
    run = _Run(small(val_fraction=0.2, patience=2, epochs=10), digits)
    run.history = [{"epoch": e, "val_loss": v} for e, v in enumerate([0.9, 0.5, 0.5, 0.5], 1)]
    run.epoch = 4
    assert run.best_epoch() == 2 and run.stopped_early and run.finished
    run.history[3]["val_loss"] = 0.4
    assert run.best_epoch() == 4 and not run.stopped_early


def test_a_stopped_run_resumed_trains_nothing_and_stops_where_a_straight_one_does(
    tmp_path: Path, digits: ImageDataset
) -> None:
    straight = train(stopping(), data=digits, progress=False, out_dir=tmp_path / "s", plots=False)
    end = straight.metrics["epochs"]
    # 3 epochs, then resumed to 30: stops at the straight run's epoch, with its weights
    train(stopping(epochs=3), data=digits, progress=False, out_dir=tmp_path / "r", plots=False)
    resumed = train(stopping(), data=digits, progress=False, resume=tmp_path / "r", plots=False)
    assert resumed.metrics["epochs"] == end and resumed.epochs_trained == end - 3
    for name, value in straight.model.state_dict().items():
        assert value.tobytes() == resumed.model.state_dict()[name].tobytes(), name
    assert resumed.history == straight.history
    # resumed again with more epochs: nothing is trained, the files stay as they were
    before = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    news: list[str] = []
    again = train(
        stopping(epochs=40), data=digits, progress=False, resume=tmp_path / "r", log=news.append
    )
    assert again.epochs_trained == 0 and again.metrics["stopped_early"] is True
    assert again.metrics["epochs"] == end and again.end_written is False
    # its config is the run's, as the straight run returned it: the 30 epochs it was asked
    # for (it was the stop epoch, where a fresh run gave the asked-for count), not this call's
    assert again.config == straight.config and again.config.epochs == 30
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == before
    assert any(f"the run stopped early at epoch {end}" in line for line in news), news
    # its end is written where the run was stopped before writing it
    (tmp_path / "r" / "metrics.json").unlink()
    ended = train(stopping(epochs=40), data=digits, progress=False, resume=tmp_path / "r")
    assert ended.end_written and ended.epochs_trained == 0
    assert ended.config.epochs == 30
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["epochs"] == end and saved["stopped_early"] is True


def test_evaluate_gives_the_run_s_validation_figures(tmp_path: Path, digits: ImageDataset) -> None:
    result = train(stopping(), data=digits, progress=False, out_dir=tmp_path / "run", plots=False)
    evaluated = evaluate_run(tmp_path / "run")
    for key in ("val_loss", "val_accuracy", "num_val", "best_epoch", "best_val_loss",
                "best_test_accuracy", "best_test_loss"):  # fmt: skip
        assert evaluated[key] == result.metrics[key], key
    assert evaluated["stopped_early"] is True
    run, _ = load_run(tmp_path / "run")
    assert run.finished and run.epoch < run.config.epochs


def test_a_generate_run_stopped_early_without_its_judge_warns(
    tmp_path: Path, digits: ImageDataset, monkeypatch
) -> None:
    """A run that stopped early is finished: evaluating it without a judge says the judge is
    missing, as for a run that trained every epoch."""
    small_judge(monkeypatch)
    config = small(task="generate", epochs=30, lr=0.03, schedule="constant", val_fraction=0.2,
                   patience=1, hidden=32)  # fmt: skip
    news: list[str] = []
    result = train(config, data=digits, progress=False, out_dir=tmp_path / "g", plots=False,
                   log=news.append)  # fmt: skip
    m = result.metrics
    assert m["stopped_early"] is True and m["epochs"] < 30
    assert "sample_class_accuracy" in m
    # the news names the figure watched: the MSE, a generate run having no val_loss
    stop = f"{EARLY_STOP_NEWS} at epoch {m['epochs']} of 30: val_mse has not improved since "
    assert any(line.startswith(stop) for line in news), news
    (said,) = [line for line in news if line.startswith(stop)]
    assert said.endswith(f"epoch {m['best_epoch']} for 1 epoch, patience 1"), said
    for path in sorted((tmp_path / "g" / JUDGE_DIR).rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "g" / JUDGE_DIR).rmdir()
    with pytest.warns(UserWarning, match=r"no classifier that judges the samples was saved"):
        metrics = evaluate_run(tmp_path / "g")
    assert "sample_class_accuracy" not in metrics


def test_a_resume_on_other_images_names_the_held_out_ones(
    tmp_path: Path, digits: ImageDataset
) -> None:
    train(small(val_fraction=0.2), data=digits, progress=False, out_dir=tmp_path / "run",
          plots=False)  # fmt: skip
    fewer = dataclasses.replace(
        digits, x_train=digits.x_train[:-100], y_train=digits.y_train[:-100], source=None
    )
    with pytest.raises(ValueError, match=r"has 997 training images besides the 250 held "
                       r"out to validate \(16 steps per epoch"):  # fmt: skip
        train(small(val_fraction=0.2, epochs=3), data=fewer, progress=False,
              resume=tmp_path / "run")  # fmt: skip


# -- command line and plots -------------------------------------------------------------------
def test_cli_trains_with_a_split_and_says_it_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["--hidden", "32", "--lr", "0.01", "--epochs", "30", "--val-fraction", "0.2"]
    code = main(["train", *SMALL, *args, "--patience", "2", "--seed", "3", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["stopped_early"] is True and printed["num_val"] == 270
    assert f"rnncu: {EARLY_STOP_NEWS} at epoch {printed['epochs']} of 30" in captured.err
    config = json.loads((out / "config.json").read_text())
    assert (config["val_fraction"], config["patience"]) == (0.2, 2)
    _, meta = load_checkpoint(out)
    assert meta["config"]["patience"] == 2
    assert main(["train", "--resume", str(out), "--epochs", "40"]) == 0
    err = capsys.readouterr().err
    assert f"stopped early at epoch {printed['epochs']}" in err
    assert "patience 2): nothing was trained" in err
    # the split is the run's: a resume cannot change it
    assert main(["train", "--resume", str(out), "--epochs", "40", "--val-fraction", "0.1"]) == 2
    assert "not --val-fraction" in capsys.readouterr().err


def test_the_progress_bar_shows_the_validation_figures() -> None:
    record = {"epoch": 1, "train_loss": 0.5, "test_accuracy": 0.8, "val_accuracy": 0.75}
    assert _postfix(record) == {"loss": "0.5000", "accuracy": "0.8000", "val_accuracy": "0.7500"}
    mse = _postfix({"epoch": 1, "train_loss": 0.5, "test_mse": 0.02, "val_mse": 0.03})
    assert mse == {"loss": "0.5000", "mse": "0.0200", "val_mse": "0.0300"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--val-fraction", "0.7"], r"--val-fraction: expected a number in [0, 0.5], got 0.7"),
        (["--patience", "3"], "--patience: stopping early needs a validation split"),
        (["--val-fraction", "-1"], "--val-fraction: expected a number >= 0"),
    ],
)
def test_cli_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    assert main(["train", *SMALL, *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_history_plot_draws_the_validation_curves(tmp_path: Path, monkeypatch) -> None:
    saved, figures = plots._save, []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or saved(fig, path))
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "val_loss": 1.1 / e,
         "train_accuracy": 0.5, "test_accuracy": 0.4, "val_accuracy": 0.45}
        for e in (1, 2, 3)
    ]  # fmt: skip
    plots.plot_history(history, tmp_path / "c.png")
    generate = [
        {"epoch": e, "train_loss": 1.0 / e, "test_mse": 0.2 / e, "baseline_mse": 0.3,
         "val_mse": 0.25 / e}
        for e in (1, 2)
    ]  # fmt: skip
    plots.plot_history(generate, tmp_path / "g.png")
    loss, accuracy = figures[0].axes[:2]
    labels = {line.get_label(): list(line.get_ydata()) for line in loss.lines}
    assert labels["validation"] == pytest.approx([1.1, 0.55, 1.1 / 3])
    accuracy_lines = {line.get_label(): list(line.get_ydata()) for line in accuracy.lines}
    assert accuracy_lines["validation"] == [0.45] * 3
    mse_lines = {line.get_label(): list(line.get_ydata()) for line in figures[1].axes[1].lines}
    assert mse_lines["model, validation"] == pytest.approx([0.25, 0.125])
    # the panel's label says it draws the validation MSE beside the test split's, and only
    # where it does (mutation audit: the label of the other case survived)
    assert figures[1].axes[1].get_ylabel() == "next-row MSE (test; validation where drawn)"
    plots.plot_history([{k: v for k, v in r.items() if k != "val_mse"} for r in generate],
                       tmp_path / "plain.png")  # fmt: skip
    assert figures[2].axes[1].get_ylabel() == "test next-row MSE"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_history(history[:1], tmp_path / "one.png")  # one epoch: no warning


# -- the best epoch's checkpoint -------------------------------------------------------------
def test_the_best_epoch_s_checkpoint_is_kept_beside_the_last(
    tmp_path: Path, digits: ImageDataset
) -> None:
    out = tmp_path / "run"
    result = train(stopping(), data=digits, progress=False, out_dir=out, plots=False)
    best, end = result.metrics["best_epoch"], result.metrics["epochs"]
    assert best < end
    arrays, meta = load_checkpoint(out / BEST_NAME)
    assert meta["epoch"] == best and len(meta["history"]) == best
    # the weights of a run trained straight to that epoch
    upto = train(stopping(epochs=best), data=digits, progress=False)
    for name, value in upto.model.state_dict().items():
        assert arrays[f"model.{name}"].tobytes() == value.tobytes(), name
    # evaluated, it gives the test figures its epoch recorded
    evaluated = evaluate_run(out / BEST_NAME)
    assert evaluated["epochs"] == best and evaluated["stopped_early"] is False
    assert evaluated["test_accuracy"] == result.history[best - 1]["test_accuracy"]
    assert evaluated["val_loss"] == pytest.approx(result.history[best - 1]["val_loss"], rel=1e-12)
    # which the run's metrics give: the test figures of the model the split selects
    assert result.metrics["best_test_accuracy"] == evaluated["test_accuracy"]
    assert result.metrics["best_test_loss"] == pytest.approx(evaluated["test_loss"], rel=1e-12)
    # a run without a validation split keeps none
    train(small(), data=digits, progress=False, out_dir=tmp_path / "plain", plots=False)
    assert not (tmp_path / "plain" / BEST_NAME).exists()


def test_a_best_checkpoint_goes_on_elsewhere_only(tmp_path: Path, digits: ImageDataset) -> None:
    out = tmp_path / "run"
    result = train(stopping(), data=digits, progress=False, out_dir=out, plots=False)
    best, end = result.metrics["best_epoch"], result.metrics["epochs"]
    before = {name: (out / name).read_bytes() for name in ("checkpoint.npz", BEST_NAME)}
    with pytest.raises(ValueError, match=r"resume: .*best.npz is the checkpoint of the best epoch"
                       r" of the run in .*; continuing it there would replace"):  # fmt: skip
        train(stopping(), data=digits, progress=False, resume=out / BEST_NAME)
    assert {name: (out / name).read_bytes() for name in before} == before
    # into another directory it trains on from its epoch, as the straight run did, and the
    # new directory gets the best epoch's checkpoint at once, though no later epoch beats it
    other = tmp_path / "other"
    again = train(stopping(), data=digits, progress=False, resume=out / BEST_NAME,
                  out_dir=other, plots=False)  # fmt: skip
    assert again.epochs_trained == end - best and again.metrics["epochs"] == end
    assert (other / BEST_NAME).read_bytes() == before[BEST_NAME]
    assert again.history == result.history


def test_a_best_checkpoint_is_refused_in_its_own_directory_before_its_images_are_sought(
    tmp_path: Path, digits: ImageDataset
) -> None:
    """Its images moved, the refusal came after "no such file ... give its new place with
    --dataset": the user who gave it was refused then."""
    images = tmp_path / "images.npz"
    np.savez(images, x=digits.x_train, y=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)  # fmt: skip
    out = tmp_path / "run"
    train(small(val_fraction=0.2, dataset=str(images)), progress=False, out_dir=out, plots=False)
    images.unlink()
    with pytest.raises(ValueError, match=r"resume: .*best.npz is the checkpoint of the best"):
        train(small(), progress=False, resume=out / BEST_NAME)
    with pytest.raises(ValueError, match=r"resume: .*best.npz is the checkpoint of the best"):
        train(small(), progress=False, resume=out / BEST_NAME, out_dir=out)


def test_a_run_resumed_elsewhere_carries_its_best_checkpoint(
    tmp_path: Path, digits: ImageDataset
) -> None:
    first = tmp_path / "first"
    straight = train(stopping(), data=digits, progress=False)
    best = straight.metrics["best_epoch"]
    train(stopping(epochs=best + 1), data=digits, progress=False, out_dir=first, plots=False)
    moved = tmp_path / "moved"
    resumed = train(stopping(), data=digits, progress=False, resume=first, out_dir=moved,
                    plots=False)  # fmt: skip
    assert resumed.metrics["best_epoch"] == best
    assert (moved / BEST_NAME).read_bytes() == (first / BEST_NAME).read_bytes()
    # a stale or missing one is not carried: the new directory has none until a new best
    (first / BEST_NAME).unlink()
    gone = tmp_path / "gone"
    train(stopping(), data=digits, progress=False, resume=first, out_dir=gone, plots=False)
    assert not (gone / BEST_NAME).exists()


def test_a_carried_best_checkpoint_names_where_the_images_moved(
    tmp_path: Path, digits: ImageDataset
) -> None:
    """A run resumed elsewhere on its images moved (--dataset) saves their new place in its
    checkpoint: the best epoch's carried beside it named the old one, and evaluating or
    resuming it failed with "no such file" though the run's own checkpoint worked."""
    before, after = tmp_path / "before.npz", tmp_path / "after.npz"
    np.savez(before, x=digits.x_train, y=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)  # fmt: skip
    best = train(stopping(), data=digits, progress=False).metrics["best_epoch"]
    first = tmp_path / "first"
    train(stopping(dataset=str(before), epochs=best + 1), progress=False, out_dir=first,
          plots=False)  # fmt: skip
    before.rename(after)
    moved = tmp_path / "moved"
    resumed = train(stopping(), data=load_dataset(str(after)), progress=False, resume=first,
                    out_dir=moved, plots=False)  # fmt: skip
    assert resumed.metrics["best_epoch"] == best and resumed.epochs_trained == 1
    arrays, meta = load_checkpoint(moved / BEST_NAME)
    assert meta["config"]["dataset"] == load_checkpoint(moved)[1]["config"]["dataset"]
    assert meta["epoch"] == best
    first_arrays = load_checkpoint(first / BEST_NAME)[0]
    assert all(arrays[k].tobytes() == first_arrays[k].tobytes() for k in first_arrays)
    assert evaluate_run(moved / BEST_NAME)["epochs"] == best


def test_a_resumed_checkpoint_of_the_best_epoch_is_kept_as_best_checkpoint(
    tmp_path: Path, digits: ImageDataset
) -> None:
    """Where the resumed checkpoint is itself the best epoch's and no best.npz holds it (a run
    saved before best.npz, a checkpoint copied alone, a run stopped between writing its
    checkpoint and its best.npz), it is the best.npz: the run had none, elsewhere or in its
    own directory, though metrics.json named that best epoch."""
    best = train(stopping(), data=digits, progress=False).metrics["best_epoch"]
    first = tmp_path / "first"
    train(stopping(epochs=best), data=digits, progress=False, out_dir=first, plots=False)
    (first / BEST_NAME).unlink()
    weights = {k: v for k, v in load_checkpoint(first)[0].items() if k.startswith("model.")}
    other = tmp_path / "other"
    elsewhere = train(stopping(), data=digits, progress=False, resume=first, out_dir=other,
                      plots=False)  # fmt: skip
    assert elsewhere.metrics["best_epoch"] == best and elsewhere.epochs_trained > 0
    for directory in (other, first):
        if directory == first:  # its own directory, resumed for one epoch more
            train(stopping(epochs=best + 1), data=digits, progress=False, resume=first,
                  plots=False)  # fmt: skip
        arrays, meta = load_checkpoint(directory / BEST_NAME)
        assert meta["epoch"] == best and len(meta["history"]) == best, directory
        assert all(arrays[k].tobytes() == v.tobytes() for k, v in weights.items()), directory
    # stopped after its last checkpoint, the best epoch's, before its best.npz: the resume
    # that writes its end writes that too
    third = tmp_path / "third"
    train(stopping(epochs=best), data=digits, progress=False, out_dir=third, plots=False)
    (third / BEST_NAME).unlink()
    (third / "metrics.json").unlink()
    ended = train(stopping(epochs=best), data=digits, progress=False, resume=third, plots=False)
    assert ended.end_written and ended.epochs_trained == 0
    assert load_checkpoint(third / BEST_NAME)[1]["epoch"] == best


def test_a_run_resumed_in_its_own_directory_renames_its_best_checkpoint_s_images(
    tmp_path: Path, digits: ImageDataset
) -> None:
    """Resumed in its own directory on its images moved, a run's checkpoint.npz names their
    new place: its best.npz named the old one, and evaluating it said "no such file"."""
    before, after = tmp_path / "before.npz", tmp_path / "after.npz"
    np.savez(before, x=digits.x_train, y=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)  # fmt: skip
    best = train(stopping(), data=digits, progress=False).metrics["best_epoch"]
    out, ended = tmp_path / "run", tmp_path / "ended"
    train(stopping(dataset=str(before), epochs=best + 1), progress=False, out_dir=out,
          plots=False)  # fmt: skip
    # stopped after its last checkpoint (the best epoch's): the resume writes its end
    train(stopping(dataset=str(before), epochs=best), progress=False, out_dir=ended, plots=False)
    (ended / "metrics.json").unlink()
    before.rename(after)
    moved = load_dataset(str(after))
    resumed = train(stopping(epochs=best + 2), data=moved, progress=False, resume=out,
                    plots=False)  # fmt: skip
    assert resumed.epochs_trained == 1
    done = train(stopping(epochs=best), data=moved, progress=False, resume=ended, plots=False)
    assert done.end_written and done.epochs_trained == 0
    for directory in (out, ended):
        meta = load_checkpoint(directory / BEST_NAME)[1]
        assert meta["epoch"] == best, directory
        assert meta["config"]["dataset"] == str(after), directory
        assert evaluate_run(directory / BEST_NAME)["epochs"] == best


@pytest.mark.parametrize("kind", ["stale", "unreadable"])
def test_a_stale_or_unreadable_best_checkpoint_is_not_carried(
    tmp_path: Path, digits: ImageDataset, kind: str
) -> None:
    """A best.npz of another epoch than the history's best, or one that cannot be read, is
    left behind by a resume elsewhere (no error): the new directory has none until a new best
    (mutation audit: copying it whatever its epoch, or letting a CheckpointError out,
    survived)."""
    best = train(stopping(), data=digits, progress=False).metrics["best_epoch"]
    first = tmp_path / "first"
    train(stopping(epochs=best + 1), data=digits, progress=False, out_dir=first, plots=False)
    if kind == "stale":  # the last epoch's, not the best's
        (first / BEST_NAME).write_bytes((first / "checkpoint.npz").read_bytes())
    else:
        (first / BEST_NAME).write_bytes(b"not a checkpoint")
    other = tmp_path / "other"
    resumed = train(stopping(), data=digits, progress=False, resume=first, out_dir=other,
                    plots=False)  # fmt: skip
    assert resumed.metrics["best_epoch"] == best and resumed.epochs_trained > 0
    assert not (other / BEST_NAME).exists()


def test_a_replacing_run_removes_the_old_best_checkpoint(
    tmp_path: Path, digits: ImageDataset
) -> None:
    out = tmp_path / "run"
    train(small(val_fraction=0.2), data=digits, progress=False, out_dir=out, plots=False)
    assert (out / BEST_NAME).exists()
    train(small(), data=digits, progress=False, out_dir=out, plots=False)
    assert not (out / BEST_NAME).exists()


def test_cli_evaluates_and_refuses_the_best_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["--hidden", "32", "--lr", "0.01", "--epochs", "30", "--val-fraction", "0.2"]
    assert main(["train", *SMALL, *args, "--patience", "2", "--seed", "3", "--out", str(out)]) == 0
    best = json.loads(capsys.readouterr().out)["best_epoch"]
    assert main(["evaluate", "--checkpoint", str(out / BEST_NAME)]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == best
    assert main(["train", "--resume", str(out / BEST_NAME), "--epochs", "40"]) == 2
    err = capsys.readouterr().err
    assert "is the checkpoint of the best epoch" in err and "give it another out_dir" in err
    # --out its own directory: refused as such, not sent to --overwrite (refused too)
    for extra in ([], ["--overwrite"]):
        resume = ["train", "--resume", str(out / BEST_NAME), "--epochs", "40", "--out", str(out)]
        assert main([*resume, *extra]) == 2
        err = capsys.readouterr().err
        assert "is the checkpoint of the best epoch" in err and "--overwrite" not in err, extra


def test_patience_running_out_at_the_last_epoch_is_said(digits: ImageDataset) -> None:
    straight = train(stopping(), data=digits, progress=False)
    end = straight.metrics["epochs"]
    news: list[str] = []
    last = train(stopping(epochs=end), data=digits, progress=False, log=news.append)
    assert last.metrics["stopped_early"] is True and last.metrics["epochs"] == end
    assert news[-1].startswith(f"{EARLY_STOP_NEWS} at epoch {end}, the last of {end}: val_loss")
    assert news[-1].endswith("; a resume for more epochs trains none")


def test_evaluate_and_generate_on_images_the_split_cannot_be_made_of(
    tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    """Evaluating (or generating from) a run on other images needs no validation split of
    them: one that cannot be made leaves the validation figures out, with a warning, where
    it stopped the command with a val_fraction error the user never typed."""
    result = train(small(val_fraction=0.2), data=digits, progress=False, out_dir=tmp_path / "r",
                   plots=False)  # fmt: skip
    rng = np.random.default_rng(0)
    other = tmp_path / "other.npz"  # 0.2 of 30 images holds out 6, fewer than the 10 classes
    x, x_test = rng.random((30, 8, 8), dtype=np.float32), rng.random((20, 8, 8), dtype=np.float32)
    np.savez(other, x=x, y=np.arange(10).repeat(3), x_test=x_test, y_test=np.arange(10).repeat(2))
    # other images are not split at all (the next test); a checkpoint without a digest of its
    # images cannot tell, and the split is tried
    resave_checkpoint(
        tmp_path / "r",
        tmp_path / "r" / "checkpoint.npz",
        lambda _, meta: meta["data"].pop("digest"),
    )
    with pytest.warns(UserWarning, match=r"validation split cannot be made of its images "
                      r"\(val_fraction: 0.2 of the training split of 'other.npz'"):  # fmt: skip
        metrics = evaluate_run(tmp_path / "r", dataset=str(other))
    assert metrics["num_test"] == 20 and metrics["num_train"] == 30
    for key in ("num_val", "val_loss", "val_accuracy"):
        assert key not in metrics, key
    # what the saved history says stays: it is the run's, not the images'
    for key in ("best_epoch", "best_val_loss", "best_test_accuracy", "stopped_early"):
        assert metrics[key] == result.metrics[key], key
    run, _ = load_run(tmp_path / "r", dataset=str(other))  # what rnncu generate loads
    assert (
        run.x_val is None
        and run.num_val == 0
        and "fewer than the 10 classes" in str(run.val_problem)
    )
    with pytest.warns(UserWarning, match="the validation figures .* are left out"):
        assert main(["evaluate", "--checkpoint", str(tmp_path / "r"), "--dataset", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["num_test"] == 20
    # the run's own images are split as in training
    assert load_run(tmp_path / "r")[0].num_val == result.metrics["num_val"]


def test_a_non_finite_validation_loss_is_a_diverged_run(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validation figure that overflows (the test one still finite) rolls the run back as a
    test loss does: it was appended to the history, whose checkpoint (JSON) cannot hold it,
    and the run ended with a bare "checkpoint metadata ... is not finite" ValueError."""
    evaluate = _Run.evaluate

    def overflowing(run: _Run) -> dict:
        figures = evaluate(run)
        if run.epoch == 1:  # the second epoch's
            figures["val_loss"] = math.inf
        return figures

    monkeypatch.setattr(_Run, "evaluate", overflowing)
    with pytest.raises(TrainingDiverged, match=r"val_loss became inf in epoch 2; the last good "
                       r"checkpoint \(epoch 1\) is kept"):  # fmt: skip
        train(small(val_fraction=0.2, epochs=3), data=digits, progress=False,
              out_dir=tmp_path / "run", plots=False)  # fmt: skip
    _, meta = load_checkpoint(tmp_path / "run")
    assert meta["epoch"] == 1 and len(meta["history"]) == 1


def test_evaluate_on_other_images_leaves_their_validation_figures_out(
    tmp_path: Path, digits: ImageDataset
) -> None:
    """A share held out of other images (one that can be split) is no validation of the run:
    evaluating on them leaves it out, with a warning; the run's own images, moved, keep it."""
    result = train(small(val_fraction=0.2), data=digits, progress=False, out_dir=tmp_path / "r",
                   plots=False)  # fmt: skip
    moved = tmp_path / "moved.npz"
    np.savez(moved, x=digits.x_train, y=digits.y_train, x_test=digits.x_test, y_test=digits.y_test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = evaluate_run(tmp_path / "r", dataset=str(moved))
    for key in ("num_val", "val_loss", "val_accuracy", "test_accuracy"):
        assert same[key] == pytest.approx(result.metrics[key], rel=1e-6), key
    other = tmp_path / "other.npz"
    np.savez(other, x=digits.x_train[::-1], y=digits.y_train[::-1], x_test=digits.x_test,
             y_test=digits.y_test)  # fmt: skip
    with pytest.warns(UserWarning, match=r"validation split cannot be made of its images \(they "
                      r"are not the images the run was trained on\)"):  # fmt: skip
        metrics = evaluate_run(tmp_path / "r", dataset=str(other))
    for key in ("num_val", "val_loss", "val_accuracy"):
        assert key not in metrics, key
    assert metrics["best_epoch"] == result.metrics["best_epoch"]
    assert metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"], rel=1e-6)
    # the same where the run's own dataset path holds other images now: no --dataset given
    # (mutation audit: the check was made for --dataset alone, and the split of the new
    # images passed for the run's validation without a word)
    replaced = tmp_path / "replaced.npz"
    np.savez(replaced, x=digits.x_train, y=digits.y_train, x_test=digits.x_test,
             y_test=digits.y_test)  # fmt: skip
    train(small(val_fraction=0.2, dataset=str(replaced)), progress=False,
          out_dir=tmp_path / "own", plots=False)  # fmt: skip
    replaced.write_bytes(other.read_bytes())
    with pytest.warns(UserWarning, match=r"validation split cannot be made of its images \(they "
                      r"are not the images the run was trained on\)"):  # fmt: skip
        metrics = evaluate_run(tmp_path / "own")
    assert "num_val" not in metrics and "val_loss" not in metrics


def test_a_resume_whose_split_drew_other_images_warns(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The split is scikit-learn's: one of another version could draw other validation images
    of the same images, with the same counts, which the step count cannot tell."""
    out = tmp_path / "run"
    first = train(small(val_fraction=0.2), data=digits, progress=False, out_dir=out, plots=False)
    _, meta = load_checkpoint(out)
    x_tr, x_val, y_tr, y_val = validation_split(digits, 0.2)
    import hashlib

    expected = hashlib.sha256()
    for array in (x_val, y_val):
        expected.update(f"{array.dtype.str} {array.shape};".encode())
        expected.update(np.ascontiguousarray(array).tobytes())
    assert (
        meta["data"]["val_digest"] == expected.hexdigest() == _Run(first.config, digits).val_digest
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(small(val_fraction=0.2, epochs=3), data=digits, progress=False, resume=out,
              plots=False)  # fmt: skip
    monkeypatch.setattr("rnncu.data.VALIDATION_SEED", 1)
    with pytest.warns(UserWarning, match=r"the validation split of dataset 'digits' holds other "
                      r"images than the run's"):  # fmt: skip
        resumed = train(small(val_fraction=0.2, epochs=4), data=digits, progress=False,
                        resume=out, plots=False)  # fmt: skip
    assert resumed.epochs_trained == 1
    # other images (the same count) are said once, as such: their split is another too, which
    # goes without saying (mutation audit: a second warning, of the split, survived)
    monkeypatch.undo()
    other = dataclasses.replace(digits, x_train=digits.x_train[::-1], y_train=digits.y_train[::-1],
                                source=None)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(small(val_fraction=0.2, epochs=5), data=other, progress=False, resume=out,
              plots=False)  # fmt: skip
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(said) == 1 and "are not those the run was trained on" in said[0], said
    # a run without a split saves no digest of one
    train(small(), data=digits, progress=False, out_dir=tmp_path / "plain", plots=False)
    assert "val_digest" not in load_checkpoint(tmp_path / "plain")[1]["data"]


def test_another_checkpoint_resumed_beside_the_run_is_refused(
    tmp_path: Path, digits: ImageDataset, capsys: pytest.CaptureFixture
) -> None:
    """Any checkpoint of a run but its own ``checkpoint.npz`` (an earlier one copied aside),
    resumed in the run's directory, would write over the run: refused, as ``best.npz`` is; a
    ``best.npz`` alone in a directory holding no run goes on there."""
    out = tmp_path / "run"
    train(small(epochs=1), data=digits, progress=False, out_dir=out, plots=False)
    shutil.copy(out / "checkpoint.npz", out / "epoch1.npz")
    train(small(epochs=3), data=digits, progress=False, resume=out, plots=False)
    before = (out / "checkpoint.npz").read_bytes()
    refused = r"resume: .*epoch1.npz is not the checkpoint of the run in .* \(checkpoint.npz\)"
    with pytest.raises(ValueError, match=refused + "; continuing it there would replace"):
        train(small(epochs=3), data=digits, progress=False, resume=out / "epoch1.npz")
    assert main(["train", "--resume", str(out / "epoch1.npz"), "--epochs", "3"]) == 2
    assert "is not the checkpoint of the run in" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == before
    # elsewhere it trains on from its epoch
    again = train(small(epochs=3), data=digits, progress=False, resume=out / "epoch1.npz",
                  out_dir=tmp_path / "again", plots=False)  # fmt: skip
    assert again.epochs_trained == 2
    # a best epoch's checkpoint alone, in a directory of no run, goes on in it
    stopped = train(stopping(), data=digits, progress=False, out_dir=tmp_path / "s", plots=False)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "s" / BEST_NAME, alone / BEST_NAME)
    resumed = train(stopping(), data=digits, progress=False, resume=alone / BEST_NAME,
                    plots=False)  # fmt: skip
    assert resumed.metrics["epochs"] == stopped.metrics["epochs"]
    assert (alone / "checkpoint.npz").exists()
    assert (alone / BEST_NAME).read_bytes() == (tmp_path / "s" / BEST_NAME).read_bytes()


def test_evaluate_leaves_out_a_split_of_other_images_than_the_run_s(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's own images split otherwise (a scikit-learn whose stratified split changed)
    hold images it trained on: evaluating leaves those figures out, with a warning."""
    result = train(small(val_fraction=0.2), data=digits, progress=False, out_dir=tmp_path / "r",
                   plots=False)  # fmt: skip
    monkeypatch.setattr("rnncu.data.VALIDATION_SEED", 1)
    with pytest.warns(UserWarning, match=r"validation split cannot be made of its images \(the "
                      r"split draws other images of them than the run's did\)"):  # fmt: skip
        metrics = evaluate_run(tmp_path / "r")
    for key in ("num_val", "val_loss", "val_accuracy"):
        assert key not in metrics, key
    assert metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"], rel=1e-6)
    assert metrics["best_epoch"] == result.metrics["best_epoch"]


def test_the_readme_s_validation_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "val_fraction" in b]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RNNCU_BACKEND", "numpy")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    metrics = namespace["result"].metrics
    assert capsys.readouterr().out.split() == [
        str(metrics["best_epoch"]),
        str(metrics["best_test_accuracy"]),
    ]
    assert namespace["best"]["epochs"] == metrics["best_epoch"]
    assert namespace["best"]["test_accuracy"] == metrics["best_test_accuracy"]
    assert (tmp_path / "runs" / "val" / "best.npz").is_file()
