"""Data kept on the device vs streamed from HDF5 (issue 21): the same batches for the same seed.

``H5Loader(preload=True)`` copies the split once as uint8 and gathers, normalises and
augments every batch with array ops on the device; ``preload=False`` streams it through
host buffers. Each test compares the two batch by batch (x, y, augmentation, the last
partial batch) on every backend: NumPy, the emulated GPU (the CuPy streaming branch with
its copy stream and events) and, where one is present, a real GPU. The independent check
of the values themselves (exactly once, normalised from the raw file) is test_data.py's.
"""

import numpy as np
import pytest

from gpunet.data import H5Loader, h5loader
from gpunet.data.h5loader import DEVICE_DATA_SHARE, HOST_DATA_CAP, data_on_device, default_window
from h5_fixtures import CHUNK, N, epoch, h5file, numpy_backend, write_h5, xb  # noqa: F401 (fixtures)

MB = 1 << 20


def _same_batches(a, b):
    assert len(a) == len(b)
    for i, ((xa, ya), (xb_, yb)) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(ya, yb, err_msg=f"labels of batch {i}")
        np.testing.assert_array_equal(xa, xb_, err_msg=f"images of batch {i}")


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=48),  # 1000 = 20 * 48 + 40: a last partial batch
        dict(batch_size=48, augment={"flip": True, "crop_pad": 2}),
        dict(batch_size=48, augment={"flip": True}, drop_last=True),
        dict(batch_size=100, buffer_chunks=3, augment={"crop_pad": 1}),  # the windowed plan of a big file
        dict(batch_size=300, shuffle=False),
    ],
    ids=["plain", "flip+crop", "drop_last", "windows", "file-order"],
)
def test_device_and_streaming_serve_the_same_batches(xb, h5file, kw):
    path, _ = h5file
    with (
        H5Loader(path, seed=7, preload=True, **kw) as dev,
        H5Loader(path, seed=7, preload=False, prefetch=1, **kw) as stream,
    ):
        assert dev.preloaded and not stream.preloaded
        for e in (0, 3):
            d, s = epoch(dev, e), epoch(stream, e)
            assert len(d) == len(dev)
            if not kw.get("drop_last"):
                assert len(d[-1][1]) == N - (len(d) - 1) * kw["batch_size"]  # the partial batch too
            _same_batches(d, s)
            np.testing.assert_array_equal(
                np.concatenate([y for _, y in d]), dev.order(e)[: sum(map(len, (y for _, y in d)))]
            )
        assert not np.array_equal(epoch(dev, 0)[0][1], epoch(dev, 1)[0][1]) or not kw.get("shuffle", True)


def test_device_path_reads_the_file_once(h5file, numpy_backend):
    """After the one copy the file is closed: every later batch comes from the device copy."""
    path, _ = h5file
    with H5Loader(path, batch_size=64, preload=True, augment={"flip": True}) as ld:
        assert not ld._file.id.valid and ld._X.dtype == np.uint8 and ld._X.shape[0] == N
        assert len(epoch(ld, 0)) == len(epoch(ld, 1)) == len(ld)


def test_default_window_is_a_whole_permutation_for_a_small_split(tmp_path, numpy_backend):
    """A class-sorted file still gives mixed batches on both paths: one window, the whole split."""
    n, classes = 1024, 4
    path = tmp_path / "sorted.h5"
    write_h5(path, n=n)  # labels are ids; ids // 256 is a class sorted through the file
    with H5Loader(path, batch_size=64, preload=False) as ld:
        assert ld.buffer_chunks == -(-n // CHUNK)
        assert len(ld._plan(0)) == 1
        for _, y in epoch(ld, 0):
            counts = np.bincount(y // (n // classes), minlength=classes)
            assert (counts > 0).all() and counts.max() <= 32  # every class, none more than half


def test_default_window_bounds_a_big_split():
    chunk, sample = 512, 3072
    assert default_window(10_000, chunk, sample) == -(-10_000 // chunk)  # 30 MB: one window
    big = h5loader.WHOLE_SHUFFLE_BYTES // sample + 1
    w = default_window(big, chunk, sample)
    assert w == min(16, (64 << 20) // (chunk * sample)) < -(-big // chunk)


def test_data_on_device_choice_with_an_injected_free_memory(numpy_backend):
    size = 100 * MB
    keep, why = data_on_device(size, "auto", free=int(size / DEVICE_DATA_SHARE))
    assert keep and "fits" in why and "available RAM" in why
    keep, why = data_on_device(size, "auto", free=int(size / DEVICE_DATA_SHARE) - 8)
    assert not keep and "exceeds" in why
    assert data_on_device(size, "yes", free=size) == (True, "asked for (yes)")  # all of it, if asked
    assert data_on_device(size, False, free=10**15) == (False, "asked for (no)")
    assert not data_on_device(HOST_DATA_CAP + 1, "auto", free=10**15)[0]  # NumPy: RAM cap
    with pytest.raises(ValueError, match="data_on_device: expected one of"):
        data_on_device(size, "maybe")


def test_yes_for_more_than_the_free_memory_is_refused_and_auto_never_chooses_it(numpy_backend, monkeypatch):
    with pytest.raises(ValueError) as e:
        data_on_device(100 * MB, "yes", free=100 * MB - 1, name="d.h5: split 'train'")
    assert str(e.value) == (
        "d.h5: split 'train': data_on_device yes needs 104,857,600 bytes (105 MB) on the device, more "
        "than the 104,857,599 bytes (105 MB) of available RAM; use auto or no (streamed from the file)"
    )
    with pytest.raises(ValueError, match=r"^the data: .* needs 5,000 bytes .* than the 4,999 bytes of"):
        data_on_device(5000, True, free=4999)
    monkeypatch.setattr(h5loader, "free_device_memory", lambda: 4999)  # measured when not given
    with pytest.raises(ValueError, match="4,999 bytes"):
        data_on_device(5000, "yes")
    for free in (0, 1000, 10**6, 10**9, 10**12):  # auto keeps a share of what is free, never all of it
        for nbytes in (1, free // 4, free // 4 + 1, free // 2, free, free + 1):
            keep, _ = data_on_device(nbytes, "auto", free=free)
            assert not keep or nbytes <= DEVICE_DATA_SHARE * free < free or nbytes == free == 0, (
                nbytes,
                free,
            )


def test_a_split_that_does_not_fit_is_refused_before_it_is_loaded(h5file, numpy_backend, monkeypatch):
    """H5Loader(preload='yes') names the file, the split and both sizes; nothing is allocated."""
    path, _ = h5file
    need = N * (3 * 4 * 5 + 8)  # 68,000 bytes
    monkeypatch.setattr(h5loader, "free_device_memory", lambda: need - 1)
    monkeypatch.setattr(H5Loader, "_load_all", lambda self: pytest.fail("loaded a split that does not fit"))
    with pytest.raises(ValueError) as e:
        H5Loader(path, "test", preload="yes")
    assert str(e.value) == (
        f"{path}: split 'test': data_on_device yes needs 68,000 bytes on the device, more than the "
        f"67,999 bytes of available RAM; use auto or no (streamed from the file)"
    )
    with H5Loader(path, "test") as ld:  # auto streams it
        assert not ld.preloaded


def test_gpunet_train_refuses_data_on_device_yes_that_does_not_fit(
    tmp_path, numpy_backend, monkeypatch, capsys
):
    """One error line naming the file and the split, exit 2, and no run folder: it is checked before
    training starts (a 2 KB free-memory figure, injected)."""
    from common import write_h5 as write_cifar
    from gpunet.cli import train

    home = tmp_path / "home"
    home.mkdir()
    write_cifar(home / "cifar10.h5")
    monkeypatch.setattr(h5loader, "free_device_memory", lambda: 2000)
    out = tmp_path / "run"
    argv = ["cifar10", "--data-dir", str(home), "--out", str(out), "--data-on-device", "yes"]
    assert (
        train.main([*argv, "--hidden", "8", "--epochs", "1", "--backend", "numpy", "--no-plots", "-q"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {home / 'cifar10.h5'}: split 'train': data_on_device yes needs "), err
    assert "more than the 2,000 bytes of available RAM" in err[0]
    assert not out.exists()


def test_auto_follows_the_free_memory(h5file, numpy_backend, monkeypatch):
    path, _ = h5file
    need = N * (3 * 4 * 5 + 8)
    monkeypatch.setattr(h5loader, "free_device_memory", lambda: int(need / DEVICE_DATA_SHARE))
    with H5Loader(path) as ld:
        assert ld.preloaded and ld.nbytes == need and "fits" in ld.placement
    monkeypatch.setattr(h5loader, "free_device_memory", lambda: int(need / DEVICE_DATA_SHARE) - 4)
    with H5Loader(path) as ld:
        assert not ld.preloaded and "exceeds" in ld.placement
    with H5Loader(path, preload="yes") as ld:
        assert ld.preloaded and ld.placement == "asked for (yes)"


def test_the_choice_is_said_once_per_run(h5file, numpy_backend, caplog):
    from gpunet.runs import describe_placement

    path, _ = h5file
    with H5Loader(path, preload="no") as tr, H5Loader(path, "test", preload="yes") as te:
        line = describe_placement({"train": tr, "val": te})
    assert line.count("\n") == 0
    assert "train: streamed from HDF5" in line and "asked for (no)" in line
    assert "val: on the device" in line


@pytest.mark.parametrize("bad", ["sometimes", 2])
def test_bad_preload_is_refused(h5file, numpy_backend, bad):
    path, _ = h5file
    with pytest.raises(ValueError, match="preload: expected"):
        H5Loader(path, preload=bad)


@pytest.mark.emulated
def test_device_path_moves_one_order_per_epoch_and_nothing_per_batch(h5file, monkeypatch):
    """On the emulated GPU: after the one copy of the split, an epoch uploads its order once; every
    batch is gathered, normalised and augmented from the device copy (the file is closed)."""
    from gpunet import backend

    path, _ = h5file
    with backend.using("emulated"):
        with H5Loader(path, batch_size=64, preload=True, augment={"flip": True, "crop_pad": 1}) as ld:
            moved = []
            real = backend.to_device
            monkeypatch.setattr(backend, "to_device", lambda a, *k: moved.append(a.shape) or real(a, *k))
            batches = list(ld)
            assert len(batches) == len(ld) and moved == [(N,)]  # the epoch's order, once
            assert all(backend.is_device_array(x) and backend.is_device_array(y) for x, y in batches)
