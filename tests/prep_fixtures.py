"""Builders of small dataset sources in exactly the real formats, for the data_prep tests.

Each builder writes files under a given folder and returns what it wrote
(arrays, labels, paths), so tests can compare the converted HDF5 file pixel for
pixel against values they chose themselves.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FER_NAMES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def cifar_batches(per_batch: int = 20, seed: int = 0) -> dict:
    """{batch name: (data uint8 (n, 3072), labels list)} for data_batch_1..5 and test_batch;
    every batch holds every class at least once."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        rng.shuffle(labels)
        out[name] = (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), labels)
    return out


def write_cifar_python(folder: Path, batches: dict) -> Path:
    """``folder/cifar-10-batches-py/`` with protocol-2 pickles with bytes keys, as released."""
    d = Path(folder) / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        blob = {
            b"batch_label": name.encode(),
            b"labels": list(labels),
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }
        (d / name).write_bytes(pickle.dumps(blob, protocol=2))
    meta = {
        b"num_cases_per_batch": 10000,
        b"num_vis": 3072,
        b"label_names": [n.encode() for n in CIFAR_NAMES],
    }
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (d / "readme.html").write_text("<html></html>")
    return d


def write_cifar_binary(folder: Path, batches: dict) -> Path:
    """``folder/cifar-10-batches-bin/`` with 3073-byte records and batches.meta.txt."""
    d = Path(folder) / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        rec = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], data], axis=1)
        (d / f"{name}.bin").write_bytes(rec.tobytes())
    (d / "batches.meta.txt").write_text("\n".join(CIFAR_NAMES) + "\n\n")
    return d


def make_tar(src: Path, tar_path: Path, arcname: str | None = None) -> Path:
    """A tar (compression from the suffix) of ``src`` stored under ``arcname``."""
    mode = "w:gz" if str(tar_path).endswith((".gz", ".tgz")) else "w"
    with tarfile.open(tar_path, mode) as tf:
        tf.add(src, arcname=arcname if arcname is not None else src.name)
    return tar_path


def make_zip(src: Path, zip_path: Path, prefix: str = "") -> Path:
    """A zip of the files under ``src`` (with directory entries), names under ``prefix``."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in sorted(src.rglob("*")):
            name = prefix + p.relative_to(src).as_posix()
            if p.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(p, name)
    return zip_path


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG of uint8 (H, W) grey or (H, W, 3) RGB pixels."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_image_tree(root: Path, files: dict) -> Path:
    """Write ``{relative path: uint8 pixels}`` as PNG (or JPEG for .jpg names) under root."""
    root = Path(root)
    for rel, pixels in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg_bytes(pixels) if rel.lower().endswith((".jpg", ".jpeg")) else png_bytes(pixels))
    return root


def fer_rows(n: int, seed: int = 0, usages=("Training", "PublicTest", "PrivateTest")) -> list:
    """[(emotion, pixels uint8 (2304,), usage)], cycling through labels and usages."""
    rng = np.random.default_rng(seed)
    return [(i % 7, rng.integers(0, 256, 2304, dtype=np.uint8), usages[i % len(usages)]) for i in range(n)]


def write_fer_csv(path: Path, rows: list, icml: bool = False) -> Path:
    """The Kaggle ``emotion,pixels,Usage`` CSV, or the icml ``emotion, Usage, pixels`` one."""
    lines = ["emotion, Usage, pixels" if icml else "emotion,pixels,Usage"]
    for emotion, pixels, usage in rows:
        text = " ".join(str(int(v)) for v in pixels)
        lines.append(f"{emotion},{usage},{text}" if icml else f"{emotion},{text},{usage}")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def read_h5(path: Path) -> dict:
    """{split: (x, y)} and attrs of a converted file, read with plain h5py."""
    with h5py.File(path, "r") as f:
        splits = {k: (f[k]["x"][()], f[k]["y"][()]) for k in f.keys()}
        attrs = dict(f.attrs)
    return {"splits": splits, "attrs": attrs}


def folder_listing(folder: Path) -> set:
    """Every path under ``folder`` (hidden files included), to check nothing was left."""
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")}
