"""The HDF5 file layout that training and evaluation read (format_version 1).

Layout (a contract; the loaders in ``gpunet`` rely on it)::

    /<split>/x   uint8 (N, C, H, W), chunked (k, C, H, W) with k a power of two
                 making a chunk about 1 MiB (256 for CIFAR-10, 512 for FER2013)
    /<split>/y   int64 (N,), chunked (k,)
    <split> in train, val, test; a group may carry attr ``usage`` (e.g. "PublicTest")

Root attributes: ``format_version`` (1), ``dataset`` ("cifar10" | "fer2013"),
``class_names`` (variable-length str array, label order), ``mean`` and ``std``
(float64 (C,), per channel over the train split, pixel units 0..255),
``image_shape`` (C, H, W), ``source``, ``source_sha256``, ``source_md5`` (file
sources only), ``command``, ``created`` (ISO 8601), ``splits``, ``notes``.
No compression unless asked (``gzip`` or ``lzf``), so batches stream fast.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

import h5py
import numpy as np

from .errors import PrepError
from .splits import SPLIT_ORDER, SourceData

FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20
COMPRESSIONS = (None, "gzip", "lzf")
_STR = h5py.string_dtype()


def chunk_rows(sample_bytes: int, n: int) -> int:
    """Rows per chunk: the power of two nearest (in log scale) to CHUNK_BYTES / sample_bytes,
    at most ``n``."""
    k = 2 ** round(math.log2(max(CHUNK_BYTES / sample_bytes, 1)))
    return max(1, min(k, n))


def channel_stats(x: np.ndarray) -> tuple:
    """Per-channel mean and (population) std of uint8 x: (N, C, H, W), as float64 (C,).

    Sums of values and of squares are exact integers (float64 holds them exactly up to
    2**53, far above 255**2 * 1e9 pixels), taken over blocks of rows to bound memory.
    """
    s1 = x.sum(axis=(0, 2, 3), dtype=np.int64).astype(np.float64)
    s2 = np.zeros(x.shape[1])
    for i in range(0, len(x), 1024):
        block = x[i:i + 1024].astype(np.float64)
        s2 += np.einsum("nchw,nchw->c", block, block)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / n
    return mean, np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))


def write(path, data: SourceData, *, dataset: str, source: str, command: str,
          compress=None) -> None:
    """Write ``data`` to ``path`` in the layout above. The train split must be present."""
    if compress not in COMPRESSIONS:
        raise PrepError(f"--compress: expected one of gzip, lzf, found {compress!r}")
    if "train" not in data.splits or len(data.splits["train"].y) == 0:
        raise PrepError(f"{source}: expected training samples, found none")
    names = [s for s in SPLIT_ORDER if s in data.splits and len(data.splits[s].y)]
    image_shape = data.splits["train"].x.shape[1:]
    mean, std = channel_stats(data.splits["train"].x)
    with h5py.File(path, "w") as f:
        for name in names:
            split = data.splits[name]
            k = chunk_rows(int(np.prod(image_shape)), len(split.y))
            g = f.create_group(name)
            g.create_dataset("x", data=split.x, chunks=(k,) + image_shape, compression=compress)
            g.create_dataset("y", data=split.y.astype(np.int64), chunks=(k,), compression=compress)
            if split.usage:
                g.attrs["usage"] = split.usage
        a = f.attrs
        a["format_version"] = FORMAT_VERSION
        a["dataset"] = dataset
        a.create("class_names", list(data.class_names), dtype=_STR)
        a["mean"], a["std"] = mean, std
        a["image_shape"] = np.asarray(image_shape, dtype=np.int64)
        a["source"] = source
        a["source_sha256"] = data.fingerprint["sha256"]
        if "md5" in data.fingerprint:
            a["source_md5"] = data.fingerprint["md5"]
        a["command"] = command
        a["created"] = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
        a.create("splits", names, dtype=_STR)
        a.create("notes", list(data.notes), dtype=_STR)


def _str(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_info(path) -> dict:
    """A summary of a prepared file: root attributes plus, per split, count, shapes,
    dtypes, chunks, usage and ``class_counts`` (class name -> samples)."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PrepError(f"{path}: cannot open as HDF5 ({e})") from None
    with f:
        a = f.attrs
        missing = [k for k in ("format_version", "dataset", "class_names", "splits") if k not in a]
        if missing:
            raise PrepError(f"{path}: expected a gpunet-prep file, found no attribute "
                            f"{missing[0]!r}")
        if int(a["format_version"]) != FORMAT_VERSION:
            raise PrepError(f"{path}: expected format_version {FORMAT_VERSION}, "
                            f"found {a['format_version']}")
        names = [_str(s) for s in a["class_names"]]
        info = {
            "path": str(path),
            "format_version": int(a["format_version"]),
            "dataset": _str(a["dataset"]),
            "class_names": names,
            "image_shape": tuple(int(v) for v in a["image_shape"]),
            "mean": [float(v) for v in a["mean"]],
            "std": [float(v) for v in a["std"]],
            "source": _str(a.get("source", "")),
            "source_sha256": _str(a.get("source_sha256", "")),
            "source_md5": _str(a["source_md5"]) if "source_md5" in a else None,
            "command": _str(a.get("command", "")),
            "created": _str(a.get("created", "")),
            "notes": [_str(s) for s in a.get("notes", [])],
            "splits": {},
        }
        for s in (_str(v) for v in a["splits"]):
            x, y = f[s]["x"], f[s]["y"]
            counts = np.bincount(y[()], minlength=len(names))
            info["splits"][s] = {
                "count": int(y.shape[0]),
                "x_shape": tuple(x.shape), "x_dtype": str(x.dtype),
                "y_shape": tuple(y.shape), "y_dtype": str(y.dtype),
                "chunks": tuple(x.chunks), "compression": x.compression,
                "usage": _str(f[s].attrs["usage"]) if "usage" in f[s].attrs else None,
                "class_counts": dict(zip(names, (int(c) for c in counts))),
            }
    return info
