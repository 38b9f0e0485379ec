"""Layer kernels against numerical gradients and statistical properties, on every backend."""

import math

import numpy as np
import pytest

from gpunet import backend
from gpunet.testing import emulated
from gpunet.layers import (
    dropout_backward,
    dropout_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)
from gradcheck import numerical_gradient, numerical_gradient_array, rel_error


def arr(xp, a):
    return xp.asarray(np.asarray(a))


def test_linear_forward_matches_definition(xp, rng):
    X = rng.standard_normal((4, 2, 3, 5))
    W = rng.standard_normal((30, 7))
    b = rng.standard_normal(7)
    out = linear_forward(arr(xp, X), arr(xp, W), arr(xp, b))
    expected = np.einsum("nd,dm->nm", X.reshape(4, -1), W) + b
    assert out.shape == (4, 7)
    np.testing.assert_allclose(backend.to_numpy(out), expected, rtol=1e-12)


def test_linear_backward_gradcheck(xp, rng):
    X = arr(xp, rng.standard_normal((5, 2, 3)))
    W = arr(xp, rng.standard_normal((6, 4)))
    b = arr(xp, rng.standard_normal(4))
    dout = arr(xp, rng.standard_normal((5, 4)))
    dX, dW, db = linear_backward(dout, X, W, b)
    assert dX.shape == X.shape
    f = lambda: linear_forward(X, W, b)
    assert rel_error(dX, numerical_gradient_array(f, X, dout)) < 1e-7
    assert rel_error(dW, numerical_gradient_array(f, W, dout)) < 1e-7
    assert rel_error(db, numerical_gradient_array(f, b, dout)) < 1e-7


def test_linear_backward_can_skip_input_gradient(xp, rng):
    X, W, b = (arr(xp, rng.standard_normal(s)) for s in ((3, 4), (4, 2), (2,)))
    dout = arr(xp, rng.standard_normal((3, 2)))
    dX, dW, db = linear_backward(dout, X, W, b, need_dx=False)
    _, dW2, db2 = linear_backward(dout, X, W, b)
    assert dX is None
    np.testing.assert_allclose(backend.to_numpy(dW), backend.to_numpy(dW2))
    np.testing.assert_allclose(backend.to_numpy(db), backend.to_numpy(db2))


def test_linear_rejects_wrong_width(xp):
    with pytest.raises(ValueError, match="X: expected 4 features"):
        linear_forward(xp.zeros((2, 5)), xp.zeros((4, 3)), xp.zeros(3))


def test_relu_forward_and_gradcheck(xp, rng):
    # keep inputs away from the kink where the numerical derivative is undefined
    X = rng.standard_normal((6, 7))
    X[np.abs(X) < 1e-3] = 0.5
    X = arr(xp, X)
    out = relu_forward(X)
    np.testing.assert_array_equal(backend.to_numpy(out), np.maximum(backend.to_numpy(X), 0))
    dout = arr(xp, rng.standard_normal((6, 7)))
    dX = relu_backward(dout, X)
    assert rel_error(dX, numerical_gradient_array(lambda: relu_forward(X), X, dout)) < 1e-8


def test_dropout_backward_gradcheck_with_fixed_mask(xp, rng):
    X = arr(xp, rng.standard_normal((10, 8)) + 5)
    dout = arr(xp, rng.standard_normal((10, 8)))
    p = 0.3
    seed = 7
    f = lambda: dropout_forward(X, p, True, backend.default_rng(seed))[0]  # same mask every call
    _, mask = dropout_forward(X, p, True, backend.default_rng(seed))
    dX = dropout_backward(dout, mask, p, True)
    # a wrong mask errs by O(1); the central difference's rounding on a small kept dout reaches ~1e-8
    assert rel_error(dX, numerical_gradient_array(f, X, dout)) < 1e-7


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_dropout_rate_and_expectation(xp, p):
    n = 200_000
    X = xp.ones((n // 100, 100), dtype=xp.float32)
    out, mask = dropout_forward(X, p, True, backend.default_rng(0))
    out_np = backend.to_numpy(out)
    dropped = float((out_np == 0).mean())
    # binomial std of the observed rate; 5 sigma keeps the test reliable but meaningful
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(out_np.mean() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)  # inverted: expectation kept
    kept = out_np[out_np != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - p), rtol=1e-6)
    assert out.dtype == xp.float32 and mask.dtype == xp.float32


def test_dropout_masks_differ_between_calls(xp):
    X = xp.ones((50, 50), dtype=xp.float32)
    g = backend.default_rng(3)
    _, m1 = dropout_forward(X, 0.5, True, g)
    _, m2 = dropout_forward(X, 0.5, True, g)
    assert not np.array_equal(backend.to_numpy(m1), backend.to_numpy(m2))
    _, m3 = dropout_forward(X, 0.5, True)  # the default generator also advances
    _, m4 = dropout_forward(X, 0.5, True)
    assert not np.array_equal(backend.to_numpy(m3), backend.to_numpy(m4))


def test_dropout_identity_at_test_time(xp, rng):
    X = arr(xp, rng.standard_normal((4, 5)).astype(np.float32))
    out, mask = dropout_forward(X, 0.5, train=False)
    assert mask is None
    np.testing.assert_array_equal(backend.to_numpy(out), backend.to_numpy(X))
    dout = arr(xp, rng.standard_normal((4, 5)).astype(np.float32))
    np.testing.assert_array_equal(
        backend.to_numpy(dropout_backward(dout, None, 0.5, train=False)), backend.to_numpy(dout)
    )


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_p(xp, p):
    with pytest.raises(ValueError, match=r"p: expected a drop probability in \[0, 1\)"):
        dropout_forward(xp.ones((2, 2)), p)


def test_softmax_loss_gradcheck(xp, rng):
    N, C = 8, 5
    logits = arr(xp, rng.standard_normal((N, C)))
    y = arr(xp, rng.integers(0, C, N))
    loss, dlogits = softmax_loss(logits, y)
    num = numerical_gradient(lambda: softmax_loss(logits, y)[0], logits)
    assert rel_error(dlogits, num) < 1e-7
    # independent: loss from the definition with scipy-free log-sum-exp in float64
    L = backend.to_numpy(logits)
    ref = np.mean([-L[i, t] + np.log(np.exp(L[i]).sum()) for i, t in enumerate(backend.to_numpy(y))])
    assert abs(float(loss) - ref) < 1e-12


def test_softmax_loss_uniform_scores_give_log_c(xp):
    for C in (2, 7, 10):
        loss, d = softmax_loss(xp.zeros((4, C)), xp.arange(4) % C)
        assert abs(float(loss) - math.log(C)) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_stable_for_huge_logits(xp, dtype):
    logits = xp.asarray(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, 1e4]], dtype=dtype))
    y = xp.asarray(np.array([1, 2, 0]))
    loss, dlogits = softmax_loss(logits, y)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(backend.to_numpy(dlogits)))
    # row 0 puts all mass on a wrong class: loss 2e4 / 3 from that row; row 2 is uniform: log 3
    expected = (2e4 + 0.0 + math.log(3)) / 3
    assert abs(float(loss) - expected) / expected < 1e-5
    assert dlogits.dtype == logits.dtype


def test_softmax_loss_rejects_bad_labels(xp):
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\)"):
        softmax_loss(xp.zeros((3, 4)), xp.zeros(2, dtype=xp.int64))
    if xp.__name__ == "numpy":
        with pytest.raises(ValueError, match=r"labels in \[0, 4\)"):
            softmax_loss(xp.zeros((3, 4)), xp.asarray([0, 4, 1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_keep_dtype_and_kind(xp, rng, dtype):
    X = xp.asarray(rng.standard_normal((4, 6)).astype(dtype))
    W = xp.asarray(rng.standard_normal((6, 3)).astype(dtype))
    b = xp.asarray(rng.standard_normal(3).astype(dtype))
    outs = [
        linear_forward(X, W, b),
        *linear_backward(xp.ones((4, 3), dtype=dtype), X, W, b),
        relu_forward(X),
        relu_backward(X, X),
        dropout_forward(X, 0.5, True, backend.default_rng(0))[0],
        softmax_loss(X, xp.asarray([0, 1, 2, 3]))[1],
    ]
    for o in outs:
        assert type(o) is type(X) and o.dtype == dtype


# the GPU dropout's own kernel and stream (Philox, keyed on the device): tests/kernels/test_philox.py


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
