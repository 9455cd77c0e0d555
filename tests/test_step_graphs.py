"""``StepLoopGraphs``, the CUDA-graph cache of the step path, on the stand-in ``cupy`` of
tests/emulated_cupy.py, whose streams record launches while capturing as CUDA does. A test
kernel logs its launches, so each test sees exactly which launches ran, in which order, and
whether from a graph. The backend end to end, graphs against launches on the same inputs,
is in tests/test_cupy_backend.py (gpu-marked: a device, or ``--emulated-device``)."""

from __future__ import annotations

import functools
import warnings

import pytest
from emulated_cupy import CUDADriverError, CUDARuntimeError, cupy_backend, make_module

GRID, BLOCK, SHARED = (3, 2, 1), (128, 1, 1), 4096


class LoggingKernel:
    """A ``RawKernel`` stand-in: each launch appends its arguments to :attr:`log` when it
    runs (at once, or when a graph that recorded it is launched)."""

    def __init__(self, cupy) -> None:
        self.streams = cupy.cuda.streams
        self.log: list[tuple] = []
        self.fail_with: Exception | None = None

    def __call__(self, grid, block, args, *, shared_mem=0) -> None:
        if self.fail_with is not None and self.streams.current().is_capturing():
            raise self.fail_with
        assert (tuple(grid), tuple(block), shared_mem) == (GRID, BLOCK, SHARED)
        self.streams.submit(functools.partial(self.log.append, tuple(args)))


@pytest.fixture
def cupy(monkeypatch):
    module = make_module()
    monkeypatch.setattr(cupy_backend, "cupy", module)
    return module


def _loop(kernel, plan) -> cupy_backend.StepLoop:
    return cupy_backend.StepLoop(kernel, GRID, BLOCK, SHARED, plan)


def _plan(tag: str, steps: int = 4):
    """A launch plan and a counter of how often it was built."""
    built = []

    def plan() -> list[tuple]:
        built.append(tag)
        return [(tag, t) for t in range(steps)]

    return plan, built


def test_captures_on_second_sighting_then_replays_without_planning(cupy):
    graphs = cupy_backend.StepLoopGraphs()
    kernel = LoggingKernel(cupy)
    plan, built = _plan("a")
    for _ in range(4):
        graphs.run(("a",), _loop(kernel, plan))
    expected = [("a", t) for t in range(4)]
    assert kernel.log == expected * 4, "every call ran every launch, in order"
    assert graphs.counts == {"launched": 1, "captured": 1, "replayed": 2, "dropped": 0}
    assert built == ["a", "a"], "a replay does not build the plan"
    assert len(graphs) == 1
    assert cupy.cuda.get_current_stream() is cupy.cuda.streams.null
    assert not any(s.is_capturing() for s in graphs._streams.values())
    assert not graphs._capture_lock.locked()


def test_capture_at_one_captures_at_once(cupy):
    graphs = cupy_backend.StepLoopGraphs(capture_at=1)
    kernel = LoggingKernel(cupy)
    plan, _ = _plan("a", steps=2)
    graphs.run(("a",), _loop(kernel, plan))
    graphs.run(("a",), _loop(kernel, plan))
    assert graphs.counts == {"launched": 0, "captured": 1, "replayed": 1, "dropped": 0}
    assert kernel.log == [("a", 0), ("a", 1)] * 2


def test_another_key_never_replays_a_graph(cupy):
    graphs = cupy_backend.StepLoopGraphs(capture_at=1)
    kernel = LoggingKernel(cupy)
    plan_a, _ = _plan("a")
    plan_b, _ = _plan("b", steps=3)
    graphs.run(("a", 1), _loop(kernel, plan_a))
    kernel.log.clear()
    graphs.run(("a", 2), _loop(kernel, plan_b))
    assert kernel.log == [("b", t) for t in range(3)]
    assert graphs.counts["replayed"] == 0 and len(graphs) == 2


def test_least_recently_used_graph_goes_first(cupy):
    graphs = cupy_backend.StepLoopGraphs(capacity=2, capture_at=1)
    kernel = LoggingKernel(cupy)
    plans = {tag: _plan(tag) for tag in "abc"}
    for tag in "ab":
        graphs.run((tag,), _loop(kernel, plans[tag][0]))
    graphs.run(("a",), _loop(kernel, plans["a"][0]))  # a is now the newest
    graphs.run(("c",), _loop(kernel, plans["c"][0]))  # so b goes
    assert list(graphs._graphs) == [("a",), ("c",)]
    graphs.run(("b",), _loop(kernel, plans["b"][0]))
    assert plans["b"][1] == ["b", "b"], "b was captured again"
    assert len(graphs) == 2 and graphs.counts["dropped"] == 2


def test_sightings_are_bounded(cupy):
    graphs = cupy_backend.StepLoopGraphs(capacity=2, capture_at=2)
    kernel = LoggingKernel(cupy)
    for index in range(50):
        graphs.run((index,), _loop(kernel, _plan(str(index), steps=1)[0]))
    assert len(graphs._sightings) == 8 and len(graphs) == 0
    assert graphs.counts == {"launched": 50, "captured": 0, "replayed": 0, "dropped": 0}


def test_failed_begin_capture_warns_once_and_launches(cupy, monkeypatch):
    graphs = cupy_backend.StepLoopGraphs(capture_at=1)
    kernel = LoggingKernel(cupy)
    plan, _ = _plan("a", steps=3)

    def refuse(self, mode=None):
        raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: test")

    monkeypatch.setattr(type(cupy.cuda.streams.null), "begin_capture", refuse)
    with pytest.warns(RuntimeWarning, match=r"CUDA graph failed \(CUDARuntimeError: .*test\)") as w:
        graphs.run(("a",), _loop(kernel, plan))
    assert [warning.filename for warning in w] == [__file__]  # the caller's line, not rnncu's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphs.run(("a",), _loop(kernel, plan))
    assert kernel.log == [("a", t) for t in range(3)] * 2
    assert graphs.counts == {"launched": 2, "captured": 0, "replayed": 0, "dropped": 0}
    assert graphs.failure.startswith("CUDARuntimeError") and len(graphs) == 0
    assert not graphs._capture_lock.locked()


def test_a_failed_capture_drops_the_graphs_captured_before(cupy):
    """After a failed capture the loops launch one by one, as the warning says: a graph
    captured earlier is dropped, not replayed."""
    graphs = cupy_backend.StepLoopGraphs(capture_at=1)
    kernel = LoggingKernel(cupy)
    plan_a, built_a = _plan("a", steps=2)
    graphs.run(("a",), _loop(kernel, plan_a))
    assert len(graphs) == 1
    kernel.fail_with = CUDADriverError("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: test")
    with pytest.warns(RuntimeWarning, match="launches its kernels one by one from now on"):
        graphs.run(("b",), _loop(kernel, _plan("b", steps=1)[0]))
    kernel.fail_with = None
    kernel.log.clear()
    graphs.run(("a",), _loop(kernel, plan_a))
    assert kernel.log == [("a", 0), ("a", 1)]
    assert built_a == ["a", "a"], "the loop was planned and launched again"
    assert len(graphs) == 0
    assert graphs.counts == {"launched": 2, "captured": 1, "replayed": 0, "dropped": 0}


def test_failed_launch_in_capture_ends_the_capture(cupy):
    graphs = cupy_backend.StepLoopGraphs(capture_at=1)
    kernel = LoggingKernel(cupy)
    kernel.fail_with = CUDADriverError("CUDA_ERROR_INVALID_VALUE: test")
    plan, _ = _plan("a", steps=2)
    with pytest.warns(RuntimeWarning, match="CUDADriverError"):
        graphs.run(("a",), _loop(kernel, plan))
    assert kernel.log == [("a", 0), ("a", 1)], "the loop ran launch by launch"
    assert not any(s.is_capturing() for s in graphs._streams.values())
    assert not graphs._capture_lock.locked()
    assert cupy.cuda.get_current_stream() is cupy.cuda.streams.null


def test_other_errors_are_not_swallowed(cupy):
    graphs = cupy_backend.StepLoopGraphs(capture_at=1)
    kernel = LoggingKernel(cupy)
    kernel.fail_with = TypeError("a bug, not a CUDA refusal")
    with pytest.raises(TypeError, match="a bug"):
        graphs.run(("a",), _loop(kernel, _plan("a")[0]))
    assert graphs.failure is None
    assert not any(s.is_capturing() for s in graphs._streams.values())
    assert not graphs._capture_lock.locked()


def test_graph_launches_on_the_callers_stream(cupy, monkeypatch):
    graphs = cupy_backend.StepLoopGraphs(capture_at=1)
    kernel = LoggingKernel(cupy)
    seen = []
    user_stream = cupy.cuda.Stream(non_blocking=True)
    original = type(user_stream).end_capture

    def end_capture(self):
        graph = original(self)
        graph_launch = graph.launch
        graph.launch = lambda stream=None: (seen.append(stream), graph_launch(stream))
        return graph

    monkeypatch.setattr(type(user_stream), "end_capture", end_capture)
    with user_stream:
        graphs.run(("a",), _loop(kernel, _plan("a")[0]))
        graphs.run(("a",), _loop(kernel, _plan("a")[0]))
    assert seen == [user_stream, user_stream]
    assert user_stream not in graphs._streams.values(), "capture used a private stream"


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="capacity and capture_at must be >= 1, got 0 and 2"):
        cupy_backend.StepLoopGraphs(capacity=0)


def test_switch_from_argument_and_environment(monkeypatch):
    monkeypatch.delenv(cupy_backend.STEP_GRAPHS_ENV, raising=False)
    backend = cupy_backend.CupyBackend()
    assert backend.step_graphs is None and not backend.step_graphs_enabled()
    monkeypatch.setenv(cupy_backend.STEP_GRAPHS_ENV, "On")
    assert backend.step_graphs_enabled()
    backend.step_graphs = "off"
    assert backend.step_graphs is False and not backend.step_graphs_enabled()
    assert cupy_backend.CupyBackend(step_graphs=True).step_graphs_enabled()
    monkeypatch.setenv(cupy_backend.STEP_GRAPHS_ENV, "sometimes")
    with pytest.raises(ValueError, match=r"RNNCU_STEP_GRAPHS: expected 'on' or 'off'.*'sometimes'"):
        cupy_backend.CupyBackend().step_graphs_enabled()
    with pytest.raises(ValueError, match=r"step_graphs: expected 'on' or 'off'.*2"):
        cupy_backend.CupyBackend(step_graphs=2)
