"""The preprocessing contract between prepared data, trained models and inference.

A trained model's ``model.meta`` holds ``mean``, ``std`` ((C,) floats, pixel units
0..255, per channel over the training split), ``image_shape`` ([C, H, W]),
``class_names`` and ``dataset``. An input image batch, uint8 ``(N, C, H, W)``, is
normalised per channel, ``(x - mean[c]) / std[c]`` by ``gpunet.data.normalize``, the
rule every loader applies in training; ``normalize`` here returns it flattened C-major
to ``(N, C*H*W)`` float32 (models flatten image batches alike).
"""

from __future__ import annotations

import os

import numpy as np

from . import backend
from .data.h5file import read_meta
from .data.norm import norm_stats
from .data.norm import normalize as normalize_images

META_KEYS = ("mean", "std", "image_shape", "class_names", "dataset")


def check_meta(meta, where: str = "model") -> dict:
    """Validate preprocessing ``meta``; return it with plain-Python values.

    where: how to name the owner in errors (e.g. the model file's path).
    Raises ValueError when mean/std/image_shape are missing or inconsistent.
    """
    if not isinstance(meta, dict) or any(meta.get(k) is None for k in ("mean", "std", "image_shape")):
        have = sorted(k for k, v in (meta or {}).items() if v is not None) if isinstance(meta, dict) else meta
        raise ValueError(
            f"{where}: expected preprocessing meta with mean, std and image_shape "
            f"(saved by gpunet-train), found {have or 'none'}"
        )
    try:
        shape = [int(s) for s in np.atleast_1d(meta["image_shape"])]
        mean = [float(v) for v in np.atleast_1d(meta["mean"])]
        std = [float(v) for v in np.atleast_1d(meta["std"])]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"{where}: expected meta image_shape [C, H, W] and per-channel mean and std numbers, "
            f"found image_shape={meta['image_shape']!r:.80}, mean={meta['mean']!r:.80}, "
            f"std={meta['std']!r:.80}"
        ) from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{where}: expected meta image_shape [C, H, W], found {shape}")
    c = shape[0]
    if (
        len(mean) != c
        or len(std) != c
        or not all(s > 0 and np.isfinite(s) for s in std)
        or not all(np.isfinite(m) for m in mean)
    ):
        raise ValueError(
            f"{where}: expected meta mean and std of {c} value(s) with std > 0 and finite values "
            f"(one per channel of image_shape {shape}), found mean={mean}, std={std}"
        )
    out = dict(meta)
    out.update(mean=mean, std=std, image_shape=shape)
    if meta.get("class_names") is not None:
        out["class_names"] = [str(n) for n in meta["class_names"]]
    return out


def meta_stats(meta, dtype=np.float32, xp=None):
    """``(mean, inv_std)``: (C, 1, 1) arrays on ``xp`` (default: the active backend) for
    ``gpunet.data.normalize`` of image batches (N, C, H, W)."""
    return norm_stats(meta["mean"], meta["std"], dtype, xp, shape=tuple(meta["image_shape"]))


def normalize(x, meta, dtype=np.float32, xp=None, rows=None):
    """Normalise a batch for a model with the one rule of ``gpunet.data.norm``.

    x: uint8 (or float pixel values) ``(N, C, H, W)`` or already flat ``(N, C*H*W)``,
        NumPy or CuPy; meta: preprocessing dict (see ``check_meta``).
    xp: array module to compute on (default: the active backend); rows: a cached
        ``meta_stats(meta, dtype, xp)`` to skip rebuilding it per batch.
    Returns ``(N, C*H*W)`` of ``dtype`` on ``xp``.
    """
    xp = xp or backend.xp()
    c, h, w = (int(s) for s in meta["image_shape"])
    d = c * h * w
    if (
        x.ndim == 4
        and tuple(x.shape[1:]) != (c, h, w)
        or x.ndim == 2
        and x.shape[1] != d
        or x.ndim not in (2, 4)
    ):
        raise ValueError(f"x: expected images of shape (N, {c}, {h}, {w}) or (N, {d}), got {tuple(x.shape)}")
    x = backend.to_numpy(x) if xp is np else xp.asarray(x)
    mean, inv_std = rows if rows is not None else meta_stats(meta, dtype, xp)
    return normalize_images(x.reshape(len(x), c, h, w), mean, inv_std, dtype).reshape(len(x), d)


def preprocess_meta_from_h5(path) -> dict:
    """The preprocessing meta (mean, std, image_shape, class_names, dataset) of a
    gpunet HDF5 file, ready to store in ``model.meta``. ValueError naming the file
    when it is not an HDF5 file or lacks the attributes."""
    m = read_meta(path)
    missing = [k for k in ("mean", "std", "image_shape", "class_names") if m.get(k) is None]
    if missing:
        raise ValueError(f"{os.fspath(path)}: expected root attribute(s) {missing} of a gpunet HDF5 file")
    return check_meta({k: m[k] for k in META_KEYS}, os.fspath(path))
