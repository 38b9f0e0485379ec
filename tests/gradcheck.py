"""Central-difference numerical gradients: the independent oracle for every backward."""

import numpy as np

from gpunet import backend


def numerical_gradient(f, x, h=1e-5):
    """d f() / d x for a scalar function ``f`` of array ``x`` (modified in place and restored).

    x: float64 array of any backend; returns a NumPy float64 array shaped like x.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        grad.reshape(-1)[i] = (fp - fm) / (2 * h)
    return grad


def numerical_gradient_array(f, x, dout, h=1e-5):
    """Gradient of ``sum(f() * dout)`` with respect to ``x`` (for array-valued f)."""
    dout_np = backend.to_numpy(dout)
    return numerical_gradient(lambda: float((backend.to_numpy(f()) * dout_np).sum()), x, h)


def rel_error(a, b):
    a, b = backend.to_numpy(a).astype(np.float64), backend.to_numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))
