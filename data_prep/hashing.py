"""Checksums that record exactly what a conversion read.

A source file (CSV, tarball, zip) is identified by the sha256 and md5 of its
bytes. A source folder is identified by one sha256 over the files that were
used, in sorted order of their relative POSIX paths; for each file the hash is
fed ``path (UTF-8) + b"\\0" + size (8 bytes, little endian) + contents``, so
renaming, moving or editing any used file changes the digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable

BLOCK = 1 << 20  # bytes read at a time


def file_digests(path) -> dict[str, str]:
    """``{"sha256": hex, "md5": hex}`` of one file, read in 1 MiB blocks."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def md5_of(path) -> str:
    """The md5 hex digest of one file."""
    return file_digests(path)["md5"]


def folder_sha256(paths: Iterable[str], read: Callable[[str], bytes]) -> str:
    """sha256 over the files ``paths`` (relative POSIX paths) whose bytes ``read(path)`` gives."""
    h = hashlib.sha256()
    for p in sorted(set(paths)):
        data = read(p)
        h.update(p.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def folder_files_sha256(root, paths: Iterable[str]) -> str:
    """:func:`folder_sha256` for files on disk under ``root``."""
    root = Path(root)
    return folder_sha256(paths, lambda p: (root / p).read_bytes())
