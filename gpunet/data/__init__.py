"""Batch iterators: the one interface through which the Solver sees data.

A loader is an iterable of ``(X, y)`` batches already on the active backend:
``X`` is ``(B, C, H, W)`` float (normalised; in general one sample's shape, so an
``ArrayLoader`` over (N, D) features yields (B, D)), ``y`` is ``(B,)`` int64. Models
flatten what they need. A loader has

- ``len(loader)``: batches per epoch;
- ``loader.num_samples``: samples per epoch;
- ``loader.set_epoch(e)``: fixes the order of the next ``iter()`` as a pure
  function of ``(seed, e)``, so a resumed run sees the same batches as an
  uninterrupted one (no random state needs to be saved);
- ``loader.close()``; loaders are context managers.

Modules: ``arrays`` (``ArrayLoader``, in-memory arrays), ``h5loader`` (``H5Loader``,
streaming or preloading a split of a gpunet HDF5 file) with its background reader
``prefetch``, ``plan`` (epoch orders and every seed stream), ``h5file`` (the HDF5
format: the only module that writes it, opens it with a version check and reads
its metadata), ``norm`` (the one normalisation rule), ``augment`` (flips and crops),
``bench`` (the data-path benchmark behind ``gpunet-bench-data``).
"""

from .arrays import ArrayLoader
from .augment import augment_images
from .h5file import FORMAT_VERSION, load_split, open_file, read_meta
from .norm import channel_stats, norm_stats, normalize
from .plan import (
    AUGMENT_STREAM,
    CHECK_STREAM,
    DROPOUT_STREAM,
    LIMIT_STREAM,
    TRAIN_EVAL_STREAM,
    augment_seed,
    dropout_seed,
    epoch_permutation,
    epoch_plan,
    limit_seed,
    train_eval_seed,
)
from .h5loader import H5Loader, open_split, preload_budget

__all__ = [
    "AUGMENT_STREAM",
    "ArrayLoader",
    "CHECK_STREAM",
    "DROPOUT_STREAM",
    "FORMAT_VERSION",
    "H5Loader",
    "LIMIT_STREAM",
    "TRAIN_EVAL_STREAM",
    "augment_images",
    "augment_seed",
    "channel_stats",
    "dropout_seed",
    "epoch_permutation",
    "epoch_plan",
    "limit_seed",
    "load_split",
    "norm_stats",
    "normalize",
    "open_file",
    "open_split",
    "preload_budget",
    "read_meta",
    "train_eval_seed",
]
