"""``rnncu predict`` run twice on the same files, for the tests of its two output formats:
once as JSON (every digit) and once as the table, to compare line by line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rnncu.cli import main


def predictions_and_table(
    command: list[str], capsys: pytest.CaptureFixture
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of ``rnncu predict`` (``command``, without ``--format``) as JSON, and the
    lines of its table: the header first, then a line per image."""
    assert main(command) == 0
    records: list[dict[str, Any]] = json.loads(capsys.readouterr().out)["predictions"]
    assert main([*command, "--format", "table"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == len(records) + 1, lines
    return records, lines
