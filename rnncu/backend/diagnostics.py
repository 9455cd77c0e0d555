"""``rnncu info``: what this installation can do, gathered without side effects.

:func:`collect_info` never raises for a missing GPU or CuPy: each part reports its reason
instead. Kernel files are compiled for the current device's architecture when a device
answers, else with NVRTC for sm_90 (no device needed), and each kernel's registers and
spills (from ptxas) are listed.
"""

from __future__ import annotations

import platform
from typing import Any

FALLBACK_ARCH = "sm_90"


def collect_info(compile_kernels: bool = True) -> dict[str, Any]:
    """A JSON-serialisable dict: versions, backends, device, whether the NumPy backend's
    compiled host loops are in use, and per kernel file whether every name expression
    compiles (with registers and spill bytes per kernel)."""
    import numpy

    import rnncu
    from rnncu.backend import available_backends, get_backend

    info: dict[str, Any] = {
        "rnncu": getattr(rnncu, "__version__", "unknown"),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }
    try:
        info["selected_backend"] = get_backend().name
    except Exception as exc:  # a bad RNNCU_BACKEND is worth reporting, not crashing on
        info["selected_backend"] = f"error: {exc}"
    reason = available_backends()["cupy"]
    info["cupy_available"] = reason is None
    info["cupy_reason"] = reason
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except Exception as exc:
        info["cupy"] = f"not importable: {type(exc).__name__}"
    info["nvrtc"] = _nvrtc_release()
    arch = FALLBACK_ARCH
    if reason is None:
        try:
            info["device"] = get_backend("cupy").describe()
            cc = info["device"]["compute_capability"].replace(".", "")
            arch = f"sm_{cc}"
        except Exception as exc:
            info["device"] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        info["device"] = None
    from rnncu.backend import host_kernels

    info["host_kernels"] = host_kernels.status()
    info["blas"] = blas_info()
    if compile_kernels:
        info["kernels"] = _compile_all(arch)
    return info


def _nvrtc_release() -> str:
    """The NVRTC release CuPy compiles with ("13.0"), or why there is none. Its kernels'
    register use differs between releases: 13.0, which PyTorch's CUDA 13 wheels pin, spilled
    a step tile that 13.5 did not."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        return ".".join(map(str, nvrtc.getVersion()))
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"


def _compile_all(arch: str) -> dict[str, Any]:
    nvrtc_version = _nvrtc_release()
    if nvrtc_version.startswith("unavailable: "):
        return {"error": f"NVRTC {nvrtc_version}"}
    from rnncu.backend import kernel_loader

    result: dict[str, Any] = {"arch": arch, "nvrtc": nvrtc_version, "files": {}}
    try:
        files = kernel_loader.all_name_expressions()
    except Exception as exc:
        result["error"] = f"kernel registry: {type(exc).__name__}: {exc}"
        return result
    for filename, names in files.items():
        try:
            compiled = kernel_loader.nvrtc_compile(filename, names, arch=arch)
        except Exception as exc:
            result["files"][filename] = {"ok": False, "error": str(exc)}
            continue
        result["files"][filename] = {
            "ok": True,
            "kernels": {
                name: {
                    "registers": compiled.registers.get(name),
                    "spill_stores": compiled.spills.get(name, (None, None))[0],
                    "spill_loads": compiled.spills.get(name, (None, None))[1],
                }
                for name in names
            },
        }
    return result


#: OpenBLAS's names of its kernel sets that use AVX-512
OPENBLAS_AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def blas_info() -> dict[str, Any]:
    """The BLAS libraries loaded in this process as threadpoolctl reports them (NumPy's does
    the NumPy backend's large products; torch or SciPy may bring others): ``libraries``
    (API, version, file name, kernel set, threads), ``coretype`` (``OPENBLAS_CORETYPE`` where
    the environment forces OpenBLAS's choice), and a ``hint`` where an OpenBLAS chose kernels
    without AVX-512 on a CPU with it (an OpenBLAS older than the CPU). On a 2-core AMD Zen 5
    (2026-11-30), OpenBLAS 0.3.31's AVX-512 kernels ran a 512 x 6400 x 512 float32 product in
    7.7 ms, its Haswell (AVX2) ones, forced there by ``OPENBLAS_CORETYPE=Haswell``, in 13.9."""
    import os

    import numpy

    try:
        import threadpoolctl
    except ImportError:
        return {"libraries": [], "hint": None, "error": "threadpoolctl is not installed"}
    numpy.ones(1)  # NumPy's BLAS is loaded with NumPy; nothing to call
    libraries = [
        {
            "api": pool.get("internal_api"),
            "version": pool.get("version"),
            "file": os.path.basename(str(pool.get("filepath", ""))),
            "kernels": pool.get("architecture"),
            "threads": pool.get("num_threads"),
        }
        for pool in threadpoolctl.threadpool_info()
        if pool.get("user_api") == "blas"
    ]
    from rnncu.backend.host_kernels import cpu_features

    hint = None
    without_avx512 = [
        lib
        for lib in libraries
        if lib["api"] == "openblas"
        and isinstance(lib["kernels"], str)
        and lib["kernels"].lower() not in OPENBLAS_AVX512_CORES
    ]
    coretype = os.environ.get("OPENBLAS_CORETYPE") or None
    if cpu_features().get("AVX512_SKX") and without_avx512 and coretype is None:
        lib = without_avx512[0]
        hint = (
            f"this CPU has AVX-512 but {lib['file'] or 'OpenBLAS'} runs OpenBLAS's "
            f"{lib['kernels']} kernels: OPENBLAS_CORETYPE=SkylakeX, set before Python starts, "
            "selects its AVX-512 ones in a DYNAMIC_ARCH build (NumPy's wheels are)"
        )
    return {"libraries": libraries, "coretype": coretype, "hint": hint}


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`collect_info`'s dict."""
    lines = [
        f"rnncu {info.get('rnncu')}  (python {info.get('python')}, numpy {info.get('numpy')})",
        f"selected backend: {info.get('selected_backend')}",
        f"numpy backend's float32 recurrence (kernels/host_rnn.c): {info.get('host_kernels')}",
        f"BLAS libraries: {_format_blas(info.get('blas'))}",
        f"cupy: {info.get('cupy')}"
        + ("" if info.get("cupy_available") else f"  (unavailable: {info.get('cupy_reason')})"),
        f"NVRTC: {info.get('nvrtc')}",
    ]
    device = info.get("device")
    if isinstance(device, dict) and "error" not in device:
        lines.append(
            f"device: {device.get('device')} (cc {device.get('compute_capability')}, "
            f"{device.get('multiprocessors')} SMs, {device.get('memory_gib')} GiB); "
            f"CUDA runtime {device.get('cuda_runtime')}, driver {device.get('cuda_driver')}; "
            f"recurrence {device.get('recurrence')}"
        )
    elif isinstance(device, dict):
        lines.append(f"device: {device['error']}")
    else:
        lines.append("device: none")
    kernels = info.get("kernels")
    if kernels is not None:
        if "error" in kernels and "files" not in kernels:
            lines.append(f"kernels: {kernels['error']}")
        else:
            lines.append(f"kernels (NVRTC {kernels.get('nvrtc')}, {kernels.get('arch')}):")
            for filename, entry in kernels.get("files", {}).items():
                if not entry["ok"]:
                    lines.append(
                        f"  {filename}: FAILED\n    " + entry["error"].replace("\n", "\n    ")
                    )
                    continue
                lines.append(f"  {filename}: ok, {len(entry['kernels'])} kernels")
                for name, k in entry["kernels"].items():
                    spill = k["spill_stores"] or k["spill_loads"]
                    lines.append(
                        f"    {name:<44} {k['registers']!s:>4} regs"
                        + (f"  SPILLS {k['spill_stores']}/{k['spill_loads']} B" if spill else "")
                    )
            if "error" in kernels:
                lines.append(f"  {kernels['error']}")
    return "\n".join(lines)


def _format_blas(blas: Any) -> str:
    if not isinstance(blas, dict):
        return "not reported"
    if blas.get("error"):
        return f"not reported ({blas['error']})"
    libraries = blas.get("libraries") or []
    text = (
        "; ".join(
            f"{lib['api']} {lib['version']}"
            + (f" ({lib['file']})" if lib.get("file") else "")
            + (f", {lib['kernels']} kernels" if lib.get("kernels") else "")
            + f", {lib['threads']} threads"
            for lib in libraries
        )
        or "none found"
    )
    if blas.get("coretype"):
        text += f"; OPENBLAS_CORETYPE={blas['coretype']} is set in the environment"
    return text + (f". {blas['hint']}" if blas.get("hint") else "")
