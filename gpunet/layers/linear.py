"""Affine layer ``X @ W + b`` (optionally fused with the ReLU that follows it)."""
from __future__ import annotations

import numpy as np

from .. import backend, kernels, threads

# CUDA twins of the bias add: h = h + b, and h = relu(h + b) (NaN propagates as in np.maximum)
_BIAS_ADD = kernels.elementwise("bias_add", "T b", "T h", "h = h + b", module=__name__)
_BIAS_RELU = kernels.elementwise("bias_relu", "T b", "T h", "T t = h + b; h = t < (T)0 ? (T)0 : t",
                                 module=__name__)


def _bias_(h, b, relu):
    """``h += b`` (then ReLU) in place. h: (N, M); b: (M,)."""
    if kernels.on_gpu(h) and b.dtype == h.dtype:          # the kernel's one type T
        (_BIAS_RELU if relu else _BIAS_ADD)(b, h)
        return h
    h += b
    if relu:
        # multiplying by the boolean is ~2x faster than np.maximum on x86 NumPy 2.x
        backend.get_array_module(h).multiply(h, h > 0, out=h)
    return h


def linear_forward(X, W, b, out=None, relu=False):
    """Affine map ``X @ W + b`` (``relu=True``: then ReLU, fused with the bias add; one kernel on the GPU).

    X: (N, d1, ..., dk), flattened to (N, D); W: (D, M); b: (M,). Returns (N, M).
    out: an optional (N, M) buffer for the result.
    On the CPU a large product is the sum of one product per core over a range of W's rows
    (``_split_rows``); its values can then differ from one whole product's in the last bits.
    """
    X2 = X.reshape(X.shape[0], -1)
    if X2.shape[1] != W.shape[0]:
        raise ValueError(f"X: expected {W.shape[0]} features per sample (W has shape {W.shape}), "
                         f"got {X2.shape[1]}")
    xp = backend.get_array_module(X2)
    if xp is np:
        t = min(threads.ways(X2.size * W.shape[1]), W.shape[0] // 64)
        if t > 1:
            return _bias_(_split_rows(X2, W, out, t), b, relu)
    return _bias_(xp.matmul(X2, W, out=out), b, relu)


def _split_rows(X2, W, out, t):
    """``X2 @ W`` as the sum of ``t`` products over ranges of W's rows, run side by side.

    Each core reads only its range of W, the same rows it updates in the optimizer's threaded
    pass (``threads.cuts``), so the weights never move between the cores' caches; OpenBLAS's own
    two threads would both read all of W. On 2 cores this ran net A's first-layer product 7 %
    faster inside the epoch (3.45 against 3.72 ms) and whole epochs of A and B 2-3 % faster.
    X2: (N, D); W: (D, M); out: None or an (N, M) buffer.
    """
    D, M = W.shape
    rows = [c // M for c in threads.cuts(D * M, t)[:-1]] + [D]
    dtype = np.result_type(X2, W)
    out = np.empty((X2.shape[0], M), dtype) if out is None else out
    parts = [out] + [np.empty((X2.shape[0], M), dtype) for _ in range(t - 1)]
    threads.concurrently(*[lambda k=k: np.matmul(X2[:, rows[k]:rows[k + 1]], W[rows[k]:rows[k + 1]], out=parts[k])
                           for k in range(t)], work=X2.size * M)
    for part in parts[1:]:
        out += part
    return out


def linear_backward(dout, X, W, b, need_dx=True, out=None):
    """Gradients of ``linear_forward``.

    dout: (N, M) upstream gradient. Returns ``(dX, dW, db)`` with dX shaped like X
    (None when ``need_dx`` is False: nothing consumes the input gradient of the
    first layer), dW: (D, M), db: (M,). ``out`` is an optional (dX, dW, db) buffer triple.
    On the CPU the two products are independent and run side by side, one per core
    (``gpunet.threads.concurrently``), when they are large; BLAS may then sum in another
    order, so the values can differ from the one-after-the-other run's in the last bits.
    """
    xp = backend.get_array_module(dout)
    X2 = X.reshape(X.shape[0], -1)
    o_dx, o_dw, o_db = out if out is not None else (None, None, None)
    if not need_dx:
        return None, xp.matmul(X2.T, dout, out=o_dw), dout.sum(axis=0, out=o_db)
    if xp is not np:
        dW = xp.matmul(X2.T, dout, out=o_dw)
        dX = xp.matmul(dout, W.T, out=o_dx)
    else:
        dW = np.empty(W.shape, np.result_type(X2, dout)) if o_dw is None else o_dw
        dX = np.empty((dout.shape[0], W.shape[0]), np.result_type(dout, W)) if o_dx is None else o_dx
        threads.concurrently(lambda: np.matmul(X2.T, dout, out=dW), lambda: np.matmul(dout, W.T, out=dX),
                             work=dout.size * W.shape[0])
    return dX.reshape(X.shape), dW, dout.sum(axis=0, out=o_db)
