"""NaN-poisoned device memory for the GPU tests on a real device.

Every allocation CuPy makes while :func:`poisoned_allocations` is active comes from the
default pool filled with 0xFF bytes, a NaN in float32 and float64 alike, so an output element
that a kernel forgot to write fails the comparison with the reference. Poisoning the
allocator, rather than freeing NaN blocks ahead of a call, also holds when the test's own
input copies are made after the poisoning: CuPy's pool hands a freed block to the next
request of a fitting size, whichever array that is. (The emulated device's ``cupy.empty``
already returns NaN.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

POISON_BYTE = 0xFF


def poisoning_allocator(cupy: Any, pool: Any) -> Callable[[int], Any]:
    """A CuPy allocator: ``pool.malloc(size)``, then the block filled with
    :data:`POISON_BYTE` on the current stream (ordered after the block's earlier users,
    which CuPy's per-stream pool keeps on that stream). During a stream capture nothing is
    filled: the memset would become a node of the graph and wipe the buffer at every replay."""

    def malloc(size: int) -> Any:
        memptr = pool.malloc(size)
        stream = cupy.cuda.get_current_stream()
        if size and not stream.is_capturing():
            cupy.cuda.runtime.memsetAsync(memptr.ptr, POISON_BYTE, size, stream.ptr)
        return memptr

    return malloc


@contextlib.contextmanager
def poisoned_allocations(cupy: Any) -> Iterator[None]:
    """Install :func:`poisoning_allocator` over the default pool for the ``with`` block."""
    pool = cupy.get_default_memory_pool()
    cupy.cuda.set_allocator(poisoning_allocator(cupy, pool))
    try:
        yield
    finally:
        cupy.cuda.set_allocator(pool.malloc)
