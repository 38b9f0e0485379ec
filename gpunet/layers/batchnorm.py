"""Batch normalisation with the coursework's signatures: ``batchnorm_forward``/``batchnorm_backward``.

The arithmetic and its conventions (CS231n's momentum, the biased batch variance) are
``gpunet.ops.batchnorm``, a part of ``NumpyOps``: these functions hand it to the ops object of the
arrays' backend, which a GPU backend may override.
"""

from __future__ import annotations

from ..ops import get_ops


def batchnorm_forward(X, gamma, beta, running_mean, running_var, train=True, momentum=0.9, eps=1e-5, axis=1):
    """``out = gamma * (X - mean) / sqrt(var + eps) + beta`` per feature (N, D) or per channel (N, C, H, W).

    gamma, beta, running_mean, running_var: (D,) or (C,). In training, mean/var are the
    batch's and the running statistics are updated in place; otherwise the running ones are used.
    axis: the feature/channel axis (1; ``gpunet.nn`` passes 0 for its (C, N, H, W) activations).
    Returns ``(out, cache)`` with out shaped like X.
    """
    return get_ops(X).batchnorm_forward(X, gamma, beta, running_mean, running_var, train, momentum, eps, axis)


def batchnorm_backward(dout, cache):
    """Gradients of ``batchnorm_forward``: ``(dX, dgamma, dbeta)``; dX shaped like dout.

    Training mode (batch statistics): ``dX = inv_std / M * (M dxhat - sum dxhat - xhat sum(dxhat xhat))``
    with ``dxhat = dout * gamma`` and M the values per feature. Test mode: ``dX = dout * gamma * inv_std``.
    """
    return get_ops(dout).batchnorm_backward(dout, cache)


def batchnorm_relu_forward(
    X, gamma, beta, running_mean, running_var, train=True, momentum=0.9, eps=1e-5, axis=1
):
    """The fused op ``relu(batchnorm_forward(X, ...))`` (arguments and shapes there): ``(out, cache)``.

    Its NumPy form is the composition; on the GPU it is one cuDNN graph where cuDNN allows.
    """
    return get_ops(X).batchnorm_relu_forward(
        X, gamma, beta, running_mean, running_var, train, momentum, eps, axis
    )


def batchnorm_relu_backward(dout, cache):
    """Gradients of ``batchnorm_relu_forward``: ``(dX, dgamma, dbeta)``; dout is not written."""
    return get_ops(dout).batchnorm_relu_backward(dout, cache)
