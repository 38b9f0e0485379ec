"""Where a study lives: checking a ``--storage``, opening it safely from many workers at once.

A storage is either a database URL (``postgresql://``, ``mysql://``, ``sqlite:///``: Optuna's
``RDBStorage``, with heartbeats so a dead worker's trial is noticed and retried once) or a
journal file (``*.journal`` / ``*.log``: Optuna's ``JournalStorage``, safe for several
processes on one machine). Without ``--storage`` a search folder keeps its study in
``RUN_DIR/study.journal`` (or in ``RUN_DIR/study.db`` when an older search made one).

Every problem with a storage is a ``StorageError`` (a ``ValueError``) of one line naming
``--storage`` and the file or URL (password hidden). ``check`` runs before anything is created.
Workers started together race to create the schema and the study; ``open_storage`` and
``open_study`` retry those races with backoff instead of dying. ``outputs`` lists what a
search creates, so a search that fails while starting removes it (``gpunet.io.removed_on_failure``),
and ``naming`` names the journal or SQLite file in an error of its writes (a full disk).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .redact import mask
from .tuning_journal import JournalLock

DRIVERS = {  # SQLAlchemy dialect -> (what to install, the extra that installs it)
    "postgresql": ("psycopg (v3)", "pip install 'gpunet[postgres]'"),
    "mysql": ("PyMySQL or mysqlclient", "pip install 'gpunet[mysql]'"),
}
JOURNAL_SUFFIXES = (".journal", ".log")
OPTUNA_TABLES = {
    "studies",
    "study_directions",
    "study_system_attributes",
    "study_user_attributes",
    "trial_heartbeats",
    "trial_intermediate_values",
    "trial_params",
    "trial_system_attributes",
    "trial_user_attributes",
    "trial_values",
    "trials",
    "version_info",
    "alembic_version",
}
RACES = (
    "already exists",
    "duplicate key",
    "pg_type_typname_nsp_index",
    "database is locked",
    "deadlock",
    "unique constraint",
    "could not serialize",
)  # errors of workers starting together
RETRIES = 8  # attempts at opening a storage or a study (backoff 0.1 s .. ~6 s)
SQLITE_MAGIC = b"SQLite format 3\x00"


class StorageError(ValueError):
    """A ``--storage`` that cannot be used: one line naming it."""


@dataclass(frozen=True)
class Storage:
    kind: str  # "rdb" (a database URL) or "journal" (a journal file)
    target: str  # the URL, or the journal file's absolute path
    shown: str  # how messages name it: the URL without its password, or the path

    @property
    def shared_safely(self) -> bool:
        """Safe for several concurrent workers (SQLite is not)."""
        return not (self.kind == "rdb" and self.target.startswith("sqlite"))


def resolve(storage: str | None, run_dir) -> Storage:
    """The storage a search uses: ``--storage`` as given, else the run folder's own file."""
    if storage is None:
        legacy = Path(run_dir) / "study.db"
        if legacy.is_file() and not (Path(run_dir) / "study.journal").exists():
            return Storage("rdb", f"sqlite:///{legacy.resolve()}", str(legacy))
        path = str(Path(run_dir).resolve() / "study.journal")
        return Storage("journal", path, path)
    text = storage.strip()
    if "://" not in text:
        if text.endswith(JOURNAL_SUFFIXES):
            path = Path(text).expanduser().resolve()
            if not path.parent.is_dir():
                raise StorageError(f"--storage {storage}: folder {path.parent} does not exist")
            return Storage("journal", str(path), str(path))
        raise StorageError(
            f"--storage {storage}: expected a database URL (postgresql://USER@HOST/DB, "
            f"mysql://..., sqlite:///FILE.db) or a journal file ending in .journal or .log"
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    rest = text.split("://", 1)[1]
    last_at = rest.rfind("@")
    end = rest.find("/", last_at) if last_at >= 0 else -1
    if rest[: end if end >= 0 else len(rest)].count("@") > 1:  # the driver would take part of it for the host
        raise StorageError(
            f"--storage {mask(text)}: more than one '@' before the host; write an '@' inside the "
            f"user name or password as %40"
        )
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"--storage {storage}: not a database URL ({_first_line(e)})") from None
    shown = mask(text)  # as typed, every credential hidden
    return Storage("rdb", _with_installed_mysql_driver(url), shown)


def outputs(st: Storage, run_dir) -> list:
    """What a search in ``run_dir`` on storage ``st`` creates, deepest first: the storage file (a
    journal and its lock files, or a SQLite file), then tune_config.json, trials/ and the run folder
    with the parents it makes. Given to ``removed_on_failure``, which keeps whatever existed before."""
    run_dir = Path(run_dir).absolute()
    files = []
    if st.kind == "journal":
        files = [Path(st.target + suffix) for suffix in (".lock", ".flock", "")]
    elif sqlite_file(st):
        files = [sqlite_file(st)]
    return files + [run_dir / "tune_config.json", run_dir / "trials", run_dir, *run_dir.parents]


def naming(st: Storage):
    """A context that names the storage in an error of its writes: a journal file's ``OSError``
    without a file name (a full disk: ``[Errno 28]``) gets the file's; a database's operational
    error (SQLite's "database or disk is full", a lost server), which Optuna wraps in a
    ``StorageInternalError`` about "invalid data in the commit", becomes a ``StorageError`` naming
    ``--storage`` and, for SQLite, the file, with the driver's own first line."""
    from .runfolder import naming as naming_path

    return naming_path(st.target) if st.kind == "journal" else _naming_database(st)


@contextmanager
def _naming_database(st: Storage):
    try:
        yield
    except Exception as e:
        cause = _operational_error(e)
        if cause is None:
            raise
        path = sqlite_file(st)
        where = f"{path}: " if path and str(path) not in st.shown else ""
        raise StorageError(f"--storage {st.shown}: {where}{_db_message(cause)}") from None


def _operational_error(e: BaseException):
    """The SQLAlchemy ``OperationalError`` (a failure of the database, not of the query) behind
    ``e``, looking through the causes Optuna chains on, or None."""
    from sqlalchemy.exc import OperationalError

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OperationalError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def sqlite_file(st: Storage) -> Path | None:
    """The absolute path of ``st``'s SQLite file, or None (a journal, a database server)."""
    if st.kind == "rdb" and st.target.startswith("sqlite:///") and st.target[10:] not in ("", ":memory:"):
        return Path(st.target[10:].split("?")[0]).absolute()
    return None


def _with_installed_mysql_driver(url) -> str:
    """``mysql://`` means mysqlclient to SQLAlchemy; use PyMySQL instead when only it is installed."""
    import importlib.util

    if (
        url.drivername == "mysql"
        and importlib.util.find_spec("MySQLdb") is None
        and importlib.util.find_spec("pymysql") is not None
    ):
        url = url.set(drivername="mysql+pymysql")
    return url.render_as_string(hide_password=False)


def check(st: Storage) -> list:
    """Refuse a storage that cannot hold the study, before anything is created or written; return
    notes on what was repaired (a journal's torn last record), to be shown."""
    if st.kind == "journal":
        return _check_journal(st)
    _check_rdb(st)
    return []


def _check_journal(st: Storage) -> None:
    path = Path(st.target)
    if path.is_dir():
        raise StorageError(f"--storage {st.shown}: expected a journal file, found a folder")
    if not path.exists():
        return []  # the run folder, or the file, is created once every check has passed
    try:
        with open(path, "rb") as f:
            head = f.readline(1 << 16)
    except OSError as e:
        raise StorageError(f"--storage {st.shown}: cannot read the journal file ({e.strerror})") from None
    try:
        entry = json.loads(head) if head else {"op_code": None}
        ok = isinstance(entry, dict) and "op_code" in entry
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise StorageError(
            f"--storage {st.shown}: not an Optuna journal file (its first line is not "
            f"a journal entry); give a new file name"
        )
    note = repair_journal(st)  # after the first line: no lock files beside a foreign file
    return [note] if note else []


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def repair_journal(st: Storage) -> str | None:
    """Check every record of a journal file; drop a torn last record; return what was done (or None).

    A write cut short (a kill, a full disk) leaves the last line without its newline. The next
    append would join that fragment to a new record and break the journal for good, so the
    fragment is cut off, under the journal's lock (no writer is mid-append then), keeping every
    complete record, and said. A complete line that is not a journal record is refused with the
    file and line named: what it held cannot be known.
    """
    path = Path(st.target)
    lock = JournalLock(str(path))
    flock_made = not os.path.lexists(str(path) + ".flock")
    lock.acquire()
    try:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StorageError(f"--storage {st.shown}: cannot read the journal file ({e.strerror})") from None
        cut = data.rfind(b"\n") + 1
        lines = data[:cut].split(b"\n")[:-1]
        for k, line in enumerate(lines, 1):
            try:
                ok = isinstance(json.loads(line.decode("utf-8")), dict)
            except (UnicodeDecodeError, ValueError):
                ok = False
            if not ok:
                raise StorageError(
                    f"--storage {st.shown}: line {k} is not a journal record ({line[:40]!r}); the file is "
                    f"damaged: move it away, or give --storage a new file"
                )
        if cut == len(data):
            return None
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    except StorageError:
        if flock_made:  # refused: no lock file of ours stays beside the damaged journal (issue 24 #9)
            _unlink_quietly(str(path) + ".flock")
        raise
    finally:
        lock.release()
    return (
        f"{st.shown}: dropped an incomplete last record ({len(data) - cut} bytes: a write cut short); "
        f"kept the {len(lines)} complete record(s)"
    )


def _check_rdb(st: Storage) -> None:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    url = make_url(st.target)
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise StorageError(
            f"--storage {st.shown}: unknown database kind {url.drivername!r}; expected "
            f"postgresql://, mysql:// or sqlite:///"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        what, hint = DRIVERS.get(dialect.name, (f"the {url.drivername} driver", f"install it ({e.name})"))
        raise StorageError(
            f"--storage {st.shown}: the {dialect.name} driver {what} is not installed; {hint}"
        ) from None
    if dialect.name == "sqlite" and not _check_sqlite_file(st, url.database):
        return  # a new SQLite file: nothing there yet to check
    try:
        engine = create_engine(st.target)
        try:
            with engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
        finally:
            engine.dispose()
    except SQLAlchemyError as e:
        raise StorageError(f"--storage {st.shown}: cannot open the database ({_db_message(e)})") from None
    if tables and not tables & OPTUNA_TABLES:
        names = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StorageError(
            f"--storage {st.shown}: the database holds other tables ({names}) and no Optuna "
            f"study; give an empty or new database, not adding Optuna's tables to this one"
        )


def _check_sqlite_file(st: Storage, database) -> bool:
    """Check an SQLite path; True when the file exists (and so has tables to look at)."""
    if not database or database == ":memory:":
        raise StorageError(
            f"--storage {st.shown}: an in-memory SQLite study is lost at exit; give a file, sqlite:///FILE.db"
        )
    path = Path(database)
    if not path.parent.is_dir():
        raise StorageError(f"--storage {st.shown}: folder {path.parent} does not exist")
    if path.is_dir():
        raise StorageError(f"--storage {st.shown}: {path} is a folder, expected an SQLite file")
    if not path.exists():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise StorageError(f"--storage {st.shown}: cannot read {path} ({e.strerror})") from None
    if head and head != SQLITE_MAGIC:
        raise StorageError(
            f"--storage {st.shown}: {path} is not an SQLite database "
            f"(expected the header 'SQLite format 3', found {head[:15]!r})"
        )
    return bool(head)


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _db_message(e) -> str:
    """The driver's own first line, without SQLAlchemy's statement dump and help links."""
    return _first_line(getattr(e, "orig", None) or e)


def _is_race(e) -> bool:
    text = str(e).lower()
    return any(r in text for r in RACES)


def _retrying(what, st: Storage, attempt):
    """Run ``attempt()``; retry the races of workers starting together with exponential backoff."""
    from sqlalchemy.exc import SQLAlchemyError
    import optuna

    for i in range(RETRIES):
        try:
            return attempt()
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError) as e:
            race = isinstance(e, optuna.exceptions.DuplicatedStudyError) or _is_race(e)
            if not race or i == RETRIES - 1:
                raise StorageError(f"--storage {st.shown}: cannot {what} ({_db_message(e)})") from None
        time.sleep(0.1 * 2**i * (0.5 + random.random()))


def open_storage(st: Storage, heartbeat: int = 60):
    """Optuna's storage object; a database gets heartbeats every ``heartbeat`` s (grace 3x)."""
    import optuna

    if st.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(st.target).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(st.target, lock_obj=JournalLock(st.target)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = {_retry_hook_name(): retry_callback()}
        try:
            return _retrying(
                "create Optuna's tables",
                st,
                lambda: optuna.storages.RDBStorage(
                    st.target, heartbeat_interval=heartbeat, grace_period=3 * heartbeat, **retry
                ),
            )
        except RuntimeError as e:  # e.g. a schema from another Optuna version
            raise StorageError(f"--storage {st.shown}: {_first_line(e)}") from None


def _retry_hook_name() -> str:
    import optuna

    # optuna >= 4.9 renamed the hook (the old name is deprecated)
    return (
        "heartbeat_stale_trial_callback"
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
        else "failed_trial_callback"
    )


def retry_callback():
    """Re-queue a failed trial's settings once (Optuna's retry callback, max_retry=1)."""
    import optuna

    st = optuna.storages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        cls = getattr(st, "RetryHeartbeatStaleTrialCallback", None) or st.RetryFailedTrialCallback
        return cls(max_retry=1)


def open_study(st: Storage, storage, study_name, sampler, pruner):
    """Create the study, or join it when another worker (now or earlier) created it."""
    import optuna

    return _retrying(
        "create or load the study",
        st,
        lambda: optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        ),
    )


def count_trials(storage, study_name) -> int:
    """Trials already in the study (0 when it does not exist yet)."""
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def worker_id(pid: int | None = None) -> str:
    """``"<hostname>:<pid>"``: which process ran a trial (``user_attrs["worker"]``)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_and_retry(study, trial) -> bool:
    """Mark a RUNNING trial FAIL and queue its settings again (once); False if it was already over."""
    import optuna

    # the storage-level calls Optuna's own heartbeat check (fail_stale_trials) makes
    try:
        if not study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # its worker, or a heartbeat check elsewhere, finished it first
    retry_callback()(study, study._storage.get_trial(trial._trial_id))
    return True


def reap_dead_workers(study, pids=None) -> list[int]:
    """Fail and retry RUNNING trials whose worker ran on this machine and is gone.

    ``pids``: the dead workers' process ids when known (the local launcher saw them die);
    otherwise every RUNNING trial of this host whose process no longer exists. Returns the
    numbers of the trials failed. A journal file has no heartbeats: this is how its dead
    trials are found; a database also finds them through Optuna's heartbeat.
    """
    import optuna

    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        name, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if name != host or not pid.isdigit():
            continue
        dead = int(pid) in pids if pids is not None else not _pid_alive(int(pid))
        if dead and fail_and_retry(study, t):
            failed.append(t.number)
    return failed
