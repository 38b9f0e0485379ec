"""The background reader of ``H5Loader``: HDF5 windows -> batches gathered into host slots.

One ``_Prefetcher`` serves one epoch of a streaming loader. Its thread reads whole
chunks of a window (``epoch_plan``), gathers each batch into a free slot of a small
ring of host buffers (pinned on CuPy) and queues it; the consumer hands each slot back
with the CUDA event of the copy out of it, which the thread waits on before refilling.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

import numpy as np

from .. import backend

POLL_S = 0.05  # queue timeout, so stop requests and Ctrl-C are seen promptly


def lower_thread_priority(niceness=5):
    """Let the reader thread run on cycles the training step leaves idle (Linux: per-thread nice).

    With few cores, a reader at full priority preempts BLAS threads mid-product and
    slows the whole step more than its own work costs.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def blocking_event(cp, stream):
    """A CUDA event recorded on ``stream`` whose ``synchronize`` sleeps (cudaEventBlockingSync)
    instead of spinning a core, as the default event does: the reader thread waits on it."""
    ev = cp.cuda.Event(block=True, disable_timing=True)
    ev.record(stream)
    return ev


class Prefetcher:
    """One epoch of background reading for ``loader`` (an ``H5Loader``).

    plan: the epoch's ``epoch_plan``; n_batches: batches to serve. The worker fills a free
    slot, then queues ``(slot, rows, X or None)``; the consumer hands each slot back with
    ``release(slot, event)``, where ``event`` is a CUDA event (the async copy out of the
    slot) the worker waits on before refilling it, or None.
    """

    def __init__(self, loader, plan, n_batches):
        self.ld, self.plan, self.n_batches = loader, plan, n_batches
        self._free, self._ready = queue.Queue(), queue.Queue()
        for i in range(len(loader._slots)):
            self._free.put((i, None))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="gpunet-h5-prefetch", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def next_ready(self):
        """``(slot, rows, X or None)`` of the next batch, or None at the end of the epoch
        (or once the run was stopped: a superseded epoch just ends)."""
        while not self._stop.is_set():
            try:
                item = self._ready.get(timeout=POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError(f"{self.ld.path}: the prefetch thread stopped unexpectedly")
                continue
            if isinstance(item, BaseException):
                raise item
            return item
        return None

    def release(self, slot, event=None):
        self._free.put((slot, event))

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def _take_slot(self):
        while not self._stop.is_set():
            try:
                slot, event = self._free.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if event is not None:
                event.synchronize()  # a blocking-sync event: sleeps until the copy out of the slot is done
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
            ld._x.read_direct(ld._win_x, np.s_[a:b], np.s_[r : r + b - a])
            ld._y.read_direct(ld._win_y, np.s_[a:b], np.s_[r : r + b - a])
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
        lower_thread_priority()
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
                        r = rows[s : s + m]
                        np.take(ld._win_x, r, axis=0, out=hx[fill : fill + m], mode="clip")
                        np.take(ld._win_y, r, out=hy[fill : fill + m], mode="clip")
                        fill, s = fill + m, s + m
                        if fill == b:
                            self._ready.put(self._finish(slot, fill))
                            slot, fill, done = None, 0, done + 1
                if fill and done < self.n_batches:
                    self._ready.put(self._finish(slot, fill))
                self._ready.put(None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._ready.put(e)
