"""``ArrayLoader``: mini-batches of in-memory arrays, with the loader interface of ``gpunet.data``."""

from __future__ import annotations

import numpy as np

from .. import backend
from .augment import augment_images, check_augment
from .h5file import check_labels
from .norm import norm_stats, normalize
from .plan import augment_seed, epoch_permutation
from .prefetch import lower_thread_priority


class ArrayLoader:
    """Mini-batches from in-memory arrays, drawn without replacement, reshuffled every epoch.

    X: (N, ...) any numeric dtype, e.g. images (N, C, H, W) or features (N, D); batches keep
        one sample's shape: ``(B, ...)`` of ``dtype``.
    y: (N,) integer labels; with ``num_classes`` each must lie in [0, num_classes)
        (checked once here: the GPU loss does not check them).
    mean, std: optional normalisation ``(x - mean) / std`` applied on the device,
        broadcastable to one sample's shape (per channel: (C, 1, 1)).
    augment: None or ``{'flip': bool, 'crop_pad': int}`` (needs image-shaped X,
        (N, C, H, W)); random per ``(seed, epoch)``, applied after normalisation.
    The arrays are moved to the active device once (uint8 stays uint8 there,
    converted per batch).
    prefetch: on the CPU, gather and convert the next batch in a background thread (at lower
        priority) while the caller works on this one; the batches are the same either way.
    """

    def __init__(
        self,
        X,
        y,
        batch_size: int = 100,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        mean=None,
        std=None,
        dtype=np.float32,
        augment=None,
        num_classes=None,
        prefetch=False,
    ):
        if len(X) != len(y):
            raise ValueError(f"y: expected {len(X)} labels (one per row of X), got {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        y_host = np.asarray(backend.to_numpy(y))
        if num_classes is not None:
            check_labels(y_host, int(num_classes), "y:")
        self.X = backend.to_device(X)
        self.y = backend.to_device(y_host.astype(np.int64))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.dtype = np.dtype(dtype)
        self.mean, self.inv_std = norm_stats(mean, std, self.dtype)
        self.num_samples = len(self.y)
        self.sample_shape = tuple(int(s) for s in self.X.shape[1:])
        self._epoch = 0
        self.augment = check_augment(augment)
        self.prefetch = bool(prefetch)
        if self.augment and self.X.ndim != 4:
            raise ValueError(
                f"augment: needs images shaped (N, C, H, W), got X of shape {tuple(self.X.shape)}"
            )

    def __len__(self):
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int):
        self._epoch = int(epoch)

    def _prepare(self, xb, rng, fresh=False):
        xb = normalize(xb, self.mean, self.inv_std, self.dtype, fresh)  # new unless fresh: xb may view X
        if rng is not None:
            xb = augment_images(xb, rng, **self.augment)
        return xb

    def __iter__(self):
        if not self.prefetch or backend.name() == "cupy":
            yield from self._batches()
            return
        # one batch ahead: the next gather (a copy NumPy does without the GIL) overlaps this step
        batches = self._batches()
        ahead = _gather_thread().submit(_next_or_none, batches)
        try:
            while True:
                item = ahead.result()
                if item is None:
                    return
                ahead = _gather_thread().submit(_next_or_none, batches)
                yield item
        finally:
            ahead.result()  # the generator is never advanced by two threads at once

    def _batches(self):
        n, b = self.num_samples, self.batch_size
        order = epoch_permutation(n, self.seed, self._epoch) if self.shuffle else None
        if order is not None:
            order = backend.to_device(order)
        rng = backend.default_rng(augment_seed(self.seed, self._epoch)) if self.augment else None
        for i in range(len(self)):
            sl = slice(i * b, min((i + 1) * b, n))
            if order is None:
                yield self._prepare(self.X[sl], rng), self.y[sl]
            else:
                idx = order[sl]
                yield self._prepare(self.X[idx], rng, fresh=True), self.y[idx]  # a gather is a copy

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_pool = None


def _gather_thread():
    """The one background thread that gathers batches ahead (started on first use)."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(1, thread_name_prefix="gpunet-gather", initializer=lower_thread_priority)
    return _pool


def _next_or_none(it):
    return next(it, None)
