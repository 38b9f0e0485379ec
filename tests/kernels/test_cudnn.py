"""cuDNN convolutions (gpunet.ops.cudnn, issue 21): what CI can run without a GPU, and the GPU parity.

On the CPU: the plan-cache keys, the choice of path (refusal), the fallback said once, and the
first-use self-check, driven on the emulated GPU by a stand-in executor that computes what cuDNN
would by the NumPy reference (or, to test the guard, something wrong). On a GPU (marked ``gpu``):
cuDNN's forward and backward against the NumPy im2col path, with the layouts the model uses.
"""

import logging

import numpy as np
import pytest

from gpunet import backend
from gpunet.ops import CUPY, NUMPY, cudnn
from gpunet.ops.cudnn import CUDNN, PlanCache, dense_layout, nchw, plan_key, refusal

RNG = np.random.default_rng(0)


def _arrays(n=3, c=2, h=7, w=6, f=4, k=3, dtype=np.float32):
    x = RNG.standard_normal((n, c, h, w)).astype(dtype)
    W = (RNG.standard_normal((f, c, k, k)) * 0.3).astype(dtype)
    b = RNG.standard_normal(f).astype(dtype)
    return x, W, b


class StandIn:
    """An executor computing what cuDNN would, by the NumPy reference; ``wrong`` scales its output,
    ``fail`` makes every build raise (an unsupported graph), ``refuse_cnhw`` those of (C, N, H, W) memory."""

    def __init__(self, wrong=1.0, fail=False, refuse_cnhw=False):
        self.wrong, self.fail, self.refuse_cnhw = wrong, fail, refuse_cnhw
        self.builds, self.runs = [], 0

    def build(self, key, arrays):
        cnhw = any(dense_layout(key[i], key[i + 1]) == "CNHW" for i in (1, 5))
        if self.fail or (self.refuse_cnhw and cnhw):
            raise RuntimeError("cudnnGraphNotSupportedError: no engine")
        self.builds.append(key)
        return {"key": key}

    def run(self, plan, arrays):
        key, self.runs = plan["key"], self.runs + 1
        a = {k: backend.to_numpy(v) for k, v in arrays.items()}
        lay = "NCHW" if tuple(arrays["X"].shape) == key.x_dims else "CNHW"  # the call's axis order
        s, p = key.stride, key.padding
        if key.op == "fprop":
            zero = np.zeros(a["W"].shape[0], a["W"].dtype)
            arrays["Y"][...] = NUMPY.conv2d_forward(a["X"], a["W"], zero, s, p, None, lay) * self.wrong
        else:
            like = a["X"] if key.op == "wgrad" else np.zeros(arrays["X"].shape, arrays["X"].dtype)
            zero = np.zeros(a["W"].shape[0], a["W"].dtype)
            dx, dw, _ = NUMPY.conv2d_backward(a["Y"], like, a["W"], zero, s, p, None, True, lay)
            out = "W" if key.op == "wgrad" else "X"
            arrays[out][...] = (dw if key.op == "wgrad" else dx) * self.wrong


@pytest.fixture
def standin(monkeypatch):
    """The emulated GPU with a stand-in cuDNN executor and a fresh cache; yields a factory."""
    monkeypatch.setattr(CUDNN, "cache", PlanCache())
    monkeypatch.setattr(CUDNN, "_said", set())
    monkeypatch.setattr(CUDNN, "enabled", True)
    with backend.using("emulated"):

        def install(*a, **kw):
            ex = StandIn(*a, **kw)
            monkeypatch.setattr(CUDNN, "executor", ex)
            return ex

        yield install


# ---------------------------------------------------------------- pure Python: keys, layouts, cache


def test_layouts_and_keys_follow_the_memory_not_the_shape():
    x = np.zeros((2, 3, 5, 4), np.float32)
    assert nchw(x, "NCHW") == ((2, 3, 5, 4), (60, 20, 4, 1)) and dense_layout(*nchw(x, "NCHW")) == "NCHW"
    cnhw = np.zeros((3, 2, 5, 4), np.float32)  # (C, N, H, W) packed
    assert (
        nchw(cnhw, "CNHW") == ((2, 3, 5, 4), (20, 40, 4, 1)) and dense_layout(*nchw(cnhw, "CNHW")) == "CNHW"
    )
    # the model's first layer: an NCHW batch seen as a CNHW view is packed NCHW memory
    assert dense_layout(*nchw(x.transpose(1, 0, 2, 3), "CNHW")) == "NCHW"
    assert dense_layout(*nchw(x[:, :, ::2], "NCHW")) is None  # strided rows: not packed
    assert dense_layout(*nchw(np.zeros((2, 3, 5, 4), np.float32).transpose(0, 2, 3, 1), "NCHW")) is None
    W = np.zeros((4, 3, 3, 3), np.float32)
    y = np.zeros((2, 4, 5, 4), np.float32)
    k1 = plan_key("fprop", x, W, y, 1, 1, "NCHW")
    assert k1 == plan_key("fprop", x.copy(), W.copy(), y.copy(), 1, 1, "NCHW")  # equal geometry: one plan
    assert len({k1, k1._replace(op="dgrad"), plan_key("fprop", x, W, y, 1, 0, "NCHW")}) == 3
    k_view = plan_key("fprop", x.transpose(1, 0, 2, 3), W, y.transpose(1, 0, 2, 3), 1, 1, "CNHW")
    assert k_view.x_dims == k1.x_dims and k_view.x_strides == k1.x_strides  # same memory, same key
    assert plan_key("fprop", x.astype(np.float16), W.astype(np.float16), y, 1, 1, "NCHW").dtype == "float16"
    assert hash(k1) == hash(plan_key("fprop", x, W, y, 1, 1, "NCHW"))


def test_plan_cache_builds_once_drops_the_oldest_and_remembers_disabled_keys():
    cache, built = PlanCache(max_plans=2), []
    build = lambda k: lambda: built.append(k) or f"plan {k}"  # noqa: E731
    assert cache.get("a", build("a")) == "plan a" and cache.get("a", build("a")) == "plan a"
    cache.get("b", build("b"))
    cache.get("a", build("a"))  # a is now the most recent
    cache.get("c", build("c"))  # drops b
    assert built == ["a", "b", "c"] and "b" not in cache and "a" in cache and len(cache) == 2
    assert cache.disable("a", "wrong") and not cache.disable("a", "again")
    assert "a" not in cache and cache.disabled == {"a": "again"}


def test_refusal_names_dtype_layout_and_missing_cudnn(monkeypatch):
    x, W, _ = _arrays()
    monkeypatch.setattr(CUDNN, "executor", object())  # "available"
    monkeypatch.setattr(CUDNN, "enabled", True)
    assert refusal(x, W, 1, 1, "NCHW") is None
    assert refusal(x.transpose(1, 0, 2, 3), W, 1, 1, "CNHW") is None
    assert "float32 or float16" in refusal(x.astype(np.float64), W.astype(np.float64), 1, 1, "NCHW")
    assert "float32 or float16" in refusal(x, W.astype(np.float16), 1, 1, "NCHW")
    assert "W is not contiguous" in refusal(x, np.asfortranarray(W), 1, 1, "NCHW")
    assert "X is not packed" in refusal(x[:, :, ::2], W, 1, 1, "NCHW")
    assert "dout is not packed" in refusal(
        x, W, 1, 1, "NCHW", dout=np.zeros((3, 4, 14, 6), np.float32)[:, :, ::2]
    )
    flat = np.zeros(x.size + 1, np.float32)
    flat[1:] = x.ravel()
    offset = flat[1:].reshape(x.shape)  # packed, at 4 bytes past an aligned address
    assert "X is not 16-byte aligned" in refusal(offset, W, 1, 1, "NCHW")
    monkeypatch.setattr(CUDNN, "enabled", False)
    assert "GPUNET_CUDNN=0" in refusal(x, W, 1, 1, "NCHW")
    monkeypatch.setattr(CUDNN, "enabled", True)
    monkeypatch.setattr(CUDNN, "executor", None)
    with backend.using("emulated"):
        assert refusal(x, W, 1, 1, "NCHW") == "the emulated GPU has no cuDNN"


# ---------------------------------------------------------------- the emulated GPU with a stand-in executor


@pytest.mark.emulated
def test_without_cudnn_the_fallback_is_said_once(monkeypatch, caplog):
    monkeypatch.setattr(CUDNN, "executor", None)
    monkeypatch.setattr(CUDNN, "_said", set())
    x, W, b = _arrays()
    with backend.using("emulated") as xp, caplog.at_level(logging.INFO, "gpunet"):
        for _ in range(3):
            out = CUPY.conv2d_forward(xp.asarray(x), xp.asarray(W), xp.asarray(b), 1, 1)
    said = [r.message for r in caplog.records if "im2col" in r.message]
    assert said == ["conv2d: im2col + cuBLAS path: the emulated GPU has no cuDNN"]
    np.testing.assert_allclose(
        backend.to_numpy(out), NUMPY.conv2d_forward(x, W, b, 1, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.emulated
@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_cudnn_path_matches_numpy_and_builds_each_plan_once(standin, layout, stride, padding):
    ex = standin()
    x, W, b = _arrays()
    ref_out = NUMPY.conv2d_forward(x, W, b, stride, padding)
    dout = RNG.standard_normal(ref_out.shape).astype(np.float32)
    rdx, rdw, rdb = NUMPY.conv2d_backward(dout, x, W, b, stride, padding)
    swap = (lambda a: a.transpose(1, 0, 2, 3)) if layout == "CNHW" else (lambda a: a)  # noqa: E731
    xp = backend.xp()
    X, Wd, bd = xp.asarray(x), xp.asarray(W), xp.asarray(b)
    for _ in range(2):  # second time: the cached plans, no new build
        out = CUPY.conv2d_forward(swap(X), Wd, bd, stride, padding, None, layout)
        dx, dw, db = CUPY.conv2d_backward(
            xp.asarray(np.ascontiguousarray(swap(dout))), swap(X), Wd, bd, stride, padding, None, True, layout
        )
        np.testing.assert_allclose(swap(backend.to_numpy(out)), ref_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(swap(backend.to_numpy(dx)), rdx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(dw), rdw, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(db), rdb, rtol=1e-5, atol=1e-5)
    assert sorted(k.op for k in ex.builds) == ["dgrad", "fprop", "wgrad"] and ex.runs == 6
    assert len(CUDNN.cache.checked) == 3 and not CUDNN.cache.disabled


@pytest.mark.emulated
def test_a_plan_that_disagrees_on_first_use_is_disabled_and_said(standin, caplog):
    ex = standin(wrong=1.01)  # 1% off: beyond the float32 tolerance
    x, W, b = _arrays()
    xp = backend.xp()
    with caplog.at_level(logging.INFO, "gpunet"):
        for _ in range(2):
            out = CUPY.conv2d_forward(xp.asarray(x), xp.asarray(W), xp.asarray(b), 1, 1)
            np.testing.assert_allclose(
                backend.to_numpy(out), NUMPY.conv2d_forward(x, W, b, 1, 1), rtol=1e-5, atol=1e-5
            )
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "first-use check" in r.message]
    assert len(warned) == 1 and "cuDNN off for fprop float32" in warned[0].message
    assert len(ex.builds) == 1 and ex.runs == 1  # never run again once disabled
    assert list(CUDNN.cache.disabled)[0].op == "fprop"


@pytest.mark.emulated
def test_an_unsupported_graph_falls_back_once(standin, caplog):
    standin(fail=True)
    x, W, b = _arrays()
    xp = backend.xp()
    dout = RNG.standard_normal((3, 4, 7, 6)).astype(np.float32)
    with caplog.at_level(logging.INFO, "gpunet"):
        for _ in range(2):
            dx, dw, db = CUPY.conv2d_backward(
                xp.asarray(dout), xp.asarray(x), xp.asarray(W), xp.asarray(b), 1, 1
            )
    rdx, rdw, rdb = NUMPY.conv2d_backward(dout, x, W, b, 1, 1)
    np.testing.assert_allclose(backend.to_numpy(dx), rdx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(dw), rdw, rtol=1e-5, atol=1e-5)
    off = [r.message for r in caplog.records if "cuDNN off" in r.message]
    assert len(off) == 1 and "no engine" in off[0]  # wgrad failed first; dgrad never tried


# ---------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float16, 2e-2)])
@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
@pytest.mark.parametrize(
    "shape", [(8, 3, 48, 48, 32, 1, 1), (16, 32, 24, 24, 64, 1, 1), (4, 5, 9, 11, 7, 2, 0)]
)
def test_cudnn_matches_numpy_on_the_gpu(dtype, tol, layout, shape):
    if not backend.gpu_available():
        pytest.skip(f"no usable GPU: {backend.gpu_unavailable_reason()}")
    with backend.using("cupy") as xp:
        _gpu_parity(xp, dtype, tol, layout, shape)


def _gpu_parity(xp, dtype, tol, layout, shape):
    why = CUDNN.unavailable()
    if why:
        pytest.skip(why)  # the [cuda12x]/[cuda13x] extra brings the frontend and the library
    n, c, h, w, f, stride, padding = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    W = (rng.standard_normal((f, c, 3, 3)) * 0.2).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    x64, W64, b64 = (a.astype(np.float64) for a in (x, W, b))
    ref = NUMPY.conv2d_forward(x64, W64, b64, stride, padding)
    dout = rng.standard_normal(ref.shape).astype(dtype)
    rdx, rdw, rdb = NUMPY.conv2d_backward(dout.astype(np.float64), x64, W64, b64, stride, padding)
    swap = (lambda a: a.transpose(1, 0, 2, 3)) if layout == "CNHW" else (lambda a: a)  # noqa: E731
    X = xp.asarray(x)
    before = len(CUDNN.cache.checked)
    out = CUPY.conv2d_forward(swap(X), xp.asarray(W), xp.asarray(b), stride, padding, None, layout)
    dx, dw, db = CUPY.conv2d_backward(
        xp.ascontiguousarray(swap(xp.asarray(dout))),
        swap(X),
        xp.asarray(W),
        xp.asarray(b),
        stride,
        padding,
        None,
        True,
        layout,
    )
    for got, want in ((swap(out), ref), (swap(dx), rdx), (dw, rdw), (db, rdb)):
        got = backend.to_numpy(got).astype(np.float64)
        assert cudnn.disagreement(got, want) < tol
    assert not CUDNN.cache.disabled, CUDNN.cache.disabled  # every plan passed its first-use check
    assert len(CUDNN.cache.checked) >= before  # (cached keys from an earlier case count too)


@pytest.mark.emulated
def test_inside_a_graph_capture_nothing_is_built_checked_or_disabled(standin, monkeypatch):
    """In a capture only keys built and checked before it run; nothing is built, checked or disabled there."""
    ex = standin()
    x, W, b = _arrays()
    xp = backend.xp()
    args = (xp.asarray(x), xp.asarray(W), xp.asarray(b), 1, 1)
    monkeypatch.setattr(cudnn, "_capturing", lambda: True)
    CUPY.conv2d_forward(*args)  # a new key while capturing: im2col, no plan built
    assert ex.builds == [] and not CUDNN.cache.disabled
    monkeypatch.setattr(cudnn, "_capturing", lambda: False)
    CUPY.conv2d_forward(*args)  # eager: built and checked
    assert len(ex.builds) == 1 and len(CUDNN.cache.checked) == 1
    monkeypatch.setattr(cudnn, "_capturing", lambda: True)
    CUDNN.cache.checked.clear()  # built but not checked (as after an error in its check): not run in capture
    runs = ex.runs
    CUPY.conv2d_forward(*args)
    assert ex.runs == runs and len(ex.builds) == 1
    monkeypatch.setattr(cudnn, "_capturing", lambda: False)
    CUPY.conv2d_forward(*args)  # eager: checked now
    assert ex.runs == runs + 1 and len(CUDNN.cache.checked) == 1
    monkeypatch.setattr(cudnn, "_capturing", lambda: True)
    CUPY.conv2d_forward(*args)  # checked: runs inside the capture
    assert ex.runs == runs + 2
    monkeypatch.setattr(ex, "run", lambda plan, arrays: 1 / 0)
    out = CUPY.conv2d_forward(*args)  # a failure inside the capture: im2col, the key stays on
    assert not CUDNN.cache.disabled
    np.testing.assert_allclose(
        backend.to_numpy(out), NUMPY.conv2d_forward(x, W, b, 1, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.emulated
def test_a_refused_cnhw_layout_runs_on_nchw_copies(standin, caplog):
    """cuDNN refusing (C, N, H, W) memory: the same call runs on NCHW-packed copies, results unchanged."""
    ex = standin(refuse_cnhw=True)
    x, W, b = _arrays()
    xp = backend.xp()
    Xc = xp.ascontiguousarray(xp.asarray(x).transpose(1, 0, 2, 3))  # (C, N, H, W) packed, as between convs
    ref = NUMPY.conv2d_forward(x, W, b, 1, 1)
    dout = RNG.standard_normal(ref.shape).astype(np.float32)
    rdx, rdw, rdb = NUMPY.conv2d_backward(dout, x, W, b, 1, 1)
    dc = xp.ascontiguousarray(xp.asarray(dout).transpose(1, 0, 2, 3))
    with caplog.at_level(logging.INFO, "gpunet"):
        for _ in range(2):
            out = CUPY.conv2d_forward(Xc, xp.asarray(W), xp.asarray(b), 1, 1, None, "CNHW")
            dx, dw, db = CUPY.conv2d_backward(dc, Xc, xp.asarray(W), xp.asarray(b), 1, 1, None, True, "CNHW")
    assert out.shape == (4, 3, 7, 6) and out.flags.c_contiguous and dx.flags.c_contiguous
    np.testing.assert_allclose(backend.to_numpy(out).transpose(1, 0, 2, 3), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(dx).transpose(1, 0, 2, 3), rdx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(dw), rdw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(db), rdb, rtol=1e-5, atol=1e-5)
    assert sorted(k.op for k in ex.builds) == ["dgrad", "fprop", "wgrad"]
    assert all(dense_layout(k.x_dims, k.x_strides) == "NCHW" for k in ex.builds)
    assert len(CUDNN.cache.disabled) == 2  # the CNHW fprop and wgrad keys, each said once
    assert len([r for r in caplog.records if "cuDNN off" in r.message]) == 2


class _Frontend132Graph:
    """The plan-selection rules of cuDNN frontend 1.32's ``pygraph``: ``select_plan`` unbuilds the graph,
    ``get_workspace_size`` refuses an unbuilt one, ``build_plans`` builds the pinned plan."""

    def __init__(self, times):
        self.times, self.built, self.selected, self.runs = times, True, 0, []

    def get_execution_plan_count(self):
        return len(self.times)

    def get_workspace_size_plan_at_index(self, i):
        return 16 * i

    def execute_plan_at_index(self, pack, ws, index, handle):
        self.runs.append(index)

    def select_plan(self, i):
        self.selected, self.built = i, False

    def build_plans(self, *policy):
        self.built = True

    def get_workspace_size(self):
        if not self.built:
            raise RuntimeError("Call build() first")
        return 16 * self.selected


@pytest.mark.emulated
def test_autotune_leaves_the_fastest_plan_built(monkeypatch):
    """Autotune selects the fastest engine and leaves it built, so the plan's workspace can be sized and
    it can run (frontend 1.32 unbuilds a graph on ``select_plan``)."""
    times = [3.0, 1.0, 2.0]
    g = _Frontend132Graph(times)
    fe = cudnn.Frontend.__new__(cudnn.Frontend)
    monkeypatch.setattr(cudnn.Frontend, "handle", lambda self: None)
    monkeypatch.setattr(cudnn.Frontend, "_pack", lambda self, plan, arrays: {})
    with backend.using("emulated") as xp:
        monkeypatch.setattr(xp.cuda, "get_elapsed_time", lambda a, b: times[g.runs[-1]], raising=False)
        fe.autotune({"graph": g, "tensors": {}}, {})
    assert g.selected == 1 and g.get_workspace_size() == 16
