"""Batch normalisation of (N, D) features or (N, C, H, W) channels.

Training normalises with the batch statistics and updates the running ones in
place, ``running = momentum * running + (1 - momentum) * batch`` (the CS231n
convention; PyTorch's ``momentum=0.1`` is the same update). The batch variance is
the biased one (divided by the number of values), as CS231n computes it. At test
time the running statistics are used.
"""
from __future__ import annotations

from .. import backend


def _axes(X):
    if X.ndim == 2:
        return (0,), (1, -1)
    if X.ndim == 4:
        return (0, 2, 3), (1, -1, 1, 1)
    raise ValueError(f"batchnorm: expected X (N, D) or (N, C, H, W), got shape {tuple(X.shape)}")


def batchnorm_forward(X, gamma, beta, running_mean, running_var, train=True, momentum=0.9, eps=1e-5):
    """``out = gamma * (X - mean) / sqrt(var + eps) + beta`` per feature (N, D) or per channel (N, C, H, W).

    gamma, beta, running_mean, running_var: (D,) or (C,). In training, mean/var are the
    batch's and the running statistics are updated in place; otherwise the running ones are used.
    Returns ``(out, cache)`` with out shaped like X.
    """
    axes, bshape = _axes(X)
    xp = backend.get_array_module(X)
    t = X.dtype.type
    if train:
        mean = X.mean(axis=axes)
        xc = X - mean.reshape(bshape)
        var = (xc * xc).mean(axis=axes)
        running_mean *= t(momentum)
        running_mean += t(1 - momentum) * mean
        running_var *= t(momentum)
        running_var += t(1 - momentum) * var
    else:
        xc = X - running_mean.reshape(bshape).astype(X.dtype, copy=False)
        var = running_var.astype(X.dtype, copy=False)
    inv_std = 1 / xp.sqrt(var + t(eps))
    xhat = xc
    xhat *= inv_std.reshape(bshape)                                  # xc's memory becomes xhat
    out = xhat * gamma.reshape(bshape)
    out += beta.reshape(bshape)
    return out, {"xhat": xhat, "inv_std": inv_std, "gamma": gamma, "train": train, "axes": axes,
                 "bshape": bshape}


def batchnorm_backward(dout, cache):
    """Gradients of ``batchnorm_forward``: ``(dX, dgamma, dbeta)``; dX shaped like dout.

    Training mode (batch statistics): ``dX = inv_std / M * (M dxhat - sum dxhat - xhat sum(dxhat xhat))``
    with ``dxhat = dout * gamma`` and M the values per feature. Test mode: ``dX = dout * gamma * inv_std``.
    """
    xhat, inv_std, gamma = cache["xhat"], cache["inv_std"], cache["gamma"]
    axes, bshape = cache["axes"], cache["bshape"]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    scale = (gamma * inv_std).reshape(bshape)
    if not cache["train"]:
        return dout * scale, dgamma, dbeta
    M = dout.size // dbeta.size
    t = dout.dtype.type
    # dX = gamma * inv_std * (dout - mean(dout) - xhat * mean(dout * xhat))
    dX = xhat * (dgamma / t(M)).reshape(bshape)
    dX += (dbeta / t(M)).reshape(bshape)
    xp = backend.get_array_module(dout)
    xp.subtract(dout, dX, out=dX)
    dX *= scale
    return dX, dgamma, dbeta
