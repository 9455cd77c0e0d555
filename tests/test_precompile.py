"""Which module holds each kernel, and ``precompile`` / ``rnncu precompile`` (CPU side).

The device half (the modules really compile and land in CuPy's disk cache) runs in
``scripts/gpu_check.sh``; here the loader's ``load_module`` is replaced by a recorder, or
the spawned workers meet the missing device and must say so per module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from device_limits import H200

from rnncu.backend import kernel_loader, persistent
from rnncu.backend.kernel_loader import ModuleSpec


class _Recorder:
    """Stands in for ``kernel_loader.load_module``: records each call, returns a module
    whose ``get_function`` hands back the name it was asked for."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.calls: list[ModuleSpec] = []
        self.fail = fail

    def __call__(self, filename, name_expressions, options=(), cooperative=False) -> Any:
        spec = ModuleSpec(filename, tuple(name_expressions), tuple(options), cooperative)
        self.calls.append(spec)
        if self.fail & set(name_expressions):
            raise kernel_loader.KernelCompileError(
                filename, f"kernels/{filename}(7): error: broken on purpose\nmore log", options
            )

        class _Module:
            @staticmethod
            def get_function(name: str) -> str:
                assert name in name_expressions, f"{name} is not in the module it came from"
                return name

        return _Module()


def test_every_registered_kernel_is_in_exactly_one_module() -> None:
    specs = kernel_loader.module_specs()
    registered = kernel_loader.all_name_expressions()
    for filename, names in registered.items():
        in_specs = [n for s in specs if s.filename == filename for n in s.name_expressions]
        assert sorted(in_specs) == sorted(names), filename
    assert len(set(specs)) == len(specs)


def test_module_granularity_per_file() -> None:
    specs = kernel_loader.module_specs()
    step = [s for s in specs if s.filename == kernel_loader.STEP_KERNEL_FILE]
    # one module: every step kernel (2 directions x 2 dtypes x 2 activations x each tile)
    assert len(step) == 1 and not step[0].cooperative
    assert len(step[0].name_expressions) == 8 * len(kernel_loader.STEP_TILES)
    matvec = [s for s in specs if s.filename == kernel_loader.MATVEC_KERNEL_FILE]
    assert len(matvec) == 1 and not matvec[0].cooperative
    assert len(matvec[0].name_expressions) == 8 * len(kernel_loader.MATVEC_ROWS)
    for filename, cooperative, count in (
        (persistent.BATCH_KERNEL_FILE, False, 48),
        (persistent.CLUSTER_KERNEL_FILE, False, 48 * len(persistent.CLUSTER_SIZES)),
        (persistent.GRID_KERNEL_FILE, True, 48),
    ):
        mine = [s for s in specs if s.filename == filename]
        assert len(mine) == count
        assert all(len(s.name_expressions) == 1 for s in mine)
        assert all(s.cooperative is cooperative for s in mine)


def test_get_kernel_loads_the_module_that_precompile_builds(monkeypatch) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(kernel_loader, "load_module", recorder)
    # the recorder's strings must not stay in (or come from) the process's kernel cache
    monkeypatch.setattr(persistent, "_kernels", {})
    specs = set(kernel_loader.module_specs())
    step_name = kernel_loader.step_name_expression("backward", "float64", "relu", (32, 32, 4, 4))
    assert kernel_loader.get_kernel(kernel_loader.STEP_KERNEL_FILE, step_name) == step_name
    # every plan the H200 planner makes loads a precompiled module, cooperative where it
    # syncs the grid
    for shape in [(28, 256, 128), (100, 64, 512), (1000, 4, 1024), (5, 3, 65), (9, 2, 700)]:
        for dtype in (np.float32, np.float64):
            for plan in (
                persistent.plan_forward(*shape, dtype, H200),
                persistent.plan_backward(*shape, dtype, H200),
            ):
                if plan is not None:
                    assert persistent._kernel(plan, 0) == plan.name_expression
                    assert recorder.calls[-1].cooperative is plan.cooperative
    assert len(recorder.calls) > 2
    for call in recorder.calls:
        assert call in specs, call


def test_an_unregistered_kernel_gets_a_module_of_its_own() -> None:
    spec = kernel_loader.module_spec("scratch.cu", "scratch_kernel<float>")
    assert spec == ModuleSpec("scratch.cu", ("scratch_kernel<float>",), (), False)


def test_precompile_in_process_reports_each_module(monkeypatch) -> None:
    specs = [s for s in kernel_loader.module_specs() if s.filename != "rnn_step.cu"][:6]
    broken = specs[2].name_expressions[0]
    recorder = _Recorder(fail={broken})
    monkeypatch.setattr(kernel_loader, "load_module", recorder)
    results = kernel_loader.precompile(jobs=1, specs=specs)
    assert recorder.calls == specs
    assert [r.spec for r in results] == specs
    assert [r.error is None for r in results] == [True, True, False, True, True, True]
    # the headline and the compiler's error line, located in the kernel file
    assert "KernelCompileError" in results[2].error
    assert f"kernels/{specs[2].filename}:7: error: broken on purpose" in results[2].error
    assert "more log" not in results[2].error
    assert all(r.seconds >= 0 for r in results)


def test_precompile_workers_report_a_missing_device() -> None:
    """The real worker processes (spawned): without a device each module fails with the
    reason, in the order asked for, and nothing raises."""
    pytest.importorskip("cupy")
    from rnncu.backend import available_backends

    if available_backends()["cupy"] is None:
        pytest.skip("a CUDA device is present: this checks the no-device report")
    specs = kernel_loader.module_specs()[:2]
    results = kernel_loader.precompile(jobs=2, specs=specs)
    assert [r.spec for r in results] == specs
    for result in results:
        assert result.error, "a compile without a device cannot succeed"


def test_cli_precompile_without_a_device_is_one_line(capsys) -> None:
    from rnncu.backend import available_backends
    from rnncu.cli import main

    if available_backends()["cupy"] is None:
        pytest.skip("a CUDA device is present: this checks the no-device message")
    assert main(["precompile", "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnncu: error: precompile needs CuPy and a CUDA device:")
    assert "\n" not in err
    assert main(["precompile", "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_load_module_builds_cupys_own_raw_module(monkeypatch) -> None:
    """``load_module`` on the installed CuPy, with only the device faked: the real
    ``cupy.RawModule`` constructor takes the keywords the loader passes (a subclass whose
    ``compile`` records instead of asking the driver), holds the file's inlined source, the
    options and the name expressions, is built for cooperative launches where the spec asks
    it, is compiled once and memoised per device; and CuPy's compile error (its own
    constructor) becomes a :class:`KernelCompileError` that locates the line. The emulated
    device stands in for ``load_module`` itself, so this is the one check of these calls
    before a GPU runs them."""
    cupy = pytest.importorskip("cupy")
    if cupy.__version__ == "emulated":
        pytest.skip("CuPy is not installed")
    compiled: list[tuple[str, ...]] = []
    broken = {"log": ""}

    class RecordingModule(cupy.RawModule):
        def compile(self, log_stream: Any = None) -> None:
            compiled.append(self.name_expressions)
            if broken["log"]:
                raise cupy.cuda.compiler.CompileException(
                    broken["log"], self.code, "rnncu_source", self.options
                )

    device = {"id": 0}
    monkeypatch.setattr(cupy, "RawModule", RecordingModule)
    monkeypatch.setattr(cupy.cuda.runtime, "getDevice", lambda: device["id"])
    monkeypatch.setattr(kernel_loader, "_modules", {})
    specs = kernel_loader.module_specs()
    chosen = [next(s for s in specs if s.filename == kernel_loader.STEP_KERNEL_FILE),
              next(s for s in specs if s.cooperative)]  # fmt: skip
    for spec in chosen:
        module = kernel_loader.load_module(
            spec.filename, spec.name_expressions, spec.options, spec.cooperative
        )
        assert isinstance(module, RecordingModule)
        assert module.code == kernel_loader.read_source(spec.filename)
        expected = kernel_loader.DEFAULT_OPTIONS + spec.options + kernel_loader.header_options()
        assert tuple(module.options) == expected
        assert tuple(module.name_expressions) == spec.name_expressions
        assert module.enable_cooperative_groups is spec.cooperative
        assert hasattr(module, "get_function")
        again = kernel_loader.load_module(
            spec.filename, spec.name_expressions, spec.options, spec.cooperative
        )
        assert again is module
    assert compiled == [s.name_expressions for s in chosen]
    device["id"] = 1  # another device compiles its own
    step = chosen[0]
    other = kernel_loader.load_module(step.filename, step.name_expressions, step.options)
    assert other is not module and len(compiled) == 3

    broken["log"] = f"kernels/{step.filename}(12): error: broken on purpose"
    device["id"] = 2
    with pytest.raises(kernel_loader.KernelCompileError) as info:
        kernel_loader.load_module(step.filename, step.name_expressions, step.options)
    assert info.value.filename == step.filename
    assert f"kernels/{step.filename}:12: error: broken on purpose" in str(info.value)
