"""Running a search: one worker in this process, or N local worker processes sharing one study.

``run_workers`` (``gpunet-tune --workers N``) spawns N processes. They share the study through
its storage; the launcher holds the ``--trials`` budget and grants each trial over a pipe, so a
worker stops when none is left (or ``--timeout`` has passed, or the launcher is gone). Each
worker has its own thread budget (the machine's cores split N ways: BLAS/OpenMP thread counts
and, on Linux, CPU affinity) or its own GPU (``devices``, given round-robin).

Faults: the launcher waits on its workers. One that dies from a signal (SIGKILL, the OOM
killer) mid-trial has that trial marked FAIL and queued again once (``max_retry=1``); another
worker runs it, and a replacement worker starts while tickets are left. Ctrl-C (or SIGTERM)
reaches only the launcher (workers run in their own process groups), which stops each
worker once: its running trial is recorded as FAIL, every finished one stays, and running
the same command again resumes the study.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np

from . import backend, runs, tuning, tuning_journal, tuning_storage
from .redact import guard_logging
from .tuning_storage import Storage, worker_id

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
STOP_WAIT_S = 30  # how long a stopped worker may take to record its trial before it is killed
EXIT_INTERRUPTED = 130


@dataclass
class Search:
    """Everything a worker needs to join the search (picklable: it travels to spawned workers)."""

    base: runs.TrainConfig  # settings every trial starts from
    space: dict  # checked search space (tuning.check_space)
    run_dir: str
    storage: Storage
    study_name: str = "gpunet-tune"
    sampler: str = "tpe"
    pruner: str = "median"
    subset: int | None = None  # training samples per trial (None: all)
    heartbeat: int = 60  # seconds between a database worker's heartbeats (grace: 3x)
    backend: str | None = None
    shared: bool = False  # other workers may join the study (--storage, or --workers > 1)
    quiet: bool = False


def sampler_seed(seed: int, done: int, shared: bool, key: str) -> int:
    """A resumed search must not draw the same points again (offset by the trials ``done``);
    workers sharing a study must not draw each other's (mix in the worker's ``key``)."""
    if not shared:
        return seed + done
    return int(np.random.SeedSequence([seed, done, zlib.crc32(key.encode())]).generate_state(1)[0])


def open_study(search: Search):
    """This process's handle on the study (created by whichever worker comes first)."""
    storage = tuning_storage.open_storage(search.storage, search.heartbeat)
    done = tuning_storage.count_trials(storage, search.study_name)
    seed = sampler_seed(search.base.seed, done, search.shared, worker_id())
    sampler = tuning.make_sampler(search.sampler, search.space, seed, parallel=search.shared)
    return tuning_storage.open_study(
        search.storage, storage, search.study_name, sampler, tuning.make_pruner(search.pruner)
    )


def device_name(backend_name: str, device: int | None) -> str:
    """What ``user_attrs["device"]`` says: ``gpu:1``, or ``cpu (2 threads)``."""
    if backend_name == "cupy":
        return f"gpu:{device or 0}"
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"cpu ({threads} thread{'s' if threads != '1' else ''})" if threads else "cpu"


def make_objective(search: Search, device: int | None, say=print) -> tuning.Objective:
    return tuning.Objective(
        search.base,
        search.space,
        search.run_dir,
        search.subset,
        grid=search.sampler == "grid",
        say=say,
        device=device_name(backend.name(), device),
    )


class Tickets:
    """The ``--trials`` budget, held by the launcher; workers ask for each trial over a pipe."""

    def __init__(self, n: int):
        self.left = n

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def give_back(self, n: int = 1):
        self.left += n


def _ask(conn) -> bool:
    """A worker's request for one more trial (False: stop; also when the launcher is gone)."""
    try:
        conn.send("next")
        return bool(conn.recv())
    except (EOFError, OSError):
        return False


def budget(n_trials: int, timeout=None):
    """A lone worker's grant: ``n_trials`` trials, none started after ``timeout`` seconds."""
    end = time.time() + timeout if timeout else None
    left = [n_trials]

    def grant() -> bool:
        if left[0] <= 0 or (end is not None and time.time() >= end):
            return False
        left[0] -= 1
        return True

    return grant


def run_trials(study, objective, grant, say=print):
    """One trial each time ``grant()`` says yes, until it says no or the grid is spent.

    A trial that another worker declared dead while it ran (its heartbeats came late) is
    already FAIL and queued again; Optuna then fails to record this worker's result. This
    worker leaves the trial to that retry and goes on."""
    import optuna

    last = {}

    def tracked(trial):
        last.update(id=trial._trial_id, own_error=True)
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            last["own_error"] = False
            raise
        last["own_error"] = False
        return value

    while grant():
        last.clear()
        try:
            study.optimize(tracked, n_trials=1, gc_after_trial=True)
        except (ValueError, AssertionError):  # Optuna could not record a trial someone else finished
            if (
                not last
                or last["own_error"]
                or study._storage.get_trial(last["id"]).state != optuna.trial.TrialState.FAIL
            ):
                raise
            say(
                "note: this worker's trial was declared dead by another worker (late heartbeats) and "
                "queued again; carrying on"
            )
        if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
            return


def thread_budget(n_workers: int) -> list[list[int]]:
    """The cores each of ``n_workers`` may use: this process's cores split evenly, round-robin when short."""
    cores = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if n_workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(n_workers)]
    per = len(cores) // n_workers
    return [cores[i * per : (i + 1) * per] for i in range(n_workers)]


@contextlib.contextmanager
def _environ(values: dict):
    """Set environment variables for a child about to start (spawn copies os.environ), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    """Optuna logs a trial stopped by Ctrl-C with its traceback; the command says "interrupted" instead.
    A failed trial's record keeps its one line but loses the traceback: the command's own error line
    says what failed (and ``--debug`` prints the traceback of what ends the command)."""
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
        return False
    record.exc_info, record.exc_text = None, None
    return True


def quiet_optuna():
    """Optuna's log: warnings only, and no traceback for a trial stopped by Ctrl-C."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if _not_an_interrupt not in handler.filters:
            handler.addFilter(_not_an_interrupt)
    guard_logging("optuna", "gpunet")  # a storage URL in Optuna's messages keeps its password hidden


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop like Ctrl-C (the trial in flight is recorded as FAIL), exit 143."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within: Ctrl-C raises KeyboardInterrupt and SIGTERM ``Terminated``, so Optuna records the
    trial in flight; neither cuts a journal write short (``tuning_journal.interrupt_handler``)."""
    previous = {
        sig: signal.signal(sig, tuning_journal.interrupt_handler(exc))
        for sig, exc in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated))
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker_main(search: Search, slot: int, device, cores, conn):
    """A spawned worker: join the study and run trials while tickets last; exit 0, 1, 2 or 130."""
    os.setpgid(0, 0)  # Ctrl-C at the terminal goes to the launcher, which stops us once
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, tuning_journal.interrupt_handler(KeyboardInterrupt))
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    guard_logging("optuna", "gpunet")
    say = (
        (lambda m: None)
        if search.quiet
        else (lambda m: print(f"[worker {slot}] {m}", file=sys.stderr, flush=True))
    )
    try:
        quiet_optuna()
        backend.use(search.backend, device)
        study = open_study(search)
        run_trials(study, make_objective(search, device, say), lambda: _ask(conn), say)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except (ValueError, OSError, backend.BackendError) as e:
        print(f"error: [worker {slot}] {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a bug: one line, as every command reports it
        print(f"error: [worker {slot}] {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


def run_workers(
    search: Search, study, n_workers: int, trials: int, timeout=None, devices=None, say=print
) -> int:
    """Run ``trials`` trials on ``n_workers`` local processes sharing ``study``; return the exit code.

    ``devices``: GPU indices given to the workers round-robin (None: CPU thread budgets).
    On Ctrl-C (or ``Terminated``, under ``sigterm_as_interrupt``) stops every worker, then re-raises.
    """
    ctx = mp.get_context("spawn")  # a fresh interpreter: thread settings apply before NumPy loads
    tickets = Tickets(trials)
    deadline = time.time() + timeout if timeout else None
    cores = thread_budget(n_workers)
    procs, conns, failures, restarts = {}, {}, [], 0

    def start(slot):
        env = {k: str(len(cores[slot])) for k in THREAD_VARS}
        device = devices[slot % len(devices)] if devices else None
        mine, theirs = ctx.Pipe()
        with _environ(env):
            p = ctx.Process(
                target=_worker_main,
                name=f"gpunet-tune-worker-{slot}",
                args=(search, slot, device, None if devices else cores[slot], theirs),
            )
            p.start()
        theirs.close()
        procs[p.sentinel] = (p, slot)
        conns[mine] = p
        say(
            f"worker {slot}: {worker_id(p.pid)} on "
            f"{f'gpu:{device}' if devices else f'{len(cores[slot])} core(s)'}"
        )

    try:
        for slot in range(n_workers):
            start(slot)
        while procs:
            for ready in mp.connection.wait([*procs, *conns], timeout=1.0):
                if ready in conns:  # a worker asks for its next trial
                    _answer(ready, conns, tickets, deadline)
                    continue
                if ready not in procs:  # the pipe of a worker whose end was handled just now
                    continue
                p, slot = procs.pop(ready)
                p.join()
                for c in [c for c, q in conns.items() if q is p]:
                    del conns[c]
                    c.close()
                if p.exitcode >= 0:
                    if p.exitcode:
                        failures.append(p.exitcode)
                    continue
                lost = tuning_storage.reap_dead_workers(study, pids={p.pid})
                tickets.give_back(len(lost))
                how = signal.Signals(-p.exitcode).name
                say(
                    f"worker {slot} ({worker_id(p.pid)}) died ({how})"
                    + (f" during trial {', '.join(map(str, lost))}: queued again" if lost else "")
                )
                if tickets.left > 0 and restarts < n_workers and (deadline is None or time.time() < deadline):
                    restarts += 1
                    start(slot)
    except KeyboardInterrupt:
        killed = _stop(procs, say)
        tuning_storage.reap_dead_workers(study, pids=killed)  # their trials must not stay RUNNING
        raise
    return failures[0] if failures else 0


def _answer(conn, conns: dict, tickets: Tickets, deadline):
    """Grant a worker's request for one more trial while tickets and time are left."""
    go = False
    try:
        conn.recv()
        go = (deadline is None or time.time() < deadline) and tickets.take()
        conn.send(go)
    except (EOFError, OSError):  # it died while asking: its sentinel says so next
        if go:
            tickets.give_back()
        del conns[conn]
        conn.close()


def _stop(procs: dict, say) -> set:
    """Stop every worker once (SIGINT: the trial in flight is recorded as FAIL), then wait for them.

    Returns the pids of workers that had to be killed."""
    killed = set()
    # a second Ctrl-C (or SIGTERM) must not cut the clean stop short
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p, _ in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGINT)
        end = time.time() + STOP_WAIT_S
        for p, slot in procs.values():
            p.join(max(0.0, end - time.time()))
            if p.is_alive():
                say(f"worker {slot} did not stop in {STOP_WAIT_S} s: killed")
                p.kill()
                p.join()
                killed.add(p.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return killed
