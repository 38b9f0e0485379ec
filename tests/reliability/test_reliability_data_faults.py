"""Issue 24 #6, #11 and #14: data files that lie about their size, corrupt gzip chunks, a tarball
holding a member twice, and errors that named no file. Each test names its case; the damaged
files come from ``tests/fault_files.py``."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from common import ROOT
from fault_files import (
    duplicate_member_tar,
    gzip_corrupt_h5,
    huge_n_h5,
    no_class_names_h5,
    two_channel_model,
)

from data_prep import cli as prep_cli
from gpunet.cli import evaluate, predict, train
from gpunet.data import h5check, load_split
from gpunet.model import FullyConnectedNet

FAST = ["--hidden", "8", "--epochs", "1", "--batch-size", "8", "--no-plots", "--backend", "numpy", "-q"]


def one_error(capsys, *needles):
    """The single ``error:`` line on stderr, checked to contain every needle."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def small_model(path, shape=(1, 2, 2), classes=3):
    m = FullyConnectedNet([4], input_dim=int(np.prod(shape)), num_classes=classes, seed=0)
    m.meta = {"mean": [100.0] * shape[0], "std": [50.0] * shape[0], "image_shape": list(shape)}
    return str(m.save(path))


# --------------------------------------------------------------------------- #6: declared sizes


@pytest.mark.parametrize("kind", ["gzip", "plain", "fill", "resizable"])
def test_info_on_ten_billion_declared_labels_answers_at_once_naming_the_dataset(tmp_path, capsys, kind):
    path = huge_n_h5(tmp_path / "huge_n.h5", kind=kind)
    t0 = time.perf_counter()
    try:  # a subprocess, so that a hang is a failure (it was still running at 120 s)
        p = subprocess.run(
            [sys.executable, "-m", "data_prep", "info", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"gpunet-prep info {path} still running after {time.perf_counter() - t0:.0f} s")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: /train/x declares (10000000000, 1, 2, 2)")


def test_train_on_ten_billion_declared_labels_is_one_line_not_a_memory_error(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    huge_n_h5(data / "cifar10.h5")
    rc = train.main(["cifar10", "--data-dir", str(data), "--out", str(tmp_path / "run"), *FAST])
    assert rc == 2
    one_error(capsys, data / "cifar10.h5", "/train/")
    assert not (tmp_path / "run").exists()


def test_evaluate_on_ten_billion_declared_labels_is_one_line_not_a_memory_error(tmp_path, capsys):
    path = huge_n_h5(tmp_path / "huge_n.h5", kind="plain")
    model = small_model(tmp_path / "m.npz")
    assert evaluate.main([model, "--data", str(path), "--split", "val", "--backend", "numpy", "-q"]) == 2
    one_error(capsys, path, "/train/x")


def test_a_read_larger_than_the_available_memory_is_refused_before_it_starts(tmp_path, monkeypatch):
    path = gzip_corrupt_h5(tmp_path / "d.h5", bad_chunk=0)  # never read: refused before
    monkeypatch.setattr(h5check, "available_ram", lambda: 100)
    with pytest.raises(ValueError, match=r"d\.h5: reading split 'val' needs .* of memory, and 100 bytes"):
        load_split(path, "val")


def test_declared_sizes_of_a_real_file_pass(tmp_path, capsys):
    path = gzip_corrupt_h5(tmp_path / "d.h5")
    x, y = load_split(path, "val")  # the damaged chunk is in /train only
    assert x.shape == (12, 1, 8, 8) and y.shape == (12,)


# --------------------------------------------------------------------------- #11: corrupt data


def test_info_reads_the_images_of_a_gzip_corrupt_file(tmp_path, capsys):
    path = gzip_corrupt_h5(tmp_path / "gz.h5")
    assert prep_cli.main(["info", str(path)]) == 2
    one_error(capsys, path, "/train/x", "cannot be read")


def test_info_samples_the_chunks_of_a_large_split_and_verify_reads_them_all(tmp_path, capsys, monkeypatch):
    path = gzip_corrupt_h5(tmp_path / "gz.h5", n=64, chunk=4, bad_chunk=1)  # 16 chunks; 1 is not sampled
    monkeypatch.setattr(h5check, "READ_ALL_BYTES", 0)  # every split counts as large
    assert prep_cli.main(["info", str(path)]) == 0
    capsys.readouterr()
    assert prep_cli.main(["info", "--verify", str(path)]) == 2
    one_error(capsys, path, "/train/x")


def test_a_tarball_holding_data_batch_1_twice_is_refused_naming_it_and_the_member(tmp_path, capsys):
    src = duplicate_member_tar(tmp_path / "cifar-10-python.tar.gz")
    out = tmp_path / "out" / "c.h5"
    assert prep_cli.main(["cifar10", str(src), "-o", str(out)]) == 2
    one_error(capsys, src, "cifar-10-batches-py/data_batch_1", "more than once")
    assert not out.parent.exists() or not any(out.parent.iterdir())


# --------------------------------------------------------------------------- #14: errors name the file


def test_training_on_a_gzip_corrupt_file_names_the_file_and_the_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    gzip_corrupt_h5(data / "cifar10.h5")
    rc = train.main(["cifar10", "--data-dir", str(data), "--out", str(tmp_path / "run"), *FAST])
    assert rc == 2
    one_error(capsys, data / "cifar10.h5", "/train/x", "filter returned failure during read")


def test_evaluating_a_gzip_corrupt_split_names_the_file_and_the_dataset(tmp_path, capsys):
    path = gzip_corrupt_h5(tmp_path / "gz.h5")
    model = small_model(tmp_path / "m.npz", shape=(1, 8, 8))
    assert evaluate.main([model, "--data", str(path), "--split", "train", "--backend", "numpy", "-q"]) == 2
    one_error(capsys, path, "/train/x", "filter returned failure during read")


def test_labels_outside_the_models_classes_name_the_file_and_split(tmp_path, capsys):
    path = no_class_names_h5(tmp_path / "nc.h5", label=50)
    model = small_model(tmp_path / "m.npz", shape=(1, 48, 48), classes=7)
    assert evaluate.main([model, "--data", str(path), "--backend", "numpy", "-q"]) == 2
    one_error(capsys, path, "/test/y", "50", "[0, 7)")


def test_a_two_channel_model_for_image_files_names_the_model_file(tmp_path, capsys):
    model = two_channel_model(tmp_path / "m2.npz")
    images = tmp_path / "img"
    images.mkdir()
    from PIL import Image

    Image.new("L", (4, 4)).save(images / "a.png")
    assert predict.main([str(model), str(images), "-o", str(tmp_path / "p.csv"), "--backend", "numpy"]) == 2
    one_error(capsys, model, "channels", "found 2")
    assert not (tmp_path / "p.csv").exists()
