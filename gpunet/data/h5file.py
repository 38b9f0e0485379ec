"""The gpunet HDF5 format: the one module that writes, opens and describes it.

Layout, format_version 1 (a contract; prep tools, loaders and benchmarks all go
through this module)::

    /<split>/x   uint8 (N, C, H, W), chunked along N (k, C, H, W), k rows per chunk
    /<split>/y   int64 (N,), labels in [0, len(class_names)), chunked (k,)
    <split> in train, val, test; a group may carry attr ``usage`` (e.g. "PublicTest")

Root attributes: ``format_version`` (int), ``dataset`` (str), ``class_names``
(variable-length str array, label order), ``mean`` and ``std`` (float64 (C,), per
channel over the train split, pixel units 0..255), ``image_shape`` (C, H, W); writers
may add more (``data_prep`` adds ``source``, ``source_sha256``, ``command``, ``created``,
``splits``, ``notes``). Readers refuse, in one line naming the file: a missing,
non-integer or newer ``format_version``; a non-finite ``mean`` or ``std`` (or a std <= 0);
datasets whose bytes live outside the file (external storage, virtual datasets, external
links), which would make a reader take some other file's bytes as pixels; a dataset that
declares more than the file stores for it (``gpunet.data.h5check``: 10**10 labels in 22 KB).
A read that fails in the HDF5 library (a corrupt gzip chunk) names the file and dataset
(``CheckedDataset``, what ``check_split`` returns).

Files are written whole or not at all (``gpunet.io.atomic_path``), uncompressed unless
asked, so batches stream fast. HDF5 writes through a Python file object
(``_DiskWriter``): a full disk is then an ordinary ``OSError`` after HDF5 has closed the
file (HDF5 itself crashes when its own writes fail), and a signal during the write is
raised between blocks (``gpunet.interrupts.deferred``), never lost inside h5py. Files are
opened read-only without a lock, so several readers may share one.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager

import h5py
import numpy as np

from .. import interrupts
from ..io import atomic_path, regular_file
from .h5check import declared_bytes, need_memory, reading, size_problem
from .plan import limit_seed

FORMAT_VERSION = 1
COMPRESSIONS = (None, "gzip", "lzf")
_STR = h5py.string_dtype()
BLOCK_BYTES = 16 << 20  # image bytes written between two checks for a stop signal


# --------------------------------------------------------------------------- writing


class _DiskWriter(io.RawIOBase):
    """The file object h5py writes through. After the first failed write (a full disk) it
    keeps the error and discards the rest, so HDF5 never sees a failure; ``_h5_writing``
    raises the error once HDF5 has let go of the file."""

    def __init__(self, f):
        self._f, self.error = f, None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        return self._f.readinto(b)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def write(self, b):
        n = memoryview(b).nbytes
        if self.error is None:
            try:
                self._f.write(b)
                return n
            except OSError as e:
                self.error = e
        self._f.seek(n, io.SEEK_CUR)
        return n

    def _keep(self, call, *args):
        if self.error is None:
            try:
                return call(*args)
            except OSError as e:
                self.error = e

    def truncate(self, size=None):
        self._keep(self._f.truncate, size)
        return size

    def flush(self):
        self._keep(self._f.flush)


@contextmanager
def _h5_writing(tmp):
    """``h5py.File(tmp, "w")`` through ``_DiskWriter``; stop signals are deferred inside."""
    with interrupts.deferred(), open(tmp, "w+b") as raw:
        disk = _DiskWriter(raw)
        try:
            with h5py.File(disk, "w") as f:
                yield f
        finally:
            disk.flush()
        if disk.error is not None:
            raise disk.error


@contextmanager
def create(path, *, dataset: str, class_names, mean, std, image_shape, overwrite: bool = True, **attrs):
    """Write a gpunet HDF5 file at ``path`` atomically: yield the open ``h5py.File`` (add
    splits with ``write_split``/``create_split``); it appears at ``path`` only when the block
    ends without an error.

    mean, std: (C,) pixel units; image_shape: (C, H, W); attrs: extra root attributes
    (a list of str is stored as a variable-length str array). overwrite: False refuses
    (``gpunet.io.OutputExists``) a ``path`` that appeared meanwhile. A full disk raises
    ``gpunet.io.WriteError`` naming ``path``; a stop signal ``gpunet.interrupts.Interrupted``.
    """
    with atomic_path(path, overwrite=overwrite) as tmp, _h5_writing(tmp) as f:
        a = f.attrs
        a["format_version"] = FORMAT_VERSION
        a["dataset"] = str(dataset)
        a.create("class_names", [str(n) for n in class_names], dtype=_STR)
        a["mean"] = np.asarray(mean, np.float64).reshape(-1)
        a["std"] = np.asarray(std, np.float64).reshape(-1)
        a["image_shape"] = np.asarray(image_shape, np.int64)
        for k, v in attrs.items():
            if isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v):
                a.create(k, list(v), dtype=_STR)
            else:
                a[k] = v
        yield f


class _Checked:
    """A dataset being written whose every block write is a safe point for a stop signal."""

    def __init__(self, ds):
        self._ds = ds

    def __setitem__(self, key, value):
        interrupts.check()
        self._ds[key] = value

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def __len__(self):
        return len(self._ds)


def create_split(f, name: str, n: int, image_shape, chunk: int, compression=None, usage=None):
    """Empty datasets ``(/name/x uint8 (n, C, H, W), /name/y int64 (n,))`` to fill block by block
    (``x[a:b] = block``; a stop signal received meanwhile is raised before the next block)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression: expected one of gzip, lzf or None, found {compression!r}")
    shape, k = tuple(int(s) for s in image_shape), max(1, min(int(chunk), max(int(n), 1)))
    g = f.create_group(name)
    x = g.create_dataset("x", (n,) + shape, np.uint8, chunks=(k,) + shape, compression=compression)
    y = g.create_dataset("y", (n,), np.int64, chunks=(k,), compression=compression)
    if usage:
        g.attrs["usage"] = usage
    return _Checked(x), _Checked(y)


def write_split(f, name: str, x, y, chunk: int, compression=None, usage=None):
    """Write split ``name``: x uint8 (N, C, H, W), y integer (N,), ``chunk`` rows per chunk."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 4 or y.shape != (len(x),):
        raise ValueError(
            f"split {name!r}: expected x uint8 (N, C, H, W) and y (N,), "
            f"found x {x.dtype} {x.shape} and y {y.shape}"
        )
    dx, dy = create_split(f, name, len(x), x.shape[1:], chunk, compression, usage)
    k = dx.chunks[0] if dx.chunks else 1
    rows = max(k, BLOCK_BYTES // max(int(np.prod(x.shape[1:])), 1) // k * k)
    for a in range(0, len(x), rows):  # in blocks, so a stop signal is raised between them
        dx[a : a + rows], dy[a : a + rows] = x[a : a + rows], y[a : a + rows].astype(np.int64)


# --------------------------------------------------------------------------- reading


def open_file(path, check: bool = True):
    """Open ``path`` read-only without a file lock, after checking its ``format_version`` and
    that every dataset of the layout keeps its bytes in the file (``check=False``: neither,
    for a tool that describes broken files; it must call ``storage_problem`` itself).

    FileNotFoundError when it does not exist; ValueError naming the file when it is not
    HDF5, has no or a foreign ``format_version``, or stores data elsewhere.
    """
    path = regular_file(path, "HDF5 file")  # missing: FileNotFoundError; a FIFO or folder: ValueError
    try:
        try:
            f = h5py.File(path, "r", locking=False)
        except TypeError:  # h5py < 3.5 has no locking argument; HDF5 reads this variable at open
            os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
            f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: expected an HDF5 file, could not open it ({e})") from None
    try:
        if check:
            check_version(f, path)
            check_storage(f, path)
            check_sizes(f, path, layout_names(f))  # 10**10 labels declared in a 9 KB file (issue 24 #6)
            file_meta(f, path)  # refuses a non-finite mean or std
    except BaseException:
        f.close()
        raise
    return f


def show(v, width=60) -> str:
    text = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_version(f, path) -> int:
    """The file's ``format_version``; ValueError naming the file when it is missing, not an
    integer, or not one this gpunet reads."""
    where = os.fspath(path)
    try:
        raw = f.attrs["format_version"] if "format_version" in f.attrs else None
        v = None if raw is None else np.asarray(raw)
    except Exception as e:  # an attribute of a type h5py cannot read
        raise ValueError(f"{where}: root attribute format_version is unreadable ({e})") from None
    if v is None:
        raise ValueError(
            f"{where}: expected a gpunet HDF5 file with root attribute format_version "
            f"{FORMAT_VERSION}, found none (write it with gpunet-prep)"
        )
    if v.dtype.kind not in "iu" or v.size != 1:
        raise ValueError(f"{where}: expected an integer root attribute format_version, found {show(v)}")
    v = int(v.reshape(()))
    if v > FORMAT_VERSION:
        raise ValueError(
            f"{where}: format_version {v} is newer than this gpunet reads "
            f"(up to {FORMAT_VERSION}); update gpunet or re-run gpunet-prep"
        )
    if v < 1:
        raise ValueError(f"{where}: expected format_version 1..{FORMAT_VERSION}, found {v}")
    return v


def storage_problem(f, name: str):
    """Why the object ``name`` of an open file keeps bytes outside it (None when it does not):
    an external link, external raw storage or a virtual dataset."""
    link = f.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return f"/{name} is an external link to {link.filename}:{link.path}"
    try:
        obj = f.get(name)
    except (KeyError, OSError, RuntimeError):  # a dangling soft link
        return None
    if isinstance(obj, h5py.Dataset):
        if obj.external:
            return f"/{name} keeps its data in external file(s) {obj.external[0][0]!r}"
        if obj.is_virtual:
            return f"/{name} is a virtual dataset (its data lives in other files)"
    return None


def layout_names(f) -> list:
    """The paths of the layout's objects in an open file: the root's members and, for a group
    linked in the file itself, its members."""
    names = []
    for k in f.keys():
        names.append(k)
        if isinstance(f.get(k, getlink=True), h5py.HardLink) and isinstance(f.get(k), h5py.Group):
            names += [f"{k}/{c}" for c in f[k].keys()]
    return names


def check_storage(f, path) -> None:
    """ValueError naming the file when a group or dataset of the layout (root and one level
    below) stores its bytes outside the file, which readers refuse to follow."""
    for name in layout_names(f):
        problem = storage_problem(f, name)
        if problem:
            raise ValueError(f"{os.fspath(path)}: {problem}; refusing to read data stored outside the file")


def check_sizes(f, path, names) -> None:
    """ValueError naming the file and dataset when a dataset among ``names`` (paths in the open
    file ``f``) declares more data than the file stores for it (``size_problem``)."""
    file_bytes = int(f.id.get_filesize())
    for name in names:
        try:
            ds = f.get(name)
        except (KeyError, OSError, RuntimeError):  # a dangling soft link: nothing stored
            continue
        if isinstance(ds, h5py.Dataset):
            why = size_problem(ds, file_bytes)
            if why:
                raise ValueError(f"{os.fspath(path)}: {why}")


class CheckedDataset(h5py.Dataset):
    """The same HDF5 dataset, whose reads (indexing, ``read_direct``) raise a ValueError naming
    the file and the dataset when the library fails (``reading``); ``check_split`` returns these,
    so every loader's read of a damaged chunk is one line naming both."""

    def __init__(self, ds, path):
        super().__init__(ds.id)
        self.path = os.fspath(path)

    def __getitem__(self, args, new_dtype=None):
        with reading(self.path, self):
            return super().__getitem__(args, new_dtype)

    def read_direct(self, dest, source_sel=None, dest_sel=None):
        with reading(self.path, self):
            return super().read_direct(dest, source_sel, dest_sel)


def is_group(obj) -> bool:
    return isinstance(obj, h5py.Group)


def is_dataset(obj) -> bool:
    return isinstance(obj, h5py.Dataset)


def _attr_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def file_meta(f, path) -> dict:
    """``read_meta`` of an open file."""
    a = f.attrs
    counts = {}
    for k, g in f.items():
        if isinstance(g, h5py.Group) and "x" in g:
            if not isinstance(g["x"], h5py.Dataset) or not g["x"].shape:
                raise ValueError(
                    f"{os.fspath(path)}: split {k!r}: expected /{k}/x a dataset of shape (N, C, H, W), "
                    f"found {'a group' if isinstance(g['x'], h5py.Group) else 'a scalar'}"
                )
            counts[k] = int(g["x"].shape[0])
    get = lambda k, conv: conv(a[k]) if k in a else None  # noqa: E731
    meta = {
        "path": os.fspath(path),
        "class_names": get("class_names", lambda v: [_attr_str(s) for s in np.atleast_1d(v)]),
        "mean": get("mean", lambda v: channel_attr(v, "mean", path)),
        "std": get("std", lambda v: channel_attr(v, "std", path)),
        "image_shape": get("image_shape", lambda v: tuple(int(s) for s in np.atleast_1d(v))),
        "counts": counts,
        "format_version": get("format_version", int),
        "dataset": get("dataset", _attr_str),
    }
    if meta["std"] is not None and (meta["std"] <= 0).any():
        raise ValueError(
            f"{os.fspath(path)}: expected a root attribute std > 0 per channel, found {show(meta['std'])}"
        )
    xs, shape, where = {k: f[k]["x"] for k in counts}, meta["image_shape"], os.fspath(path)
    for k, x in xs.items():  # the attribute every reader trusts must describe the images (issue 24 #11)
        if shape is not None and x.ndim == 4 and tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"{where}: root attribute image_shape {list(shape)} does not match split {k!r}'s "
                f"images, {list(x.shape[1:])}"
            )
        twin = next((j for j in xs if j < k and xs[j].id == x.id), None)  # a hard link: val = train
        if twin is not None:
            raise ValueError(f"{where}: splits {twin!r} and {k!r} are the same data (a link)")
    return meta


def channel_attr(v, name: str, path) -> np.ndarray:
    """Root attribute ``mean`` or ``std`` as finite float64 (C,); ValueError otherwise."""
    try:
        a = np.asarray(v, np.float64).reshape(-1)
    except (TypeError, ValueError):
        a = None
    if a is None or not a.size or not np.isfinite(a).all():
        raise ValueError(
            f"{os.fspath(path)}: expected a root attribute {name} of finite "
            f"numbers per channel, found {show(np.asarray(v))}"
        )
    return a


def read_meta(path) -> dict:
    """Metadata of a gpunet HDF5 file.

    Returns ``class_names`` (list of str), ``mean``, ``std`` ((C,) float64, pixel units 0..255),
    ``image_shape`` ((C, H, W)), ``counts`` ({split: N}), ``format_version``, ``dataset``, ``path``;
    a missing attribute reads as None.
    """
    with open_file(path) as f:
        return file_meta(f, path)


def check_labels(y, num_classes: int, where: str):
    """ValueError naming ``where`` and the first entry of (N,) labels ``y`` outside [0, num_classes)."""
    y = np.asarray(y)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(f"{where} entry {bad[0]} is {y[bad[0]]}, expected a label in [0, {num_classes})")


def check_split(f, path, split):
    """The ``(x, y)`` datasets of ``split``, checked against the layout; ValueError otherwise."""
    where = f"{os.fspath(path)}: split {split!r}"
    if split not in f or not isinstance(f[split], h5py.Group):
        found = sorted(k for k, g in f.items() if isinstance(g, h5py.Group))
        raise ValueError(f"{where}: expected a group /{split}, found groups {found}")
    g = f[split]
    for k in ("x", "y"):
        if k not in g or not isinstance(g[k], h5py.Dataset):
            raise ValueError(f"{where}: expected a dataset /{split}/{k}, found {sorted(g.keys())}")
    x, y = g["x"], g["y"]
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(
            f"{where}: expected /{split}/x uint8 of shape (N, C, H, W), found {x.dtype} of shape {x.shape}"
        )
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{where}: expected /{split}/y integer of shape ({x.shape[0]},), "
            f"found {y.dtype} of shape {y.shape}"
        )
    names = f.attrs.get("class_names")
    if names is not None and y.shape[0]:
        # small (8 bytes a sample); checked once here, never in the training step
        need_memory(int(y.shape[0]) * 8, path, f"reading the labels /{split}/y")
        check_labels(CheckedDataset(y, path)[...], len(names), f"{where}: /{split}/y")
    return CheckedDataset(x, path), CheckedDataset(y, path)  # a failed read names the file and dataset


def load_split(path, split, limit=None, seed=0):
    """``(X, y)`` of ``split`` in memory: uint8 (N, C, H, W) and int64 (N,), labels checked.

    limit: keep this many samples, drawn at random from ``[seed, LIMIT_STREAM]``, in file order.
    """
    with open_file(path) as f:
        x, y = check_split(f, path, split)
        n = int(x.shape[0])
        rows = n if limit is None or limit > 1000 else min(int(limit), n)  # a few rows: fancy indexing
        need_memory(declared_bytes(x) // max(n, 1) * rows + 8 * n, path, f"reading split {split!r}")
        labels = y[...].astype(np.int64)
        if limit is None or limit >= n:
            return x[...], labels
        idx = np.sort(np.random.default_rng(limit_seed(seed)).choice(n, int(limit), replace=False))
        # a few rows: h5py's fancy indexing; many: read all, then index (faster)
        return (x[idx] if limit <= 1000 else x[...][idx]), labels[idx]
