"""Convolution, max pooling and batch norm against independent oracles, on every backend.

Oracles: direct nested loops over output pixels (the definition), central-difference
numerical gradients in float64, and hand-written statistics for batch norm.
"""

import numpy as np
import pytest

from gpunet import backend
from gpunet.layers import (
    batchnorm_backward,
    batchnorm_forward,
    conv2d_backward,
    conv2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from gradcheck import numerical_gradient_array, rel_error


def arr(xp, a):
    return xp.asarray(np.asarray(a))


def naive_conv(X, W, b, stride, pad):
    """The definition, one output value at a time."""
    N, C, H, Wd = X.shape
    F, _, KH, KW = W.shape
    Xp = np.pad(X, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - KH) // stride + 1, (Wd + 2 * pad - KW) // stride + 1
    out = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    patch = Xp[n, :, i * stride : i * stride + KH, j * stride : j * stride + KW]
                    out[n, f, i, j] = (patch * W[f]).sum() + b[f]
    return out


def naive_pool(X, size, stride):
    N, C, H, W = X.shape
    Ho, Wo = (H - size) // stride + 1, (W - size) // stride + 1
    out = np.zeros((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    out[n, c, i, j] = X[
                        n, c, i * stride : i * stride + size, j * stride : j * stride + size
                    ].max()
    return out


CONV_CASES = [(1, 0, 3), (1, 1, 3), (2, 1, 3), (2, 0, 2), (3, 2, 3), (1, 0, 1)]


@pytest.mark.parametrize("stride,pad,k", CONV_CASES)
def test_conv_forward_matches_nested_loops(xp, rng, stride, pad, k):
    X, W, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, k, k)), rng.standard_normal(4)
    out = conv2d_forward(arr(xp, X), arr(xp, W), arr(xp, b), stride=stride, padding=pad)
    np.testing.assert_allclose(
        backend.to_numpy(out), naive_conv(X, W, b, stride, pad), rtol=1e-10, atol=1e-12
    )


def test_conv_rectangular_kernel_and_float32(xp, rng):
    X, W, b = rng.standard_normal((3, 2, 6, 5)), rng.standard_normal((5, 2, 2, 3)), rng.standard_normal(5)
    out = conv2d_forward(
        arr(xp, X.astype(np.float32)), arr(xp, W.astype(np.float32)), arr(xp, b.astype(np.float32)), padding=1
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(out), naive_conv(X, W, b, 1, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,pad,k", CONV_CASES)
def test_conv_backward_gradcheck(xp, rng, stride, pad, k):
    X = arr(xp, rng.standard_normal((2, 2, 6, 5)))
    W = arr(xp, rng.standard_normal((3, 2, k, k)))
    b = arr(xp, rng.standard_normal(3))
    f = lambda: conv2d_forward(X, W, b, stride=stride, padding=pad)
    dout = arr(xp, rng.standard_normal(f().shape))
    cache = {}
    conv2d_forward(X, W, b, stride=stride, padding=pad, cache=cache)
    for c in (cache, None):
        dX, dW, db = conv2d_backward(dout, X, W, b, stride=stride, padding=pad, cache=c)
        # central differences of a sum of ~100 products: ~1e-10 absolute noise, so 1e-6 relative
        assert rel_error(dX, numerical_gradient_array(f, X, dout)) < 1e-6
        assert rel_error(dW, numerical_gradient_array(f, W, dout)) < 1e-6
        assert rel_error(db, numerical_gradient_array(f, b, dout)) < 1e-6
    assert conv2d_backward(dout, X, W, b, stride=stride, padding=pad, need_dx=False)[0] is None


def test_conv_rejects_mismatched_channels(xp):
    with pytest.raises(ValueError, match="channels"):
        conv2d_forward(xp.zeros((1, 3, 5, 5)), xp.zeros((2, 4, 3, 3)), xp.zeros(2))
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_forward(xp.zeros((1, 1, 2, 2)), xp.zeros((2, 1, 3, 3)), xp.zeros(2))


@pytest.mark.parametrize("size,stride", [(2, None), (2, 2), (3, 1), (3, 2), (2, 1)])
def test_pool_forward_matches_nested_loops(xp, rng, size, stride):
    X = rng.standard_normal((2, 3, 7, 8))
    out = max_pool2d_forward(arr(xp, X), size, stride)
    np.testing.assert_array_equal(backend.to_numpy(out), naive_pool(X, size, stride or size))


@pytest.mark.parametrize("size,stride", [(2, None), (3, 1), (3, 2), (2, 1)])
def test_pool_backward_gradcheck(xp, rng, size, stride):
    X = arr(xp, rng.standard_normal((2, 2, 7, 6)))
    f = lambda: max_pool2d_forward(X, size, stride)
    dout = arr(xp, rng.standard_normal(f().shape))
    cache = {}
    max_pool2d_forward(X, size, stride, cache=cache)
    for c in (cache, None):
        dX = max_pool2d_backward(dout, X, size, stride, cache=c)
        assert rel_error(dX, numerical_gradient_array(f, X, dout, h=1e-6)) < 1e-7


def test_pool_ties_send_the_gradient_once(xp):
    X = xp.zeros((1, 1, 2, 2))
    dX = max_pool2d_backward(xp.ones((1, 1, 1, 1)), X, 2)
    assert float(dX.sum()) == 1.0 and float(dX[0, 0, 0, 0]) == 1.0


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 4)])
def test_batchnorm_train_normalises_and_updates_running_stats(xp, rng, shape):
    X = rng.standard_normal(shape) * 3 + 2
    C = shape[1]
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = arr(xp, np.full(C, 0.5)), arr(xp, np.full(C, 2.0))
    out, _ = batchnorm_forward(arr(xp, X), arr(xp, gamma), arr(xp, beta), rm, rv, train=True, momentum=0.8)
    bshape = (1, C) + (1,) * (len(shape) - 2)
    mu, var = X.mean(axis=axes), X.var(axis=axes)
    expected = (X - mu.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-5) * gamma.reshape(
        bshape
    ) + beta.reshape(bshape)
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(backend.to_numpy(rm), 0.8 * 0.5 + 0.2 * mu, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(rv), 0.8 * 2.0 + 0.2 * var, rtol=1e-12)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 4)])
def test_batchnorm_eval_uses_running_stats_and_leaves_them(xp, rng, shape):
    X = rng.standard_normal(shape)
    C = shape[1]
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    rm_d, rv_d = arr(xp, rm.copy()), arr(xp, rv.copy())
    out, cache = batchnorm_forward(arr(xp, X), arr(xp, gamma), arr(xp, beta), rm_d, rv_d, train=False)
    bshape = (1, C) + (1,) * (len(shape) - 2)
    expected = (X - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + 1e-5) * gamma.reshape(
        bshape
    ) + beta.reshape(bshape)
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-10)
    np.testing.assert_array_equal(backend.to_numpy(rm_d), rm)
    np.testing.assert_array_equal(backend.to_numpy(rv_d), rv)
    # train mode gives a different output on the same input (batch statistics)
    out_t, _ = batchnorm_forward(arr(xp, X), arr(xp, gamma), arr(xp, beta), rm_d, rv_d, train=True)
    assert not np.allclose(backend.to_numpy(out_t), expected)


@pytest.mark.parametrize("shape,train", [((5, 4), True), ((3, 2, 4, 3), True), ((3, 2, 4, 3), False)])
def test_batchnorm_backward_gradcheck(xp, rng, shape, train):
    C = shape[1]
    X = arr(xp, rng.standard_normal(shape) * 2 + 1)
    gamma, beta = arr(xp, rng.standard_normal(C)), arr(xp, rng.standard_normal(C))
    rm, rv = arr(xp, rng.standard_normal(C)), arr(xp, rng.random(C) + 0.5)

    def f():  # the running statistics must not drift while differentiating
        return batchnorm_forward(X, gamma, beta, rm.copy(), rv.copy(), train=train)[0]

    dout = arr(xp, rng.standard_normal(shape))
    _, cache = batchnorm_forward(X, gamma, beta, rm.copy(), rv.copy(), train=train)
    dX, dgamma, dbeta = batchnorm_backward(dout, cache)
    assert rel_error(dX, numerical_gradient_array(f, X, dout)) < 1e-6
    assert rel_error(dgamma, numerical_gradient_array(f, gamma, dout)) < 1e-7
    assert rel_error(dbeta, numerical_gradient_array(f, beta, dout)) < 1e-7


@pytest.mark.parametrize("size", [2, 3])
def test_pool_fast_path_on_tiled_inputs(xp, rng, size):
    """Windows that tile the input exactly take the running-maximum path: same values, same gradient."""
    X = arr(xp, rng.standard_normal((2, 3, 4 * size, 2 * size)))
    out = max_pool2d_forward(X, size)
    np.testing.assert_array_equal(backend.to_numpy(out), naive_pool(backend.to_numpy(X), size, size))
    f = lambda: max_pool2d_forward(X, size)
    dout = arr(xp, rng.standard_normal(out.shape))
    cache = {}
    max_pool2d_forward(X, size, cache=cache)
    for c in (cache, None):
        assert (
            rel_error(
                max_pool2d_backward(dout, X, size, cache=c), numerical_gradient_array(f, X, dout, h=1e-6)
            )
            < 1e-7
        )


def test_pool_fast_path_ties_go_to_the_first_maximum(xp):
    X = xp.asarray(np.array([[[[1.0, 1.0], [1.0, 0.0]]]]))
    dX = backend.to_numpy(max_pool2d_backward(xp.ones((1, 1, 1, 1)), X, 2))
    np.testing.assert_array_equal(dX[0, 0], [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 0)])
def test_conv_channel_major_layout_matches_nchw(xp, rng, stride, pad):
    """layout='CNHW' (what gpunet.nn uses between convolutions) is the same convolution, transposed."""
    X, W, b = rng.standard_normal((3, 2, 6, 7)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    Xd, Wd, bd = arr(xp, X), arr(xp, W), arr(xp, b)
    ref = conv2d_forward(Xd, Wd, bd, stride, pad)
    out = conv2d_forward(Xd.transpose(1, 0, 2, 3), Wd, bd, stride, pad, layout="CNHW")
    np.testing.assert_allclose(backend.to_numpy(out).transpose(1, 0, 2, 3), backend.to_numpy(ref), rtol=1e-12)
    dout = rng.standard_normal(ref.shape)
    dX, dW, db = conv2d_backward(arr(xp, dout), Xd, Wd, bd, stride, pad)
    dXc, dWc, dbc = conv2d_backward(
        arr(xp, dout.transpose(1, 0, 2, 3)), Xd.transpose(1, 0, 2, 3), Wd, bd, stride, pad, layout="CNHW"
    )
    np.testing.assert_allclose(backend.to_numpy(dXc).transpose(1, 0, 2, 3), backend.to_numpy(dX), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dWc), backend.to_numpy(dW), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dbc), backend.to_numpy(db), rtol=1e-12)


def test_batchnorm_channel_axis_zero_matches_axis_one(xp, rng):
    X = rng.standard_normal((4, 3, 5, 2))
    C = 3
    g, be = rng.standard_normal(C), rng.standard_normal(C)
    out1, c1 = batchnorm_forward(arr(xp, X), arr(xp, g), arr(xp, be), xp.zeros(C), xp.ones(C))
    Xt = np.ascontiguousarray(X.transpose(1, 0, 2, 3))
    rm, rv = xp.zeros(C), xp.ones(C)
    out0, c0 = batchnorm_forward(arr(xp, Xt), arr(xp, g), arr(xp, be), rm, rv, axis=0)
    np.testing.assert_allclose(
        backend.to_numpy(out0).transpose(1, 0, 2, 3), backend.to_numpy(out1), rtol=1e-12
    )
    dout = rng.standard_normal(X.shape)
    d1 = batchnorm_backward(arr(xp, dout), c1)
    d0 = batchnorm_backward(arr(xp, np.ascontiguousarray(dout.transpose(1, 0, 2, 3))), c0)
    np.testing.assert_allclose(
        backend.to_numpy(d0[0]).transpose(1, 0, 2, 3), backend.to_numpy(d1[0]), rtol=1e-10
    )
    for a, b_ in zip(d0[1:], d1[1:]):
        np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b_), rtol=1e-10)
