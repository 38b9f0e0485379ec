"""The fused-epilogue choice (``gpunet.ops.epilogue.refusal``) is a pure function: every precondition
that sends Linear to the plain path, checked without a GPU; on the emulated GPU the plain path runs
(and equals NumPy). The fused call itself is checked against the plain path on a GPU (mark ``gpu``)."""

import numpy as np
import pytest

from gpunet import backend
from gpunet.layers import linear_forward
from gpunet.ops import epilogue


def _ops(dtype=np.float32, N=8, D=5, M=3):
    rng = np.random.default_rng(0)
    return (rng.standard_normal(s).astype(dtype) for s in ((N, D), (D, M), (M,)))


def test_the_epilogue_runs_only_when_every_precondition_holds():
    X, W, b = _ops()
    ok = dict(have_nvmath=object(), real_gpu=True, capturing=False, precision="fp32")
    assert epilogue.refusal(X2=X, W=W, b=b, **ok) is None
    cases = {
        "nvmath-python is not installed": dict(ok, have_nvmath=None),
        "not a real GPU": dict(ok, real_gpu=False),
        "CUDA graph": dict(ok, capturing=True),
        "precision bf16": dict(ok, precision="bf16"),
    }
    for why, kw in cases.items():
        assert why in epilogue.refusal(X2=X, W=W, b=b, **kw)
    X64, W64, b64 = _ops(np.float64)
    assert "float32 only" in epilogue.refusal(X2=X64, W=W64, b=b64, **ok)
    assert "C-contiguous" in epilogue.refusal(X2=X[:, ::-1], W=W, b=b, **ok)
    assert "C-contiguous" in epilogue.refusal(X2=X, W=np.asfortranarray(W), b=b, **ok)
    assert "shapes" in epilogue.refusal(X2=X, W=W.T, b=b, **ok)
    assert "empty" in epilogue.refusal(X2=X[:0], W=W, b=b, **ok)
    assert epilogue.refusal(X2=X, W=W, b=b, off="turned off", **ok) == "turned off"


def test_the_emulated_gpu_takes_the_plain_path(xp):
    X, W, b = _ops()
    want = np.maximum(X @ W + b, 0)
    got = linear_forward(xp.asarray(X), xp.asarray(W), xp.asarray(b), relu=True)
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-6, atol=1e-6)
    if xp is not np and backend.emulated():
        assert epilogue.affine_bias(xp, xp.asarray(X), xp.asarray(W), xp.asarray(b), True) is None


@pytest.mark.gpu
def test_fused_epilogue_equals_the_plain_path_on_a_gpu(xp):
    if xp is np or backend.emulated():
        pytest.skip("a real GPU")
    if epilogue.nvmath_module() is None:
        pytest.fail("nvmath-python is part of the cuda extras: install it to test the epilogue on a GPU")
    for relu in (True, False):
        X, W, b = (xp.asarray(a) for a in _ops(N=256, D=512, M=128))
        got = epilogue.affine_bias(xp, X, W, b, relu)
        assert got is not None, epilogue._off
        plain = X @ W + b
        want = xp.maximum(plain, 0) if relu else plain
        np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(want), rtol=1e-4, atol=1e-5)
