"""The GPU tests' NaN-poisoning allocator (tests/device_memory.py), with a fake CuPy: it
runs only on a real device, where a mistake in it would cost the one device run."""

from __future__ import annotations

import types

import numpy as np
from device_memory import POISON_BYTE, poisoned_allocations, poisoning_allocator


class FakeStream:
    def __init__(self, ptr: int, capturing: bool = False) -> None:
        self.ptr = ptr
        self.capturing = capturing

    def is_capturing(self) -> bool:
        return self.capturing


def fake_cupy(stream: FakeStream) -> tuple[types.SimpleNamespace, list, list]:
    memsets: list[tuple[int, int, int, int]] = []
    allocators: list = []
    pool = types.SimpleNamespace(malloc=lambda size: types.SimpleNamespace(ptr=4096 + size))
    cuda = types.SimpleNamespace(
        get_current_stream=lambda: stream,
        runtime=types.SimpleNamespace(memsetAsync=lambda *args: memsets.append(args)),
        set_allocator=allocators.append,
    )
    return (
        types.SimpleNamespace(cuda=cuda, get_default_memory_pool=lambda: pool),
        memsets,
        allocators,
    )


def test_every_allocation_is_filled_with_nan_bytes_on_the_current_stream() -> None:
    cupy, memsets, _ = fake_cupy(FakeStream(ptr=77))
    malloc = poisoning_allocator(cupy, cupy.get_default_memory_pool())
    assert malloc(24).ptr == 4096 + 24
    assert malloc(0).ptr == 4096
    assert memsets == [(4096 + 24, POISON_BYTE, 24, 77)]  # nothing to fill for 0 bytes
    # the byte makes a NaN in both dtypes the kernels take
    for dtype in (np.float32, np.float64):
        assert np.isnan(np.full(8, POISON_BYTE, np.uint8).view(dtype)).all()


def test_nothing_is_filled_during_a_stream_capture() -> None:
    # a memset captured into a CUDA graph would wipe the buffer at every replay
    cupy, memsets, _ = fake_cupy(FakeStream(ptr=5, capturing=True))
    malloc = poisoning_allocator(cupy, cupy.get_default_memory_pool())
    malloc(64)
    assert memsets == []


def test_the_pool_allocator_is_restored_even_after_an_error() -> None:
    cupy, memsets, allocators = fake_cupy(FakeStream(ptr=1))
    pool = cupy.get_default_memory_pool()
    try:
        with poisoned_allocations(cupy):
            allocators[0](16)
            raise KeyError("inside the test")
    except KeyError:
        pass
    assert len(memsets) == 1 and allocators[-1] is pool.malloc


def test_the_fake_cupy_offers_only_what_the_installed_cupy_has() -> None:
    """The allocator runs only on a device, against the fake above everywhere else: each name
    the fake offers is checked in the installed CuPy (memsetAsync with its four arguments in
    the order the allocator passes them), so a misspelt call cannot wait for the device run."""
    import pytest

    cupy = pytest.importorskip("cupy")
    if cupy.__version__ == "emulated":
        pytest.skip("CuPy is not installed")
    fake, _, _ = fake_cupy(FakeStream(ptr=1))
    assert callable(cupy.get_default_memory_pool) and callable(cupy.cuda.set_allocator)
    assert callable(cupy.cuda.get_current_stream)
    for name in vars(fake.cuda):
        assert hasattr(cupy.cuda, name), name
    for name in vars(fake.cuda.runtime):
        assert hasattr(cupy.cuda.runtime, name), name
    assert hasattr(cupy.cuda.MemoryPool, "malloc") and hasattr(cupy.cuda.MemoryPointer, "ptr")
    null = cupy.cuda.Stream.null  # an instance without a device: ptr is set per instance
    assert isinstance(null.ptr, int) and callable(null.is_capturing)
    # Cython's signature line: "memsetAsync(intptr_t ptr, int value, size_t size, ...)"
    line = cupy.cuda.runtime.memsetAsync.__doc__.splitlines()[0]
    parameters = [part.split()[-1] for part in line[line.index("(") + 1 : -1].split(",")]
    assert parameters == ["ptr", "value", "size", "stream"], line
