"""Files that exist complete or not at all.

Every file gpunet writes (models, checkpoints, histories, reports, plots, CSVs, HDF5)
goes to a temporary name beside its target, ``.<name>.tmp-<pid>-<token><suffix>``, and is
renamed over it only when complete, so an interrupted write never leaves half a file:

- an error, Ctrl-C, SIGTERM or SIGHUP (``gpunet.interrupts``) deletes the temporary file
  (and the folders the write created) and goes on as ``Interrupted`` (exit 130/143/129);
- a full disk or quota is one ``WriteError`` naming the target file;
- a command that fails before producing anything useful removes the files and folders it
  created (``removed_on_failure``), never anything that was there before;
- a process killed outright (SIGKILL, power loss) leaves its temporary file, which
  ``sweep_temporaries`` removes at the next start once that process id is gone.

Files get the usual mode (0666 minus the umask).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .interrupts import deferred, stop_signals

NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}(\.[^.]*)?$")


class WriteError(OSError):
    """Writing a file failed for lack of space; ``str`` is one line naming the file."""

    def __str__(self):
        return f"{self.filename}: cannot write it: {self.strerror}; nothing was written"


class OutputExists(FileExistsError):
    """The target appeared while writing and overwriting was not allowed."""

    def __str__(self):
        return f"{self.filename}: output exists"


def temp_name(path) -> Path:
    """A fresh temporary name beside ``path`` that carries this process id."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _create_temp(path: Path) -> Path:
    while True:
        tmp = temp_name(path)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode per umask
            return tmp
        except FileExistsError:
            continue


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and refuses an existing target
    except FileExistsError:
        raise OutputExists(errno.EEXIST, "output exists", str(path)) from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise OutputExists(errno.EEXIST, "output exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.remove(tmp)


@contextmanager
def atomic_path(path, overwrite: bool = True):
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` when the
    block ends normally, delete it when the block raises (signals included, see above).

    overwrite: False refuses (``OutputExists``) a target that exists when the block ends.
    Raises ``WriteError`` naming ``path`` when the disk or quota is full.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: expected a file name, found a folder")
    with stop_signals():
        created = [p for p in reversed(path.absolute().parents) if not p.exists()]
        tmp = None
        try:
            with deferred():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = _create_temp(path)
            yield tmp
            with deferred():
                _publish(tmp, path, overwrite)
        except BaseException as e:
            with deferred():
                if tmp is not None and os.path.lexists(tmp):
                    os.remove(tmp)
                for folder in reversed(created):  # the folders this call made, deepest first
                    try:
                        folder.rmdir()
                    except OSError:
                        break
            if isinstance(e, OSError) and e.errno in NO_SPACE and not isinstance(e, WriteError):
                raise WriteError(e.errno, os.strerror(e.errno), str(path)) from None
            raise


@contextmanager
def removed_on_failure(*paths, useful=lambda: False):
    """All or nothing for a command's outputs: when the block raises (an interrupt included) and
    ``useful()`` is false, remove each of ``paths`` that did not exist when the block began, so
    a failed command leaves nothing behind. Files are unlinked; folders are removed only when
    empty (never their contents: whatever else is there stays). List paths deepest first. A
    path that existed before (the user's file, an earlier run's) is never touched."""
    fresh = [Path(p) for p in paths if not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        if not useful():
            with deferred():
                for p in fresh:
                    try:
                        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
                    except OSError:  # not there, or a folder that holds something now
                        pass
        raise


def sweep_temporaries(folder, name=None) -> list:
    """Delete the temporary files (see above) in ``folder`` left by processes that are gone;
    ``name``: only those of that target file name. Another live process's are kept.
    Returns the removed paths. Call it when a command starts writing into ``folder``."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or (name is not None and m["name"] != name) or not entry.is_file(follow_symlinks=False):
            continue
        if _alive(int(m["pid"])):
            continue
        try:
            os.remove(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid: keep the file
    return True


@contextmanager
def atomic_open(path, mode="w", **kw):
    """``open`` a temporary file beside ``path``; it becomes ``path`` when the block ends normally."""
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as f:
        yield f


def write_json(path, obj, indent=1):
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def savez(path, arrays: dict):
    """``np.savez`` of ``arrays`` to ``path`` atomically (a file handle: no ``.npz`` appended)."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def copy_file(src, dst):
    """Copy the bytes of ``src`` to ``dst`` atomically (``dst`` is complete or untouched)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_figure(fig, path, **savefig_kw):
    """``fig.savefig`` to ``path`` atomically; the format follows ``path``'s suffix (``.png``)."""
    fmt = savefig_kw.pop("format", Path(path).suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kw)


def _kind(mode) -> str:
    return (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )


def regular_file(path, what: str = "file") -> str:
    """``path`` (a string) when it is a regular file (through links); else, before anything opens it
    (a FIFO would block the reader for ever): FileNotFoundError when it does not exist, ValueError
    naming it and what it is (a folder, a named pipe, a socket, a device)."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read this {what} ({e.strerror or e})") from None
    a = "an" if what[:1] in "aeiou" else "a"
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path}: expected {a} {what}, found a folder")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: expected {a} {what}, found {_kind(mode)}")
    return path
