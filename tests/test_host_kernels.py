"""The NumPy backend's compiled float32 recurrence (``kernels/host_rnn.c``) and its loader.

tanh is checked against float64 ``np.tanh`` in units in the last place of the float32
result; both float32 paths (the whole compiled recurrence, the step loop with compiled
element-wise loops), forward and backward, against the backend's float64 NumPy loop; the
whole recurrence with outputs poisoned and for identical bits whatever the instruction set;
the step loop's gradient loop against NumPy's operations bit for bit. The
loader's failure modes (no compiler, a compile error, switched off) must leave the backend on
NumPy's functions with a reason ``rnncu info`` can show.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from rnn_reference import assert_same_nans, with_nans

from rnncu.backend import host_kernels, kernel_loader, numpy_backend
from rnncu.backend.numpy_backend import NumpyBackend, _host_tanh, _whole_recurrence


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """A loader that has not tried yet, caching under tmp_path; restored afterwards."""
    monkeypatch.setenv("RNNCU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNCU_HOST_KERNELS", raising=False)
    host_kernels._reset_for_tests()
    yield tmp_path
    host_kernels._reset_for_tests()


@pytest.fixture(scope="module")
def kernels() -> host_kernels.HostKernels:
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine: the NumPy backend runs np.tanh instead")
    host_kernels._reset_for_tests()
    loaded = host_kernels.load()
    assert loaded is not None, f"a C compiler is present, yet: {host_kernels.status()}"
    return loaded


def _tanh(kernels: host_kernels.HostKernels, x: np.ndarray) -> np.ndarray:
    y = np.ascontiguousarray(x, dtype=np.float32).copy()
    kernels.tanh_f32(y.ctypes.data, y.size)
    return y


def _ulp_error(actual: np.ndarray, x: np.ndarray) -> np.ndarray:
    exact = np.tanh(x.astype(np.float64))
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def test_tanh_is_within_two_ulp(kernels, rng: np.random.Generator) -> None:
    x = np.concatenate(
        [
            rng.standard_normal(1_000_000) * 3,
            rng.uniform(-12, 12, 1_000_000),
            np.linspace(0.9, 1.1, 200_001),  # where the two formulas meet
            -np.linspace(0.4, 0.6, 200_001),
            np.sign(rng.standard_normal(200_000)) * 10.0 ** rng.uniform(-44, 0, 200_000),
        ]
    ).astype(np.float32)
    errors = _ulp_error(_tanh(kernels, x), x)
    worst = int(np.argmax(errors))
    assert errors[worst] <= 2.0, f"tanh({x[worst]!r}) is {errors[worst]:.2f} ulp off"
    assert np.median(errors) < 0.6


def test_tanh_special_values(kernels) -> None:
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-30, 3e38, -3e38, 9.0])
    y = _tanh(kernels, x)
    assert np.array_equal(np.signbit(y[:2]), [False, True]), "tanh keeps the sign of zero"
    assert y[2] == 1.0 and y[3] == -1.0 and np.isnan(y[4])
    assert y[5] == np.float32(1e-45) and y[6] == -np.float32(1e-45)  # denormals: tanh(x) = x
    assert y[7] == np.float32(1e-30)
    assert y[8] == 1.0 and y[9] == -1.0
    assert y[10] == np.float32(np.tanh(9.0))  # rounds to just below 1, as it should


def test_add_tanh_is_tanh_of_the_float32_sum(kernels, rng: np.random.Generator) -> None:
    h = rng.standard_normal((33, 257)).astype(np.float32)
    r = rng.standard_normal((33, 257)).astype(np.float32)
    out = h.copy()
    kernels.add_tanh_f32(out.ctypes.data, r.ctypes.data, out.size)
    np.testing.assert_array_equal(out, _tanh(kernels, h + r))
    assert _ulp_error(out, h + r).max() <= 2.0


@pytest.mark.parametrize("with_output_gradient", [True, False])
def test_tanh_gradient_matches_numpy_bit_for_bit(
    kernels, rng: np.random.Generator, with_output_gradient: bool
) -> None:
    h = np.tanh(rng.standard_normal((7, 33))).astype(np.float32)
    dh = rng.standard_normal((7, 33)).astype(np.float32)
    g = rng.standard_normal((7, 33)).astype(np.float32) if with_output_gradient else None
    dz = np.full_like(h, np.nan)
    kernels.tanh_grad_f32(
        dz.ctypes.data, None if g is None else g.ctypes.data, dh.ctypes.data, h.ctypes.data, h.size
    )
    incoming = dh if g is None else g + dh
    np.testing.assert_array_equal(dz, incoming * (1 - h * h))


def _recurrence(rng: np.random.Generator, steps: int, batch: int, hidden: int, lengths: bool):
    w_hh = (rng.uniform(-1, 1, (hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    z = rng.standard_normal((steps, batch, hidden)).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    grad_states = rng.standard_normal((steps, batch, hidden)).astype(np.float32)
    grad_h_last = rng.standard_normal((batch, hidden)).astype(np.float32)
    lens = rng.integers(0, steps + 1, batch).astype(np.int32) if lengths else None
    return z, w_hh, h0, grad_states, grad_h_last, lens


def _numpy_functions_only(monkeypatch, run):
    """``run()`` with the compiled recurrence out of the way."""
    with monkeypatch.context() as patch:
        patch.setattr(host_kernels, "load", lambda: None)
        return run()


def _run_kernels(kernels, z, w_hh, h0, grad_states, grad_h_last, lens, relu, reverse):
    """Forward then backward straight through the whole compiled recurrence, every output
    poisoned with NaN first: an element the kernels do not write fails the comparison."""
    lengths = None if lens is None else lens.astype(np.int64)
    states = z.copy()
    kernels.recurrence_forward(states, w_hh, h0, lengths, relu, reverse)
    grad_z = np.full_like(z, np.nan)
    grad_h = grad_h_last.copy()
    kernels.recurrence_backward(grad_z, grad_h, grad_states, states, w_hh, lengths, relu, reverse)
    return states, grad_z, grad_h


SHAPES = [(1, 1, 1), (2, 7, 7), (9, 7, 33), (5, 33, 257), (4, 6, 16), (3, 13, 17)]


def _use_path(monkeypatch, path: str) -> None:
    """Make the backend's float32 calls take one path whatever the shape: the whole compiled
    recurrence or the step loop with its compiled element-wise loops."""
    largest = 2**62 if path == "whole" else 0
    limits = dict.fromkeys((0, 256, 512), (largest, largest))
    monkeypatch.setattr(numpy_backend, "_WHOLE_LIMITS", limits)


@pytest.mark.parametrize("path", ["whole", "step"])
@pytest.mark.parametrize(("steps", "batch", "hidden"), SHAPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize(("lengths", "reverse"), [(False, False), (True, False), (True, True)])
def test_float32_paths_against_the_float64_reference(
    kernels, monkeypatch, rng, path, steps, batch, hidden, nonlinearity, lengths, reverse
) -> None:
    """Each float32 path of the backend against its float64 NumPy loop on the same numbers,
    forward and backward, with every kind of gradient input."""
    _use_path(monkeypatch, path)
    backend = NumpyBackend()
    z, w_hh, h0, grad_states, grad_h_last, lens = _recurrence(rng, steps, batch, hidden, lengths)
    if nonlinearity == "relu":
        w_hh *= 0.5  # a relu recurrence at full scale grows by orders of magnitude in 9 steps

    def forward(dtype):
        states = np.full(z.shape, np.nan, dtype)
        states[...] = z
        backend.recurrence_forward(
            states, w_hh.astype(dtype), h0.astype(dtype), lens, nonlinearity, reverse
        )
        return states

    single, double = forward(np.float32), forward(np.float64)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, double, rtol=2e-5, atol=2e-6)
    for g, g_last in ((grad_states, grad_h_last), (None, grad_h_last), (grad_states, None)):

        def backward(states, dtype, g=g, g_last=g_last):
            def cast(a):
                return None if a is None else a.astype(dtype)

            return backend.recurrence_backward(
                states,
                w_hh.astype(dtype),
                h0.astype(dtype),
                cast(g),
                cast(g_last),
                lens,
                nonlinearity,
                reverse,
            )

        grad_z, grad_h0 = backward(single, np.float32)
        # the reference from the float32 states, so that only the backward's rounding differs
        expected_z, expected_h0 = backward(single.astype(np.float64), np.float64)
        assert grad_z.dtype == np.float32 and grad_h0.dtype == np.float32
        np.testing.assert_allclose(grad_z, expected_z, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(grad_h0, expected_h0, rtol=2e-5, atol=2e-6)
    # and NumPy's own functions in float32 agree to float32 rounding
    loop = _numpy_functions_only(monkeypatch, lambda: forward(np.float32))
    np.testing.assert_allclose(single, loop, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    ("steps", "batch", "hidden", "lengths", "reverse"),
    [(1, 1, 1, False, False), (9, 7, 33, True, False), (5, 33, 257, True, True)],
)
def test_step_loop_backward_with_and_without_the_compiled_loops(
    kernels, monkeypatch, rng, steps, batch, hidden, lengths, reverse
) -> None:
    """From the same states, the step loop's backward with the compiled gradient loop is
    NumPy's operations in NumPy's order: the same bits."""
    _use_path(monkeypatch, "step")
    backend = NumpyBackend()
    z, w_hh, h0, grad_states, grad_h_last, lens = _recurrence(rng, steps, batch, hidden, lengths)
    states = z.copy()
    backend.recurrence_forward(states, w_hh, h0, lens, "tanh", reverse)
    for g, g_last in ((grad_states, grad_h_last), (None, grad_h_last), (grad_states, None)):

        def backward(g=g, g_last=g_last):
            return backend.recurrence_backward(states, w_hh, h0, g, g_last, lens, "tanh", reverse)

        grad_z, grad_h0 = backward()
        expected_z, expected_h0 = _numpy_functions_only(monkeypatch, backward)
        np.testing.assert_array_equal(grad_z, expected_z)
        np.testing.assert_array_equal(grad_h0, expected_h0)
        assert np.isfinite(grad_z).all() and np.isfinite(grad_h0).all()


def test_every_micro_kernel_gives_the_same_bits(kernels, fresh_loader, rng) -> None:
    """Built for each instruction set this CPU runs (portable C with fmaf, AVX2 and FMA,
    AVX-512), the recurrence rounds exactly as the default build: the results do not depend
    on the machine. H 40 and 70 leave partial panels of 16 and of 32 units."""
    flags = host_kernels._arch_flags()
    builds = {0: ()}
    if "-mavx2" in flags and "-mfma" in flags:
        builds[256] = ("-mavx2", "-mfma")
    if "-mavx512f" in flags:
        builds[512] = ("-mavx2", "-mfma", "-mavx512f")
    if len(builds) == 1:
        pytest.skip("the default build is the portable one here: nothing to compare")
    source = kernel_loader.kernel_dir() / host_kernels.SOURCE_FILE
    compiler = host_kernels._compiler()
    assert compiler is not None
    inputs = [_recurrence(rng, 5, 13, hidden, lengths=True) for hidden in (40, 70)]
    for bits, extra in builds.items():
        path = host_kernels._build(source, compiler, host_kernels._BASE_FLAGS + extra)
        build = host_kernels.HostKernels(ctypes.CDLL(str(path)), path)
        assert build.vector_bits == bits
        for case, relu in ((case, relu) for case in inputs for relu in (False, True)):
            expected = _run_kernels(kernels, *case, relu, True)
            actual = _run_kernels(build, *case, relu, True)
            for e, a in zip(expected, actual, strict=True):
                np.testing.assert_array_equal(a, e, err_msg=f"{bits}-bit build")


def test_padding_rows_keep_their_state_and_pass_their_gradient(kernels, rng) -> None:
    """Rows past their length: the state stays h0 (forward), dz is 0 and dh passes through
    unchanged, even when the output gradient there is not finite (backward)."""
    z, w_hh, h0, grad_states, grad_h_last, _ = _recurrence(rng, 6, 3, 20, lengths=False)
    lens = np.array([0, 6, 2], np.int32)
    grad_states[2:, 2] = np.inf  # ignored: past row 2's length
    grad_states[:, 0] = np.nan  # row 0 has no step at all
    states, grad_z, grad_h0 = _run_kernels(
        kernels, z, w_hh, h0, grad_states, grad_h_last, lens, False, False
    )
    np.testing.assert_array_equal(states[:, 0], np.broadcast_to(h0[0], (6, 20)))
    np.testing.assert_array_equal(states[2:, 2], np.broadcast_to(states[1, 2], (4, 20)))
    assert (grad_z[:, 0] == 0).all() and (grad_z[2:, 2] == 0).all()
    np.testing.assert_array_equal(grad_h0[0], grad_h_last[0])
    assert np.isfinite(grad_z).all() and np.isfinite(grad_h0).all()


def test_a_failed_call_raises() -> None:
    host_kernels._check_status(0)
    with pytest.raises(MemoryError, match="packed W_hh"):
        host_kernels._check_status(errno.ENOMEM)
    with pytest.raises(RuntimeError, match="the compiled recurrence failed"):
        host_kernels._check_status(errno.EINVAL)


@pytest.mark.parametrize("vector_bits", [0, 256, 512])
def test_which_path_runs(kernels, monkeypatch, vector_bits: int) -> None:
    """Small steps (B * H^2 <= 2^21; with the AVX-512 micro-kernel also up to 2^24 at batches
    of at most 32 rows) run the whole compiled recurrence, larger ones the step loop; float64
    always the step loop."""
    monkeypatch.setattr(host_kernels, "load", lambda: kernels)
    monkeypatch.setattr(kernels, "vector_bits", vector_bits)

    def whole(steps: int, batch: int, hidden: int, dtype: type = np.float32) -> bool:
        states = np.ones((steps, batch, hidden), dtype)
        return _whole_recurrence(states, states[0]) is not None

    assert whole(8, 128, 64)  # rowdigits
    assert whole(784, 32, 128)  # pixel MNIST
    assert whole(8, 32, 128)  # the training recipes' batches
    assert whole(64, 128, 128)  # pixeldigits: 2^21 per step
    assert not whole(8, 128, 64, np.float64)
    assert not whole(64, 129, 128)
    assert not whole(28, 256, 128)  # rowmnist: 2^22
    assert not whole(2, 64, 512)  # medium: 2^24
    wide = vector_bits == 512
    assert whole(40, 16, 1024) == wide  # 2^24 at 16 rows
    assert whole(2, 32, 724) == wide  # just under 2^24 at 32 rows
    assert whole(2, 4, 2048) == wide
    assert not whole(2, 33, 400)  # 2^22.3, past 32 rows
    assert not whole(2, 16, 1025)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_packed_w_hh_that_does_not_fit_falls_back_to_the_step_loop(
    kernels, monkeypatch, rng, direction: str
) -> None:
    """The compiled recurrence packs its own copy of W_hh; where that allocation fails
    (ENOMEM, nothing written) the step loop runs instead of the call failing."""
    z, w_hh, h0, grad_states, grad_h_last, lens = _recurrence(rng, 6, 5, 33, lengths=True)
    backend = NumpyBackend()
    forward_states = z.copy()
    backend.recurrence_forward(forward_states, w_hh, h0, lens, "tanh", False)

    def run() -> tuple[np.ndarray, ...]:
        if direction == "forward":
            states = z.copy()
            backend.recurrence_forward(states, w_hh, h0, lens, "tanh", False)
            return (states,)
        return backend.recurrence_backward(
            forward_states, w_hh, h0, grad_states, grad_h_last, lens, "tanh", False
        )

    _use_path(monkeypatch, "step")
    expected = run()
    _use_path(monkeypatch, "whole")
    calls = []

    def out_of_memory(*args: object) -> int:
        calls.append(args)
        return errno.ENOMEM

    monkeypatch.setattr(host_kernels, "load", lambda: kernels)
    monkeypatch.setattr(kernels, "_" + direction, out_of_memory)
    actual = run()
    assert len(calls) == 1
    for e, a in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(a, e)
    if direction == "forward":
        # nor does the step loop's contiguous W_hh^T: it reads W_hh^T through a view (BLAS
        # may round that product another way)
        contiguous = np.ascontiguousarray

        def no_room_for_copies(array: object, *args: object, **kwargs: object) -> np.ndarray:
            if isinstance(array, np.ndarray) and not array.flags.c_contiguous:
                raise MemoryError("Unable to allocate W_hh^T")
            return contiguous(array, *args, **kwargs)

        monkeypatch.setattr(numpy_backend.np, "ascontiguousarray", no_room_for_copies)
        viewed = run()
        monkeypatch.setattr(numpy_backend.np, "ascontiguousarray", contiguous)
        assert len(calls) == 2
        np.testing.assert_allclose(viewed[0], expected[0], rtol=1e-5, atol=1e-6)


def test_float32_layer_against_float64_reference(kernels, rng: np.random.Generator) -> None:
    """The compiled loops inside the whole layer: float32 forward and backward against the
    float64 reference of the same weights."""
    import rnncu

    single = rnncu.RNN(5, 33, num_layers=2, bidirectional=True, dtype="float32", seed=3)
    double = rnncu.RNN(5, 33, num_layers=2, bidirectional=True, dtype="float64", seed=3)
    double.load_state_dict({k: v.astype(np.float64) for k, v in single.state_dict().items()})
    x = rng.standard_normal((11, 7, 5))
    out32, hn32 = single(x.astype(np.float32))
    out64, hn64 = double(x)
    # float32 against float64 (weights rounded too) through 2 layers, 11 steps: 1e-5, the
    # project's float32 tolerance, with an absolute floor for values near zero
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=2e-6)
    dout = rng.standard_normal(out64.shape)
    dx32, _ = single.backward(dout.astype(np.float32))
    dx64, _ = double.backward(dout)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-5, atol=2e-6)
    for name, grad in double.grads.items():
        np.testing.assert_allclose(single.grads[name], grad, rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_compiled_code_applies_only_to_float32(kernels) -> None:
    a32 = np.ones((3, 4, 5), np.float32)
    assert _whole_recurrence(a32, a32[0], None) is host_kernels.load() is not None
    assert _whole_recurrence(a32, a32[0].astype(np.float64)) is None
    assert _whole_recurrence(a32.astype(np.float64)) is None
    assert _whole_recurrence(np.ones((5, 4, 3), np.float32).T) is None
    # the step loop's element-wise loops: tanh only, and contiguous
    assert _host_tanh("tanh", a32, None) is host_kernels.load()
    assert _host_tanh("relu", a32) is None
    assert _host_tanh("tanh", a32.astype(np.float64)) is None
    assert _host_tanh("tanh", np.ones((4, 3), np.float32).T) is None


@pytest.mark.parametrize("value", ["0", "off", "OFF", "false", " no ", "yes", ""])
def test_switched_off(fresh_loader, monkeypatch, value: str) -> None:
    """Only "0" turned them off: "off" or "false" left them on without a word."""
    monkeypatch.setenv("RNNCU_HOST_KERNELS", value)
    if value.strip() in ("no", "yes"):  # neither on nor off: said, at every use
        for _ in range(2):
            said = "environment variable RNNCU_HOST_KERNELS: expected 'on' or 'off'"
            with pytest.raises(ValueError, match=f"^{re.escape(said)}.*, got {value!r}$"):
                host_kernels.load()
        return
    if not value:  # set but empty: as if unset
        assert host_kernels.load() is not None or "no C compiler" in host_kernels.status()
        return
    assert host_kernels.load() is None
    assert f"disabled by RNNCU_HOST_KERNELS={value}" in host_kernels.status()
    for on in ("1", "on", "True"):
        host_kernels._reset_for_tests()
        monkeypatch.setenv("RNNCU_HOST_KERNELS", on)
        assert "disabled" not in host_kernels.status()


def test_no_compiler_means_numpy_functions(fresh_loader, monkeypatch, rng) -> None:
    monkeypatch.setenv("CC", str(fresh_loader / "no-such-compiler"))
    assert host_kernels.load() is None
    assert "no C compiler found" in host_kernels.status()
    assert "no-such-compiler" in host_kernels.status()
    # and the backend still runs, on NumPy's tanh
    z, w_hh, h0, grad_states, grad_h_last, lens = _recurrence(rng, 4, 3, 5, True)
    states = z.copy()
    NumpyBackend().recurrence_forward(states, w_hh, h0, lens, "tanh", False)
    assert np.isfinite(states).all() and not np.array_equal(states, z)


def test_a_compile_error_is_reported(fresh_loader, monkeypatch) -> None:
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine")
    broken = fresh_loader / "kernels"
    broken.mkdir()
    (broken / host_kernels.SOURCE_FILE).write_text("void rnncu_add_tanh_f32(oops\n")
    monkeypatch.setattr(kernel_loader, "kernel_dir", lambda: broken)
    assert host_kernels.load() is None
    assert f"failed on kernels/{host_kernels.SOURCE_FILE}" in host_kernels.status()
    # no half-written library left behind in the cache
    assert not [p for p in (fresh_loader / "cache").glob("*") if p.suffix in (".so", ".tmp")]


def test_a_compiler_without_avx512_builds_without_it(fresh_loader, monkeypatch) -> None:
    """gcc before 4.9 rejects -mavx512f: the build without it is used, not NumPy's loop."""
    compiler = host_kernels._compiler()
    if compiler is None or os.name != "posix":
        pytest.skip("needs a C compiler and a POSIX shell for the wrapper")
    wrapper = fresh_loader / "old-cc"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -mavx512f ] && '
        "{ echo \"unrecognized command-line option '-mavx512f'\" >&2; exit 1; }; done\n"
        f'exec {shlex.quote(compiler)} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    # only -mavx512f asked for, so that the fallback build is the portable one, which runs
    # on any CPU (this test's machine may lack AVX2)
    monkeypatch.setattr(host_kernels, "_arch_flags", lambda: ("-mavx512f",))
    loaded = host_kernels.load()
    assert loaded is not None, host_kernels.status()
    assert loaded.vector_bits == 0
    status = host_kernels.status()
    assert "compiled, portable C micro-kernel" in status
    assert "; the AVX-512 build failed: " in status and "-mavx512f" in status


def test_compiled_once_then_read_from_the_cache(fresh_loader) -> None:
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine")
    first = host_kernels.load()
    assert first is not None, host_kernels.status()
    assert Path(first.path).parent == fresh_loader / "cache"
    stamp = Path(first.path).stat().st_mtime_ns
    host_kernels._reset_for_tests()
    second = host_kernels.load()
    assert second is not None and second.path == first.path
    assert Path(second.path).stat().st_mtime_ns == stamp
    assert str(first.path) in host_kernels.status()


def test_a_directory_others_can_write_is_never_used(fresh_loader, monkeypatch) -> None:
    """A library planted where another user can write must not be loaded: a shared cache
    directory is skipped for the private fallback under the temporary directory."""
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine")
    shared = fresh_loader / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("RNNCU_CACHE_DIR", str(shared))
    monkeypatch.setattr(host_kernels.tempfile, "gettempdir", lambda: str(fresh_loader / "tmp"))
    loaded = host_kernels.load()
    assert loaded is not None, host_kernels.status()
    assert Path(loaded.path).parent.parent == fresh_loader / "tmp"
    assert not list(shared.iterdir())
    assert Path(loaded.path).parent.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "mode,private",
    [("700", True), ("755", True), ("500", True), ("770", False), ("720", False), ("703", False)],
)
def test_only_a_directory_no_one_else_can_write_counts_as_private(
    tmp_path, mode: str, private: bool
) -> None:
    """Write permission for the group is as unsafe as for others: either could plant a
    library there."""
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(int(mode, 8))
    try:
        assert host_kernels._private(directory) is private
    finally:
        directory.chmod(0o700)


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path) -> None:
    """RNNCU_CACHE_DIR, else $XDG_CACHE_HOME/rnncu, else ~/.cache/rnncu."""
    monkeypatch.setenv("RNNCU_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert host_kernels._cache_dir() == tmp_path / "own"
    monkeypatch.delenv("RNNCU_CACHE_DIR")
    assert host_kernels._cache_dir() == tmp_path / "xdg" / "rnncu"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert host_kernels._cache_dir() == tmp_path / "home" / ".cache" / "rnncu"


@pytest.mark.parametrize(
    "features,flags",
    [
        ({"AVX2": True, "FMA3": True, "AVX512F": True}, ("-mavx2", "-mfma", "-mavx512f")),
        ({"AVX2": True, "FMA3": True, "AVX512F": False}, ("-mavx2", "-mfma")),
        ({"AVX512F": True}, ()),  # the AVX-512 micro-kernel only on top of AVX2
        ({}, ()),
    ],
)
def test_instruction_set_flags_follow_the_cpu_probe(monkeypatch, features, flags) -> None:
    monkeypatch.setattr(host_kernels, "cpu_features", lambda: features)
    assert host_kernels._arch_flags() == flags


@pytest.mark.parametrize("path", ["whole", "step"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_nan_propagates_as_in_the_float64_loop(
    kernels, monkeypatch, rng, path, nonlinearity, reverse
) -> None:
    """A NaN in Z or in the output gradient reaches exactly the elements it reaches in the
    float64 NumPy loop: through relu too (a relu that turned NaN into 0 would hide a
    diverged run from the trainer's loss check), and never into another row."""
    steps, batch, hidden = 4, 7, 33
    if reverse:
        steps = 5  # the NaN at step 1 then reaches only steps 1 and 0
    single = with_nans(rng, steps, batch, hidden, np.float32)
    double = {name: a.astype(np.float64) for name, a in single.items()}
    backend = NumpyBackend()

    def run(a):
        states = a["z"].copy()
        backend.recurrence_forward(states, a["w_hh"], a["h0"], None, nonlinearity, reverse)
        grads = backend.recurrence_backward(
            states, a["w_hh"], a["h0"], a["grad_states"], a["grad_h_last"], None,
            nonlinearity, reverse,
        )  # fmt: skip
        return (states, *grads)

    expected = run(double)
    _use_path(monkeypatch, path)
    actual = run(single)
    for what, a, e in zip(("states", "grad_z", "grad_h0"), actual, expected, strict=True):
        assert a.dtype == np.float32
        assert_same_nans(a, e, 2e-5, what)
    # the case is not vacuous: the forward's NaN reaches later states of row 0 only
    nan_rows = np.isnan(expected[0]).any(axis=(0, 2))
    assert nan_rows.tolist() == [True] + [False] * (batch - 1)
