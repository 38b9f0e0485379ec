"""The gpunet HDF5 format (``gpunet.data.h5file``): writing, the version check on open,
metadata, layout checks and ``load_split``. Files are read back with plain h5py as an
independent oracle."""

import h5py
import numpy as np
import pytest

from gpunet import runs
from gpunet.data import ArrayLoader, H5Loader, h5file as fmt, load_split, read_meta
from h5_fixtures import numpy_backend, write_raw  # noqa: F401 (numpy_backend is a fixture)

SHAPE = (2, 3, 4)


def write_file(path, n=40, chunk=8, **kw):
    """A well-formed file with train (n) and test (n // 2) splits; returns {split: (x, y)}."""
    rng = np.random.default_rng(0)
    data = {
        s: (rng.integers(0, 256, (m,) + SHAPE, dtype=np.uint8), rng.integers(0, 3, m))
        for s, m in (("train", n), ("test", n // 2))
    }
    with fmt.create(
        path,
        dataset="toy",
        class_names=["a", "b", "c"],
        mean=[10.0, 20.0],
        std=[2.0, 4.0],
        image_shape=SHAPE,
        notes=["one", "two"],
        **kw,
    ) as f:
        for s, (x, y) in data.items():
            fmt.write_split(f, s, x, y, chunk, usage="Public" if s == "test" else None)
    return data


def test_written_layout_read_back_with_plain_h5py(tmp_path):
    path = tmp_path / "d.h5"
    data = write_file(path)
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert int(a["format_version"]) == fmt.FORMAT_VERSION == 1 and a["dataset"] == "toy"
        assert [s.decode() if isinstance(s, bytes) else s for s in a["class_names"]] == ["a", "b", "c"]
        assert list(a["mean"]) == [10.0, 20.0] and list(a["std"]) == [2.0, 4.0]
        assert tuple(a["image_shape"]) == SHAPE and len(a["notes"]) == 2
        for s, (x, y) in data.items():
            assert f[s]["x"].dtype == np.uint8 and f[s]["x"].chunks == (8,) + SHAPE
            assert f[s]["y"].dtype == np.int64
            np.testing.assert_array_equal(f[s]["x"][...], x)
            np.testing.assert_array_equal(f[s]["y"][...], y)
        assert f["test"].attrs["usage"] == "Public" and "usage" not in f["train"].attrs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]  # no temporary left behind


def test_a_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "d.h5"
    with pytest.raises(ValueError, match=r"split 'train': expected x uint8 \(N, C, H, W\)"):
        with fmt.create(
            path, dataset="toy", class_names=["a"], mean=[0.0], std=[1.0], image_shape=(1, 2, 2)
        ) as f:
            fmt.write_split(f, "train", np.zeros((3, 4), np.float32), np.zeros(3), 2)
    assert list(tmp_path.iterdir()) == []


def test_read_meta(tmp_path):
    path = tmp_path / "d.h5"
    write_file(path)
    m = read_meta(path)
    assert m["class_names"] == ["a", "b", "c"] and m["image_shape"] == SHAPE and m["dataset"] == "toy"
    assert m["counts"] == {"train": 40, "test": 20} and m["format_version"] == 1
    np.testing.assert_array_equal(m["mean"], [10.0, 20.0])


@pytest.mark.parametrize(
    "opener",
    [
        read_meta,
        lambda p: H5Loader(p),
        lambda p: load_split(p, "train"),
        lambda p: runs.load_split(p, "train"),
    ],
)
def test_a_newer_format_version_is_refused_naming_file_and_versions(tmp_path, numpy_backend, opener):
    path = tmp_path / "new.h5"
    write_file(path)
    with h5py.File(path, "r+") as f:  # a file from a future gpunet
        f.attrs["format_version"] = 99
    with pytest.raises(
        ValueError, match=r"new\.h5: format_version 99 is newer than this gpunet reads \(up to 1\)"
    ):
        opener(path)


def test_missing_file_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        H5Loader(tmp_path / "nope.h5")
    path = tmp_path / "d.h5"
    write_file(path)
    with pytest.raises(ValueError, match=r"d\.h5.*'val'.*expected a group /val.*\['test', 'train'\]"):
        H5Loader(path, split="val")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5.*expected an HDF5 file"):
        read_meta(tmp_path / "text.h5")


@pytest.mark.parametrize(
    "x,y,match",
    [
        (np.zeros((10, 1, 2, 2), np.float32), np.arange(10), r"expected /train/x uint8.*found float32"),
        (np.zeros((10, 4), np.uint8), np.arange(10), r"shape \(N, C, H, W\), found uint8 of shape \(10, 4\)"),
        (
            np.zeros((10, 1, 2, 2), np.uint8),
            np.arange(9),
            r"expected /train/y integer of shape \(10,\).*\(9,\)",
        ),
        (np.zeros((10, 1, 2, 2), np.uint8), np.zeros(10, np.float64), r"/train/y integer.*found float64"),
    ],
)
def test_wrong_layout(tmp_path, numpy_backend, x, y, match):
    path = tmp_path / "bad.h5"
    write_raw(path, x, y)
    with pytest.raises(ValueError, match=r"bad\.h5: split 'train': .*" + match):
        H5Loader(path)
    with pytest.raises(ValueError, match=r"bad\.h5: split 'train': .*" + match):
        load_split(path, "train")


def test_labels_outside_the_class_range_are_refused_at_open(tmp_path, numpy_backend):
    """Checked once when the file is opened: on the GPU the loss kernel does not check labels."""
    path = tmp_path / "bad.h5"
    write_raw(path, np.zeros((5, 1, 2, 2), np.uint8), np.array([0, 1, 2, 3, 1]), class_names=["a", "b", "c"])
    match = r"bad.h5: split 'train': /train/y entry 3 is 3, expected a label in \[0, 3\)"
    with pytest.raises(ValueError, match=match):
        H5Loader(path, "train")
    with pytest.raises(ValueError, match=match):  # the in-memory path (tuning, train_eval) too
        runs.load_split(path, "train")


def test_array_loader_refuses_labels_outside_num_classes(numpy_backend):
    x = np.zeros((4, 1, 2, 2), np.uint8)
    ArrayLoader(x, [0, 1, 2, 1], num_classes=3)
    for bad, entry in (([0, 1, 3, 1], "entry 2 is 3"), ([0, -1, 2, 1], "entry 1 is -1")):
        with pytest.raises(ValueError, match=rf"y: {entry}, expected a label in \[0, 3\)"):
            ArrayLoader(x, bad, num_classes=3)


def test_load_split_whole_and_limited(tmp_path):
    path = tmp_path / "d.h5"
    data = write_file(path, n=2000, chunk=64)
    x, y = data["train"]
    X, Y = load_split(path, "train")
    assert X.dtype == np.uint8 and Y.dtype == np.int64
    np.testing.assert_array_equal(X, x)
    np.testing.assert_array_equal(Y, y)
    for limit in (10, 1500):  # both reading strategies
        X, Y = load_split(path, "train", limit, seed=3)
        idx = np.sort(np.random.default_rng([3, 7]).choice(2000, limit, replace=False))
        np.testing.assert_array_equal(X, x[idx])
        np.testing.assert_array_equal(Y, y[idx])


def test_a_wrong_image_shape_and_a_linked_split_are_refused(tmp_path):
    """Issue 24 #11: a wrong image_shape attribute was ignored; /val as a hard link to /train was accepted."""
    import h5py

    from common import write_h5
    from gpunet.data import h5file

    linked, shaped = write_h5(tmp_path / "linked.h5"), write_h5(tmp_path / "shaped.h5")
    with h5py.File(linked, "a") as f:
        del f["val"]
        f["val"] = f["train"]
    with pytest.raises(ValueError, match=r"linked.h5: splits 'train' and 'val' are the same data"):
        h5file.read_meta(linked)
    with h5py.File(shaped, "a") as f:
        f.attrs["image_shape"] = [3, 2, 8]
    with pytest.raises(ValueError, match=r"shaped.h5: root attribute image_shape \[3, 2, 8\] does not match"):
        h5file.read_meta(shaped)
