"""gpunet-tune: Optuna study on a tiny HDF5 file, resumable SQLite storage, pruning hook."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")
from PIL import Image

from gpunet import runs, tuning
from gpunet.cli import tune
from gpunet.model import load_model
from common import ROOT, data_dir  # noqa: F401 (data_dir is a shared fixture)

FAST = [
    "--hidden",
    "8",
    "--epochs",
    "3",
    "--batch-size",
    "30",
    "--backend",
    "numpy",
    "-q",
    "--param",
    "hidden=8,16",
    "--param",
    "optimizer=adam",
    "--param",
    "reg=1e-5:1e-3:log",
]


def load(out, name="gpunet-tune"):
    """The study of a search folder, read through Optuna's own journal storage."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(out / "study.journal")))
    )


def n_trials(out):
    return len(load(out).trials)


def test_tune_runs_resumes_and_reports(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tune"
    calls = []
    real = optuna.trial.Trial.report
    monkeypatch.setattr(
        optuna.trial.Trial, "report", lambda self, v, s: (calls.append((self.number, s)), real(self, v, s))[1]
    )
    args = [
        "cifar10",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--trials",
        "2",
        "--sampler",
        "random",
        "--subset",
        "90",
        *FAST,
    ]
    assert tune.main(args) == 0
    assert n_trials(out) == 2
    assert sorted(calls) == [(t, e) for t in (0, 1) for e in range(3)]  # the hook reported every epoch
    printed = capsys.readouterr().out
    assert "val_acc" in printed and "best: trial" in printed

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"lr", "dropout", "reg", "hidden", "optimizer"} <= set(rows[0])
    vals = [float(r["val_acc"]) for r in rows]
    assert vals == sorted(vals, reverse=True)  # best first
    study = load(out)
    assert float(rows[0]["val_acc"]) == pytest.approx(study.best_value)
    model = load_model(out / "best_model.npz")
    assert model.hidden_dims == [int(study.best_params["hidden"])]
    assert model.meta["class_names"] == ["a", "b", "c"] and model.meta["trial"] == study.best_trial.number
    first = {t.number: t.params for t in study.trials}

    calls.clear()
    for png in ("optimization_history.png", "param_importances.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG"
    assert tune.main(args[:6] + ["1"] + args[7:] + ["--no-plots"]) == 0  # resume: one more trial
    study = load(out)
    assert len(study.trials) == 3
    assert {n for n, _ in calls} == {2}  # finished trials not rerun
    assert {t.number: t.params for t in study.trials[:2]} == first
    assert study.trials[2].params != study.trials[0].params  # a new point, not a replay


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruner_stops_a_trial_after_its_first_report(data_dir, tmp_path):
    base = runs.resolve_config("cifar10", None, {"hidden": [8], "epochs": 5, "batch_size": 30})
    base.data = str(data_dir / "cifar10.h5")
    space = tuning.check_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    objective = tuning.Objective(base, space, tmp_path, subset=60, say=lambda m: None)
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert [len(t.intermediate_values) for t in study.trials] == [1, 1]  # stopped after epoch 1 of 5
    assert [e for _, e, _ in objective.reported] == [0, 0]


def test_grid_sampler_stops_when_the_grid_is_done(data_dir, tmp_path):
    out = tmp_path / "tune"
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": [1e-3, 1e-2], "optimizer": ["sgd_momentum"]}))
    rc = tune.main(
        [
            "cifar10",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            "--trials",
            "5",
            "--sampler",
            "grid",
            "--space",
            str(space),
            "--hidden",
            "8",
            "--epochs",
            "2",
            "--batch-size",
            "30",
            "--backend",
            "numpy",
            "-q",
            "--no-plots",
            "--pruner",
            "none",
        ]
    )
    assert rc == 0
    study = load(out)
    assert sorted(t.params["lr"] for t in study.trials) == [1e-3, 1e-2]  # each grid point once


def test_space_parsing():
    assert tuning.parse_param("lr=1e-4:1e-2:log") == ("lr", {"low": 1e-4, "high": 1e-2, "log": True})
    assert tuning.parse_param("hidden=1024-512,512") == ("hidden", [[1024, 512], [512]])
    assert tuning.parse_param('optimizer=["adam","sgd"]') == ("optimizer", ["adam", "sgd"])
    assert tuning.check_space({"hidden": [[1024, 512], [512]]}) == {"hidden": ["1024-512", "512"]}
    grid = tuning.grid_of(
        {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": {"low": 64, "high": 256}}
    )
    assert np.allclose(grid["lr"], [1e-4, 1e-3, 1e-2]) and grid["batch_size"] == [64, 160, 256]
    for bad in ({"nope": [1]}, {"lr": {"low": 1, "high": 0}}, {"lr": {"low": 0, "high": 1, "log": True}}):
        with pytest.raises(ValueError):
            tuning.check_space(bad)


def test_bad_space_file_is_one_line_error(tmp_path, data_dir):
    (tmp_path / "s.json").write_text('{"lr": {"low": 1}}')
    env = {**os.environ, "GPUNET_BACKEND": "numpy"}
    p = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "tune.py"),
            "cifar10",
            "--data-dir",
            str(data_dir),
            "--space",
            str(tmp_path / "s.json"),
            "--out",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 's.json'}: lr: expected")


def test_space_parsing_of_conv_widths():
    assert tuning.parse_param("channels=8-16,8") == ("channels", [[8, 16], [8]])
    assert tuning.check_space({"channels": [[8, 16], [8]]}) == {"channels": ["8-16", "8"]}
    with pytest.raises(ValueError, match="expected sizes like"):
        tuning.parse_param("channels=8-x")
    assert set(tuning.CNN_SPACE) >= {"lr", "channels", "dropout"}


def test_tune_searches_convnet_settings(data_dir, tmp_path):
    """gpunet-tune --arch cnn: trials build convnets of the drawn widths; the best is saved as a
    Sequential."""
    from gpunet.nn import Conv2d, Sequential

    out = tmp_path / "tune-cnn"
    args = [
        "cifar10",
        "--arch",
        "cnn",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--trials",
        "2",
        "--sampler",
        "random",
        "--epochs",
        "2",
        "--batch-size",
        "30",
        "--backend",
        "numpy",
        "-q",
        "--no-plots",
        "--hidden",
        "8",
        "--param",
        "channels=4,4-8",
        "--param",
        "lr=1e-3:3e-3:log",
        "--param",
        "crop_pad=0,1",
    ]
    assert tune.main(args) == 0
    study = load(out)
    assert len(study.trials) == 2 and all(t.params["channels"] in ("4", "4-8") for t in study.trials)
    model = load_model(out / "best_model.npz")
    assert isinstance(model, Sequential)
    widths = [layer.out_channels for layer in model.layers if isinstance(layer, Conv2d)]
    assert "-".join(map(str, widths)) == study.best_params["channels"]


def test_a_bad_choice_in_the_space_is_one_line_before_any_trial(data_dir, tmp_path, capsys):
    """Issue 24 #15: {"lr": ["fast"]} failed inside trial 0, after Optuna's logged traceback."""
    space = tmp_path / "space.json"
    space.write_text('{"lr": ["fast"]}')
    out = tmp_path / "run"
    argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(out), "--space", str(space), "--trials", "1"]
    assert tune.main(argv + ["--backend", "numpy", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "space.json: lr: choice 'fast'" in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_optuna_records_of_failed_trials_carry_no_traceback():
    import logging

    from gpunet.tuning_workers import _not_an_interrupt

    try:
        raise OSError(28, "No space left on device")
    except OSError:
        import sys

        record = logging.LogRecord("optuna", logging.WARNING, "x", 1, "Trial 0 failed", None, sys.exc_info())
    assert _not_an_interrupt(record) and record.exc_info is None
    assert "Traceback" not in logging.Formatter().format(record)
