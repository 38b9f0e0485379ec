"""The gpunet model file: an ``.npz`` of plain arrays plus one JSON description.

The description (stored as a uint8 array ``__meta__``) holds ``format``, ``version``,
the model's ``config`` and ``meta`` (preprocessing and provenance). Files are read
with ``allow_pickle=False``: loading someone else's model cannot run code, and a
GPU-trained model loads without CuPy.

- version 1: fully connected nets only; ``config`` has ``hidden_dims`` etc.
- version 2: ``config["kind"]`` is ``"fully_connected"`` or ``"sequential"`` (the
  layer list as JSON, see ``gpunet.nn``); arrays are the parameters and buffers
  by name (``"0.W"``, ``"1.running_mean"``), possibly stored as float16.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .io import savez

MODEL_FORMAT = "gpunet-model"
MODEL_VERSION = 2


def write_model(path, config: dict, arrays: dict, meta: dict):
    """Write a model file atomically; returns ``path``."""
    desc = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": config, "meta": meta}
    arrays = dict(arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(desc).encode("utf-8"), dtype=np.uint8)
    savez(path, arrays)
    return path


def save_model(path, model, float16=False):
    """Write ``model`` (its ``config()``, ``get_params()`` and ``meta``) to ``path`` atomically.

    float16: store the arrays in half precision (half the file; loaded back in the model's dtype).
    """
    arrays = model.get_params()
    if float16:
        arrays = {k: v.astype(np.float16) for k, v in arrays.items()}
    return write_model(path, model.config(), arrays, model.meta)


def read_npz(path, what="model") -> tuple[dict, dict]:
    """Arrays and JSON description of a gpunet ``.npz`` file; ValueError naming the file if it is not one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such {what} file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a gpunet {what} file (expected an .npz archive: {e})") from None
    if "__meta__" not in arrays:
        raise ValueError(f"{path}: not a gpunet {what} file (no __meta__ entry)")
    try:
        desc = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt description in __meta__ ({e})") from None
    return arrays, desc


def read_model(path) -> tuple[dict, dict]:
    """Arrays and description of a model file, after checking format and version."""
    arrays, desc = read_npz(path)
    if desc.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: expected format {MODEL_FORMAT!r}, found {desc.get('format')!r}")
    if desc.get("version", 0) > MODEL_VERSION:
        raise ValueError(f"{path}: model format version {desc['version']} is newer than this gpunet "
                         f"({MODEL_VERSION}); upgrade gpunet")
    if not isinstance(desc.get("config"), dict):
        raise ValueError(f"{path}: expected a 'config' object in the model description")
    return arrays, desc
