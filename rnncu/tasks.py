"""The two image tasks, each an :class:`rnncu.RNN` followed by an :class:`rnncu.Linear`.

* :class:`SequenceClassifier`: the head reads the last layer's final state ``h_n[-1]``
  (B, H) and gives class logits (B, C); softmax cross-entropy.
* :class:`RowGenerator`: class-conditional, row by row. The input at step t is row t-1
  (zeros at t = 0) concatenated with the one-hot class, (T, B, W + C); the head maps every
  state to a predicted row (T, B, W); the loss is the MSE against row t. Sampling feeds each
  predicted row back as the next input.

Everything is written against ``xp = backend.xp``, so both backends run the same code; the
losses stay on the device (0-d CuPy arrays on the GPU, NumPy scalars on the CPU) until the
trainer reads them, once per epoch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from rnncu.backend import Array, Backend
from rnncu.init import init_linear, init_rnn
from rnncu.linear import Linear
from rnncu.losses import mse_loss, softmax_cross_entropy
from rnncu.module import (
    check_class_labels,
    check_number,
    check_positive_int,
    check_seed,
    check_state_keys,
    describe_array,
)
from rnncu.rnn import RNN

__all__ = [
    "TASKS",
    "RowGenerator",
    "SequenceClassifier",
    "build_model",
    "class_log_loss",
    "class_posterior",
    "fit_noise_variance",
    "generator_inputs",
]

TASKS = ("classify", "generate")

_Model = TypeVar("_Model", bound="_TaskModel")


class _TaskModel:
    """What the trainer needs: ``modules`` (for the optimizer and checkpoints) and train/eval
    mode switching."""

    rnn: RNN
    head: Linear

    @property
    def modules(self) -> list[Any]:
        """``[rnn, head]``: what an optimizer and ``clip_grad_norm`` take."""
        return [self.rnn, self.head]

    @property
    def module_names(self) -> list[str]:
        """``["rnn", "head"]``: the prefixes of the state dict's keys."""
        return ["rnn", "head"]

    @property
    def backend(self) -> Any:
        """The backend of both layers."""
        return self.rnn.backend

    def train(self: _Model, mode: bool = True) -> _Model:
        """Training mode (the RNN's dropout active) for both layers. Returns self."""
        for m in self.modules:
            m.train(mode)
        return self

    def eval(self: _Model) -> _Model:
        """Evaluation mode (dropout off) for both layers. Returns self."""
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """``"<module>.<param>"`` (``"rnn.weight_hh_l0"``, ``"head.bias"``) -> host copy."""
        return {
            f"{prefix}.{name}": value
            for prefix, module in zip(self.module_names, self.modules, strict=True)
            for name, value in module.state_dict().items()
        }

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``"<module>.<param>"`` -> shape, the keys of :meth:`state_dict`."""
        return {
            f"{prefix}.{name}": tuple(p.shape)
            for prefix, module in zip(self.module_names, self.modules, strict=True)
            for name, p in module.params.items()
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``state`` (the keys of :meth:`state_dict` -> array-like) into both layers'
        parameters in place. Keys must match exactly; shapes, dtypes (floating) and values
        (finite) are checked as :meth:`rnncu.module.Module.load_state_dict` does. A failed
        load leaves the model as it was."""
        check_state_keys(state, self.param_shapes())
        checked = []  # every module's part checked before any is loaded
        for prefix, module in zip(self.module_names, self.modules, strict=True):
            part = {name: state[f"{prefix}.{name}"] for name in module.params}
            try:
                checked.append(module._checked_state(part))
            except (TypeError, ValueError) as exc:  # name the key as the caller gave it
                message = str(exc).replace("state['", f"state['{prefix}.", 1)
                raise type(exc)(message) from None
        for module, converted in zip(self.modules, checked, strict=True):
            module._commit_state(converted)


def _make_layers(
    self: _TaskModel,
    input_size: int,
    hidden: int,
    out: int,
    layers: int,
    nonlinearity: str,
    init: str,
    seed: int | None,
    dtype: Any,
    backend: Any,
) -> None:
    # named as the task model's arguments are (RNN would say hidden_size, Linear out_features)
    hidden = check_positive_int("hidden", hidden)
    seed = check_seed("seed", seed)
    self.rnn = RNN(
        input_size,
        hidden,
        num_layers=layers,
        nonlinearity=nonlinearity,
        dtype=dtype,
        backend=backend,
        seed=seed,
    )
    self.head = Linear(hidden, out, dtype=dtype, backend=self.rnn.backend, seed=seed)
    # One host generator for all parameters: the same seed gives the same weights on every
    # backend.
    gen = np.random.default_rng(None if seed is None else [seed, 1])
    init_rnn(self.rnn, init, gen)
    init_linear(self.head, "xavier" if init != "torch" else "torch", gen)


def _check_split(
    where: str, x_name: str, x: Any, batch_size: Any, y_name: str = "", y: Any = None
) -> tuple[int, int]:
    """``(N, batch_size)`` of a split ``x`` (T, N, D), with ``y`` (N,) where given, to run in
    batches: errors name ``where`` and the argument (the batch loop failed first, with
    Python's or NumPy's own message)."""
    batch_size = check_positive_int(f"{where}: batch_size", batch_size)
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"{where}: {x_name}: expected (T, N, D), got {describe_array(x)}")
    n = int(x.shape[1])
    if n == 0:
        raise ValueError(f"{where}: {x_name}: the split is empty (N = 0, shape {x.shape})")
    if y_name and tuple(getattr(y, "shape", ())) != (n,):
        hint = ""
        if tuple(getattr(y, "shape", ())) == (x.shape[0],):
            # the labels fit x's first axis: x is most likely batch-first
            hint = (
                f"; {x_name} {tuple(x.shape)} reads as T = {x.shape[0]} steps of N = {n}: is it "
                "batch-first (N, T, D)? The task models take time-major (T, N, D) sequences, "
                "as rnncu.data.to_sequences gives them"
            )
        raise ValueError(
            f"{where}: {y_name}: expected ({n},), one label per sequence of {x_name} (T, N, D), "
            f"got {describe_array(y)}{hint}"
        )
    return n, batch_size


class SequenceClassifier(_TaskModel):
    """RNN over (T, B, D) sequences, Linear head on the final state -> logits (B, C).

    ``input_size`` is D and ``num_classes`` C; ``hidden`` and ``layers`` size the RNN,
    ``nonlinearity`` ``"tanh"`` or ``"relu"``, ``init`` one of :data:`rnncu.init.INIT_SCHEMES`
    (``"torch"``: torch's defaults for both layers, else the scheme for the RNN and Glorot
    for the head); ``seed``, ``dtype`` and ``backend`` as for :class:`rnncu.RNN`."""

    def __init__(
        self,
        input_size: int,
        hidden: int,
        num_classes: int,
        layers: int = 1,
        nonlinearity: str = "tanh",
        init: str = "torch",
        seed: int | None = 0,
        dtype: Any = "float32",
        backend: str | Backend | None = None,
    ) -> None:
        self.num_classes = check_positive_int("num_classes", num_classes)
        _make_layers(
            self, input_size, hidden, num_classes, layers, nonlinearity, init, seed, dtype, backend
        )

    def forward(self, x: Array) -> Array:
        """x (T, B, D) -> logits (B, C)."""
        _, h_n = self.rnn(x)
        self._h_shape = h_n.shape
        return self.head(h_n[-1])

    def train_step(self, x: Array, y: Array) -> tuple[Array, Array]:
        """Forward, loss, backward (fills the modules' ``grads``). x (T, B, D), y (B,) int.
        Returns ``(loss, correct)`` (mean loss, number correct), left on the device: 0-d CuPy
        arrays on the GPU, NumPy scalars on the CPU (``float()`` reads either)."""
        logits = self.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, y)
        dlast = self.head.backward(dlogits)
        xp = self.backend.xp
        dh_n = xp.zeros(self._h_shape, dtype=dlast.dtype)
        dh_n[-1] = dlast  # only the last layer's final state feeds the head
        self.rnn.backward(None, dh_n)
        correct = xp.sum(xp.argmax(logits, axis=1) == y)
        return loss, correct

    def evaluate(self, x: Any, y: Any, batch_size: int = 512) -> dict[str, Any]:
        """Loss, accuracy and predictions over a whole split, in batches. x (T, N, D), y (N,).
        Returns host values: ``loss`` (mean), ``accuracy``, ``predictions`` (N,) ndarray."""
        n, batch_size = _check_split("evaluate", "x", x, batch_size, "y", y)
        xp = self.backend.xp
        loss_sum = xp.zeros((), dtype=np.float64)
        preds = []
        for start in range(0, n, batch_size):
            xb, yb = x[:, start : start + batch_size], y[start : start + batch_size]
            logits = self.forward(xb)
            loss, _ = softmax_cross_entropy(logits, yb)
            loss_sum += loss * yb.shape[0]
            preds.append(xp.argmax(logits, axis=1))
        predictions = self.backend.to_numpy(xp.concatenate(preds))
        labels = self.backend.to_numpy(y)
        return {
            "loss": float(loss_sum) / n,
            "accuracy": float(np.mean(predictions == labels)),
            "predictions": predictions,
        }

    def logits(self, x: Any, batch_size: int = 512, where: str = "logits") -> Array:
        """Logits (N, C), on the device, for sequences x (T, N, D), in batches (``where``
        names the caller in errors)."""
        n, batch_size = _check_split(where, "x", x, batch_size)
        return self.backend.xp.concatenate(
            [self.forward(x[:, s : s + batch_size]) for s in range(0, n, batch_size)]
        )

    def predict_proba(self, x: Any, batch_size: int = 512) -> np.ndarray:
        """Class probabilities (N, C) on the host, float64, for sequences x (T, N, D): the
        softmax of the logits, taken in float64 (so its argmax is the logits', as
        :meth:`predict` gives it, for float32 models too)."""
        logits = self.logits(x, batch_size, "predict_proba")
        scores = self.backend.to_numpy(logits).astype(np.float64)
        scores -= scores.max(axis=1, keepdims=True)
        probabilities: np.ndarray = np.exp(scores)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return probabilities

    def predict(self, x: Any, batch_size: int = 512) -> np.ndarray:
        """Predicted classes (N,) on the host for sequences x (T, N, D)."""
        logits = self.logits(x, batch_size, "predict")
        predictions: np.ndarray = self.backend.to_numpy(self.backend.xp.argmax(logits, axis=1))
        return predictions


def generator_inputs(rows: Array, labels: Array, num_classes: int) -> Array:
    """Teacher-forcing inputs of the row generator: rows (T, B, W), labels (B,) int in
    [0, num_classes) -> (T, B, W + C): step t holds row t-1 (zeros at t = 0) and the one-hot
    class."""
    from rnncu.backend import backend_for

    num_classes = check_positive_int("generator_inputs: num_classes", num_classes)
    if getattr(rows, "ndim", None) != 3:
        raise ValueError(f"generator_inputs: rows: expected (T, B, W), got {describe_array(rows)}")
    xp = backend_for(rows).xp
    steps, batch, width = rows.shape
    check_class_labels("generator_inputs: labels", labels, batch, num_classes)
    inputs = xp.zeros((steps, batch, width + num_classes), dtype=rows.dtype)
    inputs[1:, :, :width] = rows[:-1]
    inputs[:, xp.arange(batch), width + labels] = 1
    return inputs


class RowGenerator(_TaskModel):
    """Class-conditional next-row model: rows (T, B, W) and labels (B,) -> predicted rows
    (T, B, W), the RNN reading (T, B, W + C) (:func:`generator_inputs`).

    ``width`` is W and ``num_classes`` C; the other arguments as for
    :class:`SequenceClassifier`."""

    def __init__(
        self,
        width: int,
        hidden: int,
        num_classes: int,
        layers: int = 1,
        nonlinearity: str = "tanh",
        init: str = "torch",
        seed: int | None = 0,
        dtype: Any = "float32",
        backend: str | Backend | None = None,
    ) -> None:
        self.width = check_positive_int("width", width)
        self.num_classes = check_positive_int("num_classes", num_classes)
        _make_layers(
            self,
            width + num_classes,
            hidden,
            width,
            layers,
            nonlinearity,
            init,
            seed,
            dtype,
            backend,
        )

    def forward(self, rows: Array, labels: Array) -> Array:
        """Teacher-forced prediction of every row: rows (T, B, W), labels (B,) -> (T, B, W)."""
        out, _ = self.rnn(generator_inputs(rows, labels, self.num_classes))
        return self.head(out)

    def train_step(self, rows: Array, labels: Array) -> tuple[Array, None]:
        """Forward, MSE against the rows themselves, backward (fills the modules' ``grads``).
        rows (T, B, W) in [0, 1], labels (B,) int. Returns ``(loss, None)``: the mean loss
        left on the device (as :meth:`SequenceClassifier.train_step`'s) and no count."""
        pred = self.forward(rows, labels)
        loss, dpred = mse_loss(pred, rows)
        dout = self.head.backward(dpred)
        self.rnn.backward(dout, None)
        return loss, None

    def evaluate(self, rows: Any, labels: Any, batch_size: int = 512) -> dict[str, float]:
        """Next-row MSE of the model (``mse``) and of the copy-the-row-above baseline
        (``baseline_mse``; row 0 is predicted as zeros, the model's own input), over a split
        rows (T, N, W)."""
        n, batch_size = _check_split("evaluate", "rows", rows, batch_size, "labels", labels)
        xp = self.backend.xp
        sq_sum = xp.zeros((), dtype=np.float64)
        base_sum = xp.zeros((), dtype=np.float64)
        for start in range(0, n, batch_size):
            rb = rows[:, start : start + batch_size]
            lb = labels[start : start + batch_size]
            diff = self.forward(rb, lb) - rb
            sq_sum += xp.sum(diff.astype(np.float64) ** 2)
            prev = xp.concatenate([xp.zeros_like(rb[:1]), rb[:-1]])
            base_sum += xp.sum((rb - prev).astype(np.float64) ** 2)
        count = rows.size
        return {"mse": float(sq_sum) / count, "baseline_mse": float(base_sum) / count}

    def class_mse(self, rows: Any, classes: Any = None, batch_size: int = 512) -> np.ndarray:
        """Each sequence's next-row MSE under each class: rows (T, N, W) -> host float64
        (N, C), the mean over its T*W pixels of the squared error of the teacher-forced
        prediction given that class's one-hot. Classes left out of ``classes`` (a sequence of
        class indices; None: all) are +inf, so that they never win. The class under which
        the generator best predicts an image's rows is its guess at the image's class
        (:meth:`predict`). ``batch_size`` bounds the sequences (copies included) per forward
        pass, though a pass holds at least one sequence's copies (one per class in
        ``classes``), more than a ``batch_size`` below their count."""
        n, batch_size = _check_split("class_mse", "rows", rows, batch_size)
        if rows.shape[2] != self.width:
            raise ValueError(
                f"class_mse: rows: expected (T, N, {self.width}), rows of the model's width, "
                f"got {describe_array(rows)}"
            )
        if rows.shape[0] == 0:
            raise ValueError(
                f"class_mse: rows: the sequences are empty (T = 0, shape {rows.shape})"
            )
        # the model's backend and dtype, named as the caller knows them (not the RNN's "x")
        self.rnn._check_input("class_mse: rows", rows)
        candidates = self._candidates("class_mse", classes)
        xp = self.backend.xp
        count = len(candidates)
        # each sequence is run once per candidate class, its copies side by side in a batch
        chunk = max(1, batch_size // count)
        tiled_labels = self.backend.asarray(np.tile(candidates, min(chunk, n)))
        sums = []
        for start in range(0, n, chunk):
            rb = rows[:, start : start + chunk]
            copies = xp.repeat(rb, count, axis=1)
            diff = self.forward(copies, tiled_labels[: copies.shape[1]]) - copies
            squared = diff.astype(np.float64) ** 2
            sums.append(xp.sum(squared, axis=(0, 2)).reshape(rb.shape[1], count))
        errors = np.full((n, self.num_classes), np.inf)
        pixels = rows.shape[0] * rows.shape[2]
        errors[:, candidates] = self.backend.to_numpy(xp.concatenate(sums)) / pixels
        return errors

    def predict(self, rows: Any, classes: Any = None, batch_size: int = 512) -> np.ndarray:
        """The generator as a classifier: for sequences rows (T, N, W), the class (N,) on the
        host, among ``classes`` (None: all), under which it predicts each one's rows with
        the lowest MSE (:meth:`class_mse`)."""
        predictions: np.ndarray = self.class_mse(rows, classes, batch_size).argmin(axis=1)
        return predictions

    def predict_proba(
        self, rows: Any, noise_variance: float, classes: Any = None, batch_size: int = 512
    ) -> np.ndarray:
        """Class probabilities (N, C) on the host, float64, for sequences rows (T, N, W): the
        posterior of a uniform prior over ``classes`` (None: all; the rest get 0) when each
        pixel is the model's prediction plus Gaussian noise of variance ``noise_variance``
        (the training MSE is its maximum-likelihood estimate), i.e. the softmax of
        ``-T*W*class_mse / (2 * noise_variance)``. Pixels are not independent, so under the
        training MSE these probabilities are overconfident: :func:`fit_noise_variance` fits
        the variance on held-out images. Their argmax is :meth:`predict`'s."""
        variance = check_number(
            "predict_proba: noise_variance", noise_variance, low=0.0, low_open=True, high_open=True
        )
        errors = self.class_mse(rows, classes, batch_size)
        return class_posterior(errors, rows.shape[0] * rows.shape[2], variance)

    def _candidates(self, where: str, classes: Any) -> np.ndarray:
        """``classes`` as distinct int64 class indices (None: all of the model's)."""
        if classes is None:
            return np.arange(self.num_classes)
        picked = np.asarray(classes)
        if picked.ndim != 1 or picked.size == 0:
            raise ValueError(
                f"{where}: classes: expected a non-empty sequence of class indices, got "
                f"{describe_array(picked)}"
            )
        check_class_labels(f"{where}: classes", picked, picked.size, self.num_classes)
        if np.unique(picked).size != picked.size:
            raise ValueError(f"{where}: classes: expected distinct classes, got {picked.tolist()}")
        return picked.astype(np.int64)

    def sample(
        self,
        labels: np.ndarray,
        steps: int,
        top_rows: np.ndarray | None = None,
        noise: float = 0.0,
        rng: np.random.Generator | int | None = None,
    ) -> np.ndarray:
        """Draw images of ``steps`` rows for the host ``labels`` (n,) ints: returns a host
        array (n, steps, W) in [0, 1], in the model's dtype.

        ``top_rows`` (n, k, W) with k <= steps, values in [0, 1] (the training images' range),
        if given, are used as the first k rows (completion): the model reads them in and
        continues from row k. ``noise`` adds N(0, noise^2) to every drawn row before it is fed
        back, drawn from ``rng`` (a NumPy Generator, or a seed for one; a host generator, so
        both backends agree); 0 gives the model's mean prediction. The model is in evaluation
        mode while it samples (no dropout) and back in its mode afterwards.
        """
        xp = self.backend.xp
        dtype = self.rnn.dtype
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"sample: labels: expected shape (n,), got {labels.shape}")
        n = labels.shape[0]
        if n == 0:
            raise ValueError("sample: labels: expected at least one label, got none")
        check_class_labels("sample: labels", labels, n, self.num_classes)
        labels = labels.astype(np.int64)
        steps = check_positive_int("sample: steps", steps)  # NumPy integers too
        noise = check_number("sample: noise", noise, low=0.0, high_open=True)
        given = 0
        if top_rows is not None:
            top_rows = np.asarray(top_rows)
            if top_rows.ndim != 3 or top_rows.shape[0] != n or top_rows.shape[2] != self.width:
                raise ValueError(
                    f"top_rows: expected shape ({n}, k, {self.width}), got {top_rows.shape}"
                )
            if top_rows.dtype.kind not in "biuf":
                raise TypeError(f"top_rows: expected real pixel values, got {top_rows.dtype}")
            if top_rows.size and not (
                np.all(np.isfinite(top_rows)) and top_rows.min() >= 0 and top_rows.max() <= 1
            ):
                raise ValueError(
                    "top_rows: expected values in [0, 1] (the training images' range), got "
                    f"min {top_rows.min()}, max {top_rows.max()}"
                )
            given = top_rows.shape[1]
            if given > steps:
                raise ValueError(f"top_rows: {given} rows given but the image has {steps}")
        if isinstance(rng, np.random.Generator):
            gen = rng
        else:
            try:  # what default_rng takes: None, an int, a sequence, a SeedSequence, ...
                gen = np.random.default_rng(rng)
            except (TypeError, ValueError) as exc:
                raise type(exc)(
                    f"sample: rng: expected a NumPy Generator or a seed for one, got {rng!r} "
                    f"({exc})"
                ) from None
        onehot = np.zeros((n, self.num_classes))
        onehot[np.arange(n), labels] = 1
        onehot_dev = self.backend.asarray(onehot, dtype=dtype)
        images = xp.zeros((steps, n, self.width), dtype=dtype)
        prev = xp.zeros((n, self.width), dtype=dtype)
        h = None
        was_training = self.rnn.training
        self.eval()
        try:
            for t in range(steps):
                step_in = xp.concatenate([prev, onehot_dev], axis=1)[None]
                out, h = self.rnn(step_in, h0=h)
                if top_rows is not None and t < given:  # given > 0 only with top_rows
                    row = self.backend.asarray(top_rows[:, t], dtype=dtype)
                else:
                    row = self.head(out[0])
                    if noise > 0:
                        # a draw beyond the dtype's range is clipped to it, not refused: the
                        # pixel is 0 or 1 either way
                        top = float(np.finfo(dtype).max)
                        draw = np.clip(gen.normal(0.0, noise, size=row.shape), -top, top)
                        row = row + self.backend.asarray(draw, dtype=dtype)
                    row = xp.clip(row, 0.0, 1.0)
                images[t] = row
                prev = row
        finally:
            if was_training:
                self.train()
        return np.ascontiguousarray(self.backend.to_numpy(images).transpose(1, 0, 2))


def _check_class_errors(caller: str, errors: Any) -> np.ndarray:
    """:meth:`RowGenerator.class_mse`'s ``errors`` (N, C) as float64, checked: numbers, inf
    for a class left out, a finite one in every row."""
    try:
        table: np.ndarray | None = np.asarray(errors, dtype=np.float64)
    except (TypeError, ValueError):
        table = None
    if table is None or table.ndim != 2 or 0 in table.shape:
        raise ValueError(
            f"{caller}: errors: expected a non-empty (N, C) array of per-class errors, got "
            f"{describe_array(errors)}"
        )
    if np.isnan(table).any() or not np.isfinite(table).any(axis=1).all():
        raise ValueError(
            f"{caller}: errors: expected numbers with a finite one in every row (inf: a class "
            "left out), got NaN or a row of infinities"
        )
    return table


def class_log_loss(errors: np.ndarray, labels: Any, pixels: int, noise_variance: float) -> float:
    """The mean negative log-probability that :func:`class_posterior` gives ``labels`` (N,),
    computed from the scores (a log-sum-exp), so that a confident mistake costs its score
    instead of an infinity from a probability that underflowed to 0. A label whose class was
    left out (inf error) has probability 0: refused."""
    errors = _check_class_errors("class_log_loss", errors)
    labels = _check_labels_of("class_log_loss", errors, labels)
    pixels = check_positive_int("class_log_loss: pixels", pixels)
    variance = check_number(
        "class_log_loss: noise_variance", noise_variance, low=0.0, low_open=True, high_open=True
    )
    return _mean_log_loss(_excess(errors), labels, _factor(pixels, variance))


def fit_noise_variance(errors: np.ndarray, labels: Any, pixels: int) -> float | None:
    """The noise variance under which :func:`class_posterior` gives ``labels`` (N,) the least
    mean negative log-probability (:func:`class_log_loss`): the temperature of a generator's
    recognition, fitted on images it was not trained on (the training MSE, taken as the
    variance, makes the posterior overconfident, for neighbouring pixels' errors are not
    independent). None where no finite positive variance is best: every image's own class
    has the least error (a smaller variance always does better), or the errors favour the
    labels' classes no more than the others on average (the uniform posterior, an infinite
    variance, does best), or where the best lies past what float64 holds (a variance that
    would overflow, or below ``pixels / (2 * float64's largest)``; near chance the rounded
    slopes can put it there). Labels of classes left out (inf error) are refused.

    The loss is convex in ``b = pixels / (2 variance)``, its slope the mean over the images
    of the own class's excess error less the posterior's mean excess error, rising in ``b``:
    its root is bracketed by doubling and found by bisection of log ``b``."""
    errors = _check_class_errors("fit_noise_variance", errors)
    labels = _check_labels_of("fit_noise_variance", errors, labels)
    pixels = check_positive_int("fit_noise_variance: pixels", pixels)
    excess = _excess(errors)
    own = excess[np.arange(len(labels)), labels]
    finite = np.isfinite(excess)
    counted = np.where(finite, excess, 0.0)  # a class left out has probability 0
    uniform_mean = counted.sum(axis=1) / finite.sum(axis=1)
    if not own.any() or np.mean(own - uniform_mean) >= 0:
        return None

    def slope(b: float) -> float:
        probabilities = np.exp(-_scores(excess, b))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        expected = (counted * probabilities).sum(axis=1)
        return float(np.mean(own - expected))

    # b is sought in [least, most], where pixels / (2 b) is a finite positive float. The
    # slopes are rounded: near chance (a mean excess within rounding of the uniform's) every
    # b can round to a slope >= 0, and an own class's error of a few ulps can leave every b
    # short of a positive one; the loops stop at those ends (None) instead of halving b to
    # 0 or doubling it to inf forever
    most = sys.float_info.max
    least = pixels / most
    positive = excess[finite & (excess > 0)]
    # scores about 1 to start; 1 / a subnormal excess is inf, clipped
    low = high = min(max(1.0 / float(np.median(positive)), least), most)
    while slope(low) >= 0:
        if low == least:
            return None  # the uniform posterior, to float64's precision
        low = max(low / 2.0, least)
    while slope(high) < 0:
        if high == most:
            return None  # a variance below pixels / (2 * float64's largest)
        high = min(high * 2.0, most)
    # sqrt(low) * sqrt(high): low * high under- or overflows for errors past 1e+154 or 1e-154
    for _ in range(100):  # halvings of log(high / low): far below float64's precision
        middle = math.sqrt(low) * math.sqrt(high)
        if slope(middle) < 0:
            low = middle
        else:
            high = middle
    variance = pixels / (2.0 * (math.sqrt(low) * math.sqrt(high)))
    return variance if 0.0 < variance < math.inf else None


def _check_labels_of(caller: str, errors: np.ndarray, labels: Any) -> np.ndarray:
    """``labels`` (N,), one of ``errors``' C classes per row, each with a finite error."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{caller}: labels: expected a NumPy array, got {type(labels).__name__}")
    check_class_labels(f"{caller}: labels", labels, errors.shape[0], errors.shape[1])
    left_out = ~np.isfinite(errors[np.arange(len(labels)), labels])
    if left_out.any():
        raise ValueError(
            f"{caller}: labels: class {int(labels[left_out][0])} was left out (inf error): it "
            "has probability 0"
        )
    return labels


def _excess(errors: np.ndarray) -> np.ndarray:
    # each class's error above the row's least: the likeliest class scores 0 exactly, and the
    # others' scores only underflow (exp 0), never overflow to -inf - -inf (NaN)
    excess: np.ndarray = errors - errors.min(axis=1, keepdims=True)
    return excess


def _factor(pixels: int, variance: float) -> float:
    """The scores' factor ``pixels / (2 variance)``: inf where the variance is so small it
    overflows (a posterior all on the likeliest class), without a warning."""
    with np.errstate(over="ignore"):
        return float(np.float64(pixels) / (2.0 * np.float64(variance)))


def _scores(excess: np.ndarray, factor: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        scores: np.ndarray = excess * np.float64(factor)
    scores[excess == 0] = 0.0  # 0 * inf, where the variance is so small its factor overflows
    return scores


def _mean_log_loss(excess: np.ndarray, labels: np.ndarray, factor: float) -> float:
    scores = _scores(excess, factor)
    own = scores[np.arange(len(labels)), labels]
    # log sum exp(-scores): the least score is 0, so the sum is at least 1
    return float(np.mean(own + np.log(np.exp(-scores).sum(axis=1))))


def class_posterior(errors: np.ndarray, pixels: int, noise_variance: float) -> np.ndarray:
    """Class probabilities (N, C) float64 from a generator's :meth:`RowGenerator.class_mse`
    ``errors`` (N, C) over images of ``pixels`` pixels: the softmax of ``-pixels * errors /
    (2 * noise_variance)`` (a Gaussian likelihood per pixel, a uniform prior over the classes
    whose error is finite)."""
    errors = _check_class_errors("class_posterior", errors)
    pixels = check_positive_int("class_posterior: pixels", pixels)
    variance = check_number(
        "class_posterior: noise_variance", noise_variance, low=0.0, low_open=True, high_open=True
    )
    scores = _scores(_excess(errors), _factor(pixels, variance))
    probabilities: np.ndarray = np.exp(-scores)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities


def build_model(
    task: str,
    seq_shape: tuple[int, int],
    num_classes: int,
    hidden: int,
    layers: int,
    nonlinearity: str,
    init: str,
    seed: int | None,
    dtype: Any = "float32",
    backend: str | Backend | None = None,
) -> SequenceClassifier | RowGenerator:
    """The model of ``task`` for sequences of ``seq_shape`` = (T, D)."""
    try:
        _, features = seq_shape
    except (TypeError, ValueError):
        raise TypeError(f"seq_shape: expected (T, D), got {seq_shape!r}") from None
    if task == "classify":
        return SequenceClassifier(
            features, hidden, num_classes, layers, nonlinearity, init, seed, dtype, backend
        )
    if task == "generate":
        return RowGenerator(
            features, hidden, num_classes, layers, nonlinearity, init, seed, dtype, backend
        )
    raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
