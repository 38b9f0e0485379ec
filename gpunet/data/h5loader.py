"""A split of a gpunet HDF5 file on the device: ``H5Loader``, kept there whole or streamed.

Kept on the device (``preload``; chosen by ``data_on_device``: the split fits
``DEVICE_DATA_SHARE`` of free device memory): the split is copied once as uint8; each
epoch's order goes up once, and every batch is gathered, normalised (``gpunet.data.norm``)
and augmented (``gpunet.data.augment``) by array ops on the device, with no host round trip.
Streamed (data that does not fit): a background thread (``gpunet.data.prefetch``) reads
whole chunks into a small ring of host buffers (pinned on CuPy), copied to the device as
uint8 and normalised there. Both paths follow the same ``epoch_plan`` (its window from
``default_window``, a property of the file) and draw augmentation from the same generator,
so they serve the same batches for the same ``(seed, epoch)``.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from .. import backend
from .augment import augment_images, check_augment
from .h5check import available_ram
from .h5file import check_split, file_meta, open_file
from .norm import norm_stats, normalize
from .plan import augment_seed, epoch_plan
from .prefetch import Prefetcher, blocking_event

DEFAULT_CHUNK = 256  # rows per read when a dataset is stored contiguously
_WINDOW_BYTES = 64 << 20  # shuffle-buffer budget: at most this many bytes of chunks, ...
_MAX_WINDOW_CHUNKS = 16  # ... and at most this many chunks
DEVICE_DATA_SHARE = 0.25  # a split is kept on the device when it takes at most this share of free memory
HOST_DATA_CAP = 2 << 30  # on NumPy ("device" memory is host RAM): never more than this, whatever is free
WHOLE_SHUFFLE_BYTES = 1 << 30  # a split up to this size is shuffled as one window (a whole permutation)
DATA_ON_DEVICE = ("auto", "yes", "no")  # --data-on-device: choose by size, force the device, force streaming


def free_device_memory() -> int:
    """Bytes free for new arrays: on CuPy the GPU's free memory plus the blocks CuPy's memory pool holds
    unused (the driver counts those as taken); available RAM on NumPy (and emulated)."""
    cp = backend.cupy_module() if backend.name() == "cupy" and not backend.emulated() else None
    if cp is not None:
        return int(cp.cuda.runtime.memGetInfo()[0]) + int(cp.get_default_memory_pool().free_bytes())
    return available_ram()


def preload_budget(free: int | None = None) -> int:
    """Bytes a split may take to be kept on the device by ``preload='auto'``.

    free: free device memory in bytes (default: ``free_device_memory()``; tests inject a figure).
    ``DEVICE_DATA_SHARE`` of it on CuPy; on NumPy also at most ``HOST_DATA_CAP``.
    """
    free = free_device_memory() if free is None else int(free)
    budget = int(free * DEVICE_DATA_SHARE)
    return budget if backend.name() == "cupy" else min(HOST_DATA_CAP, budget)


def _size(n: int) -> str:
    return f"{n:,} bytes" + (f" ({n / 1e6:,.0f} MB)" if n >= 10**6 else "")


def data_on_device(nbytes: int, mode="auto", free: int | None = None, name="the data") -> tuple[bool, str]:
    """``(keep on the device?, why)`` for a split of ``nbytes`` (uint8 images plus int64 labels).

    mode: ``"auto"`` (``True`` / ``"yes"``, ``False`` / ``"no"`` force a path); free: as for
    ``preload_budget``. The reason is one phrase for the log. ``"yes"`` for more than ``free`` is a
    ValueError naming ``name`` and both sizes, before anything is allocated (``"auto"`` keeps at
    most ``DEVICE_DATA_SHARE`` of it).
    """
    mode = {True: "yes", False: "no"}.get(mode, mode)
    if mode not in DATA_ON_DEVICE:
        raise ValueError(f"data_on_device: expected one of {list(DATA_ON_DEVICE)}, got {mode!r}")
    where = "free GPU memory" if backend.name() == "cupy" else "available RAM"
    if mode == "yes":
        free = free_device_memory() if free is None else int(free)
        if nbytes > free:
            raise ValueError(
                f"{name}: data_on_device yes needs {_size(nbytes)} on the device, more than the "
                f"{_size(free)} of {where}; use auto or no (streamed from the file)"
            )
    if mode != "auto":
        return mode == "yes", f"asked for ({mode})"
    budget = preload_budget(free)
    fits = nbytes <= budget
    return fits, (
        f"auto: {nbytes / 1e6:,.0f} MB {'fits' if fits else 'exceeds'} the budget of "
        f"{budget / 1e6:,.0f} MB ({DEVICE_DATA_SHARE:.0%} of {where})"
    )


def default_window(n: int, chunk: int, sample_bytes: int) -> int:
    """Chunks per shuffle window: the whole split when it is at most ``WHOLE_SHUFFLE_BYTES``
    (one window: the epoch order is a whole permutation, fair even to a class-sorted file),
    else up to ``_MAX_WINDOW_CHUNKS`` chunks within ``_WINDOW_BYTES``. Depends on the file
    only, never on where the split is kept, so both paths serve the same batches."""
    n_chunks = max(1, -(-n // chunk))
    if n * sample_bytes <= WHOLE_SHUFFLE_BYTES:
        return n_chunks
    return max(1, min(_MAX_WINDOW_CHUNKS, _WINDOW_BYTES // (chunk * sample_bytes)))


class H5Loader:
    """Mini-batches of one split of a gpunet HDF5 file, streamed in whole chunks or preloaded.

    path, split: the file and the group (``/<split>/x`` uint8 (N, C, H, W), ``/<split>/y`` (N,)).
    batch_size, shuffle, seed, drop_last: as for ``ArrayLoader``; the order of an epoch is
        ``epoch_plan(N, chunk, window, seed, epoch, shuffle)``: chunks in a random order,
        samples mixed inside windows of ``buffer_chunks`` chunks (default ``default_window``:
        the whole split up to 1 GiB, else up to 16 chunks, 64 MB). It depends on the file
        only, never on ``preload``: both paths serve the same batches.
    preload: True (``'yes'``) keeps the whole split on the device (uint8); False (``'no'``)
        streams it; ``'auto'`` keeps it when it fits ``preload_budget()`` (``data_on_device``).
        ``loader.preloaded`` says which, ``loader.placement`` why (a phrase for the log).
    prefetch: batches read ahead by the background thread.
    augment: None, or ``{'flip': bool, 'crop_pad': int}`` (see ``augment_images``), drawn
        from ``(seed, epoch)``.
    dtype, normalize: X is ``(B, C, H, W)`` of ``dtype``; with ``normalize``
        ``(x - mean[c]) / std[c]`` using the file's attrs ``mean``, ``std`` (pixel units).
    """

    def __init__(
        self,
        path,
        split="train",
        batch_size=100,
        shuffle=True,
        seed=0,
        drop_last=False,
        preload="auto",
        prefetch=2,
        augment=None,
        dtype=np.float32,
        normalize=True,
        buffer_chunks=None,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        if int(prefetch) < 1:
            raise ValueError(f"prefetch: expected a positive integer, got {prefetch}")
        if preload not in (True, False, "auto", "yes", "no"):
            raise ValueError(f"preload: expected True, False, 'auto', 'yes' or 'no', got {preload!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype: expected a floating dtype, got {self.dtype}")
        self.path, self.split = os.fspath(path), split
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.prefetch = bool(drop_last), int(prefetch)
        self.augment = check_augment(augment)
        self._epoch, self._run, self._file, self._copy_stream, self._closed = 0, None, None, None, False
        self._device_id, self._consumed = None, [None, None]
        self._file = open_file(self.path)
        try:
            self._setup(normalize, preload, buffer_chunks)
        except BaseException:
            self.close()
            raise

    def _setup(self, normalize, preload, buffer_chunks):
        self._x, self._y = check_split(self._file, self.path, self.split)
        self.meta = file_meta(self._file, self.path)
        self.num_samples = int(self._x.shape[0])
        self.sample_shape = tuple(int(s) for s in self._x.shape[1:])  # (C, H, W)
        c, d = self.sample_shape[0], int(np.prod(self.sample_shape))
        self.chunk = int(self._x.chunks[0]) if self._x.chunks else DEFAULT_CHUNK
        if buffer_chunks is None:
            buffer_chunks = default_window(self.num_samples, self.chunk, d)
        if int(buffer_chunks) < 1:
            raise ValueError(f"buffer_chunks: expected a positive integer, got {buffer_chunks}")
        self.buffer_chunks = int(buffer_chunks)
        self._mean = self._inv_std = None
        if normalize:
            mean, std = self.meta["mean"], self.meta["std"]
            if mean is None or std is None or mean.shape != (c,) or std.shape != (c,) or not (std > 0).all():
                raise ValueError(
                    f"{self.path}: expected root attrs mean, std of shape ({c},) with std > 0 "
                    f"to normalise split {self.split!r}, found mean={mean}, std={std}"
                )
            self._mean, self._inv_std = norm_stats(mean, std, self.dtype, shape=self.sample_shape)
        self.nbytes = self.num_samples * (d + 8)  # uint8 images and int64 labels
        self.preloaded, self.placement = data_on_device(
            self.nbytes, preload, name=f"{self.path}: split {self.split!r}"
        )
        if self.preloaded:
            self._load_all()
        else:
            shape = (self.batch_size,) + self.sample_shape
            self._win_x = np.empty((self.buffer_chunks * self.chunk,) + self.sample_shape, np.uint8)
            self._win_y = np.empty(self.buffer_chunks * self.chunk, np.int64)
            self._chunk_slot = np.zeros(-(-self.num_samples // self.chunk), np.int64)
            self._slots = [
                (backend.pinned_empty(shape, np.uint8), backend.pinned_empty(shape[:1], np.int64))
                for _ in range(self.prefetch + 1)
            ]
            if backend.name() == "cupy":
                xp = backend.xp()
                self._device_id = backend.cupy_module().cuda.Device().id  # for the worker thread
                self._copy_stream = backend.stream()
                self._ring = [(xp.empty(shape, np.uint8), xp.empty(shape[:1], np.int64)) for _ in range(2)]

    def _load_all(self):
        """Copy the split to the device as uint8 (N, C, H, W), a few chunks at a time."""
        n, xp = self.num_samples, backend.xp()
        self._X, self._Y = xp.empty((n,) + self.sample_shape, np.uint8), xp.empty((n,), np.int64)
        step = self.chunk * self.buffer_chunks
        host = np.empty((min(step, n),) + self.sample_shape, np.uint8)
        for a in range(0, n, step):
            m = min(step, n - a)
            self._x.read_direct(host, np.s_[a : a + m], np.s_[:m])
            self._X[a : a + m] = backend.to_device(host[:m])
        self._Y[...] = backend.to_device(self._y[...].astype(np.int64))
        self._file.close()  # everything is on the device now

    # -- the loader interface

    def __len__(self):
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int):
        self._epoch = int(epoch)

    def order(self, epoch=None) -> np.ndarray:
        """(N,) int64 sample indices in the order ``epoch`` (default: the next) serves them.

        The same whether the split is kept on the device or streamed: ``epoch_plan`` over the
        file's chunks with ``buffer_chunks`` per window (by default one window, a whole
        permutation, for a split up to ``WHOLE_SHUFFLE_BYTES``: see ``default_window``).
        """
        epoch = self._epoch if epoch is None else epoch
        plan = self._plan(epoch)
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
        rng = backend.default_rng(augment_seed(self.seed, self._epoch)) if self.augment else None
        return self._finished(source, rng)

    def _to_float(self, xb):
        """uint8 (B, C, H, W) -> normalised float (B, C, H, W), a new array on xb's backend."""
        return normalize(xb, self._mean, self._inv_std, self.dtype)

    def _finished(self, source, rng):
        """Convert each uint8 batch to normalised (B, C, H, W) float, augment it; then resume the source."""
        try:
            for xb, yb in source:
                out = self._to_float(xb) if xb.dtype == np.uint8 else xb  # the CPU worker converts already
                if rng is not None:
                    out = augment_images(out, rng, **self.augment)
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
        self._run = run = Prefetcher(self, plan, len(self))
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
        a pinned slot before refilling it. Whenever a run ends (finished, closed, or
        superseded by a new ``iter()`` while suspended) ``_end_run`` marks both ring
        buffers consumed after the work queued so far, so no later copy overwrites a batch
        still being converted.
        """
        cp = backend.cupy_module()
        self._run = run = Prefetcher(self, plan, len(self))
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
        copied = blocking_event(backend.cupy_module(), s)
        run.release(slot, copied)
        return m, copied

    def _end_run(self, run):
        """Stop ``run``'s thread; on CuPy wait for its copies (so its pinned slots can be
        refilled) and record on the current stream that the ring buffers it handed out are
        consumed: the last batch's conversion was queued there before this call."""
        was_stopped = run.stopped
        run.stop()
        if self._run is run:
            self._run = None
        if self._copy_stream is not None and not was_stopped:
            self._copy_stream.synchronize()
            done = backend.cupy_module().cuda.get_current_stream().record()
            self._consumed = [done, done]

    def _stop_run(self):
        if self._run is not None:
            self._end_run(self._run)

    def close(self):
        """Stop the background reader, close the file, free a preloaded split (idempotent)."""
        self._closed = True
        if getattr(self, "_run", None) is not None:
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
        return (
            f"H5Loader({self.path!r}, split={self.split!r}, N={self.num_samples}, "
            f"batch_size={self.batch_size}, {mode})"
        )


def open_split(path, split="train", **kw) -> H5Loader:
    """``H5Loader(path, split, **kw)``: a loader over one split of a gpunet HDF5 file."""
    return H5Loader(path, split, **kw)
