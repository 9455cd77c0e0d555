"""The training loop: shuffled mini-batches, gradient clipping, a schedule, held-out evaluation,
per-epoch checkpoints, resume, and a stop with the last good checkpoint kept if the loss
diverges.

Determinism: the initial weights come from ``seed`` (host generator), the order of epoch e
from ``default_rng([seed, 2, e])``, and the learning rate is a pure function of the update
count, so a run is reproducible bit for bit on the CPU, and 2 epochs + resume to 4 equals 4
epochs straight. Device work is never waited for inside an epoch: losses are summed on the
device and read once at the end of each epoch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnncu._warnings import warn_at_caller
from rnncu.checkpoint import (
    CHECKPOINT_NAME,
    RESERVED_META,
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    check_arrays,
    check_out_dir,
    load_checkpoint,
    resolve_checkpoint,
    run_directory,
    save_checkpoint,
)
from rnncu.data import (
    BUILTIN_DATASETS,
    SEQ_VIEWS,
    Framing,
    ImageDataset,
    _scale_images,
    check_dataset,
    contents,
    dataset_digest,
    display_images,
    image_framing,
    load_dataset,
    seq_shape,
    split_digest,
    to_sequences,
    validation_split,
)
from rnncu.init import INIT_SCHEMES
from rnncu.module import check_bool, resolve_dtype
from rnncu.optim import (
    OPTIMIZERS,
    SCHEDULES,
    StateKindError,
    _clip_grad_norm,
    check_momentum,
    grad_norm,
    make_optimizer,
    make_schedule,
)
from rnncu.tasks import (
    TASKS,
    RowGenerator,
    SequenceClassifier,
    build_model,
    class_log_loss,
    class_posterior,
    fit_noise_variance,
)

__all__ = [
    "RECIPES",
    "SavedDatasetNotFound",
    "SavedModel",
    "TrainConfig",
    "TrainingDiverged",
    "TrainResult",
    "evaluate_run",
    "load_model",
    "load_run",
    "make_config",
    "predict_images",
    "train",
]


class SavedDatasetNotFound(FileNotFoundError):
    """The dataset a saved run's config names is not where it was (moved, another machine):
    evaluating, generating or resuming can be given its new place."""


class TrainingDiverged(RuntimeError):
    """An epoch ended with a NaN or infinite training loss, weight or test loss; the message
    says which epoch, what, and what was kept."""


def _is_int(value: Any) -> bool:
    # bool is an int to Python, but hidden=True or seed=False is a mistake, not a number
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in ``config.json`` and in the checkpoint).

    ``task`` "classify" or "generate"; ``dataset`` "digits", "moving-digits" (clips), a
    directory of IDX files or a ``.npz``; ``seq`` how an image becomes a sequence ("rows":
    T = height, D = width, for clips a frame per step; "pixels": T = height * width, D = 1;
    "permuted": the pixels in a fixed random order, as :func:`rnncu.data.to_sequences`).
    The learning rate starts at ``lr`` (after ``warmup_epochs`` of linear warm-up) and
    follows ``schedule``: "exp" multiplies it by ``lr_decay`` every epoch, "step" by
    ``lr_decay`` every ``decay_epochs``, "cosine" takes it to 0 over ``decay_epochs`` (warm-up
    included), "constant" keeps it. ``clip`` limits the global gradient norm (0: off);
    ``augment`` shifts each training image (each clip, all its frames alike) by up to that
    many pixels per epoch; ``backend`` "auto" takes the GPU where one is present.
    ``optimizer`` "adam" (:class:`~rnncu.optim.Adam`), "adamw" (its weight decay decoupled),
    "rmsprop" or "sgd" (:func:`~rnncu.optim.make_optimizer`), each with ``weight_decay``;
    ``momentum`` is that of RMSprop or SGD (Adam has its betas).

    ``val_fraction`` holds that share of the training split out of training (stratified, the
    same images for every seed) and evaluates it every epoch; ``patience`` (with a
    validation split) ends the run once the validation loss (classify) or MSE (generate) has
    not improved for that many epochs. The test split is evaluated every epoch either way.
    """

    task: str = "classify"
    dataset: str = "digits"
    seq: str = "rows"
    hidden: int = 128
    layers: int = 1
    nonlinearity: str = "tanh"
    init: str = "orthogonal"
    epochs: int = 40
    batch_size: int = 32
    lr: float = 3e-3
    schedule: str = "exp"
    lr_decay: float = 0.92  # factor per epoch ("exp") or per decay_epochs interval ("step")
    decay_epochs: float = 40.0  # horizon of "cosine" (warm-up included), interval of "step"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.0  # of rmsprop and sgd
    clip: float = 1.0
    augment: int = 0  # random shifts of up to this many pixels per training image and epoch
    seed: int = 0
    backend: str | None = "auto"  # None only to resume: the saved run's backend
    dtype: str = "float32"
    val_fraction: float = 0.0  # share of the training split held out for validation
    patience: int = 0  # epochs without a better validation figure before the run ends; 0: off

    def __post_init__(self) -> None:
        self._plain_numbers()

    def _plain_numbers(self) -> None:
        # NumPy integers and floats (a sweep's np.arange values) become Python ones, the
        # config being saved as JSON; a float32 keeps the decimal it was written as
        # (np.float32(1e-3) is 0.001, not 0.0010000000474974513). NumPy bools stay, refused.
        # A NumPy dtype (np.float64, np.dtype("float32")) becomes its name, as the layers
        # take it; anything else stays, for validate to name.
        if self.dtype is not None and not isinstance(self.dtype, str):
            with contextlib.suppress(TypeError):
                self.dtype = resolve_dtype(self.dtype).name
        for name in (f.name for f in dataclasses.fields(self)):
            value = getattr(self, name)
            if isinstance(value, np.integer):
                setattr(self, name, int(value))
            elif isinstance(value, np.floating):
                short = value.dtype.itemsize < 8 and np.isfinite(value)
                setattr(self, name, float(str(value)) if short else float(value))

    def validate(self) -> TrainConfig:
        """Check every field; raise ValueError with the field's name. NumPy numbers, taken at
        construction as Python ones, are converted here too where a field was set later."""
        self._plain_numbers()
        choices = {
            "task": TASKS,
            "seq": SEQ_VIEWS,
            "nonlinearity": ("tanh", "relu"),
            "init": INIT_SCHEMES,
            "schedule": SCHEDULES,
            "optimizer": OPTIMIZERS,
            "backend": ("auto", "numpy", "cupy"),
            "dtype": ("float32", "float64"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:  # an array: no `in`
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(
                "dataset: expected 'digits', 'moving-digits', a directory of IDX files or a "
                f".npz path, got {self.dataset!r}"
            )
        for name in ("hidden", "layers", "epochs", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("lr", "decay_epochs"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        # a factor above 1 would make the rate grow every epoch (exp) or interval (step)
        if not (_is_number(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise ValueError(f"lr_decay: expected a number in (0, 1], got {self.lr_decay!r}")
        for name in ("augment", "seed", "patience"):  # the image size bounds augment: _Run
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        for name in ("warmup_epochs", "weight_decay", "clip"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum: expected a number in [0, 1), got {self.momentum!r}")
        try:
            check_momentum(self.optimizer, self.momentum)
        except ValueError as exc:
            raise ValueError(f"{exc}; momentum is that of --optimizer rmsprop or sgd") from None
        if not (_is_number(self.val_fraction) and 0 <= self.val_fraction <= MAX_VAL_FRACTION):
            # above a half, a class of two images could leave none to train on
            raise ValueError(
                f"val_fraction: expected a number in [0, {MAX_VAL_FRACTION}], got "
                f"{self.val_fraction!r}"
            )
        if self.patience > 0 and self.val_fraction == 0:
            raise ValueError(
                f"patience: stopping early needs a validation split (val_fraction > 0, "
                f"--val-fraction), got patience {self.patience} without one"
            )
        if self.schedule == "cosine" and self.warmup_epochs >= self.decay_epochs:
            raise ValueError(
                f"warmup_epochs: expected less than decay_epochs ({self.decay_epochs}), the "
                f"cosine's horizon, which includes the warm-up; got {self.warmup_epochs}"
            )
        if self.task == "generate" and self.seq != "rows":
            raise ValueError("seq: the generate task reads images row by row (use --seq rows)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value, plain JSON types (what ``config.json`` and checkpoints hold)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The validated config of a saved dict; missing fields take the defaults (older
        runs), unknown ones raise ValueError, since they would be silently dropped."""
        if not isinstance(data, dict):
            raise TypeError(f"config: expected a dict of fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**data).validate()


#: The largest share of a training split that ``val_fraction`` may hold out.
MAX_VAL_FRACTION = 0.5


# Recipes measured on digits with the NumPy backend (see benchmarks/RESULTS.md): rows are
# short, so tanh with an orthogonal W_hh and a decaying Adam rate suffices (two layers: 98.2-
# 98.4 % over seeds where one layer gives 97.3-98.4 %). The 64-step pixel sequences need
# what the long-sequence literature recommends: an orthogonal W_hh (gradients keep their
# norm through the linear part of every step), global-norm clipping at 1 and a decaying rate.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("classify", "rows"): {"layers": 2},
    ("classify", "pixels"): {"lr": 2e-3, "epochs": 60, "lr_decay": 0.95},
    ("classify", "permuted"): {"lr": 2e-3, "epochs": 60, "lr_decay": 0.95},
    ("generate", "rows"): {"epochs": 60, "lr_decay": 0.95},
}


def dataset_name(dataset: str | os.PathLike[str]) -> str:
    """What a config saves for ``dataset``: ``"digits"`` for scikit-learn's set, any other
    str or PathLike as an absolute path (a str, the config being JSON), so that evaluate,
    resume and generate find it from any directory and after the run directory moved. A
    PathLike is always a path, even ``Path("digits")``; ``".."`` is kept, not resolved
    (through a link, ``link/..`` is not the directory holding it)."""
    if isinstance(dataset, str) and dataset in (*BUILTIN_DATASETS, ""):
        return dataset  # "" is refused by the config's check, which names the field
    if isinstance(dataset, (str, os.PathLike)):
        return str(Path(dataset).absolute())
    return dataset  # not a path: the config's check names it


def make_config(**overrides: Any) -> TrainConfig:
    """A validated config: the dataclass defaults, then the recipe for (task, seq), then the
    ``overrides`` that are not None (explicit arguments win)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    dataset = given.get("dataset")
    if dataset is not None:
        given["dataset"] = dataset_name(dataset)
    task = given.get("task", TrainConfig.task)
    seq = given.get("seq", TrainConfig.seq)
    # relu keeps the orthogonal W_hh of the recipes: measured on pixel digits (60 epochs,
    # Adam), relu + orthogonal reaches 0.96 while relu + identity (IRNN, --init irnn) stays at
    # 0.10-0.30 for learning rates 1e-4 to 3e-4; IRNN is there for those who tune it.
    recipe = RECIPES.get((task, seq), {}) if isinstance(task, str) and isinstance(seq, str) else {}
    values = {**recipe, **given}  # a task or seq of another type: validate names it
    return TrainConfig(**values).validate()


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    config: TrainConfig
    #: the trained :class:`rnncu.tasks.SequenceClassifier` or :class:`rnncu.tasks.RowGenerator`
    model: Any
    #: one record per epoch: ``epoch``, ``train_loss``, ``lr``, ``grad_norm`` and
    #: ``grad_norm_max`` (before clipping), ``clipped`` (with clipping), the test figures
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    out_dir: Path | None = None
    #: a generate run's samples: ``samples`` (n, H, W) host images in [0, 1] and
    #: ``sample_labels`` (n,) their classes; empty for a classify run
    extra: dict[str, Any] = field(default_factory=dict)
    #: epochs this call trained: 0 when a resumed run was already at ``config.epochs``, or had
    #: stopped early (``patience``)
    epochs_trained: int = 0
    #: whether this call wrote the run's end (``metrics.json``, the plots, a generate run's
    #: judge) into ``out_dir``: also with no epoch trained, for a run stopped after its last
    #: checkpoint and resumed at that epoch
    end_written: bool = False


def _progress(total: int, initial: int, enabled: bool | None, desc: str) -> Any:
    """A tqdm bar over a run's optimizer steps on a terminal (an epoch of pixel sequences on
    MNIST-size data is minutes on a CPU: a bar over epochs stood still that long); a silent
    stand-in otherwise (or without tqdm)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(
                total=total, initial=initial, desc=desc, unit="step", leave=True, file=sys.stderr
            )
        except ImportError:
            pass

    class _Quiet:
        def update(self, n: int = 1) -> None: ...
        def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...
        def set_description_str(self, *args: Any, **kwargs: Any) -> None: ...
        def close(self) -> None: ...

    return _Quiet()


class _Run:
    """One training run's state: data on the device, model, optimizer, schedule, history."""

    def __init__(
        self,
        config: TrainConfig,
        data: ImageDataset | None = None,
        split_optional: bool = False,
        no_split: str | None = None,
    ) -> None:
        """``split_optional``: a validation split that cannot be made of ``data`` (a saved run
        loaded with other images, to evaluate or generate) is left out, ``val_problem`` saying
        why, instead of raising ValueError; training needs it. ``no_split``: why none is made
        at all (``val_problem``), where one would be no validation of the run's."""
        from rnncu.backend import get_backend

        self.config = config
        self.backend = get_backend(config.backend)
        self.data = data if data is not None else load_dataset(config.dataset)
        height, width = self.data.frame_shape or self.data.image_shape
        limit = (min(height, width) - 1) // 2
        if config.augment > limit:
            what = "images" if self.data.frame_shape is None else "frames"
            raise ValueError(
                f"augment: expected at most {limit} for {height}x{width} {what} (larger shifts "
                f"move most of an image out of the frame), got {config.augment}"
            )
        self.seq_shape = seq_shape(self.data.image_shape, config.seq)
        xp = self.backend.xp
        dtype = np.dtype(config.dtype)
        # the images trained on: the training split, less the validation images
        self.train_images, self.train_labels = self.data.x_train, self.data.y_train
        self.x_val: Any = None  # (T, N_val, D) on the device, with a validation split
        self.y_val: Any = None
        self.num_val = 0
        self.val_problem: str | None = None  # why no validation split was made, where asked
        # SHA-256 of the validation images and labels: what the split drew (scikit-learn's
        # stratified split) is checked on resume, the counts alone passing for the same
        self.val_digest: str | None = None
        split = None
        if config.val_fraction > 0 and no_split is not None:
            self.val_problem = no_split
        elif config.val_fraction > 0:
            try:
                split = validation_split(self.data, config.val_fraction)
            except ValueError as exc:
                if not split_optional:
                    raise
                self.val_problem = str(exc)
        if split is not None:
            self.train_images, val_images, self.train_labels, val_labels = split
            self.x_val = self.backend.asarray(to_sequences(val_images, config.seq), dtype)
            self.y_val = self.backend.asarray(val_labels, np.int64)
            self.num_val = int(val_labels.shape[0])
            self.val_digest = split_digest(val_images, val_labels)
        self.x_train = self.backend.asarray(to_sequences(self.train_images, config.seq), dtype)
        self.x_test = self.backend.asarray(to_sequences(self.data.x_test, config.seq), dtype)
        self.y_train = self.backend.asarray(self.train_labels, np.int64)
        self.y_test = self.backend.asarray(self.data.y_test, np.int64)
        self.xp = xp
        self.model = _config_model(config, self.seq_shape, self.data.num_classes, self.backend)
        self.optimizer = make_optimizer(
            config.optimizer,
            self.model.modules,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
        n = self.train_images.shape[0]
        self.steps_per_epoch = math.ceil(n / config.batch_size)
        try:
            self.schedule = make_schedule(
                config.schedule,
                config.lr,
                self.steps_per_epoch,
                gamma=config.lr_decay,
                total_epochs=config.decay_epochs,
                step_epochs=config.decay_epochs,
                warmup_epochs=config.warmup_epochs,
            )
        except ValueError as exc:
            # named as the config names it (and the command line, --decay-epochs)
            name, _, rest = str(exc).partition(": ")
            if name not in ("step_epochs", "total_epochs") or not rest:
                raise
            raise ValueError(f"decay_epochs: {rest}") from None
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        # the classes the model was trained on: a saved run's are its checkpoint's
        # (:meth:`restore`), whatever images it is evaluated on
        self.trained_classes: list[int] = self.data.trained_classes

    # -- state --------------------------------------------------------------------------------
    @functools.cached_property
    def data_digest(self) -> str:
        """:func:`rnncu.data.dataset_digest` of the run's images, hashed once per run."""
        return dataset_digest(self.data)

    @functools.cached_property
    def data_framing(self) -> Framing | None:
        """:func:`rnncu.data.image_framing` of the training images (None for clips, or where
        every image is blank): how ``rnncu predict --center`` frames new images."""
        if self.data.frame_shape is not None:
            return None
        try:
            return image_framing(self.data.x_train)
        except ValueError:
            return None

    def data_meta(self) -> dict[str, Any]:
        framing = self.data_framing
        return {
            "name": self.data.name,
            "image_shape": list(self.data.image_shape),
            "num_classes": self.data.num_classes,
            # what a generate run's model can tell apart without its dataset (rnncu predict)
            "trained_classes": self.trained_classes,
            "seq_shape": list(self.seq_shape),
            "digest": self.data_digest,
            **({} if framing is None else {"framing": framing.to_dict()}),
            **({} if self.val_digest is None else {"val_digest": self.val_digest}),
            # images keep the metadata they had before clips
            **(
                {}
                if self.data.frame_shape is None
                else {"frame_shape": list(self.data.frame_shape)}
            ),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim.{k}": v for k, v in self.optimizer.state_dict().items()})
        return arrays

    def meta(self) -> dict[str, Any]:
        return {
            "kind": "train-run",
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "data": self.data_meta(),
            "train_seconds": self.train_seconds,
        }

    def restore(self, file: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Weights, optimizer state, epoch and history from a checkpoint (its metadata checked
        by :func:`_read_run_checkpoint`); CheckpointError naming ``file`` if they do not fit."""
        dtype = np.dtype(self.config.dtype)
        _restore_weights(self.model, file, arrays, dtype)
        optim = {k[len("optim.") :]: v for k, v in arrays.items() if k.startswith("optim.")}
        for key, value in optim.items():
            # the optimizer would cast its state to the weights' dtype; a run's own file
            # never needs that, so another dtype means the file is not this run's
            if key != "step" and value.dtype != dtype:
                raise CheckpointError(
                    f"{file}: entry 'optim.{key}' has dtype {value.dtype}, the run's dtype "
                    f"is {dtype}"
                )
        try:
            self.optimizer.load_state_dict(optim)
        except StateKindError as exc:
            # state of another optimizer (a config edited, or another run's state): the
            # config's choice named with it
            config = self.config
            raise CheckpointError(
                f"{file}: {exc}; its config names optimizer {config.optimizer!r}, momentum "
                f"{config.momentum}"
            ) from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{file}: {exc}") from None
        self.epoch = int(meta.get("epoch", 0))
        self.history = list(meta.get("history", []))
        self.train_seconds = float(meta.get("train_seconds", 0.0))
        saved = meta.get("data", {})
        if "trained_classes" in saved:
            self.trained_classes = list(saved["trained_classes"])
        elif saved.get("digest") != self.data_digest:
            # older than the field, and other images (or no digest to tell): every class,
            # as load_model takes such a checkpoint
            self.trained_classes = list(range(self.model.num_classes))

    # -- one epoch ----------------------------------------------------------------------------
    def run_epoch(self, on_step: Callable[[], Any] | None = None) -> dict[str, float]:
        """One epoch of training; ``on_step`` (a progress bar's) is called after every
        optimizer step, without waiting for the device."""
        config, xp = self.config, self.xp
        model, opt = self.model, self.optimizer
        model.train()
        n = self.x_train.shape[1]
        order = np.random.default_rng([config.seed, 2, self.epoch]).permutation(n)
        order_dev = self.backend.asarray(order, np.int64)
        x_train = self.x_train
        if config.augment:
            # Shifts are drawn and applied on the host (one copy to the device per epoch), so
            # both backends see identical images.
            shifted = shift_images(
                self.train_images,
                config.augment,
                np.random.default_rng([config.seed, 4, self.epoch]),
                self.data.frame_shape,
            )
            x_train = self.backend.asarray(to_sequences(shifted, config.seq), self.x_train.dtype)
        loss_sum = xp.zeros((), dtype=np.float64)
        correct_sum = xp.zeros((), dtype=np.int64)
        # each step's global gradient norm before clipping and clipping factor, left on the
        # device until the epoch's end
        norms, factors = [], []
        for start in range(0, n, config.batch_size):
            idx = order_dev[start : start + config.batch_size]
            xb = x_train[:, idx]
            yb = self.y_train[idx]
            loss, correct = model.train_step(xb, yb)
            if config.clip > 0:
                norm, factor = _clip_grad_norm(model.modules, config.clip)
                factors.append(factor)
            else:
                norm = grad_norm(model.modules)
            norms.append(norm)
            opt.lr = self.schedule(opt.step_count)
            opt.step()
            loss_sum += loss * idx.shape[0]
            if correct is not None:
                correct_sum += correct
            if on_step is not None:
                on_step()
        # the one host synchronisation of the epoch
        record = {"epoch": self.epoch + 1, "train_loss": float(loss_sum) / n, "lr": opt.lr}
        if isinstance(model, SequenceClassifier):
            record["train_accuracy"] = int(correct_sum) / n
        record.update(
            _norm_record(
                self.backend.to_numpy(xp.stack(norms)),
                self.backend.to_numpy(xp.stack(factors)) if factors else None,
            )
        )
        return record

    def evaluate(self) -> dict[str, Any]:
        """The test figures and, with a validation split, the validation ones (``val_``)."""
        self.model.eval()
        figures: dict[str, Any]
        if isinstance(self.model, SequenceClassifier):
            res = self.model.evaluate(self.x_test, self.y_test)
            figures = {
                "test_loss": res["loss"],
                "test_accuracy": res["accuracy"],
                "predictions": res["predictions"],
            }
            if self.x_val is not None:
                val = self.model.evaluate(self.x_val, self.y_val)
                figures.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            return figures
        res = self.model.evaluate(self.x_test, self.y_test)
        figures = {"test_mse": res["mse"], "baseline_mse": res["baseline_mse"]}
        if self.x_val is not None:
            figures["val_mse"] = self.model.evaluate(self.x_val, self.y_val)["mse"]
            if math.isfinite(figures["val_mse"]):  # else the run has diverged, and stops
                figures.update(self._fit_recognition())
        return figures

    def _fit_recognition(self) -> dict[str, float]:
        """A generator's ``recognition_variance``: the noise variance of its recognition
        fitted on (the first :data:`RECOGNITION_FIT_IMAGES` of) the validation split, a random
        draw (:func:`rnncu.tasks.fit_noise_variance`); nothing where no finite one fits (every
        image recognised, or their own classes favoured no more than the others on average)."""
        assert isinstance(self.model, RowGenerator) and self.x_val is not None
        rows = self.x_val[:, :RECOGNITION_FIT_IMAGES]
        labels = self.backend.to_numpy(self.y_val[:RECOGNITION_FIT_IMAGES])
        errors = self.model.class_mse(rows, self.trained_classes)
        # a label without an error (a class left out) would be refused by the fit; none comes
        # here, as the run's classes hold its training split's, whence the validation split
        # is drawn (a resumed run adds the new images' before training), but a fit must
        # never stop training
        known = np.isin(labels, self.trained_classes)
        if not known.any() or not np.isfinite(errors[:, self.trained_classes]).all():
            return {}
        pixels = rows.shape[0] * rows.shape[2]
        variance = fit_noise_variance(errors[known], labels[known], pixels)
        return {} if variance is None else {"recognition_variance": variance}

    @property
    def monitored(self) -> str:
        """The validation figure that ``patience`` watches (lower is better)."""
        return "val_loss" if isinstance(self.model, SequenceClassifier) else "val_mse"

    def best_epoch(self) -> int | None:
        """The first epoch of the lowest validation figure in the history; None without a
        validation split (or before the first epoch)."""
        figures = [(r.get(self.monitored), r["epoch"]) for r in self.history]
        kept = [(value, epoch) for value, epoch in figures if value is not None]
        if self.config.val_fraction == 0 or not kept:
            return None
        return int(min(kept, key=lambda item: item[0])[1])

    @property
    def stopped_early(self) -> bool:
        """Whether ``patience`` epochs have passed since the best validation figure: the run
        has ended there, short of ``config.epochs`` or at it (a resume for more trains
        none)."""
        best = self.best_epoch()
        patience = self.config.patience
        return patience > 0 and best is not None and self.epoch - best >= patience

    @property
    def finished(self) -> bool:
        """Whether the run has trained all it will: its epochs, or until it stopped early."""
        return self.epoch >= self.config.epochs or self.stopped_early


def _norm_record(norms: np.ndarray, factors: np.ndarray | None) -> dict[str, float]:
    """An epoch's gradient norms (before clipping) for its history record: ``grad_norm`` (the
    mean over the steps) and ``grad_norm_max``, the signs of exploding or vanishing gradients,
    and with clipping (``factors``, those clip_grad_norm applied) ``clipped``, the share of
    steps it scaled down. The two norms are left out of an epoch where one overflowed (a
    float32 sum of squares past 3.4e38): JSON, and so the checkpoint, has no infinity."""
    norms = norms.astype(np.float64)
    record: dict[str, float] = {}
    if np.isfinite(norms).all():
        record["grad_norm"] = float(norms.mean())
        record["grad_norm_max"] = float(norms.max())
    if factors is not None:
        # the factor itself, not norm > clip again: in float32, a norm a hair below the
        # limit can give a factor of exactly 1
        record["clipped"] = float(np.mean(factors < 1))
    return record


def shift_images(
    images: np.ndarray,
    max_shift: int,
    rng: np.random.Generator,
    frame_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Translate each image (N, H, W) by a random (dy, dx) in [-max_shift, max_shift]^2,
    filling with zeros (the background). Clips (N, T, H*W) of ``frame_shape`` (H, W) move
    every frame of a clip by the clip's one (dy, dx): the motion between frames is kept."""
    n = images.shape[0]
    a = max_shift
    offsets = rng.integers(0, 2 * a + 1, size=(n, 2))
    clips = images[:, None] if frame_shape is None else images.reshape(n, -1, *frame_shape)
    _, frames, h, w = clips.shape
    padded = np.zeros((n, frames, h + 2 * a, w + 2 * a), dtype=images.dtype)
    padded[:, :, a : a + h, a : a + w] = clips
    rows = offsets[:, 0, None] + np.arange(h)[None, :]  # (N, H)
    cols = offsets[:, 1, None] + np.arange(w)[None, :]  # (N, W)
    shifted: np.ndarray = padded[
        np.arange(n)[:, None, None, None],
        np.arange(frames)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return shifted.reshape(images.shape)


#: What a run writes into its directory (``classifier/``: a generate run's judge, a run of
#: its own). A new run in a directory that held one removes them when it saves its first
#: checkpoint (not before: a run stopped before then would leave no run at all): left behind,
#: an old generate run's samples and judge sat beside a new classify run.
RUN_FILES = ("checkpoint.npz", "best.npz", "config.json", "metrics.json", "history.csv",
             "curves.png", "confusion.png", "samples.png")  # fmt: skip
JUDGE_DIR = "classifier"
#: A run with a validation split keeps the checkpoint of its best epoch (the lowest validation
#: loss or MSE so far) under this name beside its last one: the model an early stop is for.
BEST_NAME = "best.npz"


def _clear_run_files(out: Path) -> None:
    """Remove the files of the run saved in ``out`` (only those: a run directory may hold
    the user's own files too; a ``classifier`` that is a link is left alone)."""
    judge = out / JUDGE_DIR
    directories = [out]
    if judge.is_dir() and not judge.is_symlink():
        directories.append(judge)
    for directory in directories:
        for name in RUN_FILES:
            (directory / name).unlink(missing_ok=True)
    if len(directories) > 1:
        with contextlib.suppress(OSError):
            judge.rmdir()  # only when nothing else is in it


#: The run's per-epoch records as a table, written after each epoch's checkpoint (and again
#: with ``metrics.json`` at the run's end, for a run saved before it was written per epoch).
HISTORY_NAME = "history.csv"
#: The columns of :func:`history_csv` in this order where a record has them; others follow,
#: sorted.
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                   "val_mse", "recognition_variance", "test_loss", "test_accuracy", "test_mse",
                   "baseline_mse", "grad_norm", "grad_norm_max", "clipped")  # fmt: skip


def history_csv(history: list[dict[str, Any]]) -> str:
    """The per-epoch records (a run's ``history``) as CSV: a header, then one line an epoch.
    Columns are :data:`HISTORY_COLUMNS` that a record holds, then any other keys, sorted; a
    figure a record lacks (a gradient norm that overflowed, say) is an empty cell. Floats are
    written in full (``repr``: they read back as the same numbers)."""
    keys = {key for record in history for key in record}
    columns = [key for key in HISTORY_COLUMNS if key in keys]
    columns += sorted(keys - set(columns))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in history:
        writer.writerow([_csv_cell(record[key]) if key in record else "" for key in columns])
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    # by type, not repr alone: a NumPy scalar's repr is "np.float64(0.5)" in NumPy 2
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _write_json(path: Path, obj: Any) -> None:
    # allow_nan=False: NaN is not JSON, and other readers of metrics.json reject it
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _warn_if_the_rate_never_steps(config: TrainConfig) -> None:
    """A step schedule whose first step lies past the run's end keeps its rate: with the
    defaults (decay_epochs 40, the cosine's horizon, and 40 epochs) a silent "constant". A
    warning, not an error: a run trained in stages (2 epochs, then resumed to 4) may step
    only in a later stage."""
    first_step = config.warmup_epochs + config.decay_epochs
    if first_step >= config.epochs:
        warn_at_caller(
            f"the step schedule multiplies the rate by lr_decay every {config.decay_epochs:g} "
            f"epochs (decay_epochs) after {config.warmup_epochs:g} of warm-up: in this run "
            f"of {config.epochs} epochs it never changes (resumed past epoch {first_step:g}, "
            "it would)",
            UserWarning,
        )


def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool | None = None,
    data: ImageDataset | None = None,
    log: Any = None,
    plots: bool = True,
) -> TrainResult:
    """Train ``config`` up to ``config.epochs`` epochs.

    ``out_dir`` (None: nothing is written) receives ``config.json`` before the first epoch
    (removed again if the run fails before its first checkpoint, with the directory if it was
    made for the run), ``checkpoint.npz`` and ``history.csv`` after every epoch (atomically),
    and at the end ``metrics.json`` and, with ``plots``, PNG plots (curves, and the confusion
    matrix or the samples). ``resume`` (a run directory or checkpoint file) continues that run:
    its saved config is used, with ``config.epochs`` (and ``config.backend``, unless None) taken
    from the argument; resumed in its own directory at the epoch it has, a run whose
    ``metrics.json`` is missing or an earlier call's (stopped after its last checkpoint) gets
    its end written (``end_written``), else nothing is. If an epoch ends with a NaN or infinite
    training loss, weight, test loss (test MSE) or validation loss (MSE), the model is rolled
    back to the last good epoch and :class:`TrainingDiverged` is raised; the checkpoint on disk
    is that last good epoch's. With ``config.patience`` the run ends (``log``: a line beginning
    with :data:`EARLY_STOP_NEWS`) after the epoch that makes ``patience`` epochs without a lower
    validation figure; its model is that epoch's, and the metrics name the best epoch
    (``best_epoch``), with its test figures (:data:`BEST_TEST_FIGURES`, ``best_`` before each:
    those of ``best.npz``). A resume of such a run trains nothing more: its history decides, as
    it did. The metrics' ``wall_seconds`` is this call's time (data, training, evaluation, a
    generate run's judge), where ``train_seconds`` adds up the epochs of every call that trained
    the run. A generate run's judge saved in ``out_dir/classifier`` by an earlier call is used
    (or resumed, if cut short) where it is of the recipe the run asks for. A run that ends
    having learnt nothing (a classifier no better than always answering the test split's
    commonest class, a generator no better than copying the row above) warns (UserWarning),
    naming ``out_dir`` (a judge: ``"classifier: "``) and what to try. ``progress`` shows a tqdm
    bar over the run's optimizer steps (None: when stderr is a terminal); ``log``, a callable
    taking one str, receives a line at each epoch's end (beginning with :data:`EPOCH_NEWS`) and
    the run's other news (those of a generate run's judge beginning with ``"classifier: "``).

    ``data``, an :class:`ImageDataset` (checked first, by
    :func:`rnncu.data.check_dataset`), is trained on instead of loading ``config.dataset``,
    which is still what the saved run names: evaluating, resuming or generating from the run
    loads it (unless given a dataset). So a run saved to ``out_dir`` must not keep the default
    ``"digits"`` for other data (``data.source``).

    A run that replaces the one saved in ``out_dir`` (a new run, or a resumed one written
    elsewhere than its own directory) removes that run's files (:data:`RUN_FILES`, and its
    ``classifier/`` judge's) when it saves its first checkpoint, writing its own config.json
    then too; other files stay. Stopped before then, it leaves the old run as it was.

    While it runs, the call holds its run directory (``out_dir``, or the resumed run's):
    another process (or thread) training into the same one raises
    :class:`rnncu.checkpoint.RunDirectoryInUse` at once instead of mixing its files with
    this run's (:func:`rnncu.checkpoint.run_directory`).
    """
    return _held_train(config, out_dir, resume, progress, data, log, plots, "")


def _held_train(
    config: TrainConfig, out_dir: str | Path | None, resume: str | Path | None, *rest: Any
) -> TrainResult:
    """:func:`_train` (``rest``: its other arguments, the last the progress bar's label, a
    generate run's judge's ``"classifier: "``) with the run directory held."""
    held = written_directory(out_dir, resume)
    where = "out_dir" if out_dir is not None else "resume"
    with contextlib.nullcontext() if held is None else run_directory(held, where):
        return _train(config, out_dir, resume, *rest)


def written_directory(
    out_dir: str | os.PathLike[str] | None, resume: str | os.PathLike[str] | None
) -> str | os.PathLike[str] | None:
    """The directory a run given ``out_dir`` and ``resume`` writes into, for holding it:
    ``out_dir``, else a resumed run's own directory where it exists (else None: no such run,
    which the trainer reports, or arguments of a type it names)."""
    if out_dir is not None:
        return out_dir if isinstance(out_dir, (str, os.PathLike)) else None
    if not isinstance(resume, (str, os.PathLike)):
        return None
    own = resolve_checkpoint(resume).parent
    return own if own.is_dir() else None


def _train(
    config: TrainConfig,
    out_dir: str | Path | None,
    resume: str | Path | None,
    progress: bool | None,
    data: ImageDataset | None,
    log: Any,
    plots: bool,
    label: str,
) -> TrainResult:
    """:func:`train`, its run directory held."""
    started = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig (see make_config), got {config!r}")
    log = log or (lambda msg: None)
    if progress is not None:
        progress = check_bool("progress", progress)  # "no" would be a true string
    if out_dir is not None:
        check_out_dir("out_dir", out_dir)
    if data is not None:
        data = check_dataset(data)
    saved_meta = None
    if resume is not None:
        file, arrays, saved_meta, saved = _read_run_checkpoint(resume)
        backend = saved.backend if config.backend is None else config.backend
        config = dataclasses.replace(saved, epochs=config.epochs, backend=backend)
        if out_dir is None:
            out_dir = file.parent  # the run's own directory, as written_directory finds it
        own = file.parent / CHECKPOINT_NAME
        if (
            file.name != CHECKPOINT_NAME
            and Path(out_dir).resolve() == file.parent.resolve()
            and own.exists()
        ):
            # training on from another checkpoint there (the best epoch's, an earlier one
            # copied aside) would write over the run saved in it; said before its images or
            # backend are looked for (a moved dataset's "no such file" sent the user after
            # --dataset, to be refused then)
            what = (
                f"the checkpoint of the best epoch of the run in {file.parent}"
                if file.name == BEST_NAME
                else f"not the checkpoint of the run in {file.parent} ({CHECKPOINT_NAME})"
            )
            raise ValueError(
                f"resume: {file} is {what}; continuing it there would replace that run's "
                "later epochs: give it another out_dir (--out)"
            )
    config.validate()
    if saved_meta is None and config.schedule == "step":
        _warn_if_the_rate_never_steps(config)
    if (
        data is not None
        and out_dir is not None
        and saved_meta is None
        and config.dataset in BUILTIN_DATASETS
        and data.source != config.dataset
    ):
        # the saved config would name a built-in dataset, and evaluating or resuming the run
        # would load it without a word
        raise ValueError(
            f"data: the dataset {data.name!r} is not the built-in {config.dataset!r}, but "
            f"config.dataset is {config.dataset!r}; give the "
            "config its path (make_config(dataset=...)), which is saved with the run and "
            "loaded to evaluate, resume or generate from it"
        )
    if saved_meta is not None:
        if data is None:
            data = _saved_dataset(config, file)
        elif data.source is not None and dataset_name(data.source) != config.dataset:
            # the run goes on with these images (its dataset moved, say): what it saves must
            # name them, so that evaluating or resuming it later loads them
            config = dataclasses.replace(config, dataset=dataset_name(data.source))
        _check_saved_images(data, saved_meta, file, config)
        data = _fit_saved_classes(data, saved_meta, file, config)
    run = _Run(config, data)
    out = Path(out_dir) if out_dir is not None else None
    # whether out_dir is the resumed run's own directory, whose checkpoint the run goes on
    continued = out is not None and resume is not None and out.resolve() == file.parent.resolve()
    if saved_meta is not None:
        run.restore(file, arrays, saved_meta)
        log(f"resumed {file} at epoch {run.epoch}")
        if run.finished:
            if run.epoch >= config.epochs:
                log(f"{file}: the run is already at epoch {run.epoch} >= {config.epochs}")
            else:
                log(f"{file}: the run stopped early at epoch {run.epoch} ({_early_news(run)})")
            # the run's epochs, not this call's; of a run that stopped early, those it was
            # asked for, as the call that trained it returned them (and its config.json says)
            epochs = saved.epochs if run.stopped_early else run.epoch
            done = dataclasses.replace(config, epochs=max(epochs, run.epoch))
            if out is None or not continued or _end_is_written(out, run.epoch):
                # Nothing to do; rewriting config.json, metrics or plots (or retraining a
                # generate run's judge) would only replace the run's files with those of a
                # shorter run.
                metrics = dict(final_metrics(run), wall_seconds=_seconds_since(started))
                return TrainResult(done, run.model, run.history, metrics, out)
            # Stopped after its last checkpoint (while a generate run's judge trained, or
            # while metrics.json was written): the run is whole but its end is not, and no
            # resume with more epochs is needed to write it.
            _check_saved_steps(run, file)
            _warn_if_other_images(run, saved_meta, file)
            has_best = _carry_best(out / BEST_NAME, out / BEST_NAME, run.best_epoch(), done)
            if not has_best and run.best_epoch() == run.epoch:
                # stopped between its last checkpoint and the best.npz of that epoch
                save_checkpoint(
                    out / BEST_NAME, run.arrays(), dict(run.meta(), config=done.to_dict())
                )
            log(
                f"{out}: no metrics.json of epoch {run.epoch} (the run was stopped after its "
                "last checkpoint): writing the run's end"
            )
            if (done.dataset, done.backend) != (saved.dataset, saved.backend):
                # a moved dataset or a chosen backend is saved, as a resume that trains saves
                # them: evaluating or resuming the run later finds its images where they are
                save_checkpoint(file, run.arrays(), dict(run.meta(), config=done.to_dict()))
                _write_json(out / "config.json", done.to_dict())
            return _finish_run(run, done, out, started, 0, progress, log, plots, label)
        _check_saved_steps(run, file)
        _warn_if_other_images(run, saved_meta, file)
        # trained on these images too from now on (other ones, where the warning said so)
        run.trained_classes = sorted({*run.trained_classes, *run.data.trained_classes})
    start_epoch = run.epoch
    good_arrays = run.arrays()  # rollback target if the loss diverges
    # the resumed checkpoint, written as best.npz where it is the best epoch's and none is
    # (its history copied: the run's own grows with every epoch)
    resumed = (
        None if saved_meta is None else (good_arrays, dict(run.meta(), history=list(run.history)))
    )
    steps = run.steps_per_epoch
    bar = _progress(
        config.epochs * steps,
        run.epoch * steps,
        progress,
        label + _epoch_desc(run.epoch, config.epochs),
    )
    # whether out_dir holds another run that this one replaces: its files stay as they are
    # until this run's first checkpoint, so that a replacing run stopped before then (an
    # error, Ctrl-C, a diverging loss) leaves the old run whole instead of no run at all
    replacing = out is not None and not continued and (out / "checkpoint.npz").exists()
    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            if not replacing:
                _write_json(out / "config.json", config.to_dict())
        while run.epoch < config.epochs:
            bar.set_description_str(label + _epoch_desc(run.epoch, config.epochs), refresh=False)
            t0 = time.perf_counter()
            record = run.run_epoch(bar.update)
            seconds = time.perf_counter() - t0
            # A finite mean loss can still end with non-finite weights (the last update of the
            # epoch) or outputs: none of them may become the "last good" checkpoint.
            problem: str | None = None
            evaluation: dict[str, Any] = {}  # filled whenever problem stays None
            if not math.isfinite(record["train_loss"]):
                problem = f"training loss became {record['train_loss']}"
            else:
                current = run.arrays()
                bad = [k for k, v in current.items() if k.startswith("model.") and not _finite(v)]
                if bad:
                    problem = f"the weights ({bad[0]}) became NaN or infinite"
                else:
                    evaluation = run.evaluate()
                    loss_key = "test_loss" if "test_loss" in evaluation else "test_mse"
                    # the validation figure too: the checkpoint's history (JSON) cannot hold
                    # a NaN, and the early stop compares it
                    for key in (loss_key, run.monitored):
                        if key in evaluation and not math.isfinite(evaluation[key]):
                            problem = f"{key} became {evaluation[key]}"
                            break
            if problem is not None:
                run.model.load_state_dict(
                    {
                        k[len("model.") :]: v
                        for k, v in good_arrays.items()
                        if k.startswith("model.")
                    }
                )
                if out is None:
                    kept = ""
                elif run.epoch > start_epoch or continued:
                    kept = (
                        f"; the last good checkpoint (epoch {run.epoch}) is kept in "
                        f"{out / 'checkpoint.npz'}"
                    )
                elif saved_meta is not None:
                    kept = (
                        f"; no epoch ended well, so nothing of the run is kept in {out} (the "
                        f"checkpoint it resumed, {file}, is as it was)"
                    )
                else:
                    kept = f"; no epoch ended well, so nothing of the run is kept in {out}"
                if replacing:
                    kept += " (the run saved there before is as it was)"
                raise TrainingDiverged(
                    f"{problem} in epoch {run.epoch + 1}{kept}; try a smaller learning rate "
                    "(--lr, TrainConfig.lr)"
                )
            run.epoch += 1
            run.train_seconds += seconds
            record.update({k: v for k, v in evaluation.items() if k != "predictions"})
            run.history.append(record)
            good_arrays = current
            if out is not None:
                if replacing:  # this run's first checkpoint: the old run's files go now
                    _clear_run_files(out)
                    _write_json(out / "config.json", config.to_dict())
                    replacing = False
                save_checkpoint(out / "checkpoint.npz", good_arrays, run.meta())
                # after the checkpoint, whose history it shows: a run followed while it trains,
                # or stopped mid-way, has its table up to its last checkpoint
                atomic_write_text(out / HISTORY_NAME, history_csv(run.history))
                if run.best_epoch() == run.epoch:
                    save_checkpoint(out / BEST_NAME, good_arrays, run.meta())
                elif resumed is not None and run.epoch == start_epoch + 1:
                    # resumed with its best epoch behind it: carried from the run's directory
                    # into another (in its own, renamed where its images moved), or else the
                    # resumed checkpoint itself where it is that epoch's (a run saved without
                    # best.npz, a checkpoint copied alone, a run stopped between writing its
                    # checkpoint and its best.npz)
                    best = run.best_epoch()
                    has_best = _carry_best(file.parent / BEST_NAME, out / BEST_NAME, best, config)
                    if not has_best and best == start_epoch:
                        save_checkpoint(out / BEST_NAME, *resumed)
                    resumed = None
            bar.set_postfix(_postfix(record))
            log(_epoch_line(record, config.epochs))
            if run.stopped_early:
                if run.epoch < config.epochs:
                    why = _early_news(run)
                    log(f"{EARLY_STOP_NEWS} at epoch {run.epoch} of {config.epochs}: {why}")
                    break
                # its last epoch anyway; said, as a resume for more epochs will train none
                log(
                    f"{EARLY_STOP_NEWS} at epoch {run.epoch}, the last of {config.epochs}: "
                    f"{_early_news(run)}; a resume for more epochs trains none"
                )
    except BaseException:
        if out is not None and not continued and not replacing and run.epoch == start_epoch:
            # no checkpoint of this run was written: its config alone would describe a run
            # that is not there (and the directory, if made for it, is removed when empty);
            # a run it was to replace keeps its own
            with contextlib.suppress(OSError):
                (out / "config.json").unlink(missing_ok=True)
        raise
    finally:
        bar.close()

    return _finish_run(
        run, config, out, started, run.epoch - start_epoch, progress, log, plots, label
    )


def _carry_best(source: Path, target: Path, best: int | None, config: TrainConfig) -> bool:
    """Copy the best epoch's checkpoint of a resumed run (``source``) to the directory it is
    continued in (``target``; the same file in its own directory), where it holds that epoch
    (``best``), and say whether it did; else there is none to carry (a run without a
    validation split, a file removed or of another epoch). The copy names the dataset and
    backend of the resumed run's ``config`` (its images moved, another device asked for), as
    the new ``checkpoint.npz`` does: evaluating or resuming it loads the images where they
    are now."""
    if best is None or not source.is_file():
        return False
    try:
        data = source.read_bytes()
        arrays, meta = load_checkpoint(source)
    except (OSError, CheckpointError):
        return False
    if meta.get("epoch") != best:
        return False
    saved = meta.get("config", {})
    now = dict(saved, dataset=config.dataset, backend=config.backend)
    if now == saved:
        if source.resolve() != target.resolve():
            atomic_write_bytes(target, data)
    else:
        kept = {k: v for k, v in meta.items() if k not in RESERVED_META}
        save_checkpoint(target, arrays, dict(kept, config=now))
    return True


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _early_news(run: _Run) -> str:
    """Why a run stopped early, in words."""
    best = run.best_epoch()
    assert best is not None  # only a run with a validation figure stops early
    return (
        f"{run.monitored} has not improved since epoch {best} for {_epochs(run.epoch - best)}, "
        f"patience {run.config.patience}"
    )


def _finish_run(
    run: _Run,
    config: TrainConfig,
    out: Path | None,
    started: float,
    epochs_trained: int,
    progress: bool | None,
    log: Any,
    plots: bool,
    label: str,
) -> TrainResult:
    """The end of a trained run: its metrics (a generate run's judge and samples first), then
    the plots and ``metrics.json`` in ``out``. ``label`` names a generate run's judge."""
    metrics = final_metrics(run)
    result = TrainResult(
        config,
        run.model,
        run.history,
        metrics,
        out,
        epochs_trained=epochs_trained,
        end_written=out is not None,
    )
    if isinstance(run.model, RowGenerator):
        _finish_generate(run, result, out, progress, log)
    result.metrics["wall_seconds"] = _seconds_since(started)
    if out is not None:
        # metrics.json last: it says the end is written (_end_is_written), so a run stopped
        # while its plots were drawn gets them from a resume at its epoch
        if plots:
            _write_plots(run, result, out)
        atomic_write_text(out / HISTORY_NAME, history_csv(run.history))
        _write_json(out / "metrics.json", result.metrics)
    # last, the run's files written: a warnings filter that makes them errors loses nothing
    where = f"{out}: " if out is not None else label
    if isinstance(run.model, SequenceClassifier):
        _warn_if_no_better_than_a_constant(run, metrics["test_accuracy"], where)
    else:
        _warn_if_no_better_than_copying(run, metrics["test_mse"], metrics["baseline_mse"], where)
    return result


def not_learning_hint(config: TrainConfig) -> str:
    """What the warnings of a run that learnt nothing suggest: a rate too high stays at chance
    on long sequences (the pixels recipe's 2e-3 on 800-step clips) and with momentum
    (RMSprop's 0.9 at Adam's 3e-3), one too low or too few epochs barely move the weights;
    gradient clipping where the run had none (the recipes clip at 1.0)."""
    hint = "Try another learning rate (lr, --lr; long sequences and momentum want lower ones)"
    if config.clip > 0:
        return f"{hint} or more epochs"
    return f"{hint}, more epochs, or gradient clipping (clip, --clip)"


def _warn_if_no_better_than_a_constant(run: _Run, accuracy: float, where: str) -> None:
    """A classifier that ends where always answering one class would, within two standard
    errors of that answer's accuracy on the test split (a binomial's, at its share): the
    run learnt nothing it can use, which its figures alone do not say (a rate too high for
    long sequences leaves the loss at the labels' entropy, epoch after epoch). A warning,
    not an error: the run and its files are whole. Not where that bound reaches 100 %, which
    no accuracy is above: a test split of one class, which a constant answer gets right, or
    one too small to tell (of 4 images, 2 of each of two classes, 4 right is within two
    standard errors of 2). ``where`` starts the message: the run's directory, or a generate
    run's judge's label."""
    labels = np.asarray(run.data.y_test)
    if labels.size == 0:
        return
    counts = np.bincount(labels)
    commonest = int(np.argmax(counts))
    share = counts[commonest] / labels.size
    bound = share + 2 * math.sqrt(share * (1 - share) / labels.size)
    if bound >= 1 or accuracy > bound:
        return
    correct = round(accuracy * labels.size)
    warn_at_caller(
        f"{where}test accuracy {accuracy:.2%} ({correct} of {labels.size}) is no better than "
        f"always answering class {commonest}, the test split's commonest ({share:.2%} of it): "
        f"the model learnt little or nothing. {not_learning_hint(run.config)}",
        UserWarning,
    )


def _warn_if_no_better_than_copying(run: _Run, mse: float, baseline: float, where: str) -> None:
    """A generator whose next-row MSE on the test split is no lower than copying each row
    from the one above (each frame from the one before) has learnt nothing it can use: the
    generate task's counterpart of :func:`_warn_if_no_better_than_a_constant`. Not where
    that baseline is 0 (every test row the one above it, as in blank images): no MSE is lower,
    as no accuracy beats a constant answer on a test split of one class."""
    if mse < baseline or baseline <= 0:
        return
    rows = "row from the row above" if run.data.frame_shape is None else "frame from the one before"
    warn_at_caller(
        f"{where}test MSE {mse:.4g} is no better than copying each {rows} ({baseline:.4g}): "
        f"the model learnt little or nothing. {not_learning_hint(run.config)}",
        UserWarning,
    )


def _end_is_written(out: Path, epoch: int) -> bool:
    """Whether ``out/metrics.json`` is the end of the run at ``epoch``: a run stopped after
    its last checkpoint has none, or an earlier call's (of fewer epochs)."""
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none, or not JSON: written again
        return False
    return isinstance(metrics, dict) and metrics.get("epochs") == epoch


def _seconds_since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array).all())


def _epoch_desc(done: int, epochs: int) -> str:
    """The progress bar's description while epoch ``done + 1`` of ``epochs`` trains."""
    return f"epoch {min(done + 1, epochs)}/{epochs}"


def _postfix(record: dict[str, float]) -> dict[str, str]:
    keys = ("train_loss", "test_accuracy", "test_mse", "val_accuracy", "val_mse")
    return {
        k.replace("test_", "").replace("train_", ""): f"{record[k]:.4f}"
        for k in keys
        if k in record
    }


#: How ``train``'s ``log`` lines of an epoch's end begin: "epoch 3/40: train_loss=...".
EPOCH_NEWS = "epoch "
#: How the news of a run ended by ``patience`` begins: the CLI shows it
EARLY_STOP_NEWS = "stopped early"


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    figures = " ".join(
        f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in record.items()
        if k != "epoch"
    )
    return f"{EPOCH_NEWS}{record['epoch']}/{epochs}: {figures}"


#: The validation images (at most) on which a generate run fits its recognition's noise
#: variance each epoch: C forward passes over each, where training takes about three over
#: each training image. One number to fit: the digits' 135 validation images took the test
#: log-loss from 0.229 to 0.104 (README).
RECOGNITION_FIT_IMAGES = 1000


def recognition_variance(record: Mapping[str, Any]) -> float | None:
    """The noise variance a generate run's recognition takes from an epoch's ``record``: the
    one fitted on its validation split (``recognition_variance``), else its training MSE
    (``train_loss``, overconfident: pixels' errors are not independent); None where neither
    is recorded."""
    value = record.get("recognition_variance", record.get("train_loss"))
    return None if value is None else float(value)


#: The test figures of the best epoch (``best_`` and these, in the metrics) by task
BEST_TEST_FIGURES = {"classify": ("test_accuracy", "test_loss"), "generate": ("test_mse",)}


def final_metrics(run: _Run) -> dict[str, Any]:
    """The metrics of the run's model now, on the test split."""
    evaluation = run.evaluate()
    metrics: dict[str, Any] = {
        "task": run.config.task,
        "dataset": run.data.name,
        "seq": run.config.seq,
        "epochs": run.epoch,
        "backend": run.backend.name,
        "train_seconds": round(run.train_seconds, 3),
        "num_train": int(run.train_images.shape[0]),
        "num_test": int(run.data.x_test.shape[0]),
    }
    if run.x_val is not None:
        metrics["num_val"] = run.num_val
    if run.config.val_fraction > 0:  # the saved history's, whatever images are evaluated
        best = run.best_epoch()
        record = {} if best is None else run.history[[r["epoch"] for r in run.history].index(best)]
        # the epoch of the lowest validation loss or MSE, that figure, and the test figures
        # that epoch recorded: those of best.npz, the model the split selects (the others
        # are the last epoch's model's)
        recorded = (run.monitored, *BEST_TEST_FIGURES[run.config.task])
        metrics.update(
            best_epoch=best,
            **{f"best_{key}": record.get(key) for key in recorded},
            stopped_early=run.stopped_early,
        )
    if isinstance(run.model, SequenceClassifier):
        preds = evaluation["predictions"]
        labels = run.data.y_test
        k = run.data.num_classes
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (labels, preds), 1)
        metrics.update(
            test_accuracy=evaluation["test_accuracy"],
            test_loss=evaluation["test_loss"],
            confusion_matrix=confusion.tolist(),
        )
        if run.x_val is not None:
            metrics.update(val_accuracy=evaluation["val_accuracy"], val_loss=evaluation["val_loss"])
    else:
        baseline = evaluation["baseline_mse"]
        metrics.update(
            test_mse=evaluation["test_mse"],
            baseline_mse=baseline,
            # None (JSON null) where every test row equals the one above it (blank images):
            # no ratio to that baseline exists, and a ZeroDivisionError came after training
            mse_ratio=evaluation["test_mse"] / baseline if baseline > 0 else None,
        )
        # the generator as a classifier: the class under which it predicts a test image best
        # among the classes it was trained on (a saved run's, whatever images it evaluates)
        errors = run.model.class_mse(run.x_test, run.trained_classes)
        recognised = errors.argmin(axis=1)
        metrics["test_recognition_accuracy"] = float(np.mean(recognised == run.data.y_test))
        variance = recognition_variance(run.history[-1]) if run.history else None
        metrics["recognition_variance"] = variance
        # how well its probabilities are calibrated, on the test images of trained classes
        # (the others have probability 0); None where none is or a figure is not finite
        trained = np.isin(run.data.y_test, run.trained_classes)
        metrics["test_recognition_log_loss"] = None
        if (
            variance is not None
            and variance > 0
            and trained.any()
            and np.isfinite(errors[trained][:, run.trained_classes]).all()
        ):
            loss = class_log_loss(
                errors[trained],
                run.data.y_test[trained],
                run.x_test.shape[0] * run.x_test.shape[2],
                variance,
            )
            # a variance so small that pixels / (2 variance) overflows makes a mistake's
            # score inf, which JSON (metrics.json) cannot hold
            metrics["test_recognition_log_loss"] = loss if math.isfinite(loss) else None
        if run.x_val is not None:
            metrics["val_mse"] = evaluation["val_mse"]
    return metrics


SAMPLES_PER_CLASS = 10
SAMPLE_NOISE = 0.1


def sample_images(
    model: RowGenerator,
    image_shape: tuple[int, int],
    classes: list[int],
    per_class: int,
    seed: int,
    noise: float = SAMPLE_NOISE,
    top_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images for each class in ``classes``: ``(images (n, H, W), labels (n,))``."""
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    images = model.sample(
        labels, image_shape[0], top_rows=top_rows, noise=noise, rng=np.random.default_rng([seed, 3])
    )
    return images, labels


def classifier_config(config: TrainConfig) -> TrainConfig:
    """The classify-rows recipe on the same data, seed and backend: the judge of samples."""
    return make_config(
        task="classify",
        seq="rows",
        dataset=config.dataset,
        seed=config.seed,
        backend=config.backend,
        dtype=config.dtype,
    )


#: How the news of a generate run's judge begins (``train``'s ``log``): the CLI shows it, as
#: that training takes longer than the run's own epochs on a dataset of MNIST's size
JUDGE_NEWS = "training the classifier that judges the samples"


def _finish_generate(
    run: _Run, result: TrainResult, out: Path | None, progress: Any, log: Any
) -> None:
    """Train the judging classifier (saved in ``out/classifier``), draw 10 samples per class
    and record ``sample_class_accuracy``; keep the samples for the grid plot."""
    judge_config = classifier_config(run.config)
    saved_epoch = (
        None if out is None else _saved_judge_epoch(out / JUDGE_DIR, judge_config, run.data_digest)
    )
    if out is None or saved_epoch is None:
        where = "" if out is None else f", saved in {out / JUDGE_DIR}"
        log(f"{JUDGE_NEWS} ({judge_config.epochs} epochs of the classify-rows recipe{where})")
        resume = None
    else:
        # The judge depends on the data, seed, dtype and recipe alone, not on the generator:
        # the one an earlier call trained (in full, or cut short) is as good as a new one.
        if saved_epoch < judge_config.epochs:
            log(
                f"{JUDGE_NEWS} (resuming {out / JUDGE_DIR} at epoch {saved_epoch} of "
                f"{judge_config.epochs})"
            )
        else:
            log(f"the classifier that judges the samples is the one in {out / JUDGE_DIR}")
        resume = out / JUDGE_DIR
    judge = _held_train(
        judge_config,
        None if out is None else out / JUDGE_DIR,
        resume,
        progress,
        run.data,
        lambda message: log(f"{JUDGE_DIR}: {message}"),
        False,  # plots
        f"{JUDGE_DIR}: ",  # the bar's label: it follows the run's own, also "epoch k/E"
    )
    images, labels, judged = judge_samples(run, judge.model)
    result.metrics.update(judged)
    result.metrics["classifier_test_accuracy"] = judge.metrics["test_accuracy"]
    result.extra.update(samples=images, sample_labels=labels)


def _saved_judge_epoch(judge_dir: Path, judge_config: TrainConfig, digest: str) -> int | None:
    """The epoch of the judge saved in ``judge_dir`` where it is one of ``judge_config``'s
    recipe trained on the images of ``digest`` (:func:`rnncu.data.dataset_digest`), else
    None: none there, or another (other images, another seed), or a checkpoint that cannot
    be read. Such a judge is trained anew, replacing it. The backend and the dataset's path
    are set aside: the same images moved need no new judge. A judge saved before digests
    has only its path to name its images."""
    if not (judge_dir / "checkpoint.npz").is_file():
        return None
    try:
        _, _, meta, saved = _read_run_checkpoint(judge_dir)
    except (CheckpointError, OSError, ValueError):
        return None
    aside = dataclasses.replace(saved, backend=judge_config.backend, dataset=judge_config.dataset)
    if aside != judge_config:
        return None
    saved_digest = meta.get("data", {}).get("digest")
    if saved_digest is None:
        same_images = saved.dataset == judge_config.dataset
    else:
        same_images = saved_digest == digest
    if not same_images:
        return None
    return int(meta.get("epoch", 0))  # as _Run.restore reads it


def judge_samples(
    run: _Run, judge: SequenceClassifier
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Draw ``SAMPLES_PER_CLASS`` images of every class the training labels hold (labels
    with gaps, such as {3, 7, 9}, leave classes the model never saw: their samples were
    noise, judged as failures) from a generate run's model and let ``judge`` classify them;
    returns ``(images, labels, {"sample_class_accuracy": ...})``."""
    if not isinstance(run.model, RowGenerator):
        raise TypeError(
            f"judge_samples: run is a {run.config.task!r} run; samples come from a generate run"
        )
    if not isinstance(judge, SequenceClassifier):
        raise TypeError(
            f"judge_samples: judge must be a SequenceClassifier (a classify run's model), got "
            f"{type(judge).__name__}"
        )
    images, labels = sample_images(
        run.model,
        run.data.image_shape,
        run.data.trained_classes,
        SAMPLES_PER_CLASS,
        run.config.seed,
    )
    return images, labels, sample_metrics(judge, images, labels, run.config.seq)


def sample_metrics(
    judge: SequenceClassifier, images: np.ndarray, labels: np.ndarray, seq: str = "rows"
) -> dict[str, float]:
    """Share of ``images`` that ``judge`` classifies as their requested ``labels``."""
    x = judge.backend.asarray(to_sequences(images.astype(np.float32), seq), judge.rnn.dtype)
    judge.eval()
    preds = judge.predict(x)
    return {
        "sample_class_accuracy": float(np.mean(preds == labels)),
        "samples_per_class": int(len(labels) // max(1, len(set(labels.tolist())))),
    }


def _write_plots(run: _Run, result: TrainResult, out: Path) -> None:
    from rnncu import plots

    plots.plot_history(
        result.history,
        out / "curves.png",
        title=f"{run.config.task} {run.data.name} ({run.config.seq})",
        clip=run.config.clip,
    )
    if "confusion_matrix" in result.metrics:
        plots.plot_confusion(np.asarray(result.metrics["confusion_matrix"]), out / "confusion.png")
    if "samples" in result.extra:
        shown = display_images(result.extra["samples"], run.data.frame_shape)
        nrows = len(shown) // SAMPLES_PER_CLASS
        pad = run.data.display_pad
        layout = samples_layout(nrows, run.data.display_shape, pad)
        # a warning, not news: the command line shows it, and so does Python
        if layout is None:
            warn_at_caller(
                f"{out / 'samples.png'} left out: even one sample of each of {nrows} classes, "
                f"at one pixel a pixel, makes a grid of more than {plots.MAX_GRID_PIXELS:,} "
                "pixels, which image readers refuse (rnncu generate --classes draws some)",
                UserWarning,
            )
            return
        ncols, scale = layout
        if (ncols, scale) != (SAMPLES_PER_CLASS, plots.GRID_SCALE):
            warn_at_caller(
                f"{out / 'samples.png'} shows {ncols} of the {SAMPLES_PER_CLASS} samples of "
                f"each class at {scale} pixel(s) a pixel: the whole grid would have more than "
                f"{plots.MAX_GRID_PIXELS:,} pixels, which image readers refuse",
                UserWarning,
            )
        keep = np.arange(len(shown)) % SAMPLES_PER_CLASS < ncols  # each class's first ncols
        plots.save_image_grid(shown[keep], out / "samples.png", ncols=ncols, scale=scale, pad=pad)


def samples_layout(nrows: int, shape: tuple[int, int], pad: int = 1) -> tuple[int, int] | None:
    """``(ncols, scale)`` of the samples' grid, ``nrows`` classes of :data:`SAMPLES_PER_CLASS`
    images of ``shape`` as shown, ``pad`` apart: every sample at the plots' scale where the
    grid stays within what image readers open (:data:`rnncu.plots.MAX_GRID_PIXELS`), else at
    a smaller scale, else fewer samples a class at one pixel a pixel; None where not even one
    fits."""
    from rnncu import plots

    for scale in range(plots.GRID_SCALE, 0, -1):
        pixels = plots.grid_pixels(nrows, SAMPLES_PER_CLASS, shape, pad=pad, scale=scale)
        if pixels <= plots.MAX_GRID_PIXELS:
            return SAMPLES_PER_CLASS, scale
    fits = plots.grid_columns_within(nrows, shape, pad=pad, scale=1)
    return (fits, 1) if fits else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_run_meta(file: Path, meta: dict[str, Any]) -> None:
    """The types of a run checkpoint's metadata fields (a hand-edited or foreign file would
    otherwise fail later with a bare TypeError or AttributeError); CheckpointError naming the
    file and the field."""

    def bad(name: str, expected: str) -> CheckpointError:
        return CheckpointError(
            f"{file}: metadata field {name!r}: expected {expected}, got {_short(meta[name])}"
        )

    if "epoch" in meta and not (_is_int(meta["epoch"]) and meta["epoch"] >= 0):
        raise bad("epoch", "an integer >= 0")
    seconds = meta.get("train_seconds", 0.0)
    if not (_is_number(seconds) and math.isfinite(seconds) and seconds >= 0):
        raise bad("train_seconds", "a number >= 0")
    history = meta.get("history", [])
    records_ok = isinstance(history, list) and all(
        isinstance(r, dict)
        and {"epoch", "train_loss"} <= r.keys()
        and all(_is_number(v) for v in r.values())
        for r in history
    )
    if not records_ok:
        raise bad("history", "a list of per-epoch records (epoch, train_loss, ...: numbers)")
    data = meta.get("data", {})
    if not isinstance(data, dict):
        raise bad("data", "a dict (name, image_shape, num_classes, seq_shape)")
    for key, form in (("seq_shape", "[T, D]"), ("image_shape", "[H, W]")):
        shape = data.get(key, [1, 1])
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(v) for v in shape)):
            raise CheckpointError(
                f"{file}: metadata field 'data.{key}': expected {form} integers, got "
                f"{_short(shape)}"
            )
    if "num_classes" in data and not (_is_int(data["num_classes"]) and data["num_classes"] >= 1):
        raise CheckpointError(
            f"{file}: metadata field 'data.num_classes': expected a positive integer, got "
            f"{_short(data['num_classes'])}"
        )
    classes = data.get("trained_classes", [0])
    limit = data.get("num_classes", math.inf)
    if not (
        isinstance(classes, list)
        and classes
        and all(_is_int(c) and 0 <= c < limit for c in classes)
        and classes == sorted(set(classes))
    ):
        raise CheckpointError(
            f"{file}: metadata field 'data.trained_classes': expected distinct ascending class "
            f"indices in [0, num_classes), got {_short(classes)}"
        )
    framing = data.get("framing", {"extent": 1.0, "center": [0.0, 0.0], "peak": 1.0})
    if not (
        isinstance(framing, dict)
        and set(framing) == {"extent", "center", "peak"}
        and _is_number(framing["extent"])
        and 0 < framing["extent"] <= 1
        and _is_number(framing["peak"])
        and 0 < framing["peak"] <= 1
        and isinstance(framing["center"], list)
        and len(framing["center"]) == 2
        and all(_is_number(v) and math.isfinite(v) for v in framing["center"])
    ):
        raise CheckpointError(
            f"{file}: metadata field 'data.framing': expected {{'extent': a number in (0, 1], "
            f"'center': [y, x] numbers, 'peak': a number in (0, 1]}}, got {_short(framing)}"
        )
    frames = data.get("frame_shape", [1, 1])
    if not (
        isinstance(frames, list) and len(frames) == 2 and all(_is_int(v) and v >= 1 for v in frames)
    ):
        raise CheckpointError(
            f"{file}: metadata field 'data.frame_shape': expected [H, W] positive integers (a "
            f"clip's frame), got {_short(frames)}"
        )
    row = data.get("image_shape", [1, frames[0] * frames[1]])[1]
    if "frame_shape" in data and frames[0] * frames[1] != row:
        raise CheckpointError(
            f"{file}: metadata field 'data.frame_shape': frames of {frames[0]}x{frames[1]} "
            f"pixels do not fill the clip's rows of {row} ('data.image_shape')"
        )
    digest = data.get("digest", "0" * 64)
    if not (
        isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    ):
        raise CheckpointError(
            f"{file}: metadata field 'data.digest': expected a SHA-256 hex digest (64 "
            f"characters 0-9a-f), got {_short(digest)}"
        )


def _read_run_checkpoint(
    path: str | Path,
) -> tuple[Path, dict[str, np.ndarray], dict[str, Any], TrainConfig]:
    """The file, arrays, metadata and config of a training run's checkpoint (given a run
    directory or the file itself); CheckpointError when it is not one."""
    file = resolve_checkpoint(path)
    arrays, meta = load_checkpoint(file)
    if meta.get("kind") != "train-run" or "config" not in meta:
        raise CheckpointError(f"{file}: not a training checkpoint (no run config)")
    try:
        config = TrainConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: bad saved config ({exc})") from None
    _check_run_meta(file, meta)
    return file, arrays, meta, config


def _saved_dataset(config: TrainConfig, file: Path) -> ImageDataset:
    """The dataset a checkpoint's config names. A path that no longer exists says it came
    from the checkpoint: the user never typed it in this command."""
    try:
        return load_dataset(config.dataset)
    except FileNotFoundError as exc:
        raise SavedDatasetNotFound(
            f"{exc}; that dataset path comes from the config saved in {file}"
        ) from None


def _check_saved_images(
    data: ImageDataset, meta: dict[str, Any], file: Path, config: TrainConfig
) -> None:
    """The images must have the size the model was trained on: checked before anything that
    depends on it (an 8x8 dataset for a 12x20 run with --augment 5 said "augment: expected
    at most 3", and pixels of 20x12 images passed for 12x20 ones: the same sequence shape)."""
    saved = meta.get("data", {}).get("image_shape")
    saved_frames = meta.get("data", {}).get("frame_shape")
    frames = None if data.frame_shape is None else list(data.frame_shape)
    if saved is not None and list(data.image_shape) != list(saved):
        if frames is None and saved_frames is None:
            trained_on = f"{saved[0]}x{saved[1]}"
        else:  # clips named as clips: "8x100 images" were 8 frames of 10x10 as they are held
            trained_on = _sized(saved, saved_frames)
        raise ValueError(
            f"dataset {config.dataset!r} has {_sized(data.image_shape, frames)}, the model of "
            f"{file} was trained on {trained_on}"
        )
    if saved is not None and frames != saved_frames:
        # clips of 8 frames of 12x12 and images of 8x144 make the same sequences: a model of
        # one would read the other without a word
        raise ValueError(
            f"dataset {config.dataset!r} holds {contents(frames)}, the model of {file} was "
            f"trained on {contents(saved_frames)}"
        )


def _sized(image_shape: Any, frame_shape: Any) -> str:
    """What a dataset of ``image_shape`` and ``frame_shape`` holds, with its sizes, in words:
    ``"8x8 images"``, ``"clips of 8 frames of 10x10"``."""
    if frame_shape is None:
        return "{}x{} images".format(*image_shape)
    return "clips of {} frames of {}x{}".format(image_shape[0], *frame_shape)


def _check_saved_steps(run: _Run, file: Path) -> None:
    """A resumed run must go on with the images it was trained on (``--dataset``: the same
    images, moved). Every epoch takes ``ceil(N / batch_size)`` optimizer steps, so a
    training split of another size shows in the saved step count; continuing anyway would
    make the learning-rate schedule, a function of steps per epoch, jump."""
    expected = run.epoch * run.steps_per_epoch
    if run.optimizer.step_count != expected:
        n = run.train_images.shape[0]
        held = "" if run.x_val is None else f" besides the {run.num_val} held out to validate"
        raise ValueError(
            f"dataset {run.config.dataset!r} has {n} training images{held} ({run.steps_per_epoch} "
            f"steps per epoch in batches of {run.config.batch_size}), but the run of {file} "
            f"took {run.optimizer.step_count} steps in {run.epoch} epochs: not the images it "
            "was trained on"
        )


def _warn_if_other_images(run: _Run, meta: dict[str, Any], file: Path) -> None:
    """A resumed run whose images have the count and size of its own (so the step count
    passed) but other contents goes on with them, which is no longer the run a straight
    training gives; saying so costs nothing where the checkpoint holds a digest (older ones
    do not). The same for a validation split that drew other images of the same images (a
    scikit-learn whose stratified split changed)."""
    saved = meta.get("data", {}).get("digest")
    if saved is not None and saved != run.data_digest:
        warn_at_caller(
            f"{file}: the images of dataset {run.config.dataset!r} are not those the run was "
            "trained on (the same count and size, other contents): the run goes on with them",
            UserWarning,
        )
        return
    saved_split = meta.get("data", {}).get("val_digest")
    if saved_split is not None and run.val_digest is not None and saved_split != run.val_digest:
        warn_at_caller(
            f"{file}: the validation split of dataset {run.config.dataset!r} holds other "
            "images than the run's (its images are the same: another version of "
            "scikit-learn's stratified split?): the run goes on with this split, training on "
            "some images it validated on before",
            UserWarning,
        )


def _fit_saved_classes(
    data: ImageDataset, meta: dict[str, Any], file: Path, config: TrainConfig
) -> ImageDataset:
    """``data`` with the class count of the saved model. A dataset whose labels use fewer
    classes still fits the model (its labels are some of the model's classes); one with more
    does not, and saying so beats a shape mismatch of the head's weights."""
    saved = meta.get("data", {}).get("num_classes")
    if saved is None or data.num_classes == saved:
        return data
    if data.num_classes > saved:
        raise ValueError(
            f"dataset {config.dataset!r} has {data.num_classes} classes, the model of {file} "
            f"was trained on {saved}"
        )
    return dataclasses.replace(data, num_classes=saved)


def load_run(
    path: str | Path, backend: str | None = None, dataset: str | None = None
) -> tuple[_Run, dict[str, Any]]:
    """Rebuild a saved run (model weights restored) from a run directory or checkpoint file.
    ``backend``/``dataset`` override the saved ones. Returns ``(run, meta)``. Where the run's
    validation split (``val_fraction``) cannot be made of ``dataset``'s images (too few of a
    class), or they are not the run's (their digest differs from the saved one: a share of
    them would be no validation of the run; also the saved dataset's, where its path holds
    other images now), the run has none (``x_val`` None,
    ``val_problem`` saying why): the model still evaluates on their test split and
    generates. The run's own images moved keep their split.

    The run is the trainer's internal state object (private: its attributes may change);
    what callers use is stable: ``config``, ``data`` (the :class:`ImageDataset`), ``model``,
    ``backend``, ``epoch`` and ``history``."""
    return _load_run(path, backend, dataset)


def _load_run(
    path: str | Path,
    backend: str | None,
    dataset: str | None,
    data: ImageDataset | None = None,
) -> tuple[_Run, dict[str, Any]]:
    """:func:`load_run`; ``data``, where given, is ``dataset`` loaded (a generate run's, for
    its judge: the same images, not read twice)."""
    file, arrays, meta, config = _read_run_checkpoint(path)
    changes: dict[str, Any] = {
        k: v for k, v in (("backend", backend), ("dataset", dataset)) if v is not None
    }
    config = dataclasses.replace(config, **changes).validate()
    if data is None:
        data = _saved_dataset(config, file) if dataset is None else load_dataset(config.dataset)
    _check_saved_images(data, meta, file, config)
    data = _fit_saved_classes(data, meta, file, config)
    no_split = None
    saved_digest = meta.get("data", {}).get("digest")
    if config.val_fraction > 0 and saved_digest is not None:
        # a share held out of other images is no validation of this run: the figures would
        # pass for its own (also where the saved dataset's path holds other images now)
        if dataset_digest(data) != saved_digest:
            no_split = "they are not the images the run was trained on"
    run = _Run(config, data, split_optional=True, no_split=no_split)
    saved_split = meta.get("data", {}).get("val_digest")
    if run.val_digest is not None and saved_split not in (None, run.val_digest):
        # the run's images, split otherwise (another scikit-learn): some of these it trained on
        run.x_val = run.y_val = None
        run.num_val, run.val_digest = 0, None
        run.val_problem = "the split draws other images of them than the run's did"
    if list(run.seq_shape) != list(meta.get("data", {}).get("seq_shape", run.seq_shape)):
        raise ValueError(
            f"dataset {config.dataset!r} has sequences {run.seq_shape}, the checkpoint was "
            f"trained on {tuple(meta['data']['seq_shape'])}"
        )
    run.restore(file, arrays, meta)
    return run, meta


def evaluate_run(
    path: str | Path, backend: str | None = None, dataset: str | None = None
) -> dict[str, Any]:
    """Metrics of a saved run on its (or ``dataset``'s) test split; for generate runs with a
    saved judging classifier also ``sample_class_accuracy`` and the judge's own
    ``classifier_test_accuracy``, as training reports them. A judge whose training was cut
    short (the run stopped while training it) is not used: a warning says so, and those two
    figures are left out; the same for a run that saved no judge (stopped in the judge's
    first epoch). So is a judge trained on other images than the run's last training (a run
    resumed on other images, stopped before the judge of those replaced the old one)."""
    run, meta = load_run(path, backend, dataset)
    if run.val_problem is not None:
        warn_at_caller(
            f"dataset {run.config.dataset!r}: the run's validation split cannot be made of its "
            f"images ({run.val_problem}): the validation figures (num_val, val_...) are left "
            "out",
            UserWarning,
        )
    metrics = final_metrics(run)
    if isinstance(run.model, RowGenerator):
        judge_dir = resolve_checkpoint(path).parent / JUDGE_DIR
        if (judge_dir / "checkpoint.npz").exists():
            # judged on the generator's images: the judge's own saved path may be one they
            # had before they moved (a judge is reused across such a move)
            judge_run, judge_meta = _load_run(judge_dir, backend, run.config.dataset, run.data)
            if not isinstance(judge_run.model, SequenceClassifier):
                raise ValueError(
                    f"{judge_dir}: holds a {judge_run.config.task!r} run; the judge of a "
                    "generate run's samples is a classify run"
                )
            # the images the run and its judge were trained on, as their checkpoints say
            # (not those evaluated on, which ``dataset`` may change); none before digests
            trained_on = meta.get("data", {}).get("digest")
            judged_on = judge_meta.get("data", {}).get("digest")
            if None not in (trained_on, judged_on) and trained_on != judged_on:
                # training would not use it: _saved_judge_epoch trains a judge of the run's
                warn_at_caller(
                    f"{judge_dir}: the classifier that judges the samples was trained on other "
                    "images than the run (the run was resumed on other images and stopped "
                    "before their judge was saved): sample_class_accuracy and "
                    "classifier_test_accuracy are left out; `rnncu train --resume "
                    f"{judge_dir.parent} --epochs {run.epoch}` trains their judge",
                    UserWarning,
                )
                return metrics
            if judge_run.epoch < judge_run.config.epochs:
                warn_at_caller(
                    f"{judge_dir}: the classifier that judges the samples stopped at epoch "
                    f"{judge_run.epoch} of {judge_run.config.epochs} (the run was stopped "
                    "while training it): sample_class_accuracy and classifier_test_accuracy "
                    "are left out; `rnncu train --resume "
                    f"{judge_dir.parent} --epochs {run.epoch}` finishes it",
                    UserWarning,
                )
                return metrics
            metrics.update(judge_samples(run, judge_run.model)[2])
            metrics["classifier_test_accuracy"] = judge_run.evaluate()["test_accuracy"]
        elif run.finished:
            # the judge leaves nothing before its first checkpoint: a run stopped in its
            # first epoch has no classifier/, and the figures are missing as for one cut short
            # (a run stopped in its own epochs has none yet either: its judge trains after them)
            warn_at_caller(
                f"{judge_dir}: no classifier that judges the samples was saved (the run was "
                "stopped in its first epoch): sample_class_accuracy and "
                "classifier_test_accuracy are left out; `rnncu train --resume "
                f"{judge_dir.parent} --epochs {run.epoch}` trains it",
                UserWarning,
            )
    return metrics


def _config_model(
    config: TrainConfig, sequence: tuple[int, int], num_classes: int, backend: Any
) -> SequenceClassifier | RowGenerator:
    """The model ``config`` describes, for sequences of ``sequence`` = (T, D)."""
    return build_model(
        config.task,
        sequence,
        num_classes,
        config.hidden,
        config.layers,
        config.nonlinearity,
        config.init,
        config.seed,
        config.dtype,
        backend,
    )


def _restore_weights(model: Any, file: Path, arrays: dict[str, np.ndarray], dtype: Any) -> None:
    """The model's weights from a checkpoint's ``model.`` arrays; CheckpointError naming
    ``file`` where they do not fit."""
    params = check_arrays(file, arrays, model.param_shapes(), prefix="model.", dtype=dtype)
    try:
        model.load_state_dict(params)
    except ValueError as exc:
        raise CheckpointError(f"{file}: {exc}") from None


@dataclass
class SavedModel:
    """A saved run's model, rebuilt from its checkpoint alone (no dataset is read)."""

    #: a :class:`rnncu.tasks.SequenceClassifier` or :class:`rnncu.tasks.RowGenerator`, its
    #: weights restored, in eval mode
    model: SequenceClassifier | RowGenerator
    config: TrainConfig
    #: the images it was trained on: (H, W); for clips (T, h*w), ``frame_shape`` (h, w)
    image_shape: tuple[int, int]
    frame_shape: tuple[int, int] | None
    file: Path
    #: the classes its training labels held (a checkpoint older than this field: all)
    trained_classes: tuple[int, ...] = ()
    #: the training loss of the checkpoint's epoch (a generate run's: the per-pixel MSE);
    #: None where unrecorded
    train_loss: float | None = None
    #: where its training images hold their ink (:func:`rnncu.data.frame_images`); None for
    #: clips and for checkpoints older than this field
    framing: Framing | None = None
    #: the noise variance of a generate run's recognition, from the checkpoint's epoch
    #: (:func:`recognition_variance`: fitted on the validation split, else the training MSE)
    noise_variance: float | None = None

    @property
    def num_classes(self) -> int:
        """The classes the model tells apart (generates)."""
        return int(self.model.num_classes)


def load_model(path: str | Path, backend: str | None = None) -> SavedModel:
    """The model of the run saved at ``path`` (a run directory or checkpoint file, ``best.npz``
    too), on ``backend`` (None: the saved one), without its dataset: for recognising new
    images (:func:`predict_images`). CheckpointError where the file is not a run's, or
    lacks what rebuilding the model needs."""
    file, arrays, meta, config = _read_run_checkpoint(path)
    if backend is not None:
        config = dataclasses.replace(config, backend=backend).validate()
    data = meta.get("data", {})
    missing = [key for key in ("image_shape", "num_classes", "seq_shape") if key not in data]
    if missing:
        raise CheckpointError(
            f"{file}: metadata field 'data' lacks {', '.join(missing)}: the model cannot be "
            "rebuilt without its dataset (rnncu evaluate --dataset, load_run)"
        )
    image_shape = (int(data["image_shape"][0]), int(data["image_shape"][1]))
    frames = data.get("frame_shape")
    frame_shape = None if frames is None else (int(frames[0]), int(frames[1]))
    sequence = seq_shape(image_shape, config.seq)
    if list(sequence) != list(data["seq_shape"]):
        raise CheckpointError(
            f"{file}: metadata field 'data.seq_shape': {data['seq_shape']} is not the "
            f"{config.seq!r} view of {image_shape[0]}x{image_shape[1]} images {list(sequence)}"
        )
    from rnncu.backend import get_backend

    num_classes = int(data["num_classes"])
    model = _config_model(config, sequence, num_classes, get_backend(config.backend))
    _restore_weights(model, file, arrays, np.dtype(config.dtype))
    model.eval()
    trained = tuple(int(c) for c in data.get("trained_classes", range(num_classes)))
    epoch = meta.get("epoch")
    records = [r for r in meta.get("history", []) if r["epoch"] == epoch]
    train_loss = float(records[-1]["train_loss"]) if records else None
    variance = recognition_variance(records[-1]) if records else None
    saved_framing = data.get("framing")
    framing = None
    if saved_framing is not None:
        center = saved_framing["center"]
        framing = Framing(
            float(saved_framing["extent"]),
            (float(center[0]), float(center[1])),
            float(saved_framing["peak"]),
        )
    return SavedModel(
        model, config, image_shape, frame_shape, file, trained, train_loss, framing, variance
    )


def predict_images(
    path: str | Path | SavedModel,
    images: Any,
    backend: str | None = None,
    batch_size: int = 512,
) -> dict[str, np.ndarray]:
    """Recognise ``images`` with the run saved at ``path`` (or a :class:`SavedModel`).
    ``images``: a NumPy array (N, H, W) of the run's image size, one (H, W), or for a run of
    clips (N, T, h, w) / (N, T, h*w), or one clip (T, h, w); pixels as datasets take them
    (integers 0..255, floats in [0, 1], bool). Returns host arrays: ``classes`` (N,) int64
    and ``probabilities`` (N, C) float64.

    A classify run gives the softmax of its logits (``classes`` is its argmax). A generate
    run recognises an image by the class under which it predicts the image's rows best:
    ``mse`` (N, C) is each image's next-row MSE under each class the run trained on (inf for
    the others, :meth:`rnncu.tasks.RowGenerator.class_mse`), ``classes`` its argmin, and
    ``probabilities`` the posterior of a Gaussian noise per pixel
    (:func:`rnncu.tasks.class_posterior`) whose variance the checkpoint's epoch recorded
    (:attr:`SavedModel.noise_variance`): fitted on the run's validation split, or without
    one the training MSE (overconfident, as neighbouring pixels' errors are not
    independent).

    Files are read by :func:`rnncu.data.read_images`, which also resizes. ``backend`` (None:
    the saved one) is for a ``path``; a :class:`SavedModel` is on the backend it was loaded
    on."""
    if isinstance(path, SavedModel) and backend is not None:
        # the model's arrays already live on its backend: this one would be ignored
        raise ValueError(
            f"backend: {backend!r} given with a loaded model (on {path.model.backend.name}); "
            "load_model(path, backend=...) chooses it"
        )
    saved = path if isinstance(path, SavedModel) else load_model(path, backend)
    variance = saved.noise_variance
    if isinstance(saved.model, RowGenerator) and not (
        variance is not None and math.isfinite(variance) and variance > 0
    ):
        raise ValueError(
            f"{saved.file}: records no positive noise variance for its epoch (fitted on a "
            f"validation split, else the training MSE), which a generate run's recognition "
            f"takes (got {variance})"
        )
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images: expected a NumPy array, got {type(images).__name__}")
    height, width = saved.image_shape
    shape = tuple(images.shape)
    if saved.frame_shape is None:
        form = f"(N, {height}, {width}) or one image ({height}, {width})"
        if shape == (height, width):
            images = images[None]
    else:
        h, w = saved.frame_shape
        form = f"(N, {height}, {h}, {w}), (N, {height}, {h * w}) or one clip ({height}, {h}, {w})"
        if shape == (height, h, w):
            images = images[None]
        if images.ndim == 4 and tuple(images.shape[1:]) == (height, h, w):
            images = images.reshape(images.shape[0], height, width)
    if tuple(images.shape[1:]) != (height, width) or images.shape[0] == 0:
        raise ValueError(
            f"images: expected {form}, the size the model was trained on, got shape {shape} "
            "(rnncu.data.read_images resizes files)"
        )
    scaled = _scale_images(images, "images", "the array")
    x = saved.model.backend.asarray(to_sequences(scaled, saved.config.seq), saved.config.dtype)
    if isinstance(saved.model, SequenceClassifier):
        probabilities = saved.model.predict_proba(x, batch_size)
        return {"classes": probabilities.argmax(axis=1), "probabilities": probabilities}
    assert variance is not None  # checked above, before any image was read
    errors = saved.model.class_mse(x, saved.trained_classes or None, batch_size)
    return {
        "classes": errors.argmin(axis=1),
        "probabilities": class_posterior(errors, x.shape[0] * x.shape[2], variance),
        "mse": errors,
    }
