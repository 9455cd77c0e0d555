"""The CPU benchmark scripts run end to end on their smallest shape and print a full table
(their figures are for benchmarks/RESULTS.md, not for assertions)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from rnncu.backend import host_kernels

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_row(output: str, shape: str) -> list[str]:
    rows = [line for line in output.splitlines() if line.startswith(f"| {shape} |")]
    assert rows, output
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_cpu_compare_prints_every_contender(capsys) -> None:
    pytest.importorskip("torch")
    cpu_compare = _load("cpu_compare")
    assert cpu_compare.main(["--shapes", "rowdigits", "--repeats", "1", "--numpy-loop"]) == 0
    output = capsys.readouterr().out
    cells = _table_row(output, "rowdigits")
    assert cells[1] == "8, 128, 8, 64"
    for cell in cells[2:6] + cells[7:]:
        # milliseconds with two decimals: a number, not its size (a fast machine prints 0.00)
        assert re.fullmatch(r"\d+\.\d\d", cell), output
    assert re.fullmatch(r"\d+\.\d\dx", cells[6]), output
    assert "with host_rnn.c | NumPy only" in output


def test_cpu_recurrence_times_both_paths(capsys) -> None:
    if host_kernels.load() is None:
        pytest.skip(f"compiled kernels unavailable: {host_kernels.status()}")
    cpu_recurrence = _load("cpu_recurrence")
    args = ["--shapes", "rowdigits", "--rounds", "1", "--repeats", "1"]
    assert cpu_recurrence.main(args) == 0
    output = capsys.readouterr().out
    cells = _table_row(output, "rowdigits")
    assert cells[1] == "8, 128, 64"
    for cell in cells[2:]:
        assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d", cell), output
    with pytest.raises(SystemExit):
        cpu_recurrence.main(["--shapes", "nosuchshape"])
