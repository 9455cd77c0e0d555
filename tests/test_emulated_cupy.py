"""The stand-in ``cupy`` of tests/emulated_cupy.py is as strict as CUDA and CuPy are, and
answers as the emulated H200 would: each refusal and each figure checked on its own. The
backend's suites on the stand-in (tests/test_emulated_device.py, tests/test_step_graphs.py)
run correct code, which passes just as well on a stand-in grown lenient; that one would then
hide a backend that reads uninitialised memory, captures on the legacy stream or launches
past a kernel's shared-memory limit. No GPU needed."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
from device_limits import H200
from emulated_cupy import (
    CUDARuntimeError,
    EmulatedDevice,
    EmulatedKernel,
    _estimated_occupancy,
    make_module,
)
from kernel_emulation import KernelEmulation

from rnncu.backend import kernel_loader, persistent
from rnncu.backend.persistent import DeviceLimits


@pytest.fixture
def cupy() -> types.ModuleType:
    return make_module()


@pytest.fixture
def device(kernel_emulation: KernelEmulation, monkeypatch: pytest.MonkeyPatch):
    with EmulatedDevice(kernel_emulation).installed(monkeypatch) as installed:
        yield installed


# ----------------------------------------------------------------------------- memory
def test_new_device_memory_is_nan_bytes(cupy) -> None:
    """``empty`` and ``empty_like`` give all bytes 0xFF (NaN in float32 and float64), as the
    device suite's poisoning allocator does: an element a kernel should write but does not
    shows as NaN, where zeros could pass for a result."""
    like = cupy.asarray(np.zeros((2, 3), np.float64))
    for array in (
        cupy.empty((4, 5), np.float32),
        cupy.empty(7, np.float64),
        cupy.empty_like(like),
        cupy.empty_like(like, dtype=np.float32, shape=(6,)),
    ):
        assert type(array).__module__ == "cupy" and array.size > 0
        assert (array.view(np.ndarray).view(np.uint8) == 0xFF).all()


def test_host_and_device_memory_are_separate(cupy) -> None:
    """``asarray`` uploads a copy and ``get`` / ``asnumpy`` download one, as on a device: a
    stand-in that shared the memory would let a kernel's write reach the caller's host
    array, or a host copy change with the device buffer it came from."""
    host = np.arange(4.0)
    on_device = cupy.asarray(host)
    on_device[...] = -1.0
    np.testing.assert_array_equal(host, np.arange(4.0))
    copies = [on_device.get(), cupy.asnumpy(on_device)]
    on_device[...] = 7.0
    for copy in copies:
        assert type(copy) is np.ndarray
        np.testing.assert_array_equal(copy, -1.0)


def test_array_copies_as_cupy_14_does(cupy) -> None:
    """``cupy.array``: copy=True copies a device array; None hands it back where no copy is
    needed; False never copies and refuses where one would be needed (NumPy 2's meaning,
    taken by CuPy 14: a stand-in copying there would pass code that fails on a GPU)."""
    on_device = cupy.asarray(np.arange(6.0).reshape(2, 3))
    copied = cupy.array(on_device, dtype=np.float64, copy=True)
    copied[...] = 0
    assert on_device[0, 1] == 1.0
    assert cupy.array(on_device, copy=None) is on_device
    assert cupy.array(on_device, copy=False) is on_device
    assert cupy.array(on_device, copy=False, ndmin=3).shape == (1, 2, 3)
    for needs_a_copy in (
        lambda: cupy.array(np.ones(3), copy=False),  # host to device
        lambda: cupy.array(on_device, dtype=np.float32, copy=False),
        lambda: cupy.array(on_device.T, order="C", copy=False),
    ):
        with pytest.raises(ValueError, match="unable to avoid copy"):
            needs_a_copy()
    assert cupy.array(on_device, dtype=np.float32, copy=None).dtype == np.float32
    with pytest.raises(NotImplementedError, match="subok"):
        cupy.array(on_device, np.float64, True, "K", 2)  # CuPy's fifth is subok, not ndmin


def test_host_arrays_do_not_mix_with_device_arrays(cupy) -> None:
    """CuPy raises TypeError for a NumPy array in a device operation; the stand-in (a NumPy
    subclass underneath) must too, or host data leaking into device code would pass here."""
    on_device = cupy.asarray(np.ones(3))
    for operation in (
        lambda: on_device + np.ones(3),
        lambda: cupy.add(on_device, np.ones(3)),
        lambda: cupy.concatenate([on_device, np.ones(3)]),
    ):
        with pytest.raises(TypeError, match=r"numpy.ndarray mixed with device arrays"):
            operation()


# ------------------------------------------------------------------ streams, graphs, events
def test_streams_refuse_what_cuda_refuses(cupy) -> None:
    """The legacy stream cannot capture; a capture cannot begin twice, end without
    beginning, synchronise, or have a graph launched into it. A backend doing any of these
    fails on a device: it must fail here too."""
    null = cupy.cuda.get_current_stream()
    assert null is cupy.cuda.streams.null
    with pytest.raises(CUDARuntimeError, match=r"the legacy stream"):
        null.begin_capture()
    stream = cupy.cuda.Stream(non_blocking=True)
    with pytest.raises(CUDARuntimeError, match=r"the stream is not capturing"):
        stream.end_capture()
    stream.begin_capture()
    with pytest.raises(CUDARuntimeError, match=r"the stream is capturing already"):
        stream.begin_capture()
    with pytest.raises(CUDARuntimeError, match=r"synchronize in capture"):
        stream.synchronize()
    graph = stream.end_capture()
    stream.begin_capture()
    with pytest.raises(CUDARuntimeError, match=r"launching a graph into a capture"):
        graph.launch(stream=stream)
    stream.end_capture()
    assert not stream.is_capturing()


def test_a_graph_records_the_launches_of_its_capture_and_replays_them(cupy) -> None:
    """Work submitted while the current stream captures is recorded, not run; each launch
    of the graph runs it again, in order; outside a capture, work runs at once."""
    log: list[str] = []
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        assert cupy.cuda.get_current_stream() is stream
        stream.begin_capture()
        cupy.cuda.streams.submit(lambda: log.append("a"))
        cupy.cuda.streams.submit(lambda: log.append("b"))
        graph = stream.end_capture()
    assert cupy.cuda.get_current_stream() is cupy.cuda.streams.null
    assert log == []
    graph.launch()
    graph.launch(stream=stream)
    assert log == ["a", "b", "a", "b"]
    cupy.cuda.streams.submit(lambda: log.append("c"))
    assert log[-1] == "c"


def test_events_must_be_recorded_before_they_are_read(cupy) -> None:
    """The elapsed time of an event never recorded is an error on a device
    (cudaErrorInvalidResourceHandle); so is, here, a synchronize on one, which CUDA lets
    return at once: a benchmark that forgot a ``record`` would time nothing."""
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    with pytest.raises(RuntimeError, match=r"synchronize\(\) on an event never recorded"):
        stop.synchronize()
    with pytest.raises(RuntimeError, match=r"get_elapsed_time\(\) of an event never recorded"):
        cupy.cuda.get_elapsed_time(start, stop)
    start.record()
    with pytest.raises(RuntimeError, match=r"get_elapsed_time\(\) of an event never recorded"):
        cupy.cuda.get_elapsed_time(start, stop)
    stop.record()
    stop.synchronize()
    assert isinstance(cupy.cuda.get_elapsed_time(start, stop), float)


# ---------------------------------------------------------------------------- launches
def test_a_kernel_launch_is_refused_where_cupy_refuses_it(device) -> None:
    """Dynamic shared memory beyond the kernel's limit (48 KB until the backend raises it),
    a host array as an argument, a grid or block the emulation cannot run: refused before
    anything runs."""
    cp = device.module
    name = kernel_loader.matvec_name_expression("forward", np.dtype(np.float32), "tanh", 8)
    kernel = device.get_kernel(kernel_loader.MATVEC_KERNEL_FILE, name)
    assert kernel.max_dynamic_shared_size_bytes == 48 * 1024
    args = (cp.empty(1, np.float32),)
    with pytest.raises(RuntimeError, match=r"49156 bytes of dynamic shared memory requested "
                       r"but the kernel's limit is 49152"):  # fmt: skip
        kernel((1, 1, 1), (32, 1, 1), args, shared_mem=48 * 1024 + 4)
    with pytest.raises(TypeError, match=r"argument 1 is a host numpy.ndarray"):
        kernel((1, 1, 1), (32, 1, 1), (*args, np.zeros(1, np.float32)))
    for grid, block in (((1, 1, 2), (32, 1, 1)), ((1, 1, 1), (32, 2, 1))):
        with pytest.raises(ValueError, match=r"the emulation runs grids \(x, y, 1\)"):
            kernel(grid, block, args)
    assert kernel.launches == 0


def test_a_kernel_runs_cooperatively_only_if_its_module_is_cooperative(
    device, rng, monkeypatch
) -> None:
    """The grid kernels' module is registered cooperative, which is what lets their
    ``grid.sync()`` run; a registration that lost the flag must fail as it would on a
    device, not run cooperatively all the same."""
    cp = device.module
    steps, batch, hidden = 2, 3, 129
    plan = persistent.plan_forward(steps, batch, hidden, np.float32, H200, ("batch", "grid"))
    assert plan.variant == "grid" and plan.cooperative

    def launch(kernel: EmulatedKernel) -> None:
        states = cp.asarray(rng.standard_normal((steps, batch, hidden)).astype(np.float32))
        w_hh = cp.asarray(rng.standard_normal((hidden, hidden)).astype(np.float32) / 16)
        h0 = cp.asarray(rng.standard_normal((batch, hidden)).astype(np.float32))
        args = persistent.forward_args(plan, states, w_hh, h0, None, "tanh", False,
                                       cp.asarray(np.zeros(1, np.int32)))  # fmt: skip
        kernel((*plan.grid, 1), (plan.threads, 1, 1), args, shared_mem=plan.shared_mem)

    cooperative = device.get_kernel(plan.filename, plan.name_expression)
    cooperative.max_dynamic_shared_size_bytes = plan.shared_mem  # as the backend raises it
    launch(cooperative)
    assert cooperative.cooperative and cooperative.launches == 1
    spec = kernel_loader.module_spec(plan.filename, plan.name_expression)
    monkeypatch.setattr(kernel_loader, "module_spec",
                        lambda *_: dataclasses.replace(spec, cooperative=False))  # fmt: skip
    plain = EmulatedKernel(device.emulation, plan.filename, plan.name_expression,
                           cp.cuda.streams, device)  # fmt: skip
    plain.max_dynamic_shared_size_bytes = plan.shared_mem
    with pytest.raises(RuntimeError, match=r"grid.sync\(\) in a launch that is not cooperative"):
        launch(plain)


# -------------------------------------------------------------------- the emulated H200
def test_the_device_reports_the_h200_limits(device) -> None:
    """What ``DeviceLimits.from_device`` reads through the runtime's attributes is the H200
    the planner's tests plan for (tests/device_limits.py)."""
    assert DeviceLimits.from_device(0) == H200


def test_occupancy_is_estimated_from_threads_shared_memory_and_its_reserve() -> None:
    """Blocks per SM as the occupancy API gives them: 2048 threads, 228 KB of shared memory
    with 1 KB reserved per block, and at most 32 blocks."""
    assert _estimated_occupancy(None, 1024, 0) == 2
    assert _estimated_occupancy(None, 64, 0) == 32
    assert _estimated_occupancy(None, 64, 57 * 1024) == 3  # 228 // (57 + 1), not 228 // 57
    assert _estimated_occupancy(None, 64, 228 * 1024) == 0


def test_clusters_are_estimated_within_gpcs_of_16_sms(kernel_emulation) -> None:
    """A cluster's blocks share one GPC: 8 GPCs of 16 SMs on the 132 of an H200, so 3 blocks
    per SM give 8 * (48 // 8) = 48 clusters of 8, not 132 * 3 // 8 = 49 (the 4 SMs outside
    a whole GPC take no cluster)."""
    emulated = EmulatedDevice(kernel_emulation)
    plan = types.SimpleNamespace(threads=64, shared_mem=57 * 1024, cluster=8)
    assert emulated._cluster_occupancy(None, plan) == 48
    emulated.max_active_clusters = lambda plan: 5  # a test's own answer wins
    assert emulated._cluster_occupancy(None, plan) == 5
