"""Training settings: the ``TrainConfig`` dataclass, the tuned recipes, and how they are resolved.

Precedence, lowest first: the dataclass defaults < the recipe of (dataset, arch) in
``RECIPES`` < a ``--config`` JSON/YAML file < explicit command-line flags. A run
folder's ``config.json`` is a ``TrainConfig`` written back out (``load_config``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

from .optim import SCHEDULES

DATASETS = ("cifar10", "fer2013")
ARCHS = ("fc", "cnn")
OPTIMIZERS = ("sgd", "sgd_momentum", "nesterov", "rmsprop", "adam")


@dataclass
class TrainConfig:
    dataset: str = "cifar10"  # cifar10 | fer2013 (with arch, picks the recipe in RECIPES)
    arch: str = "fc"  # fc: fully connected net | cnn: convnet (conv blocks, then an FC head)
    data: str | None = None  # the prepared HDF5 file (filled in by find_data)
    hidden: list = field(default_factory=lambda: [1024, 512])  # hidden layer sizes (cnn: of the FC head)
    channels: list = field(
        default_factory=lambda: [32, 64, 128]
    )  # cnn: conv3x3-BN-ReLU-maxpool2 block widths
    dropout: float = 0.2  # drop probability of every hidden layer
    reg: float = 0.0  # L2 strength in the loss (0.5 * reg * sum W^2)
    optimizer: str = "adam"  # sgd | sgd_momentum | nesterov | rmsprop | adam
    lr: float = 1e-3  # base learning rate
    momentum: float = 0.9  # sgd_momentum / nesterov
    weight_decay: float = 0.0  # decoupled weight decay (AdamW-style)
    schedule: str = "cosine"  # constant | step | exponential | cosine
    step_size: int = 10  # step: epochs between drops
    gamma: float = 0.1  # step: factor per drop; exponential: factor per epoch
    min_lr_ratio: float = 0.0  # cosine: final lr / base lr
    warmup_epochs: int = 0  # linear warm-up epochs
    batch_size: int = 256
    epochs: int = 30
    patience: int | None = None  # early stopping after this many epochs without improvement
    seed: int = 0  # initialisation, batch order, dropout, augmentation
    augment: bool = True  # random horizontal flips of training images
    crop_pad: int = 0  # random crops after padding by this many pixels (0 = off)
    graph: bool = True  # CuPy: replay each training step from a CUDA graph (--no-graph: eager)
    data_on_device: str = "auto"  # auto | yes | no: keep the HDF5 splits on the device or stream them
    recipe: str = "default"  # which recipe of (dataset, arch) the defaults came from (VARIANTS)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        """A config from a dict (e.g. config.json); ValueError naming ``where`` and the key."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object of settings, found {type(d).__name__}")
        types = {f.name: f.type for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in RUN_KEYS}  # a run's config.json is a valid --config
        unknown = sorted(set(d) - set(types))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; expected some of {sorted(types)}")
        cfg = cls()
        for k, v in d.items():
            setattr(cfg, k, _coerce(k, v, getattr(cls(), k), where))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config"):
        finite = all(math.isfinite(getattr(self, k)) for k in _FLOATS)
        if not finite:
            bad = next(k for k in _FLOATS if not math.isfinite(getattr(self, k)))
            raise ValueError(f"{where}: {bad}: expected a finite number, got {getattr(self, bad)!r}")
        checks = [
            ("dataset", self.dataset in DATASETS, f"one of {list(DATASETS)}"),
            ("arch", self.arch in ARCHS, f"one of {list(ARCHS)}"),
            ("channels", len(self.channels) > 0 and all(c > 0 for c in self.channels), "positive widths"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
            ("schedule", self.schedule in SCHEDULES, f"one of {list(SCHEDULES)}"),
            ("hidden", len(self.hidden) > 0 and all(h > 0 for h in self.hidden), "positive sizes"),
            ("dropout", 0 <= self.dropout < 1, "a probability in [0, 1)"),
            ("lr", self.lr > 0, "> 0"),
            ("reg", self.reg >= 0, ">= 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("patience", self.patience is None or self.patience >= 1, ">= 1 or null"),
            ("crop_pad", 0 <= self.crop_pad <= MAX_CROP_PAD, f"0..{MAX_CROP_PAD} pixels"),
            ("hidden", all(h <= MAX_WIDTH for h in self.hidden), f"sizes up to {MAX_WIDTH}"),
            ("channels", all(c <= MAX_WIDTH for c in self.channels), f"widths up to {MAX_WIDTH}"),
            ("momentum", 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("step_size", self.step_size >= 1, ">= 1"),
            ("gamma", self.gamma > 0, "> 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"0..epochs ({self.epochs})"),
            ("seed", 0 <= self.seed < 2**32, "an integer in [0, 2**32)"),
            ("data_on_device", self.data_on_device in ("auto", "yes", "no"), "one of auto, yes, no"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{where}: {key}: expected {expected}, got {getattr(self, key)!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


_FLOATS = ("dropout", "reg", "lr", "momentum", "weight_decay", "gamma", "min_lr_ratio")
MAX_CROP_PAD = 64  # random-crop padding in pixels (gpunet.runs also refuses more than half an image side)
MAX_WIDTH = 1 << 16  # a layer wider than this is a typo, not a recipe (it would need GiBs of weights)
# Keys a run folder's config.json holds beside the settings: whether plots are drawn, and the
# history of --resume calls that changed settings ([{"at_epoch": 3, "changed": {"lr": {"from": .., "to":
# ..}}}]).
RUN_KEYS = ("plots", "resumes", "data_sha256")  # data_sha256: the data file a resume must find again
# Settings --resume may change: how long and how fast to train, never the model or its data.
# batch_size is refused too: it fixes each epoch's batch order and the loss history's iterations.
RESUMABLE = (
    "epochs",
    "lr",
    "patience",
    "schedule",
    "step_size",
    "gamma",
    "min_lr_ratio",
    "warmup_epochs",
    "momentum",
    "weight_decay",
    "graph",
    "data_on_device",  # the same batches either way: only the speed changes
)


def resume_changes(cfg: TrainConfig, overrides: dict, where: str) -> tuple[TrainConfig, dict]:
    """``(cfg with overrides applied, {key: {"from": old, "to": new}})`` for a resumed run.

    overrides: flag values (None = not given). ValueError naming the flags that would
    change the model or its data (only ``RESUMABLE`` settings may change).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    refused = sorted(k for k in given if k not in RESUMABLE)
    if refused:
        raise ValueError(
            f"--resume keeps the model and data of {where}; drop "
            f"{', '.join('--' + k.replace('_', '-') for k in refused)} (only "
            f"{', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change)"
        )
    new = TrainConfig.from_dict({**cfg.to_dict(), **given}, where="--resume settings")
    changed = {
        k: {"from": getattr(cfg, k), "to": getattr(new, k)}
        for k in given
        if getattr(new, k) != getattr(cfg, k)
    }
    return new, changed


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
_FC = dict(
    arch="fc",
    hidden=[1024, 512],
    dropout=0.2,
    optimizer="adam",
    lr=1e-3,
    schedule="cosine",
    batch_size=256,
    epochs=30,
    augment=True,
)
_CNN = dict(
    arch="cnn",
    channels=[32, 64, 128],
    hidden=[256],
    dropout=0.5,
    optimizer="adam",
    lr=1e-3,
    schedule="cosine",
    batch_size=128,
    augment=True,
    crop_pad=4,
)
# Named variants (--recipe NAME), measured the same way. "fast": CIFAR-10 to 55 % test in about a
# minute of training on 2 cores (net A's size, 20 epochs; docs/RESULTS.md has the run).
VARIANTS = {
    ("cifar10", "fc", "fast"): dict(_FC, hidden=[512, 256], dropout=0.1, epochs=20),
}
RECIPES = {
    ("cifar10", "fc"): _FC,
    ("fer2013", "fc"): _FC,  # the same recipe serves both datasets
    ("cifar10", "cnn"): dict(_CNN, epochs=30),
    ("fer2013", "cnn"): dict(_CNN, channels=[32, 64, 128, 256], hidden=[512], dropout=0.3, epochs=36),
}


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
    recipe = overrides.get("recipe") or from_file.get("recipe") or "default"
    names = ["default"] + [v for d, a, v in VARIANTS if (d, a) == (dataset, arch)]
    if recipe not in names:
        raise ValueError(f"recipe: expected one of {names} for {dataset} --arch {arch}, got {recipe!r}")
    base = RECIPES[(dataset, arch)] if recipe == "default" else VARIANTS[(dataset, arch, recipe)]
    settings = {**base, **from_file, **overrides, "dataset": dataset, "recipe": recipe}
    cfg = TrainConfig.from_dict(settings, where=str(config_file) if from_file else "settings")
    return cfg


def load_config(run_dir) -> TrainConfig:
    """The ``TrainConfig`` saved in ``run_dir/config.json``, its data path made absolute
    (a relative one is taken from the run folder, or for older runs the working directory)."""
    return load_run(run_dir)[0]


def load_run(run_dir) -> tuple[TrainConfig, dict]:
    """``(TrainConfig, run keys)`` of ``run_dir/config.json`` (see ``RUN_KEYS``)."""
    path = os.path.join(os.fspath(run_dir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; is {run_dir} a gpunet-train run folder?")
    d = read_json(path)
    cfg = TrainConfig.from_dict(d, where=path)
    if cfg.data and not os.path.isabs(cfg.data):
        beside = os.path.join(os.fspath(run_dir), cfg.data)
        cfg.data = os.path.abspath(
            beside if os.path.exists(beside) or not os.path.exists(cfg.data) else cfg.data
        )
    extra = {k: d[k] for k in RUN_KEYS if k in d}
    if not isinstance(extra.get("plots", True), bool) or not isinstance(extra.get("resumes", []), list):
        raise ValueError(
            f"{path}: plots/resumes: expected true/false and a list, found "
            f"{extra.get('plots')!r}/{extra.get('resumes')!r:.80}"
        )
    return cfg, extra


def solver_options(cfg: TrainConfig) -> dict:
    """The Solver keyword arguments a config stands for."""
    sched = {
        "step_size": cfg.step_size,
        "gamma": cfg.gamma,
        "min_lr_ratio": cfg.min_lr_ratio,
        "warmup_epochs": cfg.warmup_epochs,
        "total_epochs": cfg.epochs,
    }
    return dict(
        update_rule=cfg.optimizer,
        batch_size=cfg.batch_size,
        num_epochs=cfg.epochs,
        seed=cfg.seed,
        optim_config={"learning_rate": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
        schedule=cfg.schedule,
        schedule_config=sched,
        patience=cfg.patience,
        print_every=10**9,
        graph=cfg.graph,
    )
