"""2-D convolution (cross-correlation, as in PyTorch), NCHW, by im2col and one GEMM.

The patches are gathered channel-major, ``cols: (C*KH*KW, N*Ho*Wo)``, with one
strided copy per kernel offset (KH*KW copies, never a loop over pixels or samples),
so the forward, the weight gradient and the input gradient are each a single large
matrix product: ``W (F, CKK) @ cols``, ``dout (F, NHoWo) @ cols.T`` and
``W.T @ dout``. On CuPy the same code runs as cuBLAS GEMMs plus strided copies.
"""
from __future__ import annotations

from .. import backend


def _out_size(size, k, stride, padding, what):
    o = (size + 2 * padding - k) // stride + 1
    if o < 1 or stride < 1 or padding < 0:
        raise ValueError(f"{what}: a kernel of {k} with stride {stride} and padding {padding} does not fit "
                         f"an input of {size}")
    return o


def _geometry(X, W, stride, padding):
    if X.ndim != 4 or W.ndim != 4:
        raise ValueError(f"conv2d: expected X (N, C, H, W) and W (F, C, KH, KW), got {tuple(X.shape)} "
                         f"and {tuple(W.shape)}")
    N, C, H, Wd = X.shape
    F, Cw, KH, KW = W.shape
    if C != Cw:
        raise ValueError(f"conv2d: X has {C} channels but W expects {Cw} (W is (F, C, KH, KW) = {tuple(W.shape)})")
    return N, C, F, KH, KW, _out_size(H, KH, stride, padding, "conv2d height"), \
        _out_size(Wd, KW, stride, padding, "conv2d width")


def im2col(X, KH, KW, stride=1, padding=0):
    """Patches of X: (N, C, H, W) -> cols (C, KH, KW, N, Ho, Wo), one strided copy per offset."""
    xp = backend.get_array_module(X)
    N, C, H, W = X.shape
    Ho, Wo = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
    Xt = X.transpose(1, 0, 2, 3)                                     # (C, N, H, W) view
    if padding:
        Xt = xp.pad(Xt, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp.empty((C, KH, KW, N, Ho, Wo), dtype=X.dtype)
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for i in range(KH):
        for j in range(KW):
            cols[:, i, j] = Xt[:, :, i:i + hs:stride, j:j + ws:stride]
    return cols


def col2im(dcols, X_shape, stride=1, padding=0):
    """Adjoint of ``im2col``: sum the (C, KH, KW, N, Ho, Wo) patch gradients back into (N, C, H, W)."""
    xp = backend.get_array_module(dcols)
    N, C, H, W = X_shape
    _, KH, KW, _, Ho, Wo = dcols.shape
    dXt = xp.zeros((C, N, H + 2 * padding, W + 2 * padding), dtype=dcols.dtype)
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for i in range(KH):
        for j in range(KW):
            dXt[:, :, i:i + hs:stride, j:j + ws:stride] += dcols[:, i, j]
    if padding:
        dXt = dXt[:, :, padding:padding + H, padding:padding + W]
    return xp.ascontiguousarray(dXt.transpose(1, 0, 2, 3))


def conv2d_forward(X, W, b, stride=1, padding=0, cache=None):
    """Convolution ``out[n, f] = sum_c X[n, c] * W[f, c] + b[f]`` (cross-correlation, zero padding).

    X: (N, C, H, W); W: (F, C, KH, KW) (PyTorch's layout); b: (F,).
    Returns out: (N, F, Ho, Wo) with Ho = (H + 2 padding - KH) // stride + 1.
    cache: an optional dict; the patches are kept in it so ``conv2d_backward`` need not gather them again.
    """
    N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding)
    xp = backend.get_array_module(X)
    cols = im2col(X, KH, KW, stride, padding).reshape(C * KH * KW, N * Ho * Wo)
    if cache is not None:
        cache["cols"] = cols
    out = xp.matmul(W.reshape(F, -1), cols)                          # (F, N*Ho*Wo)
    out += b.reshape(F, 1)
    return xp.ascontiguousarray(out.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3))


def conv2d_backward(dout, X, W, b, stride=1, padding=0, cache=None, need_dx=True):
    """Gradients of ``conv2d_forward``.

    dout: (N, F, Ho, Wo). Returns ``(dX, dW, db)``: dX (N, C, H, W) (None when ``need_dx``
    is False: nothing consumes the input gradient of a first layer), dW (F, C, KH, KW), db (F,).
    cache: the dict given to ``conv2d_forward`` (reuses its patches), or None.
    """
    N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding)
    if tuple(dout.shape) != (N, F, Ho, Wo):
        raise ValueError(f"conv2d_backward: expected dout of shape {(N, F, Ho, Wo)}, got {tuple(dout.shape)}")
    xp = backend.get_array_module(dout)
    cols = cache.get("cols") if cache else None
    if cols is None:
        cols = im2col(X, KH, KW, stride, padding).reshape(C * KH * KW, N * Ho * Wo)
    d2 = xp.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(F, N * Ho * Wo)
    db = d2.sum(axis=1)
    dW = xp.matmul(d2, cols.T).reshape(W.shape)
    dX = None
    if need_dx:
        dcols = xp.matmul(W.reshape(F, -1).T, d2).reshape(C, KH, KW, N, Ho, Wo)
        dX = col2im(dcols, X.shape, stride, padding)
    return dX, dW, db
