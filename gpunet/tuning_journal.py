"""The journal file's lock, safe against killed writers and against Ctrl-C in the middle of a write.

Optuna appends to a journal file under a symlink lock (``RUN_DIR/study.journal.lock``). Two
faults break that protocol: a writer SIGKILLed while holding the lock (Optuna breaks a lock
only after 30 s), and an exception raised by a signal handler inside the lock's own code
(Optuna then removes a lock it may not hold). ``JournalLock`` guards against the first, and
``interrupt_handler`` against the second.
"""

from __future__ import annotations

import os

_in_journal_write = 0  # > 0 while this process appends to a journal (or waits to)
_deferred = None  # the interrupt that arrived meanwhile, raised once the write is done


def interrupt_handler(exc_type):
    """A signal handler raising ``exc_type``, except in the middle of a journal write: an
    exception there would break Optuna's lock protocol (and remove another writer's lock),
    so it waits until the write is over."""

    def handler(signum, frame):
        global _deferred
        if _in_journal_write:
            _deferred = exc_type
            return
        raise exc_type

    return handler


def _end_journal_write():
    global _in_journal_write, _deferred
    _in_journal_write -= 1
    if not _in_journal_write and _deferred is not None:
        exc, _deferred = _deferred, None
        raise exc


class JournalLock:
    """Optuna's symlink lock on a journal file, taken under an ``flock`` the kernel drops when its
    holder dies.

    Writers append to the journal under the symlink lock; a worker SIGKILLed while appending
    leaves the symlink behind, and Optuna waits 30 s before breaking it. Holding the flock, no
    other gpunet worker can hold the symlink, so one left there is stale (or a foreign writer's
    that takes milliseconds): broken after 3 s. Tools that use Optuna's own lock stay compatible.
    """

    GRACE_S = 3

    def __init__(self, path: str):
        from optuna.storages.journal import JournalFileSymlinkLock

        self._symlink = JournalFileSymlinkLock(path, grace_period=self.GRACE_S)
        self._path, self._fd = path + ".flock", None

    def acquire(self) -> bool:
        global _in_journal_write
        _in_journal_write += 1  # until release: Ctrl-C waits (interrupt_handler)
        try:
            import fcntl
        except ImportError:  # not Unix: the symlink lock alone
            return self._symlink.acquire()
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            return self._symlink.acquire()
        except BaseException:
            self._unlock()
            _end_journal_write()
            raise

    def release(self) -> None:
        try:
            self._symlink.release()
        finally:
            self._unlock()
            _end_journal_write()

    def _unlock(self):
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
