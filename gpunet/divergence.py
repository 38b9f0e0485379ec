"""Telling that training has diverged, and saying so in a message that points at what was kept.

The Solver calls ``check_epoch`` once per epoch, after its losses are on the host.
Training has diverged when

- a loss is NaN or infinite (the Solver finds those itself, and calls ``diverged``);
- a loss exceeds ``LOSS_FACTOR`` times the run's first loss (at least 1): a loss of
  3e31 with finite weights (``--lr 0.1``) is as lost as a NaN;
- a parameter's magnitude exceeds ``MAX_WEIGHT`` (|W1| = 9.5e16 at ``--lr 0.1``).

Then the best epoch's state goes back into the model and ``TrainingDiverged`` names
the checkpoint that holds the last good epoch, only when one was written.
"""

from __future__ import annotations

import os

from . import backend

LOSS_FACTOR = 1e3  # cross-entropy starts near ln(C) ~ 2; a thousand times that is no longer learning
MAX_WEIGHT = 1e8  # initial weights are ~0.1; trained ones stay below ~100


class TrainingDiverged(FloatingPointError):
    """The loss became NaN, infinite or exploded; the last good checkpoint is kept."""


def _where(solver) -> str:
    path = solver.checkpoint_path
    if path and os.path.exists(path):
        return f"the last good state is kept in checkpoint {path} (epoch {solver.epoch})"
    if path:
        return "no checkpoint was written (no epoch finished)"
    return "no checkpoint (checkpoint_name not set)"


def diverged(solver, what: str, epoch: int, it: int) -> TrainingDiverged:
    """The exception for divergence at ``epoch`` (0-based) and iteration ``it`` (0-based);
    puts the best epoch's parameters back into ``solver.model`` first."""
    if solver.best_params:
        solver.model.set_params(solver.best_params)
    return TrainingDiverged(
        f"{what} at epoch {epoch + 1}, iteration {it + 1}: training diverged; "
        f"lower the learning rate; {_where(solver)}"
    )


def check_epoch(solver, losses: list, epoch: int):
    """Raise ``TrainingDiverged`` when this epoch's (finite, float) ``losses`` or the
    parameters have exploded (see the module docstring)."""
    first = solver.loss_history[0] if solver.loss_history else (losses[0] if losses else None)
    if first is not None:
        bound = LOSS_FACTOR * max(first, 1.0)
        for it, v in enumerate(losses):
            if v > bound:
                raise diverged(
                    solver, f"loss {v:.3g} exceeded {LOSS_FACTOR:g} x the first loss ({first:.3g})", epoch, it
                )
    params = solver.model.params
    if params:
        xp = backend.get_array_module(next(iter(params.values())))
        peaks = backend.to_numpy(xp.stack([xp.abs(p).max() for p in params.values()])).tolist()
        name, peak = max(zip(params, peaks), key=lambda kv: kv[1] if kv[1] == kv[1] else float("inf"))
        if not peak <= MAX_WEIGHT:
            raise diverged(
                solver,
                f"parameter {name} reached magnitude {peak:.3g} (above {MAX_WEIGHT:g})",
                epoch,
                len(losses) - 1,
            )
