"""Max pooling with the coursework's signatures: ``max_pool2d_forward``/``max_pool2d_backward``.

The arithmetic (one strided operation per window offset; ties to the first maximum, as in
PyTorch) is ``gpunet.ops.pool``, a part of ``NumpyOps``: these functions hand it to the ops object
of the arrays' backend, which a GPU backend may override.
"""

from __future__ import annotations

from ..ops import get_ops


def max_pool2d_forward(X, size=2, stride=None, cache=None):
    """Max over each window: X (N, C, H, W) -> out (N, C, Ho, Wo), Ho = (H - size) // stride + 1.

    stride: defaults to ``size`` (non-overlapping windows). Only the last two axes are
    pooled, so X may equally be (C, N, H, W).
    cache: an optional dict for the backward (the argmax of overlapping windows, or the output).
    """
    return get_ops(X).max_pool2d_forward(X, size, stride, cache)


def max_pool2d_backward(dout, X, size=2, stride=None, cache=None):
    """Gradient of ``max_pool2d_forward``: each dout goes to the input position of its window's maximum.

    dout: (N, C, Ho, Wo); X: the forward input. Returns dX (N, C, H, W).
    cache: the dict given to the forward (reuses what it kept), or None.
    """
    return get_ops(dout).max_pool2d_backward(dout, X, size, stride, cache)


def max_pool2d_relu_forward(X, size=2, stride=None, cache=None):
    """``relu(max_pool2d_forward(X))``: a ReLU and the max pool after it as one op (4x fewer values to
    rectify). X: (N, C, H, W) -> (N, C, Ho, Wo); cache as in ``max_pool2d_forward``."""
    return get_ops(X).max_pool2d_relu_forward(X, size, stride, cache)


def max_pool2d_relu_backward(dout, X, out, size=2, stride=None, cache=None):
    """Gradient of ``max_pool2d_relu_forward``; out: its output, cache: the dict given to it."""
    return get_ops(dout).max_pool2d_relu_backward(dout, X, out, size, stride, cache)
