"""gpunet-bench --profile (gpunet.benchmark.profile) and the machine record in the bench's JSON."""

import json

import pytest

from gpunet import backend


@pytest.mark.parametrize("cnn", [False, True])
def test_profile_times_every_pass_and_records_the_machine(tmp_path, monkeypatch, capsys, cnn):
    pytest.importorskip("torch")
    from gpunet.cli import bench

    monkeypatch.setenv("GPUNET_BENCH_THREADS", "1")
    out = tmp_path / "profile.json"
    previous = backend.selected()
    args = ["--profile", "--settle", "0", "--threads", "1", "--batch-sizes", "4", "--repeats", "2"]
    args += ["--warmup", "0", "--json", str(out), "--backend", "numpy", "-q"]
    try:
        rc = bench.main(args + (["--cnn"] if cnn else ["--nets", "A"]))
    finally:
        backend.use(previous)
    assert rc == 0
    doc = json.loads(out.read_text())
    m = doc["machine"]
    assert m["cores_usable"] >= 1 and isinstance(m["simd"], list) and m["l2_bytes"] > 0
    assert len(m["loadavg_1_5_15"]) == 3 and "blas_core" in m
    (r,) = doc["results"]
    assert r["view"] == "profile" and r["net"] == ("cnn" if cnn else "A") and r["batch"] == 4
    for side in ("gpunet", "torch"):
        assert set(r["totals"][side]) == {"data", "forward", "loss", "backward", "update"}
        assert all(v > 0 for v in r["totals"][side].values())
    layers = {row["layer"] for row in r["rows"]}
    assert ({"Conv2d", "BatchNorm2d", "MaxPool2d"} if cnn else {"Linear", "ReLU"}) <= layers
    text = capsys.readouterr().out
    assert "profile:" in text and "**step**" in text and "SIMD" in text
