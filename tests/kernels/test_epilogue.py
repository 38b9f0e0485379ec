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


# ---------------------------------------------------------------- the backward epilogue (DRELU_BGRAD)
def test_the_backward_epilogue_runs_only_when_every_precondition_holds():
    rng = np.random.default_rng(1)
    N, D, M = 8, 20, 3
    dout, W = rng.standard_normal((N, M)).astype(np.float32), rng.standard_normal((D, M)).astype(np.float32)
    aux = np.asfortranarray(np.zeros(epilogue.aux_shape(D, N), np.uint8))
    assert epilogue.aux_shape(D, N) == (16, N) and epilogue.aux_shape(129, 2) == (32, 2)
    ok = dict(have_nvmath=object(), real_gpu=True, capturing=False, precision="fp32")
    assert epilogue.backward_refusal(dout=dout, W=W, aux=aux, **ok) is None
    cases = {
        "kept no ReLU bitmask": dict(ok, aux=None),
        "nvmath-python is not installed": dict(ok, aux=aux, have_nvmath=None),
        "not a real GPU": dict(ok, aux=aux, real_gpu=False),
        "CUDA graph": dict(ok, aux=aux, capturing=True),
        "precision tf32": dict(ok, aux=aux, precision="tf32"),
        "C-contiguous": dict(ok, aux=aux, dout=np.asfortranarray(dout)),
        "shapes": dict(ok, aux=aux, dout=dout[:, :2]),
        "expected a column-major uint8 (16, 8)": dict(ok, aux=np.ascontiguousarray(aux[:, :3])),
        "float32 only": dict(ok, aux=aux, dout=dout.astype(np.float64)),
    }
    for why, kw in cases.items():
        kw = {"dout": dout, "W": W, **kw}
        assert why in epilogue.backward_refusal(**kw), why
    assert "expected a column-major" in epilogue.backward_refusal(
        dout=dout, W=W, aux=aux.astype(np.int8), **ok
    )
    assert "expected a column-major" in epilogue.backward_refusal(
        dout=dout, W=W, aux=np.zeros((16, N), np.uint8), **ok
    )
    assert epilogue.backward_refusal(dout=dout, W=W, aux=aux, off="turned off", **ok) == "turned off"


class StandInLt:
    """cuBLASLt's epilogues as documented, computed by NumPy on the emulated GPU: the ReLU bitmask one bit
    per element of the column-major result (bits along a column, least significant first, the column
    padded to a multiple of 128 bits); ``wrong`` drops the mask from DRELU_BGRAD (a bad bitmask layout)."""

    def __init__(self, wrong=False):
        self.wrong, self.calls = wrong, []

    def __call__(self, key, epilog, a, b, inputs, stream):
        emu = backend.xp()
        self.calls.append(epilog)
        P = np.asarray(a.view(np.ndarray)) @ np.asarray(b.view(np.ndarray))  # (m, n)
        dev = lambda x: emu.asfortranarray(emu.asarray(x))  # noqa: E731 - results are column-major
        if epilog == "DRELU_BGRAD":
            mask = np.unpackbits(inputs["relu_aux"].view(np.ndarray), axis=0, bitorder="little")[: P.shape[0]]
            D = P if self.wrong else P * mask
            return dev(D), {"drelu_bgrad": emu.asarray(D.sum(axis=1))}
        P = P + inputs["bias"].view(np.ndarray)
        if epilog == "BIAS":
            return dev(P), {}
        aux = np.packbits(P > 0, axis=0, bitorder="little")
        aux = np.concatenate(
            [aux, np.zeros((epilogue.aux_shape(*P.shape)[0] - aux.shape[0], P.shape[1]), np.uint8)]
        )
        out = dev(np.maximum(P, 0))
        return (out, {"relu_aux": dev(aux)}) if epilog == "RELU_AUX_BIAS" else (out, {})


@pytest.fixture
def lt(monkeypatch):
    """The emulated GPU taking the epilogue path through ``StandInLt`` (a fresh plan/check state)."""
    from gpunet.testing import emulated as emu

    if emu.available():
        pytest.skip(emu.available())
    monkeypatch.setattr(epilogue, "nvmath_module", lambda: object())
    monkeypatch.setattr(epilogue, "real_gpu", lambda: True)
    monkeypatch.setattr(epilogue, "_checked", set())
    monkeypatch.setattr(epilogue, "_off", None)

    def install(**kw):
        s = StandInLt(**kw)
        monkeypatch.setattr(epilogue, "_execute", s)
        return s

    with backend.using("emulated"):
        yield install


def _fc_grads(xp, dropout=0.0):
    from gpunet.model import FullyConnectedNet

    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((16, 12)).astype(np.float32), rng.integers(0, 4, 16)
    model = FullyConnectedNet([20, 9], input_dim=12, num_classes=4, dropout=dropout, reg=1e-3, seed=2)
    if dropout:
        model.rng = np.random.default_rng(0) if xp is np else model.rng
    loss, grads = model.loss(xp.asarray(X), xp.asarray(y))
    return float(loss), {k: backend.to_numpy(g) for k, g in grads.items()}


def _numpy_grads():
    with backend.using("numpy") as xp:
        return _fc_grads(xp)


def test_fc_backward_through_drelu_bgrad_equals_numpy(lt):
    """Forward RELU_AUX_BIAS keeps the bitmask, each hidden layer's backward is one DRELU_BGRAD (input
    gradient through the ReLU, and the bias gradient of the layer before), first uses checked: the
    loss and every gradient equal NumPy's."""
    s = lt()
    want_loss, want = _numpy_grads()
    loss, got = _fc_grads(backend.xp())
    assert epilogue._off is None, epilogue._off
    assert s.calls == ["RELU_AUX_BIAS", "RELU_AUX_BIAS", "BIAS", "DRELU_BGRAD", "DRELU_BGRAD"]
    assert len(epilogue._checked) == 5  # one plan per (epilogue, shapes)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    s.calls.clear()
    _fc_grads(backend.xp())  # checked plans: no second check, the same calls
    assert s.calls == ["RELU_AUX_BIAS", "RELU_AUX_BIAS", "BIAS", "DRELU_BGRAD", "DRELU_BGRAD"]


def test_a_plan_is_not_reused_for_a_less_aligned_operand(lt):
    """nvmath plans for the alignment of the operands it was planned on: an operand at an address less
    aligned (a row slice of odd width) gets its own plan and first-use check, and the right numbers."""
    lt()
    xp = backend.xp()
    rng = np.random.default_rng(3)
    big = xp.asarray(rng.standard_normal((9, 7)).astype(np.float32))
    W = xp.asarray(rng.standard_normal((7, 5)).astype(np.float32))
    b = xp.asarray(rng.standard_normal(5).astype(np.float32))
    aligned, offset = big[1:].copy(), big[1:]  # the same values, the view offset by 28 bytes
    assert epilogue.alignment(offset) < 16 <= epilogue.alignment(aligned)
    for X2 in (aligned, offset):
        got = epilogue.affine_bias(xp, X2, W, b, relu=True)
        want = np.maximum(backend.to_numpy(X2) @ backend.to_numpy(W) + backend.to_numpy(b), 0)
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-5, atol=1e-6)
    assert len(epilogue._checked) == 2 and epilogue._off is None


def test_a_backward_epilogue_that_differs_is_turned_off_once(lt, caplog):
    s = lt(wrong=True)
    want_loss, want = _numpy_grads()
    with caplog.at_level("INFO", logger="gpunet"):
        _, got = _fc_grads(backend.xp())
        _fc_grads(backend.xp())
    assert epilogue._off and "DRELU_BGRAD" in epilogue._off
    assert s.calls.count("DRELU_BGRAD") == 1  # off after its first use
    assert sum("epilogues off" in r.getMessage() for r in caplog.records) == 1
    for k in want:  # the plain path's gradients
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_with_dropout_no_bitmask_is_kept_and_the_backward_is_plain(lt):
    """Dropout after the ReLU changes the mask: the forward keeps no bitmask, the backward stays plain."""
    s = lt()
    _fc_grads(backend.xp(), dropout=0.3)
    assert s.calls == ["RELU_BIAS", "RELU_BIAS", "BIAS"]


@pytest.mark.gpu
def test_backward_epilogue_equals_the_plain_path_on_a_gpu(xp):
    if xp is np or backend.emulated():
        pytest.skip("a real GPU")
    if epilogue.nvmath_module() is None:
        pytest.fail("nvmath-python is part of the cuda extras: install it to test the epilogue on a GPU")
    rng = np.random.default_rng(3)
    for N, D, M, K in ((256, 512, 128, 10), (100, 37, 50, 7)):  # (one shape off the 8/16 multiples)
        X, W1, b1, W2 = (
            xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((N, D), (D, M), (M,), (M, K))
        )
        saved = {}
        a = epilogue.affine_bias(xp, X, W1, b1, True, saved=saved)
        assert a is not None and saved.get("relu_aux") is not None, epilogue._off
        dout = xp.asarray(rng.standard_normal((N, K)).astype(np.float32))
        got = epilogue.drelu_bgrad(xp, dout, W2, saved["relu_aux"], a)
        assert got is not None, epilogue._off
        want = (dout @ W2.T) * (a > 0)
        for g, w in ((got[0], want), (got[1], want.sum(axis=0))):  # max-norm: cuBLASLt sums in its order
            g, w = backend.to_numpy(g), backend.to_numpy(w)
            assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max() + 1e-5
