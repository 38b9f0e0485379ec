"""Writing an output file so that it either exists complete or not at all."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import PrepError


def check_output(out: Path, force: bool) -> None:
    """PrepError if ``out`` exists and ``force`` is false, or is a folder."""
    if out.is_dir():
        raise PrepError(f"{out}: expected an output file name, found a folder")
    if out.exists() and not force:
        raise PrepError(f"{out}: output exists; pass --force (force=True) to overwrite it")


@contextmanager
def atomic_output(out, force: bool = False):
    """Yield a temporary path ``.<name>.tmp-<pid>`` beside ``out``; rename it to ``out``
    when the block ends normally, delete it when the block raises (KeyboardInterrupt too)."""
    out = Path(out)
    check_output(out, force)
    created = [p for p in reversed(out.absolute().parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        check_output(out, force)  # another process may have written it meanwhile
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in reversed(created):  # the folders this call made, deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
