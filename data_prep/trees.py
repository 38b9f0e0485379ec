"""Folders and archives seen the same way: files by relative POSIX path.

A source given as a folder, a ``.zip`` or a ``.tar``/``.tar.gz``/``.tgz`` is
opened as a :class:`SourceTree`. Archives are read in place and never
extracted: a tar is streamed once (``mode="r:*"``) and its regular files kept
in memory, a zip is read member by member. Member names that are absolute or
contain ``..``, links or device entries, and a member present twice are rejected. Junk that
operating systems leave in archives (``__MACOSX/``, dot files, ``Thumbs.db``)
is skipped. Sizes are checked before anything is read (the tar or zip header's size, a
file's ``stat``): a member over ``MAX_MEMBER_BYTES`` or members adding up to more than
``MAX_TOTAL_BYTES`` are refused, so a small archive cannot expand into gigabytes. :func:`find_root` looks one
or two single top-level folders deep
for the layout a reader expects (``cifar-10-batches-py/...``).
"""

from __future__ import annotations

import lzma
import os
import stat
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from tqdm import tqdm

from .errors import PrepError
from .hashing import file_digests, folder_files_sha256

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
MAX_MEMBER_BYTES = 1 << 30  # the largest real member, fer2013.csv, is 287 MB
MAX_TOTAL_BYTES = 3 << 30  # CIFAR-10's python release expands to 178 MB
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)


def one_line(e: BaseException) -> str:
    """An exception's text on one line (tarfile's ReadError spans five)."""
    return " ".join(str(e).split())


def is_junk(path: str) -> bool:
    """True for files no dataset contains: hidden files, ``__MACOSX/``, ``Thumbs.db``."""
    return any(part.startswith(".") or part in _JUNK_NAMES for part in path.split("/"))


class SizeBudget:
    """Counts the bytes a source will expand to; PrepError before a limit is passed."""

    def __init__(self, label: str):
        self.label, self.total = label, 0

    def take(self, name: str, size: int) -> None:
        if size > MAX_MEMBER_BYTES:
            raise PrepError(
                f"{self.label}: {name}: expected at most {MAX_MEMBER_BYTES >> 20} MiB "
                f"per file, found {size / 2**20:.0f} MiB; refusing to read it"
            )
        self.total += size
        if self.total > MAX_TOTAL_BYTES:
            raise PrepError(
                f"{self.label}: expected at most {MAX_TOTAL_BYTES >> 20} MiB in all, "
                f"found more by {name}; refusing to read this source"
            )


def safe_member_name(label: str, name: str) -> str:
    """The member name as a clean relative POSIX path; PrepError if it could escape."""
    clean = name.replace("\\", "/")
    while clean.startswith("./"):
        clean = clean[2:]
    parts = PurePosixPath(clean).parts
    if clean.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
        raise PrepError(
            f"{label}: {name}: unsafe archive member name "
            "(absolute or containing '..'); refusing to read this archive"
        )
    return "/".join(p for p in parts if p not in ("", "."))


def _once(label: str, name: str, rel: str, seen) -> None:
    """PrepError when an archive holds member ``rel`` twice: a reader would silently take one of
    the copies (tar: the last), so which data is converted would be a guess."""
    if rel in seen:
        raise PrepError(
            f"{label}: {name}: the archive holds this member more than once; refusing to guess "
            "which copy is the data"
        )


class SourceTree:
    """Files of a source by relative POSIX path. ``label`` names the source in messages."""

    label: str

    def paths(self) -> list[str]:
        """All usable files, sorted."""
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        """The bytes of one file listed by :meth:`paths`."""
        raise NotImplementedError

    def where(self, path: str) -> str:
        """``"<label>: <path in source>"`` for error messages."""
        return f"{self.label}: {path}"

    def fingerprint(self) -> dict[str, str]:
        """``{"sha256": ..., "md5": ...}`` of the source (md5 only for single files)."""
        raise NotImplementedError

    def sub(self, folder: str) -> "SourceTree":
        """The view of one folder of this tree."""
        return _SubTree(self, folder)

    def close(self) -> None:
        """Release open files and buffers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SubTree(SourceTree):
    def __init__(self, parent: SourceTree, folder: str):
        self.parent, self.folder, self.label = parent, folder.strip("/"), parent.label
        cut = len(self.folder) + 1
        self._paths = [p[cut:] for p in parent.paths() if p.startswith(self.folder + "/")]

    def paths(self):
        return self._paths

    def read(self, path):
        return self.parent.read(f"{self.folder}/{path}")

    def where(self, path):
        return self.parent.where(f"{self.folder}/{path}")

    def fingerprint(self):
        return self.parent.fingerprint()


class DirTree(SourceTree):
    """A folder on disk; its fingerprint covers only the files that were read."""

    def __init__(self, root):
        self.root, self.label, self._used = Path(root), str(root), set()
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                p = name if rel == "." else f"{rel}/{name}"
                if not is_junk(p) and os.path.isfile(os.path.join(dirpath, name)):
                    found.append(p)
        self._paths = sorted(found)

    def paths(self):
        return self._paths

    def read(self, path):
        self._used.add(path)
        try:
            SizeBudget(self.label).take(path, (self.root / path).stat().st_size)
            return (self.root / path).read_bytes()
        except OSError as e:
            raise PrepError(f"{self.label}: {path}: cannot read ({e.strerror or e})") from None

    def fingerprint(self):
        return {"sha256": folder_files_sha256(self.root, self._used)}


class TarTree(SourceTree):
    """A tar archive (any compression), streamed once into memory."""

    def __init__(self, path, progress: bool = False):
        self.path, self.label, self._files = Path(path), str(path), {}
        name, budget = "(start of archive)", SizeBudget(str(path))
        try:
            with (
                open(self.path, "rb") as raw,
                tqdm(
                    total=self.path.stat().st_size,
                    unit="B",
                    unit_scale=True,
                    leave=False,
                    desc=f"reading {self.path.name}",
                    disable=not progress,
                ) as bar,
                tarfile.open(fileobj=raw, mode="r:*") as tf,
            ):
                for m in tf:
                    name = m.name
                    rel = safe_member_name(self.label, m.name)
                    if m.issym() or m.islnk():
                        raise PrepError(
                            f"{self.label}: {m.name}: archive links are not "
                            "allowed; refusing to read this archive"
                        )
                    if m.isdir():
                        continue
                    if not m.isfile():
                        raise PrepError(
                            f"{self.label}: {m.name}: special file in archive "
                            "(device, fifo); refusing to read this archive"
                        )
                    if not is_junk(rel):
                        _once(self.label, m.name, rel, self._files)
                        budget.take(m.name, m.size)  # the header's size, before reading
                        self._files[rel] = tf.extractfile(m).read()
                    bar.update(raw.tell() - bar.n)
        except PrepError:
            raise
        except _ARCHIVE_ERRORS as e:
            raise PrepError(
                f"{self.label}: after {name}: corrupt or truncated archive "
                f"({type(e).__name__}: {one_line(e)})"
            ) from None
        if not self._files:
            raise PrepError(f"{self.label}: expected files in the archive, found none")
        self._paths = sorted(self._files)

    def paths(self):
        return self._paths

    def read(self, path):
        return self._files[path]

    def fingerprint(self):
        return file_digests(self.path)

    def close(self):
        self._files.clear()


class ZipTree(SourceTree):
    """A zip archive, read member by member."""

    def __init__(self, path):
        self.path, self.label = Path(path), str(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except _ARCHIVE_ERRORS as e:
            raise PrepError(
                f"{self.label}: corrupt or truncated zip archive ({type(e).__name__}: {one_line(e)})"
            ) from None
        self._members = {}
        try:
            self._check(infos)
        except PrepError:
            self._zip.close()
            raise
        self._paths = sorted(self._members)

    def _check(self, infos) -> None:
        budget = SizeBudget(self.label)
        for info in infos:
            rel = safe_member_name(self.label, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PrepError(
                    f"{self.label}: {info.filename}: archive links are not "
                    "allowed; refusing to read this archive"
                )
            if not info.is_dir() and rel and not is_junk(rel):
                _once(self.label, info.filename, rel, self._members)
                budget.take(info.filename, info.file_size)  # zipfile reads no more than this
                self._members[rel] = info

    def paths(self):
        return self._paths

    def read(self, path):
        try:
            return self._zip.read(self._members[path])
        except _ARCHIVE_ERRORS + (zipfile.LargeZipFile, NotImplementedError) as e:
            raise PrepError(
                f"{self.label}: {path}: corrupt member ({type(e).__name__}: {one_line(e)})"
            ) from None

    def fingerprint(self):
        return file_digests(self.path)

    def close(self):
        self._zip.close()


def is_archive_name(path) -> bool:
    """True when the file name says zip or tar."""
    name = str(path).lower()
    return name.endswith(".zip") or name.endswith(TAR_SUFFIXES)


def open_tree(path, progress: bool = False) -> Optional[SourceTree]:
    """A SourceTree for a folder, zip or tar (by name or by content); None for other files."""
    path = Path(path)
    if path.is_dir():
        return DirTree(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return ZipTree(path)
    if name.endswith(TAR_SUFFIXES):
        return TarTree(path, progress)
    if zipfile.is_zipfile(path):
        return ZipTree(path)
    try:
        is_tar = tarfile.is_tarfile(path)
    except _ARCHIVE_ERRORS:
        is_tar = False
    return TarTree(path, progress) if is_tar else None


def find_root(
    tree: SourceTree, looks_right: Callable[[SourceTree], bool], depth: int = 2
) -> Optional[SourceTree]:
    """``tree`` or the folder inside it (through up to ``depth`` single top-level
    folders) for which ``looks_right`` holds; None when there is none."""
    for _ in range(depth + 1):
        if looks_right(tree):
            return tree
        paths = tree.paths()
        tops = {p.split("/", 1)[0] for p in paths}
        if len(tops) != 1 or not all("/" in p for p in paths):
            return None
        tree = tree.sub(tops.pop())
    return None


def progress_default() -> bool:
    """Progress bars only when stderr is a terminal."""
    return sys.stderr.isatty()
