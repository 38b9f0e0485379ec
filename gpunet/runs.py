"""Training runs: build the model and loaders a config describes, train, evaluate, write a run folder.

``gpunet-train`` and ``gpunet-tune`` are thin shells around this module (settings
live in ``gpunet.config``, finding and converting datasets in ``gpunet.datasets``).
A run folder holds

- ``config.json``: the resolved ``TrainConfig`` (reads back with ``load_config``), its data path
  absolute, with ``plots`` and ``resumes`` (the settings each ``--resume`` changed, and when);
- ``.gpunet-train.lock``: held while a trainer owns the folder (``gpunet.runfolder``);
- ``history.json``: per-epoch losses and accuracies (written by the Solver each epoch);
- ``solver.ckpt.npz``: the Solver checkpoint, so ``--resume RUN_DIR`` continues;
- ``model.npz``: the best model, with the preprocessing meta prediction tools need;
- ``metrics.json``: accuracy, confusion matrix, per-class P/R/F1 on the test split
  (or val when the file has no test split), training time, backend;
- ``curves.png``, ``confusion.png``: loss/accuracy per epoch and the confusion matrix.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import backend, nn, runfolder
from .config import (
    ARCHS,
    DATASETS,
    OPTIMIZERS,
    RECIPES,
    RESUMABLE,
    TrainConfig,
    load_config,
    load_run,  # noqa: F401
    read_json,
    resolve_config,
    resume_changes,
    solver_options,
)
from .data import ArrayLoader, H5Loader, channel_stats, load_split
from .data.plan import TRAIN_EVAL_STREAM
from .datasets import SOURCE_NAMES, check_data, default_data_dir, find_data, find_source  # noqa: F401
from .io import write_json
from .metrics import classification_report
from .model import FullyConnectedNet
from .optim import SCHEDULES  # noqa: F401
from .predict import evaluate
from .preprocess import preprocess_meta_from_h5
from .solver import Solver, TrainingDiverged

TRAIN_EVAL_SAMPLES = 5000  # training samples scored each epoch for the train-accuracy curve


def save_json(path, obj):
    """Write ``obj`` as JSON atomically (a reader never sees half a file); an OSError names ``path``."""
    with runfolder.naming(path):
        write_json(path, obj)


def cnn_layers(image_shape, channels, hidden, num_classes, dropout=0.5) -> list:
    """[conv3x3(pad 1)-BN-ReLU-maxpool2] per width in ``channels``, then Flatten-[Linear-ReLU-Dropout] per
    ``hidden`` size, then Linear to ``num_classes``. image_shape: (C, H, W)."""
    c, h, w = (int(d) for d in image_shape)
    layers = []
    for width in channels:
        if h < 2 or w < 2:
            raise ValueError(
                f"channels: {len(channels)} pooling blocks do not fit {tuple(image_shape)} images"
            )
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2
    layers.append(nn.Flatten())
    d = c * h * w
    for size in hidden:
        layers += [nn.Linear(d, size), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        d = size
    return layers + [nn.Linear(d, num_classes)]


def build_model(cfg: TrainConfig, meta):
    """The model ``cfg`` describes, sized for the data's images and classes."""
    shape = [int(d) for d in meta["image_shape"]]
    classes = len(meta["class_names"])
    if cfg.arch == "cnn":
        return nn.Sequential(
            cnn_layers(shape, cfg.channels, cfg.hidden, classes, cfg.dropout),
            reg=cfg.reg,
            seed=cfg.seed,
            input_shape=shape,
        )
    return FullyConnectedNet(
        cfg.hidden,
        input_dim=int(np.prod(shape)),
        num_classes=classes,
        dropout=cfg.dropout,
        reg=cfg.reg,
        seed=cfg.seed,
    )


def build_loaders(cfg: TrainConfig, meta, arrays=None) -> dict:
    """The Solver's ``{"train", "val", "train_eval"}`` loaders for ``cfg`` (one recipe for train and tune).

    arrays: None streams ``cfg.data`` from HDF5 (``H5Loader``); or ``{"train": (X, y), "val": (X, y)}``
    uint8 images already in memory (``gpunet-tune`` reads a subset once per study), served by
    ``ArrayLoader`` with the same normalisation and augmentation. ``train_eval`` scores up to
    ``TRAIN_EVAL_SAMPLES`` training images each epoch for the train-accuracy curve.
    """
    augment = {"flip": cfg.augment, "crop_pad": cfg.crop_pad}  # the loaders treat all-off as None
    mean, std = channel_stats(meta)
    on_host = lambda X, y, **kw: ArrayLoader(X, y, mean=mean, std=std, **kw)  # noqa: E731
    if arrays is None:
        X_sub, y_sub = load_split(cfg.data, "train", TRAIN_EVAL_SAMPLES, cfg.seed)
        place = cfg.data_on_device  # auto | yes | no: both paths serve the same batches
        train = H5Loader(
            cfg.data, "train", batch_size=cfg.batch_size, seed=cfg.seed, augment=augment, preload=place
        )
        val = H5Loader(cfg.data, "val", batch_size=1000, shuffle=False, preload=place)
    else:
        (X, y), (X_val, y_val) = arrays["train"], arrays["val"]
        pick = np.sort(
            np.random.default_rng([cfg.seed, TRAIN_EVAL_STREAM]).permutation(len(y))[:TRAIN_EVAL_SAMPLES]
        )
        X_sub, y_sub = X[pick], y[pick]  # a random subset: files are often sorted by class
        train = on_host(X, y, batch_size=cfg.batch_size, seed=cfg.seed, augment=augment)
        val = on_host(X_val, y_val, batch_size=1000, shuffle=False)
    return {"train": train, "val": val, "train_eval": on_host(X_sub, y_sub, batch_size=1000, shuffle=False)}


def describe_placement(loaders: dict) -> str:
    """One log line: where each HDF5 split of ``loaders`` lives (on the device, or streamed) and why."""
    parts = [
        f"{name}: {'on the device' if ld.preloaded else 'streamed from HDF5'} ({ld.placement})"
        for name, ld in loaders.items()
        if isinstance(ld, H5Loader)
    ]
    return "data: " + "; ".join(parts) if parts else ""


def check_crop_pad(cfg: TrainConfig, meta):
    """ValueError when ``cfg.crop_pad`` exceeds half the side of the data's images."""
    side = min(int(d) for d in meta["image_shape"][1:])
    if cfg.crop_pad > side // 2:
        raise ValueError(
            f"crop_pad: expected 0..{side // 2} pixels for {cfg.data}'s {side}-pixel images "
            f"(half a side), got {cfg.crop_pad}"
        )


def train_run(
    cfg: TrainConfig,
    run_dir,
    *,
    resume=False,
    force=False,
    changes=None,
    on_epoch_end=None,
    verbose=True,
    progress=None,
    plots=True,
    say=print,
    force_data=False,
) -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming its checkpoint when ``resume``); return the metrics.

    The folder is owned (``gpunet.runfolder``) for the whole run: a second trainer on it
    is refused, and so is a new run in a folder that holds one unless ``force``, whose
    old files are removed only once everything is checked and the new run writes.
    changes: ``{setting: {"from", "to"}}`` a resume made (``config.resume_changes``),
    recorded in config.json's ``resumes``; the resumed checkpoint must not be past ``cfg.epochs``.
    on_epoch_end: passed to the Solver (``callable(solver, epoch) -> stop?``).
    plots: draw curves.png and confusion.png (matplotlib takes seconds to start).
    force_data: resume although the data file's sha256 differs from the one the run recorded.
    A run that diverges (``TrainingDiverged``) still writes model.npz from its best epoch.
    """
    meta = check_data(cfg.data)
    preprocess_meta_from_h5(cfg.data)  # finite mean and std > 0, checked before training uses them
    check_crop_pad(cfg, meta)
    with runfolder.owned(run_dir) as run_dir:
        if not resume:
            runfolder.check_new_run(run_dir, force)
        # a failed new run leaves no config.json behind; a diverged one may be resumed (its message says how)
        with runfolder.all_or_nothing(run_dir, resume, keep_on=(TrainingDiverged,)):
            return _train_owned(
                cfg,
                meta,
                run_dir,
                resume,
                force,
                changes or {},
                on_epoch_end,
                verbose,
                progress,
                plots,
                say,
                force_data,
            )


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _train_owned(
    cfg, meta, run_dir, resume, force, changes, on_epoch_end, verbose, progress, plots, say, force_data=False
):
    saved = load_run(run_dir)[1] if resume else {}
    resumes = saved.get("resumes", [])
    digest = _sha256(cfg.data)  # recorded at the start of a run: a resume must train on the same data
    if saved.get("data_sha256") not in (None, digest) and not force_data:
        raise ValueError(
            f"{cfg.data}: not the data this run started with (sha256 {digest[:12]}..., the run recorded "
            f"{saved['data_sha256'][:12]}...); resume with --force-data to train on it anyway"
        )
    ckpt = run_dir / "solver.ckpt.npz"
    resume_from = str(ckpt) if resume and ckpt.is_file() else False
    if resume and not resume_from:
        say(f"{ckpt}: no checkpoint yet (interrupted in the first epoch); starting from epoch 1")
    model = build_model(cfg, meta)
    data = build_loaders(cfg, meta)
    if verbose and (placement := describe_placement(data)):
        say(placement)  # once per run: where the data lives decides the speed, never the batches
    t0 = time.perf_counter()
    try:
        solver = Solver(
            model,
            data,
            checkpoint_name=str(run_dir / "solver"),
            history_path=str(run_dir / "history.json"),
            resume=resume_from,
            on_epoch_end=on_epoch_end,
            verbose=verbose,
            progress=progress,
            **solver_options(cfg),
        )
        done = len(solver.val_acc_history)
        if done > cfg.epochs:
            raise ValueError(
                f"--epochs: expected at least the {done} epochs {run_dir} has done, got {cfg.epochs}"
            )
        if changes:
            resumes.append({"at_epoch": done, "changed": changes})
            if solver.stopped_early and ("epochs" in changes or "patience" in changes):
                solver.epoch, solver.stopped_early = done, False  # train on under the new settings
        if force:
            runfolder.clear_run(run_dir)
        save_json(
            run_dir / "config.json",
            {**cfg.to_dict(), "plots": bool(plots), "resumes": resumes, "data_sha256": digest},
        )
        try:
            with runfolder.naming(run_dir):  # the Solver's own writes (history.json): at least the folder
                solver.train()
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}{_save_best(solver, model, cfg, run_dir)}") from None
    finally:
        for loader in data.values():
            loader.close()
    wall = time.perf_counter() - t0
    _save_model(model, cfg, run_dir)

    split = "test" if "test" in meta["counts"] else "val"
    if split == "val":
        say(f"{cfg.data}: no test split; reporting the validation split (it also chose the best epoch)")
    y_true, y_pred = evaluate(model, cfg.data, split, batch_size=1000)
    report = classification_report(y_true, y_pred, meta["class_names"])
    history = solver.history()
    metrics = {
        "dataset": cfg.dataset,
        "data": cfg.data,
        "split": split,
        "test_split_present": split == "test",
        "accuracy": report["accuracy"],
        f"{split}_accuracy": report["accuracy"],
        "best_val_acc": solver.best_val_acc,
        "best_epoch": solver.best_epoch + 1,
        "final_val_acc": history["val_acc"][-1] if history["val_acc"] else None,
        "epochs_done": solver.epoch,
        "stopped_early": solver.stopped_early,
        "train_time_s": float(sum(solver.epoch_time_history)),
        "wall_time_s": wall,
        "backend": backend.selected(),
        "report": report,
    }
    save_json(run_dir / "metrics.json", metrics)
    if plots:
        write_plots(history, report, run_dir, say)
    return metrics


def _save_model(model, cfg, run_dir):
    model.meta = {**preprocess_meta_from_h5(cfg.data), "train_config": cfg.to_dict()}
    with runfolder.naming(run_dir / "model.npz"):
        model.save(run_dir / "model.npz")


def _save_best(solver, model, cfg, run_dir) -> str:
    """After divergence: model.npz from the best epoch (the Solver left its state in ``model``)."""
    if not solver.best_params:
        return "; no model.npz was written either"
    _save_model(model, cfg, run_dir)
    return (
        f"; {run_dir / 'model.npz'} holds the best epoch ({solver.best_epoch + 1}, "
        f"val acc {solver.best_val_acc:.4f})"
    )


def write_plots(history, report, run_dir, say=print):
    """curves.png and confusion.png; a plotting failure is reported, never fatal."""
    from . import plots  # matplotlib takes a moment to import: only when plotting

    try:
        plots.training_curves(history, str(Path(run_dir) / "curves.png"))
        plots.confusion_heatmap(
            np.asarray(report["confusion_matrix"]),
            report["class_names"],
            str(Path(run_dir) / "confusion.png"),
        )
    except Exception as e:  # plots are a convenience: keep the run's results
        say(f"warning: could not draw the plots ({type(e).__name__}: {e})")


def format_summary(metrics: dict) -> str:
    """The short report ``gpunet-train`` prints: accuracy, per-class F1, time."""
    r = metrics["report"]
    split = metrics["split"]
    lines = [
        f"{metrics['dataset']}: {split} accuracy {r['accuracy']:.4f} "
        f"({r['num_samples']} samples; best val acc {metrics['best_val_acc']:.4f} at epoch "
        f"{metrics['best_epoch']}/{metrics['epochs_done']})"
    ]
    if split != "test":
        lines.append("  (no test split in the file: these are validation numbers)")
    lines.append(
        "  per-class F1: "
        + ", ".join(f"{c['name']} {c['f1']:.2f}" for c in r["per_class"])
        + f"; macro F1 {r['macro_avg']['f1']:.3f}"
    )
    lines.append(f"  training time {metrics['train_time_s']:.0f} s on {metrics['backend']}")
    return "\n".join(lines)


def overfit_small(
    X,
    y,
    num_classes,
    hidden=(100, 100),
    epochs=20,
    lr=1e-3,
    optimizer="adam",
    batch_size=25,
    seed=0,
    say=print,
) -> tuple[bool, int, list]:
    """The coursework's sanity check: can a net reach 100% training accuracy on a few samples?

    X: (N, C, H, W) uint8 images, y: (N,) labels. Trains at most ``epochs`` epochs, stopping
    as soon as every training sample is classified right. Returns ``(reached, epochs run,
    per-epoch training accuracies)``.
    """
    Xf = X.astype(np.float64)
    mean, std = Xf.mean(axis=(0, 2, 3)).reshape(-1, 1, 1), Xf.std(axis=(0, 2, 3)).reshape(-1, 1, 1) + 1e-8
    model = FullyConnectedNet(
        list(hidden), input_dim=int(np.prod(X.shape[1:])), num_classes=num_classes, seed=seed
    )
    loader = lambda shuffle: ArrayLoader(X, y, batch_size, shuffle=shuffle, seed=seed, mean=mean, std=std)  # noqa
    data = {"train": loader(True), "val": loader(False), "train_eval": loader(False)}
    solver = Solver(
        model,
        data,
        update_rule=optimizer,
        optim_config={"learning_rate": lr},
        num_epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        verbose=False,
        progress=False,
        on_epoch_end=lambda s, e: s.train_acc_history[-1] >= 1.0,
    )
    solver.train()
    accs = solver.train_acc_history
    for e, a in enumerate(accs):
        say(f"epoch {e + 1:2d}: training accuracy {a:.3f}")
    return bool(accs and accs[-1] >= 1.0), solver.epoch, accs
