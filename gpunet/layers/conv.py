"""2-D convolution (cross-correlation, as in PyTorch) with the coursework's signatures:
``conv2d_forward``/``conv2d_backward``, and ``im2col``/``col2im``.

The arithmetic (im2col and one GEMM per product) is ``gpunet.ops.conv``, a part of ``NumpyOps``:
these functions hand it to the ops object of the arrays' backend, which a GPU backend may override.
"""

from __future__ import annotations

from ..ops import get_ops


def im2col(Xt, KH, KW, stride=1, padding=0, ones=False):
    """Patches of Xt: (C, N, H, W) (any strides) -> cols (C, KH, KW, N, Ho, Wo), one strided copy per offset.

    ones: also write a row of ones after the patches, in the same buffer: then
    ``buffer.reshape(C*KH*KW + 1, N*Ho*Wo)`` multiplies the bias in the same GEMM.
    """
    return get_ops(Xt).im2col(Xt, KH, KW, stride, padding, ones)


def col2im(dcols, shape_cnhw, stride=1, padding=0):
    """Adjoint of ``im2col``: sum (C, KH, KW, N, Ho, Wo) patch gradients into a (C, N, H, W) array (a
    view)."""
    return get_ops(dcols).col2im(dcols, shape_cnhw, stride, padding)


def conv2d_forward(X, W, b, stride=1, padding=0, cache=None, layout="NCHW"):
    """Convolution ``out[n, f] = sum_c X[n, c] * W[f, c] + b[f]`` (cross-correlation, zero padding).

    X: (N, C, H, W); W: (F, C, KH, KW) (PyTorch's layout); b: (F,).
    Returns out: (N, F, Ho, Wo) with Ho = (H + 2 padding - KH) // stride + 1.
    cache: an optional dict; the patches are kept in it so ``conv2d_backward`` need not gather them again.
    The bias rides in the GEMM as an extra column of W against a row of ones under the patches.
    layout: ``"CNHW"`` takes X as (C, N, H, W) and returns (F, N, Ho, Wo), the GEMM's own
        order: a stack of convolutions (``gpunet.nn``) then never transposes between layers.
    """
    return get_ops(X).conv2d_forward(X, W, b, stride, padding, cache, layout)


def conv2d_backward(dout, X, W, b, stride=1, padding=0, cache=None, need_dx=True, layout="NCHW"):
    """Gradients of ``conv2d_forward``.

    dout: (N, F, Ho, Wo). Returns ``(dX, dW, db)``: dX (N, C, H, W) (None when ``need_dx``
    is False: nothing consumes the input gradient of a first layer), dW (F, C, KH, KW), db (F,).
    cache: the dict given to ``conv2d_forward`` (reuses its patches), or None.
    layout: ``"CNHW"``: dout, X and dX are (F, N, Ho, Wo), (C, N, H, W) and (C, N, H, W).
    """
    return get_ops(dout).conv2d_backward(dout, X, W, b, stride, padding, cache, need_dx, layout)
