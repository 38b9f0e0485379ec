"""Affine layer ``X @ W + b`` (optionally fused with the ReLU that follows it)."""

from __future__ import annotations

from .. import backend
from ..ops import get_ops


def _bias_(h, b, relu):
    """``h += b`` (then ReLU) in place. h: (N, M); b: (M,). (``ops.bias_``; one kernel on the GPU.)"""
    return get_ops(h).bias_(h, b, relu)


def linear_forward(X, W, b, out=None, relu=False):
    """Affine map ``X @ W + b`` (``relu=True``: then ReLU, fused with the bias add; one kernel on the GPU).

    X: (N, d1, ..., dk), flattened to (N, D); W: (D, M); b: (M,). Returns (N, M).
    out: an optional (N, M) buffer for the result.
    On the CPU a large product is the sum of one product per core over a range of W's rows
    (``NumpyOps.affine``); its values can then differ from one whole product's in the last bits.
    """
    X2 = X.reshape(X.shape[0], -1)
    if X2.shape[1] != W.shape[0]:
        raise ValueError(
            f"X: expected {W.shape[0]} features per sample (W has shape {W.shape}), got {X2.shape[1]}"
        )
    ops = get_ops(X2)
    if ops.on_device:  # the GPU may fuse the bias (and ReLU) into the product (ops/epilogue.py)
        return ops.affine_bias(X2, W, b, relu, out)
    return ops.bias_(ops.affine(X2, W, out), b, relu)


def linear_backward(dout, X, W, b, need_dx=True, out=None):
    """Gradients of ``linear_forward``.

    dout: (N, M) upstream gradient. Returns ``(dX, dW, db)`` with dX shaped like X
    (None when ``need_dx`` is False: nothing consumes the input gradient of the
    first layer), dW: (D, M), db: (M,). ``out`` is an optional (dX, dW, db) buffer triple.
    On the CPU the two products are independent and run side by side, one per core
    (``NumpyOps.affine_backward``), when they are large; BLAS may then sum in another
    order, so the values can differ from the one-after-the-other run's in the last bits.
    """
    xp = backend.get_array_module(dout)
    X2 = X.reshape(X.shape[0], -1)
    o_dx, o_dw, o_db = out if out is not None else (None, None, None)
    if not need_dx:
        ops = get_ops(dout)
        dW = ops.affine(X2.T, dout, o_dw) if ops.on_device else xp.matmul(X2.T, dout, out=o_dw)
        return None, dW, dout.sum(axis=0, out=o_db)
    dX, dW = get_ops(dout).affine_backward(X2, dout, W, o_dx, o_dw)
    return dX.reshape(X.shape), dW, dout.sum(axis=0, out=o_db)
