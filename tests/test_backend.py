"""The backend switch: the only door to cupy, explicit choices, clear errors."""

import ast
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

from gpunet import backend

from common import REPO as ROOT


def _imports_cupy(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "cupy" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cupy":
            return True
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).split(".")[0] == "cupy"
        ):
            return True
    return False


def test_only_backend_imports_cupy():
    files = [p for d in ("gpunet", "data_prep", "scripts") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 5
    offenders = [str(p.relative_to(ROOT)) for p in files if _imports_cupy(p)]
    assert offenders == ["gpunet/backend.py"]


def test_the_checker_catches_an_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    import cupy as cp\n")
    assert _imports_cupy(f)
    f.write_text("import importlib\nimportlib.import_module('cupy')\n")
    assert _imports_cupy(f)


@pytest.mark.parametrize("alias", ["numpy", "cpu", "NumPy"])
def test_numpy_aliases(alias):
    prev = backend.selected()
    try:
        assert backend.use(alias) == "numpy"
        assert backend.xp() is np
    finally:
        backend.use(prev)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend: expected one of .* got 'tpu'"):
        backend.use("tpu")


def test_asking_for_gpu_without_one_is_an_error():
    if backend.gpu_available():
        pytest.skip("a GPU is usable here")
    prev = backend.selected()
    with pytest.raises(backend.BackendError, match="backend 'cupy' requested but"):
        backend.use("gpu")
    assert backend.name() == prev  # nothing changed, no silent fall-back


def test_auto_logs_its_choice_and_reason(caplog):
    prev = backend.selected()
    try:
        with caplog.at_level("INFO", logger="gpunet"):
            chosen = backend.use("auto")
        assert chosen == ("cupy" if backend.gpu_available() else "numpy")
        assert any("auto" in r.getMessage() for r in caplog.records)
    finally:
        backend.use(prev)


def test_environment_variable_chooses_backend():
    code = "from gpunet import backend; print(backend.name())"
    env = dict(os.environ, GPUNET_BACKEND="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"
    env["GPUNET_BACKEND"] = "nonsense"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "got 'nonsense'" in bad.stderr


def test_move_helpers_round_trip(xp):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = backend.to_device(a)
    assert backend.get_array_module(d) is xp
    back = backend.to_numpy(d)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)
    assert backend.to_device(a, dtype=np.float64).dtype == np.float64


def test_gpunet_shortens_openblas_spinning_unless_told_otherwise():
    """Importing gpunet sets OPENBLAS_THREAD_TIMEOUT=4 before NumPy loads; a user's value wins."""
    import os
    import subprocess
    import sys

    code = "import gpunet, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    assert (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        == "4"
    )
    env["OPENBLAS_THREAD_TIMEOUT"] = "28"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        == "28"
    )


# a failed re-probe on another device leaves no stale CuPy behind (checked with a stand-in cupy module)
def _fake_cupy(n_devices):
    """A stand-in cupy module with ``n_devices`` GPUs that can run the backend's probe."""

    class Device:
        def __init__(self, i):
            self.i = i

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def use(self):
            pass

    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: n_devices), Device=Device
    )
    return types.SimpleNamespace(
        cuda=cuda, arange=np.arange, float32=np.float32, ndarray=type(None), get_array_module=lambda *a: np
    )


@pytest.fixture
def fresh_backend(monkeypatch):
    for name in ("_cupy", "_cupy_error", "_probed", "_active", "_device"):
        monkeypatch.setattr(backend, name, getattr(backend, name))
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_probed", False)
    monkeypatch.setattr(backend, "_device", 0)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    yield backend


def test_failed_reprobe_on_another_device_forgets_cupy(fresh_backend):
    assert fresh_backend.use("auto", device=0) == "cupy"
    assert fresh_backend.gpu_available()
    assert fresh_backend.use("auto", device=1) == "numpy"  # device 1 does not exist
    assert not fresh_backend.gpu_available()
    assert "GPU index 1" in fresh_backend.gpu_unavailable_reason()
    assert fresh_backend.cupy_module() is None
    with pytest.raises(backend.BackendError, match="GPU index 1"):
        fresh_backend.use("cupy")
    assert fresh_backend.use("cupy", device=0) == "cupy"  # and back to a working device
