"""Issue 13, gpunet-train: no lost runs, resume from anywhere with new pace settings, divergence
that stops and keeps the best model, one-line errors. One test per defect, on a tiny HDF5 file."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from common import ROOT, data_dir  # noqa: F401 (data_dir is a shared fixture)

from gpunet import divergence, runfolder, runs
from gpunet.cli import train

FAST = [
    "--hidden",
    "16",
    "--batch-size",
    "20",
    "--backend",
    "numpy",
    "-q",
    "--no-plots",
    "--schedule",
    "constant",
]


def new_run(data_dir, out, *extra, epochs=2):
    return train.main(
        ["cifar10", "--data-dir", str(data_dir), "--out", str(out), "--epochs", str(epochs), *FAST, *extra]
    )


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def last_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_out_holding_a_run_needs_resume_or_force(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert new_run(data_dir, out, "--seed", "1") == 0
    before = snapshot(out)
    assert new_run(data_dir, out, "--seed", "2", epochs=3) == 2
    line = last_line(capsys)
    assert line.startswith("error:") and "already holds a run" in line and "--force" in line
    assert snapshot(out) == before  # nothing written, nothing lost
    assert new_run(data_dir, out, "--seed", "2", "--force", epochs=3) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 2 and cfg["epochs"] == 3
    assert json.loads((out / "metrics.json").read_text())["epochs_done"] == 3


def test_failed_force_keeps_the_old_run(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert new_run(data_dir, out) == 0
    before = snapshot(out)
    assert new_run(data_dir, out, "--force", "--crop-pad", "3") == 2  # 4x4 images: at most 2
    assert "crop_pad: expected 0..2 pixels" in last_line(capsys)
    assert snapshot(out) == before


def test_second_trainer_on_a_folder_in_use_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with runfolder.owned(out):  # a first trainer holds it
        assert new_run(data_dir, out) == 2
        line = last_line(capsys)
        assert "in use by another gpunet-train" in line and f"pid {os.getpid()}" in line
        assert runfolder.run_files(out) == []
        assert train.main(["--resume", str(out), "--backend", "numpy", "-q"]) == 2
    assert new_run(data_dir, out) == 0  # released when the holder is done


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from gpunet import runfolder\n"
            "with runfolder.owned(sys.argv[1]):\n print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runfolder.RunFolderError, match="in use by another gpunet-train"):
            with runfolder.owned(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with runfolder.owned(out):  # SIGKILL released it
        pass


def test_resume_works_from_another_working_directory(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(["cifar10", "--data-dir", "data", "--out", "run", "--epochs", "2", *FAST]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"] == str(data_dir / "cifar10.h5")  # absolute
    monkeypatch.chdir("/")
    assert train.main(["--resume", str(tmp_path / "run"), "--epochs", "3", "--backend", "numpy", "-q"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_done"] == 3


def test_relative_data_path_is_taken_from_the_run_folder(data_dir, tmp_path):
    assert new_run(data_dir, tmp_path / "run") == 0
    path = tmp_path / "run" / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "data": "../data/cifar10.h5"}))
    assert runs.load_config(tmp_path / "run").data == str(data_dir / "cifar10.h5")


def test_resume_accepts_more_epochs_and_a_new_lr_and_records_them(data_dir, tmp_path):
    out = tmp_path / "run"
    assert new_run(data_dir, out, "--lr", "1e-3") == 0
    assert (
        train.main(
            [
                "--resume",
                str(out),
                "--epochs",
                "4",
                "--lr",
                "2e-4",
                "--patience",
                "5",
                "--backend",
                "numpy",
                "-q",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["epochs"] == 4 and cfg["lr"] == 2e-4 and cfg["patience"] == 5
    assert cfg["resumes"] == [
        {
            "at_epoch": 2,
            "changed": {
                "epochs": {"from": 2, "to": 4},
                "lr": {"from": 1e-3, "to": 2e-4},
                "patience": {"from": None, "to": 5},
            },
        }
    ]
    hist = json.loads((out / "history.json").read_text())
    assert hist["lr"] == pytest.approx([1e-3, 1e-3, 2e-4, 2e-4])  # constant schedule: the new lr applies


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--hidden", "32"], "drop --hidden"),
        (["--batch-size", "10"], "drop --batch-size"),
        (["--seed", "3"], "drop --seed"),
        (["--arch", "cnn"], "drop --arch"),
        (["--crop-pad", "1"], "drop --crop-pad"),
        (["--data-dir", "elsewhere"], "drop --data-dir"),
        (["--force"], "drop --force"),
        (["--epochs", "1"], "at least the 2 epochs"),
        (["--lr", "-1"], "lr: expected > 0"),
    ],
)
def test_resume_refuses_changes_to_the_model_or_data(data_dir, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    assert new_run(data_dir, out) == 0
    before = snapshot(out)
    assert train.main(["--resume", str(out), *flags, "--backend", "numpy", "-q"]) == 2
    line = last_line(capsys)
    assert line.startswith("error:") and needle in line
    assert snapshot(out) == before


def test_resume_of_a_no_plots_run_draws_no_plots(data_dir, tmp_path):
    out = tmp_path / "run"
    assert new_run(data_dir, out) == 0  # FAST has --no-plots
    assert train.main(["--resume", str(out), "--epochs", "3", "--backend", "numpy", "-q"]) == 0
    assert not (out / "curves.png").exists() and not (out / "confusion.png").exists()


def test_first_epoch_divergence_names_no_missing_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert new_run(data_dir, out, "--optimizer", "sgd", "--lr", "1000") == 2
    line = last_line(capsys)
    assert (
        "training diverged" in line and "no checkpoint was written" in line and "solver.ckpt.npz" not in line
    )
    assert "--resume" in line and not (out / "solver.ckpt.npz").exists() and not (out / "model.npz").exists()
    assert train.main(["--resume", str(out), "--lr", "1e-3", "--backend", "numpy", "-q"]) == 0  # as advised


def test_exploding_loss_without_nan_stops_and_keeps_the_best_model(data_dir, tmp_path):
    cfg = runs.resolve_config(
        "cifar10", None, {"hidden": [16], "epochs": 6, "batch_size": 20, "schedule": "constant"}
    )
    cfg.data = str(data_dir / "cifar10.h5")

    def blow_up(solver, epoch):  # after epoch 2, weights 1e6 x: losses explode but stay finite
        if epoch == 1:
            solver.model.set_params({k: v * 1e6 for k, v in solver.model.params.items()})

    with pytest.raises(runs.TrainingDiverged) as e:
        runs.train_run(cfg, tmp_path / "run", on_epoch_end=blow_up, verbose=False, plots=False)
    msg = str(e.value)
    ckpt = tmp_path / "run" / "solver.ckpt.npz"
    assert "exceeded" in msg or "magnitude" in msg
    assert f"checkpoint {ckpt} (epoch 2)" in msg and ckpt.exists() and "model.npz holds the best epoch" in msg
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist["val_acc"]) == 2 and all(np.isfinite(hist["loss"]))
    best = hist["best_epoch"]
    with np.load(tmp_path / "run" / "model.npz") as m, np.load(ckpt) as c:
        for k in ("W1", "b1", "W2", "b2"):
            np.testing.assert_array_equal(m[k], c[f"best/{k}"])  # the best epoch, not the exploded state
            assert np.abs(m[k]).max() < 100
    assert best in (1, 2)


def test_divergence_bounds():
    class Fake:
        checkpoint_path, epoch, best_params = None, 0, {}
        loss_history = [2.3]

        class model:
            params = {"W1": np.ones((2, 2))}

    divergence.check_epoch(Fake, [2.0, 50.0, 2299.0], 1)  # below 1000 x the first loss
    with pytest.raises(divergence.TrainingDiverged, match="iteration 2.*no checkpoint"):
        divergence.check_epoch(Fake, [2.0, 2301.0], 1)
    Fake.model.params = {"W1": np.full((2, 2), 9.5e16)}  # |W1| of the --lr 0.1 report
    with pytest.raises(divergence.TrainingDiverged, match="W1 reached magnitude 9.5e"):
        divergence.check_epoch(Fake, [2.0], 1)


def test_full_disk_during_training_names_the_file(data_dir, tmp_path, monkeypatch, capsys):
    import gpunet.io

    def full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gpunet.io.np, "savez", full)
    assert new_run(data_dir, tmp_path / "run") == 2
    line = last_line(capsys)
    assert line.startswith("error:") and "No space left on device" in line
    assert str(tmp_path / "run" / "solver.ckpt.npz") in line
    assert not (tmp_path / "run").exists()  # nothing useful was written: config.json and the lock go too


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--crop-pad", "1000"], "crop_pad: expected 0..64"),
        (["--lr", "nan"], "lr: expected a finite"),
        (["--lr", "inf"], "lr: expected a finite"),
        (["--momentum", "1.5"], "momentum: expected"),
        (["--seed", "-1"], "seed: expected"),
        (["--hidden", "10000000"], "hidden: expected sizes up to"),
        (["--gamma", "0"], "gamma: expected > 0"),
        (["--step-size", "0"], "step_size: expected >= 1"),
        (["--min-lr-ratio", "2"], "min_lr_ratio: expected"),
        (["--warmup-epochs", "9"], "warmup_epochs: expected"),
    ],
)
def test_out_of_range_options_are_one_line(data_dir, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    assert new_run(data_dir, out, *flags) == 2
    line = last_line(capsys)
    assert line.startswith("error:") and needle in line
    assert not out.exists()  # refused before anything was written


def test_temporaries_of_a_killed_trainer_are_swept(data_dir, tmp_path):
    out = tmp_path / "run"
    assert new_run(data_dir, out) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = [
        out / ".solver.ckpt.npz.tmp-abc123.npz",
        out / ".curves.png.tmp-x.png",
        out / f".history.json.tmp-{dead.pid}-0123abcd.json",
        out / f".notes.txt.tmp-{dead.pid}-89abcdef.txt",
    ]
    for p in stale:
        p.write_bytes(b"")
    (out / "notes.tmp-keep").write_text("mine")
    assert train.main(["--resume", str(out), "--backend", "numpy", "-q"]) == 0
    assert not any(p.exists() for p in stale) and (out / "notes.tmp-keep").exists()


def test_full_disk_on_a_real_tmpfs_names_the_file(data_dir, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs here: {mounted.stderr.decode().strip()}")
    try:  # a 2000-wide layer: the checkpoint (~1.5 MB) does not fit
        assert new_run(data_dir, disk / "run", "--hidden", "2000") == 2
        line = last_line(capsys)
        assert line.startswith("error:") and "No space left on device" in line
        assert str(disk / "run" / "solver.ckpt.npz") in line
        assert not (disk / "run").exists()  # nothing useful was written: config.json and the lock go too
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_resume_with_more_patience_continues_a_run_that_stopped_early(data_dir, tmp_path):
    out = tmp_path / "run"
    assert new_run(data_dir, out, "--patience", "1", "--lr", "1e-6", epochs=8) == 0  # too slow: stops early
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_early"] and m["epochs_done"] < 8
    done = len(json.loads((out / "history.json").read_text())["val_acc"])
    assert (
        train.main(["--resume", str(out), "--patience", "50", "--lr", "1e-3", "--backend", "numpy", "-q"])
        == 0
    )
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["val_acc"]) == 8 and not hist["stopped_early"]
    assert json.loads((out / "config.json").read_text())["resumes"][0]["at_epoch"] == done


@pytest.mark.parametrize(
    "damage, needle",
    [
        ({"epoch": "x"}, "__meta__.epoch: expected an integer"),
        ({"model": 5}, "__meta__.model: expected a JSON object"),
        ({"history": [1]}, "missing entries ['history.loss'"),
        ({"opt_scalars": [1]}, "__meta__.opt_scalars"),
        ({"version": 99}, "version 99"),
        ("junk", "unexpected entry ['junk']"),
        ("truncate", "truncated or damaged zip"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_and_changes_nothing(
    data_dir, tmp_path, capsys, monkeypatch, damage, needle
):
    import zipfile

    out = tmp_path / "run"
    assert new_run(data_dir, out) == 0
    ckpt = out / "solver.ckpt.npz"
    with np.load(ckpt) as z:
        arrays, desc = {k: z[k] for k in z.files if k != "__meta__"}, json.loads(z["__meta__"].tobytes())
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    else:
        if damage == "junk":
            arrays["junk"] = np.zeros(10)
        else:
            desc.update(damage)
        np.savez(ckpt, **arrays, __meta__=np.frombuffer(json.dumps(desc).encode(), np.uint8))
    before = snapshot(out)
    opened = []
    real = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, name, *a, **kw: (
            opened.append(getattr(name, "filename", name)),
            real(self, name, *a, **kw),
        )[1],
    )
    assert train.main(["--resume", str(out), "--epochs", "3", "--backend", "numpy", "-q"]) == 2
    line = last_line(capsys)
    assert line.startswith("error:") and str(ckpt) in line and needle in line
    assert snapshot(out) == before and "junk.npy" not in opened


def test_data_with_a_nan_mean_is_refused_before_training(data_dir, tmp_path, capsys):
    import h5py

    with h5py.File(data_dir / "cifar10.h5", "r+") as f:
        f.attrs["mean"] = [float("nan")] * 3
    out = tmp_path / "run"
    assert new_run(data_dir, out) == 2
    line = last_line(capsys)
    assert line.startswith("error:") and "cifar10.h5" in line and "finite" in line
    assert not out.exists()  # no empty run folder left behind


def test_full_disk_writing_the_history_names_the_run_folder(data_dir, tmp_path, monkeypatch, capsys):
    from gpunet import solver as solver_module

    def full(path, obj, indent=1):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(solver_module, "write_json", full)
    assert new_run(data_dir, tmp_path / "run") == 2
    line = last_line(capsys)
    assert line.startswith("error:") and "No space left on device" in line and str(tmp_path / "run") in line
