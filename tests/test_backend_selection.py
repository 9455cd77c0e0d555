"""Backend selection: argument, RNNCU_BACKEND, auto; the NumPy path never imports CuPy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import rnncu
from rnncu import backend as backend_module

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RNNCU_BACKEND"}
    environment.update(env)
    environment["PYTHONPATH"] = str(ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120
    )


def test_numpy_backend_never_imports_cupy() -> None:
    result = _run(
        "import sys, numpy as np, rnncu\n"
        "rnn = rnncu.RNN(3, 4, backend='numpy')\n"
        "out, h = rnn(np.ones((2, 1, 3), np.float32))\n"
        "rnn.backward(out)\n"
        "print('cupy' in sys.modules)\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_environment_variable_selects_backend() -> None:
    result = _run("import rnncu; print(rnncu.get_backend().name)", RNNCU_BACKEND="numpy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"
    bad = _run("import rnncu; rnncu.get_backend()", RNNCU_BACKEND="fortran")
    assert bad.returncode != 0
    assert "RNNCU_BACKEND" in bad.stderr and "'fortran'" in bad.stderr
    # set but empty is unset, as the command line took it (the library had refused '')
    empty = _run("import rnncu; print(rnncu.get_backend().name)", RNNCU_BACKEND="")
    assert empty.returncode == 0, empty.stderr
    assert (
        empty.stdout.strip() == _run("import rnncu; print(rnncu.get_backend().name)").stdout.strip()
    )


def test_auto_matches_availability() -> None:
    reason = rnncu.available_backends()["cupy"]
    expected = "numpy" if reason else "cupy"
    assert backend_module.get_backend("auto").name == expected


def test_auto_and_an_unset_or_empty_variable_choose_cupy_where_it_works(monkeypatch) -> None:
    """Where CuPy sees a device (faked here: no backend is built), "auto", any spelling of a
    name, and RNNCU_BACKEND unset, empty or blank all resolve as documented."""
    made: list[str] = []
    monkeypatch.setattr(backend_module, "_current", None)  # restored afterwards
    monkeypatch.setattr(backend_module, "_cupy_unavailable_reason", lambda: None)
    monkeypatch.setattr(backend_module, "_make", lambda name: made.append(name) or name)
    assert backend_module.get_backend("auto") == "cupy"
    assert backend_module.get_backend("Auto") == "cupy"
    assert backend_module.get_backend("NumPy") == "numpy"
    assert backend_module.set_backend("CUPY") == "cupy"
    for value in (None, "", "  ", "AUTO", "Numpy"):
        monkeypatch.setattr(backend_module, "_current", None)
        if value is None:
            monkeypatch.delenv("RNNCU_BACKEND", raising=False)
        else:
            monkeypatch.setenv("RNNCU_BACKEND", value)
        expected = "numpy" if value == "Numpy" else "cupy"
        assert backend_module.get_backend() == expected, value
    assert made == ["cupy", "cupy", "numpy", "cupy", "cupy", "cupy", "cupy", "cupy", "numpy"]


@pytest.mark.parametrize("count,reason", [(0, "no CUDA device is present"), (1, None), (2, None)])
def test_cupy_needs_at_least_one_device(monkeypatch, count: int, reason: str | None) -> None:
    """CuPy that imports but counts no device is unavailable, with that reason (faked CuPy:
    the check reads the device count only)."""
    runtime = types.SimpleNamespace(getDeviceCount=lambda: count)
    monkeypatch.setitem(
        sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))
    )
    got = rnncu.available_backends()["cupy"]
    if reason is None:
        assert got is None
        return
    assert got == f"CuPy is installed but {reason}"
    monkeypatch.setattr(backend_module, "_instances", {})
    with pytest.raises(rnncu.BackendUnavailableError, match=f"unavailable: CuPy .*{reason}"):
        backend_module.get_backend("cupy")


def test_explicit_cupy_says_why_when_unavailable() -> None:
    reason = rnncu.available_backends()["cupy"]
    if reason is None:
        pytest.skip("CuPy works here: nothing to refuse")
    with pytest.raises(rnncu.BackendUnavailableError, match=r"backend 'cupy' is unavailable: "):
        rnncu.set_backend("cupy")
    # The reason distinguishes the cases a user can act on.
    assert any(
        phrase in reason
        for phrase in (
            "not installed",
            "no CUDA device",
            "driver did not answer",
            "failed to import",
        )
    ), reason


def test_set_backend_changes_default_for_new_layers() -> None:
    previous = backend_module._current
    try:
        chosen = rnncu.set_backend("numpy")
        assert rnncu.get_backend() is chosen
        assert rnncu.RNN(2, 2).backend is chosen
        assert rnncu.Linear(2, 2).backend.name == "numpy"
    finally:
        backend_module._current = previous


def test_backend_for_arrays() -> None:
    assert backend_module.backend_for(np.zeros(2)).name == "numpy"


def test_mixed_device_message_names_the_conversion() -> None:
    rnn = rnncu.RNN(2, 2, backend="numpy")

    class FakeDeviceArray:
        shape = (3, 1, 2)
        dtype = np.dtype("float32")

    with pytest.raises(
        TypeError, match=r"x: expected a numpy array .*mixed devices are not converted"
    ):
        rnn(FakeDeviceArray())
    # a NumPy scalar has a shape and a dtype too, but no device to blame
    said = "x: expected a numpy array, got the scalar numpy.float32 float32 (); a layer takes "
    for layer in (rnn, rnncu.Linear(2, 2, backend="numpy")):
        with pytest.raises(TypeError, match="^" + re.escape(said + "arrays of its input's shape")):
            layer(np.float32(1.5))


def test_to_numpy_copies_on_the_numpy_backend_too() -> None:
    """``to_numpy`` is a copy on every backend (CuPy's is a transfer): on the NumPy backend it
    returned the parameter itself, and writing to the "host copy" changed the layer."""
    numpy_backend = rnncu.get_backend("numpy")
    rnn = rnncu.RNN(3, 4, backend="numpy", seed=2)
    weight = rnn.params["weight_hh_l0"]
    before = weight.copy()
    host = numpy_backend.to_numpy(weight)
    np.testing.assert_array_equal(host, before)
    assert host.dtype == weight.dtype and not np.shares_memory(host, weight)
    host[...] = np.nan
    np.testing.assert_array_equal(rnn.params["weight_hh_l0"], before)


def test_asarray_takes_numbers_and_names_what_it_cannot_take() -> None:
    """None, strings and dicts became object or str arrays; a ragged list or a torch tensor
    that requires grad gave NumPy's or torch's own message."""
    numpy_backend = rnncu.get_backend("numpy")
    for value, message in (
        (None, r"expected real numbers or booleans, got builtins.NoneType of dtype object"),
        ("abc", r"expected real numbers or booleans, got builtins.str of dtype <U3"),
        ({"a": 1}, r"expected real numbers or booleans, got builtins.dict of dtype object"),
        ([1 + 2j], r"expected real numbers or booleans, got builtins.list of dtype complex128"),
        ([[1.0], [2.0, 3.0]], r"cannot convert builtins.list to an array \(setting an"),
    ):
        with pytest.raises(TypeError, match="^asarray: " + message):
            numpy_backend.asarray(value)
        # with a dtype too: None had become NaN, "1.5" 1.5, a complex value its real part
        if not isinstance(value, list) or value != [[1.0], [2.0, 3.0]]:
            with pytest.raises(TypeError, match="^asarray: " + message):
                numpy_backend.asarray(value, dtype="float32")
    with pytest.raises(TypeError, match=r"^asarray: expected real numbers .*got builtins.list o"):
        numpy_backend.asarray(["1.5", "2"], dtype=np.float32)
    with pytest.raises(TypeError, match=r"^asarray: expected real .*numpy.ndarray of dtype compl"):
        numpy_backend.asarray(np.array([1 + 2j]), dtype=np.float32)
    with pytest.raises(TypeError, match=r"^asarray: dtype: expected a real or boolean dtype, go"):
        numpy_backend.asarray([1.5], dtype="complex64")
    with pytest.raises(TypeError, match=r"^asarray: dtype: data type 'nonsense' not understood"):
        numpy_backend.asarray([1.5], dtype="nonsense")
    assert numpy_backend.asarray([[1, 2]], dtype="float32").dtype == np.float32
    # a narrowing cast that makes finite values infinite is refused (it had warned only);
    # infinities and NaN given stay what they were
    for value, dtype, message in (
        ([1.0, 1e300], "float32", r"1 value\(s\) beyond float32's range .* given is 1e\+300"),
        (np.array([-1e39, 2e39, np.inf]), "float32", r"2 value\(s\) beyond float32's range"),
        (np.array([7e4, 1.0], np.float32), "float16", r"1 value\(s\) beyond float16's range"),
        (np.array([65535], np.uint16), "float16", r"1 value\(s\) beyond float16's .* 65535$"),
        (np.array([np.iinfo(np.int64).min, 5]), "float16", r"1 value.* given is 9.223372e\+18$"),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NumPy's overflow warning is not the report
            with pytest.raises(ValueError, match="^asarray: " + message):
                numpy_backend.asarray(value, dtype=dtype)
    kept = numpy_backend.asarray([np.inf, -np.inf, np.nan, 3e38], dtype="float32")
    assert np.isposinf(kept[0]) and np.isneginf(kept[1]) and np.isnan(kept[2])
    assert kept[3] == np.float32(3e38)  # NumPy before 2.0 compared it in float64
    assert numpy_backend.asarray(np.array([32767], np.int16), dtype="float16")[0] == 32768
    assert numpy_backend.asarray(np.float64(2.5)).shape == ()
    assert numpy_backend.asarray([True, False]).dtype == np.bool_
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^asarray: cannot convert torch.Tensor to an array \("):
        numpy_backend.asarray(torch.ones(2, requires_grad=True))
    np.testing.assert_array_equal(numpy_backend.asarray(torch.arange(3)), [0, 1, 2])


def test_check_switch_takes_bools_and_on_off_words() -> None:
    """The on/off settings (RNNCU_HOST_KERNELS, RNNCU_STEP_GRAPHS, step_graphs=...): a bool
    as given; a word in any case, with the blanks a shell file may leave around it."""
    from rnncu.backend.base import check_switch

    for value, meant in ((True, True), (False, False), (" Off ", False), ("TRUE\n", True)):
        assert check_switch(value, "s") is meant, value
    for word in ("on", "1", "true", "off", "0", "false"):
        assert check_switch(f" {word.upper()} ", "s") is (word in ("on", "1", "true"))
    for bad in (1, 0, None, "yes", "", "o n"):
        with pytest.raises(
            ValueError,
            match=f"^s: expected 'on' or 'off' \\(or a bool\\), got {re.escape(repr(bad))}$",
        ):
            check_switch(bad, "s")
