"""Where datasets live: the data home, and finding or converting a dataset's HDF5 file.

The data home is ``$GPUNET_DATA``, by default ``~/.cache/gpunet`` (as scikit-learn's
and Keras' dataset caches). ``find_data("cifar10")`` with nothing there downloads the
official tarball into it (md5 check, resume of an interrupted transfer, a progress
bar), converts it once to ``cifar10.h5`` and returns that path. FER2013 cannot be
downloaded without a Kaggle login, so its error says where to get it and how to
pass it (``--source``). Sources already sitting in the data home are found by name.

Conversions into one data home are serialised by a lock file (``.<dataset>.h5.lock``,
``flock``): a second ``find_data`` waits for the first and then uses its result, and
removes what killed conversions left (``gpunet.io.sweep_temporaries``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .data import read_meta
from .io import removed_on_failure, sweep_temporaries

# Source files looked for (in this order) in the data home.
SOURCE_NAMES = {"cifar10": ("cifar-10-python.tar.gz",), "fer2013": ("fer2013-images.tar.gz", "fer2013.csv")}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FER2013_URL = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data"


def data_home() -> Path:
    """``$GPUNET_DATA``, else ``~/.cache/gpunet``."""
    return Path(os.environ.get("GPUNET_DATA") or Path.home() / ".cache" / "gpunet").expanduser()


def default_data_dir() -> str:
    """The data home as a string (the default of ``--data-dir``)."""
    return str(data_home())


def find_source(dataset, data_dir) -> Path | None:
    """The first known source file of ``dataset`` in ``data_dir``, or None."""
    for name in SOURCE_NAMES[dataset]:
        if (Path(data_dir) / name).is_file():
            return Path(data_dir) / name
    return None


def _missing_message(dataset, out) -> str:
    if dataset == "fer2013":
        return (
            f"{out}: no such file, and FER2013 cannot be downloaded automatically (Kaggle needs a login): "
            f"download fer2013.csv from {FER2013_URL} (or an image-folder copy such as "
            f"fer2013-images.tar.gz) and pass it with --source PATH, or put it in {Path(out).parent}"
        )
    return f"{out}: no such file; pass --source PATH to cifar-10-python.tar.gz, or allow the download"


def find_data(dataset, data_dir=None, source=None, download=True, say=print) -> str:
    """Path of the prepared ``<data_dir>/<dataset>.h5``, converting ``source`` (or a found one) first.

    data_dir: default the data home. source: a file or folder to convert when the HDF5
    file is missing. download: for CIFAR-10, fetch the official tarball into ``data_dir``
    when nothing else is there. Raises FileNotFoundError/ValueError with one line saying what to do.
    """
    data_dir = Path(data_dir or data_home())
    out = data_dir / f"{dataset}.h5"
    if out.is_file():
        if source:
            say(f"using the prepared {out} (delete it to convert {source} again)")
        return str(out)
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such file or folder (--source)")
    src = Path(source) if source else find_source(dataset, data_dir)
    if src is None and (dataset != "cifar10" or not download):
        raise FileNotFoundError(_missing_message(dataset, out))
    try:
        import data_prep
        from data_prep.errors import PrepError
    except ImportError as e:
        raise ValueError(f"converting {src or 'the download'} needs the data_prep package ({e})") from None
    with removed_on_failure(data_dir, *data_dir.absolute().parents):  # the folders it makes, deepest first
        return _convert_locked(dataset, src, data_dir, out, say, data_prep, PrepError)


def _convert_locked(dataset, src, data_dir, out, say, data_prep, PrepError) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    with conversion_lock(out, say):
        if out.is_file():  # another process converted it while we waited
            say(f"using {out}, converted by another process meanwhile")
            return str(out)
        sweep_temporaries(data_dir)
        say(
            f"converting {src} -> {out}"
            if src
            else f"downloading {CIFAR10_URL} into {data_dir}, then -> {out}"
        )
        try:
            path = data_prep.convert(
                dataset, str(src) if src else None, str(out), download=src is None, cache_dir=str(data_dir)
            )
        except PrepError as e:
            msg = str(e).replace("pass it as SRC", "pass it with --source PATH")
            raise ValueError(msg) from None
    return str(path or out)


@contextmanager
def conversion_lock(out: Path, say=print):
    """Hold an exclusive ``flock`` on ``.<out name>.lock`` beside ``out`` (waiting, with a
    message, while another process holds it), and remove the file when done, success or not
    (issue 24 #9: nothing left behind). A waiter that wakes on a removed file takes the lock
    again on the current one, so removing it never lets two conversions run at once. Without
    ``fcntl`` (Windows): no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = out.with_name(f".{out.name}.lock")
    waited = False
    while True:
        fh = open(lock, "a")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    say(f"waiting for another process that is converting into {out} ...")
                waited = True
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                current = os.stat(lock).st_ino
            except FileNotFoundError:
                current = None
        except BaseException:
            fh.close()
            raise
        if current == os.fstat(fh.fileno()).st_ino:
            break
        fh.close()  # the holder removed this file as it finished: lock the one there now
    try:
        yield
    finally:
        try:
            lock.unlink()  # still holding it: a waiter wakes on the removed file and starts over
        except OSError:
            pass
        fh.close()


def check_data(path) -> dict:
    """The file's metadata, after checking it has what training needs; ValueError naming the file."""
    meta = read_meta(path)
    missing = [k for k in ("mean", "std", "image_shape", "class_names") if meta.get(k) is None]
    if missing:
        raise ValueError(f"{path}: expected root attribute(s) {missing} of a gpunet HDF5 file (data_prep)")
    for split in ("train", "val"):
        if split not in meta["counts"]:
            raise ValueError(f"{path}: expected a /{split} split, found {sorted(meta['counts'])}")
    empty = sorted(k for k, n in meta["counts"].items() if n == 0)
    if empty:  # before training, not after it (issue 24 #8): every split is trained on, chosen by or reported
        raise ValueError(f"{path}: split(s) {empty} hold no samples; every split needs at least one")
    return meta
