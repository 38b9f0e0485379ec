"""Batch iterators: the one interface through which the Solver sees data.

A loader is an iterable of ``(X, y)`` batches already on the active backend:
``X`` is ``(B, D)`` float (normalised), ``y`` is ``(B,)`` int64. It has

- ``len(loader)``: batches per epoch;
- ``loader.num_samples``: samples per epoch;
- ``loader.set_epoch(e)``: fixes the order of the next ``iter()`` as a pure
  function of ``(seed, e)``, so a resumed run sees the same batches as an
  uninterrupted one (no random state needs to be saved);
- ``loader.close()``.

``ArrayLoader`` serves in-memory arrays; ``H5Loader`` (or ``open_split``) streams a
split of a gpunet HDF5 file in whole chunks, with a background reader and a shuffle
buffer, or preloads it when it fits; ``read_meta`` reads the file's metadata. Loaders
are context managers. Images travel as uint8 and are normalised on the device.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .augment import augment_images, check_augment

AUGMENT_STREAM = 0xA06  # third seed word: augmentation draws are independent of the order


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of ``epoch``: a permutation of ``range(n)`` from ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class ArrayLoader:
    """Mini-batches from in-memory arrays, drawn without replacement, reshuffled every epoch.

    X: (N, ...) any numeric dtype; flattened to (N, D) per batch.
    y: (N,) integer labels.
    mean, std: optional per-feature or per-channel normalisation applied on the device
        (``(x - mean) / std``); broadcastable to one sample's shape.
    augment: None or ``{'flip': bool, 'crop_pad': int}`` (needs image-shaped X,
        (N, C, H, W)); random per ``(seed, epoch)``, applied after normalisation.
    The arrays are moved to the active device once (uint8 stays uint8 there,
    converted per batch).
    """

    def __init__(self, X, y, batch_size: int = 100, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, mean=None, std=None, dtype=np.float32, augment=None):
        if len(X) != len(y):
            raise ValueError(f"y: expected {len(X)} labels (one per row of X), got {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        self.X = backend.to_device(X)
        self.y = backend.to_device(np.asarray(backend.to_numpy(y)).astype(np.int64))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.dtype = np.dtype(dtype)
        xp = backend.xp()
        self.mean = None if mean is None else xp.asarray(mean, dtype=self.dtype)
        self.inv_std = None if std is None else (1.0 / xp.asarray(std, dtype=self.dtype))
        self.num_samples = len(self.y)
        self._epoch = 0
        self.augment = check_augment(augment)
        if self.augment and self.X.ndim != 4:
            raise ValueError(f"augment: needs images shaped (N, C, H, W), got X of shape {tuple(self.X.shape)}")

    def __len__(self):
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int):
        self._epoch = int(epoch)

    def _prepare(self, xb, rng):
        xb = xb.astype(self.dtype)  # always a fresh array: the batch may be a view of X
        if self.mean is not None:
            xb -= self.mean
        if self.inv_std is not None:
            xb *= self.inv_std
        if rng is not None:
            xb = augment_images(xb, rng, **self.augment)
        return xb.reshape(len(xb), -1)

    def __iter__(self):
        n, b = self.num_samples, self.batch_size
        order = epoch_permutation(n, self.seed, self._epoch) if self.shuffle else None
        if order is not None:
            order = backend.to_device(order)
        rng = backend.default_rng([self.seed, self._epoch, AUGMENT_STREAM]) if self.augment else None
        for i in range(len(self)):
            sl = slice(i * b, min((i + 1) * b, n))
            if order is None:
                yield self._prepare(self.X[sl], rng), self.y[sl]
            else:
                idx = order[sl]
                yield self._prepare(self.X[idx], rng), self.y[idx]

    def close(self):
        pass


# --------------------------------------------------------------------------- HDF5 streaming
#
# File layout (written by data_prep): /<split>/x uint8 (N, C, H, W) chunked along N,
# /<split>/y int (N,); root attrs mean, std float64 (C,) in pixel units, class_names,
# image_shape, format_version, dataset.


# The HDF5 streaming loader lives in its own module; it is part of this interface.
from .h5data import H5Loader, epoch_plan, open_split, preload_budget, read_meta  # noqa: E402

__all__ = ["ArrayLoader", "H5Loader", "augment_images", "epoch_permutation", "epoch_plan", "open_split",
           "preload_budget", "read_meta"]
