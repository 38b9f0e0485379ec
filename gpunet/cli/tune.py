"""gpunet-tune: hyperparameter search with Optuna (samplers, pruning, resumable storage).

    gpunet-tune cifar10 --trials 20 --subset 10000 --epochs 8 --out runs/tune-c10
    gpunet-tune cifar10 --out runs/tune-c10 --trials 10      # resume: 10 more trials
    gpunet-tune fer2013 --space space.json --sampler random --pruner halving
    gpunet-tune cifar10 --param lr=1e-4:1e-2:log --param optimizer=adam,nesterov
    gpunet-tune cifar10 --workers 2 --trials 20                  # two local worker processes
    gpunet-tune cifar10 --devices 0,1,2,3 --trials 40            # one worker per GPU
    gpunet-tune cifar10 --storage postgresql://tuner@db-host/gpunet --study-name c10   # on each machine

Without --storage the study is the journal file RUN_DIR/study.journal (safe for concurrent
workers). docs/SCALING.md: one study from several machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .. import runs, tuning, tuning_storage, tuning_workers
from ..io import removed_on_failure
from .common import UserError, add_common_args, add_precision_arg, run, setup, setup_precision
from .train import add_data_args, add_model_args, overrides

TUNE_EPOCHS = 8  # per trial, unless --epochs says otherwise
EXIT_TERMINATED = 143  # SIGTERM: the search stopped cleanly, as after Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-tune",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=runs.DATASETS)
    p.add_argument(
        "--out",
        metavar="RUN_DIR",
        help="search folder (default: runs/tune-<dataset>-<timestamp>); "
        "running again with the same folder resumes the study",
    )
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=10, help="new trials to run (default 10)")
    g.add_argument("--timeout", type=float, metavar="SEC", help="stop starting new trials after SEC seconds")
    g.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    g.add_argument("--pruner", choices=["median", "halving", "none"], default="median")
    g.add_argument("--space", metavar="FILE", help="search space as JSON (or YAML with PyYAML)")
    g.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="add/replace one dimension: lr=1e-4:1e-2:log, dropout=0:0.5, "
        "optimizer=adam,nesterov, hidden=1024-512,512, channels=32-64-128,32-64-128-256 "
        "(repeatable; default space: tuning.DEFAULT_SPACE, or CNN_SPACE with --arch cnn)",
    )
    g.add_argument("--subset", type=int, metavar="N", help="tune on N random training samples")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="skip Optuna's PNG plots")
    g.add_argument("--study-name", default="gpunet-tune", help="study name in the storage")
    g.add_argument(
        "--storage",
        metavar="URL",
        help="where the study lives, shared by every worker that names "
        "it: postgresql://USER@HOST/DB (pip install 'gpunet[postgres]'), mysql://..., sqlite:///FILE.db "
        "(one worker at a time) or FILE.journal (default: RUN_DIR/study.journal)",
    )
    w = p.add_argument_group("workers")
    w.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes on this machine sharing the study "
        "and the --trials budget; each gets 1/N of the cores, or one of --devices (default 1, or one "
        "per --devices entry)",
    )
    w.add_argument(
        "--devices", metavar="I,J,...", help="GPU indices given to the workers round-robin (cupy backend)"
    )
    w.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="SEC",
        help="with a database: each running trial "
        "beats every SEC seconds; one silent for 3*SEC is failed and retried once (default 60)",
    )
    add_data_args(p)
    add_model_args(p)
    add_common_args(p)
    add_precision_arg(p)
    return p


def search_space(args, arch="fc") -> dict:
    space = dict(tuning.CNN_SPACE if arch == "cnn" else tuning.DEFAULT_SPACE)
    if args.space:
        space = runs.read_json(args.space, what="search-space file")
        where = args.space
    else:
        where = "search space"
    for text in args.param:
        name, spec = tuning.parse_param(text)
        space[name] = spec
    return tuning.check_space(space, where)


def parse_devices(args) -> list[int] | None:
    if args.devices is None:
        return None
    try:
        devices = [int(d) for d in args.devices.split(",")]
    except ValueError:
        devices = []
    if not devices or min(devices) < 0:
        raise UserError(f"--devices: expected GPU indices like 0,1,2, got {args.devices!r}")
    if args.backend in ("numpy", "cpu"):
        raise UserError("--devices: GPU indices need the cupy backend, not --backend numpy")
    args.backend = args.backend or "cupy"
    return devices


def check_counts(args):
    for flag, value in (
        ("--trials", args.trials),
        ("--workers", args.workers),
        ("--subset", args.subset),
        ("--heartbeat", args.heartbeat),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag}: expected a positive number, got {value}")


def _body(args):
    check_counts(args)
    devices = parse_devices(args)
    workers = args.workers or (len(devices) if devices else 1)
    if workers == 1 and devices:
        args.device = devices[0]
    if workers == 1:
        setup(args)
    else:  # workers pick their own backend; the precision travels to them in the environment
        rest = {k: v for k, v in vars(args).items() if k != "precision"}
        setup(argparse.Namespace(**{**rest, "backend": "numpy"}))
        setup_precision(args.precision, args.backend or "auto")
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    settings = overrides(args)
    if settings["epochs"] is None:
        settings["epochs"] = TUNE_EPOCHS
    base = runs.resolve_config(args.dataset, args.config, settings)
    space = search_space(args, base.arch)
    base.data = runs.find_data(base.dataset, args.data_dir, args.source, args.download, say=say)
    run_dir = args.out or f"runs/tune-{base.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = tuning_storage.resolve(args.storage, run_dir)
    for note in tuning_storage.check(storage) or ():  # before the run folder or the study is created
        print(f"note: {note}", file=sys.stderr)  # shown even with -q: a repaired file is news
    if workers > 1 and not storage.shared_safely:
        raise UserError(
            f"--workers {workers}: the SQLite study {storage.shown} is not safe for concurrent "
            f"workers; use a PostgreSQL or MySQL --storage, a FILE.journal, or a new --out"
        )
    runs.check_data(base.data)
    with (  # a search that fails while starting leaves nothing behind (issue 24 #9)
        removed_on_failure(*tuning_storage.outputs(storage, run_dir)),
        tuning_storage.naming(storage),
    ):
        (Path(run_dir) / "trials").mkdir(parents=True, exist_ok=True)
        runs.save_json(
            Path(run_dir) / "tune_config.json",
            {
                "base": base.to_dict(),
                "space": space,
                "sampler": args.sampler,
                "pruner": args.pruner,
                "subset": args.subset,
                "study_name": args.study_name,
                "storage": storage.shown,
            },
        )
        tuning_workers.quiet_optuna()
        search = tuning_workers.Search(
            base,
            space,
            str(run_dir),
            storage,
            args.study_name,
            args.sampler,
            args.pruner,
            args.subset,
            args.heartbeat,
            args.backend,
            shared=args.storage is not None or workers > 1,
            quiet=args.quiet,
        )
        study = tuning_workers.open_study(search)
    retried = tuning_storage.reap_dead_workers(study)  # trials left RUNNING by killed workers of this machine
    before = len(study.trials)
    say(
        f"study {args.study_name!r}: {before} trial(s) so far"
        f"{f' ({len(retried)} left running by a dead worker, queued again)' if retried else ''}; "
        f"running up to "
        f"{args.trials} more on {workers} worker(s) ({args.sampler} sampler, {args.pruner} pruner"
        f"{f', {args.subset} training samples' if args.subset else ''})"
    )
    logging.getLogger("gpunet").setLevel(logging.WARNING)  # one line per trial is enough
    rc = 0
    try:
        with tuning_workers.sigterm_as_interrupt(), tuning_storage.naming(storage):
            if workers == 1:
                device = devices[0] if devices else args.device
                objective = tuning_workers.make_objective(search, device, say)
                tuning_workers.run_trials(
                    study, objective, tuning_workers.budget(args.trials, args.timeout), say
                )
            else:
                rc = tuning_workers.run_workers(
                    search, study, workers, args.trials, args.timeout, devices, say
                )
    except tuning_workers.Terminated:
        rc = EXIT_TERMINATED
    finally:
        rows = tuning.results_rows(study)
        tuning.write_table(rows, Path(run_dir) / "results.csv")
    if rc == EXIT_TERMINATED:
        print("terminated", file=sys.stderr)
        return rc
    print(tuning.format_table(rows))
    best = tuning.save_best_model(study, run_dir)
    plots = tuning.save_plots(study, run_dir, say=say) if args.plots else []
    try:
        print(
            f"best: trial {study.best_trial.number}, val acc {study.best_value:.4f}, "
            f"{json.dumps(study.best_params)}"
        )
    except ValueError:
        print("no trial finished")
    print(
        f"results in {run_dir}/ (results.csv{', best_model.npz' if best else ''}"
        f"{''.join(', ' + p for p in plots)}; study in {storage.shown})"
    )
    return rc


def main(argv=None) -> int:
    return run(_body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
