"""Evaluating a trained model over an HDF5 split, and resolving a model argument.

- ``resolve_model(model)``: a loaded model and the name errors use, from a model or a file path;
- ``model_meta(model)``: its checked preprocessing meta;
- ``evaluate(model, data, split)`` -> ``(y_true, y_pred)`` for an HDF5 split (or any loader).

``gpunet.predict`` re-exports all of these (its public names); they live here, below both
``gpunet.predict`` and ``gpunet.pretrained``, so neither imports the other's dependent.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from . import backend
from .model import FullyConnectedNet, load_model
from .nn import Sequential
from .preprocess import check_meta, meta_stats, normalize

log = logging.getLogger("gpunet")


def resolve_model(model) -> tuple[FullyConnectedNet, str]:
    """``(model, name)``: load ``model`` when it is a path; ``name`` is used in errors."""
    if isinstance(model, (FullyConnectedNet, Sequential)):
        return model, getattr(model, "source", None) or "model"
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), os.fspath(model)
    raise TypeError(
        f"model: expected a gpunet model (FullyConnectedNet, Sequential) or a model file path, "
        f"got {type(model).__name__}"
    )


def model_meta(model: FullyConnectedNet, where: str = "model", required: bool = True):
    """The model's checked preprocessing meta; ValueError naming ``where`` when it has none
    (or None when not ``required``) or when its image shape does not give ``input_dim``."""
    if not required and any((model.meta or {}).get(k) is None for k in ("mean", "std", "image_shape")):
        return None
    meta = check_meta(model.meta, where)
    if int(np.prod(meta["image_shape"])) != model.input_dim:
        raise ValueError(
            f"{where}: meta image_shape {meta['image_shape']} does not give the "
            f"model's input_dim {model.input_dim}"
        )
    names = meta.get("class_names")
    if names is not None and len(names) != model.num_classes:
        raise ValueError(
            f"{where}: meta lists {len(names)} class names for a model of {model.num_classes} classes"
        )
    return meta


def image_channels(meta, where: str = "model") -> int:
    """The channels of ``meta["image_shape"]`` when image files can be read for it (1 grey, 3 RGB);
    ValueError naming ``where`` (the model file) otherwise."""
    c = int(meta["image_shape"][0])
    if c not in (1, 3):
        raise ValueError(
            f"{where}: meta image_shape {list(meta['image_shape'])}: expected 1 (grey) or 3 (RGB) "
            f"channels to read image files for it, found {c}"
        )
    return c


def _model_xp(model):
    return backend.get_array_module(next(iter(model.params.values())))


def _on(x, xp):
    """``x`` moved to array module ``xp``."""
    return backend.to_numpy(x) if xp is np else xp.asarray(x)


def check_data_fits(model, meta, file_meta, where_model, where_data):
    """ValueError naming both files when the data's images or classes do not fit the model."""
    shape = tuple(int(s) for s in file_meta["image_shape"])
    expected = tuple(meta["image_shape"]) if meta else None
    if (expected is not None and shape != expected) or int(np.prod(shape)) != model.input_dim:
        want = expected if expected is not None else f"{model.input_dim} features"
        raise ValueError(
            f"{where_data}: images of shape {shape} do not fit model {where_model}, which expects {want}"
        )
    names = file_meta.get("class_names")
    if names is not None and len(names) != model.num_classes:
        raise ValueError(
            f"{where_data}: {len(names)} classes {list(names)} do not fit model "
            f"{where_model}, which has {model.num_classes} classes"
        )
    if names is not None and meta and meta.get("class_names") and list(names) != list(meta["class_names"]):
        log.warning(
            "%s: class names %s differ from the model's %s", where_data, list(names), meta["class_names"]
        )


def evaluate(model, data, split: str = "test", batch_size: int = 1024):
    """Run ``model`` over one split; return ``(y_true, y_pred)``, (N,) int64 each on the
    model's array module.

    model: a FullyConnectedNet or a model file path. data: a gpunet HDF5 path (read in
    batches with ``H5Loader``, normalised with the model's meta, or with the file's
    own mean/std when the model has no meta), or any loader yielding model-ready
    ``(X (B, D), y (B,))`` batches (then ``split`` is ignored).
    """
    from .data import H5Loader
    from .data.h5file import check_labels

    model, where = resolve_model(model)
    xp = _model_xp(model)
    loader, own = data, False
    if isinstance(data, (str, os.PathLike)):
        meta = model_meta(model, where, required=False)
        if meta is None:
            log.warning("%s: no preprocessing meta; normalising with %s's own mean/std", where, data)
        loader = H5Loader(data, split, batch_size=batch_size, shuffle=False, normalize=meta is None)
        own = True
    try:
        rows = None
        if own:
            file_meta = dict(loader.meta, image_shape=loader.sample_shape)
            check_data_fits(model, meta, file_meta, where, os.fspath(data))
            rows = meta_stats(meta, model.dtype, xp) if meta else None
        ys, ps = [], []
        for X, y in loader:
            X = _on(X, xp)
            if rows is not None:
                X = normalize(X, meta, model.dtype, xp, rows)
            ps.append(model.loss(X).argmax(axis=1).astype(np.int64))
            ys.append(_on(y, xp).astype(np.int64))
    finally:
        if own:
            loader.close()
    if not ys:
        raise ValueError(f"{os.fspath(data) if own else 'data'}: split {split!r} holds no samples")
    y_true = xp.concatenate(ys)
    if own:  # a file without class_names was not checked against the model's classes (issue 24 #14)
        check_labels(backend.to_numpy(y_true), model.num_classes, f"{os.fspath(data)}: /{split}/y")
    return y_true, xp.concatenate(ps)
