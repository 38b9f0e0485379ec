"""What gpunet-prep puts into a gpunet HDF5 file, written through the format's owner.

The layout and the reading side belong to ``gpunet.data.h5file`` (described there
once); this module only decides the prep-specific parts: chunks of about 1 MiB
(``k`` a power of two rows: 256 for CIFAR-10, 512 for FER2013), the channel
statistics over the train split, and the provenance attributes ``source``,
``source_sha256``, ``source_md5`` (file sources only), ``command``, ``created``
(ISO 8601), ``splits`` and ``notes``. No compression unless asked (``gzip`` or
``lzf``), so batches stream fast.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
from gpunet.data import h5file as fmt

from .errors import PrepError
from .splits import SPLIT_ORDER, SourceData

FORMAT_VERSION = fmt.FORMAT_VERSION
CHUNK_BYTES = 1 << 20
COMPRESSIONS = fmt.COMPRESSIONS


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
    extra = {"source": source, "source_sha256": data.fingerprint["sha256"]}
    if "md5" in data.fingerprint:
        extra["source_md5"] = data.fingerprint["md5"]
    extra["command"] = command
    extra["created"] = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    with fmt.create(path, dataset=dataset, class_names=list(data.class_names), mean=mean, std=std,
                    image_shape=image_shape, splits=list(names), notes=list(data.notes), **extra) as f:
        for name in names:
            split = data.splits[name]
            k = chunk_rows(int(np.prod(image_shape)), len(split.y))
            fmt.write_split(f, name, split.x, split.y, k, compression=compress, usage=split.usage)


def _str(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_info(path) -> dict:
    """A summary of a prepared file: root attributes plus, per split, count, shapes,
    dtypes, chunks, usage and ``class_counts`` (class name -> samples)."""
    try:
        f = fmt.open_file(path)
    except (OSError, ValueError) as e:
        raise PrepError(f"{path}: cannot open as a gpunet HDF5 file ({e})") from None
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
