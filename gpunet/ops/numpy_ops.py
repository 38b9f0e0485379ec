"""``NumpyOps``: the NumPy form of every primitive of the layers and the update rules.

These are the references: ``CupyOps`` (``cupy_ops.py``) overrides a method only where it has a
GPU kernel, and falls back to the method here when the kernel's preconditions fail. The CPU's
own fast paths (the row-split product, the block-wise momentum update on the thread team) are
part of the NumPy form: they compute the same values in the same order of rounding, or say where
they do not. Every method takes and returns arrays of the object's ``xp``; ``_`` marks in place.
"""

from __future__ import annotations

import numpy as np

from .. import threads
from .batchnorm import NormOps
from .conv import ConvOps
from .pool import PoolOps


class NumpyOps(ConvOps, PoolOps, NormOps):
    """The primitives on NumPy (see the module docstring); ``get_ops`` hands out one instance.
    Convolution, pooling and batch norm are in ``conv.py``, ``pool.py`` and ``batchnorm.py``."""

    name = "numpy"
    xp = np
    on_device = False

    # ------------------------------------------------------------------ affine
    def affine(self, X2, W, out=None):
        """``X2 @ W``. X2: (N, D); W: (D, M); out: None or an (N, M) buffer.

        On the CPU a large product is the sum of one product per core over a range of W's rows,
        each core reading only the rows it updates in the optimizer's threaded pass
        (``threads.cuts``); its values can then differ from one whole product's in the last bits.
        """
        t = min(threads.ways(X2.size * W.shape[1]), W.shape[0] // 64)
        if t <= 1:
            return np.matmul(X2, W, out=out)
        D, M = W.shape
        rows = [c // M for c in threads.cuts(D * M, t)[:-1]] + [D]
        dtype = np.result_type(X2, W)
        out = np.empty((X2.shape[0], M), dtype) if out is None else out
        parts = [out] + [np.empty((X2.shape[0], M), dtype) for _ in range(t - 1)]
        threads.concurrently(
            *[
                lambda k=k: np.matmul(X2[:, rows[k] : rows[k + 1]], W[rows[k] : rows[k + 1]], out=parts[k])
                for k in range(t)
            ],
            work=X2.size * M,
        )
        for part in parts[1:]:
            out += part
        return out

    def affine_backward(self, X2, dout, W, o_dx=None, o_dw=None):
        """``(dout @ W.T, X2.T @ dout)``: the input and weight gradients of ``affine``. On the CPU the two
        products run side by side, one per core, when large (BLAS may then sum in another order)."""
        dW = np.empty(W.shape, np.result_type(X2, dout)) if o_dw is None else o_dw
        dX = np.empty((dout.shape[0], W.shape[0]), np.result_type(dout, W)) if o_dx is None else o_dx
        threads.concurrently(
            lambda: np.matmul(X2.T, dout, out=dW),
            lambda: np.matmul(dout, W.T, out=dX),
            work=dout.size * W.shape[0],
        )
        return dX, dW

    def affine_bias(self, X2, W, b, relu, out=None, saved=None):
        """``relu(X2 @ W + b)`` (``affine`` then ``bias_``; without ``relu`` no ReLU). saved: a dict where a
        backend keeps what ``affine_relu_backward`` can use (the GPU: the ReLU bitmask); nothing here."""
        return self.bias_(self.affine(X2, W, out), b, relu)

    def affine_relu_backward(self, X2, dout, W, scale=1.0, saved=None, o_dx=None, o_dw=None):
        """Backward of ``X2 @ W`` where X2 (N, D) is a ReLU's output (then dropout in place: ``scale`` =
        1/(1-p)): ``(dZ, dW, db_prev)`` with dZ = (dout @ W.T) * (X2 > 0) * scale (N, D), the gradient at
        the ReLU's input; dW = X2.T @ dout (D, M); db_prev = dZ.sum(0) (D,), the bias gradient of the layer
        that produced X2. saved: what that layer's ``affine_bias`` kept. o_dx, o_dw: optional buffers."""
        dZ, dW = self.affine_backward(X2, dout, W, o_dx, o_dw)
        self.relu_backward_(dZ, X2, scale)
        return dZ, dW, dZ.sum(axis=0)

    def bias_(self, h, b, relu):
        """``h += b``, then ReLU when ``relu``, in place. h: (N, M); b: (M,)."""
        h += b
        if relu:
            # multiplying by the boolean rather than np.maximum: see docs/BENCHMARKS.md
            self.xp.multiply(h, h > 0, out=h)
        return h

    # ------------------------------------------------------------------ activations
    def relu_backward_(self, d, a, scale=1.0):
        """``d = d * (a > 0) * scale`` in place (ReLU backward from its output ``a``; ``scale`` 1/(1-p)
        after an in-place dropout). d, a: the same shape."""
        self.xp.multiply(d, a > 0, out=d)
        if scale != 1.0:
            d *= d.dtype.type(scale)
        return d

    def dropout_(self, h, p, rng, keep_mask):
        """Inverted dropout of ``h`` in place: units dropped with probability ``p``, kept ones scaled by
        1/(1-p). ``keep_mask(rng, shape, p)`` draws the keep-mask."""
        keep = keep_mask(rng, h.shape, p)
        self.xp.multiply(h, keep, out=h)
        h *= h.dtype.type(1.0 / (1.0 - p))
        return h

    # ------------------------------------------------------------------ batch norm + ReLU (fused op)
    def batchnorm_relu_forward(
        self, X, gamma, beta, running_mean, running_var, train=True, momentum=0.9, eps=1e-5, axis=1
    ):
        """``relu(batchnorm_forward(X, ...))``: ``(out, cache)``; the reference of the fused op is the
        composition of the reference ops (``NormOps``' by name: a backend's own batch norm is not the
        reference of its fused op; a GPU backend runs the fused op as one graph)."""
        out, bn = NormOps.batchnorm_forward(
            self, X, gamma, beta, running_mean, running_var, train, momentum, eps, axis
        )
        self.xp.maximum(out, 0, out=out)  # out is the batch norm's own new array
        return out, {"bn": bn, "out": out}

    def batchnorm_relu_backward(self, dout, cache):
        """``(dX, dgamma, dbeta)`` of ``batchnorm_relu_forward``: the ReLU's mask from its output, then
        ``batchnorm_backward``. dout is not written."""
        return NormOps.batchnorm_backward(self, self.xp.multiply(dout, cache["out"] > 0), cache["bn"])

    # ------------------------------------------------------------------ loss
    def softmax_xent(self, logits, y):
        """Mean softmax cross-entropy of (N, C) ``logits`` with labels ``y`` (N,), and its gradient
        ``(softmax - onehot) / N``; a label outside [0, C) raises ValueError."""
        xp = self.xp
        N, C = logits.shape
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

    # ------------------------------------------------------------------ update rules (in place)
    def sgd_(self, w, dw, lr):
        """``w -= lr * dw``."""
        w -= w.dtype.type(lr) * dw
        return w

    def momentum_(self, w, dw, v, mu, lr, nesterov=False):
        """``v = mu * v - lr * dw`` then ``w += v`` (Nesterov: ``w += mu * v - lr * dw``).

        On the CPU the update runs block by block so w, dw and v are read from memory once per
        step instead of once per operation, with the blocks shared among the thread team.
        """
        mu, lr = w.dtype.type(mu), w.dtype.type(lr)
        if self.on_device or not (w.flags.c_contiguous and dw.flags.c_contiguous and v.flags.c_contiguous):
            v *= mu
            v -= lr * dw
            w += mu * v - lr * dw if nesterov else v
            return w
        wf, gf, vf = w.reshape(-1), dw.reshape(-1), v.reshape(-1)
        chunk = threads.CHUNK

        def blocks(lo, hi):
            tmp = np.empty((2, min(hi - lo, chunk)), w.dtype)
            for i in range(lo, hi, chunk):
                wb, gb, vb = wf[i : i + chunk], gf[i : i + chunk], vf[i : i + chunk]
                if i + chunk > hi:
                    wb, gb, vb = wb[: hi - i], gb[: hi - i], vb[: hi - i]
                t, u = tmp[0, : wb.size], tmp[1, : wb.size]
                vb *= mu
                np.multiply(gb, lr, out=t)
                vb -= t
                if nesterov:  # w += (mu * v - lr * dw), the same rounding as the formula
                    np.multiply(vb, mu, out=u)
                    u -= t
                    wb += u
                else:
                    wb += vb

        threads.parallel(blocks, w.size)
        return w

    def rmsprop_(self, w, dw, c, decay, lr, eps):
        """``c = decay * c + (1 - decay) * dw**2``; ``w -= lr * dw / (sqrt(c) + eps)``."""
        t = w.dtype.type
        c *= t(decay)
        c += t(1 - decay) * dw * dw
        w -= t(lr) * dw / (self.xp.sqrt(c) + t(eps))
        return w

    def adam_(self, w, dw, m, v, b1, b2, lr_t, inv_sqrt_bc2, eps):
        """Moments, then ``w -= lr_t * m / (sqrt(v) * inv_sqrt_bc2 + eps)`` (lr_t = lr / (1 - b1^t) and
        inv_sqrt_bc2 = 1 / sqrt(1 - b2^t) carry the bias corrections).

        On the CPU the same operations run block by block on the thread team (as ``momentum_``): each
        array is read from memory once per step, the temporaries stay in the cache, the values are
        the same bit for bit.
        """
        t = w.dtype.type
        arrays = (w, dw, m, v)
        if not self.on_device and all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays):
            return _adam_blocked(
                w, dw, m, v, t(b1), t(1 - b1), t(b2), t(1 - b2), t(lr_t), t(inv_sqrt_bc2), t(eps)
            )
        m *= t(b1)
        m += t(1 - b1) * dw
        v *= t(b2)
        v += t(1 - b2) * dw * dw
        denom = self.xp.sqrt(v) * t(inv_sqrt_bc2)
        denom += t(eps)
        w -= t(lr_t) * m / denom
        return w

    def one_launch_refusal(self, arrays_per_param) -> str | None:
        """Why [[dw, w, state...] per parameter] cannot be updated in one launch (None when it can):
        on NumPy never, the rule runs parameter by parameter."""
        return "NumPy updates parameter by parameter"


def _adam_blocked(w, dw, m, v, b1, c1, b2, c2, lr_t, inv, eps):
    """``NumpyOps.adam_``'s operations, in the same order, on CHUNK-sized blocks shared by the team."""
    wf, gf, mf, vf = w.reshape(-1), dw.reshape(-1), m.reshape(-1), v.reshape(-1)
    chunk = threads.CHUNK

    def blocks(lo, hi):
        tmp = np.empty((2, min(hi - lo, chunk)), w.dtype)
        for i in range(lo, hi, chunk):
            j = min(i + chunk, hi)
            wb, gb, mb, vb = wf[i:j], gf[i:j], mf[i:j], vf[i:j]
            a, d = tmp[0, : j - i], tmp[1, : j - i]
            mb *= b1
            np.multiply(gb, c1, out=a)
            mb += a
            vb *= b2
            np.multiply(gb, c2, out=a)
            a *= gb
            vb += a
            np.sqrt(vb, out=d)
            d *= inv
            d += eps
            np.multiply(mb, lr_t, out=a)
            a /= d
            wb -= a

    threads.parallel(blocks, w.size)
    return w
