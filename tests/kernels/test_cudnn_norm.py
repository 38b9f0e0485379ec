"""Batch norm and the fused batch norm + ReLU through cuDNN (gpunet.ops.cudnn_norm, issue 21).

On the CPU: the fused op's reference is the composition of batch norm and ReLU (forward, backward,
numerical gradients, views as inputs); the plan keys and the refusals; and the cuDNN path driven on
the emulated GPU by a stand-in executor that declares each key's graph on a recording fake of the
frontend (every array the ops pass is a declared tensor, and the reverse) and computes what cuDNN
would by its documented semantics in NumPy (or, to test the guard, something wrong). With the
frontend wheel installed, each graph is declared on the real ``cudnn.pygraph`` and validated as
far as the frontend goes without a driver. On a GPU (marked ``gpu``): cuDNN against NumPy float64.
"""

import logging

import numpy as np
import pytest

from gpunet import backend, layers
from gpunet.ops import CUPY, NUMPY
from gpunet.ops.cudnn import CUDNN, PlanCache, disagreement
from gpunet.ops.cudnn_norm import NormKey, norm_key, norm_refusal

from gradcheck import numerical_gradient_array, rel_error

RNG = np.random.default_rng(3)
EPS, MOM = 1e-5, 0.9


def _bn_arrays(n=4, c=3, h=5, w=6, dtype=np.float32, axis=1):
    shape = (n, c, h, w) if axis == 1 else (c, n, h, w)
    x = (RNG.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma = (RNG.standard_normal(c) + 1).astype(dtype)
    beta = RNG.standard_normal(c).astype(dtype)
    rm, rv = RNG.standard_normal(c).astype(dtype), (RNG.random(c) + 0.5).astype(dtype)
    return x, gamma, beta, rm, rv


# ---------------------------------------------------------------- the fused op's reference


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("train", [True, False])
def test_fused_reference_is_batchnorm_then_relu_on_every_backend(xp, axis, train):
    x, g, b, rm, rv = _bn_arrays(axis=axis)
    wide = np.stack([x, x], axis=-1)[..., 0]  # a strided view as the input
    X, G, B = xp.asarray(wide), xp.asarray(g), xp.asarray(b)
    rm1, rv1, rm2, rv2 = (xp.asarray(a.copy()) for a in (rm, rv, rm, rv))
    out, cache = layers.batchnorm_relu_forward(X, G, B, rm1, rv1, train, MOM, EPS, axis)
    ref, bn_cache = layers.batchnorm_forward(X, G, B, rm2, rv2, train, MOM, EPS, axis)
    ref = np.maximum(backend.to_numpy(ref), 0)
    np.testing.assert_allclose(backend.to_numpy(out), ref, rtol=1e-6, atol=1e-6)
    assert (backend.to_numpy(out) == 0).any() and (backend.to_numpy(out) > 0).any()  # both sides of the ReLU
    np.testing.assert_allclose(backend.to_numpy(rm1), backend.to_numpy(rm2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(backend.to_numpy(rv1), backend.to_numpy(rv2), rtol=1e-6, atol=1e-7)
    dout = RNG.standard_normal(x.shape).astype(np.float32)
    D = xp.asarray(np.stack([dout, dout], axis=-1))[..., 0]  # a strided view
    keep = backend.to_numpy(D).copy()
    dx, dg, db = layers.batchnorm_relu_backward(D, cache)
    rdx, rdg, rdb = layers.batchnorm_backward(xp.asarray(keep * (ref > 0)), bn_cache)
    np.testing.assert_array_equal(backend.to_numpy(D), keep)  # dout is not written
    for got, want in ((dx, rdx), (dg, rdg), (db, rdb)):
        np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [1, 0])
def test_fused_reference_gradients_match_numerical_ones(axis):
    x, g, b, rm, rv = (a.astype(np.float64) for a in _bn_arrays(n=3, c=2, h=3, w=4, axis=axis))
    dout = RNG.standard_normal(x.shape)

    def f(xx, gg, bb):
        return NUMPY.batchnorm_relu_forward(xx, gg, bb, rm.copy(), rv.copy(), True, MOM, EPS, axis)[0]

    _, cache = NUMPY.batchnorm_relu_forward(x, g, b, rm.copy(), rv.copy(), True, MOM, EPS, axis)
    dx, dg, db = NUMPY.batchnorm_relu_backward(dout, cache)
    f_ = lambda: f(x, g, b)  # noqa: E731 - numerical_gradient_array moves x, g, b in place
    assert rel_error(dx, numerical_gradient_array(f_, x, dout)) < 1e-6
    assert rel_error(dg, numerical_gradient_array(f_, g, dout)) < 1e-6
    assert rel_error(db, numerical_gradient_array(f_, b, dout)) < 1e-6


def test_sequential_fuses_a_relu_after_batch_norm_unless_a_pool_takes_it():
    import gpunet.nn as nn

    def build(apart):
        gap = [nn.Dropout(0.0)] if apart else []
        return nn.Sequential(
            [nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)]
            + gap
            + [nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2)]
            + [nn.Flatten(), nn.Linear(2 * 3 * 3, 3)],
            dtype=np.float64,
            seed=2,
        )

    fused, plain = build(False), build(True)
    assert fused.plan[1][0] == {"axis": 0, "relu": True} and fused.plan[2][2]  # batch norm + ReLU
    assert fused.plan[4][0] == {"axis": 0} and fused.plan[6][0] == {"relu": True}  # the pool's ReLU
    assert plain.plan[1][0] == {"axis": 0} and not plain.plan[3][2]
    X = RNG.standard_normal((4, 1, 6, 6))
    y = RNG.integers(0, 3, 4)
    (lf, gf), (lp, gp) = fused.loss(X, y), plain.loss(X, y)
    assert float(lf) == pytest.approx(float(lp), rel=1e-12)
    shift = {0: 0, 1: 1, 3: 4, 4: 5, 8: 9}  # layer index in fused -> in plain
    for k, v in gf.items():
        i, name = k.split(".")
        np.testing.assert_allclose(v, gp[f"{shift[int(i)]}.{name}"], rtol=1e-9, atol=1e-12)
    for k in ("1.running_mean", "1.running_var"):
        np.testing.assert_allclose(fused.buffers[k], plain.buffers[k], rtol=1e-12)


# ---------------------------------------------------------------- keys and refusals (pure Python)


def test_norm_keys_follow_the_memory_eps_and_relu():
    x = np.zeros((2, 3, 5, 4), np.float32)
    k = norm_key("bn_train", x, 1, 1e-5)
    assert k == NormKey("bn_train", False, (2, 3, 5, 4), (60, 20, 4, 1), 1e-5, "float32")
    c = np.zeros((3, 2, 5, 4), np.float32)  # (C, N, H, W) packed: the same dims, other strides
    kc = norm_key("bn_train", c, 0, 1e-5)
    assert kc.x_dims == k.x_dims and kc.x_strides == (20, 40, 4, 1)
    keys = {k, kc, norm_key("bn_train", x, 1, 1e-3), norm_key("bn_train", x, 1, 1e-5, relu=True)}
    assert len(keys | {norm_key("bn_bwd", x, 1, 0.0), norm_key("bn_train", x.copy(), 1, 1e-5)}) == 5
    assert "+relu" in norm_key("bn_bwd", x, 1, 0.0, relu=True).describe()


def test_norm_refusal_names_dtype_shape_layout_and_missing_cudnn(monkeypatch):
    x, g, b, _, _ = _bn_arrays()
    monkeypatch.setattr(CUDNN, "executor", object())
    monkeypatch.setattr(CUDNN, "enabled", True)
    assert norm_refusal(x, g, b, 1) is None
    assert norm_refusal(np.ascontiguousarray(x.transpose(1, 0, 2, 3)), g, b, 0) is None
    assert "float32 throughout" in norm_refusal(x.astype(np.float64), g, b, 1)
    assert "float32 throughout" in norm_refusal(x, g.astype(np.float16), b, 1)
    assert "(N, C, H, W)" in norm_refusal(x.reshape(4, -1), g, b, 1)
    assert "X is not contiguous" in norm_refusal(x[:, :, ::2], g, b, 1)
    assert "X is not contiguous" in norm_refusal(x.transpose(1, 0, 2, 3), g, b, 0)  # a CNHW view of NCHW
    assert "gamma is not" in norm_refusal(x, g[:2], b, 1)
    assert "beta is not" in norm_refusal(x, g, np.zeros(6, np.float32)[::2], 1)
    assert "dout is not contiguous" in norm_refusal(x, g, b, 1, dout=np.stack([x, x], -1)[..., 0])
    assert "dout is not shaped" in norm_refusal(x, g, b, 1, dout=x[:2].copy())
    flat = np.zeros(g.size + 1, np.float32)
    assert "gamma is not 16-byte aligned" in norm_refusal(
        x, flat[1:], b, 1
    )  # 4 bytes past an aligned address
    monkeypatch.setattr(CUDNN, "enabled", False)
    assert "GPUNET_CUDNN=0" in norm_refusal(x, g, b, 1)


# ---------------------------------------------------------------- a recording fake of the frontend


class _T:
    """A declared tensor of the fake graph: ``virtual`` until marked as an output."""

    def __init__(self, graph, name, dims=None, strides=None, virtual=True):
        self.graph, self.name, self.dims, self.strides, self.virtual = graph, name, dims, strides, virtual
        graph.tensors.append(self)

    def set_output(self, flag):
        self.virtual = not flag
        return self

    def set_data_type(self, dt):
        return self

    def set_dim(self, dims):
        self.dims = list(dims)
        return self

    def set_stride(self, strides):
        self.strides = list(strides)
        return self


class FakeGraph:
    """Records the frontend calls ``NormKey.declare`` makes, with the frontend 1.32 signatures."""

    def __init__(self):
        self.tensors, self.ops = [], []

    def tensor(self, name, dim, stride, data_type):
        return _T(self, name, list(dim), list(stride), virtual=False)

    def tensor_scalar(self, value, scalar_type):
        self.ops.append(("scalar", value))
        return "scalar"

    def _op(self, name, n_out, **inputs):
        self.ops.append((name, tuple(sorted(inputs))))
        outs = [_T(self, f"{name}:{i}") for i in range(n_out)]
        return outs[0] if n_out == 1 else outs

    def batchnorm(
        self, input, scale, bias, epsilon, in_running_mean=None, in_running_var=None, momentum=None
    ):
        return self._op("batchnorm", 5, input=input, scale=scale, bias=bias, epsilon=epsilon)

    def batchnorm_inference(self, input, mean, inv_variance, scale, bias):
        return self._op(
            "batchnorm_inference", 1, input=input, mean=mean, inv_variance=inv_variance, scale=scale
        )

    def batchnorm_backward(self, grad, input, scale, mean, inv_variance):
        return self._op("batchnorm_backward", 3, grad=grad, input=input, scale=scale, mean=mean)

    def relu(self, input):
        return self._op("relu", 1, input=input)

    def relu_backward(self, loss, input):
        return self._op("relu_backward", 1, loss=loss, input=input)


class _DT:
    FLOAT, HALF = "float", "half"


class FakeCudnn:
    data_type = _DT


class NormStandIn:
    """An executor that declares each key's graph on ``FakeGraph`` and computes what cuDNN would
    (training batch norm with the biased variance, ``inv_var = 1/sqrt(var + eps)``; inference from the
    given mean and inv_var; the backward from X, mean, inv_var) in NumPy float64. ``wrong`` scales its
    main output, ``fail`` makes every build raise."""

    def __init__(self, wrong=1.0, fail=False, nhwc_only=False):
        self.wrong, self.fail, self.nhwc_only = wrong, fail, nhwc_only
        self.builds, self.runs = [], 0

    def build(self, key, arrays):
        n, c, h, w = key.x_dims
        if self.fail or (self.nhwc_only and key.x_strides != (h * w * c, 1, w * c, c)):
            raise RuntimeError("cudnnGraphNotSupportedError: no engine for this norm")
        g = FakeGraph()
        t = key.declare(FakeCudnn, g, FakeCudnn.data_type.FLOAT)
        bound = {name for name, tensor in t.items() if not tensor.virtual}
        assert bound == set(arrays), (bound, set(arrays))  # the variant pack binds every declared tensor
        for name, a in arrays.items():  # and the declared dims fit the arrays
            assert int(np.prod(t[name].dims)) == a.size, name
        assert [op for op, _ in g.ops if op != "scalar"] == {
            "bn_train": ["batchnorm"] + ["relu"] * key.relu,
            "bn_infer": ["batchnorm_inference"] + ["relu"] * key.relu,
            "bn_bwd": ["relu_backward"] * key.relu + ["batchnorm_backward"],
        }[key.op]
        self.builds.append(key)
        return {"key": key}

    def run(self, plan, arrays):
        key, self.runs = plan["key"], self.runs + 1
        outputs = {
            "bn_train": ("Y", "mean", "inv_var"),
            "bn_infer": ("Y",),
            "bn_bwd": ("DX", "DScale", "DBias"),
        }
        a = {k: backend.to_numpy(v).astype(np.float64) for k, v in arrays.items() if k not in outputs[key.op]}
        axis = 1 if tuple(arrays["X"].shape) == key.x_dims else 0
        axes = tuple(i for i in range(4) if i != axis)
        shape = [1] * 4
        shape[axis] = -1
        ch = lambda v: v.reshape(shape)  # noqa: E731
        if key.op == "bn_train":
            mean, var = a["X"].mean(axis=axes), a["X"].var(axis=axes)
            inv = 1 / np.sqrt(var + key.eps)
            y = (a["X"] - ch(mean)) * ch(inv * a["scale"]) + ch(a["bias"])
            arrays["mean"][...], arrays["inv_var"][...] = mean, inv
        elif key.op == "bn_infer":
            y = (a["X"] - ch(a["mean"])) * ch(a["inv_var"] * a["scale"]) + ch(a["bias"])
        else:
            d = a["dY"] * (a["Y"] > 0) if key.relu else a["dY"]
            xhat = (a["X"] - ch(a["mean"])) * ch(a["inv_var"])
            M = d.size // d.shape[axis]
            dbeta, dgamma = d.sum(axis=axes), (d * xhat).sum(axis=axes)
            dx = ch(a["scale"] * a["inv_var"]) * (d - ch(dbeta / M) - xhat * ch(dgamma / M))
            arrays["DX"][...] = dx * self.wrong
            arrays["DScale"][...], arrays["DBias"][...] = dgamma, dbeta
            return
        if key.relu:
            y = np.maximum(y, 0)
        arrays["Y"][...] = y * self.wrong


@pytest.fixture
def standin(monkeypatch):
    """The emulated GPU with a stand-in executor and a fresh cache; yields a factory."""
    monkeypatch.setattr(CUDNN, "cache", PlanCache())
    monkeypatch.setattr(CUDNN, "_said", set())
    monkeypatch.setattr(CUDNN, "enabled", True)
    with backend.using("emulated"):

        def install(*a, **kw):
            ex = NormStandIn(*a, **kw)
            monkeypatch.setattr(CUDNN, "executor", ex)
            return ex

        yield install


def _run_both(ops_fwd, ref_fwd, x, g, b, rm, rv, train, axis, eps=EPS):
    """The ops under test (on the emulated GPU) and the NumPy reference on the same inputs, two steps."""
    xp = backend.xp()
    X, G, B, RM, RV = (xp.asarray(v.copy()) for v in (x, g, b, rm, rv))
    rrm, rrv = rm.copy(), rv.copy()
    got, want = [], []
    for _ in range(2):  # the second step: the cached, checked plans
        out, cache = ops_fwd(X, G, B, RM, RV, train, MOM, eps, axis)
        ref, rcache = ref_fwd(x, g, b, rrm, rrv, train, MOM, eps, axis)
        got.append((out, RM.copy(), RV.copy()))
        want.append((ref, rrm.copy(), rrv.copy()))
    return got, want, cache, rcache


@pytest.mark.emulated
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("axis", [1, 0])
def test_cudnn_batch_norm_matches_the_reference_and_builds_each_plan_once(standin, relu, axis):
    ex = standin()
    x, g, b, rm, rv = _bn_arrays(axis=axis)
    dout = RNG.standard_normal(x.shape).astype(np.float32)
    fwd = CUPY.batchnorm_relu_forward if relu else CUPY.batchnorm_forward
    bwd = CUPY.batchnorm_relu_backward if relu else CUPY.batchnorm_backward
    rfwd = NUMPY.batchnorm_relu_forward if relu else NUMPY.batchnorm_forward
    rbwd = NUMPY.batchnorm_relu_backward if relu else NUMPY.batchnorm_backward
    # a large eps, so that the running variance shows whether eps was taken out of 1/inv_var**2
    got, want, cache, rcache = _run_both(fwd, rfwd, x, g, b, rm, rv, True, axis, eps=0.05)
    for (o, m, v), (ro, rm_, rv_) in zip(got, want):
        np.testing.assert_allclose(backend.to_numpy(o), ro, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(m), rm_, rtol=1e-6, atol=1e-6)  # momentum, biased var
        np.testing.assert_allclose(backend.to_numpy(v), rv_, rtol=1e-5, atol=1e-6)
    assert cache["cudnn"] and cache["relu"] == relu
    for _ in range(2):
        dx, dg, db = bwd(backend.xp().asarray(dout), cache)
    rdx, rdg, rdb = rbwd(dout, rcache)
    for got_, want_ in ((dx, rdx), (dg, rdg), (db, rdb)):
        np.testing.assert_allclose(backend.to_numpy(got_), want_, rtol=1e-4, atol=1e-5)
    # inference: the running statistics, unchanged
    got, want, _, _ = _run_both(fwd, rfwd, x, g, b, rm, rv, False, axis, eps=0.05)
    np.testing.assert_allclose(backend.to_numpy(got[1][0]), want[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(backend.to_numpy(got[1][1]), rm)
    assert sorted(k.op for k in ex.builds) == ["bn_bwd", "bn_infer", "bn_train"]
    assert all(k.relu == relu for k in ex.builds) and ex.runs == 2 + 2 + 2
    assert len(CUDNN.cache.checked) == 3 and not CUDNN.cache.disabled


@pytest.mark.emulated
def test_a_norm_plan_that_disagrees_is_disabled_said_and_the_statistics_move_once(standin, caplog):
    ex = standin(wrong=1.01)
    x, g, b, rm, rv = _bn_arrays(axis=0)
    dout = RNG.standard_normal(x.shape).astype(np.float32)
    with caplog.at_level(logging.INFO, "gpunet"):
        got, want, cache, rcache = _run_both(
            CUPY.batchnorm_relu_forward, NUMPY.batchnorm_relu_forward, x, g, b, rm, rv, True, 0
        )
        dx, _, _ = CUPY.batchnorm_relu_backward(backend.xp().asarray(dout), cache)
    for (o, m, v), (ro, rm_, rv_) in zip(got, want):
        np.testing.assert_allclose(backend.to_numpy(o), ro, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(m), rm_, rtol=1e-6, atol=1e-7)  # updated once per step
        np.testing.assert_allclose(backend.to_numpy(v), rv_, rtol=1e-6, atol=1e-7)
    rdx, _, _ = NUMPY.batchnorm_relu_backward(dout, rcache)
    np.testing.assert_allclose(backend.to_numpy(dx), rdx, rtol=1e-4, atol=1e-5)
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "batchnorm: cuDNN off for bn_train+relu float32" in warned[0]
    assert "first-use check: differs from the reference" in warned[0]
    assert [k.op for k in ex.builds] == ["bn_train"] and ex.runs == 1  # never run again once disabled


@pytest.mark.emulated
def test_a_wrong_backward_plan_is_caught_too(standin):
    standin()
    x, g, b, rm, rv = _bn_arrays()
    xp = backend.xp()
    out, cache = CUPY.batchnorm_forward(*(xp.asarray(v) for v in (x, g, b, rm, rv)), True, MOM, EPS, 1)
    CUDNN.executor.wrong = 1.05  # only the backward's plan is new now
    dout = RNG.standard_normal(x.shape).astype(np.float32)
    dx, _, _ = CUPY.batchnorm_backward(xp.asarray(dout), cache)
    _, rcache = NUMPY.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), True, MOM, EPS, 1)
    np.testing.assert_allclose(
        backend.to_numpy(dx), NUMPY.batchnorm_backward(dout, rcache)[0], rtol=1e-4, atol=1e-5
    )
    assert [k.op for k in CUDNN.cache.disabled] == ["bn_bwd"]


@pytest.mark.emulated
def test_unsupported_graphs_and_refused_inputs_fall_back_once(standin, caplog):
    standin(fail=True)
    x, g, b, rm, rv = _bn_arrays()
    xp = backend.xp()
    wide = xp.asarray(np.stack([x, x], axis=-1))[..., 0]  # a view: refused, said once
    with caplog.at_level(logging.INFO, "gpunet"):
        for X in (xp.asarray(x), xp.asarray(x), wide, wide):
            RM, RV = xp.asarray(rm.copy()), xp.asarray(rv.copy())
            out, cache = CUPY.batchnorm_forward(X, xp.asarray(g), xp.asarray(b), RM, RV, True, MOM, EPS, 1)
            rrm, rrv = rm.copy(), rv.copy()
            ref, _ = NUMPY.batchnorm_forward(x, g, b, rrm, rrv, True, MOM, EPS, 1)
            np.testing.assert_allclose(backend.to_numpy(out), ref, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(backend.to_numpy(RV), rrv, rtol=1e-6)
            assert "cudnn" not in cache
    said = [r.message for r in caplog.records]
    assert len([m for m in said if "cuDNN off" in m and "no engine" in m]) == 2  # as given, then NHWC
    assert said.count("batchnorm: reference kernels: X is not contiguous") == 1


@pytest.mark.emulated
@pytest.mark.parametrize("axis", [0, 1])
def test_engines_that_take_only_channels_last_run_on_nhwc_copies(standin, axis, caplog):
    """cuDNN refusing (C, N, H, W) and (N, C, H, W) memory: the same calls run on NHWC-packed copies,
    the forward's copy kept for the backward, results in the caller's layout."""
    ex = standin(nhwc_only=True)
    x, g, b, rm, rv = _bn_arrays(axis=axis)
    dout = RNG.standard_normal(x.shape).astype(np.float32)
    with caplog.at_level(logging.INFO, "gpunet"):
        got, want, cache, rcache = _run_both(
            CUPY.batchnorm_relu_forward, NUMPY.batchnorm_relu_forward, x, g, b, rm, rv, True, axis
        )
        dx, dg, db = CUPY.batchnorm_relu_backward(backend.xp().asarray(dout), cache)
    for (o, m, v), (ro, rm_, rv_) in zip(got, want):
        assert o.shape == x.shape and o.flags.c_contiguous
        np.testing.assert_allclose(backend.to_numpy(o), ro, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(v), rv_, rtol=1e-5, atol=1e-6)
    rdx, rdg, rdb = NUMPY.batchnorm_relu_backward(dout, rcache)
    assert dx.shape == x.shape and dx.flags.c_contiguous
    for got_, want_ in ((dx, rdx), (dg, rdg), (db, rdb)):
        np.testing.assert_allclose(backend.to_numpy(got_), want_, rtol=1e-4, atol=1e-5)
    assert cache["cudnn"] and [k.op for k in ex.builds] == ["bn_train", "bn_bwd"]
    assert all(k.x_strides[1] == 1 for k in ex.builds)  # channels innermost
    assert (
        len(CUDNN.cache.disabled) == 1 and len([r for r in caplog.records if "cuDNN off" in r.message]) == 1
    )


@pytest.mark.emulated
def test_without_cudnn_batch_norm_says_the_fallback_once(monkeypatch, caplog):
    monkeypatch.setattr(CUDNN, "executor", None)
    monkeypatch.setattr(CUDNN, "_said", set())
    x, g, b, rm, rv = _bn_arrays()
    with backend.using("emulated") as xp, caplog.at_level(logging.INFO, "gpunet"):
        for _ in range(3):
            CUPY.batchnorm_relu_forward(*(xp.asarray(v.copy()) for v in (x, g, b, rm, rv)), True, MOM, EPS, 1)
    said = [r.message for r in caplog.records if "reference kernels" in r.message]
    assert said == ["batchnorm: reference kernels: the emulated GPU has no cuDNN"]


@pytest.mark.emulated
def test_inside_a_graph_capture_an_unchecked_norm_key_takes_the_reference(standin, monkeypatch):
    from gpunet.ops import cudnn

    ex = standin()
    x, g, b, rm, rv = _bn_arrays()
    xp = backend.xp()
    monkeypatch.setattr(cudnn, "_capturing", lambda: True)
    out, cache = CUPY.batchnorm_forward(*(xp.asarray(v) for v in (x, g, b, rm, rv)), True, MOM, EPS, 1)
    assert ex.builds == [] and "cudnn" not in cache and not CUDNN.cache.disabled


# ---------------------------------------------------------------- the real frontend, without a driver


def _frontend():
    try:
        import cudnn  # noqa: F401 - the [cuda12x]/[cuda13x] extra's nvidia-cudnn-frontend
    except Exception as e:  # noqa: BLE001 - not installed, or its library does not load
        pytest.skip(f"cuDNN frontend not importable here ({type(e).__name__})")
    return cudnn


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("op", ["bn_train", "bn_infer", "bn_bwd"])
@pytest.mark.parametrize("axis", [1, 0])
def test_each_norm_graph_declares_on_the_real_frontend(op, relu, axis):
    """``NormKey.declare`` on ``cudnn.pygraph`` and ``validate()``; without a driver the frontend stops
    where it lowers the graph to the library (that error is accepted, a Python-side one is not)."""
    c = _frontend()
    x = np.zeros((8, 32, 12, 12) if axis == 1 else (32, 8, 12, 12), np.float32)
    key = norm_key(op, x, axis, 1e-5, relu)
    g = c.pygraph(
        io_data_type=c.data_type.FLOAT,
        intermediate_data_type=c.data_type.FLOAT,
        compute_data_type=c.data_type.FLOAT,
    )
    t = key.declare(c, g, c.data_type.FLOAT)
    assert {"X", "scale"} <= set(t)
    try:
        g.validate()
    except Exception as e:  # noqa: BLE001 - only the missing driver is expected here
        text = f"{type(e).__name__}: {e}"
        if not any(w in text for w in ("driver", "cuInit", "CUDA_ERROR", "libcuda")):
            raise


# ---------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(128, 32, 48, 48), (128, 64, 24, 24), (7, 5, 9, 11)])
def test_cudnn_batch_norm_matches_numpy_on_the_gpu(relu, axis, shape):
    if not backend.gpu_available():
        pytest.skip(f"no usable GPU: {backend.gpu_unavailable_reason()}")
    with backend.using("cupy") as xp:
        why = CUDNN.unavailable()
        if why:
            pytest.skip(why)
        n, c, h, w = shape
        rng = np.random.default_rng(4)
        x = (rng.standard_normal((n, c, h, w) if axis == 1 else (c, n, h, w)) * 3 + 1).astype(np.float32)
        g, b = (rng.standard_normal(c) + 1).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        rm, rv = rng.standard_normal(c).astype(np.float32), (rng.random(c) + 0.5).astype(np.float32)
        dout = rng.standard_normal(x.shape).astype(np.float32)
        f64 = lambda *a: [v.astype(np.float64) for v in a]  # noqa: E731
        fwd = CUPY.batchnorm_relu_forward if relu else CUPY.batchnorm_forward
        bwd = CUPY.batchnorm_relu_backward if relu else CUPY.batchnorm_backward
        rfwd = NUMPY.batchnorm_relu_forward if relu else NUMPY.batchnorm_forward
        rbwd = NUMPY.batchnorm_relu_backward if relu else NUMPY.batchnorm_backward
        X, G, B, RM, RV = (xp.asarray(v.copy()) for v in (x, g, b, rm, rv))
        x64, g64, b64, rm64, rv64 = f64(x, g, b, rm, rv)
        out, cache = fwd(X, G, B, RM, RV, True, MOM, EPS, axis)
        ref, rcache = rfwd(x64, g64, b64, rm64, rv64, True, MOM, EPS, axis)
        dx, dg, db = bwd(xp.asarray(dout), cache)
        rdx, rdg, rdb = rbwd(dout.astype(np.float64), rcache)
        pairs = [(out, ref), (RM, rm64), (RV, rv64), (dx, rdx), (dg, rdg), (db, rdb)]
        out_i, _ = fwd(X, G, B, RM, RV, False, MOM, EPS, axis)
        ref_i, _ = rfwd(x64, g64, b64, rm64, rv64, False, MOM, EPS, axis)
        pairs.append((out_i, ref_i))
        for i, (got, want) in enumerate(pairs):
            assert disagreement(got, want) < 1e-4, i
        why = {k.describe(): w for k, w in CUDNN.cache.disabled.items() if isinstance(k, NormKey)}
        assert cache.get("cudnn"), f"the training forward did not take cuDNN: {why}"
        wrong = {k: w for k, w in why.items() if w.startswith("first-use")}
        assert not wrong, wrong  # a layout cuDNN refused (then its NHWC copy ran) is not an error


@pytest.mark.emulated
def test_a_model_step_through_cudnn_batch_norm_equals_numpy(standin):
    """Sequential's batch norm layers (the fused op, and plain batch norm before a pool) reach the cuDNN
    path on the emulated GPU (the stand-in builds no convolution: those take im2col); the loss, every
    gradient and the running statistics equal NumPy's."""
    import gpunet.nn as nn

    ex = standin()

    def build():
        return nn.Sequential(
            [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)]
            + [nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)],
            seed=3,
        )

    cpu, gpu = build().to("numpy"), build()  # built on the emulated GPU (the fixture)
    X = RNG.standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = RNG.integers(0, 3, 6)
    xp = backend.xp()
    for _ in range(2):
        (lc, gc), (lg, gg) = cpu.loss(X, y), gpu.loss(xp.asarray(X), xp.asarray(y))
        assert float(lg) == pytest.approx(float(lc), rel=1e-5)
        for k in gc:
            np.testing.assert_allclose(backend.to_numpy(gg[k]), gc[k], rtol=1e-3, atol=1e-5, err_msg=k)
    for k in cpu.buffers:
        np.testing.assert_allclose(backend.to_numpy(gpu.buffers[k]), cpu.buffers[k], rtol=1e-5, atol=1e-6)
    assert sorted((k.op, k.relu) for k in ex.builds) == [
        ("bn_bwd", False),
        ("bn_bwd", True),
        ("bn_train", False),
        ("bn_train", True),
    ]
    assert all(not isinstance(k, NormKey) for k in CUDNN.cache.disabled)  # only the convolutions' keys
