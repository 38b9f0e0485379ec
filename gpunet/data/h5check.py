"""What a dataset of a gpunet HDF5 file really holds, checked before anything reads it.

A file of a few kilobytes can declare ten billion labels: chunks that were never written
read as the fill value, and compressed chunks can claim any size. Reading such a split
would hang a tool or ask for 75 GiB. ``size_problem`` compares what a dataset declares
(shape x item size) with what the file stores for it (``get_storage_size``): an
uncompressed dataset must store all of its bytes, a compressed one at least
1/``MAX_COMPRESSION`` of them (deflate cannot shrink data more than 1032:1), and neither
more than the file holds. ``need_memory`` refuses a read larger than the memory available,
``reading`` names the file and dataset when the HDF5 library fails to read (a corrupt gzip
chunk: "filter returned failure during read"), and ``unreadable_chunks`` reads some or all
chunks of a dataset to find such damage before training does. Every error is a
``ValueError`` naming the file and the dataset.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np

MAX_COMPRESSION = 1100  # deflate's limit is 1032:1; lzf's is lower
SAMPLE_CHUNKS = 8  # chunks of a large dataset that ``unreadable_chunks`` reads when not asked for all
READ_ALL_BYTES = 256 << 20  # a dataset up to this size is read whole even then (CIFAR-10 train: 138 MB)
VERIFY_BLOCK = 16 << 20  # bytes read at a time when verifying


def human(n: int) -> str:
    """``n`` bytes as ``'74.5 GiB'``."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this system: no limit known
        return 1 << 62


def declared_bytes(ds) -> int:
    """Bytes the dataset's shape and dtype declare (a Python int: no overflow)."""
    n = 1
    for s in ds.shape or ():
        n *= int(s)
    return n * ds.dtype.itemsize


def size_problem(ds, file_bytes: int) -> str | None:
    """Why dataset ``ds`` cannot hold what its shape declares (None when it can): the file
    stores less than all of an uncompressed dataset's bytes, less than 1/MAX_COMPRESSION
    of a compressed one's, or more than the whole file (``file_bytes``)."""
    declared = declared_bytes(ds)
    if declared == 0:
        return None
    stored = int(ds.id.get_storage_size())
    what = f"{ds.name} declares {tuple(ds.shape)} {ds.dtype} ({human(declared)})"
    if stored > file_bytes:
        return f"{what} and claims {human(stored)} of storage, more than the whole file ({human(file_bytes)})"
    filtered = ds.id.get_create_plist().get_nfilters() > 0
    if stored == 0:
        return f"{what} but the file stores none of it; the file is damaged or incomplete"
    if not filtered and stored < declared:
        return (
            f"{what} but the file stores only {human(stored)} of it (the rest was never written); "
            "the file is damaged or incomplete"
        )
    if filtered and declared > stored * MAX_COMPRESSION:
        return (
            f"{what} but the file stores {human(stored)} for it, more than {MAX_COMPRESSION}:1 "
            "compression could give; the file is damaged or incomplete"
        )
    return None


def need_memory(nbytes: int, path, what: str) -> None:
    """ValueError naming the file when reading ``what`` (``nbytes`` bytes) needs more memory
    than is available."""
    free = available_ram()
    if nbytes > free:
        raise ValueError(
            f"{os.fspath(path)}: {what} needs {human(nbytes)} of memory, and {human(free)} is available"
        )


@contextmanager
def reading(path, ds):
    """Turn the HDF5 library's read failures (an ``OSError`` without a file name: a corrupt
    compressed chunk, a bad checksum) into a ValueError naming the file and ``ds`` (a dataset,
    or a phrase such as "split 'val'")."""
    try:
        yield
    except OSError as e:
        if type(e) is not OSError or e.errno is not None:  # a missing file, a full disk: not a read
            raise
        what = ds if isinstance(ds, str) else ds.name
        raise ValueError(
            f"{os.fspath(path)}: {what}: cannot read the data ({' '.join(str(e).split())}); "
            "the file is damaged"
        ) from None


def unreadable_chunks(ds, every: bool = False) -> str | None:
    """Read ``ds`` along its first axis in whole chunks: all of them when ``every`` or when it
    holds at most ``READ_ALL_BYTES``, else the first, the last and some between (``SAMPLE_CHUNKS``
    in all); return why a read failed (None when all were read). Decompression and a fletcher32
    checksum catch corrupt chunks; damage to an uncompressed dataset without checksums cannot be seen."""
    n = int(ds.shape[0]) if ds.shape else 0
    if not n:
        return None
    k = int(ds.chunks[0]) if ds.chunks else n
    starts = np.arange(0, n, k)
    if every or declared_bytes(ds) <= READ_ALL_BYTES:
        row = max(declared_bytes(ds) // n, 1)
        step = max(k, VERIFY_BLOCK // row // k * k)
        blocks = [(a, min(a + step, n)) for a in range(0, n, step)]
    else:
        pick = np.unique(np.linspace(0, len(starts) - 1, min(SAMPLE_CHUNKS, len(starts))).round().astype(int))
        blocks = [(int(starts[i]), min(int(starts[i]) + k, n)) for i in pick]
    for a, b in blocks:
        try:
            ds[a:b]
        except OSError as e:
            why = " ".join(str(e).split())
            return f"{ds.name}: rows {a}..{b - 1} cannot be read ({why}); the file is damaged"
    return None
