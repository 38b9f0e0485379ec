"""Writing an output file so that it either exists complete or not at all.

The rule itself is ``gpunet.io.atomic_path`` (temporary name, rename when complete,
clean-up on errors and stop signals, a full disk named in one line); this module adds
gpunet-prep's ``--force`` wording and the sweep of temporary files that killed runs left.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from gpunet.io import OutputExists, atomic_path, sweep_temporaries

from .errors import PrepError


def exists_message(out) -> str:
    return f"{out}: output exists; pass --force (force=True) to overwrite it"


def check_output(out: Path, force: bool) -> None:
    """PrepError if ``out`` exists and ``force`` is false, or is a folder."""
    if out.is_dir():
        raise PrepError(f"{out}: expected an output file name, found a folder")
    if out.exists() and not force:
        raise PrepError(exists_message(out))


def sweep(out: Path) -> list:
    """Remove the temporary files of ``out`` that dead processes left beside it."""
    return sweep_temporaries(Path(out).parent, Path(out).name)


@contextmanager
def refusing_existing(out):
    """Turn ``gpunet.io.OutputExists`` (``out`` appeared while writing) into a PrepError."""
    try:
        yield
    except OutputExists:
        raise PrepError(exists_message(out)) from None


@contextmanager
def atomic_output(out, force: bool = False):
    """Yield a temporary path beside ``out`` (``gpunet.io.atomic_path``): renamed to ``out``
    when the block ends normally (refused if ``out`` appeared meanwhile and not ``force``),
    deleted when it raises, with the folders this call created removed again."""
    out = Path(out)
    check_output(out, force)
    with refusing_existing(out), atomic_path(out, overwrite=force) as tmp:
        yield Path(tmp)
