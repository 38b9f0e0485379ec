"""Writing an output file so that it either exists complete or not at all."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from gpunet.io import atomic_path

from .errors import PrepError


def check_output(out: Path, force: bool) -> None:
    """PrepError if ``out`` exists and ``force`` is false, or is a folder."""
    if out.is_dir():
        raise PrepError(f"{out}: expected an output file name, found a folder")
    if out.exists() and not force:
        raise PrepError(f"{out}: output exists; pass --force (force=True) to overwrite it")


@contextmanager
def atomic_output(out, force: bool = False):
    """Yield a temporary path beside ``out`` (``gpunet.io.atomic_path``, the one atomic-write
    rule of the package): renamed to ``out`` when the block ends normally, deleted when it
    raises (KeyboardInterrupt too), with the folders this call created removed again."""
    out = Path(out)
    check_output(out, force)
    created = [p for p in reversed(out.absolute().parents) if not p.exists()]
    try:
        with atomic_path(out) as tmp:
            yield Path(tmp)
            check_output(out, force)  # another process may have written it meanwhile
    except BaseException:
        for folder in reversed(created):  # the folders this call made, deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
