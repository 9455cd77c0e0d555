"""One NVRTC compile per (kernel file, architecture) per test session: the compile tests of
tests/test_kernels_compile.py and tests/test_persistent_dispatch.py read the same result (the
cluster file alone takes over a minute per architecture on 2 cores)."""

from __future__ import annotations

import functools

from rnncu.backend import kernel_loader


@functools.cache
def compile_file(filename: str, arch: str) -> kernel_loader.CompileResult:
    """Every registered name expression of ``kernels/<filename>``, compiled for ``arch``."""
    names = kernel_loader.all_name_expressions()[filename]
    return kernel_loader.nvrtc_compile(filename, names, arch=arch)
