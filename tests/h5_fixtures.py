"""Shared helpers of the data tests: writers of small gpunet HDF5 files, all through the
format's owner (``gpunet.data.h5file``): well-formed ones (``write_h5``: labels are sample
ids), and deliberately malformed ones (``write_raw``: the owner writes the root attributes,
the test places odd datasets inside); plus the loader fixtures."""

import numpy as np
import pytest

from gpunet import backend
from gpunet.testing import emulated
from gpunet.data import h5file as fmt

N, SHAPE, CHUNK = 1000, (3, 4, 5), 64  # 16 chunks, the last one partial (40 rows)


def write_raw(path, x, y, chunks=None, class_names=None, mean=(127.0,), std=(64.0,), **attrs):
    """A file with /train/x = x and /train/y = y stored as given (any dtype or shape, chunked
    along N by ``chunks`` rows, contiguous when None); image_shape is taken from x when it has 4 axes."""
    x, y = np.asarray(x), np.asarray(y)
    shape = x.shape[1:] if x.ndim == 4 else (1, 1, 1)
    names = (
        class_names if class_names is not None else [str(i) for i in range(max(int(y.max(initial=0)) + 1, 1))]
    )
    with fmt.create(
        path, dataset="test", class_names=names, mean=mean, std=std, image_shape=shape, **attrs
    ) as f:
        f.create_dataset("train/x", data=x, chunks=None if chunks is None else (chunks,) + x.shape[1:])
        f.create_dataset("train/y", data=y)
    return path


@pytest.fixture(
    params=[
        "numpy",
        pytest.param("emulated", marks=pytest.mark.emulated),
        pytest.param("cupy", marks=pytest.mark.gpu),
    ]
)
def xb(request):
    """Run the test body on each backend (the emulated GPU runs the CuPy streaming path on the CPU);
    CuPy skips when no GPU is usable. Yields the backend's name ("cupy" for the emulated GPU too)."""
    if request.param == "cupy" and not backend.gpu_available():
        pytest.skip(f"CuPy backend not testable here: {backend.gpu_unavailable_reason()}")
    if request.param == "emulated" and emulated.available():
        pytest.skip(emulated.available())
    with backend.using(request.param):
        yield backend.name()


@pytest.fixture
def numpy_backend():
    previous = backend.selected()
    backend.use("numpy")
    yield
    backend.use(previous)


def write_h5(path, n=N, shape=SHAPE, chunk=CHUNK, seed=0, splits=("train",), **attrs):
    """A gpunet HDF5 file; returns {split: raw (n, C, H, W) uint8}; labels are sample ids."""
    raws = {
        split: np.random.default_rng([seed, i]).integers(0, 256, (n,) + shape, dtype=np.uint8)
        for i, split in enumerate(splits)
    }
    train = raws[splits[0]].astype(np.float64)
    with fmt.create(
        path,
        dataset="synthetic",
        class_names=[f"id{i}" for i in range(n)],  # one class each
        mean=attrs.get("mean", train.mean(axis=(0, 2, 3))),
        std=attrs.get("std", train.std(axis=(0, 2, 3))),
        image_shape=shape,
    ) as f:
        for split, raw in raws.items():
            fmt.write_split(f, split, raw, np.arange(n), chunk)
    return raws


@pytest.fixture
def h5file(tmp_path):
    path = tmp_path / "d.h5"
    raws = write_h5(path, splits=("train", "test"))
    return path, raws


def epoch(loader, e=None):
    """All batches of one epoch as numpy: list of (X, y)."""
    if e is not None:
        loader.set_epoch(e)
    return [(backend.to_numpy(X), backend.to_numpy(y)) for X, y in loader]


def normalised(raw, ids):
    """Independent reference: (x - mean[c]) / std[c] in float64, (B, C, H, W)."""
    r = raw.astype(np.float64)
    mean, std = r.mean(axis=(0, 2, 3)), r.std(axis=(0, 2, 3))
    return (r[ids] - mean[:, None, None]) / std[:, None, None]
