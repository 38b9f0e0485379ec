"""CIFAR-10 sources: the python and binary releases, and PNG image trees.

Accepted, as a folder or as an archive (with or without its top folder):

- python version (``cifar-10-python.tar.gz`` / ``cifar-10-batches-py/``):
  pickles ``data_batch_1..5``, ``test_batch`` holding ``data`` uint8
  (N, 3072) rows of 1024 R, 1024 G, 1024 B values, and ``labels``;
  ``batches.meta`` holds ``label_names``. Loaded with a restricted unpickler.
- binary version (``cifar-10-binary.tar.gz`` / ``cifar-10-batches-bin/``):
  ``data_batch_1..5.bin``, ``test_batch.bin``, records of 1 label byte + 3072
  pixel bytes; ``batches.meta.txt`` holds the class names, one per line.
- image tree ``{train,test}/<class>/*.png`` with the ten official class names.

Samples keep batch order; the test batch becomes ``test``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from . import safe_pickle
from .download import CIFAR10_FILE, CIFAR10_MD5
from .errors import PrepError
from .image_tree import has_split_folders, read_image_tree
from .splits import SourceData, Split
from .trees import SourceTree, find_root, open_tree

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)  # (C, H, W)
ROW = 3 * 32 * 32  # pixel bytes per image
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
DEFAULT_VAL_SIZE = 1000


def layout(tree: SourceTree):
    """'python', 'binary', 'images' or None for the top of ``tree``."""
    paths = set(tree.paths())
    if "data_batch_1" in paths:
        return "python"
    if "data_batch_1.bin" in paths:
        return "binary"
    return "images" if has_split_folders(tree) else None


def read(src, *, resize: bool = False, progress: bool = False) -> SourceData:
    """Read any CIFAR-10 source into train and test Splits (x: (N, 3, 32, 32) uint8)."""
    tree = open_tree(src, progress)
    if tree is None:
        raise PrepError(
            f"{src}: expected the CIFAR-10 python or binary release (tarball or "
            "cifar-10-batches-py/ or -bin/ folder) or a train/<class>/*.png tree, "
            "found a file of another kind"
        )
    with tree:
        return _read_tree(tree, src, resize, progress)


def _read_tree(tree: SourceTree, src, resize: bool, progress: bool) -> SourceData:
    root = find_root(tree, lambda t: layout(t) is not None)
    if root is None:
        raise PrepError(
            f"{src}: expected the CIFAR-10 python or binary release (tarball or "
            "cifar-10-batches-py/ or -bin/ folder) or a train/<class>/*.png tree, "
            "found none of data_batch_1, data_batch_1.bin, train/"
        )
    kind = layout(root)
    if kind == "images":
        splits = read_image_tree(root, list(CLASS_NAMES), IMAGE_SHAPE, resize=resize, progress=progress)
        names = list(CLASS_NAMES)
    else:
        batch = _python_batch if kind == "python" else _binary_batch
        suffix = "" if kind == "python" else ".bin"
        names = _python_names(root) if kind == "python" else _binary_names(root)
        parts = [batch(root, name + suffix) for name in TRAIN_BATCHES]
        train = Split(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            f"data_batch_1..5{suffix}",
        )
        test = Split(*batch(root, TEST_BATCH + suffix), TEST_BATCH + suffix)
        splits = {"train": train, "test": test}
    fingerprint, notes = root.fingerprint(), []
    if Path(src).name == CIFAR10_FILE and fingerprint.get("md5") not in (None, CIFAR10_MD5):
        notes.append(
            f"md5 {fingerprint['md5']} is not the official release's {CIFAR10_MD5}; "
            "converted anyway (checksums recorded)"
        )
    return SourceData(splits, names, fingerprint, notes)


def _need(tree: SourceTree, name: str) -> bytes:
    if name not in tree.paths():
        raise PrepError(f"{tree.where(name)}: missing; expected data_batch_1..5 and test_batch")
    return tree.read(name)


def _check_labels(where: str, y: np.ndarray, what: str) -> np.ndarray:
    bad = np.flatnonzero((y < 0) | (y >= len(CLASS_NAMES)))
    if bad.size:
        raise PrepError(f"{where}: {what} {bad[0]}: expected a label 0..9, found {y[bad[0]]}")
    return y.astype(np.int64)


def _python_batch(tree: SourceTree, name: str) -> tuple:
    """(x (N, 3, 32, 32) uint8, y (N,) int64) from one pickled batch."""
    where = tree.where(name)
    try:
        d = safe_pickle.loads(_need(tree, name))
    except pickle.UnpicklingError as e:
        raise PrepError(f"{where}: {e}") from None
    except PrepError:
        raise
    except Exception as e:  # a damaged pickle raises nearly anything
        raise PrepError(f"{where}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise PrepError(f"{where}: expected a dict with data and labels, found {type(d).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        keys = sorted(k[:40] for k in d if isinstance(k, str))[:10]  # never str() a crafted key
        raise PrepError(f"{where}: expected keys data and labels, found {keys} ({len(d)} keys)")
    data = d["data"]
    if isinstance(data, (bytes, bytearray)) and len(data) % ROW == 0:
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, ROW)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        found = (
            f"{data.dtype} {data.shape}"
            if isinstance(data, np.ndarray)
            else f"{type(data).__name__} of {len(data)} bytes"
            if isinstance(data, (bytes, bytearray))
            else type(data).__name__
        )
        raise PrepError(f"{where}: expected data uint8 (N, {ROW}), found {found}")
    y = _labels(where, d["labels"])
    if len(y) != len(data):
        raise PrepError(f"{where}: expected {len(data)} labels (one per image), found {len(y)}")
    return data.reshape((-1,) + IMAGE_SHAPE), y


def _labels(where: str, labels) -> np.ndarray:
    """(N,) int64 from a batch's ``labels``: a flat list of Python ints 0..9 or a 1-D integer
    array. Checked element by element before NumPy sees it: a nested list (even one
    sharing sublists, which NumPy would expand exponentially) or a huge int is refused."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise PrepError(
                f"{where}: expected labels as a list of ints, found an array {labels.dtype} {labels.shape}"
            )
        return _check_labels(where, labels.astype(np.int64), "image")
    if not isinstance(labels, (list, tuple)):
        raise PrepError(f"{where}: expected labels as a list of ints, found {type(labels).__name__}")
    for i, v in enumerate(labels):
        if type(v) is not int or not 0 <= v < len(CLASS_NAMES):
            found = (
                type(v).__name__
                if type(v) is not int
                else repr(v)
                if v.bit_length() <= 64
                else f"an integer of {v.bit_length()} bits"
            )
            raise PrepError(f"{where}: image {i}: expected a label 0..9, found {found}")
    return np.asarray(labels, dtype=np.int64)


def _binary_batch(tree: SourceTree, name: str) -> tuple:
    """(x, y) from one binary batch of 3073-byte records."""
    raw, rec = _need(tree, name), ROW + 1
    if not raw or len(raw) % rec:
        raise PrepError(
            f"{tree.where(name)}: expected records of {rec} bytes (1 label + {ROW} "
            f"pixels), found {len(raw)} bytes ({len(raw) % rec} left over; truncated?)"
        )
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    y = _check_labels(tree.where(name), a[:, 0].astype(np.int64), "record")
    return a[:, 1:].reshape((-1,) + IMAGE_SHAPE).copy(), y


def _python_names(tree: SourceTree) -> list:
    if "batches.meta" not in tree.paths():
        return list(CLASS_NAMES)
    where = tree.where("batches.meta")
    try:
        meta = safe_pickle.loads(tree.read("batches.meta"))
    except PrepError:
        raise
    except Exception as e:  # a damaged pickle raises nearly anything
        raise PrepError(f"{where}: expected a dict with label_names ({type(e).__name__}: {e})") from None
    names = meta.get(b"label_names", meta.get("label_names")) if isinstance(meta, dict) else None
    if (
        not isinstance(names, (list, tuple))
        or len(names) != len(CLASS_NAMES)
        or not all(isinstance(n, (bytes, str)) and len(n) < 100 for n in names)
    ):
        found = f"{len(names)} entries" if isinstance(names, (list, tuple)) else type(names).__name__
        raise PrepError(
            f"{where}: expected label_names, a list of {len(CLASS_NAMES)} short names, found {found}"
        )
    try:
        names = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as e:
        raise PrepError(f"{where}: label_names: expected UTF-8 names ({e.reason})") from None
    return _check_names(where, names)


def _binary_names(tree: SourceTree) -> list:
    if "batches.meta.txt" not in tree.paths():
        return list(CLASS_NAMES)
    text = tree.read("batches.meta.txt").decode("utf-8", errors="replace")
    return _check_names(
        tree.where("batches.meta.txt"), [line.strip() for line in text.splitlines() if line.strip()]
    )


def _check_names(where: str, names: list) -> list:
    if len(names) != len(CLASS_NAMES):
        raise PrepError(f"{where}: expected {len(CLASS_NAMES)} class names, found {len(names)}")
    return names
