"""gpunet.benchmark: interleaved timing, the CNN case matching PyTorch's net, and gpunet-bench --cnn."""

import json

import numpy as np
import pytest

from gpunet import backend
from gpunet.benchmark import BenchConfig
from gpunet.benchmark.timing import interleaved, rates


def test_interleaved_takes_turns_and_skips_absent_names():
    calls = []
    fns = {k: (lambda k=k: calls.append(k), lambda: calls.append("sync")) for k in ("a", "b")}
    times = interleaved(fns, ["b", "missing", "a"], steps=2, repeats=3, warmup=1)
    assert set(times) == {"b", "a"} and all(len(ts) == 3 for ts in times.values())
    warm = ["b", "sync", "a", "sync"]
    rep = ["sync", "b", "b", "sync", "sync", "a", "a", "sync"]
    assert calls == warm + rep * 3


def test_rates_are_medians_of_samples_per_second():
    r = rates({"x": [1.0, 4.0, 2.0]}, batch=8, steps=5)
    assert r["x"] == pytest.approx(20.0)  # 40 samples / median 2 s
    assert r["x_all"] == pytest.approx([40.0, 10.0, 20.0])


def test_bench_config_refuses_bad_values():
    with pytest.raises(ValueError, match="--steps: expected >= 1, got 0"):
        BenchConfig(steps=0)
    with pytest.raises(ValueError, match="--batch-sizes"):
        BenchConfig(batch_sizes=[0])
    assert BenchConfig(cnn=True).batch_sizes == [128] and BenchConfig().batch_sizes == [256, 1024]
    with pytest.raises(ValueError, match="--view"):
        BenchConfig(view="both-ways")
    with pytest.raises(ValueError, match="--settle"):
        BenchConfig(settle=-1)


def test_interleaved_settles_untimed_and_takes_turns():
    from gpunet.benchmark.timing import best_of, interleaved

    calls = []
    fns = {k: (lambda k=k: calls.append(k), lambda: None) for k in ("a", "b")}
    t = interleaved(fns, ["b", "a", "missing"], steps=2, repeats=3, warmup=1, settle=0.05)
    assert calls == ["b", "a"] + ["b", "b", "a", "a"] * 3  # warm-up, then turns
    assert all(s < 0.05 for ts in t.values() for s in ts)  # the settle sleep is not timed
    assert best_of({"x_a": 2.0, "x_b": 5.0, "y_b": 9.0}, "x_", ["a", "b", "c"]) == "b"


def test_cnn_is_the_same_net_as_pytorchs():
    torch = pytest.importorskip("torch")
    from gpunet.benchmark.cnn import gpunet_cnn, torch_cnn

    g, t = gpunet_cnn(), torch_cnn(torch)
    ours = [tuple(v.shape) for k, v in g.params.items() if k.endswith((".W", ".gamma"))]
    theirs = []
    for m in t.modules():
        if isinstance(m, torch.nn.Conv2d):
            theirs.append(tuple(m.weight.shape))  # (F, C, KH, KW), as gpunet
        elif isinstance(m, torch.nn.BatchNorm2d):
            theirs.append(tuple(m.weight.shape))
        elif isinstance(m, torch.nn.Linear):
            theirs.append(tuple(m.weight.shape[::-1]))  # torch (out, in); gpunet W is (in, out)
    assert ours == theirs
    assert sum(v.size for v in g.params.values()) == sum(p.numel() for p in t.parameters())
    X = backend.to_device(np.zeros((2, 1, 48, 48), np.float32))
    assert tuple(g.loss(X).shape) == (2, 7)


def test_bench_cnn_writes_json(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from gpunet.cli import bench

    monkeypatch.setenv("GPUNET_BENCH_THREADS", "1")
    out = tmp_path / "cnn.json"
    previous = backend.selected()
    try:
        rc = bench.main(
            [
                "--cnn",
                "--settle",
                "0",
                "--threads",
                "1",
                "--batch-sizes",
                "2",
                "--steps",
                "1",
                "--repeats",
                "2",
                "--warmup",
                "0",
                "--json",
                str(out),
                "--backend",
                "numpy",
                "-q",
            ]
        )
    finally:
        backend.use(previous)
    assert rc == 0
    r = json.loads(out.read_text())["results"]
    assert [x["net"] for x in r] == ["cnn"] and r[0]["batch"] == 2 and len(r[0]["gpunet_train_all"]) == 2
    assert r[0]["train_ratio"] == pytest.approx(r[0]["gpunet_train"] / r[0]["torch_train"])
    assert np.isfinite(r[0]["final_loss"]) and "gemm_bound" not in r[0]


def test_bench_epoch_levers_time_each_lever_off(tmp_path, monkeypatch):
    from gpunet import threads
    from gpunet.cli import bench

    monkeypatch.setenv("GPUNET_BENCH_THREADS", "1")
    out = tmp_path / "levers.json"
    previous = backend.selected()
    try:
        rc = bench.main(
            [
                "--settle",
                "0",
                "--threads",
                "1",
                "--nets",
                "A",
                "--batch-sizes",
                "8",
                "--repeats",
                "1",
                "--view",
                "epoch",
                "--levers",
                "--no-torch",
                "--epoch-samples",
                "32",
                "--json",
                str(out),
                "--backend",
                "numpy",
                "-q",
            ]
        )
    finally:
        backend.use(previous)
    assert rc == 0
    (r,) = json.loads(out.read_text())["results"]
    for lever in ("fused_update_gain", "prefetch_gain", "concurrent_gain", "pin_gain"):
        assert r[lever] > 0, lever
    assert r["concurrent_gain"] == pytest.approx(r["gpunet_epoch"] / r["gpunet_epoch_sequential"])
    assert threads.concurrent_products()  # the lever is back on after its epochs
