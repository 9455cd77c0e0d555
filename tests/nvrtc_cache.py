"""One NVRTC compile per (kernel file, architecture) per test session: the compile tests of
tests/test_kernels_compile.py and tests/test_persistent_dispatch.py read the same result (the
cluster file alone takes over a minute per architecture on 2 cores). Under xdist the cache
is a worker's: the tests that read one compile carry :func:`one_worker`'s mark."""

from __future__ import annotations

import functools

import pytest

from rnncu.backend import kernel_loader


def one_worker(filename: str, arch: str) -> pytest.MarkDecorator:
    """The mark that sends every test reading ``compile_file(filename, arch)`` to the same
    xdist worker under ``--dist loadgroup`` (the README's test command), so that the file is
    compiled once, not once a worker."""
    return pytest.mark.xdist_group(f"nvrtc {filename} {arch}")


@functools.cache
def compile_file(filename: str, arch: str) -> kernel_loader.CompileResult:
    """Every registered name expression of ``kernels/<filename>``, compiled for ``arch``."""
    names = kernel_loader.all_name_expressions()[filename]
    return kernel_loader.nvrtc_compile(filename, names, arch=arch)
