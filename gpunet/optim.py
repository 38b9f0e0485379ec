"""Update rules and learning-rate schedules.

Hyperparameters live in an ``OptimConfig`` dataclass; per-parameter state
(velocity, moments) lives in a dict of arrays shaped like the parameter. Every
rule has one signature, ``rule(w, dw, cfg, state, lr)``, and updates ``w`` in
place. Weight decay is decoupled (``w -= lr * weight_decay * w``, as in AdamW),
separate from the model's L2 term which enters through the gradient.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from . import backend, kernels


@dataclass
class OptimConfig:
    learning_rate: float = 1e-2   # base step size (a schedule scales it per epoch)
    momentum: float = 0.9         # sgd_momentum
    nesterov: bool = False        # sgd_momentum: Nesterov look-ahead
    decay_rate: float = 0.99      # rmsprop: moving average of squared gradients
    beta1: float = 0.9            # adam: first-moment decay
    beta2: float = 0.999          # adam: second-moment decay
    epsilon: float = 1e-8         # rmsprop, adam: numerical floor
    weight_decay: float = 0.0     # decoupled weight decay per unit learning rate

    @classmethod
    def from_dict(cls, d: dict | None) -> "OptimConfig":
        d = dict(d or {})
        if "eps" in d:
            d["epsilon"] = d.pop("eps")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"optim_config: unknown key(s) {unknown}; expected some of {sorted(known)}")
        cfg = cls(**d)
        if not cfg.learning_rate > 0:
            raise ValueError(f"learning_rate: expected a positive number, got {cfg.learning_rate}")
        if cfg.weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {cfg.weight_decay}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _decay(w, cfg, lr):
    if cfg.weight_decay:
        w *= w.dtype.type(1.0 - lr * cfg.weight_decay)


def sgd(w, dw, cfg, state, lr):
    """Vanilla SGD: ``w -= lr * dw``."""
    _decay(w, cfg, lr)
    kernels.sgd_(w, dw, lr)


def sgd_momentum(w, dw, cfg, state, lr):
    """SGD with momentum: ``v = mu * v - lr * dw; w += v`` (Nesterov: ``w += mu * v - lr * dw``)."""
    xp = backend.get_array_module(w)
    _decay(w, cfg, lr)
    v = state.get("velocity")
    if v is None:
        v = state["velocity"] = xp.zeros_like(w)
    kernels.sgd_momentum_(w, dw, v, cfg.momentum, lr, cfg.nesterov)  # one pass over w, dw, v


def rmsprop(w, dw, cfg, state, lr):
    """RMSProp: scale the step by a running RMS of the gradient."""
    xp = backend.get_array_module(w)
    _decay(w, cfg, lr)
    c = state.get("cache")
    if c is None:
        c = state["cache"] = xp.zeros_like(w)
    kernels.rmsprop_(w, dw, c, cfg.decay_rate, lr, cfg.epsilon)


def adam(w, dw, cfg, state, lr):
    """Adam with bias correction (decoupled weight decay makes it AdamW)."""
    xp = backend.get_array_module(w)
    _decay(w, cfg, lr)
    if "m" not in state:
        state["m"], state["v"], state["t"] = xp.zeros_like(w), xp.zeros_like(w), 0
    m, v = state["m"], state["v"]
    state["t"] += 1
    t = state["t"]
    b1, b2 = cfg.beta1, cfg.beta2
    # w -= lr * m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
    kernels.adam_(w, dw, m, v, b1, b2, lr / (1 - b1 ** t), 1 / math.sqrt(1 - b2 ** t), cfg.epsilon)


UPDATE_RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "momentum": sgd_momentum,
                "nesterov": sgd_momentum, "rmsprop": rmsprop, "adam": adam, "adamw": adam}


def get_rule(name: str):
    """The update function for ``name`` (``sgd``, ``sgd_momentum``, ``nesterov``, ``rmsprop``, ``adam``)."""
    if name not in UPDATE_RULES:
        raise ValueError(f"update_rule: expected one of {sorted(UPDATE_RULES)}, got {name!r}")
    return UPDATE_RULES[name]


class Optimizer:
    """An update rule, its hyperparameters and the per-parameter state of one model."""

    def __init__(self, rule: str = "sgd", config: OptimConfig | dict | None = None):
        self.rule_name = rule
        self.rule = get_rule(rule)
        self.config = config if isinstance(config, OptimConfig) else OptimConfig.from_dict(config)
        if rule == "nesterov":
            self.config.nesterov = True
        self.state = {}  # param name -> {state name -> array or int}

    def step(self, params: dict, grads: dict, lr: float):
        """Update every ``params[k]`` in place from ``grads[k]``."""
        for k, w in params.items():
            self.rule(w, grads[k], self.config, self.state.setdefault(k, {}), lr)


# ---------------------------------------------------------------- schedules

SCHEDULES = ("constant", "step", "exponential", "cosine")


@dataclass
class Schedule:
    """Per-epoch learning rate: ``lr(epoch)`` for epoch = 0, 1, ..."""
    name: str = "constant"        # constant | step | exponential | cosine
    step_size: int = 10           # step: epochs between drops
    gamma: float = 0.1            # step: factor per drop; exponential: factor per epoch
    total_epochs: int = 10        # cosine: length of the half period
    min_lr_ratio: float = 0.0     # cosine: final lr as a fraction of the base lr
    warmup_epochs: int = 0        # linear warm-up before any schedule

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {self.name!r}")
        if self.step_size < 1:
            raise ValueError(f"step_size: expected >= 1, got {self.step_size}")
        if not self.gamma > 0:
            raise ValueError(f"gamma: expected > 0, got {self.gamma}")

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        e = epoch - self.warmup_epochs
        if self.name == "step":
            return self.gamma ** (e // self.step_size)
        if self.name == "exponential":
            return self.gamma ** e
        if self.name == "cosine":
            T = max(1, self.total_epochs - self.warmup_epochs)
            c = 0.5 * (1 + math.cos(math.pi * min(e, T) / T))
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * c
        return 1.0
