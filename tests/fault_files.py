"""Damaged inputs of issue 24, made cheaply, for the reliability tests and ``scripts/fault_suite.py``.

Each builder writes one file that is wrong in one way and returns its path:

- ``huge_n_h5``: a gpunet HDF5 file of a few kilobytes whose /train declares 10**10 samples
  (chunks never written: compressed, plain, or with a fill value);
- ``gzip_corrupt_h5``: gzip chunks of /train/x with bytes flipped in one chunk;
- ``no_class_names_h5``: a file without class_names whose /test holds a label 50;
- ``duplicate_member_tar``: a CIFAR-10 python tarball holding ``data_batch_1`` twice;
- ``two_channel_model``: a model file whose meta image_shape has 2 channels.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import h5py
import numpy as np

from gpunet.data import h5file as fmt

CLASSES = ["a", "b", "c"]


def _small_splits(f, shape, n=12, splits=("val", "test"), compression=None, seed=0):
    rng = np.random.default_rng(seed)
    for s in splits:
        x = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
        fmt.write_split(f, s, x, np.arange(n) % len(CLASSES), 4, compression=compression)


def huge_n_h5(path, n=10**10, kind="gzip") -> Path:
    """/train declares ``n`` samples of (1, 2, 2) that the file does not store. kind: "gzip"
    (chunked, compressed), "plain" (chunked, uncompressed), "fill" (fill value 1), "resizable"
    (maxshape None, resized to ``n``)."""
    shape = (1, 2, 2)
    with fmt.create(path, dataset="t", class_names=CLASSES, mean=[100.0], std=[50.0], image_shape=shape) as f:
        g = f.create_group("train")
        opts = {"gzip": {"compression": "gzip"}, "plain": {}, "fill": {"fillvalue": 1}}.get(kind, {})
        if kind == "resizable":
            x = g.create_dataset("x", (4,) + shape, np.uint8, chunks=(4,) + shape, maxshape=(None,) + shape)
            y = g.create_dataset("y", (4,), np.int64, chunks=(4,), maxshape=(None,))
            x[...], y[...] = 7, 1
            x.resize(n, axis=0)
            y.resize(n, axis=0)
        else:
            g.create_dataset("x", (n,) + shape, np.uint8, chunks=(1024,) + shape, **opts)
            g.create_dataset("y", (n,), np.int64, chunks=(1024,), **opts)
        _small_splits(f, shape)
    return Path(path)


def gzip_corrupt_h5(path, n=64, chunk=4, bad_chunk=1) -> Path:
    """A gzip-compressed file (train/val/test, ``n`` images of (1, 8, 8) each, ``chunk`` rows per
    chunk) whose /train/x chunk ``bad_chunk`` has 30 bytes flipped: reading it fails in zlib."""
    shape = (1, 8, 8)
    with fmt.create(path, dataset="t", class_names=CLASSES, mean=[127.0], std=[70.0], image_shape=shape) as f:
        x = np.random.default_rng(1).integers(0, 256, (n,) + shape, dtype=np.uint8)
        fmt.write_split(f, "train", x, np.arange(n) % len(CLASSES), chunk, compression="gzip")
        _small_splits(f, shape, compression="gzip")
    with h5py.File(path, "r") as f:
        offset = f["train/x"].id.get_chunk_info(bad_chunk).byte_offset
    data = bytearray(Path(path).read_bytes())
    for i in range(10, 40):
        data[offset + i] ^= 0x5A
    Path(path).write_bytes(bytes(data))
    return Path(path)


def no_class_names_h5(path, label=50) -> Path:
    """A file without the class_names attribute; /test/y holds ``label`` once."""
    shape = (1, 48, 48)
    with fmt.create(path, dataset="t", class_names=CLASSES, mean=[127.0], std=[70.0], image_shape=shape) as f:
        rng = np.random.default_rng(0)
        for s in ("train", "val", "test"):
            y = np.arange(12) % 3
            if s == "test":
                y[5] = label
            fmt.write_split(f, s, rng.integers(0, 256, (12,) + shape, dtype=np.uint8), y, 4)
        del f.attrs["class_names"]
    return Path(path)


def duplicate_member_tar(path, member="data_batch_1", per_batch=10) -> Path:
    """A CIFAR-10 python tarball (``cifar-10-batches-py/...``) with ``member`` twice, the second
    copy with other labels."""
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    members = []
    for name in names:
        blob = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [i % 10 for i in range(per_batch)],
        }
        members.append((name, pickle.dumps(blob, protocol=2)))
        if name == member:
            blob = {**blob, b"labels": [(i + 1) % 10 for i in range(per_batch)]}
            members.append((name, pickle.dumps(blob, protocol=2)))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    members.append(("batches.meta", pickle.dumps(meta, protocol=2)))
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return Path(path)


def two_channel_model(path) -> Path:
    """A valid model file whose meta says its images have 2 channels (2, 4, 4)."""
    from gpunet.model import FullyConnectedNet

    m = FullyConnectedNet([4], input_dim=2 * 4 * 4, num_classes=3, seed=0)
    m.meta = {"mean": [1.0, 2.0], "std": [3.0, 4.0], "image_shape": [2, 4, 4], "class_names": CLASSES}
    return Path(m.save(path))
