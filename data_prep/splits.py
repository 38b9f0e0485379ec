"""What a reader hands back, and the stratified validation carve-out.

A reader turns a source into a :class:`SourceData`: named :class:`Split`
arrays in the HDF5 contract's shapes, the class names in label order, notes
for the user, and the source's checksums. :func:`carve_validation` moves a
seeded, stratified sample of ``train`` into ``val`` when the source has no
validation part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import PrepError

SPLIT_ORDER = ("train", "val", "test")


@dataclass
class Split:
    """x: (N, C, H, W) uint8 images; y: (N,) int64 labels; usage: where it came from."""

    x: np.ndarray
    y: np.ndarray
    usage: Optional[str] = None


@dataclass
class SourceData:
    """A whole converted source, before writing."""

    splits: dict  # split name -> Split, any of SPLIT_ORDER
    class_names: list  # str per label, in label order
    fingerprint: dict  # {"sha256": ..., "md5": ...} of the source (md5 for files only)
    notes: list = field(default_factory=list)  # one line each, for the summary


def stack_split(images: list, labels: list, image_shape: tuple, usage=None) -> Split:
    """A Split from per-sample arrays (each reshaped to ``image_shape`` (C, H, W))."""
    n = len(images)
    x = np.empty((n,) + tuple(image_shape), dtype=np.uint8)
    for i, img in enumerate(images):
        x[i] = img.reshape(image_shape)
    return Split(x, np.asarray(labels, dtype=np.int64).reshape(n), usage)


def stratified_counts(y: np.ndarray, n_val: int, num_classes: int) -> np.ndarray:
    """Per-class validation sizes, proportional to the class counts of ``y``, summing to
    ``n_val`` (largest remainders get the rounding, ties to the smaller label)."""
    counts = np.bincount(y, minlength=num_classes)
    exact = counts * (n_val / len(y))
    take = np.floor(exact).astype(np.int64)
    short = n_val - int(take.sum())
    order = np.lexsort((np.arange(num_classes), -(exact - take)))
    take[order[:short]] += 1
    return np.minimum(take, counts)


def carve_validation(train: Split, n_val: int, seed: int, num_classes: int) -> tuple:
    """Split ``train`` into (train, val) with ``n_val`` samples drawn per class in
    proportion to the class counts, by ``np.random.default_rng(seed)``.

    Both parts keep the source order. Returns (Split, Split).
    """
    n = len(train.y)
    if not 0 < n_val < n:
        raise PrepError(
            f"--val-size: expected 1..{n - 1} (the training split has {n} samples), found {n_val}"
        )
    rng = np.random.default_rng(seed)
    take = stratified_counts(train.y, n_val, num_classes)
    chosen = [
        rng.choice(np.flatnonzero(train.y == c), size=k, replace=False) for c, k in enumerate(take) if k
    ]
    mask = np.zeros(n, dtype=bool)
    mask[np.concatenate(chosen)] = True
    usage = f"stratified sample of {n_val} from {train.usage or 'train'} (seed {seed})"
    return (Split(train.x[~mask], train.y[~mask], train.usage), Split(train.x[mask], train.y[mask], usage))
