"""gpunet-train end to end on a tiny HDF5 file written here through the format's owner (read back with
h5py)."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from gpunet import runs
from gpunet.cli import train
from gpunet.data import h5file as fmt

from common import CLASSES, ROOT, data_dir, write_h5  # noqa: F401 (data_dir: a fixture)

FAST = ["--hidden", "16", "--epochs", "3", "--batch-size", "20", "--backend", "numpy", "-q", "--no-plots"]


def reference_predictions(model_path, h5_path, split):
    """Predictions computed independently of gpunet: NumPy matmuls on the saved parameters."""
    with np.load(model_path) as z:
        params = {k: z[k].astype(np.float64) for k in z.files if k != "__meta__"}
        meta = json.loads(z["__meta__"].tobytes())["meta"]
    with h5py.File(h5_path, "r") as f:
        x, y = f[split]["x"][...].astype(np.float64), f[split]["y"][...]
    x = (x - np.reshape(meta["mean"], (1, -1, 1, 1))) / np.reshape(meta["std"], (1, -1, 1, 1))
    h = x.reshape(len(x), -1)
    L = len([k for k in params if k.startswith("W")])
    for i in range(1, L + 1):
        h = h @ params[f"W{i}"] + params[f"b{i}"]
        if i < L:
            h = np.maximum(h, 0)
    return y, h.argmax(axis=1)


def test_train_writes_a_complete_run_folder(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = train.main(["cifar10", "--data-dir", str(data_dir), "--out", str(out), "--lr", "3e-3", *FAST[:-1]])
    assert rc == 0
    assert "test accuracy" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    settings = {k: v for k, v in cfg.items() if k not in ("plots", "resumes", "data_sha256")}
    assert runs.TrainConfig.from_dict(cfg).to_dict() == settings  # round-trips
    assert cfg["plots"] is True and cfg["resumes"] == [] and os.path.isabs(cfg["data"])
    assert cfg["hidden"] == [16] and cfg["lr"] == 3e-3 and cfg["epochs"] == 3 and cfg["optimizer"] == "adam"
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["val_acc"]) == len(hist["train_acc"]) == len(hist["lr"]) == 3
    assert len(hist["loss"]) == 3 * 6  # 120 / 20 batches per epoch
    assert all(np.isfinite(hist["train_acc"]))
    m = json.loads((out / "metrics.json").read_text())
    y, pred = reference_predictions(out / "model.npz", data_dir / "cifar10.h5", "test")
    assert m["split"] == "test" and m["accuracy"] == pytest.approx((y == pred).mean())
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (y, pred), 1)
    assert m["report"]["confusion_matrix"] == cm.tolist()
    assert len(m["report"]["per_class"]) == 3 and "f1" in m["report"]["macro_avg"]
    assert m["backend"] == "numpy" and m["train_time_s"] > 0
    assert m["accuracy"] > 0.6  # it learned something
    for png in ("curves.png", "confusion.png"):
        with Image.open(out / png) as im:
            im.verify()
            assert im.format == "PNG"


def test_config_file_and_flag_precedence(data_dir, tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"hidden": [8, 8], "dropout": 0.1, "epochs": 2, "optimizer": "nesterov"}))
    cfg = runs.resolve_config("cifar10", conf, {"dropout": 0.3})
    assert cfg.hidden == [8, 8] and cfg.dropout == 0.3 and cfg.optimizer == "nesterov" and cfg.epochs == 2
    assert cfg.schedule == runs.RECIPES[("cifar10", "fc")]["schedule"]
    out = tmp_path / "run"
    assert (
        train.main(
            [
                "cifar10",
                "--config",
                str(conf),
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--backend",
                "numpy",
                "-q",
                "--no-plots",
                "--batch-size",
                "40",
                "--schedule",
                "step",
            ]
        )
        == 0
    )
    saved = runs.load_config(out)
    assert saved.hidden == [8, 8] and saved.schedule == "step" and saved.batch_size == 40


def test_no_test_split_reports_val(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    write_h5(d / "fer2013.h5", n=(60, 30), splits=("train", "val"))
    out = tmp_path / "run"
    assert train.main(["fer2013", "--data-dir", str(d), "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "val" and not m["test_split_present"] and "val_accuracy" in m
    assert "no test split" in capsys.readouterr().out


def test_resume_after_interruption_matches_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    args = ["cifar10", "--data-dir", str(data_dir), *FAST, "--epochs", "4", "--dropout", "0.3", "--augment"]
    assert train.main([*args, "--out", str(tmp_path / "full")]) == 0

    real = runs.train_run

    def interrupted(cfg, run_dir, **kw):  # Ctrl-C after the second epoch
        def hook(solver, epoch):
            if epoch == 1:
                raise KeyboardInterrupt

        return real(cfg, run_dir, **{**kw, "on_epoch_end": hook})

    monkeypatch.setattr(runs, "train_run", interrupted)
    part = tmp_path / "part"
    assert train.main([*args, "--out", str(part)]) == 130
    assert (part / "config.json").exists() and (part / "solver.ckpt.npz").exists()
    assert not (part / "metrics.json").exists()
    monkeypatch.setattr(runs, "train_run", real)
    assert train.main(["--resume", str(part), "--backend", "numpy", "-q", "--no-plots"]) == 0

    full_m, part_m = (np.load(p / "model.npz") for p in (tmp_path / "full", part))
    for k in ("W1", "b1", "W2", "b2"):
        np.testing.assert_array_equal(full_m[k], part_m[k])
    h_full, h_part = (json.loads((p / "history.json").read_text()) for p in (tmp_path / "full", part))
    assert h_full["val_acc"] == h_part["val_acc"] and len(h_part["loss"]) == len(h_full["loss"])


def test_find_data_errors_and_conversion_hook(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="cifar10.h5: no such file.*--source"):
        runs.find_data("cifar10", tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="cannot be downloaded.*kaggle.*--source"):
        runs.find_data("fer2013", tmp_path, download=True)
    with pytest.raises(FileNotFoundError, match="missing.tar.gz: no such file"):
        runs.find_data("cifar10", tmp_path, source=str(tmp_path / "missing.tar.gz"))
    src = tmp_path / "cifar-10-python.tar.gz"
    src.write_bytes(b"")
    assert runs.find_source("cifar10", tmp_path) == src

    import data_prep

    calls = []

    def fake_convert(dataset, source, out, **kw):
        calls.append((dataset, source, out, kw.get("download"), kw.get("cache_dir")))
        return write_h5(out)

    monkeypatch.setattr(data_prep, "convert", fake_convert)
    out = runs.find_data("cifar10", tmp_path)  # a source in the data home
    assert out == str(tmp_path / "cifar10.h5") and calls == [("cifar10", str(src), out, False, str(tmp_path))]
    assert runs.find_data("cifar10", tmp_path, source=str(src)) == out and len(calls) == 1  # reused
    home = tmp_path / "home"
    monkeypatch.setenv("GPUNET_DATA", str(home))
    out = runs.find_data("cifar10")  # nothing there: download into it
    assert out == str(home / "cifar10.h5") and calls[-1] == ("cifar10", None, out, True, str(home))

    def failing(*a, **kw):
        raise data_prep.PrepError(f"{src}: not a gzip archive")

    monkeypatch.setattr(data_prep, "convert", failing)
    with pytest.raises(ValueError, match="not a gzip archive"):
        runs.find_data("cifar10", tmp_path / "e")


def test_data_home_defaults_to_the_user_cache(monkeypatch, tmp_path):
    from gpunet import datasets

    monkeypatch.delenv("GPUNET_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.data_home() == tmp_path / ".cache" / "gpunet"
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "x"))
    assert datasets.data_home() == tmp_path / "x"


def test_offline_download_is_one_line_naming_the_url_and_source(tmp_path):
    env = {
        **os.environ,
        "GPUNET_BACKEND": "numpy",
        "GPUNET_DATA": str(tmp_path / "home"),
        "GPUNET_CIFAR10_URL": "http://127.0.0.1:9/cifar-10-python.tar.gz",
    }  # nothing listens there
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "cifar10", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "127.0.0.1:9/cifar-10-python.tar.gz" in last and "--source" in last
    assert not (tmp_path / "home" / "cifar10.h5").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["cifar10", "--optimizer", "adagrad"], "invalid choice"),
        (["cifar10", "--schedule", "linear"], "invalid choice"),
        (["cifar10", "--dropout", "1.5"], "dropout: expected"),
        (["cifar10", "--data-dir", "{tmp}/empty", "--no-download"], "cifar10.h5: no such file"),
        (["cifar10", "--data-dir", "{tmp}/bad"], "bad/cifar10.h5: expected an HDF5 file"),
        (["cifar10", "--config", "{tmp}/bad.json"], "bad.json: not valid JSON"),
    ],
)
def test_user_errors_are_one_line(tmp_path, argv, needle):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cifar10.h5").write_text("not hdf5")
    (tmp_path / "bad.json").write_text("{oops")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    env = {**os.environ, "GPUNET_BACKEND": "numpy", "GPUNET_DATA": str(tmp_path / "empty")}
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *argv, "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert p.returncode != 0
    assert needle in p.stderr.strip().splitlines()[-1] and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(("error:", "gpunet-train: error:"))


def test_script_wrapper_help():
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "--resume" in p.stdout


@pytest.mark.parametrize("empty", ["val", "test"])
def test_an_empty_split_is_refused_before_training(tmp_path, capsys, empty):
    """Issue 24 #8: an empty val split used to train fully, write model.npz and the checkpoint, then fail."""
    d = tmp_path / "data"
    d.mkdir()
    write_h5(d / "cifar10.h5")
    with h5py.File(d / "cifar10.h5", "a") as f:  # the split emptied in place (the writer refuses 0 rows)
        x, y = f[empty]["x"], f[empty]["y"]
        shape, xdt, ydt = x.shape[1:], x.dtype, y.dtype
        del f[empty]["x"], f[empty]["y"]
        f[empty].create_dataset("x", shape=(0,) + shape, dtype=xdt)
        f[empty].create_dataset("y", shape=(0,), dtype=ydt)
    out = tmp_path / "run"
    assert train.main(["cifar10", "--data-dir", str(d), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cifar10.h5" in err[-1] and f"['{empty}']" in err[-1], err
    assert not out.exists()


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("content", ["foreign_config", "other_files", "run_plus_other"])
def test_a_folder_that_is_not_a_gpunet_run_is_never_written_into(data_dir, tmp_path, capsys, force, content):
    """Issue 24 #3: --force replaced an unrelated config.json; --out ~ mixed a run into a full folder."""
    out = tmp_path / "run"
    if content == "run_plus_other":
        assert train.main(["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST]) == 0
        (out / "notes.txt").write_text("mine")
    else:
        out.mkdir()
        name = "config.json" if content == "foreign_config" else "notes.txt"
        (out / name).write_text('{"theme": "dark"}')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST] + (["--force"] if force else [])
    capsys.readouterr()
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {out}: holds files that are not a gpunet run's"), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched, nothing added


def test_force_replaces_a_gpunet_run_as_a_whole(data_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST]
    assert train.main(argv) == 0
    assert train.main(argv) == 2  # a run is there
    assert train.main(argv + ["--force"]) == 0
    assert (out / "model.npz").exists() and (out / "config.json").exists()


def test_resume_refuses_other_data_unless_told(data_dir, tmp_path, capsys):
    """Issue 24 #4: pointing config.json at another file and resuming trained on it without a word."""
    out = tmp_path / "run"
    assert train.main(["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg["data_sha256"]) == 64
    other = write_h5(tmp_path / "other.h5", seed=7)
    cfg["data"] = str(other)
    (out / "config.json").write_text(json.dumps(cfg))
    before = (out / "solver.ckpt.npz").read_bytes()
    capsys.readouterr()
    resume = ["--resume", str(out), "--epochs", "4", "--backend", "numpy", "-q", "--no-plots"]
    assert train.main(resume) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "other.h5: not the data this run started with" in err[-1] and "--force-data" in err[-1], err
    assert (out / "solver.ckpt.npz").read_bytes() == before  # nothing trained
    assert train.main(resume + ["--force-data"]) == 0
    assert json.loads((out / "config.json").read_text())["data_sha256"] != cfg["data_sha256"]
