"""gpunet-overfit: the 50-image sanity check, on synthetic data and on a prepared HDF5 file."""

import os
import subprocess
import sys

import numpy as np

from gpunet import runs
from gpunet.cli import overfit
from common import ROOT, write_h5


def test_synthetic_reaches_100_percent_and_exits_0():
    env = {**os.environ, "GPUNET_BACKEND": "numpy"}
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "overfit.py"), "--synthetic"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "OK: 100% training accuracy on 50 images" in p.stdout
    epochs = [line for line in p.stdout.splitlines() if line.startswith("epoch")]
    assert 1 <= len(epochs) <= 20 and epochs[-1].endswith("1.000")


def test_too_few_epochs_exits_1(capsys):
    assert overfit.main(["--synthetic", "--epochs", "1", "--lr", "1e-5", "--backend", "numpy", "-q"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_prepared_file_and_library_result(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    write_h5(d / "cifar10.h5", n=(80, 10, 10), shape=(3, 8, 8), classes=list("abcdefghij"))
    assert overfit.main(["--data-dir", str(d), "--backend", "numpy", "-q"]) == 0
    X, y = runs.load_split(str(d / "cifar10.h5"), "train", 50)
    assert X.shape == (50, 3, 8, 8) and len(np.unique(y)) > 1
    reached, epochs, accs = runs.overfit_small(X, y, 10, say=lambda m: None)
    assert reached and accs[-1] == 1.0 and epochs == len(accs) <= 20


def test_missing_data_is_one_line_error(tmp_path):
    env = {**os.environ, "GPUNET_BACKEND": "numpy", "GPUNET_DATA": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "overfit.py"), "--no-download"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/cifar10.h5: no such file")
