"""Integration with the real downloads in ../shared/datasets (or $GPUNET_DATASETS).

Skipped when the folder is absent: the project must not depend on it.
"""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import data_prep

from common import DATASETS  # noqa: E402

CIFAR = DATASETS / "cifar-10-python.tar.gz"
FER = DATASETS / "fer2013-images.tar.gz"

FER_TRAIN = {
    "angry": 3995,
    "disgust": 436,
    "fear": 4097,
    "happy": 7215,
    "neutral": 4965,
    "sad": 4830,
    "surprise": 3171,
}
FER_PUBLIC = {
    "angry": 467,
    "disgust": 56,
    "fear": 496,
    "happy": 895,
    "neutral": 607,
    "sad": 653,
    "surprise": 415,
}


def need(path):
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (set GPUNET_DATASETS to the folder holding it)")


def test_real_cifar10(tmp_path):
    need(CIFAR)
    info = data_prep.info(data_prep.convert("cifar10", CIFAR, tmp_path / "c.h5", progress=False))
    assert info["class_names"] == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    s = info["splits"]
    assert (s["train"]["count"], s["val"]["count"], s["test"]["count"]) == (49000, 1000, 10000)
    assert set(s["test"]["class_counts"].values()) == {1000}
    assert set(s["val"]["class_counts"].values()) == {100}
    assert set(s["train"]["class_counts"].values()) == {4900}
    assert s["train"]["x_shape"] == (49000, 3, 32, 32) and s["train"]["x_dtype"] == "uint8"
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["train/x"].chunks == (256, 3, 32, 32)
        assert np.all(np.abs(f.attrs["mean"] - [125.3, 123.0, 113.9]) < 0.2)


def test_real_fer2013(tmp_path):
    need(FER)
    info = data_prep.info(data_prep.convert("fer2013", FER, tmp_path / "f.h5", progress=False))
    assert info["class_names"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    s = info["splits"]
    assert set(s) == {"train", "val"}  # this copy has no PrivateTest images
    assert s["train"]["count"] == 28709 and s["val"]["count"] == 3589
    assert s["train"]["class_counts"] == {k: FER_TRAIN[k] for k in info["class_names"]}
    assert s["val"]["class_counts"] == {k: FER_PUBLIC[k] for k in info["class_names"]}
    assert s["val"]["usage"] == "PublicTest" and s["train"]["usage"] == "Training"
    assert s["train"]["x_shape"] == (28709, 1, 48, 48)
