"""2-D convolution (cross-correlation, as in PyTorch), NCHW, by im2col and one GEMM.

The patches are gathered channel-major, ``cols: (C*KH*KW, N*Ho*Wo)``, with one
strided copy per kernel offset (KH*KW copies, never a loop over pixels or samples),
so the forward, the weight gradient and the input gradient are each a single large
matrix product: ``W (F, CKK) @ cols``, ``dout (F, NHoWo) @ cols.T`` and
``W.T @ dout``. On CuPy the same code runs as cuBLAS GEMMs plus strided copies.
"""

from __future__ import annotations

from .. import backend


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
        # patches plus a row of ones: [W | b] @ [cols; 1] adds the bias inside the product
        cols1 = self.im2col(_as_cnhw(X, layout), KH, KW, stride, padding, ones=True).reshape(
            C * KH * KW + 1, N * Ho * Wo
        )
        if cache is not None:
            cache["cols1"] = cols1
        Wb = xp.concatenate([W.reshape(F, -1), b.reshape(F, 1)], axis=1)  # (F, C*KH*KW + 1)
        out = xp.matmul(Wb, cols1).reshape(F, N, Ho, Wo)
        return out if layout == "CNHW" else xp.ascontiguousarray(out.transpose(1, 0, 2, 3))

    def conv2d_backward(self, dout, X, W, b, stride=1, padding=0, cache=None, need_dx=True, layout="NCHW"):
        """The NumPy form of ``gpunet.layers.conv2d_backward`` (shapes and arguments there)."""
        N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding, layout)
        want = (N, F, Ho, Wo) if layout == "NCHW" else (F, N, Ho, Wo)
        if tuple(dout.shape) != want:
            raise ValueError(f"conv2d_backward: expected dout of shape {want}, got {tuple(dout.shape)}")
        xp = backend.get_array_module(dout)
        cols1 = cache.get("cols1") if cache else None
        if cols1 is None:
            cols1 = self.im2col(_as_cnhw(X, layout), KH, KW, stride, padding, ones=True).reshape(
                C * KH * KW + 1, N * Ho * Wo
            )
        d2 = xp.ascontiguousarray(_as_cnhw(dout, layout)).reshape(F, N * Ho * Wo)
        dWb = xp.matmul(d2, cols1.T)  # [dW | db]: the ones row sums dout
        # both columns of [dW | db] are strided views: copy them out, so a gradient is always a plain array
        dW, db = xp.ascontiguousarray(dWb[:, :-1]).reshape(W.shape), xp.ascontiguousarray(dWb[:, -1])
        dX = None
        if need_dx:
            dcols = xp.matmul(W.reshape(F, -1).T, d2).reshape(C, KH, KW, N, Ho, Wo)
            dXt = self.col2im(dcols, (C, N) + tuple(_as_cnhw(X, layout).shape[2:]), stride, padding)
            dX = dXt if layout == "CNHW" else xp.ascontiguousarray(dXt.transpose(1, 0, 2, 3))
        return dX, dW, db
