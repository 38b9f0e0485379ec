"""Stop signals as a clean stop: SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`.

Python turns only SIGINT into an exception; SIGTERM and SIGHUP kill the process at
once, leaving temporary files behind. Inside :func:`stop_signals` all three raise
``Interrupted`` (a ``KeyboardInterrupt`` whose ``exit_code`` is 128 + the signal:
130 SIGINT, 143 SIGTERM, 129 SIGHUP), so ``finally`` blocks run and a command exits
with that code. A signal whose handler is not Python's default (ignored under
``nohup``, or the caller's own handler) is left alone.

An exception raised inside a C callback is lost ("Exception ignored in ...": the HDF5 binding
closing a file is one), so code that calls such libraries runs in :func:`deferred`:
a signal is only recorded there, and raised by :func:`check` at a safe point or when
the block ends. A signal whose exception was lost anyway (raised inside some other
library's callback, where Python would print "Exception ignored") is raised when the
``stop_signals`` block ends (:func:`raise_lost`), without that noise.
Handlers live in the main thread; elsewhere these functions are no-ops.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))

_previous: dict = {}  # signal -> handler before stop_signals; non-empty while installed
_deferring = 0  # depth of deferred() blocks
_pending = None  # a signal received while deferring, not raised yet
_received = None  # the first signal received since stop_signals began or forget()


class Interrupted(KeyboardInterrupt):
    """A stop asked by a signal. ``signum``: the signal; ``exit_code``: 128 + signum."""

    def __init__(self, signum: int):
        self.signum, self.exit_code = int(signum), 128 + int(signum)
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _handler(signum, frame):
    global _pending, _received
    _received = _received or signum
    if _deferring:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


def _is_default(handler) -> bool:
    return handler in (signal.SIG_DFL, signal.default_int_handler)


@contextmanager
def stop_signals():
    """While the block runs, SIGINT/SIGTERM/SIGHUP raise ``Interrupted`` (nested: no-op).

    When an ``Interrupted`` for SIGTERM or SIGHUP leaves the block, the signal is sent
    again with its default action after the ``finally`` blocks ran, so a caller that
    does not catch it ends as the signal would have ended it (without the litter).
    """
    if _previous or threading.current_thread() is not threading.main_thread():
        yield
        return
    for s in STOP_SIGNALS:
        h = signal.getsignal(s)
        if _is_default(h):
            _previous[s] = h
            signal.signal(s, _handler)
    installed, hook = dict(_previous), sys.unraisablehook
    sys.unraisablehook = lambda u: None if isinstance(u.exc_value, Interrupted) else hook(u)
    try:
        yield
        raise_lost()
    except Interrupted as e:
        sys.unraisablehook = hook
        _restore(installed)
        if installed.get(e.signum) == signal.SIG_DFL:
            os.kill(os.getpid(), e.signum)  # default action: the process ends here
        raise
    finally:
        sys.unraisablehook = hook
        _restore(installed)


def _restore(installed: dict) -> None:
    for s, h in installed.items():
        signal.signal(s, h)
    _previous.clear()
    forget()


def forget() -> None:
    """Mark the signals received so far as handled (a caller caught their ``Interrupted``)."""
    global _pending, _received
    _pending = _received = None


def raise_lost() -> None:
    """Raise ``Interrupted`` for a signal received (since ``stop_signals`` began or the last
    ``forget``) whose exception never reached the caller: call where a stopped command
    would otherwise report success."""
    if _received is not None:
        signum = _received
        forget()
        raise Interrupted(signum)


@contextmanager
def deferred():
    """Record stop signals instead of raising them in the block; raise a recorded one
    (``Interrupted``) when the outermost such block ends, even if the block failed."""
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread only
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring:
            check()


def check() -> None:
    """Raise ``Interrupted`` for a signal recorded by :func:`deferred`; call at safe points."""
    if _pending is not None and threading.current_thread() is threading.main_thread():
        signum = _pending
        forget()  # raised from plain Python code: it reaches the caller
        raise Interrupted(signum)
