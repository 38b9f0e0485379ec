"""Hyperparameter search on Optuna: the search space, the objective, the study and its report.

A search space maps a ``TrainConfig`` field to a range ``{"low", "high", "log"?}`` (a float,
or an int when both ends are ints), a list of choices, or a fixed value::

    {"lr": {"low": 1e-4, "high": 1e-2, "log": true}, "dropout": {"low": 0, "high": 0.5},
     "hidden": [[512], [1024, 512]], "optimizer": ["adam", "sgd_momentum"]}

Each trial trains with the Solver on (a subset of) the training split and is scored by its
best validation accuracy; the Solver's ``on_epoch_end`` hook reports every epoch to Optuna so
the pruner can stop bad trials early. Each trial records which worker ran it
(``user_attrs["worker"] = "<hostname>:<pid>"``) and on which device. Where the study lives and
how several workers share it: ``tuning_storage`` and ``tuning_workers``.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

from . import runs
from .io import atomic_open, copy_file, save_figure
from .solver import Solver, TrainingDiverged
from .tuning_storage import worker_id

DEFAULT_SPACE = {
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "reg": {"low": 1e-6, "high": 1e-2, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "hidden": [[512], [512, 256], [1024, 512]],
    "optimizer": ["adam", "nesterov"],
}
CNN_SPACE = {  # the default search of a convnet (gpunet-tune DATASET --arch cnn)
    "lr": {"low": 3e-4, "high": 3e-3, "log": True},
    "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
    "dropout": {"low": 0.2, "high": 0.6},
    "channels": [[32, 64, 128], [32, 64, 128, 256]],
    "crop_pad": [0, 2, 4],
}
GRID_POINTS = 3  # values per numeric range when the grid sampler needs a finite grid


LIST_SETTINGS = ("hidden", "channels")  # list-valued settings: each choice travels as a string '1024-512'


def _hidden_key(h) -> str:
    return "-".join(str(int(v)) for v in h)


def check_space(space, where="search space") -> dict:
    """Validate a search space; return it with list choices (hidden, channels) as strings like '1024-512'."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{where}: expected a non-empty mapping of setting -> range/choices")
    known = {f for f in runs.TrainConfig().to_dict()} - {"dataset", "data"}
    out = {}
    for name, spec in space.items():
        if name not in known:
            raise ValueError(f"{where}: unknown setting {name!r}; expected some of {sorted(known)}")
        if isinstance(spec, dict):
            if set(spec) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(spec):
                raise ValueError(
                    f"{where}: {name}: expected {{'low', 'high', 'log'?, 'step'?}}, found {spec}"
                )
            if not spec["low"] < spec["high"] or (spec.get("log") and spec["low"] <= 0):
                raise ValueError(
                    f"{where}: {name}: expected 0 < low < high for a log range, low < high "
                    f"otherwise, found {spec}"
                )
            out[name] = dict(spec)
        elif isinstance(spec, list):
            if not spec:
                raise ValueError(f"{where}: {name}: expected at least one choice")
            for choice in spec:  # each choice a valid setting, said now rather than from a failed trial
                value = (
                    (choice if isinstance(choice, list) else [choice]) if name in LIST_SETTINGS else choice
                )
                runs.TrainConfig.from_dict({name: value}, where=f"{where}: {name}: choice {choice!r}")
            out[name] = (
                [_hidden_key(v if isinstance(v, list) else [v]) for v in spec]
                if name in LIST_SETTINGS
                else spec
            )
        else:
            out[name] = (
                [_hidden_key(spec if isinstance(spec, list) else [spec])] if name in LIST_SETTINGS else [spec]
            )
    return out


def parse_param(text: str) -> tuple[str, object]:
    """``NAME=SPEC`` from the command line: JSON (``lr={"low":1e-4,"high":1e-2,"log":true}``)
    or short forms ``lr=1e-4:1e-2:log``, ``dropout=0:0.5``, ``optimizer=adam,nesterov``,
    ``hidden=1024-512,512``, ``channels=32-64-128,32-64-128-256``, ``arch=cnn``."""
    import json

    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ValueError(f"--param {text!r}: expected NAME=SPEC, e.g. lr=1e-4:1e-2:log")
    try:
        return name, json.loads(spec)
    except json.JSONDecodeError:
        pass
    if ":" in spec:
        parts = spec.split(":")
        try:
            low, high = (json.loads(p) for p in parts[:2])
        except (json.JSONDecodeError, ValueError):
            raise ValueError(f"--param {text!r}: expected LOW:HIGH[:log] numbers") from None
        return name, {"low": low, "high": high, "log": parts[2:] == ["log"]}
    items = spec.split(",")
    if name in LIST_SETTINGS:
        try:
            return name, [[int(v) for v in it.split("-")] for it in items]
        except ValueError:
            raise ValueError(
                f"--param {text!r}: expected sizes like 32-64-128, choices separated by commas"
            ) from None
    return name, [_scalar(v) for v in items]


def _scalar(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def grid_of(space) -> dict:
    """A finite grid for the grid sampler: GRID_POINTS values per numeric range."""
    grid = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            lo, hi = spec["low"], spec["high"]
            vals = np.geomspace(lo, hi, GRID_POINTS) if spec.get("log") else np.linspace(lo, hi, GRID_POINTS)
            both_int = isinstance(lo, int) and isinstance(hi, int)
            grid[name] = sorted({int(round(v)) if both_int else float(v) for v in vals})
        else:
            grid[name] = list(spec)
    return grid


def suggest(trial, space, grid=False) -> dict:
    """The settings of one trial, drawn from ``space``."""
    params = {}
    for name, spec in space.items():
        if isinstance(spec, dict) and not grid:
            if isinstance(spec["low"], int) and isinstance(spec["high"], int):
                v = trial.suggest_int(
                    name, spec["low"], spec["high"], log=bool(spec.get("log")), step=spec.get("step", 1)
                )
            else:
                v = trial.suggest_float(
                    name, spec["low"], spec["high"], log=bool(spec.get("log")), step=spec.get("step")
                )
        else:
            choices = grid_of({name: spec})[name] if grid else spec
            v = trial.suggest_categorical(name, choices)
        params[name] = [int(h) for h in v.split("-")] if name in LIST_SETTINGS else v
    return params


def make_sampler(name: str, space, seed: int, parallel: bool = False):
    """``parallel``: other workers share the study, so TPE treats their running trials as
    finished with a poor value ("constant liar") instead of drawing the same point."""
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, constant_liar=parallel)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_of(space), seed=seed)
    raise ValueError(f"sampler: expected tpe, random or grid, got {name!r}")


def make_pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner: expected median, halving or none, got {name!r}")


class Objective:
    """One trial: train ``base`` with the trial's settings on in-memory (subset) data."""

    def __init__(
        self, base: runs.TrainConfig, space, run_dir, subset=None, grid=False, say=print, device="cpu"
    ):
        self.base, self.space, self.grid, self.say, self.device = base, space, grid, say, device
        self.run_dir = Path(run_dir)
        self.meta = runs.check_data(base.data)
        self.train = runs.load_split(base.data, "train", subset, base.seed)
        self.val = runs.load_split(base.data, "val")
        self.reported = []  # (trial number, epoch, val acc): what the pruning hook saw

    def __call__(self, trial):
        import optuna

        trial.set_user_attr("worker", worker_id())  # first: a retried trial inherits the dead worker's
        trial.set_user_attr("device", self.device)
        settings = {**self.base.to_dict(), **suggest(trial, self.space, self.grid)}
        cfg = runs.TrainConfig.from_dict(settings, where=f"trial {trial.number}")
        model = runs.build_model(cfg, self.meta)
        data = runs.build_loaders(cfg, self.meta, arrays={"train": self.train, "val": self.val})

        def report(solver, epoch):
            acc = solver.val_acc_history[-1]
            self.reported.append((trial.number, epoch, acc))
            try:
                trial.report(acc, epoch)
            except optuna.exceptions.UpdateFinishedTrialError:  # declared dead by another worker
                raise optuna.TrialPruned("taken over by another worker") from None
            if trial.should_prune():
                trial.set_user_attr("epochs", epoch + 1)
                raise optuna.TrialPruned(f"val acc {acc:.4f} at epoch {epoch + 1}")
            return False

        solver = Solver(
            model, data, on_epoch_end=report, verbose=False, progress=False, **runs.solver_options(cfg)
        )
        try:
            solver.train()
        except TrainingDiverged as e:
            trial.set_user_attr("diverged", str(e))
            self.say(f"trial {trial.number}: diverged ({settings['optimizer']}, lr {settings['lr']:.3g})")
            return 0.0
        trial.set_user_attr("epochs", solver.epoch)
        value = solver.best_val_acc
        best = _best_value(trial.study)
        if best is None or value > best:  # keep the model of the best trial so far
            model.meta = {
                **runs.preprocess_meta_from_h5(cfg.data),
                "train_config": cfg.to_dict(),
                "trial": trial.number,
            }
            model.save(self.run_dir / "trials" / f"trial-{trial.number}.npz")
            trial.set_user_attr("model", f"trials/trial-{trial.number}.npz")
        self.say(f"trial {trial.number}: val acc {value:.4f}  {_fmt_params(trial.params)}")
        return value


def _best_value(study):
    import optuna

    vals = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return max(vals) if vals else None


def _fmt_params(p) -> str:
    return "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def results_rows(study) -> list[dict]:
    """One row per trial, best first: finished trials by value, then pruned, then the rest."""
    import optuna

    S = optuna.trial.TrialState
    rank = {S.COMPLETE: 0, S.PRUNED: 1}
    rows = []
    for t in study.get_trials(deepcopy=False):
        last = max(t.intermediate_values.values()) if t.intermediate_values else None
        value = t.value if t.state == S.COMPLETE else last
        dur = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "val_acc": value,
                "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
                "seconds": None if dur is None else round(dur, 1),
                **t.params,
                "worker": t.user_attrs.get("worker"),
            }
        )
    rows.sort(key=lambda r: (rank.get(S[r["state"]], 2), -(r["val_acc"] if r["val_acc"] is not None else -1)))
    return rows


def write_table(rows, path):
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(path, newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)


def format_table(rows, limit=20) -> str:
    """The results table as aligned text (best first)."""
    if not rows:
        return "(no trials)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: (
        ""
        if v is None or (isinstance(v, float) and math.isnan(v))
        # noqa: E731
        else (f"{v:.4g}" if isinstance(v, float) else str(v))
    )
    cells = [[fmt(r.get(c)) for c in cols] for r in rows[:limit]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in results.csv")
    return "\n".join(lines)


def save_best_model(study, run_dir) -> str | None:
    """Copy the best trial's model to RUN_DIR/best_model.npz; None when there is none on disk.

    Among trials tied for the best value, the first whose model is here (parallel workers
    save a model only when it beats the best finished so far, so a tie may have none)."""
    import optuna

    try:
        best = study.best_value
    except ValueError:
        return None
    tied = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value == best
    ]
    rels = [t.user_attrs.get("model") for t in sorted(tied, key=lambda t: t.number)]
    rel = next((r for r in rels if r and (Path(run_dir) / r).is_file()), None)
    if rel is None:
        return None
    dst = Path(run_dir) / "best_model.npz"
    copy_file(Path(run_dir) / rel, dst)
    for old in (Path(run_dir) / "trials").glob("trial-*.npz"):  # models of trials since beaten
        if old.name != Path(rel).name:
            old.unlink(missing_ok=True)
    return str(dst)


def save_plots(study, run_dir, say=print) -> list[str]:
    """Optuna's optimisation-history and parameter-importance plots as PNG, when computable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    plots = {
        "optimization_history.png": ovm.plot_optimization_history,
        "param_importances.png": ovm.plot_param_importances,
    }
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and equal-importance notices
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            save_figure(fig, Path(run_dir) / name, dpi=100)
            plt.close(fig)
            written.append(name)
        except Exception as e:  # e.g. importances need two finished trials with varying params
            say(f"note: {name} not drawn ({type(e).__name__}: {e})")
    return written
