"""The Solver: gpunet's one training loop.

``Solver(model, data, **options).train()`` as in the coursework, or
``Solver(model, data, config=SolverConfig(...))``. ``data`` is either a dict of
arrays ``X_train, y_train, X_val, y_val`` or a dict of batch iterators
``{"train": loader, "val": loader, "train_eval": loader}`` (see ``gpunet.data``;
without ``train_eval`` the training accuracy is NaN); the loop is the same for
both. Per epoch: set the epoch's order and dropout stream from ``(seed, epoch)``,
run ``_train_step`` on every batch once, then the extensions' epoch ends
(``gpunet.extensions``): check the losses once, evaluate, log, early stopping,
checkpoint atomically (``gpunet.checkpoint``) and history, callbacks. Because all
randomness is a function of ``(seed, epoch)``, a resumed run ends with exactly
the parameters of an uninterrupted one.

The model contract: ``loss(X, y=None)``, ``params`` (dict of arrays),
``set_params``, ``config()``, ``num_classes``, ``dtype``, ``rng``; optionally
``buffers`` (dict of non-trainable arrays, e.g. batch-norm running statistics),
which the best-epoch snapshot and checkpoints carry along with the parameters.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from . import backend, threads
from . import extensions as ext
from .checkpoint import read_checkpoint, save_checkpoint
from .ops import philox
from .train_step import make_train_step
from .data import ArrayLoader
from .data.plan import CHECK_STREAM, DROPOUT_STREAM, TRAIN_EVAL_STREAM
from .divergence import TrainingDiverged, diverged  # noqa: F401 (TrainingDiverged: public here)
from .io import write_json
from .optim import Optimizer, Schedule


@dataclass
class SolverConfig:
    """Every setting of a Solver; the coursework's keyword arguments are its first ten fields."""

    update_rule: str = "sgd"  # 'sgd', 'sgd_momentum', 'nesterov', 'rmsprop', 'adam', 'adamw'
    optim_config: dict = field(default_factory=dict)  # learning_rate, momentum, ... (optim.OptimConfig)
    lr_decay: float = 1.0  # per-epoch factor (an exponential schedule when != 1)
    batch_size: int = 100  # samples per step (array data only)
    num_epochs: int = 10  # epochs to train in total (a resumed run counts done ones)
    num_train_samples: int | None = 1000  # train-accuracy subsample per epoch; None = all
    num_val_samples: int | None = None  # validation subset (first N); None = all
    print_every: int = 10  # iterations between loss lines (CPU; see _run_epoch)
    verbose: bool = True  # print progress lines
    checkpoint_name: str | None = None  # NAME.ckpt.npz after each epoch, NAME.history.json
    seed: int = 0  # shuffling, dropout and subsampling streams
    schedule: str | None = None  # 'constant', 'step', 'exponential', 'cosine'; None: from lr_decay
    schedule_config: dict = field(default_factory=dict)  # extra optim.Schedule fields
    patience: int | None = None  # early stopping after this many epochs without improvement
    resume: Any = False  # True (checkpoint_name's file) or a checkpoint path
    history_path: str | None = None  # where the history JSON goes; None: beside the checkpoint
    progress: bool | None = None  # tqdm bars; None: only when stderr is a terminal
    on_epoch_end: Callable | None = None  # callable(solver, epoch) after each epoch; True stops
    graph: bool = True  # CuPy: replay the training step from a CUDA graph (gpunet.train_step)
    fused_update: bool = True  # update each layer inside the backward pass (bit-identical; off: after it)
    prefetch: bool = False  # array data on the CPU: gather the next batch in a background thread
    pin_threads: bool = (
        True  # CPU (Linux): keep the caller and BLAS's workers on separate cores while training
    )
    extensions: list = field(default_factory=list)  # more gpunet.extensions objects, beside the standard ones

    def __post_init__(self):
        self.optim_config = dict(self.optim_config or {})
        self.schedule_config = dict(self.schedule_config or {})
        self.lr_decay, self.batch_size, self.num_epochs = (
            float(self.lr_decay),
            int(self.batch_size),
            int(self.num_epochs),
        )
        self.print_every, self.verbose, self.seed = int(self.print_every), bool(self.verbose), int(self.seed)
        if self.batch_size < 1 or self.num_epochs < 0:
            raise ValueError(
                f"batch_size/num_epochs: expected >= 1 / >= 0, got {self.batch_size}/{self.num_epochs}"
            )
        if self.print_every < 1:
            raise ValueError(f"print_every: expected >= 1, got {self.print_every}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"patience: expected a positive number of epochs or None, got {self.patience}")


_OPTIONS = {f.name for f in fields(SolverConfig)}


def _host_sync_is_free() -> bool:
    """Reading a device value on the host costs nothing on the CPU and stalls the GPU's queue."""
    return backend.name() != "cupy"


def _epoch_rng(rng, seed):
    """A generator seeded by ``seed`` on the active backend, reusing ``rng``'s state where possible.

    NumPy generators are cheap to make. A CuPy generator owns a device state array
    that cuRAND initialises: re-initialising that array in place gives the very
    stream ``backend.default_rng(seed)`` would, without a new allocation. Every
    epoch's stream comes out of the same path (a run's first generator is made and
    then reseeded too), so a resumed run draws what an uninterrupted one does.
    """
    if backend.name() != "cupy":
        return backend.default_rng(seed)
    if rng is None or isinstance(rng, np.random.Generator):
        rng = backend.default_rng(0)
    try:  # CuPy's cuRAND bit generators (private API, CuPy 13-14: else a new generator each epoch)
        init = sys.modules["cupy.random._generator_api"].init_curand
        bg = rng.bit_generator
        folded = int(
            np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1
        )  # as backend.default_rng
        seed_seq = np.random.SeedSequence(folded)
        seed32 = seed_seq.generate_state(1, np.uint32)[0]
        init(bg.generator, bg._state.data.ptr, seed32, bg._size)
        bg._seed_seq, bg._seed = seed_seq, seed32
        return rng
    except (KeyError, AttributeError, TypeError):
        return backend.default_rng(seed)


def _as_extension(e):
    if isinstance(e, ext.Extension):
        return e
    if callable(e):
        return ext.Callback(e)
    raise TypeError(
        f"extensions: expected gpunet.extensions.Extension objects or callables, got {type(e).__name__}"
    )


class Solver:
    """Train ``model`` on ``data``; settings as in ``SolverConfig``.

    ``Solver(model, data, **kwargs)`` accepts every ``SolverConfig`` field as a keyword
    (the coursework's update_rule, optim_config, lr_decay, batch_size, num_epochs,
    num_train_samples, num_val_samples, print_every, verbose, checkpoint_name, and
    seed, schedule, schedule_config, patience, resume, history_path, progress,
    on_epoch_end, graph, extensions); ``config=SolverConfig(...)`` gives them at once, keywords override it.
    What happens around the steps (schedule, progress, divergence check, evaluation, log, early
    stopping, checkpoint, history, callbacks) is ``self.extensions`` (``gpunet.extensions``);
    ``extend`` adds more.
    """

    def __init__(self, model, data, config: SolverConfig | None = None, **kwargs):
        unknown = sorted(set(kwargs) - _OPTIONS)
        if unknown:
            raise ValueError(f"Solver: unrecognized option(s) {unknown}")
        if config is not None and not isinstance(config, SolverConfig):
            raise ValueError(f"Solver: config: expected a SolverConfig, got {type(config).__name__}")
        cfg = replace(config, **kwargs) if config is not None else SolverConfig(**kwargs)
        self.config, self.model = cfg, model
        for name in (
            "update_rule",
            "optim_config",
            "lr_decay",
            "batch_size",
            "num_epochs",
            "num_train_samples",
            "num_val_samples",
            "print_every",
            "verbose",
            "checkpoint_name",
            "seed",
            "patience",
            "history_path",
            "progress",
            "on_epoch_end",
            "graph",
            "fused_update",
            "prefetch",
            "pin_threads",
        ):
            setattr(self, name, getattr(cfg, name))
        self.lr, self.epoch_losses, self.epoch_started = None, [], None
        self.optimizer = Optimizer(self.update_rule, self.optim_config)
        self._step = None  # the training step, built on first use (eager, or a CUDA graph on CuPy)
        schedule, schedule_config = cfg.schedule, dict(cfg.schedule_config)
        if schedule is None:
            schedule = "exponential" if self.lr_decay != 1.0 else "constant"
            if schedule == "exponential":
                schedule_config.setdefault("gamma", self.lr_decay)
        schedule_config.setdefault("total_epochs", self.num_epochs)
        self.schedule = Schedule(name=schedule, **schedule_config)
        self.extensions = self._standard_extensions() + [_as_extension(e) for e in cfg.extensions]
        self.train_loader, self.val_loader, self.train_eval_loader = self._make_loaders(data)
        if self.history_path is None and self.checkpoint_name:
            self.history_path = f"{self.checkpoint_name}.history.json"
        self._rng = None
        self._reset()
        if cfg.resume:
            path = cfg.resume if isinstance(cfg.resume, (str, os.PathLike)) else self.checkpoint_path
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
            raise ValueError(
                f"data: expected keys X_train, y_train, X_val, y_val (or train/val loaders), missing {e}"
            ) from None
        C = self.model.num_classes
        for name, y, X in (("y_train", y_tr, X_tr), ("y_val", y_val, X_val)):
            y_np = backend.to_numpy(y)
            if len(y_np) != len(X):
                raise ValueError(f"{name}: expected {len(X)} labels, got {len(y_np)}")
            if len(y_np) and (y_np.min() < 0 or y_np.max() >= C):
                raise ValueError(
                    f"{name}: expected labels in [0, {C}), got values in [{y_np.min()}, {y_np.max()}]"
                )
        if self.num_val_samples is not None and self.num_val_samples < len(y_val):
            X_val, y_val = X_val[: self.num_val_samples], y_val[: self.num_val_samples]
        train = ArrayLoader(
            X_tr,
            y_tr,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            dtype=self.model.dtype,
            prefetch=self.prefetch,
        )
        val = ArrayLoader(X_val, y_val, 1024, shuffle=False, dtype=self.model.dtype)
        n = len(y_tr) if self.num_train_samples is None else min(int(self.num_train_samples), len(y_tr))
        sub = np.sort(np.random.default_rng([self.seed, TRAIN_EVAL_STREAM]).permutation(len(y_tr))[:n])
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
    def check_accuracy(self, X, y=None, num_samples=None, batch_size=100):
        """Fraction of samples classified correctly (one host sync).

        Coursework form: ``X`` (N, ...) and ``y`` (N,) int arrays (NumPy or CuPy); with
        ``num_samples`` < N, a subsample drawn without replacement from the Solver's
        seed; scored in batches of ``batch_size`` through ``model.loss(X)``.
        Loader form: ``check_accuracy(loader)`` scores every batch the loader yields
        (``None`` gives NaN).
        """
        if y is None:
            if X is None:
                return float("nan")
            if hasattr(X, "shape"):
                raise ValueError("check_accuracy: expected labels y with the arrays X (or a loader alone)")
            return self._loader_accuracy(X)
        N = X.shape[0]
        if tuple(y.shape) != (N,):
            raise ValueError(f"check_accuracy: y: expected shape ({N},), got {tuple(y.shape)}")
        if int(batch_size) < 1:
            raise ValueError(f"check_accuracy: batch_size: expected >= 1, got {batch_size}")
        if num_samples is not None and N > int(num_samples):
            pick = np.sort(
                np.random.default_rng([self.seed, CHECK_STREAM]).permutation(N)[: int(num_samples)]
            )
            pick = backend.to_device(pick) if backend.get_array_module(X) is not np else pick
            X, y = X[pick], y[pick]
        batches = (
            (
                backend.to_device(X[i : i + batch_size], dtype=self.model.dtype),
                backend.to_device(y[i : i + batch_size]),
            )
            for i in range(0, X.shape[0], int(batch_size))
        )
        return self._loader_accuracy(batches)

    def _loader_accuracy(self, batches):
        correct, n = 0, 0
        for X, y in batches:
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

    def _standard_extensions(self):
        """What the options ask for, as extensions (``gpunet.extensions``), in the order they run at an
        epoch's end: divergence check, evaluation, the log line, early stopping, checkpoint and history,
        ``on_epoch_end``."""
        exts = [
            ext.LearningRate(self.schedule),
            ext.Progress(self.print_every, self._bars(), _host_sync_is_free()),
            ext.DivergenceCheck(),
            ext.Evaluate(),
            ext.LogReport(),
            ext.Snapshot(),
        ]
        if self.patience is not None:
            exts.append(ext.EarlyStopping(self.patience))
        if self.on_epoch_end is not None:
            exts.append(ext.Callback(self.on_epoch_end))
        return exts

    def extend(self, extension):
        """Add an extension: a ``gpunet.extensions.Extension`` (hooks, a trigger, a priority), or a plain
        ``fn(solver, epoch)`` run after each epoch like ``on_epoch_end``; returns the Solver."""
        self.extensions.append(_as_extension(extension))
        return self

    def train(self):
        """Run the remaining epochs; leaves the best parameters (and buffers) in the model."""
        exts = sorted(
            self.extensions, key=lambda e: -getattr(e, "priority", 0)
        )  # stable: ties keep their order
        pin = self.pin_threads and backend.get_array_module(next(iter(self.model.params.values()))) is np
        try:
            for e in exts:
                e.initialize(self)
            with threads.pinned() if pin else contextlib.nullcontext():
                for epoch in range(self.epoch, self.num_epochs):
                    if self._run_epoch(epoch, exts):
                        break
        finally:
            for e in exts:
                e.finalize(self)
        if self.best_params:
            self.model.set_params(self.best_params)
        return self

    def _train_step(self, X, y, lr):
        """One update on the batch ``X`` (B, ...), ``y`` (B,); returns the loss, left on the device."""
        if self._step is None:
            self._step = make_train_step(
                self.model, self.optimizer, graph=self.graph, fused_update=self.fused_update
            )
        return self._step(X, y, lr)

    def _run_epoch(self, epoch, exts):
        """Train one epoch, then the extensions' epoch ends (by priority); True when training should stop.

        Losses stay on the device: where reading them is free (the CPU) ``Progress`` checks and
        prints them every ``print_every`` steps; on the GPU reading one would stall the queue, so
        ``DivergenceCheck`` reads them once, at the epoch's end, before anything is evaluated or saved.
        """
        self.epoch_started = time.perf_counter()
        for e in exts:
            e.before_epoch(self, epoch)
        self.train_loader.set_epoch(epoch)
        self._rng = self.model.rng = _epoch_rng(self._rng, [self.seed, epoch, DROPOUT_STREAM])
        philox.follow(self.model.rng, force=True)  # GPU dropout: the epoch's key, offset 0, on the device
        self.epoch_losses = losses = []
        for it, (X, y) in enumerate(self.train_loader):
            losses.append(self._train_step(X, y, self.lr))
            for e in exts:
                e.after_iteration(self, epoch, it, losses)
        stop = False
        for e in exts:
            if e.fires(epoch):
                stop = bool(e.after_epoch(self, epoch)) or stop
        return stop

    def _check_finite(self, losses, epoch, it):
        """Losses as floats (one host sync); raise TrainingDiverged on NaN/inf."""
        xp = backend.get_array_module(losses[0]) if losses else np
        values = (
            backend.to_numpy(xp.stack([xp.asarray(v) for v in losses])).astype(float).tolist()
            if losses
            else []
        )
        if values and not all(math.isfinite(v) for v in values):
            first = next(i for i, v in enumerate(values) if not math.isfinite(v))
            raise diverged(self, f"loss became {values[first]}", epoch, it - (len(values) - 1) + first)
        return values

    # -------------------------------------------------------------- persistence
    def history(self) -> dict:
        return {
            "loss": self.loss_history,
            "train_acc": self.train_acc_history,
            "val_acc": self.val_acc_history,
            "lr": self.lr_history,
            "epoch_time": self.epoch_time_history,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch + 1,
            "epochs_done": self.epoch,
            "stopped_early": self.stopped_early,
        }

    def save_history(self, path=None):
        path = path or self.history_path
        if not path:
            return
        write_json(path, self.history())

    def save_checkpoint(self, path=None):
        """Parameters, buffers, best state, optimizer state and progress, written atomically."""
        path = path or self.checkpoint_path
        if path:
            save_checkpoint(path, self)

    def load_checkpoint(self, path):
        """Restore what ``save_checkpoint`` wrote, after checking all of it; a refused
        checkpoint (ValueError naming the file and entry) changes nothing."""
        read_checkpoint(path, self).apply(self)
