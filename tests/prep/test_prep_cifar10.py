"""CIFAR-10 conversion from every source format, checked pixel for pixel."""

import hashlib

import numpy as np
import pytest
from prep_fixtures import (
    CIFAR_NAMES,
    cifar_batches,
    make_tar,
    make_zip,
    read_h5,
    write_cifar_binary,
    write_cifar_python,
    write_image_tree,
)

import data_prep


def expected_images(data: np.ndarray) -> np.ndarray:
    """(N, 3, 32, 32) from CIFAR rows, built channel by channel from the row layout."""
    r, g, b = data[:, :1024], data[:, 1024:2048], data[:, 2048:]
    return np.stack([c.reshape(-1, 32, 32) for c in (r, g, b)], axis=1)


def expected_splits(batches):
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    x = np.concatenate([expected_images(d) for d, _ in train])
    y = np.concatenate([np.asarray(l) for _, l in train])
    d, l = batches["test_batch"]
    return (x, y), (expected_images(d), np.asarray(l))


def check_no_val(out, batches):
    (xt, yt), (xs, ys) = expected_splits(batches)
    h = read_h5(out)
    assert set(h["splits"]) == {"train", "test"}
    np.testing.assert_array_equal(h["splits"]["train"][0], xt)
    np.testing.assert_array_equal(h["splits"]["train"][1], yt)
    np.testing.assert_array_equal(h["splits"]["test"][0], xs)
    np.testing.assert_array_equal(h["splits"]["test"][1], ys)
    assert h["splits"]["train"][0].dtype == np.uint8 and h["splits"]["train"][1].dtype == np.int64
    return h


@pytest.fixture
def batches():
    return cifar_batches(per_batch=20)


def test_python_folder(tmp_path, batches):
    src = write_cifar_python(tmp_path / "src", batches)
    out = data_prep.convert("cifar10", src, tmp_path / "c.h5", val_size=0, progress=False)
    h = check_no_val(out, batches)
    a = h["attrs"]
    assert list(a["class_names"]) == CIFAR_NAMES
    assert int(a["format_version"]) == 1 and a["dataset"] == "cifar10"
    assert tuple(a["image_shape"]) == (3, 32, 32)
    assert a["source"] == "cifar-10-batches-py"
    assert len(a["source_sha256"]) == 64 and "source_md5" not in a


def test_python_tarball_records_checksums(tmp_path, batches):
    src = write_cifar_python(tmp_path / "src", batches)
    tar = make_tar(src, tmp_path / "cifar-10-python.tar.gz")
    out = data_prep.convert("cifar10", tar, tmp_path / "c.h5", val_size=0, progress=False)
    a = check_no_val(out, batches)["attrs"]
    raw = tar.read_bytes()
    assert a["source"] == "cifar-10-python.tar.gz"
    assert a["source_sha256"] == hashlib.sha256(raw).hexdigest()
    assert a["source_md5"] == hashlib.md5(raw).hexdigest()  # never rejected for its md5
    assert any("not the official" in n for n in data_prep.info(out)["notes"])


def test_folder_sha256_changes_with_content(tmp_path, batches):
    src = write_cifar_python(tmp_path / "src", batches)
    a1 = data_prep.info(data_prep.convert("cifar10", src, tmp_path / "1.h5", val_size=0))
    (src / "readme.html").write_text("changed, but not used")
    a2 = data_prep.info(data_prep.convert("cifar10", src, tmp_path / "2.h5", val_size=0))
    data = bytearray((src / "test_batch").read_bytes())
    data[-20] ^= 1  # a pixel byte near the end of the data string
    (src / "test_batch").write_bytes(bytes(data))
    a3 = data_prep.info(data_prep.convert("cifar10", src, tmp_path / "3.h5", val_size=0))
    assert a1["source_sha256"] == a2["source_sha256"] != a3["source_sha256"]


@pytest.mark.parametrize("packed", ["folder", "tar.gz", "tar"])
def test_binary_version(tmp_path, batches, packed):
    src = write_cifar_binary(tmp_path / "src", batches)
    if packed != "folder":
        src = make_tar(src, tmp_path / f"cifar-10-binary.{packed}")
    out = data_prep.convert("cifar10", src, tmp_path / "c.h5", val_size=0, progress=False)
    check_no_val(out, batches)
    assert list(data_prep.info(out)["class_names"]) == CIFAR_NAMES


@pytest.mark.parametrize("packed", ["folder", "zip", "tgz"])
def test_image_tree(tmp_path, packed):
    rng = np.random.default_rng(1)
    files, want = {}, {"train": [], "test": []}
    for split, n in (("train", 3), ("test", 1)):
        for c in ("truck", "airplane", "cat"):  # written out of label order
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                files[f"{split}/{c}/{i:03d}.png"] = img
                want[split].append((CIFAR_NAMES.index(c), f"{i:03d}", img))
    src = write_image_tree(tmp_path / "tree", files)
    if packed == "zip":
        src = make_zip(src, tmp_path / "tree.zip", prefix="cifar_png/")
    elif packed == "tgz":
        src = make_tar(src, tmp_path / "tree.tgz", arcname="cifar_png")
    out = data_prep.convert("cifar10", src, tmp_path / "c.h5", val_size=0, progress=False)
    h = read_h5(out)
    for split, items in want.items():
        items.sort(key=lambda t: (t[0], t[1]))  # class index, then file name
        x, y = h["splits"][split]
        np.testing.assert_array_equal(y, [t[0] for t in items])
        np.testing.assert_array_equal(x, np.stack([t[2].transpose(2, 0, 1) for t in items]))


def test_default_val_carve_and_stats(tmp_path):
    batches = cifar_batches(per_batch=300, seed=3)
    src = write_cifar_python(tmp_path / "src", batches)
    out = data_prep.convert("cifar10", src, tmp_path / "c.h5", progress=False)  # default 1000
    (xt, yt), _ = expected_splits(batches)
    h = read_h5(out)
    xtr, ytr = h["splits"]["train"]
    xv, yv = h["splits"]["val"]
    assert len(yv) == 1000 and len(ytr) == 1500 - 1000
    np.testing.assert_array_equal(np.bincount(yv, minlength=10), [100] * 10)
    # union = original, no overlap: every original image appears exactly once
    both = np.concatenate([xtr, xv]).reshape(1500, -1)
    orig = xt.reshape(1500, -1)
    key = lambda a: sorted(map(bytes, a))
    assert key(both) == key(orig)
    # mean/std of the train split, computed independently in float64
    xf = xtr.astype(np.float64)
    for c in range(3):
        assert h["attrs"]["mean"][c] == pytest.approx(xf[:, c].mean(), abs=1e-9)
        assert h["attrs"]["std"][c] == pytest.approx(xf[:, c].std(), abs=1e-9)
    assert h["attrs"]["mean"].dtype == np.float64 and h["attrs"]["mean"].shape == (3,)


def test_chunks_along_n_only(tmp_path, batches):
    src = write_cifar_python(tmp_path / "src", batches)
    info = data_prep.info(data_prep.convert("cifar10", src, tmp_path / "c.h5", val_size=0))
    for d in info["splits"].values():
        assert d["chunks"][1:] == (3, 32, 32)
        assert d["compression"] is None
    assert info["splits"]["train"]["class_counts"]["airplane"] == 10
