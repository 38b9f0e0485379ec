"""gpunet-tune --storage: every bad URL or file is one line naming --storage and the file, refused
before the run folder exists; a foreign SQLite file is left byte for byte as it was."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from gpunet import tuning_journal, tuning_storage  # noqa: E402
from gpunet.cli import tune  # noqa: E402
from common import ROOT, data_dir  # noqa: E402,F401 (data_dir is a shared fixture)

FAST = [
    "--trials",
    "1",
    "--sampler",
    "random",
    "--hidden",
    "8",
    "--epochs",
    "1",
    "--batch-size",
    "30",
    "--backend",
    "numpy",
    "-q",
    "--no-plots",
]


def refused(capsys, data_dir, out, storage, *extra):
    """Run gpunet-tune with a bad --storage; return its one error line."""
    rc = tune.main(
        ["cifar10", "--data-dir", str(data_dir), "--out", str(out), "--storage", storage, *FAST, *extra]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --storage {storage}") or err[0].startswith("error: --workers")
    assert not out.exists()  # nothing created before the check failed
    return err[0]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sqlite_paths_that_cannot_hold_a_study(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    line = refused(capsys, data_dir, out, f"sqlite:///{tmp_path}/missing/s.db")
    assert line.endswith(f"folder {tmp_path}/missing does not exist")
    (tmp_path / "adir").mkdir()
    assert "is a folder, expected an SQLite file" in refused(
        capsys, data_dir, out, f"sqlite:///{tmp_path}/adir"
    )
    text = tmp_path / "notes.db"
    text.write_text("just some notes\n")
    line = refused(capsys, data_dir, out, f"sqlite:///{text}")
    assert f"{text} is not an SQLite database" in line and "found b'just some notes" in line
    assert text.read_text() == "just some notes\n"
    assert "in-memory" in refused(capsys, data_dir, out, "sqlite:///:memory:")


def test_a_foreign_sqlite_database_is_left_alone(capsys, data_dir, tmp_path):
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        conn.execute("INSERT INTO orders (item) VALUES ('tea')")
    before = sha(db)
    line = refused(capsys, data_dir, tmp_path / "run", f"sqlite:///{db}")
    assert "holds other tables (orders) and no Optuna study" in line
    assert sha(db) == before
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["orders"]


def test_urls_that_name_no_usable_database(capsys, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert "unknown database kind 'postgres'" in refused(capsys, data_dir, out, "postgres://u@h/db")
    assert "expected a database URL" in refused(capsys, data_dir, out, "my-study")
    assert "not a database URL" in refused(capsys, data_dir, out, "postgresql://u@h:port/db")
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # as if no MySQL driver were installed
    monkeypatch.setitem(sys.modules, "pymysql", None)
    assert refused(capsys, data_dir, out, "mysql://u@h/db").endswith("pip install 'gpunet[mysql]'")


def test_an_unreachable_server_is_one_line_without_the_password(capsys, data_dir, tmp_path):
    pytest.importorskip("psycopg")
    url = f"postgresql://tuner:s3cret@/gpunet?host={tmp_path}/no-server-here"
    rc = tune.main(
        ["cifar10", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--storage", url, *FAST]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"error: --storage postgresql://tuner:***@/gpunet?host={tmp_path}/no-server-here: "
        "cannot open the database ("
    )
    assert "s3cret" not in err[0] and not (tmp_path / "run").exists()


def test_a_journal_file_must_be_a_journal(capsys, data_dir, tmp_path):
    j = tmp_path / "study.journal"
    j.write_text("hello\n")
    assert "not an Optuna journal file" in refused(capsys, data_dir, tmp_path / "run", str(j))
    assert j.read_text() == "hello\n"
    j.write_text('"op_code"\n')
    assert "not an Optuna journal file" in refused(capsys, data_dir, tmp_path / "run", str(j))
    line = refused(capsys, data_dir, tmp_path / "run", f"{tmp_path}/missing/s.journal")
    assert line.endswith(f"folder {tmp_path}/missing does not exist") and not (tmp_path / "missing").exists()


def test_sqlite_is_refused_for_several_workers(capsys, data_dir, tmp_path):
    line = refused(capsys, data_dir, tmp_path / "run", f"sqlite:///{tmp_path}/s.db", "--workers", "2")
    assert "not safe for concurrent workers" in line and not (tmp_path / "s.db").exists()


def test_an_older_search_folder_keeps_its_sqlite_study(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    url = f"sqlite:///{out}/study.db"
    optuna.create_study(study_name="gpunet-tune", storage=url, direction="maximize")
    assert tune.main(["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST]) == 0
    assert len(optuna.load_study(study_name="gpunet-tune", storage=url).trials) == 1
    assert not (out / "study.journal").exists()
    assert tuning_storage.resolve(None, tmp_path / "new").kind == "journal"


def test_a_worker_whose_trial_was_taken_over_goes_on(capsys):
    """A live worker declared dead (late heartbeats) finds its trial FAIL and queued again: it
    leaves that trial to the retry and keeps running trials instead of dying."""
    from gpunet import tuning_workers

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        seen.append((trial.number, x))
        if trial.number == 0:  # another worker fails it and queues it again, mid-trial
            frozen = study.get_trials(deepcopy=False)[0]
            assert tuning_storage.fail_and_retry(study, frozen)
            assert not tuning_storage.fail_and_retry(study, frozen)  # only once
        return x

    tuning_workers.run_trials(study, objective, tuning_workers.budget(3), say=print)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].system_attrs["failed_trial"] == 0 and seen[1][1] == seen[0][1]  # the same point
    assert "declared dead by another worker" in capsys.readouterr().out


def test_an_interrupt_waits_for_the_journal_write_to_end(tmp_path):
    lock = tuning_journal.JournalLock(str(tmp_path / "j.journal"))
    handler = tuning_journal.interrupt_handler(KeyboardInterrupt)
    lock.acquire()
    handler(signal.SIGINT, None)  # Ctrl-C mid-write: nothing raised yet
    assert os.path.islink(tmp_path / "j.journal.lock")
    with pytest.raises(KeyboardInterrupt):
        lock.release()  # raised once the lock is given back
    assert not os.path.lexists(tmp_path / "j.journal.lock")
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)  # outside a write: at once


def test_a_writer_killed_holding_the_journal_lock_holds_it_up_3_s_not_30(tmp_path):
    path = str(tmp_path / "j.journal")
    open(path, "w").close()  # as JournalFileBackend makes it (the lock links to it)
    code = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); "
        "from gpunet.tuning_journal import JournalLock; "
        "JournalLock(sys.argv[2]).acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    p = subprocess.run([sys.executable, "-c", code, ROOT, path], timeout=60)
    assert p.returncode == -signal.SIGKILL and os.path.islink(path + ".lock")  # left behind
    start = time.monotonic()
    lock = tuning_journal.JournalLock(path)
    assert lock.acquire()
    lock.release()
    assert time.monotonic() - start < 10  # Optuna's own lock alone waits 30 s


def test_a_journal_file_named_by_storage_holds_the_study(data_dir, tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    j = tmp_path / "shared.journal"
    for run in ("a", "b"):  # two search folders, one study
        assert (
            tune.main(
                [
                    "cifar10",
                    "--data-dir",
                    str(data_dir),
                    "--out",
                    str(tmp_path / run),
                    "--storage",
                    str(j),
                    *FAST,
                ]
            )
            == 0
        )
    study = optuna.load_study(study_name="gpunet-tune", storage=JournalStorage(JournalFileBackend(str(j))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert not (tmp_path / "a" / "study.journal").exists()


@pytest.mark.parametrize(
    "text, shown",
    [
        ("postgresql://alice@h:1/db?password=S3cret", "postgresql://alice@h:1/db?password=***"),
        ("postgresql://alice:ab@S3cret@h/db", "postgresql://alice:***@h/db"),
        (
            "mysql://u:p%40S3cret@h:3306/d?charset=utf8&pwd=S3cret",
            "mysql://u:***@h:3306/d?charset=utf8&pwd=***",
        ),
        ("host=h user=alice password=S3cret dbname=db", "host=h user=alice password=*** dbname=db"),
        ("PGPASSWORD=S3cret gpunet-tune", "PGPASSWORD=*** gpunet-tune"),
        ("postgresql://alice@h/db", "postgresql://alice@h/db"),
        ("sqlite:////tmp/a.db and /tmp/study.journal", "sqlite:////tmp/a.db and /tmp/study.journal"),
    ],
)
def test_mask_hides_every_credential_form(text, shown):
    from gpunet.redact import mask

    assert mask(text) == shown


def test_log_records_are_masked(caplog):
    import logging

    from gpunet.redact import MaskingFilter

    record = logging.LogRecord(
        "optuna", logging.WARNING, __file__, 1, "storage %s failed", ("x://u:S3cret@h/d",), None
    )
    assert MaskingFilter().filter(record) and record.getMessage() == "storage x://u:***@h/d failed"


def test_a_torn_journal_tail_is_dropped_and_later_runs_work(capsys, data_dir, tmp_path):
    """Issue 24 #2: a journal ending in an incomplete line (a kill mid-write) used to be appended to,
    and every later run failed with "Expecting ':' delimiter", naming no file."""
    out = tmp_path / "run"
    argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST]
    assert tune.main(argv) == 0
    journal = out / "study.journal"
    complete = journal.read_bytes()
    n = complete.count(b"\n")
    journal.write_bytes(complete + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "par')  # torn
    capsys.readouterr()
    assert tune.main(argv) == 0  # the same --out resumes the study
    err = capsys.readouterr().err
    assert "dropped an incomplete last record" in err and f"kept the {n} complete record(s)" in err, err
    assert str(journal) in err
    text = journal.read_bytes()
    assert text.startswith(complete) and text.endswith(
        b"\n"
    )  # every complete record kept, no fragment joined
    assert all(json.loads(line) for line in text.splitlines())
    assert tune.main(argv) == 0  # and the next run works as well


def test_a_garbage_journal_line_is_refused_naming_file_and_line(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["cifar10", "--data-dir", str(data_dir), "--out", str(out), *FAST]
    assert tune.main(argv) == 0
    journal = out / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"\xff\xfe\x00garbage\n" + b"".join(lines[1:]))
    before = sha(journal)
    capsys.readouterr()
    assert tune.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(journal) in err[0] and "line 2 is not a journal record" in err[0], err
    assert sha(journal) == before  # refused, not touched


@pytest.fixture
def sqlite_fills_up(monkeypatch):
    """From the moment the study is open, every SQLite connection may not grow its file by a page:
    SQLite itself answers "database or disk is full" (SQLITE_FULL) once the free room in the file's
    last pages is used, as on a full disk."""
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    armed = []

    def no_new_pages(dbapi_conn, record, proxy):
        if armed and isinstance(dbapi_conn, sqlite3.Connection):
            pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    real = tuning_storage.reap_dead_workers  # called right after the study is opened
    monkeypatch.setattr(tuning_storage, "reap_dead_workers", lambda *a, **k: armed.append(1) or real(*a, **k))
    event.listen(Pool, "checkout", no_new_pages)
    yield
    event.remove(Pool, "checkout", no_new_pages)


def test_a_full_disk_under_a_sqlite_study_names_the_file(capsys, data_dir, tmp_path, sqlite_fills_up):
    """Issue 24 #14: was "error: StorageInternalError: An exception is raised during the commit. This
    typically happens due to invalid data in the commit, e.g. exceeding max length." (exit 1, no file)."""
    db = tmp_path / "s.db"
    argv = [
        "cifar10",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "run"),
        "--storage",
        f"sqlite:///{db}",
    ]
    fast = [*FAST]
    fast[fast.index("--trials") + 1] = "60"  # enough to outgrow the file's last pages (about 6 do)
    assert tune.main([*argv, *fast]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: --storage sqlite:///{db}: database or disk is full", err
    assert sum(line.startswith("error:") for line in err) == 1 and "Traceback" not in "\n".join(err)


def test_a_relative_sqlite_path_is_named_in_full_and_other_errors_pass(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    monkeypatch.chdir(tmp_path)
    st = tuning_storage.resolve("sqlite:///s.db", tmp_path / "run")
    full = OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))
    with pytest.raises(tuning_storage.StorageError) as e:
        with tuning_storage.naming(st):
            try:
                raise full
            except OperationalError as cause:  # as Optuna wraps it
                raise optuna.exceptions.StorageInternalError(
                    "An exception is raised during the commit."
                ) from cause
    assert str(e.value) == f"--storage sqlite:///s.db: {tmp_path / 's.db'}: database or disk is full"
    with pytest.raises(KeyError):  # not the database's failure: left as it is
        with tuning_storage.naming(st):
            raise KeyError("x")
