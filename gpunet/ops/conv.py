"""2-D convolution (cross-correlation, as in PyTorch), NCHW, by im2col and one GEMM.

The patches are gathered channel-major, ``cols: (C*KH*KW, N*Ho*Wo)``, with one
strided copy per kernel offset (KH*KW copies, never a loop over pixels or samples),
so the forward, the weight gradient and the input gradient are each a single large
matrix product: ``W (F, CKK) @ cols``, ``dout (F, NHoWo) @ cols.T`` and
``W.T @ dout``. On CuPy the same code runs as cuBLAS GEMMs plus strided copies, the products
through ``self.affine`` (``gemm.matmul``: a direct cuBLAS call a CUDA graph can capture).

On NumPy (``_cpu_forward``/``_cpu_backward``) the copies are shared among the thread team and the
products stay single GEMMs on BLAS's own threads, except the input gradient's: its patch
gradients are computed and summed back in blocks of samples of about two L2 caches
(``threads.blocked``, the cache size read from the machine), one block per thread at a time with
one BLAS thread each, so the (C*KH*KW, N*Ho*Wo) array is never written out whole. The values are
the single product's up to float rounding (BLAS blocks its sums differently).
"""

from __future__ import annotations

import numpy as np

from .. import backend, threads


def _out_size(size, k, stride, padding, what):
    o = (size + 2 * padding - k) // stride + 1
    if o < 1 or stride < 1 or padding < 0:
        raise ValueError(
            f"{what}: a kernel of {k} with stride {stride} and padding {padding} does not fit "
            f"an input of {size}"
        )
    return o


def _geometry(X, W, stride, padding, layout):
    if layout not in ("NCHW", "CNHW"):
        raise ValueError(f"conv2d: layout: expected 'NCHW' or 'CNHW', got {layout!r}")
    if X.ndim != 4 or W.ndim != 4:
        raise ValueError(
            f"conv2d: expected X ({', '.join(layout)}) and W (F, C, KH, KW), got {tuple(X.shape)} "
            f"and {tuple(W.shape)}"
        )
    N, C, H, Wd = X.shape if layout == "NCHW" else (X.shape[1], X.shape[0]) + tuple(X.shape[2:])
    F, Cw, KH, KW = W.shape
    if C != Cw:
        raise ValueError(
            f"conv2d: X has {C} channels but W expects {Cw} (W is (F, C, KH, KW) = {tuple(W.shape)})"
        )
    return (
        N,
        C,
        F,
        KH,
        KW,
        _out_size(H, KH, stride, padding, "conv2d height"),
        _out_size(Wd, KW, stride, padding, "conv2d width"),
    )


def _as_cnhw(X, layout):
    return X.transpose(1, 0, 2, 3) if layout == "NCHW" else X


class ConvOps:
    """The conv primitives of ``NumpyOps`` (the NumPy reference; a backend overrides what it has a kernel
    for)."""

    def im2col(self, Xt, KH, KW, stride=1, padding=0, ones=False):
        """The NumPy form of ``gpunet.layers.conv.im2col`` (shapes and arguments there)."""
        xp = backend.get_array_module(Xt)
        C, N, H, W = Xt.shape
        Ho, Wo = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
        if padding:
            Xt = xp.pad(Xt, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        size = C * KH * KW * N * Ho * Wo
        buf = xp.empty(size + (N * Ho * Wo if ones else 0), dtype=Xt.dtype)
        if ones:
            buf[size:] = 1
        cols = buf[:size].reshape(C, KH, KW, N, Ho, Wo)
        hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
        for i in range(KH):
            for j in range(KW):
                cols[:, i, j] = Xt[:, :, i : i + hs : stride, j : j + ws : stride]
        return buf if ones else cols

    def col2im(self, dcols, shape_cnhw, stride=1, padding=0):
        """The NumPy form of ``gpunet.layers.conv.col2im`` (shapes and arguments there)."""
        xp = backend.get_array_module(dcols)
        C, N, H, W = shape_cnhw
        _, KH, KW, _, Ho, Wo = dcols.shape
        hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
        dXt = xp.zeros((C, N, H + 2 * padding, W + 2 * padding), dtype=dcols.dtype)
        for i in range(KH):
            for j in range(KW):
                dXt[:, :, i : i + hs : stride, j : j + ws : stride] += dcols[:, i, j]
        return dXt[:, :, padding : padding + H, padding : padding + W] if padding else dXt

    def conv2d_forward(self, X, W, b, stride=1, padding=0, cache=None, layout="NCHW"):
        """The NumPy form of ``gpunet.layers.conv2d_forward`` (shapes and arguments there)."""
        N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding, layout)
        xp = backend.get_array_module(X)
        if xp is np and not self.on_device:
            out = _cpu_forward(_as_cnhw(X, layout), W, b, stride, padding, (KH, KW, Ho, Wo), cache)
            return out if layout == "CNHW" else np.ascontiguousarray(out.transpose(1, 0, 2, 3))
        # patches plus a row of ones: [W | b] @ [cols; 1] adds the bias inside the product
        cols1 = self.im2col(_as_cnhw(X, layout), KH, KW, stride, padding, ones=True).reshape(
            C * KH * KW + 1, N * Ho * Wo
        )
        if cache is not None:
            cache["cols1"] = cols1
        Wb = xp.concatenate([W.reshape(F, -1), b.reshape(F, 1)], axis=1)  # (F, C*KH*KW + 1)
        out = self.affine(Wb, cols1).reshape(F, N, Ho, Wo)  # on CuPy: gemm.matmul (capturable)
        return out if layout == "CNHW" else xp.ascontiguousarray(out.transpose(1, 0, 2, 3))

    def conv2d_backward(self, dout, X, W, b, stride=1, padding=0, cache=None, need_dx=True, layout="NCHW"):
        """The NumPy form of ``gpunet.layers.conv2d_backward`` (shapes and arguments there)."""
        N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding, layout)
        want = (N, F, Ho, Wo) if layout == "NCHW" else (F, N, Ho, Wo)
        if tuple(dout.shape) != want:
            raise ValueError(f"conv2d_backward: expected dout of shape {want}, got {tuple(dout.shape)}")
        xp = backend.get_array_module(dout)
        if xp is np and not self.on_device:
            cols1 = cache.get("cols1") if cache else None
            Xt = _as_cnhw(X, layout)
            if cols1 is None:
                c = {}
                _cpu_forward(Xt, W, b, stride, padding, (KH, KW, Ho, Wo), c)
                cols1 = c["cols1"]
            shape_padded = (C, N, Xt.shape[2] + 2 * padding, Xt.shape[3] + 2 * padding)
            d = np.ascontiguousarray(_as_cnhw(dout, layout))
            dXp, dWb = _cpu_backward(cols1, d, W, shape_padded, stride, need_dx)
            dW, db = np.ascontiguousarray(dWb[:, :-1]).reshape(W.shape), np.ascontiguousarray(dWb[:, -1])
            if dXp is None:
                return None, dW, db
            H, Wd = Xt.shape[2:]
            dXt = dXp[:, :, padding : padding + H, padding : padding + Wd] if padding else dXp
            return (dXt if layout == "CNHW" else np.ascontiguousarray(dXt.transpose(1, 0, 2, 3))), dW, db
        cols1 = cache.get("cols1") if cache else None
        if cols1 is None:
            cols1 = self.im2col(_as_cnhw(X, layout), KH, KW, stride, padding, ones=True).reshape(
                C * KH * KW + 1, N * Ho * Wo
            )
        d2 = xp.ascontiguousarray(_as_cnhw(dout, layout)).reshape(F, N * Ho * Wo)
        dWb = self.affine(d2, cols1.T)  # [dW | db]: the ones row sums dout
        # both columns of [dW | db] are strided views: copy them out, so a gradient is always a plain array
        dW, db = xp.ascontiguousarray(dWb[:, :-1]).reshape(W.shape), xp.ascontiguousarray(dWb[:, -1])
        dX = None
        if need_dx:
            dcols = self.affine(W.reshape(F, -1).T, d2).reshape(C, KH, KW, N, Ho, Wo)
            dXt = self.col2im(dcols, (C, N) + tuple(_as_cnhw(X, layout).shape[2:]), stride, padding)
            dX = dXt if layout == "CNHW" else xp.ascontiguousarray(dXt.transpose(1, 0, 2, 3))
        return dX, dW, db


# ---------------------------------------------------------------------- the CPU's blocked form
def _padded(Xt, padding):
    """Xt (C, N, H, W) with ``padding`` zeros around H and W, a new C-contiguous array (one pass)."""
    if not padding:
        return np.ascontiguousarray(Xt)
    C, N, H, W = Xt.shape
    p = padding
    Xp = np.empty((C, N, H + 2 * p, W + 2 * p), Xt.dtype)
    Xp[:, :, :p], Xp[:, :, p + H :], Xp[:, :, p : p + H, :p], Xp[:, :, p : p + H, p + W :] = 0, 0, 0, 0
    Xp[:, :, p : p + H, p : p + W] = Xt
    return Xp


def _gather(c6, Xp, n0, n1, stride):
    """Patches of samples [n0, n1) of the padded Xp into c6 (C, KH, KW, n1 - n0, Ho, Wo)."""
    _, KH, KW, _, Ho, Wo = c6.shape
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    for i in range(KH):
        for j in range(KW):
            c6[:, i, j, : n1 - n0] = Xp[:, n0:n1, i : i + hs : stride, j : j + ws : stride]


def _scatter(dXp, dc6, n0, n1, stride):
    """The adjoint of ``_gather``: add the patch gradients dc6 of samples [n0, n1) into dXp."""
    _, KH, KW, _, Ho, Wo = dc6.shape
    hs, ws = stride * (Ho - 1) + 1, stride * (Wo - 1) + 1
    dXp[:, n0:n1] = 0
    for i in range(KH):
        for j in range(KW):
            dXp[:, n0:n1, i : i + hs : stride, j : j + ws : stride] += dc6[:, i, j, : n1 - n0]


def _team_ranges(N, work):
    """Contiguous sample ranges, one per thread that ``threads.concurrently`` will run side by side."""
    t = max(1, min(threads.ways(work), N))
    return [(N * k // t, N * (k + 1) // t) for k in range(t)]


def _cols_buffer(C, KH, KW, nb, Ho, Wo, dtype, ones):
    """A (C*KH*KW [+1], nb*Ho*Wo) patch buffer (its last row ones when ``ones``) and its 6-D view."""
    K = C * KH * KW
    cols = np.empty((K + (1 if ones else 0), nb * Ho * Wo), dtype)
    if ones:
        cols[K] = 1
    return cols, cols[:K].reshape(C, KH, KW, nb, Ho, Wo)


def _cpu_forward(Xt, W, b, stride, padding, geo, cache):
    """conv of Xt (C, N, H, W) -> (F, N, Ho, Wo): the patches gathered by the thread team (sample
    ranges), then one product on BLAS's own threads (module docstring)."""
    KH, KW, Ho, Wo = geo
    C, N = Xt.shape[:2]
    F = W.shape[0]
    Xp = _padded(Xt, padding)
    dtype = np.result_type(Xt, W)
    cols, c6 = _cols_buffer(C, KH, KW, N, Ho, Wo, dtype, True)
    threads.split(lambda lo, hi: _gather(c6[:, :, :, lo:hi], Xp, lo, hi, stride), N, cols.size)
    if cache is not None:
        cache["cols1"] = cols
    Wb = np.concatenate([W.reshape(F, -1), b.reshape(F, 1)], axis=1).astype(dtype, copy=False)
    return np.matmul(Wb, cols).reshape(F, N, Ho, Wo)


def _cpu_backward(cols, d, W, shape_padded, stride, need_dx):
    """``(dXp, [dW | db])`` of the blocked forward: ``cols`` its kept patches (K1, N*Ho*Wo), d: dout
    (F, N, Ho, Wo) C-contiguous; dXp: the padded input's gradient (None without ``need_dx``),
    its blocks' patch gradients summed back while in the cache."""
    F, C, KH, KW = W.shape
    N = shape_padded[1]
    Ho, Wo = d.shape[2:]
    dtype = np.result_type(d, W)
    d2 = d.reshape(F, -1)
    dWb = np.matmul(d2, cols.T)  # one product, BLAS's own threads
    if not need_dx:
        return None, dWb
    WT = np.ascontiguousarray(W.reshape(F, -1).T, dtype=dtype)
    dXp = np.empty(shape_padded, dtype)
    P = Ho * Wo

    def run(lo, hi):
        blocks = threads.blocked(lo, hi, (C * KH * KW) * P * dtype.itemsize, share=2.0)
        dcols, dc6 = _cols_buffer(C, KH, KW, blocks[0][1] - blocks[0][0], Ho, Wo, dtype, False)
        for n0, n1 in blocks:
            m = (n1 - n0) * P
            np.matmul(WT, d2[:, n0 * P : n1 * P], out=dcols[:, :m])
            _scatter(dXp, dc6, n0, n1, stride)

    work = F * C * KH * KW * N * P
    threads.concurrently(*[lambda r=r: run(*r) for r in _team_ranges(N, work)], work=work)
    return dXp, dWb
