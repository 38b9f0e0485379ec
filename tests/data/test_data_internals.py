"""gpunet.data internals: the one normalisation rule, the seed streams, the package's
import graph, and the CUDA ring's bookkeeping exercised with a fake ``cupy`` (no GPU)."""

import numpy as np
import pytest

from gpunet import backend, data
from gpunet.data import H5Loader, prefetch
from h5_fixtures import SHAPE, epoch, h5file, numpy_backend, xb  # noqa: F401 (fixtures)


# ---------------------------------------------------------------- normalisation, seed streams


def test_normalize_is_the_one_rule(xb):
    """``normalize`` against float64 arithmetic; it never returns a view of its input."""
    raw = np.random.default_rng(3).integers(0, 256, (5,) + SHAPE, dtype=np.uint8)
    mean, std = np.array([100.0, 50.0, 200.0]), np.array([60.0, 30.0, 10.0])
    m, inv = data.norm_stats(mean, std, np.float32, shape=SHAPE)
    assert m.shape == inv.shape == (3, 1, 1)
    x = backend.to_device(raw)
    out = data.normalize(x, m, inv, np.float32)
    assert out.dtype == np.float32 and out.shape == (5,) + SHAPE
    ref = (raw - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(backend.to_numpy(out), ref, rtol=1e-5, atol=1e-5)
    f = x.astype(np.float64)
    assert data.normalize(f, None, None, np.float64) is not f
    np.testing.assert_array_equal(backend.to_numpy(f), raw)


def test_seed_streams_are_the_documented_seed_lists():
    assert data.dropout_seed(5, 2) == [5, 2, 1] and data.DROPOUT_STREAM == 1
    assert data.train_eval_seed(5) == [5, 2**31 - 1] and data.limit_seed(5) == [5, 7]
    assert data.augment_seed(5, 2) == [5, 2, 0xA06]


def test_data_modules_import_no_cycle():
    """The modules of gpunet.data import each other in one direction only."""
    import ast
    import pathlib

    pkg = pathlib.Path(data.__file__).parent
    graph = {}
    for p in pkg.glob("*.py"):
        if p.stem == "__init__":
            continue
        tree = ast.parse(p.read_text())
        graph[p.stem] = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module
        }
        # module length: a warning in tests/test_architecture.py, not a failure (issue 20)
    seen, done = set(), set()

    def visit(m, path):
        assert m not in seen or m in done, f"import cycle: {path}"
        if m in done:
            return
        seen.add(m)
        for d in graph.get(m, ()):
            visit(d, path + [d])
        done.add(m)

    for m in graph:
        visit(m, [m])


# ---------------------------------------------------------------- the CUDA ring, without a GPU


class _FakeEvent:
    def __init__(self, block=False, disable_timing=False):
        self.block, self.recorded_on = block, None

    def record(self, stream=None):
        self.recorded_on = stream

    def synchronize(self):
        pass


class _FakeStream:
    def __init__(self):
        self.synchronized, self.recorded = 0, []

    def synchronize(self):
        self.synchronized += 1

    def record(self):
        ev = _FakeEvent()
        self.recorded.append(ev)
        return ev


class _FakeCupy:
    """The sliver of ``cupy`` that the end of a run touches: streams and events."""

    def __init__(self):
        self.current = _FakeStream()
        cuda = type("cuda", (), {})()
        cuda.get_current_stream = lambda: self.current
        cuda.Event = _FakeEvent
        self.cuda = cuda


def test_a_superseded_epoch_marks_the_ring_consumed(h5file, numpy_backend, monkeypatch):
    """Issue 10, defect 1: a new ``iter()`` while the previous epoch's generator is suspended
    records a consumed-event on the current stream for both ring buffers (the last batch
    handed out is still being converted there), and the old generator, closed later, does
    not overwrite the new run's events. The new epoch serves the right batches."""
    path, _ = h5file
    cp = _FakeCupy()
    monkeypatch.setattr(backend, "cupy_module", lambda: cp)
    with H5Loader(path, batch_size=64, preload=False) as ref:
        want = epoch(ref, 1)
    with H5Loader(path, batch_size=64, preload=False) as ld:
        ld._copy_stream = copy = _FakeStream()
        old = iter(ld)
        next(old), next(old)  # suspended mid-epoch, e.g. after a divergence
        assert ld._consumed == [None, None]
        ld.set_epoch(1)
        new = iter(ld)  # supersedes it
        assert copy.synchronized == 1 and len(cp.current.recorded) == 1
        done = cp.current.recorded[0]
        assert ld._consumed == [done, done]
        first = next(new)
        old.close()  # the old generator's cleanup runs now
        assert ld._consumed == [done, done] and len(cp.current.recorded) == 1
        with pytest.raises(StopIteration):  # a superseded epoch just ends
            next(old)
        got = [first] + [b for b in new]
    got = [(backend.to_numpy(x), backend.to_numpy(y)) for x, y in got]
    assert len(got) == len(want)
    for (x1, y1), (x2, y2) in zip(got, want):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)


def test_copy_events_sleep_instead_of_spinning():
    """Issue 10, defect 6: the reader thread waits on blocking-sync events (no busy wait)."""
    cp, s = _FakeCupy(), _FakeStream()
    ev = prefetch.blocking_event(cp, s)
    assert ev.block is True and ev.recorded_on is s


# ---------------------------------------------------------------- the data-path benchmark


def test_bench_library_on_a_tiny_synthetic_file(tmp_path, numpy_backend):
    """``gpunet.data.bench``: the synthetic writer goes through the owner, and the measurements
    run end to end on a small file (the real run uses 50000 samples and a 2 GB file)."""
    from gpunet.data import bench, read_meta

    path = tmp_path / "syn.h5"
    bench.write_synthetic(path, 300, shape=(3, 4, 4), chunk=32, block=128)
    m = read_meta(path)
    assert m["format_version"] == data.FORMAT_VERSION and m["counts"] == {"train": 300}
    x, y = data.load_split(path, "train")
    np.testing.assert_array_equal(y, np.arange(300) % 10)
    np.testing.assert_array_equal(x[128:256] - x[:128], np.ones((128, 3, 4, 4), np.uint8))  # block offsets
    t = bench.loader_throughput(path, preload=False, batch_size=64)
    assert t["samples"] == 300 and t["samples_per_s"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn.h5"]
