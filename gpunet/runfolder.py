"""Owning a gpunet-train run folder: one trainer at a time, no run replaced by accident.

- ``owned(run_dir)``: a context that holds an exclusive ``fcntl`` lock on
  ``run_dir/.gpunet-train.lock`` while a run trains; a second trainer on the same
  folder is refused at once (``RunFolderError``) instead of mixing its files with the
  first one's. The kernel drops the lock when the process ends, however it ends.
  While the lock is held the folder's leftover temporaries (``.<name>.tmp-*`` from a
  killed writer, see ``gpunet.io``) are swept: no other process can be writing them.
- ``check_new_run(run_dir, force)``: a folder that already holds a run needs
  ``--resume`` or ``--force``; ``clear_run`` removes the old run's files, which a
  forced run does only once it is about to write its own.
- ``all_or_nothing(run_dir, resume)``: a new run that fails before it wrote a checkpoint or
  a model (a full disk, bad data found late) removes the run files it wrote; ``owned``
  removes the lock file it made (and the folder it made) when nothing else is left.
- ``naming(path)``: an ``OSError`` raised while writing ``path`` (a full disk gives
  ``[Errno 28]`` and no file name) is re-raised with ``path`` as its file name.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path

from . import io

try:
    import fcntl
except ImportError:  # not on Windows: no locking there
    fcntl = None

LOCK_NAME = ".gpunet-train.lock"
# what a run writes (gpunet.runs); any of them means the folder holds a run
RUN_FILES = (
    "config.json",
    "history.json",
    "solver.ckpt.npz",
    "model.npz",
    "metrics.json",
    "curves.png",
    "confusion.png",
)


# a failed run that wrote one of these is worth keeping: --resume continues it, or it holds the best model
USEFUL_FILES = ("solver.ckpt.npz", "model.npz")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (in use, or holding another run)."""


def run_files(run_dir) -> list:
    """The names of ``RUN_FILES`` present in ``run_dir``."""
    run_dir = Path(run_dir)
    return [n for n in RUN_FILES if (run_dir / n).exists()]


def _is_gpunet_config(path: Path) -> bool:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(cfg, dict) and {"dataset", "arch", "epochs"} <= set(cfg)


def check_new_run(run_dir, force=False):
    """RunFolderError unless a new run may start in ``run_dir``: absent or empty, or holding a gpunet run
    that ``force`` replaces as a whole. Anything else is refused: a folder with other files (``--out ~``)
    is never written into, and ``--force`` never deletes a file of the same name that no run wrote."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: expected a run folder, found a file")
    if not run_dir.is_dir():
        return
    # the lock and killed writers' temporaries (".model.npz.tmp-<pid>-...") belong to runs too
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME and ".tmp-" not in p.name)
    if not names:
        return
    foreign = [n for n in names if n not in RUN_FILES]
    if foreign or not _is_gpunet_config(run_dir / "config.json"):
        shown = ", ".join((foreign or names)[:5]) + (", ..." if len(foreign or names) > 5 else "")
        raise RunFolderError(
            f"{run_dir}: holds files that are not a gpunet run's ({shown}); a run needs an empty "
            "folder or a new --out (nothing there was touched)"
        )
    if not force:
        raise RunFolderError(
            f"{run_dir}: already holds a run ({', '.join(names)}); continue it with "
            f"--resume {run_dir}, replace it with --force, or choose another --out"
        )


def clear_run(run_dir):
    """Remove the run files of ``run_dir`` (``--force``: the new run is about to write its own)."""
    for name in run_files(run_dir):
        (Path(run_dir) / name).unlink()


def sweep_temporaries(run_dir):
    """Remove what killed writers left in the run folder: the temporaries of dead processes
    (``gpunet.io.sweep_temporaries``), and, since the caller holds the run's lock, any other
    temporary of a run file (``.config.json.tmp-...``, older names included)."""
    run_dir = Path(run_dir)
    io.sweep_temporaries(run_dir)
    for name in RUN_FILES:
        for tmp in run_dir.glob(f".{name}.tmp-*"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


@contextmanager
def owned(run_dir):
    """Hold ``run_dir`` (created if needed) for one trainer; RunFolderError when another holds it."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: expected a run folder, found a file")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_created = not (run_dir / LOCK_NAME).exists()
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                raise RunFolderError(
                    f"{run_dir}: in use by another gpunet-train (pid {holder}); wait for it "
                    "to finish or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        sweep_temporaries(run_dir)
        yield run_dir
    except BaseException:
        if lock_created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:  # nothing written: no trace
            (
                run_dir / LOCK_NAME
            ).unlink()  # under the lock; a second trainer fails at once, never waits on it
            if created:
                run_dir.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock


def _identity(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@contextmanager
def all_or_nothing(run_dir, resume: bool = False, keep_on=()):
    """Around a run in ``run_dir``: when a new run (not ``resume``) fails with an error before any of
    ``USEFUL_FILES`` exists, remove the run files it wrote or replaced (config.json, history.json,
    ...), so the folder is left as the run found it (less the old run that ``--force`` cleared). An
    interrupt keeps them (``--resume`` restarts an interrupted first epoch from config.json), and so
    do a resumed run and the exceptions ``keep_on`` (a divergence, whose message advises ``--resume``
    with a lower learning rate)."""
    run_dir = Path(run_dir)
    before = {n: _identity(run_dir / n) for n in RUN_FILES}
    try:
        yield
    except Exception as e:
        if (
            not resume
            and not isinstance(e, keep_on)
            and not any((run_dir / n).exists() for n in USEFUL_FILES)
        ):
            for n in RUN_FILES:
                if _identity(run_dir / n) not in (None, before[n]):
                    (run_dir / n).unlink(missing_ok=True)
        raise


@contextmanager
def naming(path):
    """Re-raise an ``OSError`` without a file name (``[Errno 28]`` from a full disk) naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(
            e.errno, os.strerror(e.errno) if e.errno in errno.errorcode else e.strerror, os.fspath(path)
        ) from None
