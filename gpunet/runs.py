"""Training runs: resolve a config, find (or convert) the data, train, evaluate, write a run folder.

``gpunet-train`` is a thin shell around this module. A run folder holds

- ``config.json``: the resolved ``TrainConfig`` (reads back with ``load_config``);
- ``history.json``: per-epoch losses and accuracies (written by the Solver each epoch);
- ``solver.ckpt.npz``: the Solver checkpoint, so ``--resume RUN_DIR`` continues;
- ``model.npz``: the best model, with the preprocessing meta prediction tools need;
- ``metrics.json``: accuracy, confusion matrix, per-class P/R/F1 on the test split
  (or val when the file has no test split), training time, backend;
- ``curves.png``, ``confusion.png``: loss/accuracy per epoch and the confusion matrix.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from . import backend, nn
from .data import ArrayLoader, H5Loader, read_meta
from .io import write_json
from .metrics import classification_report
from .model import FullyConnectedNet
from .predict import evaluate
from .optim import SCHEDULES
from .preprocess import preprocess_meta_from_h5
from .solver import Solver

DATASETS = ("cifar10", "fer2013")
OPTIMIZERS = ("sgd", "sgd_momentum", "nesterov", "rmsprop", "adam")
# Source files looked for (in this order) in the data folder and in ../shared/datasets.
SOURCE_NAMES = {"cifar10": ("cifar-10-python.tar.gz",), "fer2013": ("fer2013-images.tar.gz", "fer2013.csv")}
TRAIN_EVAL_SAMPLES = 5000  # training samples scored each epoch for the train-accuracy curve


@dataclass
class TrainConfig:
    dataset: str = "cifar10"        # cifar10 | fer2013 (with arch, picks the recipe in RECIPES)
    arch: str = "fc"                # fc: fully connected net | cnn: convnet (conv blocks, then an FC head)
    data: str | None = None         # the prepared HDF5 file (filled in by find_data)
    hidden: list = field(default_factory=lambda: [1024, 512])  # hidden layer sizes (cnn: of the FC head)
    channels: list = field(default_factory=lambda: [32, 64, 128])  # cnn: conv3x3-BN-ReLU-maxpool2 block widths
    dropout: float = 0.2            # drop probability of every hidden layer
    reg: float = 0.0                # L2 strength in the loss (0.5 * reg * sum W^2)
    optimizer: str = "adam"         # sgd | sgd_momentum | nesterov | rmsprop | adam
    lr: float = 1e-3                # base learning rate
    momentum: float = 0.9           # sgd_momentum / nesterov
    weight_decay: float = 0.0       # decoupled weight decay (AdamW-style)
    schedule: str = "cosine"        # constant | step | exponential | cosine
    step_size: int = 10             # step: epochs between drops
    gamma: float = 0.1              # step: factor per drop; exponential: factor per epoch
    min_lr_ratio: float = 0.0       # cosine: final lr / base lr
    warmup_epochs: int = 0          # linear warm-up epochs
    batch_size: int = 256
    epochs: int = 30
    patience: int | None = None     # early stopping after this many epochs without improvement
    seed: int = 0                   # initialisation, batch order, dropout, augmentation
    augment: bool = True            # random horizontal flips of training images
    crop_pad: int = 0               # random crops after padding by this many pixels (0 = off)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        """A config from a dict (e.g. config.json); ValueError naming ``where`` and the key."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object of settings, found {type(d).__name__}")
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(d) - set(types))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; expected some of {sorted(types)}")
        cfg = cls()
        for k, v in d.items():
            setattr(cfg, k, _coerce(k, v, getattr(cls(), k), where))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config"):
        checks = [("dataset", self.dataset in DATASETS, f"one of {list(DATASETS)}"),
                  ("arch", self.arch in ARCHS, f"one of {list(ARCHS)}"),
                  ("channels", len(self.channels) > 0 and all(c > 0 for c in self.channels), "positive widths"),
                  ("optimizer", self.optimizer in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
                  ("schedule", self.schedule in SCHEDULES, f"one of {list(SCHEDULES)}"),
                  ("hidden", len(self.hidden) > 0 and all(h > 0 for h in self.hidden), "positive sizes"),
                  ("dropout", 0 <= self.dropout < 1, "a probability in [0, 1)"),
                  ("lr", self.lr > 0, "> 0"), ("reg", self.reg >= 0, ">= 0"),
                  ("weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("batch_size", self.batch_size >= 1, ">= 1"), ("epochs", self.epochs >= 1, ">= 1"),
                  ("patience", self.patience is None or self.patience >= 1, ">= 1 or null"),
                  ("crop_pad", self.crop_pad >= 0, ">= 0")]
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{where}: {key}: expected {expected}, got {getattr(self, key)!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(key, value, default, where):
    """``value`` converted to the type of the field's default; ValueError naming the key."""
    try:
        if key in ("hidden", "channels"):
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                value = [value]
            return [int(h) for h in value]
        if value is None:
            if key in ("data", "patience"):
                return None
            raise TypeError("null")
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError(type(value).__name__)
            return value
        if key == "patience":
            return int(value)
        return type(default)(value) if default is not None else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key}: expected a value like {default!r}, got {value!r}") from None


# A good default recipe per (dataset, arch), measured on a 2-core CPU (see docs/RESULTS.md).
_FC = dict(arch="fc", hidden=[1024, 512], dropout=0.2, optimizer="adam", lr=1e-3, schedule="cosine",
           batch_size=256, epochs=30, augment=True)
_CNN = dict(arch="cnn", channels=[32, 64, 128], hidden=[256], dropout=0.5, optimizer="adam", lr=1e-3,
            schedule="cosine", batch_size=128, augment=True, crop_pad=4)
RECIPES = {
    ("cifar10", "fc"): _FC,
    ("fer2013", "fc"): _FC,                              # the same recipe serves both datasets
    ("cifar10", "cnn"): dict(_CNN, epochs=30),
    ("fer2013", "cnn"): dict(_CNN, epochs=25),
}
ARCHS = ("fc", "cnn")


def read_json(path, what="config file") -> dict:
    """A JSON (or, with PyYAML installed, YAML) file as a dict; ValueError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such {what}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: YAML needs PyYAML (pip install pyyaml); use JSON instead") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def resolve_config(dataset=None, config_file=None, overrides=None) -> TrainConfig:
    """Defaults < the dataset's recipe < ``config_file`` < ``overrides`` (explicit flags)."""
    from_file = read_json(config_file) if config_file else {}
    if not isinstance(from_file, dict):
        raise ValueError(f"{config_file}: expected a JSON object of settings")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    dataset = dataset or overrides.get("dataset") or from_file.get("dataset")
    if dataset is None:
        raise ValueError("dataset: name one (cifar10 or fer2013) on the command line or in --config")
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {list(DATASETS)}, got {dataset!r}")
    arch = overrides.get("arch") or from_file.get("arch") or "fc"
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {list(ARCHS)}, got {arch!r}")
    settings = {**RECIPES[(dataset, arch)], **from_file, **overrides, "dataset": dataset}
    cfg = TrainConfig.from_dict(settings, where=str(config_file) if from_file else "settings")
    return cfg


def save_json(path, obj):
    """Write ``obj`` as JSON atomically (a reader never sees half a file)."""
    write_json(path, obj)


def load_config(run_dir) -> TrainConfig:
    """The ``TrainConfig`` saved in ``run_dir/config.json``."""
    path = os.path.join(os.fspath(run_dir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; is {run_dir} a gpunet-train run folder?")
    return TrainConfig.from_dict(read_json(path), where=path)


# --------------------------------------------------------------------------- finding the data

def default_data_dir() -> str:
    return os.environ.get("GPUNET_DATA", "data")


def shared_dataset_dirs() -> list[Path]:
    """``../shared/datasets`` beside the checkout (and beside the working directory).

    ``GPUNET_SHARED_DATASETS`` (folders separated by ``os.pathsep``; empty: none) overrides it.
    """
    env = os.environ.get("GPUNET_SHARED_DATASETS")
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    repo = Path(__file__).resolve().parents[1]
    out = []
    for d in (repo.parent / "shared" / "datasets", Path.cwd().resolve().parent / "shared" / "datasets"):
        if d not in out:
            out.append(d)
    return out


def find_source(dataset, data_dir) -> Path | None:
    """The first known source file of ``dataset`` in ``data_dir`` or a shared datasets folder."""
    for folder in [Path(data_dir)] + shared_dataset_dirs():
        for name in SOURCE_NAMES[dataset]:
            if (folder / name).is_file():
                return folder / name
    return None


def find_data(dataset, data_dir=None, source=None, download=False, say=print) -> str:
    """Path of the prepared ``<data_dir>/<dataset>.h5``, converting ``source`` (or a found one) first."""
    data_dir = Path(data_dir or default_data_dir())
    out = data_dir / f"{dataset}.h5"
    if out.is_file():
        if source:
            say(f"using the prepared {out} (delete it to convert {source} again)")
        return str(out)
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such file or folder (--source)")
    src = Path(source) if source else find_source(dataset, data_dir)
    if src is None and not download:
        looked = ", ".join(str(d) for d in [data_dir] + shared_dataset_dirs())
        hint = " or --download" if dataset == "cifar10" else ""
        raise FileNotFoundError(f"{out}: no such file, and no source ({', '.join(SOURCE_NAMES[dataset])}) "
                                f"found in {looked}; pass --source PATH{hint}")
    if src is None and dataset != "cifar10":
        raise ValueError(f"{dataset}: cannot be downloaded automatically (it needs a Kaggle login); "
                         "pass --source PATH to fer2013-images.tar.gz or fer2013.csv")
    try:
        import data_prep
        from data_prep.errors import PrepError
    except ImportError as e:
        raise ValueError(f"converting {src or 'the download'} needs the data_prep package ({e})") from None
    data_dir.mkdir(parents=True, exist_ok=True)
    say(f"converting {src or 'the download'} -> {out}")
    try:
        path = data_prep.convert(dataset, str(src) if src else None, str(out), download=src is None,
                                 cache_dir=str(data_dir))
    except PrepError as e:
        raise ValueError(str(e)) from None
    return str(path or out)


# --------------------------------------------------------------------------- training

def load_split(path, split, limit=None, seed=0):
    """``(X, y)`` of ``split`` as uint8 (N, C, H, W) and int64 (N,), labels checked; ``limit``
    samples at random (``gpunet.data.load_split``, through the HDF5 format's owner)."""
    from .data import load_split as _load_split
    return _load_split(path, split, limit, seed)


def channel_stats(meta):
    """(C, 1, 1) mean and std of a file's metadata, for an ``ArrayLoader`` on (N, C, H, W)."""
    from .data import channel_stats as _channel_stats
    return _channel_stats(meta)


def cnn_layers(image_shape, channels, hidden, num_classes, dropout=0.5) -> list:
    """[conv3x3(pad 1)-BN-ReLU-maxpool2] per width in ``channels``, then Flatten-[Linear-ReLU-Dropout] per
    ``hidden`` size, then Linear to ``num_classes``. image_shape: (C, H, W)."""
    c, h, w = (int(d) for d in image_shape)
    layers = []
    for width in channels:
        if h < 2 or w < 2:
            raise ValueError(f"channels: {len(channels)} pooling blocks do not fit {tuple(image_shape)} images")
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
        return nn.Sequential(cnn_layers(shape, cfg.channels, cfg.hidden, classes, cfg.dropout), reg=cfg.reg,
                             seed=cfg.seed, input_shape=shape)
    return FullyConnectedNet(cfg.hidden, input_dim=int(np.prod(shape)), num_classes=classes,
                             dropout=cfg.dropout, reg=cfg.reg, seed=cfg.seed)


def solver_options(cfg: TrainConfig) -> dict:
    """The Solver keyword arguments a config stands for."""
    sched = {"step_size": cfg.step_size, "gamma": cfg.gamma, "min_lr_ratio": cfg.min_lr_ratio,
             "warmup_epochs": cfg.warmup_epochs, "total_epochs": cfg.epochs}
    return dict(update_rule=cfg.optimizer, batch_size=cfg.batch_size, num_epochs=cfg.epochs, seed=cfg.seed,
                optim_config={"learning_rate": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
                schedule=cfg.schedule, schedule_config=sched, patience=cfg.patience, print_every=10**9)


def check_data(path) -> dict:
    """The file's metadata, after checking it has what training needs; ValueError naming the file."""
    meta = read_meta(path)
    missing = [k for k in ("mean", "std", "image_shape", "class_names") if meta.get(k) is None]
    if missing:
        raise ValueError(f"{path}: expected root attribute(s) {missing} of a gpunet HDF5 file (data_prep)")
    for split in ("train", "val"):
        if split not in meta["counts"]:
            raise ValueError(f"{path}: expected a /{split} split, found {sorted(meta['counts'])}")
    return meta


def train_run(cfg: TrainConfig, run_dir, *, resume=False, on_epoch_end=None, verbose=True,
              progress=None, plots=True, say=print) -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming its checkpoint when ``resume``); return the metrics.

    on_epoch_end: passed to the Solver (``callable(solver, epoch) -> stop?``).
    plots: draw curves.png and confusion.png (matplotlib takes seconds to start).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = check_data(cfg.data)
    save_json(run_dir / "config.json", cfg.to_dict())
    ckpt = run_dir / "solver.ckpt.npz"
    resume_from = str(ckpt) if resume and ckpt.is_file() else False
    if resume and not resume_from:
        say(f"{ckpt}: no checkpoint yet (interrupted in the first epoch); starting from epoch 1")
    model = build_model(cfg, meta)
    augment = {"flip": cfg.augment, "crop_pad": cfg.crop_pad}  # the loader treats all-off as None
    mean, std = channel_stats(meta)
    X_sub, y_sub = load_split(cfg.data, "train", TRAIN_EVAL_SAMPLES, cfg.seed)
    train = H5Loader(cfg.data, "train", batch_size=cfg.batch_size, seed=cfg.seed, augment=augment)
    val = H5Loader(cfg.data, "val", batch_size=1000, shuffle=False)
    data = {"train": train, "val": val,
            "train_eval": ArrayLoader(X_sub, y_sub, 1000, shuffle=False, mean=mean, std=std)}
    t0 = time.perf_counter()
    try:
        solver = Solver(model, data, checkpoint_name=str(run_dir / "solver"), history_path=str(run_dir / "history.json"),
                        resume=resume_from, on_epoch_end=on_epoch_end, verbose=verbose, progress=progress,
                        **solver_options(cfg))
        solver.train()
    finally:
        train.close()
        val.close()
    wall = time.perf_counter() - t0
    model.meta = {**preprocess_meta_from_h5(cfg.data), "train_config": cfg.to_dict()}
    model.save(run_dir / "model.npz")

    split = "test" if "test" in meta["counts"] else "val"
    if split == "val":
        say(f"{cfg.data}: no test split; reporting the validation split (it also chose the best epoch)")
    y_true, y_pred = evaluate(model, cfg.data, split, batch_size=1000)
    report = classification_report(y_true, y_pred, meta["class_names"])
    history = solver.history()
    metrics = {"dataset": cfg.dataset, "data": cfg.data, "split": split, "test_split_present": split == "test",
               "accuracy": report["accuracy"], f"{split}_accuracy": report["accuracy"],
               "best_val_acc": solver.best_val_acc, "best_epoch": solver.best_epoch + 1,
               "final_val_acc": history["val_acc"][-1] if history["val_acc"] else None,
               "epochs_done": solver.epoch, "stopped_early": solver.stopped_early,
               "train_time_s": float(sum(solver.epoch_time_history)), "wall_time_s": wall,
               "backend": backend.name(), "report": report}
    save_json(run_dir / "metrics.json", metrics)
    if plots:
        write_plots(history, report, run_dir, say)
    return metrics


def write_plots(history, report, run_dir, say=print):
    """curves.png and confusion.png; a plotting failure is reported, never fatal."""
    from . import plots  # matplotlib takes a moment to import: only when plotting
    try:
        plots.training_curves(history, str(Path(run_dir) / "curves.png"))
        plots.confusion_heatmap(np.asarray(report["confusion_matrix"]), report["class_names"],
                                str(Path(run_dir) / "confusion.png"))
    except Exception as e:  # plots are a convenience: keep the run's results
        say(f"warning: could not draw the plots ({type(e).__name__}: {e})")


def format_summary(metrics: dict) -> str:
    """The short report ``gpunet-train`` prints: accuracy, per-class F1, time."""
    r = metrics["report"]
    split = metrics["split"]
    lines = [f"{metrics['dataset']}: {split} accuracy {r['accuracy']:.4f} "
             f"({r['num_samples']} samples; best val acc {metrics['best_val_acc']:.4f} at epoch "
             f"{metrics['best_epoch']}/{metrics['epochs_done']})"]
    if split != "test":
        lines.append("  (no test split in the file: these are validation numbers)")
    lines.append("  per-class F1: " + ", ".join(f"{c['name']} {c['f1']:.2f}" for c in r["per_class"])
                 + f"; macro F1 {r['macro_avg']['f1']:.3f}")
    lines.append(f"  training time {metrics['train_time_s']:.0f} s on {metrics['backend']}")
    return "\n".join(lines)


def overfit_small(X, y, num_classes, hidden=(100, 100), epochs=20, lr=1e-3, optimizer="adam",
                  batch_size=25, seed=0, say=print) -> tuple[bool, int, list]:
    """The coursework's sanity check: can a net reach 100% training accuracy on a few samples?

    X: (N, C, H, W) uint8 images, y: (N,) labels. Trains at most ``epochs`` epochs, stopping
    as soon as every training sample is classified right. Returns ``(reached, epochs run,
    per-epoch training accuracies)``.
    """
    Xf = X.astype(np.float64)
    mean, std = Xf.mean(axis=(0, 2, 3)).reshape(-1, 1, 1), Xf.std(axis=(0, 2, 3)).reshape(-1, 1, 1) + 1e-8
    model = FullyConnectedNet(list(hidden), input_dim=int(np.prod(X.shape[1:])), num_classes=num_classes,
                              seed=seed)
    loader = lambda shuffle: ArrayLoader(X, y, batch_size, shuffle=shuffle, seed=seed, mean=mean, std=std)  # noqa
    data = {"train": loader(True), "val": loader(False), "train_eval": loader(False)}
    solver = Solver(model, data, update_rule=optimizer, optim_config={"learning_rate": lr}, num_epochs=epochs,
                    batch_size=batch_size, seed=seed, verbose=False, progress=False,
                    on_epoch_end=lambda s, e: s.train_acc_history[-1] >= 1.0)
    solver.train()
    accs = solver.train_acc_history
    for e, a in enumerate(accs):
        say(f"epoch {e + 1:2d}: training accuracy {a:.3f}")
    return bool(accs and accs[-1] >= 1.0), solver.epoch, accs
