"""Fused elementwise kernels: one CuPy kernel each on the GPU, a few in-place NumPy ops on the CPU.

Every function here does the same arithmetic as a composition of the plain
kernels in ``layers.py`` (tests/test_fast.py checks that), only without
temporaries and, on CuPy, in one launch. The CuPy kernels are compiled lazily
through ``backend.cupy_module()``; this module never imports cupy itself.

The ``_`` suffix means "in place on the first argument".
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import backend

_CHUNK = 1 << 16        # elements per block of the NumPy optimizer updates (256 KB per float32 array)
_PAR_MIN = 1 << 18      # elements per thread below which one thread is faster
_cuda_kernels = {}      # name -> compiled cupy kernel
_threads = None         # CPU threads for the blocked NumPy updates (None: from the environment)
_pool, _pool_size = None, 0


def set_num_threads(n: int | None):
    """Threads for the NumPy optimizer updates (None: $OMP_NUM_THREADS, $OPENBLAS_NUM_THREADS or all cores)."""
    global _threads, _pool, _pool_size
    _threads = None if n is None else max(1, int(n))
    if _pool is not None:
        _pool.shutdown(wait=True)
    _pool, _pool_size = None, 0


def num_threads() -> int:
    """Threads the NumPy optimizer updates use."""
    if _threads is not None:
        return _threads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return os.cpu_count() or 1


def _parallel(fn, n: int):
    """Run ``fn(lo, hi)`` over [0, n) split into block-aligned ranges, one per thread.

    NumPy's ufuncs release the GIL, so plain threads use every core for the
    memory-bound optimizer updates (as BLAS does for the products).
    """
    global _pool, _pool_size
    t = min(num_threads(), n // _PAR_MIN)
    if t <= 1:
        fn(0, n)
        return
    if _pool_size < t:
        _pool = ThreadPoolExecutor(max_workers=t, thread_name_prefix="gpunet-update")
        _pool_size = t
    blocks = -(-n // _CHUNK)
    cuts = [min(n, (blocks * k // t) * _CHUNK) for k in range(t + 1)]
    list(_pool.map(fn, cuts[:-1], cuts[1:]))


def _on_gpu(a) -> bool:
    return not isinstance(a, np.ndarray) and backend.get_array_module(a) is not np


def _kernel(name):
    """The CuPy kernel ``name``, built on first use."""
    k = _cuda_kernels.get(name)
    if k is None:
        cp = backend.cupy_module()
        kind, args = _CUDA_SOURCES[name]
        k = _cuda_kernels[name] = getattr(cp, kind)(*args, name=f"gpunet_{name}")
    return k


_CUDA_SOURCES = {
    # h = relu(h + b); NaN propagates as in np.maximum
    "bias_relu": ("ElementwiseKernel", ("T b", "T h", "T t = h + b; h = t < (T)0 ? (T)0 : t")),
    "bias_add": ("ElementwiseKernel", ("T b", "T h", "h = h + b")),
    # inverted dropout on an activation: drop where u < p, scale the rest
    "dropout": ("ElementwiseKernel", ("float32 u, float32 p, T scale", "T h", "h = u < p ? (T)0 : h * scale")),
    # ReLU (and dropout) backward from the layer's *output* a: a > 0 exactly where the unit passed
    "relu_bwd": ("ElementwiseKernel", ("T a, T scale", "T d", "d = a > (T)0 ? d * scale : (T)0")),
    "sgd": ("ElementwiseKernel", ("T dw, T lr", "T w", "w -= lr * dw")),
    "momentum": ("ElementwiseKernel", ("T dw, T mu, T lr", "T w, T v", "v = mu * v - lr * dw; w += v")),
    "nesterov": ("ElementwiseKernel", ("T dw, T mu, T lr", "T w, T v",
                                       "v = mu * v - lr * dw; w += mu * v - lr * dw")),
    "rmsprop": ("ElementwiseKernel", ("T dw, T r, T lr, T eps", "T w, T c",
                                      "c = r * c + ((T)1 - r) * dw * dw; w -= lr * dw / (sqrt(c) + eps)")),
    "adam": ("ElementwiseKernel", ("T dw, T b1, T b2, T lr_t, T inv_sqrt_bc2, T eps", "T w, T m, T v",
                                   "m = b1 * m + ((T)1 - b1) * dw; v = b2 * v + ((T)1 - b2) * dw * dw; "
                                   "w -= lr_t * m / (sqrt(v) * inv_sqrt_bc2 + eps)")),
    # one thread per row of (N, C) logits: row loss and the gradient row (softmax - onehot) / N
    "softmax_xent": ("ElementwiseKernel", (
        "raw T x, raw S y, int64 C, T inv_n", "T row_loss, raw T dx",
        """
        const ptrdiff_t o = i * C;
        T m = x[o];
        for (ptrdiff_t j = 1; j < C; ++j) m = x[o + j] > m ? x[o + j] : m;
        T s = 0;
        for (ptrdiff_t j = 0; j < C; ++j) s += exp(x[o + j] - m);
        const ptrdiff_t t = (ptrdiff_t)y[i];
        row_loss = log(s) - (x[o + t] - m);
        for (ptrdiff_t j = 0; j < C; ++j)
            dx[o + j] = (exp(x[o + j] - m) / s - (j == t ? (T)1 : (T)0)) * inv_n;
        """)),
}


# ------------------------------------------------------------------ layers
def bias_relu_(h, b):
    """``h = max(h + b, 0)`` in place. h: (N, M); b: (M,)."""
    if _on_gpu(h):
        _kernel("bias_relu")(b, h)
        return h
    h += b
    # multiplying by the boolean is ~2x faster than np.maximum on x86 NumPy 2.x
    np.multiply(h, h > 0, out=h)
    return h


def bias_add_(h, b):
    """``h += b`` in place (the output layer: no ReLU)."""
    if _on_gpu(h):
        _kernel("bias_add")(b, h)
    else:
        h += b
    return h


def keep_mask(rng, shape, p):
    """Random boolean keep-mask of ``shape`` (NumPy or CuPy, like ``rng``) with drop probability exactly ``p``.

    On the CPU random generation dominates dropout's cost, so the mask is built
    from raw generator bits: one bit per unit when p = 1/2, a byte when 256 p is
    an integer, 16 bits when 65536 p is; otherwise float32 uniforms (u >= p).
    Every branch keeps a unit with probability exactly 1 - p.
    """
    n = int(np.prod(shape))
    if isinstance(rng, np.random.Generator):
        raw = rng.bit_generator.random_raw          # 64 uniform bits per call
        if p == 0.5:
            return np.unpackbits(raw(-(-n // 64)).view(np.uint8), count=n).view(bool).reshape(shape)
        for bits, dt in ((8, np.uint8), (16, np.uint16)):
            thr = p * 2 ** bits
            if thr == int(thr):
                return raw(-(-n * bits // 64)).view(dt)[:n].reshape(shape) >= dt(int(thr))
    return rng.random(shape, dtype=np.float32) >= np.float32(p)


def dropout_(h, p, rng):
    """Inverted dropout in place: zero each unit with probability ``p``, scale the rest by 1/(1-p)."""
    scale = h.dtype.type(1.0 / (1.0 - p))
    if _on_gpu(h):
        u = rng.random(h.shape, dtype=np.float32)
        _kernel("dropout")(u, np.float32(p), scale, h)
        return h
    np.multiply(h, keep_mask(rng, h.shape, p), out=h)
    h *= scale
    return h


def relu_backward_(dout, a, scale=1.0):
    """``dout = dout * scale where a > 0, else 0`` in place.

    a: the layer's output after ReLU (and dropout, whose units are > 0 exactly
    where they passed both); scale: the dropout scale 1/(1-p), or 1.
    """
    scale = dout.dtype.type(scale)
    if _on_gpu(dout):
        _kernel("relu_bwd")(a, scale, dout)
        return dout
    np.multiply(dout, a > 0, out=dout)
    if scale != 1:
        dout *= scale
    return dout


def softmax_xent(logits, y):
    """Fused mean softmax cross-entropy on CuPy: ``(loss, dlogits)`` in two launches.

    logits: (N, C) contiguous float; y: (N,) integer labels. Same result as
    ``layers.softmax_loss`` (which calls this on the GPU).
    """
    cp = backend.cupy_module()
    N, C = logits.shape
    x = cp.ascontiguousarray(logits).reshape(-1)
    dx = cp.empty(N * C, dtype=logits.dtype)
    row = cp.empty(N, dtype=logits.dtype)
    _kernel("softmax_xent")(x, y, C, logits.dtype.type(1.0 / N), row, dx)
    return row.mean(), dx.reshape(N, C)


# --------------------------------------------------------------- optimizers
def sgd_(w, dw, lr):
    """``w -= lr * dw`` in place."""
    lr = w.dtype.type(lr)
    if _on_gpu(w):
        _kernel("sgd")(dw, lr, w)
    else:
        w -= lr * dw
    return w


def sgd_momentum_(w, dw, v, mu, lr, nesterov=False):
    """``v = mu * v - lr * dw`` then ``w += v`` (Nesterov: ``w += mu * v - lr * dw``), in place.

    On NumPy the update runs block by block so w, dw and v are read from memory
    once per step instead of once per operation (the arrays of net B's first
    layer are 12 MB each), with the blocks shared among ``num_threads()`` threads.
    """
    mu, lr = w.dtype.type(mu), w.dtype.type(lr)
    if _on_gpu(w):
        _kernel("nesterov" if nesterov else "momentum")(dw, mu, lr, w, v)
        return w
    if not (w.flags.c_contiguous and dw.flags.c_contiguous and v.flags.c_contiguous):
        v *= mu
        v -= lr * dw
        w += mu * v - lr * dw if nesterov else v
        return w
    wf, gf, vf = w.reshape(-1), dw.reshape(-1), v.reshape(-1)

    def blocks(lo, hi):
        tmp = np.empty((2, min(hi - lo, _CHUNK)), w.dtype)
        for i in range(lo, hi, _CHUNK):
            wb, gb, vb = wf[i:i + _CHUNK], gf[i:i + _CHUNK], vf[i:i + _CHUNK]
            if i + _CHUNK > hi:
                wb, gb, vb = wb[:hi - i], gb[:hi - i], vb[:hi - i]
            t, u = tmp[0, :wb.size], tmp[1, :wb.size]
            vb *= mu
            np.multiply(gb, lr, out=t)
            vb -= t
            if nesterov:            # w += (mu * v - lr * dw), the same rounding as the formula
                np.multiply(vb, mu, out=u)
                u -= t
                wb += u
            else:
                wb += vb

    _parallel(blocks, w.size)
    return w


def rmsprop_(w, dw, c, decay, lr, eps):
    """``c = decay * c + (1 - decay) * dw**2``; ``w -= lr * dw / (sqrt(c) + eps)``, in place."""
    t = w.dtype.type
    if _on_gpu(w):
        _kernel("rmsprop")(dw, t(decay), t(lr), t(eps), w, c)
        return w
    c *= t(decay)
    c += t(1 - decay) * dw * dw
    w -= t(lr) * dw / (np.sqrt(c) + t(eps))
    return w


def adam_(w, dw, m, v, b1, b2, lr_t, inv_sqrt_bc2, eps):
    """Adam in place: moments, then ``w -= lr_t * m / (sqrt(v) * inv_sqrt_bc2 + eps)``.

    lr_t = lr / (1 - b1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - b2^t) carry the bias corrections.
    """
    t = w.dtype.type
    if _on_gpu(w):
        _kernel("adam")(dw, t(b1), t(b2), t(lr_t), t(inv_sqrt_bc2), t(eps), w, m, v)
        return w
    m *= t(b1)
    m += t(1 - b1) * dw
    v *= t(b2)
    v += t(1 - b2) * dw * dw
    denom = np.sqrt(v) * t(inv_sqrt_bc2)
    denom += t(eps)
    w -= t(lr_t) * m / denom
    return w
