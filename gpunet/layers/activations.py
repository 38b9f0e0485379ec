"""ReLU and inverted dropout, with their fused in-place fast paths.

Inside a model, ReLU and dropout run in place on the activation ``a`` and one
backward pass serves both: ``relu_backward(dout, a, scale=1/(1-p))``, because a
unit of ``a`` is > 0 exactly where it passed both the ReLU and the dropout mask.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..ops import get_ops, philox

_default_rngs = {}  # one unseeded generator per backend, created once, never reseeded


def _rng_for(xp):
    key = xp.__name__
    if key not in _default_rngs:
        _default_rngs[key] = xp.random.default_rng()
    return _default_rngs[key]


def relu_forward(X, out=None):
    """Rectified linear unit ``max(X, 0)``; ``out=X`` makes it in place. X: any shape."""
    xp = backend.get_array_module(X)
    return xp.maximum(X, 0, out=out)


def relu_backward(dout, X, out=None, scale=1.0):
    """Gradient of ReLU: ``dout`` where ``X > 0``, else 0 (the derivative is 1 for positive inputs).

    ``X`` may be the ReLU input or its output (both are > 0 at the same places),
    which lets a model keep only the activation. ``out=dout`` makes it in place.
    ``scale``: multiply the passed gradient too (1/(1-p) after an in-place dropout).
    """
    if out is dout:  # in place: the fused kernel on the GPU
        return get_ops(dout).relu_backward_(dout, X, scale)
    xp = backend.get_array_module(dout)
    out = xp.multiply(dout, X > 0, out=out)
    if scale != 1.0:
        out *= out.dtype.type(scale)
    return out


def _check_p(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a drop probability in [0, 1), got {p}")


def keep_mask(rng, shape, p):
    """Random boolean keep-mask of ``shape`` (NumPy or CuPy, like ``rng``) with drop probability exactly
    ``p``.

    On a GPU (a device generator) the mask comes from the Philox counter stream keyed by ``rng``
    (``ops/philox.py``), as the in-place dropout's does. On the CPU random generation dominates
    dropout's cost, so the mask is built
    from raw generator bits: one bit per unit when p = 1/2, a byte when 256 p is
    an integer, 16 bits when 65536 p is; otherwise float32 uniforms (u >= p).
    Every branch keeps a unit with probability exactly 1 - p.
    """
    if not isinstance(rng, np.random.Generator) and backend.name() == "cupy" and hasattr(rng, "random"):
        return philox.device_keep_mask(rng, shape, p)  # the GPU: the same counter stream as dropout_
    n = int(np.prod(shape))
    if isinstance(rng, np.random.Generator):
        raw = rng.bit_generator.random_raw  # 64 uniform bits per call
        if p == 0.5:
            return np.unpackbits(raw(-(-n // 64)).view(np.uint8), count=n).view(bool).reshape(shape)
        for bits, dt in ((8, np.uint8), (16, np.uint16)):
            thr = p * 2**bits
            if thr == int(thr):
                return raw(-(-n * bits // 64)).view(dt)[:n].reshape(shape) >= dt(int(thr))
    return rng.random(shape, dtype=np.float32) >= np.float32(p)


def dropout_forward(X, p=0.5, train=True, seed=None, rng=None, out=None):
    """Inverted dropout: drop each unit with probability ``p``, scale kept units by 1/(1-p).

    X: any shape; p: drop probability in [0, 1).
    seed: the coursework's form: the keep-mask comes from NumPy's legacy
        ``RandomState(seed)`` uniforms, kept where ``u >= p`` (the same mask for the same seed).
    rng: a NumPy/CuPy ``Generator`` (a fresh mask on every call); used when seed is None.
        (A generator passed positionally in ``seed``'s place, as gpunet 0.1 took it, is used as ``rng``.)
    out: ``out=X`` drops in place (the model's fast path) and returns ``(X, None)``;
        its backward is then ``relu_backward(dout, out, scale=1/(1-p))``.
    Returns ``(out, mask)``: ``mask`` is the scaled keep-mask in X's dtype, or
    ``(X, None)`` when ``train`` is False or ``p == 0``.
    """
    _check_p(p)
    if not train or p == 0.0:
        return X, None
    xp = backend.get_array_module(X)
    scale = X.dtype.type(1.0 / (1.0 - p))
    if seed is not None and not isinstance(seed, (int, np.integer)) and hasattr(seed, "random"):
        seed, rng = None, seed  # gpunet <= 0.1 took the generator as the 4th positional argument
    if seed is not None:
        keep = xp.asarray(np.random.RandomState(seed).random_sample(X.shape) >= p)
    else:
        rng = rng if rng is not None else _rng_for(xp)
        if out is X:  # in place: one kernel on the GPU
            return get_ops(X).dropout_(X, p, rng, keep_mask), None
        keep = keep_mask(rng, X.shape, p)
    if out is not None:
        xp.multiply(X, keep, out=out)
        out *= scale
        return out, None
    mask = keep.astype(X.dtype)  # keep-mask * scale in X's dtype (no float64 upcast)
    mask *= scale
    return X * mask, mask


def dropout_backward(dout, mask, p=0.5, train=True):
    """Gradient of ``dropout_forward``: ``dout * mask`` in training, ``dout`` at test time."""
    _check_p(p)
    if not train or p == 0.0 or mask is None:
        return dout
    return dout * mask
