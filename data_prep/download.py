"""Fetching the CIFAR-10 python tarball, with a cache, resume and md5 check.

Only urllib is used. The file lands in the cache folder (``cache_dir``, else
``$GPUNET_CACHE``, else ``~/.cache/gpunet``); bytes arrive in ``<name>.part``,
and an interrupted transfer resumes from its end with an HTTP ``Range``
request (a server that ignores it just sends the whole file again). The
result is renamed to its final name only when its md5 matches. The URL can be
pointed elsewhere (a mirror, a test server) with ``$GPUNET_CIFAR10_URL``.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import PrepError
from .hashing import md5_of

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILE = "cifar-10-python.tar.gz"
BLOCK = 1 << 16


class _ShortTransfer(OSError):
    """The connection ended before Content-Length bytes arrived."""


def cache_dir(path=None) -> Path:
    """The cache folder: ``path``, else ``$GPUNET_CACHE``, else the data home ``$GPUNET_DATA``, else
    ``~/.cache/gpunet``."""
    return Path(
        path
        or os.environ.get("GPUNET_CACHE")
        or os.environ.get("GPUNET_DATA")
        or Path.home() / ".cache" / "gpunet"
    ).expanduser()


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (or rewrite it when the server cannot resume)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "gpunet-prep", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is complete
            return
        raise
    with resp:
        resumed = have and getattr(resp, "status", None) == 206
        if not resumed:
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=f"downloading {part.name[:-5]}",
                disable=not progress,
            ) as bar,
        ):
            while block := resp.read(BLOCK):
                f.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _ShortTransfer(f"connection closed after {size} of {total} bytes")


def fetch(
    url: str,
    dest,
    md5=None,
    *,
    retries: int = 3,
    delay: float = 1.0,
    progress: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` unless a file with the right md5 is there already.

    Tries ``retries`` times (resuming each time, waiting ``delay`` s, doubling); raises
    PrepError with what to do by hand when the network is unreachable, or when the
    md5 of the result differs from ``md5`` (the bad file is removed).
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5_of(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _transfer(url, part, progress, timeout)
            break
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500 and e.code not in (408, 429) or attempt == retries:
                raise PrepError(
                    f"{url}: HTTP {e.code} {e.reason}; download {dest.name} by hand and pass it as SRC"
                ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if attempt == retries:
                reason = getattr(e, "reason", e)
                raise PrepError(
                    f"no network ({reason}): download {dest.name} by hand from "
                    f"{url} and pass it as SRC (a partial copy is kept in {part} "
                    "and resumed next time)"
                ) from None
        time.sleep(delay * 2 ** (attempt - 1))
    found = md5_of(part)
    if md5 is not None and found != md5:
        part.unlink()
        raise PrepError(
            f"{url}: downloaded file has md5 {found}, expected {md5}; removed it, "
            "try again or download it by hand and pass it as SRC"
        )
    os.replace(part, dest)
    return dest


def download_cifar10(cache=None, progress: bool = False) -> Path:
    """The official CIFAR-10 python tarball in the cache folder, downloaded if needed."""
    url = os.environ.get("GPUNET_CIFAR10_URL") or CIFAR10_URL
    return fetch(url, cache_dir(cache) / CIFAR10_FILE, CIFAR10_MD5, progress=progress)
