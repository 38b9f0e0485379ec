"""The Solver: gpunet's one training loop.

``Solver(model, data, **options).train()`` as in the coursework. ``data`` is
either a dict of arrays ``X_train, y_train, X_val, y_val`` or a dict of batch
iterators ``{"train": loader, "val": loader, "train_eval": loader}`` (see
``gpunet.data``; without ``train_eval`` the training accuracy is NaN); the loop
is the same for both. Per epoch: set the epoch's order and dropout stream from
``(seed, epoch)``, train on every batch once, evaluate, checkpoint atomically,
check early stopping. Because all randomness is a function of ``(seed, epoch)``,
a resumed run ends with exactly the parameters of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from . import backend
from .data import ArrayLoader
from .io import savez, write_json
from .model import read_npz
from .optim import Optimizer, Schedule

CHECKPOINT_FORMAT = "gpunet-checkpoint"


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Solver:
    """Train ``model`` on ``data``.

    Coursework options: update_rule ('sgd', 'sgd_momentum', 'nesterov', 'rmsprop', 'adam'),
    optim_config (dict: learning_rate, momentum, ...), lr_decay (per-epoch factor),
    batch_size, num_epochs, num_train_samples (train-accuracy subsample),
    num_val_samples (None = whole validation set), print_every, verbose, checkpoint_name.
    New options: seed, schedule ('constant'|'step'|'exponential'|'cosine'),
    schedule_config (dict for ``optim.Schedule``), patience (early stopping, epochs
    without improvement; None = off), resume (True or a checkpoint path),
    history_path, progress (tqdm bars; default: only when stderr is a terminal),
    on_epoch_end (callable(solver, epoch) run after each epoch; return True to stop).
    """

    def __init__(self, model, data, **kwargs):
        self.model = model
        self.update_rule = kwargs.pop("update_rule", "sgd")
        self.optim_config = dict(kwargs.pop("optim_config", {}))
        self.lr_decay = float(kwargs.pop("lr_decay", 1.0))
        self.batch_size = int(kwargs.pop("batch_size", 100))
        self.num_epochs = int(kwargs.pop("num_epochs", 10))
        self.num_train_samples = kwargs.pop("num_train_samples", 1000)
        self.num_val_samples = kwargs.pop("num_val_samples", None)
        self.print_every = int(kwargs.pop("print_every", 10))
        self.verbose = bool(kwargs.pop("verbose", True))
        self.checkpoint_name = kwargs.pop("checkpoint_name", None)
        self.seed = int(kwargs.pop("seed", 0))
        schedule = kwargs.pop("schedule", None)
        schedule_config = dict(kwargs.pop("schedule_config", {}))
        self.patience = kwargs.pop("patience", None)
        resume = kwargs.pop("resume", False)
        self.history_path = kwargs.pop("history_path", None)
        self.progress = kwargs.pop("progress", None)
        self.on_epoch_end = kwargs.pop("on_epoch_end", None)
        if kwargs:
            raise ValueError(f"Solver: unrecognized option(s) {sorted(kwargs)}")
        if self.batch_size < 1 or self.num_epochs < 0:
            raise ValueError(f"batch_size/num_epochs: expected >= 1 / >= 0, got {self.batch_size}/{self.num_epochs}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"patience: expected a positive number of epochs or None, got {self.patience}")

        self.optimizer = Optimizer(self.update_rule, self.optim_config)
        if schedule is None:
            schedule = "exponential" if self.lr_decay != 1.0 else "constant"
            if schedule == "exponential":
                schedule_config.setdefault("gamma", self.lr_decay)
        schedule_config.setdefault("total_epochs", self.num_epochs)
        self.schedule = Schedule(name=schedule, **schedule_config)
        self.train_loader, self.val_loader, self.train_eval_loader = self._make_loaders(data)
        if self.history_path is None and self.checkpoint_name:
            self.history_path = f"{self.checkpoint_name}.history.json"
        self._reset()
        if resume:
            path = resume if isinstance(resume, (str, os.PathLike)) else self.checkpoint_path
            if path is None:
                raise ValueError("resume: needs a checkpoint path or checkpoint_name")
            self.load_checkpoint(path)

    # ----------------------------------------------------------------- set-up
    def _make_loaders(self, data):
        if "train" in data:
            return data["train"], data.get("val"), data.get("train_eval")
        try:
            X_tr, y_tr, X_val, y_val = (data[k] for k in ("X_train", "y_train", "X_val", "y_val"))
        except KeyError as e:
            raise ValueError(f"data: expected keys X_train, y_train, X_val, y_val (or train/val loaders), "
                             f"missing {e}") from None
        C = self.model.num_classes
        for name, y, X in (("y_train", y_tr, X_tr), ("y_val", y_val, X_val)):
            y_np = backend.to_numpy(y)
            if len(y_np) != len(X):
                raise ValueError(f"{name}: expected {len(X)} labels, got {len(y_np)}")
            if len(y_np) and (y_np.min() < 0 or y_np.max() >= C):
                raise ValueError(f"{name}: expected labels in [0, {C}), got values in "
                                 f"[{y_np.min()}, {y_np.max()}]")
        if self.num_val_samples is not None and self.num_val_samples < len(y_val):
            X_val, y_val = X_val[: self.num_val_samples], y_val[: self.num_val_samples]
        train = ArrayLoader(X_tr, y_tr, self.batch_size, shuffle=True, seed=self.seed, dtype=self.model.dtype)
        val = ArrayLoader(X_val, y_val, 1024, shuffle=False, dtype=self.model.dtype)
        n = len(y_tr) if self.num_train_samples is None else min(int(self.num_train_samples), len(y_tr))
        sub = np.sort(np.random.default_rng([self.seed, 2**31 - 1]).permutation(len(y_tr))[:n])
        sub_d = backend.to_device(sub)
        train_eval = ArrayLoader(train.X[sub_d], train.y[sub_d], 1024, shuffle=False, dtype=self.model.dtype)
        return train, val, train_eval

    def _reset(self):
        self.epoch = 0
        self.best_val_acc = -1.0
        self.best_epoch = -1
        self.best_params = {}
        self.loss_history, self.train_acc_history, self.val_acc_history, self.lr_history = [], [], [], []
        self.epoch_time_history = []
        self.stopped_early = False

    @property
    def checkpoint_path(self):
        return f"{self.checkpoint_name}.ckpt.npz" if self.checkpoint_name else None

    # ------------------------------------------------------------ evaluation
    def check_accuracy(self, loader):
        """Fraction of ``loader``'s samples classified correctly (one host sync)."""
        if loader is None:
            return float("nan")
        correct, n = 0, 0
        for X, y in loader:
            correct = correct + (self.model.loss(X).argmax(axis=1) == y).sum()
            n += len(y)
        return float(correct) / max(n, 1)

    # ------------------------------------------------------------------ train
    def _say(self, msg):
        if self.verbose:
            tqdm.write(msg)

    def _bars(self):
        show = self.progress if self.progress is not None else (self.verbose and sys.stderr.isatty())
        return not show

    def train(self):
        """Run the remaining epochs; leaves the best parameters in the model."""
        disable = self._bars()
        epochs = tqdm(range(self.epoch, self.num_epochs), desc="epochs", initial=self.epoch,
                      total=self.num_epochs, disable=disable, unit="ep", leave=True)
        try:
            for epoch in epochs:
                if self._run_epoch(epoch, disable):
                    break
        finally:
            epochs.close()
        if self.best_params:
            self.model.set_params(self.best_params)
        return self

    def _run_epoch(self, epoch, disable):
        t0 = time.perf_counter()
        model, loader = self.model, self.train_loader
        lr = self.optimizer.config.learning_rate * self.schedule.factor(epoch)
        loader.set_epoch(epoch)
        model.rng = backend.default_rng([self.seed, epoch, 1])
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", total=len(loader), leave=False, disable=disable, unit="batch")
        for it, (X, y) in enumerate(bar):
            loss, grads = model.loss(X, y)
            self.optimizer.step(model.params, grads, lr)
            losses.append(loss)
            if (it + 1) % self.print_every == 0:
                recent = self._check_finite(losses[-self.print_every:], epoch, it)
                bar.set_postfix(loss=f"{recent[-1]:.4f}")
                if disable:
                    self._say(f"(epoch {epoch + 1}, iteration {it + 1} / {len(loader)}) loss: {recent[-1]:f}")
        bar.close()
        losses = self._check_finite(losses, epoch, len(losses) - 1)
        self.loss_history.extend(losses)

        train_acc = self.check_accuracy(self.train_eval_loader) if self.train_eval_loader is not None else float("nan")
        val_acc = self.check_accuracy(self.val_loader)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        self.lr_history.append(lr)
        self.epoch_time_history.append(time.perf_counter() - t0)
        improved = val_acc > self.best_val_acc or self.val_loader is None
        if improved:
            self.best_val_acc, self.best_epoch = val_acc, epoch
            self.best_params = {k: v.copy() for k, v in model.params.items()}
        self.epoch = epoch + 1
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        self._say(f"(epoch {self.epoch} / {self.num_epochs}) loss {mean_loss:.4f}  train acc {train_acc:.4f}  "
                  f"val acc {val_acc:.4f}  lr {lr:.3g}  {self.epoch_time_history[-1]:.1f}s")
        stop = False
        if self.patience is not None and epoch - self.best_epoch >= int(self.patience):
            self.stopped_early = stop = True
            self._say(f"early stopping: no validation improvement for {int(self.patience)} epochs "
                      f"(best {self.best_val_acc:.4f} at epoch {self.best_epoch + 1})")
        self.save_checkpoint()
        self.save_history()
        if self.on_epoch_end is not None and self.on_epoch_end(self, epoch):
            stop = True
        return stop

    def _check_finite(self, losses, epoch, it):
        """Losses as floats (one host sync); raise TrainingDiverged on NaN/inf."""
        xp = backend.get_array_module(losses[0]) if losses else np
        values = backend.to_numpy(xp.stack([xp.asarray(v) for v in losses])).astype(float).tolist() if losses else []
        if values and not all(math.isfinite(v) for v in values):
            where = f"checkpoint {self.checkpoint_path} (epoch {self.epoch})" if self.checkpoint_path else "no checkpoint"
            if self.best_params:
                self.model.set_params(self.best_params)
            raise TrainingDiverged(
                f"loss became {values[-1] if not math.isfinite(values[-1]) else 'non-finite'} at epoch {epoch + 1}, "
                f"iteration {it + 1}: lower the learning rate; the last good state is kept in {where}")
        return values

    # -------------------------------------------------------------- persistence
    def history(self) -> dict:
        return {"loss": self.loss_history, "train_acc": self.train_acc_history,
                "val_acc": self.val_acc_history, "lr": self.lr_history,
                "epoch_time": self.epoch_time_history, "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch + 1, "epochs_done": self.epoch,
                "stopped_early": self.stopped_early}

    def save_history(self, path=None):
        path = path or self.history_path
        if not path:
            return
        write_json(path, self.history())

    def save_checkpoint(self, path=None):
        """Parameters, best parameters, optimizer state and progress, written atomically."""
        path = path or self.checkpoint_path
        if not path:
            return
        arrays, opt_meta = {}, {}
        for k, v in self.model.params.items():
            arrays[f"param/{k}"] = backend.to_numpy(v)
        for k, v in self.best_params.items():
            arrays[f"best/{k}"] = backend.to_numpy(v)
        for k, st in self.optimizer.state.items():
            for name, v in st.items():
                if isinstance(v, (int, float)):
                    opt_meta[f"{k}/{name}"] = v
                else:
                    arrays[f"opt/{k}/{name}"] = backend.to_numpy(v)
        desc = {"format": CHECKPOINT_FORMAT, "version": 1, "epoch": self.epoch, "seed": self.seed,
                "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "history": self.history(),
                "update_rule": self.update_rule, "optim_config": self.optimizer.config.to_dict(),
                "opt_scalars": opt_meta, "model": self.model.config()}
        arrays["__meta__"] = np.frombuffer(json.dumps(desc).encode("utf-8"), dtype=np.uint8)
        savez(path, arrays)

    def load_checkpoint(self, path):
        """Restore everything ``save_checkpoint`` wrote; the next ``train()`` continues from there."""
        arrays, desc = read_npz(path, what="checkpoint")
        if desc.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a gpunet checkpoint (format {desc.get('format')!r})")
        if desc["model"]["hidden_dims"] != self.model.hidden_dims or desc["model"]["input_dim"] != self.model.input_dim:
            raise ValueError(f"{path}: checkpoint is for a model {desc['model']}, not {self.model.config()}")
        if desc["update_rule"] != self.update_rule:
            raise ValueError(f"{path}: checkpoint was trained with update_rule {desc['update_rule']!r}, "
                             f"not {self.update_rule!r}")
        self.model.set_params({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
        self.best_params = {k[5:]: backend.to_device(v) for k, v in arrays.items() if k.startswith("best/")}
        state = {}
        for k, v in arrays.items():
            if k.startswith("opt/"):
                _, pname, sname = k.split("/")
                state.setdefault(pname, {})[sname] = backend.to_device(v)
        for key, v in desc.get("opt_scalars", {}).items():
            pname, sname = key.split("/")
            state.setdefault(pname, {})[sname] = v
        self.optimizer.state = state
        h = desc["history"]
        if desc["seed"] != self.seed:
            raise ValueError(f"{path}: checkpoint was trained with seed {desc['seed']}, not {self.seed}; "
                             "resume with the same seed")
        self.epoch = desc["epoch"]
        self.best_val_acc, self.best_epoch = desc["best_val_acc"], desc["best_epoch"]
        self.stopped_early = desc.get("stopped_early", False)
        self.loss_history, self.train_acc_history = list(h["loss"]), list(h["train_acc"])
        self.val_acc_history, self.lr_history = list(h["val_acc"]), list(h["lr"])
        self.epoch_time_history = list(h.get("epoch_time", []))
        if self.stopped_early:
            self.epoch = max(self.epoch, self.num_epochs)
