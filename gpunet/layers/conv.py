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


def _geometry(X, W, stride, padding, layout):
    if layout not in ("NCHW", "CNHW"):
        raise ValueError(f"conv2d: layout: expected 'NCHW' or 'CNHW', got {layout!r}")
    if X.ndim != 4 or W.ndim != 4:
        raise ValueError(f"conv2d: expected X ({', '.join(layout)}) and W (F, C, KH, KW), got {tuple(X.shape)} "
                         f"and {tuple(W.shape)}")
    N, C, H, Wd = X.shape if layout == "NCHW" else (X.shape[1], X.shape[0]) + tuple(X.shape[2:])
    F, Cw, KH, KW = W.shape
    if C != Cw:
        raise ValueError(f"conv2d: X has {C} channels but W expects {Cw} (W is (F, C, KH, KW) = {tuple(W.shape)})")
    return N, C, F, KH, KW, _out_size(H, KH, stride, padding, "conv2d height"), \
        _out_size(Wd, KW, stride, padding, "conv2d width")


def im2col(Xt, KH, KW, stride=1, padding=0, ones=False):
    """Patches of Xt: (C, N, H, W) (any strides) -> cols (C, KH, KW, N, Ho, Wo), one strided copy per offset.

    ones: also write a row of ones after the patches, in the same buffer: then
    ``buffer.reshape(C*KH*KW + 1, N*Ho*Wo)`` multiplies the bias in the same GEMM.
    """
    xp = backend.get_array_module(Xt)
    C, N, H, W = Xt.shape
    Ho, Wo = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
    if padding:
        Xt = xp.pad(Xt, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    size = C * KH * KW * N * Ho * Wo
    buf = xp.empty(size + (N * Ho * Wo if ones else 0), dtype=Xt.dtype)
    if ones:
        buf[size:] = 1
    cols = buf[:size].reshape(C, KH, KW, N, Ho, Wo)
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for i in range(KH):
        for j in range(KW):
            cols[:, i, j] = Xt[:, :, i:i + hs:stride, j:j + ws:stride]
    return buf if ones else cols


def col2im(dcols, shape_cnhw, stride=1, padding=0):
    """Adjoint of ``im2col``: sum (C, KH, KW, N, Ho, Wo) patch gradients into a (C, N, H, W) array (a view)."""
    xp = backend.get_array_module(dcols)
    C, N, H, W = shape_cnhw
    _, KH, KW, _, Ho, Wo = dcols.shape
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    dXt = xp.zeros((C, N, H + 2 * padding, W + 2 * padding), dtype=dcols.dtype)
    for i in range(KH):
        for j in range(KW):
            dXt[:, :, i:i + hs:stride, j:j + ws:stride] += dcols[:, i, j]
    return dXt[:, :, padding:padding + H, padding:padding + W] if padding else dXt


def _as_cnhw(X, layout):
    return X.transpose(1, 0, 2, 3) if layout == "NCHW" else X


def conv2d_forward(X, W, b, stride=1, padding=0, cache=None, layout="NCHW"):
    """Convolution ``out[n, f] = sum_c X[n, c] * W[f, c] + b[f]`` (cross-correlation, zero padding).

    X: (N, C, H, W); W: (F, C, KH, KW) (PyTorch's layout); b: (F,).
    Returns out: (N, F, Ho, Wo) with Ho = (H + 2 padding - KH) // stride + 1.
    cache: an optional dict; the patches are kept in it so ``conv2d_backward`` need not gather them again.
    The bias rides in the GEMM as an extra column of W against a row of ones under the patches.
    layout: ``"CNHW"`` takes X as (C, N, H, W) and returns (F, N, Ho, Wo), the GEMM's own
        order: a stack of convolutions (``gpunet.nn``) then never transposes between layers.
    """
    N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding, layout)
    xp = backend.get_array_module(X)
    # patches plus a row of ones: [W | b] @ [cols; 1] adds the bias inside the product
    cols1 = im2col(_as_cnhw(X, layout), KH, KW, stride, padding, ones=True).reshape(C * KH * KW + 1, N * Ho * Wo)
    if cache is not None:
        cache["cols1"] = cols1
    Wb = xp.concatenate([W.reshape(F, -1), b.reshape(F, 1)], axis=1)  # (F, C*KH*KW + 1)
    out = xp.matmul(Wb, cols1).reshape(F, N, Ho, Wo)
    return out if layout == "CNHW" else xp.ascontiguousarray(out.transpose(1, 0, 2, 3))


def conv2d_backward(dout, X, W, b, stride=1, padding=0, cache=None, need_dx=True, layout="NCHW"):
    """Gradients of ``conv2d_forward``.

    dout: (N, F, Ho, Wo). Returns ``(dX, dW, db)``: dX (N, C, H, W) (None when ``need_dx``
    is False: nothing consumes the input gradient of a first layer), dW (F, C, KH, KW), db (F,).
    cache: the dict given to ``conv2d_forward`` (reuses its patches), or None.
    layout: ``"CNHW"``: dout, X and dX are (F, N, Ho, Wo), (C, N, H, W) and (C, N, H, W).
    """
    N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding, layout)
    want = (N, F, Ho, Wo) if layout == "NCHW" else (F, N, Ho, Wo)
    if tuple(dout.shape) != want:
        raise ValueError(f"conv2d_backward: expected dout of shape {want}, got {tuple(dout.shape)}")
    xp = backend.get_array_module(dout)
    cols1 = cache.get("cols1") if cache else None
    if cols1 is None:
        cols1 = im2col(_as_cnhw(X, layout), KH, KW, stride, padding, ones=True).reshape(C * KH * KW + 1, N * Ho * Wo)
    d2 = xp.ascontiguousarray(_as_cnhw(dout, layout)).reshape(F, N * Ho * Wo)
    dWb = xp.matmul(d2, cols1.T)                                     # [dW | db]: the ones row sums dout
    # both columns of [dW | db] are strided views: copy them out, so a gradient is always a plain array
    dW, db = xp.ascontiguousarray(dWb[:, :-1]).reshape(W.shape), xp.ascontiguousarray(dWb[:, -1])
    dX = None
    if need_dx:
        dcols = xp.matmul(W.reshape(F, -1).T, d2).reshape(C, KH, KW, N, Ho, Wo)
        dXt = col2im(dcols, (C, N) + tuple(_as_cnhw(X, layout).shape[2:]), stride, padding)
        dX = dXt if layout == "CNHW" else xp.ascontiguousarray(dXt.transpose(1, 0, 2, 3))
    return dX, dW, db
