"""Files that exist complete or not at all.

Every file gpunet writes (models, checkpoints, histories, reports, plots, CSVs) goes
to a temporary name beside its target and is renamed over it only when complete, so
an interrupted write (an error, Ctrl-C, a full disk) never leaves half a file behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` when the
    block ends normally, delete it when the block raises (KeyboardInterrupt included)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: expected a file name, found a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes it 0600; a finished file gets the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
