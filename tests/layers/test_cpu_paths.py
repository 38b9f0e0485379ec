"""The CPU's own forms of conv, pooling and batch norm (``gpunet.ops``: blocked, shared among the
thread team) against the plain NumPy reference they replace on the CPU: the same code path a GPU
backend runs (``on_device``), here on NumPy arrays; non-contiguous inputs and several team sizes."""

import numpy as np
import pytest

from gpunet import threads
from gpunet.ops.numpy_ops import NumpyOps


class Reference(NumpyOps):
    """NumpyOps through its device form (one im2col and one GEMM per product, per-offset pooling)."""

    on_device = True


CPU, REF = NumpyOps(), Reference()


@pytest.fixture(params=[1, 2, 3])
def team(request, monkeypatch):
    """A team of 1-3 threads that splits even these small arrays."""
    monkeypatch.setattr(threads, "CONCURRENT_MIN", 0)
    monkeypatch.setattr(threads, "PAR_MIN", 1)
    threads.set_num_threads(request.param)
    yield request.param
    threads.set_num_threads(None)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, 0), (2, 2)])
def test_conv_matches_reference(team, stride, padding):
    rng = np.random.default_rng(stride * 10 + padding)
    X = rng.standard_normal((7, 3, 11, 9))[:, :, :, ::-1]  # non-contiguous NCHW
    W, b = rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    outs = []
    for ops in (CPU, REF):
        cache = {}
        out = ops.conv2d_forward(X, W, b, stride, padding, cache=cache)
        dout = np.cos(np.arange(out.size)).reshape(out.shape)
        outs.append((out,) + ops.conv2d_backward(dout, X, W, b, stride, padding, cache=cache))
    for a, r in zip(*outs):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


def test_conv_cnhw_without_cache_and_dx():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 6, 8, 8)).astype(np.float32)  # (C, N, H, W)
    W, b = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), np.zeros(4, np.float32)
    dout = rng.standard_normal((4, 6, 8, 8)).astype(np.float32)
    got = CPU.conv2d_backward(dout, X, W, b, 1, 1, need_dx=False, layout="CNHW")
    want = REF.conv2d_backward(dout, X, W, b, 1, 1, need_dx=False, layout="CNHW")
    assert got[0] is None and want[0] is None
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-4)


def test_blocked_and_split_cover_every_item():
    assert threads.l2_bytes() >= 1 << 14
    for lo, hi, item in [(0, 10, 1), (3, 17, threads.l2_bytes()), (0, 1, 10**12), (5, 5, 8)]:
        got = [i for a, b in threads.blocked(lo, hi, item) for i in range(a, b)]
        assert got == list(range(lo, hi))
    threads.set_num_threads(3)
    try:
        seen = []
        threads.split(lambda lo, hi: seen.append((lo, hi)), 10, work=10**9)
        assert sorted(i for a, b in seen for i in range(a, b)) == list(range(10)) and len(seen) == 3
    finally:
        threads.set_num_threads(None)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_pool_matches_reference(team, size, ties):
    rng = np.random.default_rng(size)
    X = rng.standard_normal((4, 5, 2 * size * 3, size * 4)).astype(np.float32)
    if ties:  # some windows hold their maximum twice, in a few blocks only
        X[1:3] = np.round(X[1:3])
    for relu in (False, True):
        got, want = [], []
        for ops, res in ((CPU, got), (REF, want)):
            cache = {}
            fwd = ops.max_pool2d_relu_forward if relu else ops.max_pool2d_forward
            out = fwd(X, size, cache=cache)
            dout = np.sin(np.arange(out.size, dtype=np.float32)).reshape(out.shape)
            if relu:
                dX = ops.max_pool2d_relu_backward(dout, X, out, size, cache=cache)
            else:
                dX = ops.max_pool2d_backward(dout, X, size, cache=cache)
            res += [out, dX]
        for a, r in zip(got, want):
            np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_matches_reference(team, dtype):
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((6, 5, 4, 3)) * 3 + 1).astype(dtype)  # (C, N, H, W), axis 0
    gamma, beta = rng.standard_normal(6).astype(dtype), rng.standard_normal(6).astype(dtype)
    res = []
    for ops in (CPU, REF):
        rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
        out, cache = ops.batchnorm_forward(X, gamma, beta, rm, rv, train=True, axis=0)
        dout = np.cos(np.arange(X.size)).reshape(X.shape).astype(dtype)
        res.append((out, rm, rv) + tuple(ops.batchnorm_backward(dout, cache)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, r in zip(*res):
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_blocked_is_bit_identical(team, dtype):
    rng = np.random.default_rng(4)
    n = 3 * threads.CHUNK + 17  # several blocks and a short last one
    w, dw, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(dtype)
    got, want = [a.copy() for a in (w, dw, m, v)], [a.copy() for a in (w, dw, m, v)]
    args = (0.9, 0.999, 1e-3 / (1 - 0.9**3), 1 / np.sqrt(1 - 0.999**3), 1e-8)
    CPU.adam_(*got, *args)
    REF.adam_(*want, *args)
    for a, r in zip(got, want):
        np.testing.assert_array_equal(a, r)
    CPU.adam_(w[::2], dw[::2], m[::2], v[::2], *args)  # strided: the reference form, no error


def test_team_size_is_the_same_inside_pinned():
    """The team's default size comes from the process's CPUs, not from the pinned caller's one CPU
    (the FC recipes' split products depend on it, so their results would change)."""
    before = threads.num_threads()
    with threads.pinned():
        assert threads.num_threads() == before == threads.usable_cpus()
