"""What the Solver's one loop does around its steps, as extensions with triggers (after Chainer's
``training.extensions`` and Keras's callbacks).

An extension is an object with any of these methods, a ``trigger`` (``every`` N epochs, default 1)
and a ``priority`` (at an epoch's end, higher runs first):

- ``initialize(solver)``: when ``train()`` starts;
- ``before_epoch(solver, epoch)``: before the epoch's first step;
- ``after_iteration(solver, epoch, it, losses)``: after each step (``losses``: the epoch's so far,
  left on the device);
- ``after_epoch(solver, epoch)``: at the epoch's end, when the trigger fires; returning True asks
  the loop to stop after this epoch;
- ``finalize(solver)``: when ``train()`` ends, also on an error.

``Solver(..., extensions=[...])`` or ``solver.extend(ext)`` adds one without subclassing; the
Solver's own options build the standard ones below (``Solver.extensions`` lists them all).
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import model_state
from .divergence import check_epoch


class Extension:
    """Base class: every hook does nothing; ``every``: the epochs between two ``after_epoch`` calls."""

    priority = 0
    every = 1

    def initialize(self, solver):
        pass

    def before_epoch(self, solver, epoch):
        pass

    def after_iteration(self, solver, epoch, it, losses):
        pass

    def after_epoch(self, solver, epoch):
        return False

    def finalize(self, solver):
        pass

    def fires(self, epoch) -> bool:
        """The trigger: ``after_epoch`` runs at the end of epochs every, 2 every, ... (1-based)."""
        return (epoch + 1) % max(1, int(self.every)) == 0


class LearningRate(Extension):
    """The schedule: ``solver.lr`` for the epoch = base learning rate x ``schedule.factor(epoch)``."""

    priority = 1000

    def __init__(self, schedule):
        self.schedule = schedule

    def before_epoch(self, solver, epoch):
        solver.lr = solver.optimizer.config.learning_rate * self.schedule.factor(epoch)


class Progress(Extension):
    """tqdm bars (epochs, batches) and the loss every ``print_every`` steps. Losses are read on the
    host then only where that is free (the CPU), and checked for NaN/inf there; on the GPU the epoch's
    end reads them once (``DivergenceCheck``)."""

    priority = 900

    def __init__(self, print_every, disable, host_reads_free):
        self.print_every, self.disable, self.host_reads_free = int(print_every), disable, host_reads_free
        self.epochs = self.batches = None

    def initialize(self, solver):
        self.epochs = tqdm(
            total=solver.num_epochs,
            initial=solver.epoch,
            desc="epochs",
            disable=self.disable,
            unit="ep",
            leave=True,
        )

    def before_epoch(self, solver, epoch):
        self.batches = tqdm(
            total=len(solver.train_loader),
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=self.disable,
            unit="batch",
        )

    def after_iteration(self, solver, epoch, it, losses):
        self.batches.update(1)
        if self.host_reads_free and (it + 1) % self.print_every == 0:
            recent = solver._check_finite(losses[-self.print_every :], epoch, it)
            self.batches.set_postfix(loss=f"{recent[-1]:.4f}")
            if self.disable:
                solver._say(
                    f"(epoch {epoch + 1}, iteration {it + 1} / {len(solver.train_loader)}) "
                    f"loss: {recent[-1]:f}"
                )

    def after_epoch(self, solver, epoch):
        self.batches.close()
        self.epochs.update(1)

    def finalize(self, solver):
        for bar in (self.batches, self.epochs):
            if bar is not None:
                bar.close()


class DivergenceCheck(Extension):
    """The epoch's losses read once (NaN/inf raise ``TrainingDiverged``), then ``divergence.check_epoch``
    (an exploded loss or weight); the losses join ``solver.loss_history``."""

    priority = 800

    def after_epoch(self, solver, epoch):
        losses = solver._check_finite(solver.epoch_losses, epoch, len(solver.epoch_losses) - 1)
        check_epoch(solver, losses, epoch)
        solver.epoch_losses = losses
        solver.loss_history.extend(losses)


class Evaluate(Extension):
    """Train and validation accuracy, the histories, the best epoch's state (kept in the model at the end)."""

    priority = 700

    def after_epoch(self, solver, epoch):
        train_acc = solver.check_accuracy(solver.train_eval_loader)
        val_acc = solver.check_accuracy(solver.val_loader)
        solver.train_acc_history.append(train_acc)
        solver.val_acc_history.append(val_acc)
        solver.lr_history.append(solver.lr)
        solver.epoch_time_history.append(time.perf_counter() - solver.epoch_started)
        if val_acc > solver.best_val_acc or solver.val_loader is None:
            solver.best_val_acc, solver.best_epoch = val_acc, epoch
            solver.best_params = model_state(solver.model)
        solver.epoch = epoch + 1


class LogReport(Extension):
    """One line per epoch: mean loss, accuracies, learning rate, time."""

    priority = 600

    def after_epoch(self, solver, epoch):
        losses = solver.epoch_losses
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        solver._say(
            f"(epoch {solver.epoch} / {solver.num_epochs}) loss {mean_loss:.4f}  train acc "
            f"{solver.train_acc_history[-1]:.4f}  val acc {solver.val_acc_history[-1]:.4f}  "
            f"lr {solver.lr:.3g}  "
            f"{solver.epoch_time_history[-1]:.1f}s"
        )


class EarlyStopping(Extension):
    """Stop after ``patience`` epochs without a better validation accuracy (``solver.stopped_early``)."""

    priority = 500

    def __init__(self, patience):
        self.patience = int(patience)

    def after_epoch(self, solver, epoch):
        if epoch - solver.best_epoch >= self.patience:
            solver.stopped_early = True
            solver._say(
                f"early stopping: no validation improvement for {self.patience} epochs "
                f"(best {solver.best_val_acc:.4f} at epoch {solver.best_epoch + 1})"
            )
            return True
        return False


class Snapshot(Extension):
    """The checkpoint (``solver.save_checkpoint``, atomic) and the history JSON, after each epoch."""

    priority = 400

    def after_epoch(self, solver, epoch):
        solver.save_checkpoint()
        solver.save_history()


class Callback(Extension):
    """``fn(solver, epoch)`` after each epoch (the Solver's ``on_epoch_end``); a true result stops."""

    priority = 100

    def __init__(self, fn):
        self.fn = fn

    def after_epoch(self, solver, epoch):
        return bool(self.fn(solver, epoch))
