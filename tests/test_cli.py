"""The command line end to end, small: train/evaluate/generate/info in a temporary directory,
and errors that exit non-zero with one line and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnncu.checkpoint import load_checkpoint
from rnncu.cli import main

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


def test_train_evaluate_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--seed", "1", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("checkpoint.npz", "config.json", "metrics.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_accuracy"] <= 1 and metrics["epochs"] == 2
    assert printed["test_accuracy"] == metrics["test_accuracy"]
    with np.load(out / "checkpoint.npz", allow_pickle=False) as npz:
        assert "model.rnn.weight_ih_l0" in npz.files and "optim.exp_avg.0.weight_ih_l0" in npz.files

    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == metrics["test_accuracy"]

    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    capsys.readouterr()
    assert load_checkpoint(out)[1]["epoch"] == 3
    assert main(["train", "--resume", str(out), "--epochs", "4", "--hidden", "8"]) == 2
    assert "--resume takes only" in capsys.readouterr().err


def test_generate_task_and_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gen"
    code = main(["train", "--task", "generate", *SMALL, "--epochs", "2", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_mse", "baseline_mse", "sample_class_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    assert (out / "samples.png").is_file() and (out / "classifier" / "checkpoint.npz").is_file()
    capsys.readouterr()

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
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_mse"] == pytest.approx(metrics["test_mse"])
    assert evaluated["sample_class_accuracy"] == metrics["sample_class_accuracy"]
    assert main(["generate", "--checkpoint", str(out), "--out", str(png), "--classes", "12"]) == 2
    assert "--classes" in capsys.readouterr().err


def test_info_and_python_m(tmp_path: Path) -> None:
    # --quick: the full report also compiles every CUDA kernel (tens of seconds)
    proc = run_cli("info", "--quick", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in proc.stdout.lower()


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
