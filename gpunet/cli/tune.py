"""gpunet-tune: hyperparameter search with Optuna (samplers, pruning, resumable storage).

    gpunet-tune cifar10 --trials 20 --subset 10000 --epochs 8 --out runs/tune-c10
    gpunet-tune cifar10 --out runs/tune-c10 --trials 10      # resume: 10 more trials
    gpunet-tune fer2013 --space space.json --sampler random --pruner halving
    gpunet-tune cifar10 --param lr=1e-4:1e-2:log --param optimizer=adam,nesterov
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .. import runs, tuning
from .common import UserError, add_common_args, run, setup
from .train import add_data_args, add_model_args, overrides

TUNE_EPOCHS = 8  # per trial, unless --epochs says otherwise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpunet-tune", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=runs.DATASETS)
    p.add_argument("--out", metavar="RUN_DIR", help="search folder (default: runs/tune-<dataset>-<timestamp>); "
                   "running again with the same folder resumes the study")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=10, help="new trials to run (default 10)")
    g.add_argument("--timeout", type=float, metavar="SEC", help="stop starting new trials after SEC seconds")
    g.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    g.add_argument("--pruner", choices=["median", "halving", "none"], default="median")
    g.add_argument("--space", metavar="FILE", help="search space as JSON (or YAML with PyYAML)")
    g.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                   help="add/replace one dimension: lr=1e-4:1e-2:log, dropout=0:0.5, "
                        "optimizer=adam,nesterov, hidden=1024-512,512, channels=32-64-128,32-64-128-256 "
                        "(repeatable; default space: tuning.DEFAULT_SPACE, or CNN_SPACE with --arch cnn)")
    g.add_argument("--subset", type=int, metavar="N", help="tune on N random training samples")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="skip Optuna's PNG plots")
    g.add_argument("--study-name", default="gpunet-tune", help="study name in the storage")
    g.add_argument("--storage", metavar="URL", help="Optuna storage URL shared by several workers "
                   "(default: sqlite:///RUN_DIR/study.db)")
    add_data_args(p)
    add_model_args(p)
    add_common_args(p)
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


def _body(args):
    setup(args)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    if args.trials < 1:
        raise UserError(f"--trials: expected a positive number, got {args.trials}")
    if args.subset is not None and args.subset < 1:
        raise UserError(f"--subset: expected a positive number of samples, got {args.subset}")
    settings = overrides(args)
    if settings["epochs"] is None:
        settings["epochs"] = TUNE_EPOCHS
    base = runs.resolve_config(args.dataset, args.config, settings)
    space = search_space(args, base.arch)
    base.data = runs.find_data(base.dataset, args.data_dir, args.source, args.download, say=say)
    run_dir = args.out or f"runs/tune-{base.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    (Path(run_dir) / "trials").mkdir(parents=True, exist_ok=True)
    runs.save_json(Path(run_dir) / "tune_config.json",
                   {"base": base.to_dict(), "space": space, "sampler": args.sampler, "pruner": args.pruner,
                    "subset": args.subset, "study_name": args.study_name, "storage": args.storage})
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = tuning.open_study(run_dir, args.study_name, args.storage, args.sampler, args.pruner, space, base.seed)
    before = len(study.trials)
    say(f"study {args.study_name!r}: {before} trial(s) so far; running up to {args.trials} more "
        f"({args.sampler} sampler, {args.pruner} pruner{f', {args.subset} training samples' if args.subset else ''})")
    objective = tuning.Objective(base, space, run_dir, args.subset, grid=args.sampler == "grid", say=say)
    logging.getLogger("gpunet").setLevel(logging.WARNING)  # one line per trial is enough
    try:
        study.optimize(objective, n_trials=args.trials, timeout=args.timeout, gc_after_trial=True)
    finally:
        rows = tuning.results_rows(study)
        tuning.write_table(rows, Path(run_dir) / "results.csv")
    print(tuning.format_table(rows))
    best = tuning.save_best_model(study, run_dir)
    plots = tuning.save_plots(study, run_dir, say=say) if args.plots else []
    try:
        print(f"best: trial {study.best_trial.number}, val acc {study.best_value:.4f}, "
              f"{json.dumps(study.best_params)}")
    except ValueError:
        print("no trial finished")
    print(f"results in {run_dir}/ (results.csv{', best_model.npz' if best else ''}"
          f"{''.join(', ' + p for p in plots)}; study in {args.storage or run_dir + '/study.db'})")
    return 0


def main(argv=None) -> int:
    return run(_body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
