"""Batch normalisation of (N, D) features or (N, C, H, W) channels.

Training normalises with the batch statistics and updates the running ones in
place, ``running = momentum * running + (1 - momentum) * batch`` (the CS231n
convention; PyTorch's ``momentum=0.1`` is the same update). The batch variance is
the biased one (divided by the number of values), as CS231n computes it, both to
normalise and in the running variance (PyTorch keeps the unbiased one there, larger by
M/(M-1) for M values per channel). At test time the running statistics are used.

On NumPy, training on C-contiguous (C, N, H, W) activations with ``axis=0`` (what ``Sequential``
hands over between convolutions) takes the CPU's form (``_cpu_forward``/``_cpu_backward``): the
channels go in blocks that fit the L2 cache (``threads.blocked``), shared among the thread team
(``threads.split``), so each block is read from memory once and its later passes hit the cache.
The arithmetic is the reference's, channel by channel.
"""

from __future__ import annotations

import numpy as np

from .. import backend, threads
from . import gemm


def _axes(X, axis):
    if X.ndim not in (2, 4):
        raise ValueError(f"batchnorm: expected X (N, D) or (N, C, H, W), got shape {tuple(X.shape)}")
    axis %= X.ndim
    bshape = [1] * X.ndim
    bshape[axis] = -1
    return axis, tuple(a for a in range(X.ndim) if a != axis), tuple(bshape)


def _channel_dot(a, b, axis, axes):
    """Per-channel ``sum(a * b)``; one pass (per-row dot products) when channels lead a contiguous array
    (on the GPU ``gemm.rowdot``: CuPy's einsum is a cuBLAS call, which a CUDA graph's capture refuses)."""
    xp = backend.get_array_module(a)
    if axis == 0 and a.flags.c_contiguous and b.flags.c_contiguous:
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        return xp.einsum("ij,ij->i", a2, b2) if xp is np else gemm.rowdot(xp, a2, b2)
    return (a * b).sum(axis=axes)


class NormOps:
    """The batchnorm primitives of ``NumpyOps`` (the NumPy reference; a backend overrides what it has a
    kernel for)."""

    def batchnorm_forward(
        self, X, gamma, beta, running_mean, running_var, train=True, momentum=0.9, eps=1e-5, axis=1
    ):
        """The NumPy form of ``gpunet.layers.batchnorm_forward`` (shapes and arguments there)."""
        axis, axes, bshape = _axes(X, axis)
        xp = backend.get_array_module(X)
        t = X.dtype.type
        if train and _cpu_ok(self, X, axis):
            out, xc, mean, var, inv_std = _cpu_forward(X, gamma, beta, t(eps))
            running_mean *= t(momentum)
            running_mean += t(1 - momentum) * mean
            running_var *= t(momentum)
            running_var += t(1 - momentum) * var
            return out, {"xc": xc, "inv_std": inv_std, "gamma": gamma, "train": train, "axis": axis}
        if train:
            mean = X.mean(axis=axes)
            xc = X - mean.reshape(bshape)
            var = _channel_dot(xc, xc, axis, axes) / t(X.size // X.shape[axis])
            running_mean *= t(momentum)
            running_mean += t(1 - momentum) * mean
            running_var *= t(momentum)
            running_var += t(1 - momentum) * var
        else:
            xc = X - running_mean.reshape(bshape).astype(X.dtype, copy=False)
            var = running_var.astype(X.dtype, copy=False)
        inv_std = 1 / xp.sqrt(var + t(eps))
        out = xp.multiply(xc, (gamma * inv_std).reshape(bshape))  # gamma * xhat, xhat = xc * inv_std
        out += beta.reshape(bshape)
        return out, {"xc": xc, "inv_std": inv_std, "gamma": gamma, "train": train, "axis": axis}

    def batchnorm_backward(self, dout, cache):
        """The NumPy form of ``gpunet.layers.batchnorm_backward`` (shapes and arguments there)."""
        xc, inv_std, gamma = cache["xc"], cache["inv_std"], cache["gamma"]  # xhat = xc * inv_std
        axis, axes, bshape = _axes(dout, cache["axis"])
        if cache["train"] and _cpu_ok(self, xc, axis) and dout.shape == xc.shape:
            return _cpu_backward(dout, xc, inv_std, gamma)
        dbeta = dout.sum(axis=axes)
        dgamma = _channel_dot(dout, xc, axis, axes) * inv_std
        scale = (gamma * inv_std).reshape(bshape)
        if not cache["train"]:
            return dout * scale, dgamma, dbeta
        M = dout.size // dbeta.size
        t = dout.dtype.type
        # dX = gamma * inv_std * (dout - mean(dout) - xhat * mean(dout * xhat))
        dX = xc * (dgamma * inv_std / t(M)).reshape(bshape)
        dX += (dbeta / t(M)).reshape(bshape)
        xp = backend.get_array_module(dout)
        xp.subtract(dout, dX, out=dX)
        dX *= scale
        return dX, dgamma, dbeta


# ---------------------------------------------------------------------- the CPU's blocked form
def _cpu_ok(ops, X, axis):
    return not ops.on_device and isinstance(X, np.ndarray) and axis == 0 and X.flags.c_contiguous


def _cpu_forward(X, gamma, beta, eps):
    """Training batch norm of C-contiguous X (C, ...) over all but axis 0, in channel blocks:
    ``(out, xc, mean, var, inv_std)``."""
    C = X.shape[0]
    X2 = X.reshape(C, -1)
    M = X2.shape[1]
    t = X.dtype.type
    out, xc = np.empty_like(X2), np.empty_like(X2)
    mean, var, inv_std = (np.empty(C, X.dtype) for _ in range(3))
    scale = np.empty(C, np.result_type(gamma, X))

    def run(lo, hi):
        for a, b in threads.blocked(lo, hi, M * X.itemsize, share=1.0):
            x, c, o = X2[a:b], xc[a:b], out[a:b]
            mean[a:b] = x.mean(axis=1)
            np.subtract(x, mean[a:b, None], out=c)
            var[a:b] = np.einsum("ij,ij->i", c, c) / t(M)
            inv_std[a:b] = 1 / np.sqrt(var[a:b] + eps)
            scale[a:b] = gamma[a:b] * inv_std[a:b]
            np.multiply(c, scale[a:b, None], out=o)
            o += beta[a:b, None]

    threads.split(run, C, 3 * X.size)
    return out.reshape(X.shape), xc.reshape(X.shape), mean, var, inv_std


def _cpu_backward(dout, xc, inv_std, gamma):
    """The reference's training backward, channel block by channel block: ``(dX, dgamma, dbeta)``."""
    C = xc.shape[0]
    d2, c2 = dout.reshape(C, -1), xc.reshape(C, -1)
    M = c2.shape[1]
    t = dout.dtype.type
    dX = np.empty(c2.shape, np.result_type(dout, xc))
    dgamma, dbeta = np.empty(C, dX.dtype), np.empty(C, dX.dtype)

    def run(lo, hi):
        for a, b in threads.blocked(lo, hi, M * dX.itemsize, share=1.0):
            d, c, g = d2[a:b], c2[a:b], dX[a:b]
            dbeta[a:b] = d.sum(axis=1)
            dgamma[a:b] = np.einsum("ij,ij->i", d, c) * inv_std[a:b]
            np.multiply(c, (dgamma[a:b] * inv_std[a:b] / t(M))[:, None], out=g)
            g += (dbeta[a:b] / t(M))[:, None]
            np.subtract(d, g, out=g)
            g *= (gamma[a:b] * inv_std[a:b])[:, None]

    threads.split(run, C, 3 * dX.size)
    return dX.reshape(xc.shape), dgamma, dbeta
