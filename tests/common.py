"""What several test modules share: where the repository and the real datasets are, a tiny learnable
gpunet HDF5 file (``write_h5``, the ``data_dir`` fixture) and a small separable problem."""

import os
from pathlib import Path

import numpy as np
import pytest

from gpunet.data import h5file as fmt

REPO = Path(__file__).resolve().parents[1]
ROOT = str(REPO)  # the checkout, as a string (PYTHONPATH, os.path.join)
DATASETS = Path(os.environ.get("GPUNET_DATASETS") or REPO.parent / "shared" / "datasets")
CLASSES = ["a", "b", "c"]


def write_h5(
    path, n=(120, 40, 40), shape=(3, 4, 4), classes=CLASSES, seed=0, splits=("train", "val", "test")
):
    """A tiny gpunet HDF5 file: class k has brighter channel k % C, so it is learnable."""
    rng = np.random.default_rng(seed)
    with fmt.create(
        path,
        dataset="cifar10",
        class_names=classes,
        mean=np.full(shape[0], 110.0),
        std=np.full(shape[0], 50.0),
        image_shape=shape,
    ) as f:
        for split, m in zip(splits, n):
            y = rng.integers(0, len(classes), m)
            x = rng.integers(0, 150, (m,) + shape)
            x[np.arange(m), y % shape[0]] += 100
            fmt.write_split(f, split, x.astype(np.uint8), y, min(16, m))
    return str(path)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write_h5(d / "cifar10.h5")
    return d


def separable_data(n=120, d=10, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2
    y = rng.integers(0, c, n)
    X = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return {"X_train": X[:90], "y_train": y[:90], "X_val": X[90:], "y_val": y[90:]}
