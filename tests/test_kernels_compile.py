"""Every kernel file compiles, for every name expression, for sm_80 and sm_90, with no register
spills; compile errors point at ``kernels/<file>:<line>``; and the step kernels' arithmetic
(every tile, and the small-batch kernels) is checked against the NumPy backend by running
their CUDA source on the host under the emulation of tests/kernel_emulation.py. None of this
needs a GPU."""

from __future__ import annotations

import re

import numpy as np
import pytest
from kernel_emulation import KernelEmulation
from nvrtc_cache import compile_file, one_worker

from rnncu.backend import kernel_loader

try:
    from cupy_backends.cuda.libs import nvrtc  # noqa: F401

    _NVRTC_REASON = None
except Exception as exc:  # ImportError, or a missing libnvrtc at load time
    _NVRTC_REASON = f"NVRTC is not importable ({type(exc).__name__}: {exc})"

needs_nvrtc = pytest.mark.skipif(_NVRTC_REASON is not None, reason=str(_NVRTC_REASON))
ARCHS = ("sm_80", "sm_90")


def test_kernel_dir_finds_sources() -> None:
    directory = kernel_loader.kernel_dir()
    assert (directory / "rnn_step.cu").is_file()
    assert (directory / "common.cuh").is_file()
    for filename in kernel_loader.all_name_expressions():
        assert (directory / filename).is_file(), filename


def test_read_source_maps_lines_and_inlines_headers() -> None:
    source = kernel_loader.read_source("rnn_step.cu")
    assert source.startswith('#line 1 "kernels/rnn_step.cu"')
    assert '#line 1 "kernels/common.cuh"' in source
    assert '#include "common.cuh"' not in source


def test_read_source_inlines_each_kernel_header_once(tmp_path, monkeypatch) -> None:
    """A header of kernels/ included twice, directly or through another header, is inlined
    once; a quoted include of a file that kernels/ lacks (a toolkit header) and an angled
    one are left to the compiler; after each include, #line returns to the including file's
    next line."""
    (tmp_path / "a.cuh").write_text("int a_value;\n")
    (tmp_path / "b.cuh").write_text('#include "a.cuh"\nint b_value;\n')
    (tmp_path / "main.cu").write_text(
        '#include "a.cuh"\n#include "b.cuh"\n#include "a.cuh"\n#include "cuda_fp16.h"\n'
        "#include <cooperative_groups.h>\nint main_value;\n"
    )
    monkeypatch.setattr(kernel_loader, "kernel_dir", lambda: tmp_path)
    assert kernel_loader.read_source("main.cu").splitlines() == [
        '#line 1 "kernels/main.cu"',
        '#line 1 "kernels/a.cuh"',
        "int a_value;",
        '#line 2 "kernels/main.cu"',
        '#line 1 "kernels/b.cuh"',
        '// #include "a.cuh" (already inlined)',
        '#line 2 "kernels/b.cuh"',
        "int b_value;",
        '#line 3 "kernels/main.cu"',
        '// #include "a.cuh" (already inlined)',
        '#line 4 "kernels/main.cu"',
        '#include "cuda_fp16.h"',
        "#include <cooperative_groups.h>",
        "int main_value;",
    ]


def test_read_source_remembers_headers_a_nested_include_inlined(tmp_path, monkeypatch) -> None:
    """A header first reached through another header (main -> b -> a), then included
    directly: inlined once. The inlining once forgot what a nested include had inlined and
    pasted a.cuh twice, which NVRTC refuses for any header that defines something (the real
    headers: `persistent_common.cuh` then `common.cuh` redefined `rnncu::Activation`)."""
    (tmp_path / "a.cuh").write_text("int a_value;\n")
    (tmp_path / "b.cuh").write_text('#include "a.cuh"\nint b_value;\n')
    (tmp_path / "c.cuh").write_text('#include "b.cuh"\nint c_value;\n')
    (tmp_path / "main.cu").write_text(
        '#include "c.cuh"\n#include "a.cuh"\n#include "b.cuh"\nint main_value;\n'
    )
    real = kernel_loader.kernel_dir()
    monkeypatch.setattr(kernel_loader, "kernel_dir", lambda: tmp_path)
    source = kernel_loader.read_source("main.cu")
    for name in ("a", "b", "c", "main"):
        assert source.count(f"int {name}_value;") == 1, (name, source)
    assert source.count("(already inlined)") == 2
    # the real headers in that order: common.cuh once
    for header in real.glob("*.cuh"):
        (tmp_path / header.name).write_text(header.read_text())
    (tmp_path / "both.cu").write_text('#include "persistent_common.cuh"\n#include "common.cuh"\n')
    source = kernel_loader.read_source("both.cu")
    assert source.count('#line 1 "kernels/common.cuh"') == 1


def test_nvrtc_lib_without_the_libraries_is_a_usage_error(tmp_path) -> None:
    """--nvrtc-lib DIR naming a directory without libnvrtc.so.13 and its builtins stops the
    session at once (pytest's usage error), instead of compiling on CuPy's own NVRTC."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "libnvrtc.so.13").write_bytes(b"")  # the builtins missing
    tests = Path(__file__).resolve().parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "--nvrtc-lib", str(tmp_path), str(tests / "test_kernels_compile.py")],
        cwd=tests.parent, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    said = f"--nvrtc-lib {tmp_path}: expected libnvrtc.so.13 and libnvrtc-builtins.so.* there"
    assert said in done.stderr, done.stderr


@needs_nvrtc
def test_the_nvrtc_asked_for_is_the_one_compiling(request: pytest.FixtureRequest) -> None:
    """With --nvrtc-lib DIR (.ci/run: NVRTC 13.0, which PyTorch's CUDA 13 wheels pin, and
    which spilled a tile 13.5 did not), the compile tests must run on DIR's release, not on
    the one CuPy would have found: its builtins' file name gives the release."""
    from pathlib import Path

    from cupy_backends.cuda.libs import nvrtc

    directory = request.config.getoption("--nvrtc-lib")
    if not directory:
        pytest.skip("no --nvrtc-lib: the compile tests run on the NVRTC that CuPy finds")
    (builtins,) = Path(directory).glob("libnvrtc-builtins.so.*")
    release = tuple(int(part) for part in builtins.name.split(".so.")[1].split("."))
    assert nvrtc.getVersion() == release[:2], (nvrtc.getVersion(), builtins)


@needs_nvrtc
@pytest.mark.parametrize(
    ("filename", "arch"),
    [
        pytest.param(filename, arch, marks=one_worker(filename, arch), id=f"{filename}-{arch}")
        for filename in sorted(kernel_loader.all_name_expressions())
        for arch in ARCHS
    ],
)
def test_every_kernel_compiles_without_spills(filename: str, arch: str) -> None:
    names = kernel_loader.all_name_expressions()[filename]
    result = compile_file(filename, arch)
    assert result.cubin, "empty cubin"
    assert set(result.lowered_names) == set(names)
    # every kernel must appear in ptxas' report, or the spill check below proves nothing
    assert set(result.spills) == set(names), result.log
    spilling = {name: s for name, s in result.spills.items() if s != (0, 0)}
    assert not spilling, f"register spills (stores, loads) for {arch}: {spilling}\n{result.log}"


@needs_nvrtc
@one_worker(kernel_loader.TF32_STEP_KERNEL_FILE, "sm_80")
def test_the_tf32_step_kernels_compile_to_traps_below_sm_80() -> None:
    """``rnncu precompile`` builds every registered module for the device's arch: on a GPU
    below 8.0 (no TF32 fragments) the TF32 step file must still compile, its kernels reduced
    to a trap (the backend never launches them there; a handful of registers shows no body
    was compiled)."""
    filename = kernel_loader.TF32_STEP_KERNEL_FILE
    names = kernel_loader.all_name_expressions()[filename]
    result = kernel_loader.nvrtc_compile(filename, names, arch="sm_75")
    assert set(result.registers) == set(names), result.log
    assert max(result.registers.values()) <= 16, result.registers
    assert min(compile_file(filename, "sm_80").registers.values()) > 64


@needs_nvrtc
@pytest.mark.parametrize(
    ("filename", "needle", "replacement"),
    [
        ("rnn_step.cu", "const int tx = tid % Tile::kThreadsX;", "const int tx = tid % nope;"),
        ("common.cuh", "return T(1) - h * h;", "return T(1) - h * nope;"),
    ],
)
def test_compile_error_points_at_kernel_line(filename: str, needle: str, replacement: str) -> None:
    line = next(
        number
        for number, text in enumerate(
            (kernel_loader.kernel_dir() / filename).read_text().splitlines(), 1
        )
        if needle in text
    )
    source = kernel_loader.read_source("rnn_step.cu")
    assert needle in source
    broken = source.replace(needle, replacement, 1)
    with pytest.raises(kernel_loader.KernelCompileError) as info:
        kernel_loader.nvrtc_compile(
            "rnn_step.cu",
            [
                "rnn_step_forward<float, 0, 16, 16, 1, 1>",
                "rnn_step_backward<float, 0, 16, 16, 1, 1>",
            ],
            source=broken,
        )
    assert f"kernels/{filename}:{line}:" in str(info.value)
    assert "nope" in str(info.value)


def test_registry_rejects_empty_and_replaces() -> None:
    with pytest.raises(ValueError):
        kernel_loader.register_kernel_file("empty.cu", [])
    names = kernel_loader.all_name_expressions()["rnn_step.cu"]
    assert "rnn_step_forward<float, 0, 64, 64, 4, 4>" in names
    assert "rnn_step_backward<double, 1, 16, 16, 1, 1>" in names
    assert len(names) == 2 * 2 * 2 * len(kernel_loader.STEP_TILES)


# ------------------------------------------------------------------ host emulation of the kernels
def _nan_guarded(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` followed in memory by NaN: a read past its end reaches the result."""
    buffer = np.full(array.size + 64, np.nan, dtype=array.dtype)
    view = buffer[: array.size].reshape(array.shape)
    view[...] = array
    return view


def _ptr(array: np.ndarray | None) -> int:
    return 0 if array is None else array.ctypes.data


# Each kernel on a shape smaller than a tile (padding on both axes), one that is several tiles
# or row groups with ragged edges, and H = 1 / B = 1; K = H not a multiple of the K slice (8 or
# 16) in most; H a multiple of the 16-byte vector (the small-batch kernel's vector path) in
# (5, 17, 20), (3, 5, 64) and (2, 6, 260), not in the others (its scalar path).
_STEP_CASES = [
    (3, 1, 1, "tanh", False, False, np.float64),
    (4, 7, 33, "tanh", False, True, np.float64),
    (4, 7, 33, "relu", True, True, np.float64),
    (3, 5, 64, "relu", True, True, np.float64),
    (3, 70, 70, "tanh", True, False, np.float32),
    (5, 17, 20, "relu", False, True, np.float32),
    (2, 3, 7, "tanh", True, True, np.float32),
    (2, 129, 67, "tanh", False, True, np.float32),
    (2, 6, 260, "tanh", True, False, np.float32),
    (3, 2, 36, "tanh", False, True, np.float64),
]
# Every tile of rnn_step.cu on every case. rnn_matvec.cu with RB rows per block where B is at
# most 2 RB (one or two row groups, the second full or partial) and any B with RB = 8 (forced
# with RNNCU_STEP_TILE=matvec); its other pairings (B = 129 in blocks of one row) add nothing
# but emulation time.
_STEP_KERNELS = [("tile", tile) for tile in kernel_loader.STEP_TILES] + [
    ("rows", rows) for rows in kernel_loader.MATVEC_ROWS
]
_STEP_PAIRS = [
    pytest.param(
        *case,
        kernel,
        id="-".join(map(str, case[:4]))
        + f"-{np.dtype(case[6])}-{kernel[0]}"
        + "x".join(map(str, np.atleast_1d(kernel[1]))),
    )
    for case in _STEP_CASES
    for kernel in _STEP_KERNELS
    if kernel[0] == "tile"
    or case[1] <= 2 * kernel[1]
    or kernel[1] == max(kernel_loader.MATVEC_ROWS)
]


@pytest.mark.parametrize(
    ("steps", "batch", "hidden", "nonlinearity", "reverse", "use_lengths", "dtype", "kernel"),
    _STEP_PAIRS,
)
def test_step_kernels_match_numpy_under_host_emulation(
    kernel_emulation: KernelEmulation,
    rng: np.random.Generator,
    steps: int,
    batch: int,
    hidden: int,
    kernel: tuple[str, object],
    nonlinearity: str,
    reverse: bool,
    use_lengths: bool,
    dtype: type,
) -> None:
    """Every step kernel (the backend picks one from the batch and the device's SM count,
    so small shapes on the emulated device meet few of them): the backend's own launch plans
    (``plan_forward``/``plan_backward``) and launch shapes (``StepKernel``) drive the kernels'
    CUDA source compiled for the host (tests/kernel_emulation.py)."""
    from emulated_cupy import cupy_backend

    from rnncu.backend.numpy_backend import NumpyBackend

    backward_result_buffer = cupy_backend.backward_result_buffer
    plan_backward, plan_forward = cupy_backend.plan_backward, cupy_backend.plan_forward
    step = cupy_backend.StepKernel(**{kernel[0]: kernel[1]})

    reference = NumpyBackend()
    z = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    w_hh = (rng.uniform(-1, 1, (hidden, hidden)) / np.sqrt(hidden)).astype(dtype)
    h0 = _nan_guarded(rng.standard_normal((batch, hidden)).astype(dtype))
    lengths = rng.integers(0, steps + 1, batch).astype(np.int32) if use_lengths else None
    if lengths is not None and batch > 1:
        lengths[-1] = 0  # a row with no step: its state passes through
    grad_states = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    if lengths is not None:  # the gradient at a padded output is ignored, even when not finite
        grad_states[np.arange(steps)[:, None] >= lengths[None, :]] = np.nan
    grad_h_last = rng.standard_normal((batch, hidden)).astype(dtype)
    is_double = int(dtype == np.float64)
    gx, gy, _ = step.grid(batch, hidden)
    shared_mem = step.shared_mem(hidden, np.dtype(dtype).itemsize)
    # the small-batch backward kernel reads rows of W^T
    w_backward = w_hh if step.tile is not None else np.ascontiguousarray(w_hh.T)

    def launch(direction: str, args: tuple) -> None:
        name = step.name_expression(direction, np.dtype(dtype), nonlinearity)
        kernel_emulation.launch_raw(name, (gx, gy), step.threads, shared_mem, False, args)

    tol = {"rtol": 1e-12, "atol": 1e-12} if is_double else {"rtol": 2e-6, "atol": 2e-6}

    expected = z.copy()
    reference.recurrence_forward(expected, w_hh, h0, lengths, nonlinearity, reverse)
    states = _nan_guarded(z)
    plan = plan_forward(
        _ptr(states), _ptr(h0), _ptr(w_hh), _ptr(lengths), states.shape, states.itemsize, reverse
    )
    assert len(plan) == steps
    for args in plan:
        launch("forward", args)
    np.testing.assert_allclose(states, expected, **tol)

    # Every combination of present and absent gradients: (None, dh_n) is how a classifier's
    # backward runs (only the last state has a gradient).
    for gs, gl in (
        (grad_states, grad_h_last),
        (None, grad_h_last),
        (grad_states, None),
        (None, None),
    ):
        expected_z, expected_h0 = reference.recurrence_backward(
            expected, w_hh, h0, gs, gl, lengths, nonlinearity, reverse
        )
        grad_z = np.full_like(states, np.nan)
        buffers = (np.full_like(h0, np.nan), np.full_like(h0, np.nan))
        dh_last = np.zeros_like(h0) if gl is None else gl
        plan = plan_backward(
            _ptr(expected),
            _ptr(grad_z),
            None if gs is None else _ptr(gs),
            _ptr(dh_last),
            (_ptr(buffers[0]), _ptr(buffers[1])),
            _ptr(w_backward),
            _ptr(lengths),
            states.shape,
            states.itemsize,
            reverse,
        )
        for args in plan:
            launch("backward", args)
        np.testing.assert_allclose(grad_z, expected_z, **tol)
        np.testing.assert_allclose(buffers[backward_result_buffer(steps)], expected_h0, **tol)


def test_matvec_launch_constants_mirror_the_kernel_file() -> None:
    """kernel_loader's block size and units per block for rnn_matvec.cu are the file's own
    constants (a mismatch would leave hidden units unwritten, or exceed __launch_bounds__)."""
    source = (kernel_loader.kernel_dir() / kernel_loader.MATVEC_KERNEL_FILE).read_text()

    def constant(name: str) -> int:
        match = re.search(rf"constexpr int {name} = (\d+);", source)
        assert match is not None, name
        return int(match[1])

    warps, units = constant("kMatvecWarps"), constant("kUnits")
    assert kernel_loader.MATVEC_THREADS == 32 * warps
    assert kernel_loader.MATVEC_UNITS_PER_BLOCK == warps * units
    assert max(kernel_loader.MATVEC_ROWS) * units <= 32  # one lane writes each result
    assert max(kernel_loader.MATVEC_ROWS) == constant("kMaxRows")


def _toolkit(root, name: str):
    include = root / name / "include"
    include.mkdir(parents=True)
    (include / "cooperative_groups.h").write_text("// stand-in\n")
    return include


def test_header_options_only_when_cupy_lacks_the_toolkit(tmp_path, monkeypatch) -> None:
    cupys = _toolkit(tmp_path, "cupys")
    env = _toolkit(tmp_path, "env")
    monkeypatch.setenv("CUDA_PATH", str(env.parent))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(kernel_loader, "_header_options", None)
    monkeypatch.setattr(kernel_loader, "_with_cupy_includes", lambda o: (*o, f"-I{cupys}"))
    assert kernel_loader.header_options() == ()  # CuPy's own paths have it: nothing added

    monkeypatch.setattr(kernel_loader, "_header_options", None)
    monkeypatch.setattr(kernel_loader, "_with_cupy_includes", lambda o: (*o, "-I/nonexistent"))
    assert kernel_loader.header_options() == (f"-I{env}",)

    monkeypatch.setattr(kernel_loader, "_header_options", None)
    monkeypatch.setattr(kernel_loader, "_toolkit_include_candidates", lambda: [tmp_path / "no"])
    assert kernel_loader.header_options() == ()  # nowhere: the compile error will say so


def test_missing_toolkit_header_error_says_what_to_do() -> None:
    log = (
        "kernels/persistent_grid.cu(3): catastrophic error: "
        'could not open source file "cooperative_groups.h"'
    )
    message = str(kernel_loader.KernelCompileError("persistent_grid.cu", log))
    assert "kernels/persistent_grid.cu:3:" in message
    assert "cooperative_groups.h was not found: point CUDA_PATH at a CUDA toolkit" in message
    assert "was not found" not in str(kernel_loader.KernelCompileError("x.cu", "x.cu(1): error"))
