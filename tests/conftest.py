"""Shared fixtures. GPU tests carry ``@pytest.mark.gpu`` and are skipped, with the reason in
the summary (``-ra``), where CuPy or a CUDA device is missing; with ``--emulated-device`` they
run instead on the host emulation of a device (tests/emulated_cupy.py), which checks the GPU
tests' own code and the backend's logic, not the GPU."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

# Tests pick backends explicitly; an inherited RNNCU_BACKEND must not change what they test.
os.environ.pop("RNNCU_BACKEND", None)


def _gpu_skip_reason() -> str | None:
    from rnncu.backend import available_backends

    return available_backends()["cupy"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--emulated-device",
        action="store_true",
        help="run the gpu-marked tests on the host emulation of a CUDA device instead of "
        "skipping them (slow: every CUDA thread is a fiber)",
    )
    parser.addoption(
        "--record-cupy-surface",
        metavar="PATH",
        help="with --emulated-device: write to PATH (JSON) every CuPy attribute and keyword "
        "that rnncu and the tests reach on the stand-in, for a check against real CuPy",
    )
    parser.addoption(
        "--nvrtc-lib",
        metavar="DIR",
        help="load NVRTC from DIR (libnvrtc.so.13 and its libnvrtc-builtins) instead of the one "
        "CuPy finds, to compile the kernels under another NVRTC release (.ci/run: 13.0, the one "
        "PyTorch's CUDA 13 wheels pin)",
    )
    parser.addoption(
        "--no-memory-pool",
        action="store_true",
        help="allocate every CuPy array with its own cudaMalloc (CuPy's pools off), so that "
        "compute-sanitizer sees each array's bounds (scripts/gpu_check.sh)",
    )


def _load_nvrtc_from(directory: str) -> None:
    """Load NVRTC from ``directory`` before CuPy does: CuPy then binds the library already
    loaded under its name, and NVRTC finds its builtins, loaded first, the same way."""
    import ctypes
    from pathlib import Path

    lib = Path(directory)
    builtins = sorted(lib.glob("libnvrtc-builtins.so.*"))
    if not (lib / "libnvrtc.so.13").is_file() or not builtins:
        raise pytest.UsageError(
            f"--nvrtc-lib {directory}: expected libnvrtc.so.13 and libnvrtc-builtins.so.* there"
        )
    import sys

    if "cupy_backends.cuda.libs.nvrtc" in sys.modules:
        raise pytest.UsageError("--nvrtc-lib: CuPy's NVRTC was loaded already")
    for library in (builtins[0], lib / "libnvrtc.so.13"):
        ctypes.CDLL(str(library.resolve()), mode=ctypes.RTLD_GLOBAL)


_EMULATION_CACHE_MADE = pytest.StashKey[str]()


def _share_emulation_builds(config: pytest.Config) -> None:
    """One directory of emulation libraries for this session, its xdist workers and the
    pytest runs its tests start (they inherit the variable): each kernel file is built once
    between them. A session that finds the variable set (a worker, an inner run, or a user's
    own) uses that directory and leaves it."""
    import tempfile

    from kernel_emulation import CACHE_ENV

    if os.environ.get(CACHE_ENV):
        return
    os.environ[CACHE_ENV] = config.stash[_EMULATION_CACHE_MADE] = tempfile.mkdtemp(
        prefix="rnncu-emulation-"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    made = config.stash.get(_EMULATION_CACHE_MADE, None)
    if made is not None:
        import shutil

        from kernel_emulation import CACHE_ENV

        shutil.rmtree(made, ignore_errors=True)
        if os.environ.get(CACHE_ENV) == made:
            del os.environ[CACHE_ENV]


def pytest_configure(config: pytest.Config) -> None:
    _share_emulation_builds(config)
    if config.getoption("--record-cupy-surface") and not config.getoption("--emulated-device"):
        raise pytest.UsageError("--record-cupy-surface records the emulated device's stand-in: "
                                "add --emulated-device")  # fmt: skip
    if config.getoption("--nvrtc-lib"):
        _load_nvrtc_from(config.getoption("--nvrtc-lib"))
    if not config.getoption("--no-memory-pool"):
        return
    # Inside one pool block, an access past the end of an array still lands in memory the
    # process owns, and memcheck and initcheck cannot tell it from a good one. The tests'
    # NaN poisoning of pool blocks then does nothing: initcheck's reports of reads of
    # unwritten memory take its place.
    try:
        import cupy
    except ImportError:
        raise pytest.UsageError("--no-memory-pool needs CuPy") from None
    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    # rnncu's RuntimeWarnings announce a fallback (clusters given up, step graphs off): on a
    # device test the fallback would pass on the wrong path, so it fails the test instead.
    for item in gpu_items:
        item.add_marker(pytest.mark.filterwarnings("error:rnncu:RuntimeWarning"))
    if not gpu_items or config.getoption("--emulated-device"):
        return
    reason = _gpu_skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=f"GPU test skipped: {reason}")
    for item in gpu_items:
        item.add_marker(marker)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def kernel_emulation(tmp_path_factory: pytest.TempPathFactory):
    """Every kernel file built once for the host emulation (tests/kernel_emulation.py)."""
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the host emulation of the CUDA kernels needs it")
    from kernel_emulation import KernelEmulation

    return KernelEmulation(tmp_path_factory.mktemp("kernel_emulation"))


def _no_variant_fallback() -> None:
    """A persistent kernel that fails to load or launch turns its variant off for the rest
    of the process with a warning (the next variant or the step path runs instead); in a
    test, that would pass on the wrong kernel. (The warning itself is an error in gpu tests:
    pytest_collection_modifyitems.)"""
    from rnncu.backend import persistent

    failed = {device: sorted(v) for device, v in persistent._variants_failed.items() if v}
    for device, largest in persistent._largest_cluster.items():
        failed.setdefault(device, []).append(f"clusters above {largest}")
    if failed:
        pytest.fail(
            f"persistent variants failed and were turned off (device: variants): {failed}; "
            "the layer fell back to another kernel"
        )


@pytest.fixture(autouse=True)
def _device_for_gpu_tests(request: pytest.FixtureRequest):
    """Every gpu-marked test: on a real device with every new allocation NaN-poisoned
    (tests/device_memory.py; not with ``--no-memory-pool``, where initcheck reports reads of
    unwritten memory instead), or with ``--emulated-device`` on the emulation. Either way
    it fails if the persistent kernels gave up clusters during the test."""
    if "gpu" not in request.keywords:
        yield None
        return
    if request.config.getoption("--emulated-device"):
        from emulated_cupy import EmulatedDevice

        emulation = request.getfixturevalue("kernel_emulation")
        monkeypatch = request.getfixturevalue("monkeypatch")
        device = EmulatedDevice(emulation)
        with contextlib.ExitStack() as stack:
            if request.config.getoption("--record-cupy-surface"):
                stack.enter_context(_surface_recorded(device, request.config, monkeypatch))
            stack.enter_context(device.installed(monkeypatch))
            yield device
            _no_variant_fallback()
        return
    import cupy
    from device_memory import poisoned_allocations

    from rnncu.backend import persistent

    persistent._variants_failed.clear()  # each test tries every variant afresh
    persistent._largest_cluster.clear()
    persistent._kernels.clear()  # (kernel_loader keeps the modules: a lookup, no compile)
    poisoning = (
        contextlib.nullcontext()
        if request.config.getoption("--no-memory-pool")
        else poisoned_allocations(cupy)
    )
    with poisoning:
        yield None
    _no_variant_fallback()


_RECORDED_SURFACE = pytest.StashKey[list]()


@contextlib.contextmanager
def _surface_recorded(device, config: pytest.Config, monkeypatch: pytest.MonkeyPatch):
    """What rnncu and the tests' own code (every module of tests/ but the emulation's) reach
    of the stand-in CuPy during one test, added to the session's record."""
    from pathlib import Path

    from emulated_cupy import SurfaceRecorder

    ours = ("conftest", "emulated_cupy", "kernel_emulation")
    tests = tuple(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in ours)
    recorder = SurfaceRecorder(("rnncu", *tests))
    with recorder.recording(device, monkeypatch):
        yield
    config.stash.setdefault(_RECORDED_SURFACE, []).append(recorder)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--record-cupy-surface")
    if not path:
        return
    import json

    recorders = session.config.stash.get(_RECORDED_SURFACE, [])
    names = sorted({name for r in recorders for name in r.names})
    keywords = sorted({keyword for r in recorders for keyword in r.keywords})
    callers = sorted({caller for r in recorders for caller in r.callers})
    record = {"tests": len(recorders), "names": names, "keywords": keywords, "callers": callers}
    with open(path, "w", encoding="utf-8") as file:
        json.dump(record, file)
