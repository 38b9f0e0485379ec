"""Max pooling over size x size windows, NCHW, no padding; overlapping windows allowed.

One strided operation per window offset (size*size of them), never a loop over
pixels or samples. Ties go to the first maximum in row-major window order, as in
PyTorch. Windows that tile the input exactly (the usual 2x2, stride 2) take a fast
path: a running ``maximum`` forward, and a backward that finds each window's maximum
again from the saved output.

On NumPy such tiled windows take the CPU's form (``_cpu_max``/``_cpu_grad``) when X is
C-contiguous: the images (the two leading axes together) go in blocks that fit the L2 cache
(``threads.blocked``), shared among the thread team (``threads.split``); the forward is a maximum
over whole rows first (contiguous), then over the columns; the backward compares each input row
with the maxima repeated along the row and sends the gradient where they are equal, which is the
first maximum of every window as long as no window holds its maximum twice -- counted per block,
and a block where one does goes through the per-offset form. The values are the same either way.
"""

from __future__ import annotations

import numpy as np

from .. import backend, threads


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
        if _cpu_ok(self, X, size, stride):
            out = _cpu_max(X, size)
            if cache is not None:
                cache["out"] = out
            return out
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
        if _cpu_ok(self, X, size, stride_):
            out = cache.get("out") if cache else None
            return _cpu_grad(dout, X, _cpu_max(X, size) if out is None else out, size)
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
        if _cpu_ok(self, X, size, stride):
            out = self.max_pool2d_forward(X, size, stride, cache=cache)
            return np.maximum(out, 0)  # the cache keeps the maxima themselves: each window has one
        out = self.max_pool2d_forward(X, size, stride, cache=cache)
        return backend.get_array_module(out).maximum(out, 0, out=out)

    def max_pool2d_relu_backward(self, dout, X, out, size=2, stride=None, cache=None):
        """Gradient of ``max_pool2d_relu_forward``; out: its output."""
        xp = backend.get_array_module(dout)
        return self.max_pool2d_backward(xp.multiply(dout, out > 0), X, size, stride, cache=cache)


# ---------------------------------------------------------------------- the CPU's blocked form
def _cpu_ok(ops, X, size, stride):
    """The CPU's form applies: NumPy, tiled windows, X C-contiguous (module docstring)."""
    stride = size if stride is None else stride
    return (
        not ops.on_device
        and isinstance(X, np.ndarray)
        and X.ndim == 4
        and X.flags.c_contiguous
        and _tiles(X, size, stride)
    )


def _cpu_max(X, s):
    """Maxima of the s x s tiles of a C-contiguous X (A, B, H, W) -> (A, B, H/s, W/s)."""
    A, B, H, W = X.shape
    Ho, Wo = H // s, W // s
    imgs = X.reshape(A * B, Ho, s, W)
    out = np.empty((A * B, Ho, Wo), X.dtype)

    def run(lo, hi):
        rows = np.empty((min(hi - lo, _block(X, s, lo, hi)), Ho, W), X.dtype)
        for a, b in threads.blocked(lo, hi, H * W * X.itemsize):
            r = rows[: b - a]
            np.maximum(imgs[a:b, :, 0], imgs[a:b, :, 1], out=r) if s > 1 else np.copyto(r, imgs[a:b, :, 0])
            for i in range(2, s):
                np.maximum(r, imgs[a:b, :, i], out=r)
            cols = r.reshape(b - a, Ho, Wo, s)
            o = out[a:b]
            np.maximum(cols[..., 0], cols[..., 1], out=o) if s > 1 else np.copyto(o, cols[..., 0])
            for j in range(2, s):
                np.maximum(o, cols[..., j], out=o)

    threads.split(run, A * B, X.size)
    return out.reshape(A, B, Ho, Wo)


def _block(X, s, lo, hi):
    A, B, H, W = X.shape
    blocks = threads.blocked(lo, hi, H * W * X.itemsize)
    return blocks[0][1] - blocks[0][0]


def _cpu_grad(dout, X, out, s):
    """Gradient of ``_cpu_max`` (first maximum of each window, row-major), blocked; dout, out: (A, B,
    H/s, W/s), out the maxima (not rectified)."""
    A, B, H, W = X.shape
    Ho, Wo = H // s, W // s
    imgs = X.reshape(A * B, Ho, s, W)
    m = out.reshape(A * B, Ho, Wo)
    d = dout.reshape(A * B, Ho, Wo)
    dX = np.empty(X.shape, np.result_type(dout, X))
    dimgs = dX.reshape(A * B, Ho, s, W)

    def run(lo, hi):
        n = _block(X, s, lo, hi)
        up = np.empty((n, Ho, W), X.dtype)
        dup = np.empty((n, Ho, W), dX.dtype)
        hit = np.empty((n, Ho, s, W), bool)
        for a, b in threads.blocked(lo, hi, H * W * X.itemsize):
            k = b - a
            _repeat(up[:k], m[a:b], s)  # each maximum repeated s times along the row
            h = hit[:k]
            np.equal(imgs[a:b], up[:k, :, None, :], out=h)
            if np.count_nonzero(h) != k * Ho * Wo:  # a window holds its maximum twice (or a NaN)
                blk = slice(a, b)
                dimgs[blk] = _first_max_grad(d[blk], imgs[blk], m[blk], s)
                continue
            _repeat(dup[:k], d[a:b], s)
            np.multiply(h, dup[:k, :, None, :], out=dimgs[a:b])

    threads.split(run, A * B, 2 * X.size)
    return dX


def _repeat(dst, src, s):
    """dst (k, Ho, Wo*s) = src (k, Ho, Wo) with each value repeated s times. Pairs of float32 in one
    pass as 64-bit words (the 32-bit pattern times 2**32 + 1 is the pattern twice)."""
    if s == 2 and src.dtype == np.float32 and src.flags.c_contiguous and dst.flags.c_contiguous:
        np.multiply(src.view(np.uint32), np.uint64(0x100000001), out=dst.view(np.uint64), casting="unsafe")
    else:
        np.copyto(dst.reshape(src.shape + (s,)), src[..., None])


def _first_max_grad(d, imgs, m, s):
    """The per-offset form for one block: d, m (k, Ho, Wo); imgs (k, Ho, s, W) -> (k, Ho, s, W)."""
    k, Ho, Wo = m.shape
    x = imgs.reshape(k, Ho, s, Wo, s)
    g = np.zeros(x.shape, d.dtype)
    taken = np.zeros(m.shape, bool)
    for i in range(s):
        for j in range(s):
            hit = (x[:, :, i, :, j] == m) & ~taken
            taken |= hit
            g[:, :, i, :, j] = d * hit
    return g.reshape(k, Ho, s, Wo * s)
