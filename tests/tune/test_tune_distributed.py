"""gpunet-tune with many workers: a real PostgreSQL server, local worker processes, killed workers.

The server is PostgreSQL 16 from the ``pgserver`` wheel, started on a Unix socket in a
temporary folder and stopped at the end; each test gets a fresh database. Without pgserver and
psycopg these tests skip, unless GPUNET_REQUIRE_POSTGRES=1 (CI sets it) makes them fail.
Trials are a tiny FC net on the 3-class HDF5 file of test_train_cli, a few seconds at most.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from common import ROOT, write_h5  # noqa: E402

HOST = socket.gethostname()
FAST = [
    "--sampler",
    "random",
    "--hidden",
    "8",
    "--batch-size",
    "30",
    "--backend",
    "numpy",
    "--no-plots",
    "--param",
    "hidden=8,16",
    "--param",
    "optimizer=adam",
    "--pruner",
    "none",
    "--patience",
    "1000",
]
SLOW_TRIAL = ["--epochs", "150"]  # about 0.5-1 s a trial here: long enough to be caught in the middle


def _require(module):
    try:
        return __import__(module)
    except ImportError as e:
        if os.environ.get("GPUNET_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"GPUNET_REQUIRE_POSTGRES=1 but {module} does not import ({e})")
        pytest.skip(f"{module} not installed (pip install pgserver 'psycopg[binary]')")


@pytest.fixture(scope="module")
def pg_server():
    """A PostgreSQL server on a Unix socket in a temporary folder; stopped and deleted afterwards.

    The folder is a short one in /tmp: a socket path must be under 108 bytes, and the server
    runs as its own user (pgserver's, when we are root), which must reach it."""
    _require("psycopg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        pgserver = _require("pgserver")
        home = tempfile.mkdtemp(prefix="gpunet-pg-")
        try:
            srv = pgserver.get_server(os.path.join(home, "data"), cleanup_mode="delete")
        except subprocess.CalledProcessError:  # as root: another test process created its user first
            srv = pgserver.get_server(os.path.join(home, "data"), cleanup_mode="delete")
    yield srv
    pid = srv.get_pid()
    os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the data is thrown away anyway
    end = time.time() + 30
    while pid_alive(pid) and time.time() < end:
        time.sleep(0.05)
    srv.cleanup()  # deletes the data folder (and stops it, had SIGQUIT failed)
    shutil.rmtree(home, ignore_errors=True)


def sql(url, query):
    """Ask the server itself (psycopg), not Optuna."""
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture
def pg_url(pg_server, request):
    """The URL of a new, empty database on the server."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    pg_server.psql(f"CREATE DATABASE {name};")
    return pg_server.get_uri(name)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_h5(d / "cifar10.h5")
    return d


def tune_cmd(data_dir, out, *args):
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "tune.py"),
        "cifar10",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        *FAST,
        *args,
    ]


def start_together(cmds, delay=3.0):
    """Start processes that import everything first, then call gpunet-tune at the same instant."""
    at = time.time() + delay
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from gpunet.cli.tune import main; "
        "t = float(sys.argv[2]); time.sleep(max(0.0, t - time.time())); sys.exit(main(sys.argv[3:]))"
    )
    return [
        subprocess.Popen(
            [sys.executable, "-c", code, ROOT, str(at), *cmd[2:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd in cmds
    ]


def load(storage, name="gpunet-tune"):
    return optuna.load_study(study_name=name, storage=storage)


def peek(storage):
    """The study while workers may still be creating it: None until it exists. (Opening an
    RDB storage creates the tables too, so the test itself can lose that race.)"""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return load(storage)
    except (KeyError, ValueError, SQLAlchemyError):
        return None


def journal(out):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(out / "study.journal")))


def assert_sound(study):
    """Trial numbers 0..n-1 once each, nothing left RUNNING, every trial says who ran it."""
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        host, _, pid = t.user_attrs["worker"].rpartition(":")
        assert host == HOST and pid.isdigit() and t.user_attrs["device"].startswith("cpu")


def wait_for(cond, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        found = cond()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_trial_of(storage, pids):
    """(pid, trial number) of a RUNNING trial of one of ``pids``, or None."""
    study = peek(storage)
    if study is None:
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = int(t.user_attrs.get("worker", ":0").rpartition(":")[2])
        if pid in pids:
            return pid, t.number
    return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_started_at_the_same_instant_join_one_study(pg_server, pg_url, data_dir, tmp_path):
    procs = start_together(
        [
            tune_cmd(
                data_dir, tmp_path / f"m{i}", "--storage", pg_url, "--trials", "2", "--epochs", "2", "-q"
            )
            for i in range(4)
        ]
    )
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    study = load(pg_url)
    assert_sound(study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
    workers = sorted(t.user_attrs["worker"] for t in study.trials)
    assert workers == sorted(f"{HOST}:{p.pid}" for p in procs for _ in range(2))  # each ran its own two
    # the server's own view, not Optuna's: one study, 8 trials with distinct numbers
    assert sql(pg_url, "SELECT count(DISTINCT study_id), count(*), count(DISTINCT number) FROM trials") == [
        (1, 8, 8)
    ]


def test_a_killed_worker_is_noticed_by_heartbeat_and_its_trial_retried(pg_url, data_dir, tmp_path):
    """Two separate commands (as on two machines); one is SIGKILLed in a trial; the other retries it.

    b is already running trials when a dies, so only the heartbeat can tell b (b's start-up
    check for dead local processes has passed): a's last beat is at most 1 s old at the kill,
    it is stale 3 s later, and b keeps starting trials for 12 s (slack for a loaded CI machine:
    an 8 s window failed once under the whole suite on 2 workers)."""

    def worker(name, *args):
        return subprocess.Popen(
            tune_cmd(
                data_dir, tmp_path / name, "--storage", pg_url, "--heartbeat", "1", *SLOW_TRIAL, "-q", *args
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    a = worker("a", "--trials", "50")
    wait_for(lambda: running_trial_of(pg_url, {a.pid}), 60, "a running trial of worker a")
    b = worker("b", "--trials", "1000", "--timeout", "12")
    wait_for(lambda: running_trial_of(pg_url, {b.pid}), 60, "a running trial of worker b")
    # freeze a before reading which trial it runs, so that trial cannot finish before the kill
    # (reading the study can take longer than a trial on a loaded machine)
    found, end = None, time.time() + 60
    while found is None and time.time() < end:
        os.kill(a.pid, signal.SIGSTOP)
        found = running_trial_of(pg_url, {a.pid})
        if found is None:
            os.kill(a.pid, signal.SIGCONT)
            time.sleep(0.1)
    assert found is not None, "timed out waiting for worker a in a trial"
    killed = found[1]
    a.kill()
    a.wait()
    _, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    study = load(pg_url)
    assert_sound(study)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1  # retried exactly once
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["worker"] == f"{HOST}:{b.pid}"
    assert retry.params == by_number[killed].params  # the same point, run again
    assert retry.datetime_start.timestamp() - by_number[killed].datetime_start.timestamp() >= 2


def test_ctrl_c_stops_every_worker_and_the_study_resumes(pg_url, data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = tune_cmd(data_dir, out, "--storage", pg_url, "--workers", "2", *SLOW_TRIAL)
    launcher = subprocess.Popen(
        cmd + ["--trials", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # a terminal's Ctrl-C hits the whole group

    def two_running_one_done():
        study = peek(pg_url)
        states = [t.state for t in study.trials] if study else []
        return states.count(TrialState.RUNNING) == 2 and TrialState.COMPLETE in states

    wait_for(two_running_one_done, 90, "two running trials and a finished one")
    os.killpg(launcher.pid, signal.SIGINT)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    study = load(pg_url)
    assert_sound(study)  # no trial left RUNNING
    before = study.trials  # (a list: .trials reads the server)
    assert {t.state for t in before} <= {TrialState.COMPLETE, TrialState.FAIL}
    pids = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in before}
    assert len(pids) == 2 and not any(pid_alive(p) for p in pids)  # both workers stopped
    done = {t.number: (t.params, t.value) for t in before if t.state == TrialState.COMPLETE}
    assert (out / "results.csv").is_file()

    resumed = subprocess.run(
        cmd + ["--trials", "2", "--epochs", "2"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    after = load(pg_url)
    assert_sound(after)
    assert {
        t.number: (t.params, t.value) for t in after.trials if t.number in done
    } == done  # kept as they were
    new = [t for t in after.trials if t.number >= len(before)]
    assert len(new) == 2 and all(t.state == TrialState.COMPLETE for t in new), resumed.stderr


def test_launcher_retries_the_trial_of_a_killed_local_worker(data_dir, tmp_path):
    """--workers 2 on the default journal file: no heartbeat there, the launcher sees the death."""
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        tune_cmd(data_dir, out, "--workers", "2", "--trials", "4", *SLOW_TRIAL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def a_running_worker_trial():
        study = peek(journal(out)) if (out / "study.journal").exists() else None
        if study is None:
            return None
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = int(t.user_attrs.get("worker", ":0").rpartition(":")[2])
            if pid not in (0, launcher.pid):
                return pid, t.number
        return None

    pid, killed = wait_for(a_running_worker_trial, 60, "a worker in a trial")
    os.kill(pid, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, err
    assert f"died (SIGKILL) during trial {killed}: queued again" in err
    study = load(journal(out))
    assert_sound(study)
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["worker"] != f"{HOST}:{pid}"  # another worker ran it
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 4  # --trials finished trials
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2


def test_missing_driver_is_one_line_naming_the_extra(data_dir, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "psycopg.py").write_text("raise ImportError('No module named psycopg')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    out = tmp_path / "never"
    p = subprocess.run(
        tune_cmd(data_dir, out, "--storage", "postgresql://tuner:s3cret@db.example/gpunet", "-q"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: --storage postgresql://tuner:***@db.example/gpunet: the postgresql driver psycopg (v3) "
        "is not "
        "installed; pip install 'gpunet[postgres]'"
    ]
    assert not out.exists()


def test_sigterm_stops_a_search_cleanly(data_dir, tmp_path):
    """SIGTERM (a scheduler's stop) is a clean stop like Ctrl-C: exit 143, the trial recorded as FAIL."""
    out = tmp_path / "run"
    p = subprocess.Popen(
        tune_cmd(data_dir, out, "--trials", "50", *SLOW_TRIAL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    wait_for(
        lambda: (out / "study.journal").exists() and running_trial_of(journal(out), {p.pid}),
        60,
        "a running trial",
    )
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err, (
        err
    )
    study = load(journal(out))
    assert_sound(study)
    assert study.trials[-1].state == TrialState.FAIL and (out / "results.csv").is_file()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice@127.0.0.1:1/db?password=S3cretPW",  # the password as a query parameter
        "postgresql://alice:ab@S3cretPW@127.0.0.1:1/db",  # an unencoded "@" inside the password
        "postgresql://alice:S3cretPW@127.0.0.1:1/db",
    ],
)
@pytest.mark.parametrize("debug", [False, True])
def test_a_password_is_never_printed(data_dir, tmp_path, url, debug):
    """Issue 24 #1: no form of the password reaches the error line or the --debug traceback."""
    out = tmp_path / "never"
    p = subprocess.run(
        tune_cmd(data_dir, out, "--storage", url, "-q", *(["--debug"] if debug else [])),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    text = p.stdout + p.stderr
    assert p.returncode == 2, text
    assert "S3cret" not in text and "***" in text, text
    assert ("Traceback" in text) == debug
    assert not out.exists()
