"""Softmax and the mean softmax cross-entropy loss."""
from __future__ import annotations

from .. import backend, kernels

# CUDA twin of softmax_loss: one thread per row of (N, C) logits writes the row loss and
# the gradient row (softmax - onehot) / N. A label outside [0, C) gives a NaN row loss
# (and a NaN gradient row) instead of reading another row.
_SOFTMAX_XENT = kernels.elementwise(
    "softmax_xent", "raw T x, raw S y, int64 C, T inv_n", "T row_loss, raw T dx",
    """
    const ptrdiff_t o = i * C;
    const ptrdiff_t t = (ptrdiff_t)y[i];
    if (t < 0 || t >= C) {
        row_loss = (T)CUDART_NAN;
        for (ptrdiff_t j = 0; j < C; ++j) dx[o + j] = (T)CUDART_NAN;
    } else {
        T m = x[o];
        for (ptrdiff_t j = 1; j < C; ++j) m = x[o + j] > m ? x[o + j] : m;
        T s = 0;
        for (ptrdiff_t j = 0; j < C; ++j) s += exp(x[o + j] - m);
        row_loss = log(s) - (x[o + t] - m);
        for (ptrdiff_t j = 0; j < C; ++j)
            dx[o + j] = (exp(x[o + j] - m) / s - (j == t ? (T)1 : (T)0)) * inv_n;
    }
    """, module=__name__, scalars=("C", "inv_n"))


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
    if kernels.on_gpu(logits):
        x = xp.ascontiguousarray(logits).reshape(-1)
        dx = xp.empty(N * C, dtype=logits.dtype)
        row = xp.empty(N, dtype=logits.dtype)
        # raw arguments are read as flat rows: x and y contiguous (copies only for views)
        _SOFTMAX_XENT(x, xp.ascontiguousarray(y), C, logits.dtype.type(1.0 / N), row, dx)
        return row.mean(), dx.reshape(N, C)
    if y.min() < 0 or y.max() >= C:
        bad = y[(y < 0) | (y >= C)][0]
        raise ValueError(f"y: expected labels in [0, {C}), got {bad}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    rows = xp.arange(N)
    loss = (xp.log(sums[:, 0]) - shifted[rows, y]).mean()
    exp /= sums
    exp[rows, y] -= 1
    exp /= logits.dtype.type(N)
    return loss, exp
