"""Max pooling over size x size windows, NCHW, no padding; overlapping windows allowed.

One strided operation per window offset (size*size of them), never a loop over
pixels or samples. Ties go to the first maximum in row-major window order, as in
PyTorch. Windows that tile the input exactly (the usual 2x2, stride 2) take a fast
path: a running ``maximum`` forward, and a backward that finds each window's maximum
again from the saved output.
"""

from __future__ import annotations

import numpy as np

from .. import backend


def _geometry(X, size, stride):
    stride = size if stride is None else stride
    if X.ndim != 4:
        raise ValueError(f"max_pool2d: expected X (N, C, H, W), got shape {tuple(X.shape)}")
    if size < 1 or stride < 1 or X.shape[2] < size or X.shape[3] < size:
        raise ValueError(
            f"max_pool2d: a {size}x{size} window with stride {stride} does not fit an input "
            f"of {X.shape[2]}x{X.shape[3]}"
        )
    Ho, Wo = (X.shape[2] - size) // stride + 1, (X.shape[3] - size) // stride + 1
    return stride, Ho, Wo


def _windows(X, size, stride, Ho, Wo):
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for i in range(size):
        for j in range(size):
            yield i * size + j, X[:, :, i : i + hs : stride, j : j + ws : stride], (i, j)


def _tiles(X, size, stride):
    """True when the windows tile X exactly (stride == size, sizes divisible): the fast path."""
    return stride == size and X.shape[2] % size == 0 and X.shape[3] % size == 0


class PoolOps:
    """The pool primitives of ``NumpyOps`` (the NumPy reference; a backend overrides what it has a kernel
    for)."""

    def max_pool2d_forward(self, X, size=2, stride=None, cache=None):
        """The NumPy form of ``gpunet.layers.max_pool2d_forward`` (shapes and arguments there)."""
        stride, Ho, Wo = _geometry(X, size, stride)
        xp = backend.get_array_module(X)
        if _tiles(X, size, stride):
            # fast path: a running maximum over the size*size strided views, no argmax kept
            views = [v for _, v, _ in _windows(X, size, stride, Ho, Wo)]
            out = xp.maximum(views[0], views[1]) if len(views) > 1 else views[0].copy()
            for v in views[2:]:
                xp.maximum(out, v, out=out)
            if cache is not None:
                cache["out"] = out
            return out
        out, arg = None, None
        for k, v, _ in _windows(X, size, stride, Ho, Wo):
            if out is None:
                out = v.copy()
                arg = xp.zeros(out.shape, dtype=np.uint8 if size * size < 256 else np.int32)
                continue
            better = v > out
            xp.copyto(out, v, where=better)
            xp.copyto(arg, k, where=better)
        if cache is not None:
            cache["arg"] = arg
        return out

    def max_pool2d_backward(self, dout, X, size=2, stride=None, cache=None):
        """The NumPy form of ``gpunet.layers.max_pool2d_backward`` (shapes and arguments there)."""
        stride_, Ho, Wo = _geometry(X, size, stride)
        xp = backend.get_array_module(dout)
        hs, ws = stride_ * (Ho - 1) + 1, stride_ * (Wo - 1) + 1
        if _tiles(X, size, stride_):
            out = cache.get("out") if cache else None
            if out is None:
                out = self.max_pool2d_forward(X, size, stride)
            dX = xp.empty(X.shape, dtype=dout.dtype)  # every position lies in exactly one window
            taken = None
            for k, v, (i, j) in _windows(X, size, stride_, Ho, Wo):
                hit = v == out  # this offset holds the window's maximum ...
                if taken is None:
                    taken = hit.copy()
                else:
                    xp.greater(hit, taken, out=hit)  # ... and no earlier offset did (first max wins)
                    taken |= hit
                xp.multiply(dout, hit, out=dX[:, :, i : i + hs : stride_, j : j + ws : stride_])
            return dX
        arg = cache.get("arg") if cache else None
        if arg is None:
            c = {}
            self.max_pool2d_forward(X, size, stride, cache=c)
            arg = c["arg"]
        dX = xp.zeros(X.shape, dtype=dout.dtype)
        for k, _, (i, j) in _windows(X, size, stride_, Ho, Wo):
            dX[:, :, i : i + hs : stride_, j : j + ws : stride_] += dout * (arg == k)
        return dX

    def max_pool2d_relu_forward(self, X, size=2, stride=None, cache=None):
        """The named fusion of a ReLU and the max pool after it: ``relu(max_pool2d(X))``, which equals
        ``max_pool2d(relu(X))`` with 4x fewer values to rectify. ``cache`` keeps what the pool keeps; the
        output it keeps is already rectified (a window whose maximum is <= 0 gets no gradient either way)."""
        out = self.max_pool2d_forward(X, size, stride, cache=cache)
        return backend.get_array_module(out).maximum(out, 0, out=out)

    def max_pool2d_relu_backward(self, dout, X, out, size=2, stride=None, cache=None):
        """Gradient of ``max_pool2d_relu_forward``; out: its output."""
        xp = backend.get_array_module(dout)
        return self.max_pool2d_backward(xp.multiply(dout, out > 0), X, size, stride, cache=cache)
