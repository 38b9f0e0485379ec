"""Streaming a split of a gpunet HDF5 file to the device: ``H5Loader``.

The file (layout in ``data_prep/h5format.py``) is read in whole chunks by a
background thread into a small ring of host buffers (pinned on CuPy), copied to
the device as uint8 and normalised there. The epoch order (``epoch_plan``)
depends only on ``(seed, epoch, chunk layout)``, so streaming and preloading
give identical batches. Part of the loader interface of ``gpunet.data``.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading

import h5py
import numpy as np

from . import backend
from .augment import augment_images, check_augment
from .data import AUGMENT_STREAM

_DEFAULT_CHUNK = 256          # rows per read when a dataset is stored contiguously
_WINDOW_BYTES = 64 << 20      # shuffle-buffer budget: at most this many bytes of chunks, ...
_MAX_WINDOW_CHUNKS = 16       # ... and at most this many chunks
_POLL_S = 0.05                # queue timeout, so stop requests and Ctrl-C are seen promptly


def _open_h5(path):
    """Open ``path`` read-only without taking a file lock (a second reader may be open)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such HDF5 file")
    try:
        try:
            return h5py.File(path, "r", locking=False)
        except TypeError:  # h5py < 3.5 has no locking argument; HDF5 reads this variable at open
            os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"
            return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: expected an HDF5 file, could not open it ({e})") from None


def _attr_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _meta(f, path) -> dict:
    a = f.attrs
    counts = {k: int(g["x"].shape[0]) for k, g in f.items() if isinstance(g, h5py.Group) and "x" in g}
    get = lambda k, conv: conv(a[k]) if k in a else None  # noqa: E731
    return {
        "path": os.fspath(path),
        "class_names": get("class_names", lambda v: [_attr_str(s) for s in np.atleast_1d(v)]),
        "mean": get("mean", lambda v: np.asarray(v, np.float64).reshape(-1)),
        "std": get("std", lambda v: np.asarray(v, np.float64).reshape(-1)),
        "image_shape": get("image_shape", lambda v: tuple(int(s) for s in np.atleast_1d(v))),
        "counts": counts,
        "format_version": get("format_version", int),
        "dataset": get("dataset", _attr_str),
    }


def read_meta(path) -> dict:
    """Metadata of a gpunet HDF5 file.

    Returns ``class_names`` (list of str), ``mean``, ``std`` ((C,) float64, pixel units 0..255),
    ``image_shape`` ((C, H, W)), ``counts`` ({split: N}), ``format_version``, ``dataset``, ``path``;
    a missing attribute reads as None.
    """
    with _open_h5(path) as f:
        return _meta(f, path)


def _check_split(f, path, split):
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
        raise ValueError(f"{where}: expected /{split}/x uint8 of shape (N, C, H, W), "
                         f"found {x.dtype} of shape {x.shape}")
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: expected /{split}/y integer of shape ({x.shape[0]},), "
                         f"found {y.dtype} of shape {y.shape}")
    names = f.attrs.get("class_names")
    if names is not None and y.shape[0]:
        labels = y[...]  # small (8 bytes a sample); checked once here, never in the training step
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if bad.size:
            raise ValueError(f"{where}: /{split}/y entry {bad[0]} is {labels[bad[0]]}, expected a label in "
                             f"[0, {len(names)}) ({len(names)} class_names)")
    return x, y


def epoch_plan(n: int, chunk: int, window: int, seed: int, epoch: int, shuffle: bool = True):
    """How one epoch reads a chunked split: a list of windows ``(chunks, order)``.

    chunks: (W,) int64 indices of the file chunks (``chunk`` rows each) read together;
    order: (M,) int64 sample indices of those chunks in the order they are served.
    With ``shuffle`` the chunks are visited in a random order and each window's samples
    are permuted together (a shuffle buffer of ``window`` chunks); without, file order.
    A pure function of its arguments, so streaming and preloading serve the same batches.
    """
    n_chunks = -(-n // chunk)
    rng = np.random.default_rng([int(seed), int(epoch)])
    visit = rng.permutation(n_chunks) if shuffle else np.arange(n_chunks)
    plan = []
    for w in range(0, n_chunks, window):
        chunks = visit[w:w + window]
        order = np.concatenate([np.arange(c * chunk, min((c + 1) * chunk, n)) for c in chunks])
        if shuffle:
            rng.shuffle(order)
        plan.append((chunks, order))
    return plan


def _available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def preload_budget() -> int:
    """Bytes a split may take to be preloaded by ``preload='auto'``.

    25% of free GPU memory on CuPy; min(2 GB, 25% of available RAM) on NumPy.
    """
    cp = backend.cupy_module() if backend.name() == "cupy" else None
    if cp is not None:
        return int(cp.cuda.runtime.memGetInfo()[0]) // 4
    return min(2 << 30, _available_ram() // 4)


def _lower_thread_priority(niceness=5):
    """Let the reader thread run on cycles the training step leaves idle (Linux: per-thread nice).

    With few cores, a reader at full priority preempts BLAS threads mid-product and
    slows the whole step more than its own work costs.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class _Prefetcher:
    """One epoch of background reading: HDF5 windows -> batches gathered into host slots.

    The worker fills a free slot, then queues ``(slot, rows)``; the consumer hands each
    slot back with ``release(slot, event)``, where ``event`` is a CUDA event (the async
    copy out of the slot) the worker waits on before refilling it, or None.
    """

    def __init__(self, loader, plan, n_batches):
        self.ld, self.plan, self.n_batches = loader, plan, n_batches
        self._free, self._ready = queue.Queue(), queue.Queue()
        for i in range(len(loader._slots)):
            self._free.put((i, None))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="gpunet-h5-prefetch", daemon=True)
        self._thread.start()

    def next_ready(self):
        """``(slot, rows, X or None)`` of the next batch, or None at the end of the epoch."""
        while True:
            try:
                item = self._ready.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError(f"{self.ld.path}: the prefetch thread stopped unexpectedly")
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def release(self, slot, event=None):
        self._free.put((slot, event))

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def _take_slot(self):
        while not self._stop.is_set():
            try:
                slot, event = self._free.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if event is not None:
                event.synchronize()  # the async copy out of this pinned slot has finished
            return slot
        return None

    def _read_window(self, chunks):
        """Read whole ``chunks`` (sorted, consecutive ones in one read) into the window buffer."""
        ld, k, n = self.ld, self.ld.chunk, self.ld.num_samples
        chunks = np.sort(chunks)
        runs = np.split(np.arange(len(chunks)), np.flatnonzero(np.diff(chunks) != 1) + 1)
        for run in runs:
            if self._stop.is_set():
                return
            a, b = chunks[run[0]] * k, min((chunks[run[-1]] + 1) * k, n)
            r = run[0] * k
            ld._x.read_direct(ld._win_x, np.s_[a:b], np.s_[r:r + b - a])
            ld._y.read_direct(ld._win_y, np.s_[a:b], np.s_[r:r + b - a])
        ld._chunk_slot[chunks] = np.arange(len(chunks))

    def _finish(self, slot, rows):
        """``(slot, rows, X)``: on the CPU the worker also converts the batch to normalised float,
        using the core that the single-threaded parts of a training step leave idle; on the GPU
        X is None (the uint8 batch is converted on the device)."""
        if self.ld._device_id is not None:
            return slot, rows, None
        return slot, rows, self.ld._to_float(self.ld._slots[slot][0][:rows])

    def _work(self):
        ld, b = self.ld, self.ld.batch_size
        _lower_thread_priority()
        win_x = ld._win_x.reshape(len(ld._win_x), -1)                   # (window rows, D)
        try:
            cp = backend.cupy_module() if ld._device_id is not None else None
            with cp.cuda.Device(ld._device_id) if cp else contextlib.nullcontext():
                slot, fill, done = None, 0, 0
                for chunks, order in self.plan:
                    if done >= self.n_batches or self._stop.is_set():
                        break
                    self._read_window(chunks)
                    rows = ld._chunk_slot[order // ld.chunk] * ld.chunk + order % ld.chunk
                    s = 0
                    while s < len(rows) and done < self.n_batches:
                        if slot is None and (slot := self._take_slot()) is None:
                            return
                        hx, hy = ld._slots[slot]
                        m = min(b - fill, len(rows) - s)
                        r = rows[s:s + m]
                        np.take(win_x, r, axis=0, out=hx[fill:fill + m], mode="clip")
                        np.take(ld._win_y, r, out=hy[fill:fill + m], mode="clip")
                        fill, s = fill + m, s + m
                        if fill == b:
                            self._ready.put(self._finish(slot, fill))
                            slot, fill, done = None, 0, done + 1
                if fill and done < self.n_batches:
                    self._ready.put(self._finish(slot, fill))
                self._ready.put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._ready.put(e)


class H5Loader:
    """Mini-batches of one split of a gpunet HDF5 file, streamed in whole chunks or preloaded.

    path, split: the file and the group (``/<split>/x`` uint8 (N, C, H, W), ``/<split>/y`` (N,)).
    batch_size, shuffle, seed, drop_last: as for ``ArrayLoader``; the order of an epoch is
        ``epoch_plan(N, chunk, window, seed, epoch, shuffle)``: chunks in a random order,
        samples mixed inside windows of ``buffer_chunks`` chunks (default: up to 16 chunks,
        64 MB). It depends on the file's chunk layout only, never on ``preload``.
    preload: True keeps the whole split on the device (uint8); False streams it;
        ``'auto'`` preloads when its size is below ``preload_budget()``.
    prefetch: batches read ahead by the background thread.
    augment: None, or ``{'flip': bool, 'crop_pad': int}`` (see ``augment_images``), drawn
        from ``(seed, epoch)``.
    dtype, normalize: X is ``(B, C*H*W)`` of ``dtype``; with ``normalize``
        ``(x - mean[c]) / std[c]`` using the file's attrs ``mean``, ``std`` (pixel units).
    """

    def __init__(self, path, split="train", batch_size=100, shuffle=True, seed=0, drop_last=False,
                 preload="auto", prefetch=2, augment=None, dtype=np.float32, normalize=True,
                 buffer_chunks=None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        if int(prefetch) < 1:
            raise ValueError(f"prefetch: expected a positive integer, got {prefetch}")
        if preload not in (True, False, "auto"):
            raise ValueError(f"preload: expected True, False or 'auto', got {preload!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype: expected a floating dtype, got {self.dtype}")
        self.path, self.split = os.fspath(path), split
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.prefetch = bool(drop_last), int(prefetch)
        self.augment = check_augment(augment)
        self._epoch, self._run, self._file, self._copy_stream, self._closed = 0, None, None, None, False
        self._file = _open_h5(self.path)
        try:
            self._setup(normalize, preload, buffer_chunks)
        except BaseException:
            self.close()
            raise

    def _setup(self, normalize, preload, buffer_chunks):
        self._x, self._y = _check_split(self._file, self.path, self.split)
        self.meta = _meta(self._file, self.path)
        self.num_samples = int(self._x.shape[0])
        self.sample_shape = tuple(int(s) for s in self._x.shape[1:])          # (C, H, W)
        c, d = self.sample_shape[0], int(np.prod(self.sample_shape))
        self.chunk = int(self._x.chunks[0]) if self._x.chunks else _DEFAULT_CHUNK
        if buffer_chunks is None:
            buffer_chunks = max(1, min(_MAX_WINDOW_CHUNKS, _WINDOW_BYTES // (self.chunk * d)))
        if int(buffer_chunks) < 1:
            raise ValueError(f"buffer_chunks: expected a positive integer, got {buffer_chunks}")
        self.buffer_chunks = int(buffer_chunks)
        xp = backend.xp()
        self._mean_row = self._inv_std_row = None
        if normalize:
            mean, std = self.meta["mean"], self.meta["std"]
            if mean is None or std is None or mean.shape != (c,) or std.shape != (c,) or not (std > 0).all():
                raise ValueError(f"{self.path}: expected root attrs mean, std of shape ({c},) with std > 0 "
                                 f"to normalise split {self.split!r}, found mean={mean}, std={std}")
            per = d // c                                 # pixels per channel: (C,) -> (D,) rows
            self._mean_row = xp.asarray(np.repeat(mean, per), dtype=self.dtype)
            self._inv_std_row = xp.asarray(np.repeat(1.0 / std, per), dtype=self.dtype)
        nbytes = self.num_samples * (d + 8)
        self.preloaded = bool(preload) if preload != "auto" else nbytes <= preload_budget()
        if self.preloaded:
            self._load_all(d)
        else:
            self._win_x = np.empty((self.buffer_chunks * self.chunk,) + self.sample_shape, np.uint8)
            self._win_y = np.empty(self.buffer_chunks * self.chunk, np.int64)
            self._chunk_slot = np.zeros(-(-self.num_samples // self.chunk), np.int64)
            b = self.batch_size
            self._slots = [(backend.pinned_empty((b, d), np.uint8), backend.pinned_empty((b,), np.int64))
                           for _ in range(self.prefetch + 1)]
            self._device_id = None
            if backend.name() == "cupy":
                self._device_id = backend.cupy_module().cuda.Device().id  # for the worker thread
                self._copy_stream = backend.stream()
                self._ring = [(xp.empty((b, d), np.uint8), xp.empty((b,), np.int64)) for _ in range(2)]
                self._consumed = [None, None]              # events: the ring buffer has been read

    def _load_all(self, d):
        """Copy the split to the device as uint8 (N, D), a few chunks at a time."""
        n, xp = self.num_samples, backend.xp()
        self._X, self._Y = xp.empty((n, d), np.uint8), xp.empty((n,), np.int64)
        step = self.chunk * self.buffer_chunks
        host = np.empty((min(step, n),) + self.sample_shape, np.uint8)
        for a in range(0, n, step):
            m = min(step, n - a)
            self._x.read_direct(host, np.s_[a:a + m], np.s_[:m])
            self._X[a:a + m] = backend.to_device(host[:m].reshape(m, d))
        self._Y[...] = backend.to_device(self._y[...].astype(np.int64))
        self._file.close()  # everything is on the device now

    # -- the loader interface

    def __len__(self):
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int):
        self._epoch = int(epoch)

    def order(self, epoch=None) -> np.ndarray:
        """(N,) int64 sample indices in the order ``epoch`` (default: the next) serves them."""
        plan = self._plan(self._epoch if epoch is None else epoch)
        return np.concatenate([o for _, o in plan]) if plan else np.empty(0, np.int64)

    def _plan(self, epoch):
        return epoch_plan(self.num_samples, self.chunk, self.buffer_chunks, self.seed, epoch, self.shuffle)

    def __iter__(self):
        self._stop_run()  # a new epoch supersedes an unfinished one
        if self._closed:
            raise ValueError(f"{self.path}: split {self.split!r}: the loader is closed")
        if self.preloaded:
            source = self._preloaded_batches(self.order())
        elif backend.name() == "cupy":
            source = self._device_batches(self._plan(self._epoch))
        else:
            source = self._host_batches(self._plan(self._epoch))
        rng = backend.default_rng([self.seed, self._epoch, AUGMENT_STREAM]) if self.augment else None
        return self._finished(source, rng)

    def _to_float(self, xb):
        """uint8 (B, D) -> normalised float (B, D), a new array on xb's backend."""
        if self._mean_row is None:
            return xb.astype(self.dtype)
        out = xb - self._mean_row                # uint8 - float -> a new float array
        out *= self._inv_std_row
        return out

    def _finished(self, source, rng):
        """Convert each uint8 batch to normalised (B, D) float, augment it; then resume the source."""
        try:
            for xb, yb in source:
                out = self._to_float(xb) if xb.dtype == np.uint8 else xb  # the CPU worker converts already
                if rng is not None:
                    out = augment_images(out.reshape((len(out),) + self.sample_shape), rng, **self.augment)
                    out = out.reshape(len(out), -1)
                yield out, yb
        finally:
            source.close()

    def _preloaded_batches(self, order):
        n, b = self.num_samples, self.batch_size
        idx_all = backend.to_device(order) if self.shuffle else None
        for i in range(len(self)):
            a, z = i * b, min((i + 1) * b, n)
            if idx_all is None:
                yield self._X[a:z], self._Y[a:z].copy()
            else:
                idx = idx_all[a:z]
                yield self._X[idx], self._Y[idx]

    def _host_batches(self, plan):
        """NumPy: batches arrive converted by the worker; the uint8 slot goes straight back."""
        self._run = run = _Prefetcher(self, plan, len(self))
        try:
            while (item := run.next_ready()) is not None:
                slot, m, xb = item
                yb = self._slots[slot][1][:m].copy()
                run.release(slot)  # xb is a new array: the slot can be refilled at once
                yield xb, yb
        finally:
            self._end_run(run)

    def _device_batches(self, plan):
        """CuPy: pinned slot -> async copy on a side stream into a 2-buffer device ring.

        The copy of batch i+1 is queued before batch i is handed out, so it overlaps the
        compute on batch i. Events order everything: the compute stream waits for the copy
        into a ring buffer; the copy stream waits until the previous reader of that buffer
        (the conversion on the compute stream) is done; the worker waits for the copy out of
        a pinned slot before refilling it.
        """
        cp = backend.cupy_module()
        self._run = run = _Prefetcher(self, plan, len(self))
        try:
            j, pending = 0, self._issue_copy(run, 0)
            while pending is not None:
                m, copied = pending
                compute = cp.cuda.get_current_stream()
                compute.wait_event(copied)
                dx, dy = self._ring[j]
                yb = dy[:m].copy()
                pending = self._issue_copy(run, 1 - j)
                yield dx[:m], yb
                self._consumed[j] = cp.cuda.get_current_stream().record()  # after the conversion
                j = 1 - j
        finally:
            self._end_run(run)
            done = cp.cuda.get_current_stream().record()  # the batches handed out were converted
            self._consumed = [done, done]

    def _issue_copy(self, run, j):
        """Queue the async copy of the next ready slot into ring buffer ``j``; ``(rows, event)`` or None."""
        item = run.next_ready()
        if item is None:
            return None
        slot, m, _ = item
        hx, hy = self._slots[slot]
        dx, dy = self._ring[j]
        s = self._copy_stream
        if self._consumed[j] is not None:
            s.wait_event(self._consumed[j])
        dx[:m].set(hx[:m], stream=s)
        dy[:m].set(hy[:m], stream=s)
        copied = s.record()
        run.release(slot, copied)
        return m, copied

    def _end_run(self, run):
        """Stop ``run``'s thread; on CuPy wait for its copies, so its pinned slots can be refilled."""
        run.stop()
        if self._run is run:
            self._run = None
        if getattr(self, "_copy_stream", None) is not None:
            self._copy_stream.synchronize()

    def _stop_run(self):
        if self._run is not None:
            self._end_run(self._run)

    def close(self):
        """Stop the background reader, close the file, free a preloaded split (idempotent)."""
        self._closed = True
        self._stop_run()
        self._X = self._Y = None
        f, self._file = getattr(self, "_file", None), None
        if f is not None and f.id.valid:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self):
        mode = "preloaded" if self.preloaded else f"streaming, window {self.buffer_chunks} chunks"
        return (f"H5Loader({self.path!r}, split={self.split!r}, N={self.num_samples}, "
                f"batch_size={self.batch_size}, {mode})")


def open_split(path, split="train", **kw) -> H5Loader:
    """``H5Loader(path, split, **kw)``: a loader over one split of a gpunet HDF5 file."""
    return H5Loader(path, split, **kw)
