"""Batch normalisation of (N, D) features or (N, C, H, W) channels.

Training normalises with the batch statistics and updates the running ones in
place, ``running = momentum * running + (1 - momentum) * batch`` (the CS231n
convention; PyTorch's ``momentum=0.1`` is the same update). The batch variance is
the biased one (divided by the number of values), as CS231n computes it, both to
normalise and in the running variance (PyTorch keeps the unbiased one there, larger by
M/(M-1) for M values per channel). At test time the running statistics are used.
"""

from __future__ import annotations

from .. import backend


def _axes(X, axis):
    if X.ndim not in (2, 4):
        raise ValueError(f"batchnorm: expected X (N, D) or (N, C, H, W), got shape {tuple(X.shape)}")
    axis %= X.ndim
    bshape = [1] * X.ndim
    bshape[axis] = -1
    return axis, tuple(a for a in range(X.ndim) if a != axis), tuple(bshape)


def _channel_dot(a, b, axis, axes):
    """Per-channel ``sum(a * b)``; one pass (a matrix-vector product) when channels lead a contiguous
    array."""
    xp = backend.get_array_module(a)
    if axis == 0 and a.flags.c_contiguous and b.flags.c_contiguous:
        return xp.einsum("ij,ij->i", a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))
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
