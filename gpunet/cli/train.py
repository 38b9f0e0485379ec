"""gpunet-train: find or convert a dataset, train a fully connected net or a convnet, evaluate, write a run
folder.

gpunet-train cifar10                     (downloads CIFAR-10 into the data home)
gpunet-train fer2013 --arch cnn --source fer2013.csv
gpunet-train fer2013 --hidden 1024 512 --epochs 30 --out runs/fer
gpunet-train --resume runs/fer        # continue an interrupted run
gpunet-train --resume runs/fer --epochs 60 --lr 3e-4    # train on, slower
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .. import runfolder, runs
from ..solver import TrainingDiverged
from .common import UserError, add_common_args, add_precision_arg, run, setup

# Flags that map one-to-one onto TrainConfig fields (dest -> field).
CONFIG_FLAGS = (
    "arch",
    "channels",
    "hidden",
    "dropout",
    "reg",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "step_size",
    "gamma",
    "min_lr_ratio",
    "warmup_epochs",
    "batch_size",
    "epochs",
    "patience",
    "seed",
    "augment",
    "crop_pad",
    "graph",
    "data_on_device",
    "recipe",
)


def add_model_args(p: argparse.ArgumentParser):
    """The training-recipe flags (shared with gpunet-tune); every default is None = 'from the recipe'."""
    g = p.add_argument_group("recipe (defaults: the dataset's recipe, then --config)")
    g.add_argument(
        "--arch",
        choices=runs.ARCHS,
        help="fc: fully connected net (fast, ~50%% on FER2013); "
        "cnn: convnet (slower per epoch, far more accurate on images)",
    )
    g.add_argument(
        "--recipe",
        metavar="NAME",
        help="a named variant of the dataset's recipe instead of its "
        "default: fast (cifar10, fc: 55%% test in about a minute on 2 cores)",
    )
    g.add_argument(
        "--channels",
        type=int,
        nargs="+",
        metavar="C",
        help="cnn: widths of the conv3x3-BN-ReLU-maxpool2 blocks, e.g. 32 64 128",
    )
    g.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        metavar="N",
        help="hidden layer sizes, e.g. 1024 512 (cnn: of the fully connected head)",
    )
    g.add_argument("--dropout", type=float, help="drop probability of the hidden layers")
    g.add_argument("--reg", type=float, help="L2 regularisation strength")
    g.add_argument("--optimizer", choices=runs.OPTIMIZERS, help="update rule")
    g.add_argument("--lr", type=float, help="base learning rate")
    g.add_argument("--momentum", type=float, help="momentum (sgd_momentum, nesterov)")
    g.add_argument("--weight-decay", type=float, help="decoupled weight decay")
    g.add_argument("--schedule", choices=runs.SCHEDULES, help="learning-rate schedule")
    g.add_argument("--step-size", type=int, help="step schedule: epochs between drops")
    g.add_argument("--gamma", type=float, help="step/exponential schedule: decay factor")
    g.add_argument("--min-lr-ratio", type=float, help="cosine schedule: final lr / base lr")
    g.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs")
    g.add_argument("--batch-size", type=int, help="mini-batch size")
    g.add_argument("--epochs", type=int, help="training epochs")
    g.add_argument("--patience", type=int, help="early stopping: epochs without val improvement")
    g.add_argument("--seed", type=int, help="random seed")
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips of training images",
    )
    g.add_argument("--crop-pad", type=int, help="random crops after padding by this many pixels")
    g.add_argument(
        "--graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CuPy: capture the training step once and replay it as a CUDA graph (default: on; "
        "--no-graph steps eagerly)",
    )
    g.add_argument(
        "--data-on-device",
        choices=("auto", "yes", "no"),
        help="keep the HDF5 splits on the device (GPU memory; host RAM on NumPy) as uint8 and shuffle, "
        "normalise and augment there (yes; refused for a split larger than the free memory), stream them "
        "from the file (no), or keep them when they fit 25%% of free memory (auto, the default); the "
        "batches are the same either way",
    )
    g.add_argument("--config", metavar="FILE.json", help="load settings from a JSON (or YAML) file")


def add_data_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        default=None,
        help="the data home: prepared <dataset>.h5 files and downloads "
        "(default: $GPUNET_DATA, else ~/.cache/gpunet)",
    )
    g.add_argument(
        "--source",
        metavar="PATH",
        help="source to convert when <data-dir>/<dataset>.h5 is missing "
        "(default: a known source file in the data home)",
    )
    g.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CIFAR-10: download the official tarball into the data home when nothing is there "
        "(default: on; --no-download refuses)",
    )


def overrides(args) -> dict:
    return {k: getattr(args, k, None) for k in CONFIG_FLAGS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", nargs="?", choices=runs.DATASETS, help="which dataset (not with --resume)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<dataset>-<timestamp>)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (interrupted, or for more "
        "epochs); only " + ", ".join("--" + k.replace("_", "-") for k in runs.RESUMABLE) + " may change",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="start afresh in an --out that holds a run (its files "
        "are replaced once the new run starts writing)",
    )
    p.add_argument(
        "--force-data",
        action="store_true",
        help="with --resume: train on although the data file differs from the one the run started with",
    )
    p.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw curves.png and confusion.png (default: on; a resumed run keeps its choice)",
    )
    add_data_args(p)
    add_model_args(p)
    add_common_args(p)
    add_precision_arg(p)
    return p


def _body(args):
    setup(args)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    changes = {}
    if args.resume:
        given = [k for k in ("dataset", "config", "source", "out", "data_dir", "force") if getattr(args, k)]
        if given:
            raise UserError(
                f"--resume takes its data and model from {args.resume}/config.json; "
                f"drop {', '.join('--' + g.replace('_', '-') for g in given)}"
            )
        cfg, saved = runs.load_run(args.resume)
        cfg, changes = runs.resume_changes(cfg, overrides(args), f"{args.resume}/config.json")
        run_dir, plots = args.resume, saved.get("plots", True) if args.plots is None else args.plots
    else:
        cfg = runs.resolve_config(args.dataset, args.config, overrides(args))
        run_dir = args.out or f"runs/{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        runfolder.check_new_run(run_dir, args.force)  # before a dataset is converted or downloaded
        cfg.data = os.path.abspath(
            runs.find_data(cfg.dataset, args.data_dir, args.source, args.download, say=say)
        )
        plots = args.plots is not False
    say(f"run folder: {run_dir}")
    try:
        metrics = runs.train_run(
            cfg,
            run_dir,
            resume=bool(args.resume),
            force=args.force,
            force_data=args.force_data,
            changes=changes,
            verbose=not args.quiet,
            plots=plots,
            say=say,
        )
    except KeyboardInterrupt:
        print(f"interrupted: continue with  gpunet-train --resume {run_dir}", file=sys.stderr)
        raise
    except TrainingDiverged as e:
        raise UserError(
            f"{e} (run folder {run_dir}; continue with gpunet-train --resume {run_dir} --lr <lower>)"
        ) from None
    print(runs.format_summary(metrics))
    print(
        f"results in {run_dir}/ (model.npz, metrics.json, history.json"
        f"{', curves.png, confusion.png' if plots else ''})"
    )
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dataset and not args.resume and not args.config:
        build_parser().error("name a dataset (cifar10 or fer2013), or --resume RUN_DIR")
    return run(_body, args)


if __name__ == "__main__":
    sys.exit(main())
