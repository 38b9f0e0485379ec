"""Softmax and the mean softmax cross-entropy loss."""

from __future__ import annotations

from .. import backend
from ..ops import get_ops


def softmax(scores):
    """Row-wise softmax of (N, C) scores, on their array module; stable for scores as large as +-1e4."""
    xp = backend.get_array_module(scores)
    e = xp.exp(scores - scores.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def softmax_loss(logits, y):
    """Mean softmax cross-entropy and its gradient.

    logits: (N, C) float; y: (N,) integer labels in [0, C).
    Returns ``(loss, dlogits)``: loss is a 0-d array/scalar of logits' dtype (no host
    synchronisation on the GPU); dlogits = (softmax - onehot) / N, shape (N, C).
    Stable for logits as large as +-1e4 (the row maximum is subtracted first).
    A label outside [0, C) raises ValueError on NumPy and gives a NaN loss on CuPy
    (checking there would stall the GPU queue), which the Solver reports as divergence.
    """
    xp = backend.get_array_module(logits)
    N, C = logits.shape
    if y.shape != (N,):
        raise ValueError(f"y: expected shape ({N},) (one label per row of logits), got {tuple(y.shape)}")
    if not N:
        return logits.dtype.type(0.0), xp.zeros_like(logits)
    return get_ops(logits).softmax_xent(logits, y)
