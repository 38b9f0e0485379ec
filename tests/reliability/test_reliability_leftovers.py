"""Issue 24 #9 and #14 (tune): all or nothing. A command that fails before producing anything useful
removes what it created (a run's config.json and lock file, a conversion's lock file, a search's
tune_config.json, trials/ and empty journal), and only that: the user's files stay. Full disks are
simulated in-process (an ``OSError(ENOSPC)`` from the writes)."""

import errno
import os
import sys

import numpy as np
import pytest
from common import data_dir  # noqa: F401 (data_dir is a shared fixture)

from gpunet.cli import train, tune

FAST_TRAIN = [
    "--hidden",
    "8",
    "--epochs",
    "1",
    "--batch-size",
    "20",
    "--no-plots",
    "--backend",
    "numpy",
    "-q",
]
FAST_TUNE = [
    "--trials",
    "1",
    "--epochs",
    "1",
    "--hidden",
    "8",
    "--batch-size",
    "30",
    "--backend",
    "numpy",
    "-q",
]


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def one_error(capsys, *needles):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def full_disk(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --------------------------------------------------------------------------- gpunet-train


def test_full_disk_train_in_an_empty_folder_leaves_it_empty(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    import gpunet.io

    run = tmp_path / "run"
    run.mkdir()  # the user's empty folder: it stays, empty
    monkeypatch.setattr(gpunet.io.np, "savez", full_disk)  # the first checkpoint cannot be written
    assert train.main(["cifar10", "--data-dir", str(data_dir), "--out", str(run), *FAST_TRAIN]) == 2
    one_error(capsys, run / "solver.ckpt.npz", "No space left on device")
    assert run.is_dir() and listing(run) == []  # was: config.json and .gpunet-train.lock


def test_full_disk_train_in_a_new_folder_leaves_no_folder(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    import gpunet.io

    monkeypatch.setattr(gpunet.io.np, "savez", full_disk)
    run = tmp_path / "new" / "run"
    assert train.main(["cifar10", "--data-dir", str(data_dir), "--out", str(run), *FAST_TRAIN]) == 2
    one_error(capsys, "No space left on device")
    assert not run.exists()


def test_failed_force_before_training_keeps_the_old_run_whole(data_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    assert train.main(["cifar10", "--data-dir", str(data_dir), "--out", str(run), *FAST_TRAIN]) == 0
    before = {n: (run / n).read_bytes() for n in listing(run) if not n.startswith(".")}
    argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(run), "--force", "--crop-pad", "3"]
    assert train.main([*argv, *FAST_TRAIN]) == 2
    capsys.readouterr()
    assert {n: (run / n).read_bytes() for n in listing(run) if not n.startswith(".")} == before


# --------------------------------------------------------------------------- --source conversion


def test_failed_source_conversion_leaves_no_lock_file(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")  # the user's file: it stays
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    argv = ["cifar10", "--data-dir", str(home), "--source", str(bad), "--out", str(tmp_path / "run")]
    assert train.main([*argv, *FAST_TRAIN]) == 2
    one_error(capsys, bad)
    assert listing(home) == ["notes.txt"]  # was: also .cifar10.h5.lock
    assert not (tmp_path / "run").exists()


def test_failed_source_conversion_into_a_new_data_home_leaves_no_folder(tmp_path, capsys):
    home = tmp_path / "a" / "home"
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not a tarball")
    argv = ["cifar10", "--data-dir", str(home), "--source", str(bad), "--out", str(tmp_path / "run")]
    assert train.main([*argv, *FAST_TRAIN]) == 2
    one_error(capsys, bad)
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- gpunet-tune


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc refuses new files on Linux only")
def test_tune_with_an_unwritable_storage_leaves_no_run_folder(data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "tune"
    argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(out), "--storage", "/proc/x.journal"]
    assert tune.main([*argv, *FAST_TUNE]) == 2
    one_error(capsys, "/proc/x.journal")
    assert not out.exists()  # was: tune_config.json and trials/


def test_tune_on_a_full_disk_leaves_no_empty_journal_and_names_it(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from optuna.storages.journal import JournalFileBackend

    monkeypatch.setattr(JournalFileBackend, "append_logs", full_disk)
    out = tmp_path / "tune"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert tune.main(["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST_TUNE]) == 2
    one_error(capsys, out / "study.journal", "No space left on device")  # was: [Errno 28] alone
    assert listing(out) == ["keep.txt"]  # was: an empty study.journal, tune_config.json, trials/


def test_a_second_search_that_fails_keeps_the_first_ones_files(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    from optuna.storages.journal import JournalFileBackend

    out = tmp_path / "tune"
    assert tune.main(["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST_TUNE]) == 0
    before = {n: (out / n).stat().st_size for n in ("study.journal", "tune_config.json", "results.csv")}
    trials = listing(out / "trials")
    monkeypatch.setattr(JournalFileBackend, "append_logs", full_disk)
    assert tune.main(["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST_TUNE]) == 2
    capsys.readouterr()
    assert {n: (out / n).stat().st_size for n in before} == before and listing(out / "trials") == trials
