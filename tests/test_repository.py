"""The repository's promises: CI runs the README's test command; the README's example runs;
kernels are found from the checkout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import rnncu

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    readme_commands = [
        line.strip() for line in _readme().splitlines() if line.startswith("    pip install")
    ]
    assert len(readme_commands) == 2, readme_commands
    main_job, test_command = readme_commands
    assert "rnncu train" in main_job
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_example_runs() -> None:
    block = re.search(r"```python\n(.*?)```", _readme(), re.S)
    assert block is not None
    previous = rnncu.backend._current
    try:
        namespace: dict = {}
        exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102
    finally:
        rnncu.backend._current = previous
    rnn = namespace["rnn"]
    assert namespace["out"].shape == (32, 28, 256)
    assert namespace["h_n"].shape == (4, 32, 128)
    assert namespace["dx"].shape == (32, 28, 28)
    assert set(rnn.grads) == set(rnn.params)
    assert all(np.all(np.isfinite(rnn.backend.to_numpy(g))) for g in rnn.grads.values())
