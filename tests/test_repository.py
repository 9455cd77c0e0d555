"""The repository's promises: CI runs the README's test command; the README's example runs;
the wheel ships the kernels and the loader finds them there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnncu

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def _skip_without_setuptools(what: str) -> None:
    """Skip a build test where this interpreter has no setuptools (checked in a child process:
    importing it here would patch distutils for the rest of the session)."""
    if subprocess.run([sys.executable, "-c", "import setuptools"]).returncode != 0:
        pytest.skip(f"setuptools is not installed: cannot build {what}")


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


def _run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module> args`` at the checkout's root (where pyproject.toml configures
    it); skipped where the tool is not installed (the test extra installs it)."""
    pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True
    )


#: The newest NumPy whose type stubs the package was checked against (2026-11-30: mypy 2.4.1
#: passed with NumPy 1.23.5, 1.26.4, 2.0.2, 2.1.3, 2.2.6, 2.3.5, 2.4.6 and 2.5.5). Each
#: release's stubs differ (2.2 and 2.5 each flagged a line the others passed), and CI installs
#: the newest NumPy: a release not yet checked must not turn CI red by itself.
NEWEST_NUMPY_TYPE_CHECKED = (2, 5)


def test_the_package_type_checks(tmp_path: Path) -> None:
    """mypy with pyproject.toml's settings: no error in rnncu, against the installed NumPy's
    stubs (skipped, with the reason, for a NumPy newer than any checked)."""
    numpy_version = tuple(int(part) for part in np.__version__.split(".")[:2])
    if numpy_version > NEWEST_NUMPY_TYPE_CHECKED:
        pytest.skip(
            f"NumPy {np.__version__}'s stubs are newer than those checked (up to "
            f"{'.'.join(map(str, NEWEST_NUMPY_TYPE_CHECKED))}): run python -m mypy and raise "
            "NEWEST_NUMPY_TYPE_CHECKED once it passes"
        )
    proc = _run_tool("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


@pytest.mark.parametrize("command", [("check",), ("format", "--check")])
def test_the_sources_are_ruff_clean(command: tuple[str, ...]) -> None:
    proc = _run_tool("ruff", *command, "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _clean_copy(target: Path) -> Path:
    """The checkout copied to ``target`` without what builds and tools leave in it."""
    import shutil

    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs",
    ))  # fmt: skip
    return target


def test_wheel_ships_the_kernels_and_the_loader_finds_them(tmp_path: Path) -> None:
    """Built as a user would get it: the wheel holds kernels/ as rnncu/kernels, and from an
    installed (non-editable) copy the loader reads the sources from there."""
    import subprocess
    import sys
    import zipfile

    _skip_without_setuptools("the wheel")
    # from a copy without build/: an earlier build's build/lib would be packed again, and
    # hide a file gone from the package
    source = _clean_copy(tmp_path / "source")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("rnncu-*.whl")
    kinds = (".cu", ".cuh", ".c")  # CUDA sources and the NumPy backend's host loops
    sources = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in kinds)
    assert "host_rnn.c" in sources
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(
            name.split("/")[-1] for name in archive.namelist() if name.startswith("rnncu/kernels/")
        )
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA")))
        licenses = [n for n in archive.namelist() if "/licenses/" in n]
        typed = "rnncu/py.typed" in archive.namelist()
        archive.extractall(tmp_path / "site")
    assert shipped == sources
    # PEP 561's marker (setuptools ships it by itself): without it, type checkers ignore an
    # installed package's hints
    assert typed, "no rnncu/py.typed: type checkers would ignore the package's hints"
    # An SPDX expression and the licence text: the TOML-table form is deprecated in setuptools
    # and stops building in 2027.
    assert "License-Expression: MIT" in metadata.decode(), metadata.decode()[:800]
    # the version the package reports is the one it is published under
    import rnncu

    assert f"\nVersion: {rnncu.__version__}\n" in metadata.decode(), metadata.decode()[:800]
    assert [n.split("/")[-1] for n in licenses] == ["LICENSE"]
    probe = subprocess.run(
        [sys.executable, "-c",
         "from rnncu.backend import kernel_loader as k, host_kernels as h; "
         "print(k.kernel_dir()); print(len(k.read_source('rnn_step.cu'))); "
         "import sys; sys.exit(0 if h.load() or not h._compiler() else h.status())"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin",
             "RNNCU_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    found, length = probe.stdout.split()
    assert Path(found) == tmp_path / "site" / "rnncu" / "kernels"
    assert int(length) > 1000


def test_sdist_holds_the_whole_source(tmp_path: Path) -> None:
    """The sdist is what packagers rebuild and test from: it carries the package, the kernel
    sources, and everything the tests, the benchmarks and CI read (conftest and the test
    helpers, benchmarks/, scripts/gpu_check.sh, .ci/run), not only the test_*.py files."""
    import subprocess
    import sys
    import tarfile

    _skip_without_setuptools("the sdist")
    # From a copy without rnncu.egg-info: setuptools adds the files an earlier build's
    # SOURCES.txt lists, which would hide a MANIFEST.in that misses them.
    source = _clean_copy(tmp_path / "source")
    script = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    build = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=source,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    archive_name = build.stdout.split()[-1]
    with tarfile.open(tmp_path / archive_name) as archive:
        prefix = archive_name.removesuffix(".tar.gz") + "/"
        shipped = {m.name.removeprefix(prefix) for m in archive.getmembers() if m.isfile()}
    expected = {".ci/run", "LICENSE", "README.md", "pyproject.toml", "setup.py"}
    for folder in ("rnncu", "kernels", "tests", "benchmarks", "scripts"):
        relative = (path.relative_to(ROOT) for path in (ROOT / folder).rglob("*") if path.is_file())
        expected |= {
            str(path)
            for path in relative
            if path.suffix != ".pyc"
            and not any(part.startswith((".", "__pycache__")) for part in path.parts)
        }
    assert not expected - shipped, sorted(expected - shipped)


def test_gpu_check_stages_fit_its_deadline_when_each_runs_out_its_time() -> None:
    """The device run is lent once: even if every stage runs out its limit, the script ends
    by its deadline (the stages' own caps add up to more than five minutes)."""
    import subprocess

    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    deadline = int(re.search(r"^DEADLINE=(\d+)$", text, re.M).group(1))
    function = re.search(r"^budget\(\) \{.*?^\}$", text, re.M | re.S).group(0)
    calls = re.findall(r'budget (\d+ \d+)\)"', text)
    assert len(calls) == 4, calls  # precompile, tests, benchmark, sanitizer (per tool)
    calls[3:] = calls[3:] * 4  # four sanitizer tools
    # each stage takes all it was given; info and nvidia-smi take 15 s first
    simulation = "\n".join(
        [f"DEADLINE={deadline}", function, "now=15"]
        + [f'SECONDS=$now; t=$(budget {c}); echo "$t"; now=$((now + t))' for c in calls]
        + ['echo "end $now"']
    )
    out = subprocess.run(["bash", "-c", simulation], capture_output=True, text=True, check=True)
    *given, end = out.stdout.split("\n")[:-1]
    assert int(end.split()[1]) <= deadline <= 300, out.stdout
    assert int(given[1]) >= 60 and int(given[2]) >= 60, given  # tests and benchmark get time


def test_gpu_check_runs_python3_where_no_bare_python_exists(tmp_path: Path) -> None:
    """On the device image the interpreter with CuPy is ``python3``; a bare ``python`` may be
    absent. The script picks python3 (or $PYTHON), says so, and calls nothing else."""
    import os
    import shutil
    import subprocess
    import sys

    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    commands = [  # what the shell runs: no comments, no echoed labels
        re.sub(r'echo "[^"]*"', "", line) for line in text.splitlines()
        if not line.lstrip().startswith(("#", "PYTHON="))
    ]  # fmt: skip
    bare = [line for line in commands if re.search(r"(^|[\s;|(])python3? ", line)]
    assert not bare, bare
    selection = re.search(r"^PYTHON=.*?^echo \"== interpreter.*?$", text, re.M | re.S).group(0)
    only_python3 = tmp_path / "bin"
    only_python3.mkdir()
    (only_python3 / "python3").symlink_to(sys.executable)
    (only_python3 / "bash").symlink_to(shutil.which("bash"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"} | {"PATH": str(only_python3)}
    chosen = subprocess.run(
        [str(only_python3 / "bash"), "-c", selection + '\necho "$PYTHON"'],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.split("\n")[-2] == str(only_python3 / "python3"), chosen.stdout
    (only_python3 / "python3").unlink()
    missing = subprocess.run(
        [str(only_python3 / "bash"), "-c", selection], capture_output=True, text=True, env=env
    )
    assert missing.returncode == 2 and "no python3 or python" in missing.stderr


def test_gpu_check_moves_cupys_cache_where_home_is_not_writable(tmp_path: Path) -> None:
    """The device may run the script as a user whose HOME is missing or read-only: CuPy's
    kernel cache then goes into the checkout instead of failing every compile."""
    import os
    import subprocess

    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    block = re.search(r"^cupy_cache=.*?^fi$", text, re.M | re.S).group(0)
    read_only = tmp_path / "home"
    read_only.mkdir()
    read_only.chmod(0o500)
    env = {k: v for k, v in os.environ.items() if k != "CUPY_CACHE_DIR"}
    try:
        for home, moved in ((str(read_only), os.geteuid() != 0), (str(tmp_path / "ok"), False)):
            run = subprocess.run(
                ["bash", "-c", block + '\necho "cache=${CUPY_CACHE_DIR:-default}"'],
                capture_output=True, text=True, cwd=tmp_path, env=env | {"HOME": home},
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            last = run.stdout.split("\n")[-2]
            assert last == (f"cache={tmp_path}/.cupy_kernel_cache" if moved else "cache=default")
        unset = subprocess.run(
            ["bash", "-c", "unset HOME\n" + block + '\necho "cache=$CUPY_CACHE_DIR"'],
            capture_output=True, text=True, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert unset.stdout.split("\n")[-2] == f"cache={tmp_path}/.cupy_kernel_cache"
    finally:
        read_only.chmod(0o700)


def test_gpu_check_script_parses_and_names_existing_sanitizer_cases() -> None:
    """scripts/gpu_check.sh runs once on a lent GPU with no second try: its shell must parse,
    every test it hands to compute-sanitizer must exist under that exact id, and it may write
    at most 8 files to $OUT (the most the device tool brings back)."""
    import subprocess
    import sys

    script = ROOT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    cases = re.findall(r'^\s+"(tests/[^"]+::[^"]+)"$', text, re.M)
    assert len(cases) >= 5, cases
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *cases],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert collected.returncode == 0, collected.stdout + collected.stderr
    listed = set(collected.stdout.split())
    assert set(cases) <= listed, sorted(set(cases) - listed)
    out_files = set(re.findall(r"\$OUT_DIR/([A-Za-z0-9_.-]+)", text))
    assert 0 < len(out_files) <= 8, sorted(out_files)


def test_gpu_check_budget_is_never_negative_and_zero_past_the_deadline() -> None:
    """budget() gives a stage its cap while time allows, less when the reserve for later
    stages cuts in, and 0 (skip the stage) once too little is left, also when an earlier stage
    overran the deadline: `timeout` takes no negative time, and 0 would mean no limit."""
    import subprocess

    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    deadline = int(re.search(r"^DEADLINE=(\d+)$", text, re.M).group(1))
    function = re.search(r"^budget\(\) \{.*?^\}$", text, re.M | re.S).group(0)
    cases = [(0, 60, 0), (deadline - 100, 150, 0), (0, 150, deadline - 90)]
    cases += [(deadline - 10, 60, 0), (deadline + 50, 40, 0)]
    lines = [f"DEADLINE={deadline}", function]
    lines += [f"SECONDS={now}; budget {cap} {reserve}" for now, cap, reserve in cases]
    out = subprocess.run(
        ["bash", "-c", "\n".join(lines)], capture_output=True, text=True, check=True
    )
    given = [int(value) for value in out.stdout.split()]
    assert given[0] == 60  # the cap, time to spare
    assert given[1] == 100  # what is left before the deadline, less than the cap
    assert given[2] == 90  # what is left before the later stages' reserve
    assert given[3:] == [0, 0], given  # 10 s left, and 50 s past the deadline: skipped


_FAKE_PYTHON = r"""#!/bin/bash
# stands in for the device's python3 in scripts/gpu_check.sh: each stage per $FAKE_* variables
case "$*" in
  -V) echo "Python 3 (fake)" ;;
  "-m rnncu info --quick") echo "device: fake" ;;
  "-m rnncu precompile"*) echo "precompiled 290 modules"; exit "$FAKE_PRECOMPILE_RC" ;;
  "-m pytest -m gpu"*) echo "$FAKE_GPU_TESTS" ;;
  *"benchmarks/gpu_compare.py --table-from"*) echo "TABLES FROM ${*: -1}" ;;
  *"benchmarks/gpu_compare.py --repeats"*)
    echo '{"rows": []}' > "${*: -1}"; echo "FULL TABLES"; exit "$FAKE_BENCH_RC" ;;
  *) echo "unexpected: $*" >&2; exit 99 ;;
esac
"""

_FAKE_SANITIZER = r"""#!/bin/bash
echo "$FAKE_SANITIZED"
exit "$FAKE_SANITIZER_RC"
"""


@pytest.mark.parametrize(
    ("stages", "statuses", "tables"),
    [
        pytest.param(
            {},
            ["precompile: precompiled 290 modules", "gpu tests: pass", "benchmark: ok"]
            + [f"sanitizer {tool}: clean" for tool in ("memcheck", "racecheck")],
            "FULL TABLES",
            id="all-pass",
        ),
        pytest.param(  # every gpu test skipped (no device seen) is no pass
            {"FAKE_GPU_TESTS": "41 skipped"},
            ["gpu tests: FAIL (rc no-test-ran)", "benchmark: ok"],
            "FULL TABLES",
            id="all-skipped",
        ),
        pytest.param(  # the benchmark cut short: the tables of the shapes it saved
            {"FAKE_PRECOMPILE_RC": "3", "FAKE_BENCH_RC": "124", "FAKE_SANITIZER_RC": "86"},
            ["precompile: FAIL (rc 3)", "gpu tests: pass", "benchmark: FAIL (rc 124)"]
            + ["sanitizer memcheck: FAIL (errors reported)"],
            "TABLES FROM {out}/gpu_compare.json",
            id="failures",
        ),
    ],
)
def test_gpu_check_reports_each_stage_and_fails_on_any_failure(
    tmp_path: Path, stages: dict[str, str], statuses: list[str], tables: str
) -> None:
    """scripts/gpu_check.sh end to end with a stand-in interpreter and compute-sanitizer (no
    device): each stage's status line, a failed precompile seen through its `| tee`, all
    skipped read as no test run, the saved tables printed where the benchmark stopped
    early, and the exit status 1 where any stage failed (the one device run must not read
    as a pass)."""
    import os
    import shutil
    import subprocess

    checkout = tmp_path / "checkout"  # the script cds to the checkout above it
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_check.sh", checkout / "scripts")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, text in (("python3", _FAKE_PYTHON), ("compute-sanitizer", _FAKE_SANITIZER)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    env = {
        "PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path / "home"),
        "OUT": str(tmp_path / "out"), "FAKE_PRECOMPILE_RC": "0", "FAKE_BENCH_RC": "0",
        "FAKE_GPU_TESTS": "12 passed", "FAKE_SANITIZED": "9 passed", "FAKE_SANITIZER_RC": "0",
    } | stages  # fmt: skip
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    run = subprocess.run(
        ["bash", str(checkout / "scripts" / "gpu_check.sh")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert "unexpected:" not in run.stderr, run.stderr
    summary = run.stdout.split("== summary")[1]
    reported = [re.sub(r" \[at \d+ s\]$", "", line) for line in summary.splitlines()]
    for status in statuses:
        assert status in reported, summary
    assert summary.rstrip().splitlines()[-1] == tables.format(out=env["OUT"]), summary
    failed = any("FAIL" in status for status in statuses)
    assert run.returncode == (1 if failed else 0), (run.returncode, run.stderr[-2000:])
