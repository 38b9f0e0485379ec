"""Every layer function and update rule on non-contiguous inputs, on every backend (issue 19).

As in Chainer's function tests, the awkward layout is the normal case: each input is given as
a transposed view, a strided slice, or a view that starts one element into its buffer, and the
result must equal the NumPy path on plain contiguous copies (float64, so only the order of sums
may differ). On the emulated GPU and on CuPy this drives the fast paths (the bias, ReLU, dropout,
softmax and optimizer kernels, the one-launch update) with those views.
"""

import numpy as np
import pytest

from gpunet import backend, multi_tensor, optim
from gpunet.layers import (
    batchnorm_backward,
    batchnorm_forward,
    conv2d_backward,
    conv2d_forward,
    dropout_backward,
    dropout_forward,
    linear_backward,
    linear_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)

LAYOUTS = ["transposed", "strided", "offset"]


def view(xp, a, how):
    """``a``'s values as a view of another buffer: ``transposed`` (F order), ``strided`` (every other
    element of its last axis) or ``offset`` (contiguous, starting one element into its buffer)."""
    a = np.asarray(a)
    if how == "transposed":
        v = xp.asarray(np.ascontiguousarray(a.T)).T
    elif how == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        v = xp.asarray(big)[..., ::2]
    else:
        big = np.zeros(a.size + 1, a.dtype)
        big[1:] = a.ravel()
        v = xp.asarray(big)[1:].reshape(a.shape)
    assert how == "offset" or a.ndim < 2 and how == "transposed" or not v.flags.c_contiguous
    np.testing.assert_array_equal(backend.to_numpy(v), a)
    return v


def host(a):
    return None if a is None else backend.to_numpy(a)


def same(got, want, tol=1e-10):
    """Results of the backend under test against the NumPy reference (tuples compared item by item)."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w, tol)
        return
    if want is None:
        assert got is None
        return
    np.testing.assert_allclose(host(got), want, rtol=tol, atol=tol)


@pytest.fixture
def r():
    return np.random.default_rng(19)


def reference(f, *arrays, **kw):
    """``f`` on NumPy, on contiguous float64 copies."""
    with backend.using("numpy"):
        out = f(*[np.array(a) if isinstance(a, np.ndarray) else a for a in arrays], **kw)
    return tuple(host(o) if o is not None else None for o in out) if isinstance(out, tuple) else host(out)


# ------------------------------------------------------------------ layers


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("relu", [False, True])
def test_linear(xp, r, how, relu):
    X, W, b, dout = (
        r.standard_normal((6, 5)),
        r.standard_normal((5, 4)),
        r.standard_normal(4),
        r.standard_normal((6, 4)),
    )
    b[:2] = 0.0
    same(
        linear_forward(view(xp, X, how), view(xp, W, how), view(xp, b, how), relu=relu),
        reference(linear_forward, X, W, b, relu=relu),
    )
    same(
        linear_backward(view(xp, dout, how), view(xp, X, how), view(xp, W, how), view(xp, b, how)),
        reference(linear_backward, dout, X, W, b),
    )


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_relu(xp, r, how, scale):
    X, dout = r.standard_normal((7, 6)), r.standard_normal((7, 6))
    same(relu_forward(view(xp, X, how)), reference(relu_forward, X))
    x = view(xp, X, how)
    relu_forward(x, out=x)  # in place on a view
    same(x, np.maximum(X, 0))
    a = np.maximum(X, 0)
    want = reference(relu_backward, dout, a, scale=scale)
    same(relu_backward(view(xp, dout, how), view(xp, a, how), scale=scale), want)
    d = view(xp, dout, how)
    out = relu_backward(d, view(xp, a, how), out=d, scale=scale)  # the fused kernel's path
    same(out, want)
    same(d, want)


@pytest.mark.parametrize("how", LAYOUTS)
def test_dropout(xp, r, how):
    X, dout, p = r.standard_normal((8, 6)), r.standard_normal((8, 6)), 0.25
    got, mask = dropout_forward(view(xp, X, how), p, seed=3)  # the coursework's seeded mask
    want, want_mask = reference(dropout_forward, X, p, seed=3)
    same(got, want)
    same(mask, want_mask)
    same(dropout_backward(view(xp, dout, how), view(xp, want_mask, how), p), dout * want_mask)
    x = view(xp, X, how)
    out, none = dropout_forward(x, p, rng=backend.default_rng(0), out=x)  # in place (the GPU kernel)
    got = host(out)
    kept = got != 0
    assert none is None and out is x and 0.5 < kept.mean() < 0.95
    np.testing.assert_allclose(got[kept], X[kept] / (1 - p), rtol=1e-12)


def test_dropout_into_another_buffer(xp, r):
    """``out`` other than X: the in-place kernel must not run (it would scale out's old contents)."""
    X = r.standard_normal((8, 6))
    out = xp.asarray(np.full(X.shape, 7.0))
    dropout_forward(xp.asarray(X), 0.25, rng=backend.default_rng(0), out=out)
    got = host(out)
    kept = got != 0
    np.testing.assert_allclose(got[kept], X[kept] / 0.75, rtol=1e-12)


@pytest.mark.parametrize("how", LAYOUTS)
def test_softmax_loss(xp, r, how):
    logits, y = r.standard_normal((9, 5)), r.integers(0, 5, 9)
    loss, d = softmax_loss(view(xp, logits, how), view(xp, y, how if how != "transposed" else "strided"))
    want_loss, want_d = reference(softmax_loss, logits, y)
    same(d, want_d)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-12)


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
def test_conv2d(xp, r, how, layout):
    X = r.standard_normal((3, 2, 6, 5) if layout == "NCHW" else (2, 3, 6, 5))
    W, b = r.standard_normal((4, 2, 3, 3)), r.standard_normal(4)
    out = reference(conv2d_forward, X, W, b, 1, 1, layout=layout)
    dout = r.standard_normal(out.shape)
    same(conv2d_forward(view(xp, X, how), view(xp, W, how), view(xp, b, how), 1, 1, layout=layout), out)
    got = conv2d_backward(
        view(xp, dout, how), view(xp, X, how), view(xp, W, how), view(xp, b, how), 1, 1, layout=layout
    )
    same(got, reference(conv2d_backward, dout, X, W, b, 1, 1, layout=layout))
    assert got[1].flags.c_contiguous and got[2].flags.c_contiguous  # gradients are plain arrays


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("size, stride", [(2, None), (3, 2)])
def test_max_pool(xp, r, how, size, stride):
    X = r.standard_normal((2, 3, 8, 8))
    out = reference(max_pool2d_forward, X, size, stride)
    dout = r.standard_normal(out.shape)
    cache = {}
    same(max_pool2d_forward(view(xp, X, how), size, stride, cache=cache), out)
    same(
        max_pool2d_backward(view(xp, dout, how), view(xp, X, how), size, stride, cache=cache),
        reference(max_pool2d_backward, dout, X, size, stride),
    )


@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("shape, axis", [((6, 5), 1), ((3, 4, 5, 2), 1), ((4, 3, 5, 2), 0)])
def test_batchnorm(xp, r, how, shape, axis):
    X, dout = r.standard_normal(shape) * 2 + 1, r.standard_normal(shape)
    C = shape[axis]
    gamma, beta = r.standard_normal(C), r.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    want, cache = reference(batchnorm_forward, X, gamma, beta, rm.copy(), rv.copy(), axis=axis)
    got, c = batchnorm_forward(
        view(xp, X, how), view(xp, gamma, how), view(xp, beta, how), xp.asarray(rm), xp.asarray(rv), axis=axis
    )
    same(got, want)
    with backend.using("numpy"):
        _, ref_cache = batchnorm_forward(X, gamma, beta, rm.copy(), rv.copy(), axis=axis)
        want_grads = tuple(host(g) for g in batchnorm_backward(dout, ref_cache))
    same(batchnorm_backward(view(xp, dout, how), c), want_grads)


# ------------------------------------------------------------------ update rules

RULES = ["sgd", "sgd_momentum", "nesterov", "rmsprop", "adam"]


def _steps(params, grads_per_step, rule, multi_tensor=True):
    opt = optim.Optimizer(rule, {"weight_decay": 0.01, "learning_rate": 0.01})
    opt.multi_tensor = multi_tensor
    for k, grads in enumerate(grads_per_step):
        opt.step(params, grads, 0.01 / (k + 1))
    return opt


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("how", LAYOUTS)
@pytest.mark.parametrize("one_launch", [True, False])
def test_update_rules_on_strided_gradients(xp, r, rule, how, one_launch):
    """The defect of issue 19: a gradient that is a view (a conv's dW is a slice of [dW | db])."""
    shapes = {"W": (4, 3, 3, 3), "b": (4,), "V": (5, 6)}
    w0 = {k: r.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: r.standard_normal(s) for k, s in shapes.items()} for _ in range(3)]
    want = {k: v.copy() for k, v in w0.items()}
    with backend.using("numpy"):
        _steps(want, grads, rule)
    got = {k: xp.asarray(v) for k, v in w0.items()}
    _steps(got, [{k: view(xp, g, how) for k, g in gs.items()} for gs in grads], rule, one_launch)
    for k in shapes:
        same(got[k], want[k], 1e-9)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("how", ["transposed", "strided"])
def test_update_rules_on_strided_weights(xp, r, rule, how):
    """Weights that are views cannot take the one-launch update: the rule runs per parameter."""
    w0, g = r.standard_normal((6, 4)), r.standard_normal((6, 4))
    want = {"W": w0.copy()}
    with backend.using("numpy"):
        _steps(want, [{"W": g}] * 2, rule)
    got = {"W": view(xp, w0, how)}
    opt = _steps(got, [{"W": xp.asarray(g)}] * 2, rule)
    assert not opt._use_multi(got)
    same(got["W"], want["W"], 1e-9)


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_gradient_sharing_memory_with_a_weight(xp, r, rule):
    """A gradient that overlaps what the update writes is read before anything is written."""
    w0 = r.standard_normal(12)
    buf = xp.asarray(np.concatenate([w0, w0]))
    want = {"W": w0.copy()}
    with backend.using("numpy"):
        _steps(want, [{"W": w0.copy()}], rule)
    got = {"W": buf[:12]}
    _steps(got, [{"W": buf[:12]}], rule)  # the gradient is the weight itself
    same(got["W"], want["W"], 1e-9)


# ------------------------------------------------------------------ the one-launch update's checks


def test_refusal_names_what_the_kernel_would_misread():
    w = np.zeros((4, 3))
    assert multi_tensor.refusal([[w, w, np.zeros((4, 3))]]) is None
    assert "not C-contiguous" in multi_tensor.refusal([[w, w, np.zeros((3, 4)).T]])
    assert "float32" in multi_tensor.refusal([[w, w], [w, np.zeros(3, np.float32)]])
    assert "shape" in multi_tensor.refusal([[w, w, np.zeros(12)]])
    assert "shares memory" in multi_tensor.refusal([[w, w, w]])
    assert "int64" in multi_tensor.refusal([[w, np.zeros(3, np.int64)]])


def test_table_rows_refuses_a_strided_gradient():
    w, g = np.zeros((8, 9)), np.zeros((8, 10))[:, :-1]
    with pytest.raises(ValueError, match="gradient of parameter 0 is not a C-contiguous"):
        multi_tensor.table_rows([[g, w]])


def test_safe_gradients_copies_only_what_it_must():
    w = np.zeros((8, 9))
    plain, strided = np.ones((8, 9)), np.ones((8, 10))[:, :-1]
    half = np.ones((8, 9), np.float32)
    fixed = multi_tensor.safe_gradients(
        np, [[plain, w], [strided, np.zeros((8, 9))], [half, np.zeros((8, 9))], [w, w]]
    )
    assert fixed[0][0] is plain
    assert fixed[1][0] is not strided and fixed[1][0].flags.c_contiguous
    np.testing.assert_array_equal(fixed[1][0], strided)
    assert fixed[2][0].dtype == np.float64
    assert fixed[3][0] is not w and not np.shares_memory(fixed[3][0], w)
    with pytest.raises(ValueError, match="gradient of shape"):
        multi_tensor.safe_gradients(np, [[np.ones(3), w]])


# ------------------------------------------------------------------ other awkward inputs


def test_bias_of_another_dtype(xp, r):
    """The fused bias kernel has one type T: a float64 bias for float32 activations takes the plain path."""
    X, W, b = (
        r.standard_normal((6, 5)).astype(np.float32),
        r.standard_normal((5, 4)).astype(np.float32),
        r.standard_normal(4),
    )
    for relu in (False, True):
        got = linear_forward(xp.asarray(X), xp.asarray(W), xp.asarray(b), relu=relu)
        want = reference(linear_forward, X, W, b, relu=relu)
        assert got.dtype == want.dtype
        same(got, want, 1e-6)


def test_relu_backward_of_another_dtype(xp, r):
    a, dout = r.standard_normal((5, 4)), r.standard_normal((5, 4)).astype(np.float32)
    d = xp.asarray(dout.copy())  # changed in place
    out = relu_backward(d, xp.asarray(a), out=d, scale=2.0)
    same(out, reference(relu_backward, dout, a, scale=2.0), 1e-6)


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
def test_coursework_rules_on_views(xp, r, rule):
    """``next_w, config = rule(w, dw, config)`` with a transposed w and a strided dw."""
    w, dw = r.standard_normal((4, 6)), r.standard_normal((4, 6))
    want, cfg = reference(lambda a, b: getattr(optim, rule)(a, b, config={}), w, dw)
    got, config = getattr(optim, rule)(view(xp, w, "transposed"), view(xp, dw, "strided"), config={})
    same(got, want)
    same(view(xp, w, "transposed"), w)  # the coursework form leaves w alone


@pytest.mark.parametrize("how", LAYOUTS)
def test_max_pool_relu_is_relu_then_pool(xp, r, how):
    """The named fusion: relu(max(x)) == max(relu(x)); its gradient is the chain's."""
    from gpunet.layers import max_pool2d_relu_backward, max_pool2d_relu_forward

    X = r.standard_normal((2, 3, 8, 8))
    X[0, 0, :2, :2] = -1.0  # a window whose maximum is < 0
    dout = r.standard_normal((2, 3, 4, 4))
    relu_x = np.maximum(X, 0)
    want = reference(max_pool2d_forward, relu_x, 2)
    want_dx = reference(max_pool2d_backward, dout, relu_x, 2) * (X > 0)
    cache = {}
    out = max_pool2d_relu_forward(view(xp, X, how), 2, cache=cache)
    same(out, want)
    same(max_pool2d_relu_backward(view(xp, dout, how), view(xp, X, how), out, 2, cache=cache), want_dx)
