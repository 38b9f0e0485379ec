"""Defects of the GPU path (issue 10), each pinned by a test that runs on the CPU where it can.

- #2 a failed re-probe on another device leaves no stale CuPy behind: ``gpu_available()``
  agrees with ``use('cupy')`` (checked with a stand-in cupy module);
- #4 a float64 gradient for float32 weights is converted (NumPy and CuPy alike), other
  gradients are refused with the parameter's name;
- #6 dropout on the GPU reuses one uniform buffer per shape instead of a new N x M array (on the
  emulated GPU).
"""
import sys
import types

import numpy as np
import pytest

from gpunet import backend, optim
from gpunet.testing import emulated


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

    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: n_devices), Device=Device)
    return types.SimpleNamespace(cuda=cuda, arange=np.arange, float32=np.float32, ndarray=type(None),
                                 get_array_module=lambda *a: np)


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
    assert fresh_backend.use("auto", device=1) == "numpy"      # device 1 does not exist
    assert not fresh_backend.gpu_available()
    assert "GPU index 1" in fresh_backend.gpu_unavailable_reason()
    assert fresh_backend.cupy_module() is None
    with pytest.raises(backend.BackendError, match="GPU index 1"):
        fresh_backend.use("cupy")
    assert fresh_backend.use("cupy", device=0) == "cupy"        # and back to a working device


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
def test_float64_grads_are_converted_to_float32_weights(xp, rule):
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    g64 = rng.standard_normal((5, 3))                            # float64
    got, want = {"W": xp.asarray(w0.copy())}, {"W": xp.asarray(w0.copy())}
    optim.Optimizer(rule, {}).step(got, {"W": xp.asarray(g64)}, 0.1)
    optim.Optimizer(rule, {}).step(want, {"W": xp.asarray(g64.astype(np.float32))}, 0.1)
    assert got["W"].dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(got["W"]), backend.to_numpy(want["W"]))


def test_bad_grads_are_refused_with_the_parameter_name(xp):
    params = {"W1": xp.zeros((2, 3), np.float32)}
    opt = optim.Optimizer("sgd", {})
    with pytest.raises(TypeError, match="gradient of W1: expected a floating-point array, got int64"):
        opt.step(params, {"W1": xp.zeros((2, 3), np.int64)}, 0.1)
    with pytest.raises(ValueError, match=r"gradient of W1: expected shape \(2, 3\), got \(3, 2\)"):
        opt.step(params, {"W1": xp.zeros((3, 2), np.float32)}, 0.1)
    with pytest.raises(KeyError, match="no gradient for parameter"):
        opt.step(params, {}, 0.1)


class _RecordingRng:
    """Stands in for a CuPy generator: fills ``out`` and remembers which buffers it was handed."""

    def __init__(self):
        self.outs, self.g = [], np.random.default_rng(0)

    def random(self, shape, dtype=np.float32, out=None):
        assert out is not None, "the GPU dropout must generate into a reused buffer"
        self.outs.append(out)
        out[...] = self.g.random(shape, dtype=dtype)
        return out


@pytest.mark.skipif(emulated.available() is not None, reason=str(emulated.available()))
def test_gpu_dropout_reuses_its_uniform_buffer(monkeypatch):
    """On the (emulated) GPU the dropout kernel's uniforms go into one buffer per shape."""
    from gpunet.layers import activations
    from gpunet.ops import CupyOps
    monkeypatch.setattr(CupyOps, "_uniform_bufs", {})
    rng = _RecordingRng()
    with backend.using("emulated") as xp:
        for _ in range(3):
            x = xp.ones((6, 4), np.float32)
            activations.dropout_forward(x, 0.5, rng=rng, out=x)       # the fast path is in place only
            kept = backend.to_numpy(x) != 0
            assert np.array_equal(kept, backend.to_numpy(rng.outs[-1]) >= 0.5)
        x = xp.ones((2, 4), np.float32)
        activations.dropout_forward(x, 0.5, rng=rng, out=x)
    assert all(u is rng.outs[0] for u in rng.outs[:3]) and rng.outs[3] is not rng.outs[0]
    assert len(CupyOps._uniform_bufs) == 2


@pytest.mark.gpu
def test_gpu_dropout_allocates_nothing_per_call(xp):
    if xp is np:
        pytest.skip("GPU path")
    from gpunet.layers import activations
    X = xp.ones((256, 512), np.float32)
    activations.dropout_forward(X, 0.5, out=X)
    pool = backend.cupy_module().get_default_memory_pool()
    used = pool.used_bytes()
    for _ in range(5):
        activations.dropout_forward(X, 0.5, out=X)
    assert pool.used_bytes() == used
