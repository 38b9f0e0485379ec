"""The one normalisation rule: ``(x - mean) / std`` per channel, computed on the device.

Every loader (``ArrayLoader``; ``H5Loader``'s host and device paths) and prediction
(``gpunet.preprocess.normalize``) call ``normalize``; the statistics come from
``norm_stats``. ``mean`` and ``std`` are in pixel units (0..255), one value per channel,
as the HDF5 file's root attributes and a trained model's ``meta`` store them.
"""

from __future__ import annotations

import numpy as np

from .. import backend


def norm_stats(mean, std, dtype=np.float32, xp=None, shape=None):
    """``(mean, inv_std)`` arrays on ``xp`` (default: the active backend) for ``normalize``.

    mean, std: None, scalars, or arrays broadcastable to one sample; per-channel ``(C,)``
        statistics are reshaped to ``(C, 1, 1)`` when ``shape`` (the sample shape
        ``(C, H, W)``) is given. A None entry is returned as None (no shift / no scaling).
    """
    xp = xp or backend.xp()

    def put(v, inv):
        if v is None:
            return None
        v = np.asarray(backend.to_numpy(v), np.float64)
        if shape is not None and v.ndim == 1 and len(shape) == 3 and v.shape[0] == shape[0]:
            v = v.reshape(-1, 1, 1)
        return xp.asarray(1.0 / v if inv else v, dtype=dtype)

    return put(mean, False), put(std, True)


def normalize(x, mean, inv_std, dtype=np.float32, fresh=False):
    """``(x - mean) * inv_std`` as a new ``dtype`` array on x's backend.

    x: (B, ...) uint8 or float pixel values; mean, inv_std: from ``norm_stats`` (either may
    be None), broadcastable to one sample. Returns (B, ...) of ``dtype``, never a view of x.
    fresh: x is the caller's own new array (a gathered batch), so it may be reused as the result.
    """
    dtype = np.dtype(dtype)
    if mean is not None:
        out = x - mean  # uint8 - float: one pass, a new float array
        if out.dtype != dtype:
            out = out.astype(dtype)
    elif fresh and x.dtype == dtype:
        out = x  # no copy of a batch nobody else holds
    else:
        out = x.astype(dtype)  # astype copies: safe to scale in place
    if inv_std is not None:
        out *= inv_std
    return out


def channel_stats(meta):
    """``(mean, std)`` of a file's metadata shaped ``(C, 1, 1)``, for an ``ArrayLoader`` on
    image batches ``(N, C, H, W)``."""
    return (
        np.asarray(meta["mean"], np.float64).reshape(-1, 1, 1),
        np.asarray(meta["std"], np.float64).reshape(-1, 1, 1),
    )
