"""Solver checkpoints: one ``.npz`` file that holds everything a resumed run needs.

Layout (all arrays NumPy, read with ``allow_pickle=False``)::

    param/<name>        the model's parameters               (shape of model.params[name])
    buffer/<name>       its non-trainable buffers             (shape of model.buffers[name])
    best/<name>         the best epoch's parameters and buffers
    opt/<param>/<slot>  optimizer state arrays                (shape of the parameter)
    __meta__            JSON: format, version, epoch, seed, update rule, model config,
                        optimizer scalars (e.g. Adam's step count) and the histories

Reading is split from applying: ``read_checkpoint(path, solver)`` opens the file and
checks all of it against the solver (format, version, model config, every
parameter's and buffer's name and shape, optimizer state shapes, update rule,
seed) and raises ``ValueError`` naming the file and the entry on the first
mismatch, changing nothing; ``Checkpoint.apply(solver)`` then installs it. So a
refused resume leaves the Solver exactly as it was.

Models may carry ``model.buffers`` (a dict of non-trainable arrays such as batch
norm's ``"<i>.running_mean"``); a model without the attribute has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .io import savez
from .model import read_npz
from .runfolder import naming

CHECKPOINT_FORMAT = "gpunet-checkpoint"
CHECKPOINT_VERSION = 2  # v2 adds buffer/ entries; v1 files (no buffers) still load
_HISTORY_KEYS = ("loss", "train_acc", "val_acc", "lr")


def model_buffers(model) -> dict:
    """``model.buffers``, or ``{}`` for a model without non-trainable state."""
    return getattr(model, "buffers", None) or {}


def model_state(model, copy=True) -> dict:
    """Parameters and buffers in one dict (what ``model.set_params`` accepts back)."""
    state = {**model.params, **model_buffers(model)}
    return {k: v.copy() for k, v in state.items()} if copy else state


def _json_normal(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparing configs."""
    return json.loads(json.dumps(obj))


@dataclass
class Checkpoint:
    """A checkpoint read from disk and already checked against one Solver."""

    path: str
    desc: dict  # the JSON description
    params: dict  # name -> (shape of the parameter) array
    buffers: dict = field(default_factory=dict)  # name -> buffer array
    best: dict = field(default_factory=dict)  # name -> best epoch's parameter/buffer
    opt_state: dict = field(default_factory=dict)  # param name -> {slot: array or number}

    def apply(self, solver):
        """Install this checkpoint in ``solver`` (its model, optimizer and progress)."""
        d, h = self.desc, self.desc["history"]
        best = {k: backend.to_device(v) for k, v in self.best.items()}
        state = {
            p: {s: (backend.to_device(v) if isinstance(v, np.ndarray) else v) for s, v in st.items()}
            for p, st in self.opt_state.items()
        }
        solver.model.set_params({**self.params, **self.buffers})
        solver.best_params = best
        solver.optimizer.state = state
        solver.epoch = int(d["epoch"])
        solver.best_val_acc, solver.best_epoch = d["best_val_acc"], d["best_epoch"]
        solver.stopped_early = bool(d.get("stopped_early", False))
        solver.loss_history, solver.train_acc_history = list(h["loss"]), list(h["train_acc"])
        solver.val_acc_history, solver.lr_history = list(h["val_acc"]), list(h["lr"])
        solver.epoch_time_history = list(h.get("epoch_time", []))
        if solver.stopped_early:
            solver.epoch = max(solver.epoch, solver.num_epochs)


def save_checkpoint(path, solver):
    """Write ``solver``'s parameters, buffers, best state, optimizer state and progress atomically."""
    model = solver.model
    arrays, opt_scalars = {}, {}
    for k, v in model.params.items():
        arrays[f"param/{k}"] = backend.to_numpy(v)
    for k, v in model_buffers(model).items():
        arrays[f"buffer/{k}"] = backend.to_numpy(v)
    for k, v in solver.best_params.items():
        arrays[f"best/{k}"] = backend.to_numpy(v)
    for k, st in solver.optimizer.state.items():
        for name, v in st.items():
            if isinstance(v, (int, float, np.integer, np.floating)):
                opt_scalars[f"{k}/{name}"] = v.item() if hasattr(v, "item") else v
            else:
                arrays[f"opt/{k}/{name}"] = backend.to_numpy(v)
    desc = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": solver.epoch,
        "seed": solver.seed,
        "best_val_acc": solver.best_val_acc,
        "best_epoch": solver.best_epoch,
        "stopped_early": solver.stopped_early,
        "history": solver.history(),
        "update_rule": solver.update_rule,
        "optim_config": solver.optimizer.config.to_dict(),
        "opt_scalars": opt_scalars,
        "model": model.config(),
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(desc).encode("utf-8"), dtype=np.uint8)
    with naming(path):  # a full disk names the checkpoint, not just [Errno 28]
        savez(path, arrays)


def _check_arrays(path, kind, found: dict, expected: dict):
    """Every name of ``expected`` in ``found`` with the same shape (and no extra names)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{path}: {kind}: expected entries {sorted(expected)}, missing {missing}, unexpected {extra}"
        )
    for k, v in found.items():
        want = tuple(expected[k].shape)
        if tuple(v.shape) != want:
            raise ValueError(f"{path}: {kind}/{k}: expected shape {want}, found {tuple(v.shape)}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():  # a diverged state is no "last good state"
            raise ValueError(f"{path}: {kind}/{k}: expected finite values, found NaN or inf")


def _check_desc_types(path, desc):
    """ValueError naming the entry when a field of the description has the wrong type."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    h = desc["history"]
    checks = [
        ("epoch", is_int(desc["epoch"]) and desc["epoch"] >= 0, "an integer >= 0"),
        ("seed", is_int(desc["seed"]), "an integer"),
        ("best_val_acc", is_num(desc["best_val_acc"]), "a number"),
        ("best_epoch", is_int(desc["best_epoch"]) and desc["best_epoch"] >= -1, "an integer >= -1"),
        ("update_rule", isinstance(desc["update_rule"], str), "a name"),
        ("model", isinstance(desc["model"], dict), "a JSON object"),
        ("stopped_early", isinstance(desc.get("stopped_early", False), bool), "true or false"),
        ("opt_scalars", isinstance(desc.get("opt_scalars", {}), dict), "a JSON object"),
    ]
    checks += [
        (
            f"history.{k}",
            isinstance(h[k], list) and all(is_num(v) or v is None for v in h[k]),
            "a list of numbers",
        )
        for k in _HISTORY_KEYS
    ]
    checks.append(
        (
            "history.epoch_time",
            isinstance(h.get("epoch_time", []), list) and all(is_num(v) for v in h.get("epoch_time", [])),
            "a list of numbers",
        )
    )
    for key, ok, expected in checks:
        if not ok:
            value = desc.get(key) if "." not in key else h.get(key.split(".")[1])
            raise ValueError(f"{path}: __meta__.{key}: expected {expected}, found {value!r:.80}")


def read_checkpoint(path, solver) -> Checkpoint:
    """Open ``path`` and check it completely against ``solver``; nothing is changed.

    Raises ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file,
    the entry, what was expected and what was found.
    """
    groups = {"param": {}, "buffer": {}, "best": {}, "opt": {}}
    arrays, desc = read_npz(
        path, what="checkpoint", accept=lambda k: k.partition("/")[0] in groups and k.partition("/")[2] != ""
    )
    if desc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: not a gpunet checkpoint (format {desc.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    version = desc.get("version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {version!r} is not one this gpunet reads "
            f"(1..{CHECKPOINT_VERSION}); a newer gpunet wrote it, or it is damaged"
        )
    needed = ("epoch", "seed", "best_val_acc", "best_epoch", "history", "update_rule", "model")
    missing = [k for k in needed if k not in desc]
    history = desc.get("history") if isinstance(desc.get("history"), dict) else {}
    missing += [f"history.{k}" for k in _HISTORY_KEYS if k not in history]
    if missing:
        raise ValueError(f"{path}: __meta__: missing entries {missing}")
    _check_desc_types(path, desc)
    model = solver.model
    own, saved = _json_normal(model.config()), dict(desc["model"])
    if "kind" not in saved and own.get("kind") == "fully_connected":
        saved["kind"] = "fully_connected"  # configs written before models named their kind
    if saved != own:
        raise ValueError(f"{path}: checkpoint is for a model {desc['model']}, not {own}")
    if desc["update_rule"] != solver.update_rule:
        raise ValueError(
            f"{path}: checkpoint was trained with update_rule {desc['update_rule']!r}, "
            f"not {solver.update_rule!r}"
        )
    if desc["seed"] != solver.seed:
        raise ValueError(
            f"{path}: checkpoint was trained with seed {desc['seed']}, not {solver.seed}; "
            "resume with the same seed"
        )

    for k, v in arrays.items():
        head, _, rest = k.partition("/")
        if head not in groups or not rest:
            raise ValueError(
                f"{path}: unexpected entry {k!r} (expected param/, buffer/, best/ or opt/ names)"
            )
        groups[head][rest] = v
    params, buffers = model.params, model_buffers(model)
    _check_arrays(path, "param", groups["param"], params)
    _check_arrays(path, "buffer", groups["buffer"], buffers if version >= 2 else {})
    if version < 2 and buffers:
        raise ValueError(
            f"{path}: a version-1 checkpoint has no buffers, but the model has {sorted(buffers)}"
        )
    # before the first finished epoch there is no best state: the group may be empty
    if groups["best"]:
        _check_arrays(path, "best", groups["best"], {**params, **buffers})

    opt_state = {}
    for k, v in groups["opt"].items():
        pname, _, slot = k.partition("/")
        if pname not in params or not slot:
            raise ValueError(
                f"{path}: opt/{k}: expected opt/<parameter>/<slot> with a parameter of "
                f"the model ({sorted(params)})"
            )
        if tuple(v.shape) != tuple(params[pname].shape):
            raise ValueError(
                f"{path}: opt/{k}: expected shape {tuple(params[pname].shape)} (the "
                f"parameter's), found {tuple(v.shape)}"
            )
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ValueError(f"{path}: opt/{k}: expected finite values, found NaN or inf")
        opt_state.setdefault(pname, {})[slot] = v
    for key, v in desc.get("opt_scalars", {}).items():
        pname, _, slot = key.partition("/")
        if pname not in params or not slot or not isinstance(v, (int, float)):
            raise ValueError(f"{path}: opt_scalars[{key!r}]: expected a number for a parameter of the model")
        opt_state.setdefault(pname, {})[slot] = v
    return Checkpoint(str(path), desc, groups["param"], groups["buffer"], groups["best"], opt_state)
