"""Layer kernels: pure functions with the coursework's signatures.

Every kernel takes NumPy or CuPy arrays and returns the same kind and dtype
(float32 stays float32). Backward functions sit right beside their forward.
The optional ``out=`` / ``need_dx=`` arguments let the model reuse buffers and
skip work nobody consumes; the rule itself is the same few lines either way.
"""
from __future__ import annotations

from . import backend, kernels

_default_rngs = {}  # one unseeded generator per backend, created once, never reseeded


def _rng_for(xp):
    key = xp.__name__
    if key not in _default_rngs:
        _default_rngs[key] = xp.random.default_rng()
    return _default_rngs[key]


def linear_forward(X, W, b, out=None, relu=False):
    """Affine map ``X @ W + b`` (``relu=True``: then ReLU, fused with the bias add; one kernel on the GPU).

    X: (N, d1, ..., dk), flattened to (N, D); W: (D, M); b: (M,). Returns (N, M).
    """
    X2 = X.reshape(X.shape[0], -1)
    if X2.shape[1] != W.shape[0]:
        raise ValueError(f"X: expected {W.shape[0]} features per sample (W has shape {W.shape}), "
                         f"got {X2.shape[1]}")
    xp = backend.get_array_module(X2)
    out = xp.matmul(X2, W, out=out)
    return kernels.bias_relu_(out, b) if relu else kernels.bias_add_(out, b)


def linear_backward(dout, X, W, b, need_dx=True, out=None):
    """Gradients of ``linear_forward``.

    dout: (N, M) upstream gradient. Returns ``(dX, dW, db)`` with dX shaped like X
    (None when ``need_dx`` is False: nothing consumes the input gradient of the
    first layer), dW: (D, M), db: (M,). ``out`` is an optional (dX, dW, db) buffer triple.
    """
    xp = backend.get_array_module(dout)
    X2 = X.reshape(X.shape[0], -1)
    o_dx, o_dw, o_db = out if out is not None else (None, None, None)
    dW = xp.matmul(X2.T, dout, out=o_dw)
    db = dout.sum(axis=0, out=o_db)
    dX = None
    if need_dx:
        dX = xp.matmul(dout, W.T, out=o_dx).reshape(X.shape)
    return dX, dW, db


def relu_forward(X, out=None):
    """Rectified linear unit ``max(X, 0)``; ``out=X`` makes it in place. X: any shape."""
    xp = backend.get_array_module(X)
    return xp.maximum(X, 0, out=out)


def relu_backward(dout, X, out=None):
    """Gradient of ReLU: ``dout`` where ``X > 0``, else 0.

    ``X`` may be the ReLU input or its output (both are > 0 at the same places),
    which lets the model keep only the activation. ``out=dout`` makes it in place.
    """
    xp = backend.get_array_module(dout)
    return xp.multiply(dout, X > 0, out=out)


def _check_p(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a drop probability in [0, 1), got {p}")


def dropout_forward(X, p=0.5, train=True, rng=None):
    """Inverted dropout: drop each unit with probability ``p``, scale kept units by 1/(1-p).

    X: any shape. rng: a NumPy/CuPy ``Generator`` (a fresh mask is drawn on every
    call). Returns ``(out, mask)`` where ``mask`` is the scaled keep-mask (X's dtype),
    or ``(X, None)`` when ``train`` is False or ``p == 0``.
    """
    _check_p(p)
    if not train or p == 0.0:
        return X, None
    xp = backend.get_array_module(X)
    rng = rng if rng is not None else _rng_for(xp)
    # keep-mask * scale in X's dtype (no float64 upcast); the mask comes from cheap random bits
    mask = kernels.keep_mask(rng, X.shape, p).astype(X.dtype)
    mask *= X.dtype.type(1.0 / (1.0 - p))
    return X * mask, mask


def dropout_backward(dout, mask, p=0.5, train=True):
    """Gradient of ``dropout_forward``: ``dout * mask`` in training, ``dout`` at test time."""
    _check_p(p)
    if not train or p == 0.0 or mask is None:
        return dout
    return dout * mask


def softmax_loss(logits, y):
    """Mean softmax cross-entropy and its gradient.

    logits: (N, C) float; y: (N,) integer labels in [0, C).
    Returns ``(loss, dlogits)``: loss is a 0-d array/scalar of logits' dtype (no host
    synchronisation on the GPU); dlogits = (softmax - onehot) / N, shape (N, C).
    Stable for logits as large as +-1e4 (the row maximum is subtracted first).
    """
    xp = backend.get_array_module(logits)
    N, C = logits.shape
    if y.shape != (N,):
        raise ValueError(f"y: expected shape ({N},) (one label per row of logits), got {tuple(y.shape)}")
    if xp.__name__ == "numpy" and N and (y.min() < 0 or y.max() >= C):
        bad = y[(y < 0) | (y >= C)][0]
        raise ValueError(f"y: expected labels in [0, {C}), got {bad}")
    if xp.__name__ != "numpy" and N:
        return kernels.softmax_xent(logits, y)  # the same rule in one fused kernel
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    rows = xp.arange(N)
    loss = (xp.log(sums[:, 0]) - shifted[rows, y]).mean()
    exp /= sums
    exp[rows, y] -= 1
    exp /= logits.dtype.type(N)
    return loss, exp
