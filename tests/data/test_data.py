"""Tests of gpunet.data: ArrayLoader, the HDF5 loader and its file checks.

Test files are written through the format's owner (``gpunet.data.h5file``), as the
prep tools write them. Every sample has a unique label ``y = id`` and random pixels,
so a batch can be checked against the source array independently (exactly once,
pairing of x and y, values). The file format itself is tested in test_data_h5file.py.
"""

import threading
import time

import h5py
import numpy as np
import pytest

from gpunet import backend, data
from gpunet.data import ArrayLoader, H5Loader, epoch_permutation, open_split
from gpunet.data import h5loader
from h5_fixtures import (
    CHUNK,
    N,
    SHAPE,
    epoch,
    h5file,
    normalised,
    numpy_backend,  # noqa: F401 (fixtures)
    write_raw,
    xb,
)

# ---------------------------------------------------------------- epoch order


@pytest.mark.parametrize("preload", [False, True])
def test_each_sample_once_and_values_normalised(xb, h5file, preload):
    path, raws = h5file
    with H5Loader(path, batch_size=64, preload=preload, buffer_chunks=4) as ld:
        assert (len(ld), ld.num_samples, ld.preloaded) == (16, N, preload)
        batches = epoch(ld)
    assert len(batches) == 16
    assert [len(y) for _, y in batches] == [64] * 15 + [40]
    X = np.concatenate([x for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    assert X.dtype == np.float32 and X.shape == (N,) + SHAPE and y.dtype == np.int64
    np.testing.assert_array_equal(np.sort(y), np.arange(N))
    np.testing.assert_allclose(X, normalised(raws["train"], y), rtol=1e-5, atol=1e-5)


def test_orders_depend_on_seed_and_epoch_only(h5file, numpy_backend):
    path, _ = h5file
    ys = lambda ld, e: np.concatenate([y for _, y in epoch(ld, e)])  # noqa: E731
    with (
        H5Loader(path, batch_size=50, seed=3, preload=False) as a,
        H5Loader(path, batch_size=50, seed=3, preload=False) as b,
        H5Loader(path, batch_size=50, seed=4, preload=False) as c,
    ):
        a0, a1 = ys(a, 0), ys(a, 1)
        assert not np.array_equal(a0, a1)
        np.testing.assert_array_equal(a0, ys(b, 0))
        np.testing.assert_array_equal(a1, ys(b, 1))
        np.testing.assert_array_equal(a0, ys(a, 0))  # set_epoch back replays it
        assert not np.array_equal(a0, ys(c, 0))
        np.testing.assert_array_equal(a0, a.order(0))


def test_shuffle_false_is_file_order(xb, h5file):
    path, raws = h5file
    with H5Loader(path, split="test", batch_size=300, shuffle=False, preload=False) as ld:
        batches = epoch(ld, 5)
    y = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(y, np.arange(N))
    assert [len(y) for _, y in batches] == [300, 300, 300, 100]
    # values of a non-train split still use the train statistics stored in the file
    r = raws["test"].astype(np.float64)
    t = raws["train"].astype(np.float64)
    ref = (r - t.mean(axis=(0, 2, 3))[:, None, None]) / t.std(axis=(0, 2, 3))[:, None, None]
    np.testing.assert_allclose(np.concatenate([x for x, _ in batches]), ref, rtol=1e-5, atol=1e-5)


# test_device_data.py: both paths serve the same batches; the default window is a whole permutation


def test_drop_last_both_ways(h5file, numpy_backend):
    path, _ = h5file
    with H5Loader(path, batch_size=64, drop_last=True, preload=False) as ld:
        b = epoch(ld)
        assert len(ld) == len(b) == 15 and all(len(y) == 64 for _, y in b)
        assert len(np.unique(np.concatenate([y for _, y in b]))) == 960
    with H5Loader(path, batch_size=64, drop_last=False, preload=False) as ld:
        b = epoch(ld)
        assert len(ld) == len(b) == 16 and len(b[-1][1]) == 40


def test_shuffle_buffer_mixes_chunks(h5file, numpy_backend):
    path, _ = h5file
    with H5Loader(path, batch_size=64, buffer_chunks=4, preload=False) as ld:
        y0 = epoch(ld, 0)[0][1]
    chunks = np.unique(y0 // CHUNK)
    assert 1 < len(chunks) <= 4  # drawn from several chunks of one window
    assert not np.array_equal(np.sort(y0), y0)  # and mixed inside the batch
    # the window order itself is shuffled: the first window is not simply chunks 0..3
    plan = data.epoch_plan(N, CHUNK, 4, 0, 0)
    assert len(plan) == 4 and sorted(np.concatenate([c for c, _ in plan])) == list(range(16))
    assert any(set(c) != set(range(4 * i, 4 * i + 4)) for i, (c, _) in enumerate(plan))


def test_default_window_and_auto_preload(h5file, numpy_backend):
    path, _ = h5file
    with H5Loader(path) as ld:  # tiny file: auto preloads, 16-chunk window
        assert ld.preloaded and ld.buffer_chunks == 16 and ld.chunk == CHUNK


# ---------------------------------------------------------------- augmentation


def test_augmentation_off_by_default_is_identity(h5file, numpy_backend):
    path, _ = h5file
    with (
        H5Loader(path, batch_size=100, preload=False) as a,
        H5Loader(path, batch_size=100, preload=False, augment={"flip": False, "crop_pad": 0}) as b,
    ):
        assert a.augment is None and b.augment is None
        for (xa, ya), (xb_, yb) in zip(epoch(a), epoch(b)):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb_)


def test_flip_mirrors_exactly(xb, h5file):
    path, _ = h5file
    with (
        H5Loader(path, batch_size=100, augment={"flip": True}, preload=False) as a,
        H5Loader(path, batch_size=100, preload=False) as plain,
    ):
        flips = []
        for (xa, ya), (xp_, yp) in zip(epoch(a, 2), epoch(plain, 2)):
            np.testing.assert_array_equal(ya, yp)
            img_a, img_p = xa.reshape((-1,) + SHAPE), xp_.reshape((-1,) + SHAPE)
            same = (img_a == img_p).all(axis=(1, 2, 3))
            mirrored = (img_a == img_p[..., ::-1]).all(axis=(1, 2, 3))
            assert (same | mirrored).all()
            flips.append(mirrored & ~same)
        frac = np.concatenate(flips).mean()
        assert 0.4 < frac < 0.6
        again = np.concatenate([x for x, _ in epoch(a, 2)])
        np.testing.assert_array_equal(again, np.concatenate([x for x, _ in epoch(a, 2)]))


def test_crop_keeps_shape_and_is_a_shifted_window(h5file, numpy_backend):
    path, _ = h5file
    p = 2
    with (
        H5Loader(path, batch_size=50, augment={"crop_pad": p}, preload=False) as a,
        H5Loader(path, batch_size=50, preload=False) as plain,
    ):
        (xa, _), (xp_, _) = epoch(a)[0], epoch(plain)[0]
    assert xa.shape == xp_.shape == (50,) + SHAPE
    img_a, img_p = xa.reshape((-1,) + SHAPE), xp_.reshape((-1,) + SHAPE)
    padded = np.pad(img_p, ((0, 0), (0, 0), (p, p), (p, p)))
    shifted = 0
    for i in range(50):
        offsets = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(img_a[i], padded[i, :, dy : dy + 4, dx : dx + 5])
        ]
        assert offsets, f"sample {i} is not a {2 * p}-padded crop of its image"
        shifted += (p, p) not in offsets
    assert shifted > 25


@pytest.mark.parametrize(
    "bad", [{"flip": "yes"}, {"crop_pad": -1}, {"crop_pad": 1.5}, {"rotate": 10}, "flip"]
)
def test_bad_augment_options(h5file, numpy_backend, bad):
    path, _ = h5file
    with pytest.raises(ValueError, match="augment"):
        H5Loader(path, augment=bad)


# ---------------------------------------------------------------- files, threads, errors


def test_two_loaders_read_the_same_file_concurrently(h5file, numpy_backend):
    path, _ = h5file
    with (
        open_split(path, "train", batch_size=100, preload=False) as a,
        open_split(path, "train", batch_size=100, preload=False, seed=1) as b,
        h5py.File(path, "r", locking=False) as third,
    ):
        ya, yb = [], []
        for (_, y1), (_, y2) in zip(a, b):  # both workers running at once
            ya.append(y1)
            yb.append(y2)
        assert third["train/x"].shape[0] == N
    for ys in (ya, yb):
        np.testing.assert_array_equal(np.sort(np.concatenate(ys)), np.arange(N))


def _wait_threads(count, timeout=5.0):
    t0 = time.monotonic()
    while threading.active_count() > count and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    return threading.active_count()


def test_closing_mid_epoch_stops_the_thread(h5file, numpy_backend):
    path, _ = h5file
    before = threading.active_count()
    ld = H5Loader(path, batch_size=10, preload=False, prefetch=2)
    it = iter(ld)
    next(it), next(it)
    assert threading.active_count() == before + 1
    ld.close()
    assert _wait_threads(before) == before
    ld.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        iter(ld)
    # leaving a with block by an exception, mid-epoch, stops it too
    with pytest.raises(KeyboardInterrupt):
        with H5Loader(path, batch_size=10, preload=False) as ld:
            for i, _ in enumerate(ld):
                if i == 3:
                    raise KeyboardInterrupt
    assert _wait_threads(before) == before
    # and a new epoch while one is unfinished replaces its thread
    with H5Loader(path, batch_size=10, preload=False) as ld:
        next(iter(ld))
        assert len(epoch(ld)) == 100
        assert _wait_threads(before + 1) <= before + 1
    assert _wait_threads(before) == before


def test_bad_normalisation_attrs(tmp_path, numpy_backend):
    path = tmp_path / "bad.h5"
    write_raw(path, np.zeros((10, 3, 2, 2), np.uint8), np.arange(10), mean=[1.0], std=[2.0])
    with pytest.raises(ValueError, match=r"bad\.h5: expected root attrs mean, std of shape \(3,\)"):
        H5Loader(path)
    H5Loader(path, normalize=False).close()  # raw pixel values need no attrs


def test_unnormalised_and_float64(h5file, numpy_backend):
    path, raws = h5file
    with H5Loader(path, batch_size=100, normalize=False, dtype=np.float64, preload=False) as ld:
        X, y = epoch(ld)[0]
    assert X.dtype == np.float64
    np.testing.assert_array_equal(X, raws["train"][y])


def test_contiguous_dataset_is_read_in_virtual_chunks(tmp_path, numpy_backend):
    path = tmp_path / "contig.h5"
    x = np.random.default_rng(1).integers(0, 256, (600, 1, 3, 3), dtype=np.uint8)
    write_raw(path, x, np.arange(600))
    with H5Loader(path, batch_size=128, preload=False) as ld:
        assert ld.chunk == h5loader.DEFAULT_CHUNK
        y = np.concatenate([y for _, y in epoch(ld)])
    np.testing.assert_array_equal(np.sort(y), np.arange(600))


# ---------------------------------------------------------------- ArrayLoader


def test_epoch_permutation_is_a_pure_function():
    p = epoch_permutation(50, 1, 2)
    np.testing.assert_array_equal(np.sort(p), np.arange(50))
    np.testing.assert_array_equal(p, epoch_permutation(50, 1, 2))
    assert not np.array_equal(p, epoch_permutation(50, 1, 3))


def test_array_loader_basics(xb):
    raw = np.random.default_rng(2).integers(0, 256, (103, 3, 2, 2), dtype=np.uint8)
    mean, std = np.array([100.0, 120.0, 140.0]), np.array([50.0, 60.0, 70.0])
    ld = ArrayLoader(
        raw, np.arange(103), batch_size=10, seed=5, mean=mean[:, None, None], std=std[:, None, None]
    )
    assert len(ld) == 11 and ld.num_samples == 103
    b = epoch(ld, 1)
    y = np.concatenate([y for _, y in b])
    np.testing.assert_array_equal(y, epoch_permutation(103, 5, 1)[:103])
    ref = (raw[y] - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(np.concatenate([x for x, _ in b]), ref, rtol=1e-5, atol=1e-5)
    assert len(ArrayLoader(raw, np.arange(103), batch_size=10, drop_last=True)) == 10
    with pytest.raises(ValueError, match="expected 103 labels"):
        ArrayLoader(raw, np.arange(5))


def test_array_loader_augment_flips_reproducibly(xp):
    """ArrayLoader's augmentation: mirrored images only, the same draws for the same (seed, epoch)."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (64, 1, 4, 5)).astype(np.uint8)
    y = np.arange(64)
    loader = ArrayLoader(X, y, batch_size=16, seed=3, augment={"flip": True})
    loader.set_epoch(0)
    first = [(backend.to_numpy(xb), backend.to_numpy(yb)) for xb, yb in loader]
    loader.set_epoch(0)
    again = [(backend.to_numpy(xb), backend.to_numpy(yb)) for xb, yb in loader]
    flipped = 0
    for (xf, yf), (xa, ya) in zip(first, again):
        np.testing.assert_array_equal(xf, xa)
        for img, label in zip(xf.reshape(-1, 1, 4, 5), yf):
            orig = X[label].astype(np.float32)
            assert np.array_equal(img, orig) or np.array_equal(img, orig[..., ::-1])
            flipped += not np.array_equal(img, orig)
    assert 10 < flipped < 54  # about half, with overwhelming probability
    with pytest.raises(ValueError, match=r"augment: needs images shaped \(N, C, H, W\)"):
        ArrayLoader(X.reshape(64, -1), y, augment={"flip": True})


def test_array_loader_prefetch_yields_the_same_batches(numpy_backend):
    """Gathering one batch ahead in a thread changes nothing in what the loader yields."""
    from gpunet.data import ArrayLoader

    rng = np.random.default_rng(2)
    X, y = rng.integers(0, 256, (53, 3, 4, 4)).astype(np.uint8), rng.integers(0, 3, 53)
    kw = dict(
        batch_size=8,
        seed=4,
        mean=np.full((3, 1, 1), 100.0),
        std=np.full((3, 1, 1), 50.0),
        augment={"flip": True, "crop_pad": 1},
    )
    plain, ahead = ArrayLoader(X, y, **kw), ArrayLoader(X, y, prefetch=True, **kw)
    for e in (0, 1):
        plain.set_epoch(e)
        ahead.set_epoch(e)
        got, want = list(ahead), list(plain)
        assert len(got) == len(want) == 7
        for (a, ya), (b, yb) in zip(got, want):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ya, yb)
    it = iter(ahead)  # stopped early: the background gather is waited for
    next(it)
    it.close()


def test_array_loader_batches_never_alias_the_data(numpy_backend):
    """A float32 batch that needs no conversion is the gather itself, never a view of X."""
    from gpunet.data import ArrayLoader

    X = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    keep = X.copy()
    for shuffle in (True, False):
        for xs, _ in ArrayLoader(X, np.zeros(40, int), batch_size=7, shuffle=shuffle, seed=1):
            xs[...] = -1.0
    np.testing.assert_array_equal(X, keep)
