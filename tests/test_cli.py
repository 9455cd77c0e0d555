"""The command line end to end, small: train/evaluate/generate/info in a temporary directory,
and errors that exit non-zero with one line and no traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnncu import plots
from rnncu.checkpoint import load_checkpoint
from rnncu.cli import main
from rnncu.data import load_digits
from rnncu.trainer import RECIPES, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden", "16", "--layers", "1", "--batch-size", "64", "--backend", "numpy"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "rnncu", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnncu: error: "), proc.stderr
    assert fragment in lines[0], lines[0]


def test_train_evaluate_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RNNCU_BACKEND", raising=False)
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--seed", "1", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("checkpoint.npz", "config.json", "metrics.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_accuracy"] <= 1 and metrics["epochs"] == 2
    assert printed["test_accuracy"] == metrics["test_accuracy"]
    assert printed["wall_seconds"] == metrics["wall_seconds"] > metrics["train_seconds"]
    with np.load(out / "checkpoint.npz", allow_pickle=False) as npz:
        assert "model.rnn.weight_ih_l0" in npz.files and "optim.exp_avg.0.weight_ih_l0" in npz.files

    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == metrics["test_accuracy"]

    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    assert load_checkpoint(out)[1]["epoch"] == 3
    # quiet on a pipe but for where the run went; --progress asks for the bar, --verbose for a
    # line at each epoch's end in its place
    assert capsys.readouterr().err == f"run saved in {out}\n"
    assert main(["train", "--resume", str(out), "--epochs", "4", "--progress"]) == 0
    shown = capsys.readouterr().err.replace("\r", "\n")
    assert "rnncu: epoch" not in shown and "epoch 4/4: 100%" in shown, shown
    assert main(["train", "--resume", str(out), "--epochs", "5", "--progress", "-v"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("rnncu: epoch 5/5: train_loss=") and len(lines) == 2, lines
    assert lines[1] == f"run saved in {out}"
    # the saved backend stays unless --backend asks for another
    assert json.loads((out / "config.json").read_text())["backend"] == "numpy"
    assert load_checkpoint(out)[1]["config"]["backend"] == "numpy"
    assert main(["train", "--resume", str(out), "--epochs", "6", "--hidden", "8"]) == 2
    assert "only --epochs, --backend and --dataset (the same images, moved) may be given, not " \
        "--hidden" in capsys.readouterr().err  # fmt: skip


def test_generate_task_and_command(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gen"
    args = ["train", "--task", "generate", *SMALL, "--epochs", "2", "--out", str(out), "-v"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_mse", "baseline_mse", "sample_class_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    assert (out / "samples.png").is_file() and (out / "classifier" / "checkpoint.npz").is_file()
    # the judge's training, longer than the run's own epochs on MNIST-size data, is said;
    # with --verbose so is every epoch's end, the judge's too
    judge_epochs = json.loads((out / "classifier" / "config.json").read_text())["epochs"]
    said = (
        f"rnncu: training the classifier that judges the samples ({judge_epochs} epochs of the "
        f"classify-rows recipe, saved in {out / 'classifier'})"
    )
    lines = capsys.readouterr().err.splitlines()
    assert lines[2] == said and lines[-1] == f"run saved in {out}", lines
    run_epochs = [line.split(": ")[1] for line in lines[:2]]
    judge = [line.split(": ")[2] for line in lines[3:-1]]
    assert run_epochs == ["epoch 1/2", "epoch 2/2"], lines
    assert judge == [f"epoch {k}/{judge_epochs}" for k in range(1, judge_epochs + 1)], lines
    history = load_checkpoint(out)[1]["history"]
    assert lines[1] == (
        f"rnncu: epoch 2/2: train_loss={history[1]['train_loss']:.5g} lr={history[1]['lr']:.5g} "
        f"grad_norm={history[1]['grad_norm']:.5g} grad_norm_max="
        f"{history[1]['grad_norm_max']:.5g} clipped={history[1]['clipped']:.5g} "
        f"test_mse={history[1]['test_mse']:.5g} baseline_mse={history[1]['baseline_mse']:.5g}"
    )

    png = tmp_path / "drawn.png"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(out),
                "--out",
                str(png),
                "--classes",
                "1,3",
                "--per-class",
                "4",
            ]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    completed = tmp_path / "completed.png"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(out),
                "--out",
                str(completed),
                "--complete",
                "3",
                "--per-class",
                "2",
            ]
        )
        == 0
    )
    assert completed.is_file()
    assert "wrote 20 completions (each row of originals above)" in capsys.readouterr().out
    # per class a row of 2 originals, then a row of their completions: same top 3 rows
    grids = []
    monkeypatch.setattr(plots, "save_image_grid", lambda images, *a, **k: grids.append(images))
    args = ["generate", "--checkpoint", str(out), "--out", str(completed), "--per-class", "2"]
    assert main([*args, "--complete", "3", "--classes", "1,4"]) == 0
    (grid,) = grids
    assert grid.shape[0] == 8
    for originals, completions in ((grid[0:2], grid[2:4]), (grid[4:6], grid[6:8])):
        np.testing.assert_array_equal(completions[:, :3], originals[:, :3])
        assert not np.array_equal(completions, originals)
    assert not np.array_equal(grid[0:2], grid[4:6])
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_mse"] == pytest.approx(metrics["test_mse"])
    assert evaluated["sample_class_accuracy"] == metrics["sample_class_accuracy"]
    assert evaluated["classifier_test_accuracy"] == metrics["classifier_test_accuracy"]
    assert main(["generate", "--checkpoint", str(out), "--out", str(png), "--classes", "12"]) == 2
    assert "--classes" in capsys.readouterr().err
    # a class given twice drew its images twice and broke the pairing of the grid's rows
    code = main(["generate", "--checkpoint", str(out), "--out", str(png), "--classes", "3,3"])
    one_line_error(code, capsys, "--classes: class 3 is given twice, in '3,3'")
    # --complete takes test images: a class the test split lacks ended in "x: the batch is
    # empty", naming no argument of the command
    digits = load_digits()
    keep = digits.y_test != 4
    no_fours = tmp_path / "no_fours.npz"
    np.savez(
        no_fours,
        x=digits.x_train,
        y=digits.y_train,
        x_test=digits.x_test[keep],
        y_test=digits.y_test[keep],
    )
    code = main([*args, "--complete", "3", "--classes", "1,4", "--dataset", str(no_fours)])
    one_line_error(code, capsys, "--classes: the test split holds no image of class 4 to complete")
    code = main([*args, "--complete", "3", "--dataset", str(no_fours)])  # no --classes given
    one_line_error(code, capsys, "--complete (the trained classes): the test split holds no ima")

    # A new run in the same directory replaces the old one's files (the generate run's samples
    # and judge stayed beside a classify run); the user's own files stay.
    (out / "notes.txt").write_text("mine")
    (out / "classifier" / "mine.txt").write_text("mine too")
    assert main(["train", *TINY, "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "samples.png").exists() and (out / "confusion.png").is_file()
    assert not (out / "classifier" / "checkpoint.npz").exists()
    assert (out / "notes.txt").is_file() and (out / "classifier" / "mine.txt").is_file()


def test_a_run_finds_its_dataset_from_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative --dataset is saved absolute: evaluate, resume and generate work from
    another directory; where the file moved, generate takes --dataset."""
    from rnncu.data import load_digits

    data = load_digits()
    (tmp_path / "a").mkdir()
    np.savez(tmp_path / "a" / "mine.npz", x=data.x_train[:300], y=data.y_train[:300])
    monkeypatch.chdir(tmp_path / "a")
    args = ["--task", "generate", *TINY, "--hidden", "8", "--dataset", "mine.npz"]
    assert main(["train", *args, "--out", "run", "--no-progress"]) == 0
    # without --verbose a generate run still says that its judge trains, and only that
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 2 and said[1] == "run saved in run", said
    assert said[0].startswith(
        "rnncu: training the classifier that judges the samples (40 epochs of the classify-rows "
        f"recipe, saved in {Path('run') / 'classifier'})"
    ), said
    saved = json.loads((tmp_path / "a" / "run" / "config.json").read_text())["dataset"]
    assert saved == str(tmp_path / "a" / "mine.npz")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--checkpoint", "a/run"]) == 0
    assert main(["train", "--resume", "a/run", "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    (tmp_path / "a" / "mine.npz").rename(tmp_path / "moved.npz")
    code = main(["generate", "--checkpoint", "a/run", "--out", "x.png"])
    line = one_line_error(code, capsys, "that dataset path comes from the config saved in")
    assert line.endswith("(give its new place with --dataset)")
    assert (
        main(["generate", "--checkpoint", "a/run", "--out", "x.png", "--dataset", "moved.npz"]) == 0
    )
    assert (tmp_path / "x.png").is_file()
    # resuming takes --dataset too (it was refused: the run could not go on), and the run
    # then names the new place, so that evaluate finds it without --dataset
    code = main(["train", "--resume", "a/run", "--epochs", "3", "--no-progress"])
    line = one_line_error(code, capsys, "that dataset path comes from the config saved in")
    assert line.endswith("(give its new place with --dataset)")
    resume = ["train", "--resume", "a/run", "--epochs", "3", "--dataset", "moved.npz"]
    assert main([*resume, "--no-progress"]) == 0
    capsys.readouterr()
    _, meta = load_checkpoint(tmp_path / "a" / "run")
    assert meta["epoch"] == 3 and meta["config"]["dataset"] == str(tmp_path / "moved.npz")
    assert json.loads((tmp_path / "a" / "run" / "config.json").read_text())["dataset"] == str(
        tmp_path / "moved.npz"
    )
    assert main(["evaluate", "--checkpoint", "a/run"]) == 0
    # images of another size are refused, as evaluate --dataset refuses them
    np.savez(tmp_path / "wide.npz", x=np.zeros((40, 8, 12)), y=np.arange(40) % 10)
    code = main(["train", "--resume", "a/run", "--epochs", "4", "--dataset", "wide.npz"])
    one_line_error(code, capsys, "has 8x12 images, the model of")


def test_runs_without_out_get_a_directory_each(tmp_path: Path, monkeypatch) -> None:
    """Runs started in the same second all wrote into runs/<that second>."""
    from rnncu.cli import _new_run_dir

    monkeypatch.chdir(tmp_path)
    made = [_new_run_dir(os.path.join("runs", "20261130-020000")) for _ in range(3)]
    assert made == [os.path.join("runs", "20261130-020000" + s) for s in ("", "-2", "-3")]
    assert all((tmp_path / m).is_dir() for m in made)
    # another run that made runs/ and failed removes it again: between the parent's mkdir and
    # the run's own, runs/ may go (FileNotFoundError escaped); it is made anew
    real_mkdir = os.mkdir
    removed = []

    def mkdir_after_removal(path, *args, **kwargs):
        if path == os.path.join("other", "x") and not removed:  # the run's own, not runs/'s
            removed.append(path)
            os.rmdir(tmp_path / "other")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir_after_removal)
    assert _new_run_dir(os.path.join("other", "x")) == os.path.join("other", "x")
    assert removed == [os.path.join("other", "x")] and (tmp_path / "other" / "x").is_dir()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(tmp_path / "other")
    (tmp_path / "blocked").write_text("a file")
    with pytest.raises(ValueError, match="blocked is a file, where runs without --out go"):
        _new_run_dir(os.path.join("blocked", "x"))
    # a run that fails before writing anything leaves no empty directory behind
    for run in made:
        os.rmdir(run)
    assert main(["train", *TINY, "--dataset", "absent.npz"]) == 2
    assert main(["train", *TINY, "--augment", "9"]) == 2
    assert os.listdir(tmp_path / "runs") == []
    # and runs/ goes too where that run made it; one holding another run's files stays
    os.rmdir(tmp_path / "runs")
    assert main(["train", *TINY, "--augment", "9"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["blocked"]
    (tmp_path / "runs" / "old").mkdir(parents=True)
    assert main(["train", *TINY, "--augment", "9"]) == 2
    assert os.listdir(tmp_path / "runs") == ["old"]


def test_paths_starting_with_a_tilde_are_in_the_home_directory(tmp_path: Path, monkeypatch) -> None:
    """``--out=~/runs/a`` (the shell expands no "~" after "=") made a directory named "~"."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert main(["train", *TINY, "--out=~/runs/a"]) == 0
    assert (home / "runs" / "a" / "checkpoint.npz").is_file()
    assert main(["evaluate", "--checkpoint", "~/runs/a", "--backend", "numpy"]) == 0
    assert os.listdir(work) == []


def test_train_help_offers_every_field_with_its_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    options = text.split("options: ")[1]

    def help_of(field: str) -> str:
        flag = "--" + field.replace("_", "-")
        assert f"{flag} " in options, flag
        return options.split(f"{flag} ", 1)[1].split(" --", 1)[0]

    for field in dataclasses.fields(TrainConfig):
        if field.name not in ("dataset", "backend"):  # those two say more than a value
            assert f"default {field.default}" in help_of(field.name), field.name
    for (task, seq), recipe in RECIPES.items():
        for name, value in recipe.items():
            if value != getattr(TrainConfig, name):
                assert re.search(rf"{value} for [^;]*{task} {seq}", help_of(name)), (name, seq)

    # --augment (no recipe sets it) reaches the saved config
    out = tmp_path / "shifted"
    assert main(["train", *SMALL, "--epochs", "1", "--augment", "1", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["augment"] == 1


def test_info_and_python_m(tmp_path: Path) -> None:
    # --quick: the full report also compiles every CUDA kernel (tens of seconds)
    proc = run_cli("info", "--quick", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1] in ("selected backend: numpy", "selected backend: cupy"), proc.stdout
    recurrence = [line for line in lines if line.startswith("numpy backend's float32 recurren")]
    assert len(recurrence) == 1 and (
        re.search(r": compiled, (AVX-512|AVX2|portable C) micro-kernel \(", recurrence[0])
        or "not used, NumPy's functions run instead: " in recurrence[0]
    ), recurrence
    assert any(line.startswith("BLAS libraries: ") for line in lines), proc.stdout


def test_info_names_the_blas_and_hints_at_its_avx512_kernels(monkeypatch) -> None:
    """The BLAS libraries with their kernel sets; the AVX-512 hint only where the CPU has
    AVX-512, an OpenBLAS chose kernels without it, and OPENBLAS_CORETYPE did not force the
    choice (it is shown instead)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from rnncu.backend import diagnostics, host_kernels

    def pools(kernels: str | None) -> list[dict]:
        return [
            {"user_api": "blas", "internal_api": "openblas", "version": "0.3.31",
             "filepath": "/x/numpy.libs/libscipy_openblas64_.so", "architecture": kernels,
             "num_threads": 2},
            {"user_api": "openmp", "internal_api": "openmp", "version": None, "num_threads": 2},
        ]  # fmt: skip

    for kernels, avx512, coretype, hinted in (
        ("Haswell", True, None, True),
        ("SkylakeX", True, None, False),
        ("Haswell", False, None, False),
        ("Zen", True, None, True),
        ("Haswell", True, "Haswell", False),  # chosen by the environment: shown, no hint
        (None, True, None, False),  # no kernel set reported: nothing to say
    ):
        monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda k=kernels: pools(k))
        monkeypatch.setattr(host_kernels, "cpu_features", lambda a=avx512: {"AVX512_SKX": a})
        if coretype is None:
            monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
        else:
            monkeypatch.setenv("OPENBLAS_CORETYPE", coretype)
        info = diagnostics.blas_info()
        assert info["libraries"] == [
            {"api": "openblas", "version": "0.3.31", "file": "libscipy_openblas64_.so",
             "kernels": kernels, "threads": 2}
        ]  # fmt: skip
        assert info["coretype"] == coretype
        assert (info["hint"] is not None) == hinted, (kernels, avx512, coretype)
        text = diagnostics._format_blas(info)
        shown = f", {kernels} kernels" if kernels else ""
        assert text.startswith(f"openblas 0.3.31 (libscipy_openblas64_.so){shown}, 2 threads")
        assert ("OPENBLAS_CORETYPE=SkylakeX" in text) == hinted
        assert (f"; OPENBLAS_CORETYPE={coretype} is set in the environment" in text) == bool(
            coretype
        )
    assert diagnostics._format_blas({"libraries": [], "error": "x"}) == "not reported (x)"
    json.dumps(diagnostics.collect_info(compile_kernels=False))  # JSON-serialisable, as documented


def test_info_without_cupy_says_why_and_shows_no_device(monkeypatch) -> None:
    """Where CuPy cannot run, ``rnncu info`` says it is unavailable, with the reason, and
    shows no device (never a device read from a backend that did not load)."""
    import rnncu.backend
    from rnncu.backend import diagnostics

    reason = "CuPy is installed but no CUDA device is present"
    available = {"numpy": None, "cupy": reason}
    monkeypatch.setattr(rnncu.backend, "available_backends", lambda: available)
    info = diagnostics.collect_info(compile_kernels=False)
    assert (info["cupy_available"], info["cupy_reason"], info["device"]) == (False, reason, None)
    assert "kernels" not in info
    lines = diagnostics.format_info(info).splitlines()
    assert any(line.endswith(f"  (unavailable: {reason})") for line in lines), lines
    assert "device: none" in lines, lines


def test_info_names_the_nvrtc_release_without_compiling(monkeypatch) -> None:
    """The NVRTC release decides the kernels' register use (13.0 spilled a tile 13.5 did
    not): ``rnncu info --quick``, which gpu_check.sh runs, names it, or why there is none."""
    from types import SimpleNamespace

    from rnncu.backend import diagnostics

    libs = pytest.importorskip("cupy_backends.cuda.libs")
    monkeypatch.setattr(libs, "nvrtc", SimpleNamespace(getVersion=lambda: (13, 0)), raising=False)
    info = diagnostics.collect_info(compile_kernels=False)
    assert info["nvrtc"] == "13.0" and "kernels" not in info
    assert "NVRTC: 13.0" in diagnostics.format_info(info).splitlines()

    def missing() -> tuple[int, int]:
        raise RuntimeError("libnvrtc.so.13: cannot open")

    monkeypatch.setattr(libs, "nvrtc", SimpleNamespace(getVersion=missing))
    info = diagnostics.collect_info(compile_kernels=True)
    assert info["nvrtc"] == "unavailable: RuntimeError: libnvrtc.so.13: cannot open"
    assert info["kernels"] == {"error": f"NVRTC {info['nvrtc']}"}


def test_version_and_options_without_a_command(capsys) -> None:
    import rnncu

    with pytest.raises(SystemExit) as exit_code:  # argparse's version action exits
        main(["--version"])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out.strip() == f"rnncu {rnncu.__version__}"
    # flags without a command go to train: the error says so ("--version" had been read
    # as one of train's and refused as unrecognized)
    one_line_error(main(["-x"]), capsys, "unrecognized arguments: -x (no command given: the op")
    line = one_line_error(main(["train", "-x"]), capsys, "unrecognized arguments: -x")
    assert "no command" not in line


def test_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("evaluate", "--checkpoint", str(tmp_path / "absent"), cwd=tmp_path),
        "checkpoint not found",
    )
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "checkpoint.npz").write_bytes(b"PK\x03\x04\x14\x00\x00\x00")
    assert_one_line_error(
        run_cli("evaluate", "--checkpoint", str(truncated), cwd=tmp_path), "truncated or corrupt"
    )
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(2))
    assert_one_line_error(
        run_cli("generate", "--checkpoint", str(foreign), "--out", "x.png", cwd=tmp_path),
        "not an rnncu checkpoint",
    )
    assert_one_line_error(run_cli("train", "--hidden", "0", cwd=tmp_path), "--hidden")
    assert_one_line_error(
        run_cli("--dataset", str(tmp_path / "none.npz"), cwd=tmp_path), "no such file"
    )


TINY = ["--hidden", "8", "--layers", "1", "--batch-size", "64", "--epochs", "1"]


def one_line_error(code: int, capsys: pytest.CaptureFixture, fragment: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rnncu: error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--backend", "numpy", "--out", str(out), "--no-progress"]) == 0
    return out


def test_out_refuses_an_existing_run(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "checkpoint.npz").read_bytes()
    code = main(["train", *TINY, "--backend", "numpy", "--seed", "5", "--out", str(run)])
    line = one_line_error(code, capsys, f"--out {run}: already holds a run")
    assert f"--resume {run}" in line and "--overwrite" in line
    assert (run / "checkpoint.npz").read_bytes() == before
    code = main(["train", *TINY, "--backend", "numpy", "--out", str(run), "--overwrite"])
    assert code == 0 and (run / "checkpoint.npz").read_bytes() != before


def test_resume_already_done_says_so(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "already at epoch 1 >= --epochs 1: nothing was trained" in err, err
    # written elsewhere, nothing trained leaves nothing there: the directory --out named,
    # made to hold it while the run looked, was left behind empty
    elsewhere = tmp_path / "copies" / "copy"
    code = main(["train", "--resume", str(run), "--epochs", "1", "--out", str(elsewhere)])
    assert code == 0 and "nothing was trained" in capsys.readouterr().err
    # stopped after its last checkpoint: the resume at that epoch writes the run's end
    (run / "metrics.json").unlink()
    (run / "curves.png").unlink()
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "nothing was trained" not in err, err
    assert f"rnncu: the run in {run} was already at epoch 1, but had been stopped" in err, err
    assert f"its end (metrics.json, the plots) is written now; run saved in {run}" in err, err
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    assert (run / "curves.png").stat().st_size > 0
    assert not (tmp_path / "copies").exists()
    # a directory that was there before stays
    elsewhere.mkdir(parents=True)
    assert main(["train", "--resume", str(run), "--epochs", "1", "--out", str(elsewhere)]) == 0
    assert elsewhere.is_dir() and not any(elsewhere.iterdir())


def test_flags_are_named_in_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "r")
    for flags, fragment in [
        (["--schedule", "step", "--lr-decay", "5"], "--lr-decay: expected a number in (0, 1]"),
        (["--lr-decay", "5"], "--lr-decay: expected a number in (0, 1]"),
        (["--seed", "-1"], "argument --seed: expected an integer >= 0"),
        (["--task", "generate", "--seq", "pixels"], "--seq: the generate task"),
        (["--momentum", "0.9"], "--momentum: Adam takes none (its moments are its betas), got 0.9"),
        (["--optimizer", "sgd", "--momentum", "1"], "--momentum: expected a number in [0, 1)"),
        # checked once the images are loaded, inside train(), not by make_config
        (["--augment", "4"], "--augment: expected at most 3 for 8x8 images"),
        (
            ["--schedule", "cosine", "--decay-epochs", "2", "--warmup-epochs", "2"],
            "--warmup-epochs: expected less than decay_epochs (2.0), the cosine's horizon",
        ),
    ]:
        one_line_error(main(["train", *TINY, "--out", out, *flags]), capsys, fragment)
    assert not os.path.exists(out)
    # an empty path would mean the current directory: a run there, by accident
    for argv in (
        ["train", *TINY, "--resume", "", "--epochs", "2"],
        ["train", *TINY, "--out", " "],
        ["train", *TINY, "--dataset", ""],
        ["evaluate", "--checkpoint", ""],
        ["evaluate", "--checkpoint", out, "--dataset", ""],
        ["generate", "--checkpoint", "", "--out", "x.png"],
        ["generate", "--checkpoint", out, "--out", ""],
    ):
        flag = argv[argv.index("") - 1] if "" in argv else "--out"
        one_line_error(main(argv), capsys, f"argument {flag}: expected a path, got an empty")


def test_train_with_another_optimizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--optimizer`` and ``--momentum`` reach the run: its config and its checkpoint's state
    say so; a resume keeps them and refuses them given again."""
    out = tmp_path / "run"
    flags = ["--optimizer", "rmsprop", "--momentum", "0.5", "--lr", "1e-3"]
    assert main(["train", *TINY, *flags, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["momentum"], config["lr"]) == ("rmsprop", 0.5, 1e-3)
    with np.load(out / "checkpoint.npz", allow_pickle=False) as npz:
        kinds = {name.split(".")[1] for name in npz.files if name.startswith("optim.")}
    assert kinds == {"step", "square_avg", "momentum_buffer"}
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert load_checkpoint(out)[1]["config"]["optimizer"] == "rmsprop"
    capsys.readouterr()
    code = main(["train", "--resume", str(out), "--epochs", "3", "--optimizer", "adam"])
    one_line_error(code, capsys, "may be given, not --optimizer")


def test_out_of_memory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rnncu.trainer

    def too_large(*args, **kwargs):
        raise MemoryError("Unable to allocate 64.0 TiB for an array")

    monkeypatch.setattr(rnncu.trainer, "train", too_large)
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err == "rnncu: error: out of memory (Unable to allocate 64.0 TiB for an array)\n"


def test_unwritable_output_paths(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for out in (afile, afile / "run"):
        code = main(["train", *TINY, "--backend", "numpy", "--out", str(out)])
        one_line_error(code, capsys, f"--out {out}: {afile} is a file, not a directory")
    png = afile / "g.png"
    code = main(["generate", "--checkpoint", str(tiny_run), "--out", str(png)])
    one_line_error(code, capsys, f"{afile} is a file, not a directory")


def test_bad_label_dtype_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "strl.npz"
    np.savez(data, x=np.zeros((8, 4, 4), np.float32), y=np.array(list("01010101")))
    code = main(["train", *TINY, "--dataset", str(data), "--out", str(tmp_path / "r")])
    one_line_error(code, capsys, "strl.npz: labels must be integers, array 'y' has dtype <U1")


def test_backend_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RNNCU_BACKEND", "bogus")
    code = main(["train", *TINY, "--out", str(tmp_path / "bad")])
    one_line_error(code, capsys, "environment variable RNNCU_BACKEND: expected one of")
    monkeypatch.setenv("RNNCU_BACKEND", "numpy")
    assert main(["train", *TINY, "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["backend"] == "numpy"
    # an explicit flag still wins
    assert main(["train", *TINY, "--backend", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["backend"] == "auto"


def test_metrics_output_is_valid_json(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from rnncu import trainer

    monkeypatch.setattr(trainer, "evaluate_run", lambda *a, **k: {"test_loss": float("nan")})
    code = main(["evaluate", "--checkpoint", str(tiny_run)])
    captured = capsys.readouterr()
    assert "NaN" not in captured.out
    assert code == 2 and "rnncu: error: the metrics test_loss are not finite" in captured.err


def test_evaluate_without_the_saved_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    y = np.arange(40) % 2
    np.savez(data, x=rng.random((40, 4, 4)), y=y, x_test=rng.random((8, 4, 4)), y_test=y[:8])
    run = tmp_path / "run"
    code = main(["train", *TINY, "--backend", "numpy", "--dataset", str(data), "--out", str(run)])
    assert code == 0
    data.unlink()
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", str(run)])
    line = one_line_error(code, capsys, "no such file; that dataset path comes from the config")
    assert "--dataset" in line


def test_evaluate_on_images_of_another_size_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Pixels of 6x4 images passed for a run on 4x6 ones (the same 24-step sequences), and
    an --augment run said "--augment: expected at most ..." for smaller images."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3

    def dataset(name: str, shape: tuple[int, int]) -> str:
        path = tmp_path / name
        np.savez(path, x=rng.random((60, *shape)), y=y)
        return str(path)

    wide, tall, small = dataset("wide.npz", (4, 6)), dataset("tall.npz", (6, 4)), "digits"
    run = str(tmp_path / "run")
    args = ["train", *TINY, "--seq", "pixels", "--augment", "1", "--dataset", wide]
    assert main([*args, "--out", run, "--no-progress"]) == 0
    capsys.readouterr()
    for other, size in ((tall, "6x4"), (small, "8x8")):
        code = main(["evaluate", "--checkpoint", run, "--dataset", other])
        one_line_error(code, capsys, f"has {size} images, the model of ")
    assert main(["evaluate", "--checkpoint", run, "--dataset", wide]) == 0


def test_generate_draws_only_classes_it_was_trained_on(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels with gaps ({1, 3, 4}: 5 outputs) drew and judged samples of classes 0 and 2,
    which the model never saw: noise, counted as failures in sample_class_accuracy."""
    from rnncu.data import load_digits

    digits = load_digits()
    keep = np.isin(digits.y_train, [1, 3, 4])
    data = tmp_path / "gaps.npz"
    np.savez(data, x=digits.x_train[keep], y=digits.y_train[keep])
    run = tmp_path / "run"
    grids = []
    monkeypatch.setattr(plots, "save_image_grid", lambda images, *a, **k: grids.append(images))
    args = ["train", "--task", "generate", *TINY, "--dataset", str(data), "--out", str(run)]
    assert main([*args, "--no-progress"]) == 0
    assert grids[0].shape[0] == 3 * 10  # the judged samples: classes 1, 3 and 4 (was 5 * 10)
    assert json.loads((run / "metrics.json").read_text())["samples_per_class"] == 10
    capsys.readouterr()
    png = str(tmp_path / "x.png")
    assert main(["generate", "--checkpoint", str(run), "--out", png, "--per-class", "2"]) == 0
    assert grids[1].shape[0] == 3 * 2
    code = main(["generate", "--checkpoint", str(run), "--out", png, "--classes", "2"])
    one_line_error(code, capsys, "--classes: class 2 has no training images (the run's classes")


def test_warnings_are_cli_lines(tmp_path: Path) -> None:
    """A warning on the command line reads as the CLI's errors do, not as Python's
    ``.../bin/rnncu:8: UserWarning: ...`` followed by the console script's source line."""
    args = ["train", *TINY, "--backend", "numpy", "--schedule", "step", "--out", "run"]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert warned == [
        "rnncu: warning: the step schedule multiplies the rate by lr_decay every 40 epochs "
        "(decay_epochs) after 0 of warm-up: in this run of 1 epochs it never changes (resumed "
        "past epoch 40, it would)"
    ]
    assert "sys.exit" not in proc.stderr and "UserWarning" not in proc.stderr


@pytest.fixture(scope="module")
def tiny_generate_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "gen"
    args = ["train", "--task", "generate", *TINY, "--backend", "numpy", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    return out


def test_generate_takes_its_seed_noise_and_per_class(
    tiny_generate_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    grids: list[tuple[np.ndarray, int]] = []

    def save(images, path, ncols=10, **kwargs) -> None:
        grids.append((images, ncols))

    monkeypatch.setattr(plots, "save_image_grid", save)
    base = ["generate", "--checkpoint", str(tiny_generate_run), "--out", str(tmp_path / "g.png")]
    base += ["--classes", "1,3"]
    assert main(base) == 0  # 10 per class by default, one class per grid row
    assert "wrote 20 images for classes [1, 3]" in capsys.readouterr().out
    assert grids[-1][0].shape == (20, 8, 8) and grids[-1][1] == 10

    def drawn(*flags: str) -> np.ndarray:
        assert main([*base, "--per-class", "3", *flags]) == 0
        return grids[-1][0]

    one = drawn("--seed", "1")
    np.testing.assert_array_equal(one, drawn("--seed", "1"))
    assert not np.array_equal(one, drawn("--seed", "2"))  # the noise's draw follows --seed
    mean = drawn("--seed", "1", "--noise", "0")  # no noise: the model's mean, any seed
    np.testing.assert_array_equal(mean, drawn("--seed", "2", "--noise", "0"))
    assert not np.array_equal(mean, one)


def test_generate_writes_its_images_as_a_dataset_s_arrays(
    tiny_generate_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """``--out FILE.npz``: the images the PNG shows, as arrays x (N, H, W) and y (N,), which
    a dataset reads back; completions add the test images they complete, x_original. Arrays
    are no picture: a count past the grid's bound is written."""
    from rnncu.data import load_npz

    grids: list[np.ndarray] = []
    monkeypatch.setattr(plots, "save_image_grid", lambda images, *a, **k: grids.append(images))
    base = ["generate", "--checkpoint", str(tiny_generate_run), "--classes", "7,2"]
    base += ["--per-class", "3", "--seed", "4"]
    assert main([*base, "--out", str(tmp_path / "g.png")]) == 0
    assert main([*base, "--out", str(tmp_path / "g.npz")]) == 0
    assert "wrote 6 images for classes [7, 2] to" in capsys.readouterr().out
    with np.load(tmp_path / "g.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == ["x", "y"]
        np.testing.assert_array_equal(saved["x"], grids[-1])  # the PNG's images, exactly
        np.testing.assert_array_equal(saved["y"], [7, 7, 7, 2, 2, 2])
        assert saved["y"].dtype == np.int64 and saved["x"].dtype == np.float32
    data = load_npz(tmp_path / "g.npz")  # a dataset's form: a stratified split of the six
    assert (
        data.image_shape == (8, 8) and sorted(np.r_[data.y_train, data.y_test]) == [2] * 3 + [7] * 3
    )
    # completions: the first test images of each class, their top rows kept
    assert main([*base, "--complete", "3", "--out", str(tmp_path / "c.npz")]) == 0
    assert "wrote 6 completions (x) of the test images x_original, their first 3 given" in (
        capsys.readouterr().out
    )
    digits = load_digits()
    picks = np.r_[np.flatnonzero(digits.y_test == 7)[:3], np.flatnonzero(digits.y_test == 2)[:3]]
    with np.load(tmp_path / "c.npz", allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["x_original"], digits.x_test[picks])
        np.testing.assert_array_equal(saved["y"], digits.y_test[picks])
        np.testing.assert_array_equal(saved["x"][:, :3], digits.x_test[picks, :3])
        assert not np.array_equal(saved["x"], saved["x_original"])
    # no grid: more than an image reader opens is still written
    monkeypatch.setattr(plots, "MAX_GRID_PIXELS", 3000)
    assert main([*base, "--out", str(tmp_path / "many.npz")]) == 0
    with np.load(tmp_path / "many.npz", allow_pickle=False) as saved:
        assert saved["x"].shape == (6, 8, 8)
    code = main([*base, "--out", str(tmp_path / "t.npz"), "--frame-ms", "40"])
    one_line_error(code, capsys, f"--frame-ms: times the frames of a .gif of clips, and --out "
                   f"{tmp_path / 't.npz'} is a .npz of arrays")  # fmt: skip
    assert not (tmp_path / "t.npz").exists()


def test_generate_complete_takes_the_first_test_images_and_checks_k(
    tiny_generate_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    grids: list[np.ndarray] = []
    monkeypatch.setattr(plots, "save_image_grid", lambda images, *a, **k: grids.append(images))
    args = ["generate", "--checkpoint", str(tiny_generate_run), "--out", str(tmp_path / "c.png")]
    assert main([*args, "--complete", "2", "--classes", "7,2", "--per-class", "3"]) == 0
    (grid,) = grids
    digits = load_digits()  # the run's dataset: its first test images of each class, in order
    for row, c in enumerate((7, 2)):
        first = digits.x_test[np.flatnonzero(digits.y_test == c)[:3]]
        np.testing.assert_array_equal(grid[6 * row : 6 * row + 3], first)
    capsys.readouterr()
    # every row given leaves nothing to complete: 8x8 images take 1..7
    code = main([*args, "--complete", "8"])
    one_line_error(code, capsys, "--complete: expected 1..7 rows, got 8")
    # and no row given was read as "draw whole images", without a word
    code = main([*args, "--complete", "0"])
    one_line_error(code, capsys, "--complete: expected a positive integer, got '0'")
    # a grid no image reader opens is refused before any image is drawn (--per-class 100000
    # was still drawing after a minute)
    grids.clear()
    code = main([*args, "--per-class", "100000", "--classes", "7,2"])
    one_line_error(
        code,
        capsys,
        "--per-class 100000: a grid of 2 rows of 100000 images would "
        "have 273,600,304 pixels, more than image readers open (89,478,485); at most "
        "32704 here",
    )  # 76 x 3,600,004 pixels: 8x8 images and a border of 1, each pixel drawn 4x4
    code = main([*args, "--per-class", "20000", "--complete", "2", "--classes", "7,2"])
    one_line_error(code, capsys, "--per-class 20000: a grid of 4 rows of 20000 images would")
    # where not one image per row fits, fewer rows are the way (76 x 40 pixels here)
    monkeypatch.setattr(plots, "MAX_GRID_PIXELS", 3000)
    code = main([*args, "--per-class", "1", "--classes", "7,2"])
    one_line_error(code, capsys, "have 3,040 pixels, more than image readers open (3,000); ask fo")
    assert grids == []


def test_threads_limits_the_blas_threads(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import contextlib

    threadpoolctl = pytest.importorskip("threadpoolctl")
    calls: list[object] = []

    def record(limits=None, user_api=None):
        calls.append((limits, user_api))
        return contextlib.nullcontext()

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", record)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 3 threads fit: no warning
    assert main(["evaluate", "--checkpoint", str(tiny_run), "--threads", "3"]) == 0
    assert main(["evaluate", "--checkpoint", str(tiny_run)]) == 0  # single-threaded default
    assert calls == [(3, "blas"), (1, "blas")]


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only (documented)")
def test_a_run_into_a_directory_another_run_is_writing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two runs started at once with one --out both passed the "already holds a run" check
    (no checkpoint before the first epoch ends) and left one's config.json beside the other's
    checkpoint and metrics."""
    from test_checkpoint import hold_in_another_process

    out = tmp_path / "run"
    holder = hold_in_another_process(out)
    try:
        assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"rnncu: error: --out {out}: another rnncu run is writing into {out}; " \
            "wait for it to end, or give another directory\n"  # fmt: skip
        assert os.listdir(out) == []  # nothing of this run's
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    holder = hold_in_another_process(out)
    try:  # resuming it, in its own directory, while another run writes there
        assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
        assert f"rnncu: error: --resume {out}: another rnncu run" in capsys.readouterr().err
        # read, not written into: resuming it into another --out is not held up
        copy = tmp_path / "copy"
        assert main(["train", "--resume", str(out), "--epochs", "2", "--out", str(copy)]) == 0
        assert load_checkpoint(copy)[1]["epoch"] == 2
    finally:
        holder.kill()
        holder.wait()
    assert load_checkpoint(out)[1]["epoch"] == 1  # untouched
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert load_checkpoint(out)[1]["epoch"] == 2


def test_a_file_error_names_the_option_whose_path_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[Errno 2] No such file or directory: '/proc/g.png'`` named no argument."""
    from rnncu import trainer
    from rnncu.cli import _os_error_text

    out = tmp_path / "run"

    def refused(path: Path, obj: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(trainer, "_write_json", refused)
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 2
    said = f"rnncu: error: --out {out}: {out / 'config.json'}: Permission denied\n"
    assert capsys.readouterr().err == said
    monkeypatch.chdir(tmp_path)
    cases = {  # (filename, argv) -> said
        ("g.png", ("generate", "--out", "g.png")): "--out g.png: No such file or directory",
        (str(tmp_path / "g.png"), ("--out=g.png",)): "--out g.png: No such file or directory",
        ("d", ("--out", "d/e/f")): f"--out d/e/f: {tmp_path / 'd'}: No such file or directory",
        (
            "d/x.json",
            ("--out", "d"),
        ): f"--out d: {tmp_path / 'd/x.json'}: No such file or directory",
        ("other", ("--out", "d")): f"{tmp_path / 'other'}: No such file or directory",
        ("g.png", ("--out",)): f"{tmp_path / 'g.png'}: No such file or directory",
    }
    for (filename, argv), text in cases.items():
        assert _os_error_text(FileNotFoundError(2, "No such file or directory", filename), argv) \
            == text, (filename, argv)  # fmt: skip
    # without a file name, or a reason, the error's own words
    assert _os_error_text(FileNotFoundError("dataset 'x.npz' not found"), ["--out", "x"]) == \
        "dataset 'x.npz' not found"  # fmt: skip
    assert _os_error_text(OSError(5, "Input/output error"), ["--out", "x"]) == \
        "[Errno 5] Input/output error"  # fmt: skip


def test_more_threads_than_cpus_is_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads above the cores was taken without a word, and an epoch ran 200 times slower
    (measured on 2 cores: 10 s with 8 threads, 0.05 s with 1)."""
    import contextlib
    import warnings

    from rnncu.cli import _blas_limit

    # threadpoolctl sets the limit when called, not when entered: kept from this process
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda **k: contextlib.nullcontext())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # the machine's; 2 are this process's
    with pytest.warns(RuntimeWarning, match=r"^--threads 3: more than the 2 CPUs this process"):
        _blas_limit(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _blas_limit(2)
        _blas_limit(None)  # the default: 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with pytest.warns(RuntimeWarning, match=r"^--threads 5: more than the 4 CPUs"):
        _blas_limit(5)


def test_resuming_a_run_that_is_not_there_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Only an existing run directory is held: a path under a file is no run, not an --out."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for resume in (afile / "run", afile / "run" / "checkpoint.npz", tmp_path / "absent" / "run"):
        code = main(["train", "--resume", str(resume), "--epochs", "2"])
        line = one_line_error(code, capsys, "checkpoint not found")
        assert line == f"rnncu: error: checkpoint not found: {resume}"
    assert os.listdir(tmp_path) == ["afile"] and afile.read_text() == "mine"


def test_a_file_error_names_the_option_nearest_to_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first option whose path held the file was named, not the option of the file
    itself: ``--checkpoint d --out d/g.png`` blamed --checkpoint for g.png."""
    from rnncu.cli import _os_error_text

    monkeypatch.chdir(tmp_path)
    cases = {  # (filename, argv) -> said
        ("d/g.png", ("generate", "--checkpoint", "d", "--out", "d/g.png")): (
            "--out d/g.png: No such file or directory"
        ),
        ("mnist/run1/checkpoint.npz", ("--dataset", "mnist", "--out", "mnist/run1")): (
            f"--out mnist/run1: {tmp_path / 'mnist/run1/checkpoint.npz'}: No such file or directory"
        ),
        ("d", ("--dataset", ".", "--out", "d/e")): (
            f"--out d/e: {tmp_path / 'd'}: No such file or directory"
        ),
        ("d/e", ("--dataset", "d/e/f/x.npz", "--out", "d")): (
            f"--out d: {tmp_path / 'd/e'}: No such file or directory"
        ),
    }
    for (filename, argv), text in cases.items():
        error = FileNotFoundError(2, "No such file or directory", filename)
        assert _os_error_text(error, argv) == text, (filename, argv)


def test_a_file_error_under_a_tilde_path_names_its_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """argv keeps ``~`` as typed; the error's file name has it expanded."""
    from rnncu.cli import _os_error_text

    monkeypatch.setenv("HOME", str(tmp_path))
    error = FileNotFoundError(2, "No such file or directory", str(tmp_path / "g.png"))
    said = "--out ~/g.png: No such file or directory"
    assert _os_error_text(error, ["generate", "--out", "~/g.png"]) == said
    error = FileNotFoundError(2, "No such file or directory", str(tmp_path / "d"))
    said = f"--out ~/d/g.png: {tmp_path / 'd'}: No such file or directory"
    assert _os_error_text(error, ["generate", "--out", "~/d/g.png"]) == said


def test_sigterm_in_the_first_epoch_leaves_nothing(tmp_path: Path) -> None:
    """`kill` or `timeout` (SIGTERM) stops a run as Ctrl-C does: before its first checkpoint
    it leaves nothing of itself. SIGTERM ended the process at once, and the run's
    config.json stayed behind alone in --out."""
    import signal
    import time

    rng = np.random.default_rng(0)
    images = tmp_path / "images.npz"
    # 784 steps a sequence and 4000 images: a first epoch of many seconds
    np.savez(images, x=rng.integers(0, 256, (4000, 28, 28), np.uint8), y=np.arange(4000) % 2)
    out = tmp_path / "made" / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["train", "--dataset", str(images), "--seq", "pixels", "--epochs", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnncu", *args, "--backend", "numpy", "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists():  # written as the first epoch starts
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "rnncu: terminated" and "Traceback" not in err
    assert not (tmp_path / "made").exists()


def test_the_command_line_run_from_another_thread_leaves_sigterm_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """signal.signal works only in the main thread: main() with the process's own arguments,
    called from another thread, runs without the SIGTERM handler instead of failing."""
    import signal
    import threading
    import warnings

    monkeypatch.setattr(sys, "argv", ["rnncu", "--version"])
    before = signal.getsignal(signal.SIGTERM)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(main())
        except SystemExit as exc:  # argparse's --version
            outcome.append(exc.code)
        except BaseException as exc:  # reported by the main thread
            outcome.append(exc)

    with warnings.catch_warnings():  # main() sets the command line's warning display
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
    assert outcome == [0], outcome
    assert signal.getsignal(signal.SIGTERM) is before
    assert capsys.readouterr().out.startswith("rnncu ")


def test_main_called_with_arguments_leaves_sigterm_alone() -> None:
    """The SIGTERM handler is the command line's (main() reading the process's own
    arguments): a program calling main(argv) keeps its own handling of SIGTERM."""
    import signal

    mine = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not any handler a test left
    try:
        with pytest.raises(SystemExit) as exited:  # argparse's --version
            main(["--version"])
        assert exited.value.code == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, mine)


def test_a_signal_right_after_an_epoch_line_leaves_that_line_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --verbose, Ctrl-C or SIGTERM landing as an epoch's line was written (a signal
    is raised at the next check, which may follow the write of the line's text) cut it before
    its newline, and the CLI's last word was glued to it: "... test_accuracy=0.98444rnncu:
    terminated". A line goes out in one write, its newline with it."""

    class SignalAfterTheFirstEpochLine:
        def __init__(self) -> None:
            self.text = ""
            self.armed = True

        def write(self, text: str) -> int:
            self.text += text
            if self.armed and "rnncu: epoch 1/" in self.text:
                self.armed = False
                raise KeyboardInterrupt  # as the signal handler raises it after this write
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    stream = SignalAfterTheFirstEpochLine()
    monkeypatch.setattr(sys, "stderr", stream)
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(out), "-v"]) == 130
    lines = stream.text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("rnncu: epoch 1/3: train_loss="), lines
    assert lines[1] == "rnncu: interrupted", lines
    assert load_checkpoint(out)[1]["epoch"] == 1


def test_generate_writes_a_png_or_for_clips_a_gif(
    tiny_generate_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A .gif plays clips (tests/test_frames.py): a run of images is told to write a .png,
    before anything is drawn; another suffix is refused naming both."""
    gif = tmp_path / "x.gif"
    code = main(["generate", "--checkpoint", str(tiny_generate_run), "--out", str(gif)])
    one_line_error(code, capsys, f"--out {gif}: a .gif plays clips, and {tiny_generate_run} "
                   "draws images: write a .png")  # fmt: skip
    assert not gif.exists()
    code = main(["generate", "--checkpoint", str(tiny_generate_run), "--out", "x.jpg"])
    one_line_error(
        code,
        capsys,
        "--out: expected a .png file, a .npz of arrays (or, for clips, a .gif), got 'x.jpg'",
    )
    (tmp_path / "d.gif").mkdir()
    code = main(
        ["generate", "--checkpoint", str(tiny_generate_run), "--out", str(tmp_path / "d.gif")]
    )
    one_line_error(code, capsys, "is a directory, expected a .png, .npz or .gif file")
