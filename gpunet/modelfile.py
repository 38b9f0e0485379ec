"""The gpunet model file: an ``.npz`` of plain arrays plus one JSON description.

The description (stored as a uint8 array ``__meta__``) holds ``format``, ``version``,
the model's ``config`` and ``meta`` (preprocessing and provenance). Files are read
with ``allow_pickle=False``: loading someone else's model cannot run code, and a
GPU-trained model loads without CuPy.

- version 1: fully connected nets only; ``config`` has ``hidden_dims`` etc.
- version 2: ``config["kind"]`` is ``"fully_connected"`` or ``"sequential"`` (the
  layer list as JSON, see ``gpunet.nn``); arrays are the parameters and buffers
  by name (``"0.W"``, ``"1.running_mean"``), possibly stored as float16.

Reading trusts nothing (``read_model``): the description is bounded (``MAX_META_BYTES``)
and type-checked (``gpunet.modelspec``) first, then the entries present are compared
with those it implies and each array's header with its shape and a float dtype, and
only then are the arrays read and checked to be finite. Every refusal is a
``ModelFileError`` (a ``ValueError``) naming the file and the entry.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .io import regular_file, savez
from .modelspec import ModelFileError, param_shapes


MODEL_FORMAT = "gpunet-model"
MODEL_VERSION = 2
MAX_META_BYTES = 16 * 2**20  # a description is a few KB; a larger __meta__ is refused unread


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


def _member(z, name):
    """The zip entry of array ``name`` in the open ``NpzFile`` ``z``."""
    return z.zip.getinfo(name if name in z.zip.namelist() else f"{name}.npy")


def _header(z, name, path):
    """``(shape, dtype)`` of array ``name`` from its ``.npy`` header alone (its data is not read);
    ModelFileError unless it is a plain array whose data fits the member's declared size."""
    info = _member(z, name)
    try:
        with z.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise ModelFileError(
            f"{path}: {name}: expected a NumPy array, found an unreadable entry ({e})"
        ) from None
    if dtype.hasobject or dtype.fields is not None:
        raise ModelFileError(f"{path}: {name}: expected a plain numeric array, found dtype {dtype}")
    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > info.file_size:
        raise ModelFileError(
            f"{path}: {name}: header claims shape {shape} of {dtype}, more than the "
            f"{info.file_size} bytes the entry holds"
        )
    return tuple(shape), dtype


def _open(path, what):
    """The lazily read ``NpzFile`` at ``path`` and its JSON description (read first, size-bounded)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such {what} file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: expected a gpunet {what} file, found a folder")
    try:
        regular_file(path, f"gpunet {what} file")  # a FIFO would block the reader for ever
    except ValueError as e:
        raise ModelFileError(str(e)) from None
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                head = f.read(8)
            raise ValueError(
                "found an empty file"
                if not head
                else "found a truncated or damaged zip archive"
                if head.startswith(b"PK")
                else f"found bytes {head!r}"
            )
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as e:
        raise ModelFileError(f"{path}: not a gpunet {what} file (expected an .npz archive: {e})") from None
    try:
        if "__meta__" not in z.files:
            raise ModelFileError(f"{path}: not a gpunet {what} file (no __meta__ entry)")
        shape, dtype = _header(z, "__meta__", path)
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
            raise ModelFileError(
                f"{path}: __meta__: expected up to {MAX_META_BYTES} bytes of JSON (uint8), "
                f"found shape {shape} of {dtype}"
            )
        try:
            desc = json.loads(z["__meta__"].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ModelFileError(f"{path}: corrupt description in __meta__ ({e})") from None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as e:
            raise ModelFileError(f"{path}: __meta__: unreadable ({e})") from None
        if not isinstance(desc, dict):
            raise ModelFileError(f"{path}: __meta__: expected a JSON object, found {type(desc).__name__}")
    except BaseException:
        z.close()
        raise
    return z, desc


def _read(z, name, path):
    try:
        return z[name]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as e:
        raise ModelFileError(f"{path}: {name}: unreadable ({e})") from None


def read_npz(path, what="model", accept=None) -> tuple[dict, dict]:
    """Arrays and JSON description of a gpunet ``.npz`` file; ModelFileError (a ValueError)
    naming the file if it is not one. accept: ``callable(name) -> bool``; an entry it
    refuses is an error before any array is read."""
    z, desc = _open(path, what)
    with z:
        refused = sorted(k for k in z.files if k != "__meta__" and accept is not None and not accept(k))
        if refused:
            raise ModelFileError(
                f"{path}: unexpected entr{'y' if len(refused) == 1 else 'ies'} {refused[:10]} "
                f"in a gpunet {what} file"
            )
        for name in z.files:
            _header(z, name, os.fspath(path))
        arrays = {k: _read(z, k, os.fspath(path)) for k in z.files if k != "__meta__"}
    return arrays, desc


def _check_version(path, desc):
    if desc.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: expected format {MODEL_FORMAT!r}, found {desc.get('format')!r:.80}")
    version = desc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > MODEL_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} is newer than this gpunet "
            f"({MODEL_VERSION}); upgrade gpunet"
        )
    if isinstance(version, bool) or version not in range(1, MODEL_VERSION + 1):
        raise ModelFileError(
            f"{path}: version: expected a model format version 1..{MODEL_VERSION}, found {version!r:.80}"
        )
    if not isinstance(desc.get("meta", {}), (dict, type(None))):
        raise ModelFileError(f"{path}: meta: expected a JSON object, found {desc['meta']!r:.80}")


def read_model(path) -> tuple[dict, dict]:
    """Arrays and description of a model file, checked completely before it is trusted.

    Checked in this order, so nothing large is read or allocated before it is known to fit:
    format and version; every ``config`` field (``gpunet.modelspec``); the names of the
    arrays present against those the config implies (an unexpected entry is refused
    unread); each array's shape and dtype from its header (floating point, the shape the
    config gives); then each array's values (all finite). Raises ``ModelFileError``
    (a ``ValueError``) naming the file and the entry; ``FileNotFoundError`` when missing.
    """
    where = os.fspath(path)
    z, desc = _open(path, "model")
    with z:
        _check_version(where, desc)
        expected = param_shapes(desc.get("config"), where)
        present = set(z.files) - {"__meta__"}
        missing, unexpected = sorted(set(expected) - present), sorted(present - set(expected))
        if missing:
            raise ModelFileError(
                f"{where}: missing parameter(s) {missing} (the config describes {sorted(expected)})"
            )
        if unexpected:
            raise ModelFileError(
                f"{where}: unexpected entr{'y' if len(unexpected) == 1 else 'ies'} {unexpected} "
                f"(the config describes {sorted(expected)})"
            )
        for name, want in expected.items():
            shape, dtype = _header(z, name, where)
            if dtype.kind != "f":
                raise ModelFileError(f"{where}: {name}: expected floating-point weights, found dtype {dtype}")
            if shape != tuple(want):
                raise ModelFileError(
                    f"{where}: {name}: expected shape {tuple(want)} (from the config), found {shape}"
                )
        arrays = {}
        for name in expected:
            a = arrays[name] = _read(z, name, where)
            if not np.isfinite(a).all():
                raise ModelFileError(
                    f"{where}: {name}: expected finite weights, found "
                    f"{int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite value(s)"
                )
    return arrays, desc
