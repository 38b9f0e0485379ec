"""gpunet-train --data-on-device (issue 21): the split kept on the device or streamed from HDF5
trains the same model, batch for batch, and the run says once which path it took."""

import json

import numpy as np
import pytest

from gpunet import runs
from gpunet.cli import train

from common import data_dir  # noqa: F401 (a fixture)

ARGS = ["--hidden", "16", "--epochs", "2", "--batch-size", "24", "--backend", "numpy", "--no-plots"]


def test_both_paths_train_the_same_model(data_dir, tmp_path, capsys):  # noqa: F811
    runs_ = {}
    for place in ("yes", "no"):
        out = tmp_path / place
        argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(out), "--crop-pad", "2", *ARGS]
        assert train.main([*argv, "--data-on-device", place]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("data: ")]
        where = "on the device" if place == "yes" else "streamed from HDF5"
        assert len(said) == 1 and f"train: {where} (asked for ({place}))" in said[0], said
        assert json.loads((out / "config.json").read_text())["data_on_device"] == place
        runs_[place] = out
    hy, hn = (json.loads((runs_[p] / "history.json").read_text()) for p in ("yes", "no"))
    assert hy["loss"] == hn["loss"] and len(hy["loss"]) == 2 * 5  # 120 / 24 batches, identical
    with np.load(runs_["yes"] / "model.npz") as a, np.load(runs_["no"] / "model.npz") as b:
        for k in a.files:
            if k != "__meta__":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_the_setting_is_checked_and_may_change_on_resume():
    cfg = runs.TrainConfig(data_on_device="no")
    with pytest.raises(ValueError, match="data_on_device: expected one of auto, yes, no"):
        runs.TrainConfig.from_dict({"data_on_device": "gpu"})
    from gpunet.config import resume_changes

    new, changed = resume_changes(cfg, {"data_on_device": "yes"}, "run")
    assert new.data_on_device == "yes" and changed == {"data_on_device": {"from": "no", "to": "yes"}}
