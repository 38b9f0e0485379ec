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
from .h5describe import describe
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
        block = x[i : i + 1024].astype(np.float64)
        s2 += np.einsum("nchw,nchw->c", block, block)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / n
    return mean, np.sqrt(np.maximum(s2 / n - mean**2, 0.0))


def write(
    path,
    data: SourceData,
    *,
    dataset: str,
    source: str,
    command: str,
    compress=None,
    overwrite: bool = True,
    where: str | None = None,
) -> None:
    """Write ``data`` to ``path`` in the layout above, atomically (``gpunet.data.h5file.create``;
    overwrite: False refuses a ``path`` that appears meanwhile). The train split must be present.
    source: the name recorded in the file; where: how errors name the source (default ``source``)."""
    if compress not in COMPRESSIONS:
        raise PrepError(f"--compress: expected one of gzip, lzf, found {compress!r}")
    if "train" not in data.splits or len(data.splits["train"].y) == 0:
        raise PrepError(f"{source}: expected training samples, found none")
    names = [s for s in SPLIT_ORDER if s in data.splits and len(data.splits[s].y)]
    image_shape = data.splits["train"].x.shape[1:]
    mean, std = channel_stats(data.splits["train"].x)
    if (std <= 0).any():  # checked before the file exists (issue 24 #7): it could not be trained on
        flat = [int(c) for c in np.flatnonzero(std <= 0)]
        raise PrepError(
            f"{where or source}: the training images have no variation in channel(s) {flat} (every pixel "
            f"{[round(float(mean[c]), 1) for c in flat]}): nothing to learn from; no output written"
        )
    extra = {"source": source, "source_sha256": data.fingerprint["sha256"]}
    if "md5" in data.fingerprint:
        extra["source_md5"] = data.fingerprint["md5"]
    extra["command"] = command
    extra["created"] = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    with fmt.create(
        path,
        dataset=dataset,
        class_names=list(data.class_names),
        mean=mean,
        std=std,
        image_shape=image_shape,
        splits=list(names),
        notes=list(data.notes),
        overwrite=overwrite,
        **extra,
    ) as f:
        for name in names:
            split = data.splits[name]
            k = chunk_rows(int(np.prod(image_shape)), len(split.y))
            fmt.write_split(f, name, split.x, split.y, k, compression=compress, usage=split.usage)


def read_info(path, strict: bool = True, verify: bool = False) -> dict:
    """A summary of a prepared file: root attributes plus, per split, count, shapes, dtypes,
    chunks, usage and ``class_counts`` (class name -> samples), and ``problems``: one line
    per thing that is wrong (see ``data_prep.h5describe``). strict: raise PrepError with
    the first problem instead of returning them. verify: read every chunk of the images (else
    a sample: the first, the last and some between). PrepError when it cannot be opened at all."""
    try:
        f = fmt.open_file(path, check=False)
    except FileNotFoundError as e:
        raise PrepError(str(e)) from None
    except (OSError, ValueError) as e:
        raise PrepError(f"{path}: cannot open as a gpunet HDF5 file ({e})") from None
    with f:
        try:
            info = describe(f, path, verify)
        except (OSError, RuntimeError, KeyError) as e:  # the HDF5 library on a damaged file
            raise PrepError(f"{path}: damaged HDF5 file ({type(e).__name__}: {e})") from None
    if strict and info["problems"]:
        raise PrepError(info["problems"][0])
    return info
