"""The ``rnncu`` command line: ``train`` (the default), ``evaluate``, ``generate``,
``predict``, ``info``, ``precompile``.

Errors caused by input (bad arguments, missing or foreign files, an unavailable backend, a
diverged run, out of memory) print ``rnncu: error: <one line>`` to stderr and return a
non-zero status (2 for bad input, 1 for a diverged run or out of memory), never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rnncu.backend.base import MATMUL_PRECISION_ENV, MATMUL_PRECISIONS

__all__ = ["main"]


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, else an error saying ``what`` it takes."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _path(text: str) -> str:
    # "" would mean the current directory to Path: a run there, or ./checkpoint.npz, by accident
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    # the shell leaves "~" alone in "--out=~/runs" (and in quotes): a directory named "~"
    # in the working directory is never what was meant
    return os.path.expanduser(text)


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in the same one-line form as the rest of the CLI."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


class _UsageError(Exception):
    pass


BACKEND_HELP = "default: the environment variable RNNCU_BACKEND, else auto (a saved run's own)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    from rnncu.data import SEQ_VIEWS
    from rnncu.init import INIT_SCHEMES
    from rnncu.optim import OPTIMIZERS, SCHEDULES

    parser = _Parser(
        prog="rnncu",
        description="Train and use vanilla RNNs on images (NumPy or CuPy backend). "
        "Without a command: train the default recipe (classify digits by rows).",
    )
    from rnncu import __version__

    parser.add_argument("--version", action="version", version=f"rnncu {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    train = sub.add_parser("train", help="train a model (default: classify digits by rows)")

    def option(flag: str, help: str | None = None, **kwargs: Any) -> None:
        field = flag[2:].replace("-", "_")
        train.add_argument(flag, help=_with_default(field, help), **kwargs)

    option("--task", choices=("classify", "generate"))
    train.add_argument(
        "--dataset",
        type=_path,
        help="'digits' (default), 'moving-digits' (clips of 8 frames), a directory of "
        "MNIST-format IDX files (raw or .gz), or a .npz with x and y (x of shape (N, T, H, W): "
        "clips)",
    )
    option(
        "--seq",
        "sequence view of the images (rows: for clips, a frame per step)",
        choices=SEQ_VIEWS,
    )
    option("--hidden", type=_positive_int)
    option("--layers", type=_positive_int)
    option("--nonlinearity", choices=("tanh", "relu"))
    option("--init", choices=INIT_SCHEMES)
    option("--epochs", type=_positive_int)
    option("--batch-size", type=_positive_int)
    option("--lr", type=_positive_float)
    option("--schedule", choices=SCHEDULES)
    option("--lr-decay", "factor per epoch (exp) or per step interval (step)", type=_positive_float)
    option(
        "--decay-epochs",
        "cosine horizon (warm-up included) / step interval in epochs",
        type=_positive_float,
    )
    option("--warmup-epochs", type=_nonneg_float)
    option("--weight-decay", "L2 penalty, added to the gradient", type=_nonneg_float)
    option("--optimizer", choices=OPTIMIZERS)
    option("--momentum", "of rmsprop and sgd (Adam has none)", type=_nonneg_float)
    option("--clip", "global gradient-norm limit (0: off)", type=_nonneg_float)
    option(
        "--augment",
        "random shifts of up to this many pixels per training image and epoch",
        type=_nonneg_int,
    )
    option(
        "--val-fraction",
        "share of the training split held out (stratified, the same images for every seed) "
        "and evaluated every epoch; at most 0.5",
        type=_nonneg_float,
    )
    option(
        "--patience",
        "end the run once the validation loss (generate: MSE) has not improved for this many "
        "epochs (0: train every epoch); needs a validation split",
        type=_nonneg_int,
    )
    option("--seed", type=_nonneg_int)
    train.add_argument("--backend", choices=("auto", "numpy", "cupy"), help=BACKEND_HELP)
    option("--dtype", choices=("float32", "float64"))
    train.add_argument(
        "--out",
        type=_path,
        help="run directory (checkpoint, config, metrics, plots); default "
        "runs/YYYYMMDD-HHMMSS (-2, -3, ... for runs started in the same second), or with "
        "--resume that run's own",
    )
    train.add_argument(
        "--resume",
        type=_path,
        help="continue the run saved in this directory up to --epochs (with its settings; "
        "--backend and --dataset, its images' new place, may be given)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out replace the run already saved there (else that is an error)",
    )
    _common(train)
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar over the optimizer steps (default: only on a terminal)",
    )
    train.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="a line on stderr at each epoch's end (a generate run's judge's too), in place of "
        "the progress bar: for a log file",
    )

    ev = sub.add_parser("evaluate", help="print the metrics of a saved run")
    ev.add_argument(
        "--checkpoint", type=_path, required=True, help="run directory or checkpoint.npz"
    )
    ev.add_argument(
        "--dataset",
        type=_path,
        help="evaluate on this dataset's test split instead of the saved one's (the .npz "
        "x_test/y_test or t10k files, else the stratified 25 %% of x/y)",
    )
    ev.add_argument("--backend", choices=("auto", "numpy", "cupy"), help=BACKEND_HELP)
    _common(ev)

    gen = sub.add_parser("generate", help="draw or complete images with a generate run")
    gen.add_argument(
        "--checkpoint", type=_path, required=True, help="run directory of a generate run"
    )
    gen.add_argument(
        "--out",
        type=_path,
        required=True,
        help="PNG file to write (for clips: frames side by side), for clips a GIF that plays "
        "them, or a .npz of the arrays (x, y: a dataset's form)",
    )
    gen.add_argument(
        "--classes", help="comma-separated classes (default: every class the training labels hold)"
    )
    gen.add_argument(
        "--per-class",
        type=_positive_int,
        default=10,
        metavar="N",
        help="images per class, one row of the grid each (default 10)",
    )
    gen.add_argument(
        "--frame-ms",
        type=_positive_int,
        metavar="MS",
        help="for a .gif of clips: how long each frame shows, in milliseconds, a multiple of "
        "10 from 20 (default 250)",
    )
    gen.add_argument(
        "--complete",
        type=_positive_int,
        metavar="K",
        help="complete test images whose top K rows (of clips: first K frames) are given "
        "(default: draw whole images)",
    )
    gen.add_argument(
        "--noise",
        type=_nonneg_float,
        help="std of the noise added to each drawn row (default 0.1; 0 draws the mean)",
    )
    gen.add_argument(
        "--dataset",
        type=_path,
        help="the run's dataset, where the saved path no longer finds it (its image size and "
        "classes; --complete takes its test images)",
    )
    gen.add_argument("--seed", type=_nonneg_int, default=0)
    gen.add_argument("--backend", choices=("auto", "numpy", "cupy"), help=BACKEND_HELP)
    _common(gen)

    pred = sub.add_parser(
        "predict",
        help="recognise images with a classify run (or a generate run: the class under which "
        "it predicts an image's rows best): each one's class and its probability",
    )
    pred.add_argument(
        "--checkpoint",
        type=_path,
        required=True,
        help="run directory or checkpoint file (best.npz too) of a classify or generate run",
    )
    pred.add_argument(
        "images",
        type=_path,
        nargs="+",
        metavar="FILE",
        help=".png, .jpg / .jpeg, .bmp, .gif, .webp, .tif / .tiff (one image; colour is read "
        "as its luminance; turned upright as its EXIF says), or .npy / .npz (x) arrays: an "
        "image (H, W) or a stack (N, H, W), integers 0..255 or floats in [0, 1]; a run of "
        "clips takes clips (T, H, W) or (N, T, H, W), or (N, T, H*W) as datasets hold them, "
        "or one clip as an animated .gif / .png / .webp or a .tif of T frames",
    )
    pred.add_argument(
        "--resize",
        action="store_true",
        help="resample images (frames) of another size to the run's, by area averaging "
        "(default: another size is an error)",
    )
    pred.add_argument(
        "--invert",
        action="store_true",
        help="take 1 - x: for dark ink on a light ground (the built-in datasets are light on dark)",
    )
    pred.add_argument(
        "--center",
        action="store_true",
        help="crop each image to its ink and frame it as the run's training images are: "
        "scaled to their ink's size, its centre of mass on theirs (images of any size; for "
        "drawings not framed like them; not with --resize, which it does itself)",
    )
    pred.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json (default; for programs) or table (a line per image, for reading)",
    )
    pred.add_argument(
        "--top",
        type=_positive_int,
        default=3,
        metavar="K",
        help="the K likeliest classes listed per image (default 3)",
    )
    pred.add_argument("--backend", choices=("auto", "numpy", "cupy"), help=BACKEND_HELP)
    _common(pred)

    info = sub.add_parser("info", help="versions, backends, devices and kernel compile checks")
    info.add_argument(
        "--quick",
        action="store_true",
        help="skip compiling the CUDA kernels (the check compiles every one: about a minute "
        "on a 2-core CPU)",
    )

    pre = sub.add_parser(
        "precompile",
        help="compile every CUDA kernel for this device into CuPy's disk cache, so that "
        "none compiles at its first use",
    )
    pre.add_argument(
        "--jobs", type=_positive_int, help="compiler processes (default: the CPU count)"
    )
    return parser


def _backend(flag: str | None, default: str | None) -> str | None:
    """``--backend``, else the ``RNNCU_BACKEND`` environment variable (what the library's
    get_backend reads), else ``default``; a bad variable is an error naming it, not ignored."""
    from rnncu.backend import BACKEND_NAMES, ENV_VAR

    if flag is not None:
        return flag
    env = os.environ.get(ENV_VAR, "").strip()
    if not env:  # set but empty is unset, as get_backend takes it
        return default
    if env.lower() not in BACKEND_NAMES:
        raise ValueError(
            f"environment variable {ENV_VAR}: expected one of {', '.join(BACKEND_NAMES)}, "
            f"got {env!r}"
        )
    return env.lower()


def _check_out_dir(target: str, directory: str | os.PathLike[str]) -> None:
    """Fail before any work where ``directory`` (for ``--out target``) cannot be a directory
    (mkdir would raise only after the data is loaded, with a traceback)."""
    from rnncu.checkpoint import check_out_dir

    check_out_dir(f"--out {target}", directory)


def _with_default(field: str, help: str | None) -> str:
    """``help`` followed by the field's default, and where a recipe (task, seq) sets another."""
    from rnncu.trainer import RECIPES, TrainConfig

    default = getattr(TrainConfig, field)
    others: dict[Any, list[str]] = {}
    for (task, seq), recipe in RECIPES.items():
        if field in recipe and recipe[field] != default:
            others.setdefault(recipe[field], []).append(f"{task} {seq}")
    shown = "; ".join(
        [f"default {default}"] + [f"{v} for {', '.join(k)}" for v, k in others.items()]
    )
    return f"{help}; {shown}" if help else shown


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="BLAS threads for the NumPy backend (default 1: the recurrence's "
        "small GEMMs run fastest single-threaded)",
    )
    p.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        help="of the float32 products on the GPU: high lets cuBLAS use TF32 for the products "
        "over all steps and the step kernels for each step's (compute capability 8.0 and "
        "later), highest keeps float32; no effect on the NumPy backend; default: the "
        "environment variable RNNCU_MATMUL_PRECISION, else highest",
    )


@contextlib.contextmanager
def _matmul_precision(value: str | None) -> Any:
    """``RNNCU_MATMUL_PRECISION`` set to ``value`` while the command runs (the backends read
    it at every product), then as it was; None changes nothing."""
    if value is None:
        yield
        return
    saved = os.environ.get(MATMUL_PRECISION_ENV)
    os.environ[MATMUL_PRECISION_ENV] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(MATMUL_PRECISION_ENV, None)
        else:
            os.environ[MATMUL_PRECISION_ENV] = saved


def _blas_limit(threads: int | None) -> Any:
    """A context limiting BLAS threads (threadpoolctl, installed with scikit-learn); a no-op
    without it."""
    import contextlib

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if threads is not None and usable is not None and threads > usable:
        # threads beyond the cores wait on each other at every step's small product: an epoch
        # of the default recipe took 10 s with --threads 8 on 2 cores, 0.05 s with 1
        warnings.warn(
            f"--threads {threads}: more than the {usable} CPUs this process may use; the "
            "extra threads slow every step down (1 is usually fastest)",
            RuntimeWarning,
            stacklevel=2,
        )
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads or 1, user_api="blas")


def _print_metrics(metrics: dict[str, Any]) -> None:
    shown = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    bad = sorted(k for k, v in shown.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:  # json.dumps would print NaN, which is not JSON
        raise ValueError(
            f"the metrics {', '.join(bad)} are not finite ({shown[bad[0]]}): the model's "
            "outputs are NaN or infinite"
        )
    print(json.dumps(shown, indent=2, sort_keys=True, allow_nan=False))


def _new_run_dir(stem: str) -> str:
    """A directory for a run without ``--out``, made here: ``stem``, else ``stem-2``, ... .
    Made at once (``mkdir`` fails for all but one), so runs started in the same second each
    get their own, instead of all writing into one."""
    parent = Path(stem).parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{parent} is a file, where runs without --out go; give --out")
    for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
        # a run that made runs/ and failed removes it again (cli's clean-up): made anew here
        # where it went between the two calls
        for _ in range(100):
            parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(stem + suffix)
            except FileNotFoundError:
                continue
            except FileExistsError:
                break
            return stem + suffix
        else:
            raise FileNotFoundError(f"{parent}: removed as often as it was made; give --out")
    raise ValueError(f"{stem}: 999 runs already started in this second; give --out")


def _flag_named(exc: ValueError, given: dict[str, Any]) -> ValueError | None:
    """``"lr_decay: ..."`` -> ``"--lr-decay: ..."`` where the user typed that flag (errors name
    the flag, not the config field); None for any other error."""
    name, _, rest = str(exc).partition(": ")
    if given.get(name) is None or not rest:
        return None
    return ValueError(f"--{name.replace('_', '-')}: {rest}")


def _cmd_train(args: argparse.Namespace) -> int:
    from rnncu.checkpoint import CHECKPOINT_NAME, resolve_checkpoint, run_directory
    from rnncu.trainer import (
        SavedDatasetNotFound,
        TrainConfig,
        dataset_name,
        make_config,
        train,
        written_directory,
    )

    fields = (
        "task",
        "dataset",
        "seq",
        "hidden",
        "layers",
        "nonlinearity",
        "init",
        "epochs",
        "batch_size",
        "lr",
        "schedule",
        "lr_decay",
        "decay_epochs",
        "warmup_epochs",
        "weight_decay",
        "optimizer",
        "momentum",
        "clip",
        "augment",
        "seed",
        "backend",
        "dtype",
        "val_fraction",
        "patience",
    )
    given = {f: getattr(args, f, None) for f in fields}
    given["backend"] = _backend(args.backend, None)
    data = None
    if args.resume:
        # The saved run defines everything but its length, the device and (where its images
        # moved) the dataset's place.
        extra = [
            f
            for f, v in given.items()
            if v is not None and f not in ("epochs", "backend", "dataset")
        ]
        if extra:
            flag = "--" + extra[0].replace("_", "-")
            raise ValueError(
                f"--resume keeps the saved run's settings: of them only --epochs, --backend "
                f"and --dataset (the same images, moved) may be given, not {flag}"
            )
        if args.dataset is not None:
            from rnncu.data import load_dataset

            data = load_dataset(dataset_name(args.dataset))
        if args.epochs is None:
            raise ValueError("--resume needs --epochs (the total to reach)")
        # backend None: the saved run's own unless one is asked for
        config = TrainConfig(epochs=args.epochs, backend=given["backend"])
    else:
        try:
            config = make_config(**given)
        except ValueError as exc:
            renamed = _flag_named(exc, given)
            if renamed is None:
                raise
            raise renamed from None
    out = args.out
    # a default run directory made here (and runs/ where this made it): removed again if
    # nothing went into it
    made: list[str] = []
    if out is None and not args.resume:
        if not os.path.isdir("runs"):
            made.append("runs")
        out = _new_run_dir(os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
        made.insert(0, out)
    try:
        with contextlib.ExitStack() as holding:
            # held from the check below to the run's end (the trainer's own hold nests in
            # it): another run into --out would pass the check until this one's first
            # checkpoint, and the two would mix files
            written = written_directory(out, args.resume)
            if written is not None:
                name = f"--out {out}" if out is not None else f"--resume {args.resume}"
                holding.enter_context(run_directory(written, name))
            if out is not None:
                saved = Path(out) / CHECKPOINT_NAME
                source = resolve_checkpoint(args.resume).resolve() if args.resume else None
                resumed = source == saved.resolve()
                # another checkpoint of the run there (its best epoch's): train refuses it,
                # --overwrite or not
                beside = source is not None and source.parent == saved.resolve().parent
                if saved.exists() and not resumed and not beside and not args.overwrite:
                    raise ValueError(
                        f"--out {out}: already holds a run ({CHECKPOINT_NAME}); continue it "
                        f"with --resume {out} --epochs N, or replace it with --overwrite"
                    )
            with _blas_limit(args.threads):
                result = train(
                    config,
                    out_dir=out,
                    resume=args.resume,
                    progress=False if args.verbose else args.progress,
                    data=data,
                    log=functools.partial(_show_news, epochs=args.verbose),
                )
    except BaseException as exc:
        for directory in made:  # the run's first
            try:
                os.rmdir(directory)  # only if empty: e.g. a missing dataset
            except OSError:
                break
        if isinstance(exc, SavedDatasetNotFound):  # only a resumed run reads a saved config
            raise FileNotFoundError(f"{exc} (give its new place with --dataset)") from None
        # a field checked against the data once it is loaded (--augment) names its flag
        renamed = _flag_named(exc, given) if isinstance(exc, ValueError) else None
        if renamed is None:
            raise
        raise renamed from None
    _print_metrics(result.metrics)
    if args.resume and result.epochs_trained == 0 and result.end_written:
        print(
            f"rnncu: the run in {args.resume} was already at epoch {result.metrics['epochs']}, "
            "but had been stopped after its last checkpoint: its end (metrics.json, the "
            f"plots) is written now; run saved in {result.out_dir}",
            file=sys.stderr,
        )
    elif args.resume and result.epochs_trained == 0 and result.metrics.get("stopped_early"):
        print(
            f"rnncu: the run in {args.resume} stopped early at epoch {result.metrics['epochs']} "
            f"(its validation figure stopped improving, patience "
            f"{result.config.patience}): nothing was trained",
            file=sys.stderr,
        )
    elif args.resume and result.epochs_trained == 0:
        print(
            f"rnncu: the run in {args.resume} is already at epoch {result.metrics['epochs']} "
            f">= --epochs {args.epochs}: nothing was trained (ask for more epochs)",
            file=sys.stderr,
        )
    else:
        print(f"run saved in {result.out_dir}", file=sys.stderr)
    return 0


def _show_news(message: str, epochs: bool) -> None:
    """The trainer's news on stderr: that a generate run's judge trains (minutes on
    MNIST-size data, after the run's own epochs) and, with ``epochs`` (``--verbose``), the
    line of each epoch's end, the judge's too."""
    from rnncu.trainer import EARLY_STOP_NEWS, EPOCH_NEWS, JUDGE_DIR, JUDGE_NEWS

    epoch_line = message.startswith((EPOCH_NEWS, f"{JUDGE_DIR}: {EPOCH_NEWS}"))
    if message.startswith((JUDGE_NEWS, EARLY_STOP_NEWS)) or (epochs and epoch_line):
        # one write, the newline in it: print writes the text and its end apart, and a
        # signal raised between the two (Ctrl-C, SIGTERM) left the line open, the CLI's
        # "rnncu: interrupted" glued to it
        sys.stderr.write(f"rnncu: {message}\n")
        sys.stderr.flush()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rnncu.trainer import SavedDatasetNotFound, evaluate_run

    try:
        with _blas_limit(args.threads):
            metrics = evaluate_run(
                args.checkpoint, backend=_backend(args.backend, None), dataset=args.dataset
            )
    except SavedDatasetNotFound as exc:  # moved, another machine: say how to use another
        raise FileNotFoundError(f"{exc} (evaluate on another with --dataset)") from None
    _print_metrics(metrics)
    return 0


def _parse_classes(text: str | None, num_classes: int, trained: list[int]) -> list[int]:
    """``--classes``: by default every class of the training labels (``trained``); a class
    the model never saw (labels with gaps) draws noise, and is refused."""
    if text is None:
        return list(trained)
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes: expected comma-separated integers, got {text!r}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if not classes or bad:
        raise ValueError(f"--classes: expected classes in 0..{num_classes - 1}, got {text!r}")
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:  # each class is one row of the grid (its originals and completions paired)
        raise ValueError(f"--classes: class {twice[0]} is given twice, in {text!r}")
    unseen = [c for c in classes if c not in trained]
    if unseen:
        raise ValueError(
            f"--classes: class {unseen[0]} has no training images (the run's classes: "
            f"{', '.join(map(str, trained))})"
        )
    return classes


def _cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from rnncu import plots
    from rnncu.tasks import RowGenerator
    from rnncu.trainer import SAMPLE_NOISE, SavedDatasetNotFound, load_run, sample_images

    animate = args.out.lower().endswith(".gif")  # clips only: checked once the run is read
    arrays = args.out.lower().endswith(".npz")
    if not (animate or arrays or args.out.lower().endswith(".png")):
        raise ValueError(
            f"--out: expected a .png file, a .npz of arrays (or, for clips, a .gif), got "
            f"{args.out!r}"
        )
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: is a directory, expected a .png, .npz or .gif file")
    if args.frame_ms is not None:
        if not animate:
            kind = "a .npz of arrays" if arrays else "a PNG (its frames side by side)"
            raise ValueError(
                f"--frame-ms: times the frames of a .gif of clips, and --out {args.out} is {kind}"
            )
        plots.check_frame_ms(args.frame_ms, "--frame-ms")
    _check_out_dir(args.out, Path(args.out).parent)
    with _blas_limit(args.threads):
        try:
            run, _ = load_run(
                args.checkpoint, backend=_backend(args.backend, None), dataset=args.dataset
            )
        except SavedDatasetNotFound as exc:
            raise FileNotFoundError(f"{exc} (give its new place with --dataset)") from None
        if not isinstance(run.model, RowGenerator):
            raise ValueError(
                f"{args.checkpoint}: a {run.config.task} run cannot generate "
                "(train one with --task generate)"
            )
        if animate and run.data.frame_shape is None:
            raise ValueError(
                f"--out {args.out}: a .gif plays clips, and {args.checkpoint} draws images: "
                "write a .png"
            )
        classes = _parse_classes(args.classes, run.data.num_classes, run.data.trained_classes)
        noise = SAMPLE_NOISE if args.noise is None else args.noise
        height = run.data.image_shape[0]
        grid_rows = len(classes) * (2 if args.complete else 1)  # completions: originals above
        shape, pad = run.data.display_shape, run.data.display_pad
        pixels = plots.grid_pixels(grid_rows, args.per_class, shape, pad=pad)
        if pixels > plots.MAX_GRID_PIXELS and not arrays:  # arrays are no picture
            fits = plots.grid_columns_within(grid_rows, shape, pad=pad)
            advice = f"at most {fits} here" if fits else "ask for fewer --classes"
            raise ValueError(
                f"--per-class {args.per_class}: a grid of {grid_rows} rows of {args.per_class} "
                f"images would have {pixels:,} pixels, more than image readers open "
                f"({plots.MAX_GRID_PIXELS:,}); {advice}"
            )
        top = None
        if args.complete:
            if height < 2:  # no range 1..H-1 to name: a single row (frame) has none after it
                what = run.data.items_name
                raise ValueError(
                    f"--complete: the run's {what} have a single {run.data.row_name}: none to "
                    f"complete (draw whole {what} without --complete), got {args.complete}"
                )
            if not 0 < args.complete < height:
                raise ValueError(
                    f"--complete: expected 1..{height - 1} {run.data.row_name}s, got "
                    f"{args.complete}"
                )
            absent = [c for c in classes if not np.any(run.data.y_test == c)]
            if absent:
                which = "--classes" if args.classes else "--complete (the trained classes)"
                raise ValueError(
                    f"{which}: the test split holds no image of class "
                    f"{', '.join(map(str, absent))} to complete (--complete takes test images)"
                )
            # the first test images of each requested class, their top rows given
            picks = np.concatenate(
                [np.flatnonzero(run.data.y_test == c)[: args.per_class] for c in classes]
            )
            top = run.data.x_test[picks, : args.complete]
            labels = run.data.y_test[picks]
            images = run.model.sample(
                labels, height, top_rows=top, noise=noise, rng=np.random.default_rng([args.seed, 3])
            )
            if arrays:
                originals = run.data.x_test[picks].astype(images.dtype)
                _save_sample_arrays(args.out, images, labels, run.data.frame_shape, originals)
                print(
                    f"wrote {len(labels)} completions (x) of the test images x_original, their "
                    f"first {args.complete} given, for classes {classes} to {args.out}"
                )
                return 0
            # per class, a row of originals above the row of their completions (rows padded
            # with blank images where the test split holds fewer than --per-class)
            blank = np.zeros((1, *run.data.image_shape), images.dtype)
            rows = []
            for c in classes:
                mine = labels == c
                for block in (run.data.x_test[picks][mine], images[mine]):
                    rows += [block.astype(images.dtype), *[blank] * (args.per_class - len(block))]
            _save_samples(np.concatenate(rows), run.data.frame_shape, args, pad)
        else:
            images, labels = sample_images(
                run.model, run.data.image_shape, classes, args.per_class, args.seed, noise=noise
            )
            if arrays:
                _save_sample_arrays(args.out, images, labels, run.data.frame_shape)
            else:
                _save_samples(images, run.data.frame_shape, args, pad)
    what = "completions (each row of originals above)" if args.complete else run.data.items_name
    print(f"wrote {len(labels)} {what} for classes {classes} to {args.out}")
    return 0


def _save_sample_arrays(
    out: str,
    images: Any,
    labels: Any,
    frame_shape: tuple[int, int] | None,
    originals: Any = None,
) -> None:
    """``generate --out FILE.npz``: ``x`` the images (N, H, W), clips (N, T, h, w), in [0, 1]
    as the model drew them, and ``y`` their classes (N,): a dataset's form, which ``rnncu
    train --dataset``, ``evaluate --dataset`` and ``predict`` read; completions add the test
    images they complete, ``x_original``. Written atomically, without pickles."""
    import io

    import numpy as np

    from rnncu.checkpoint import atomic_write_bytes

    def shaped(array: Any) -> Any:
        return array if frame_shape is None else array.reshape(*array.shape[:2], *frame_shape)

    members = {"x": shaped(images), "y": np.asarray(labels, dtype=np.int64)}
    if originals is not None:
        members["x_original"] = shaped(originals)
    buffer = io.BytesIO()
    # numeric arrays: nothing is pickled (and NumPy 1.x would store allow_pickle= as an array)
    np.savez_compressed(buffer, **members)
    atomic_write_bytes(out, buffer.getvalue())


def _save_samples(
    images: Any, frame_shape: tuple[int, int] | None, args: argparse.Namespace, pad: int
) -> None:
    """``generate``'s grid, ``--per-class`` a row: a PNG, clips' frames side by side, or a GIF
    whose frame t holds each clip's frame t (``--out`` says which)."""
    from rnncu import plots
    from rnncu.data import display_images

    if args.out.lower().endswith(".gif") and frame_shape is not None:
        clips = images.reshape(*images.shape[:2], *frame_shape)
        frame_ms = plots.CLIP_FRAME_MS if args.frame_ms is None else args.frame_ms
        plots.save_clip_animation(clips, args.out, ncols=args.per_class, pad=pad, frame_ms=frame_ms)
    else:
        shown = display_images(images, frame_shape)
        plots.save_image_grid(shown, args.out, ncols=args.per_class, pad=pad)


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from rnncu.data import read_images
    from rnncu.trainer import load_model, predict_images

    if args.center and args.resize:
        # read_images ignores resize where it frames: the flag would do nothing, unsaid
        raise ValueError(
            "--center resamples each image to the run's size itself: --resize is not needed "
            "with it (give one of them)"
        )
    with _blas_limit(args.threads):
        saved = load_model(args.checkpoint, backend=_backend(args.backend, None))
        framing = None
        if args.center:
            if saved.frame_shape is not None:
                raise ValueError(
                    f"--center: {saved.file} reads clips, whose frames move: --center frames images"
                )
            if saved.framing is None:
                raise ValueError(
                    f"--center: {saved.file} does not record where its training images hold "
                    "their ink (a checkpoint older than that record, or a run of blank images): "
                    "train it again, or on (train --resume with more --epochs writes it)"
                )
            framing = saved.framing
        # every file read (and checked) before any is predicted: a bad last file fails at once
        stacks = [
            read_images(
                name, saved.image_shape, saved.frame_shape, args.resize, args.invert, framing
            )
            for name in args.images
        ]
        result = predict_images(saved, np.concatenate(stacks))
    probabilities = result["probabilities"]
    # A generate run's classes are ranked by their errors, which still tell apart those whose
    # probabilities underflow to 0; the classes it was not trained on (inf) are left out
    # (JSON has no infinity).
    errors = result.get("mse")
    order = -probabilities if errors is None else errors
    listed = range(probabilities.shape[1]) if errors is None else saved.trained_classes
    top = min(args.top, len(listed))

    def figures(row: int, k: int) -> dict[str, Any]:
        found: dict[str, Any] = {"class": int(k), "probability": float(probabilities[row, k])}
        if errors is not None:
            # null where a trained class's error overflowed (broken weights): JSON has no inf
            mse = float(errors[row, k])
            found["mse"] = mse if math.isfinite(mse) else None
        return found

    records = []
    row = 0
    for name, stack in zip(args.images, stacks, strict=True):
        for index in range(stack.shape[0]):
            ranked = np.argsort(order[row], kind="stable")
            likeliest = ranked[np.isin(ranked, listed)][:top]
            chosen = figures(row, result["classes"][row])
            records.append(
                {
                    "file": name,
                    "index": index,
                    **chosen,
                    "top": [figures(row, k) for k in likeliest],
                }
            )
            row += 1
    if args.format == "table":
        print(_predictions_table(records, errors is not None, sys.stdout.encoding or "utf-8"))
    else:
        print(json.dumps({"checkpoint": str(saved.file), "predictions": records}, indent=2))
    return 0


def _predictions_table(
    records: list[dict[str, Any]], generate: bool, encoding: str = "utf-8"
) -> str:
    """``rnncu predict --format table``: a line per image, columns aligned, its likeliest
    classes last (a generate run's with their errors); what of the files' names ``encoding``
    cannot write escaped."""

    def error(mse: float | None) -> str:
        return "inf" if mse is None else f"{mse:.4f}"  # None: overflowed (JSON's null)

    def likely(found: dict[str, Any]) -> str:
        if generate:
            return f"{found['class']} ({found['probability']:.4f}, mse {error(found['mse'])})"
        return f"{found['class']} ({found['probability']:.4f})"

    header = ["file", "index", "class", "probability", *(["mse"] if generate else []), "top"]
    rows = [
        [
            _printable(str(r["file"]), encoding),
            str(r["index"]),
            str(r["class"]),
            f"{r['probability']:.4f}",
            *([error(r["mse"])] if generate else []),
            ", ".join(likely(t) for t in r["top"]),
        ]
        for r in records
    ]
    widths = [max(_columns(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(
            [*(c + " " * (w - _columns(c)) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]
        )
        for row in [header, *rows]
    )


def _printable(text: str, encoding: str = "utf-8") -> str:
    """``text`` with what a terminal would not show as one character escaped as Python
    writes it: a newline or tab in a file's name would break the table's line, and a byte of
    a name not in the file system's encoding (a lone surrogate), or a character ``encoding``
    lacks (any but ASCII where the locale is C), could not be printed."""

    def shown(c: str) -> str:
        if not c.isprintable():
            return repr(c)[1:-1]
        try:
            c.encode(encoding)
        except UnicodeEncodeError:
            return c.encode("ascii", "backslashreplace").decode("ascii")
        return c

    return "".join(shown(c) for c in text)


def _columns(text: str) -> int:
    """The terminal columns ``text`` takes: East Asian wide characters two, combining
    marks none."""
    import unicodedata

    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _cmd_info(args: argparse.Namespace) -> int:
    from rnncu.backend import diagnostics

    print(diagnostics.format_info(diagnostics.collect_info(compile_kernels=not args.quick)))
    return 0


def _cmd_precompile(args: argparse.Namespace) -> int:
    from rnncu.backend import BackendUnavailableError, available_backends, kernel_loader

    reason = available_backends()["cupy"]
    if reason is not None:
        raise BackendUnavailableError(
            f"precompile needs CuPy and a CUDA device: {reason} "
            "(`rnncu info` compiles every kernel with NVRTC for sm_90 without a device, where "
            "the nvrtc extra is installed: pip install 'rnncu[nvrtc]')"
        )
    if os.environ.get("CUPY_CACHE_IN_MEMORY", "0") not in ("", "0"):
        print(
            "rnncu: warning: CUPY_CACHE_IN_MEMORY is set, so the compiled kernels are not kept "
            "for later processes",
            file=sys.stderr,
        )
    specs = kernel_loader.module_specs()
    start = time.perf_counter()
    results = kernel_loader.precompile(args.jobs, specs)
    wall = time.perf_counter() - start
    by_file: dict[str, list[Any]] = {}
    for result in results:
        by_file.setdefault(result.spec.filename, []).append(result)
    for filename, file_results in by_file.items():
        failed = [r for r in file_results if r.error is not None]
        compile_s = sum(r.seconds for r in file_results)
        print(
            f"kernels/{filename}: {len(file_results) - len(failed)}/{len(file_results)} "
            f"modules ready ({compile_s:.1f} s of compiling)"
        )
        for result in failed:
            print(f"  FAILED {', '.join(result.spec.name_expressions)}: {result.error}")
    failures = sum(r.error is not None for r in results)
    print(f"{len(results) - failures}/{len(results)} modules in {wall:.1f} s")
    return 1 if failures else 0


def _show_warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning as the CLI's other messages are written: ``rnncu: warning: ...``, without
    Python's ``file:line`` (that of the console script)."""
    print(f"rnncu: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from rnncu.backend import BackendUnavailableError
    from rnncu.checkpoint import CheckpointError, RunDirectoryInUse

    if argv is None:  # the command line itself (not a caller in Python): one-line warnings
        warnings.showwarning = _show_warning_line
        # `kill`, `timeout`, a batch system's end of job: stopped as Ctrl-C stops it, so that
        # a run stopped before its first checkpoint leaves nothing of itself (by default
        # SIGTERM ends the process at once, leaving the run's config.json behind alone)
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            signal.signal(signal.SIGTERM, _terminated)
    argv = list(sys.argv[1:] if argv is None else argv)
    implicit_train = not argv or (
        argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")
    )
    if implicit_train:
        argv = ["train", *argv]  # no command: the default recipe (flags go to train)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            args = build_parser().parse_args(["train", *argv])
        handler = {
            "train": _cmd_train,
            "evaluate": _cmd_evaluate,
            "generate": _cmd_generate,
            "predict": _cmd_predict,
            "info": _cmd_info,
            "precompile": _cmd_precompile,
        }[args.command]
        with _matmul_precision(getattr(args, "matmul_precision", None)):
            return handler(args)
    except _UsageError as exc:
        # "unrecognized arguments: -x" alone would not say they were read as train's
        note = " (no command given: the options went to 'rnncu train')" if implicit_train else ""
        print(f"rnncu: error: {exc}{note}", file=sys.stderr)
        return 2
    except (
        CheckpointError,
        RunDirectoryInUse,
        BackendUnavailableError,
        ValueError,
        FileNotFoundError,
        ImportError,
    ) as exc:
        text = _os_error_text(exc, argv) if isinstance(exc, OSError) else _one_line(exc)
        print(f"rnncu: error: {text}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output path that cannot be written, a full disk, ...
        print(f"rnncu: error: {_os_error_text(exc, argv)}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # a dataset or a model too large for this machine
        print(f"rnncu: error: out of memory ({_one_line(exc)})", file=sys.stderr)
        return 1
    except Exception as exc:
        from rnncu.trainer import TrainingDiverged

        if isinstance(exc, TrainingDiverged):
            print(f"rnncu: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("rnncu: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("rnncu: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, as KeyboardInterrupt is for SIGINT: what a run
    cleans up when stopped runs on the way out."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def _os_error_text(exc: OSError, argv: Sequence[str]) -> str:
    """``--out X: <path>: <reason>`` for an OSError about a file: named by the option whose
    path it is, lies under or lies on the way to, where one is (``[Errno 2] No such file or
    directory: 'X'`` said neither which argument nor, for a file inside ``--out``, which).
    Of several such options, the one whose path is nearest the file's (the first of those, on
    the way before inside): ``--checkpoint d --out d/g.png`` names --out for ``d/g.png``, not
    --checkpoint, whose directory holds it."""
    if not isinstance(exc.filename, (str, bytes, os.PathLike)) or not exc.strerror:
        return _one_line(exc)
    failed = os.path.abspath(os.fsdecode(exc.filename))
    nearest: tuple[int, bool, str] | None = None  # (components apart, inside, "--flag value")
    for i, token in enumerate(argv):
        flag, equals, value = token.partition("=")
        if not flag.startswith("--") or not (equals or i + 1 < len(argv)):
            continue
        value = value if equals else argv[i + 1]
        given = Path(os.path.abspath(os.path.expanduser(value)))
        inside = given in Path(failed).parents
        if inside or given == Path(failed) or Path(failed) in given.parents:
            found = (abs(len(given.parts) - len(Path(failed).parts)), inside, f"{flag} {value}")
            if nearest is None or found[:2] < nearest[:2]:
                nearest = found
    if nearest is None:
        return f"{failed}: {exc.strerror}"
    if nearest[0] == 0:
        return f"{nearest[2]}: {exc.strerror}"
    return f"{nearest[2]}: {failed}: {exc.strerror}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
