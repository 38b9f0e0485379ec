"""Update rules and learning-rate schedules.

Hyperparameters live in an ``OptimConfig`` dataclass; per-parameter state
(velocity, moments) lives in a dict of arrays shaped like the parameter. Every
rule has one signature, ``rule(w, dw, cfg, state, lr)``, and updates ``w`` in
place. Weight decay is decoupled (``w -= lr * weight_decay * w``, as in AdamW),
separate from the model's L2 term which enters through the gradient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import backend, multi_tensor
from .ops import get_ops
from .ops.cupy_ops import ADAM, MOMENTUM, NESTEROV, RMSPROP, SGD


@dataclass
class OptimConfig:
    learning_rate: float = 1e-2  # base step size (a schedule scales it per epoch)
    momentum: float = 0.9  # sgd_momentum
    nesterov: bool = False  # sgd_momentum: Nesterov look-ahead
    decay_rate: float = 0.99  # rmsprop: moving average of squared gradients
    beta1: float = 0.9  # adam: first-moment decay
    beta2: float = 0.999  # adam: second-moment decay
    epsilon: float = 1e-8  # rmsprop, adam: numerical floor
    weight_decay: float = 0.0  # decoupled weight decay per unit learning rate

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


# ---------------------------------------------------------------- in-place kernels
# Each rule's in-place update is an ops method (``gpunet.ops``: the NumPy form in ``NumpyOps``, the
# CUDA kernel in ``CupyOps``); these functions convert the gradient and pick the ops.


def grad_like(w, dw, name="parameter"):
    """``dw`` as an array of ``w``'s dtype and shape, the same on NumPy and CuPy: a float gradient of
    another precision is converted (CuPy's kernels would refuse it, NumPy would compute in float64),
    one that may share memory with ``w`` is copied (the update writes w first); anything else is refused."""
    if tuple(dw.shape) != tuple(w.shape):
        raise ValueError(f"gradient of {name}: expected shape {tuple(w.shape)}, got {tuple(dw.shape)}")
    if dw.dtype != w.dtype:
        if dw.dtype.kind != "f":
            raise TypeError(f"gradient of {name}: expected a floating-point array, got {dw.dtype}")
        dw = dw.astype(w.dtype)
    elif backend.get_array_module(w).may_share_memory(w, dw):  # the update writes w before it reads dw
        dw = dw.copy()
    return dw


def sgd_(w, dw, lr):
    """``w -= lr * dw`` in place."""
    return get_ops(w).sgd_(w, grad_like(w, dw), lr)


def sgd_momentum_(w, dw, v, mu, lr, nesterov=False):
    """``v = mu * v - lr * dw`` then ``w += v`` (Nesterov: ``w += mu * v - lr * dw``), in place.

    On NumPy the update runs block by block so w, dw and v are read from memory
    once per step instead of once per operation, with the blocks shared among the CPU threads.
    """
    return get_ops(w).momentum_(w, grad_like(w, dw), v, mu, lr, nesterov)


def rmsprop_(w, dw, c, decay, lr, eps):
    """``c = decay * c + (1 - decay) * dw**2``; ``w -= lr * dw / (sqrt(c) + eps)``, in place."""
    return get_ops(w).rmsprop_(w, grad_like(w, dw), c, decay, lr, eps)


def adam_(w, dw, m, v, b1, b2, lr_t, inv_sqrt_bc2, eps):
    """Adam in place: moments, then ``w -= lr_t * m / (sqrt(v) * inv_sqrt_bc2 + eps)``.

    lr_t = lr / (1 - b1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - b2^t) carry the bias corrections.
    """
    return get_ops(w).adam_(w, grad_like(w, dw), m, v, b1, b2, lr_t, inv_sqrt_bc2, eps)


# ---------------------------------------------------------------- update rules
# The coursework's (and CS231n's) functional form: defaults, and the state kept in its config dict.
_COURSEWORK = {
    "sgd": ({"learning_rate": 1e-2}, ()),
    "sgd_momentum": ({"learning_rate": 1e-2, "momentum": 0.9}, ("velocity",)),
    "rmsprop": ({"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8}, ("cache",)),
    "adam": ({"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}, ("m", "v", "t")),
}


def _two_forms(rule):
    """Let ``rule`` also be called as ``next_w, config = rule(w, dw, config=None)``, as the coursework does.

    The Solver's form ``rule(w, dw, cfg, state, lr)`` updates ``w`` in place. The coursework
    form leaves ``w`` alone and returns the updated copy and ``config``, a dict holding the
    hyperparameters (filled with the coursework's defaults) and the rule's state
    (``velocity``, ``cache``, ``m``/``v``/``t``). Both run the same update.
    """
    defaults, state_keys = _COURSEWORK[rule.__name__]

    @functools.wraps(rule)
    def both(w, dw, cfg=None, state=None, lr=None, *, config=None):
        if state is not None or isinstance(cfg, OptimConfig):
            return rule(w, dw, cfg, state, lr)
        config = config if config is not None else ({} if cfg is None else cfg)
        for k, v in defaults.items():
            config.setdefault(k, v)
        st = {k: config[k] for k in state_keys if k in config}
        next_w = w.copy()
        rule(next_w, dw, OptimConfig.from_dict({k: config[k] for k in defaults}), st, config["learning_rate"])
        config.update(st)
        return next_w, config

    return both


def _decay(w, cfg, lr):
    if cfg.weight_decay:
        w *= w.dtype.type(1.0 - lr * cfg.weight_decay)


@_two_forms
def sgd(w, dw, cfg, state, lr):
    """Vanilla SGD: ``w -= lr * dw``."""
    _decay(w, cfg, lr)
    sgd_(w, dw, lr)


@_two_forms
def sgd_momentum(w, dw, cfg, state, lr):
    """SGD with momentum: ``v = mu * v - lr * dw; w += v`` (Nesterov: ``w += mu * v - lr * dw``)."""
    xp = backend.get_array_module(w)
    _decay(w, cfg, lr)
    v = state.get("velocity")
    if v is None:
        v = state["velocity"] = xp.zeros_like(w)
    sgd_momentum_(w, dw, v, cfg.momentum, lr, cfg.nesterov)  # one pass over w, dw, v


@_two_forms
def rmsprop(w, dw, cfg, state, lr):
    """RMSProp: scale the step by a running RMS of the gradient."""
    xp = backend.get_array_module(w)
    _decay(w, cfg, lr)
    c = state.get("cache")
    if c is None:
        c = state["cache"] = xp.zeros_like(w)
    rmsprop_(w, dw, c, cfg.decay_rate, lr, cfg.epsilon)


@_two_forms
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
    adam_(w, dw, m, v, b1, b2, lr / (1 - b1**t), 1 / math.sqrt(1 - b2**t), cfg.epsilon)


UPDATE_RULES = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
    "momentum": sgd_momentum,
    "nesterov": sgd_momentum,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adam,
}


def get_rule(name: str):
    """The update function for ``name`` (``sgd``, ``sgd_momentum``, ``nesterov``, ``rmsprop``, ``adam``)."""
    if name not in UPDATE_RULES:
        raise ValueError(f"update_rule: expected one of {sorted(UPDATE_RULES)}, got {name!r}")
    return UPDATE_RULES[name]


class Optimizer:
    """An update rule, its hyperparameters and the per-parameter state of one model.

    On CuPy, ``step`` updates every parameter in one launch (``gpunet/multi_tensor.py``);
    on NumPy it runs the rule parameter by parameter. ``prepare`` + ``apply`` split
    the step for CUDA graphs: ``prepare`` writes the step's scalars (lr, bias
    corrections) to a device buffer outside the graph, ``apply`` is captured.
    """

    def __init__(
        self, rule: str = "sgd", config: OptimConfig | dict | None = None, multi_tensor: bool = True
    ):
        self.rule_name = rule
        self.rule = get_rule(rule)
        self.config = config if isinstance(config, OptimConfig) else OptimConfig.from_dict(config)
        if rule == "nesterov":
            self.config.nesterov = True
        self.state = {}  # param name -> {state name -> array or int}
        self.multi_tensor = multi_tensor
        self._multi = None

    def _grads(self, params, grads):
        if missing := sorted(set(params) - set(grads)):
            raise KeyError(f"grads: no gradient for parameter(s) {missing}")
        return {k: grad_like(w, grads[k], k) for k, w in params.items()}

    def _use_multi(self, params) -> bool:
        """One launch can update every parameter: CuPy weights and state that pass ``multi_tensor.refusal``
        (gradients need not: the launch copies any it could not read; w stands in for them here)."""
        ops = get_ops(*params.values()) if self.multi_tensor and params else None
        if ops is None or not ops.on_device:  # NumPy: per parameter, nothing to check on every step
            return False
        names = _MULTI_RULES["sgd_momentum" if self.rule is sgd_momentum else self.rule.__name__][0]
        st = self.state
        arrays = [[w, w] + [st[k][n] for n in names if n in st.get(k, {})] for k, w in params.items()]
        return ops.one_launch_refusal(arrays) is None

    def prepare(self, params: dict, lr: float):
        """Multi-tensor path: create missing state, advance step counters, write the step's scalars."""
        if self._multi is None:
            self._multi = _Multi(self)
        self._multi.prepare(params, lr)

    def apply(self, params: dict, grads: dict):
        """Multi-tensor path: one launch updating every parameter (after ``prepare``)."""
        self._multi.apply(params, self._grads(params, grads))

    def update(self, name: str, w, dw, lr: float):
        """Update the one parameter ``w`` (named ``name``) in place from ``dw``: ``step`` for a
        single parameter, so a model can apply it the moment that gradient is final."""
        self.rule(w, grad_like(w, dw, name), self.config, self.state.setdefault(name, {}), lr)

    def begin(self, params: dict, lr: float, during_backward: bool = True) -> "StepRun":
        """One training step's update as the same calls on every backend: the model's backward calls
        ``run.on_grad(name, grad)`` as each gradient is final, then ``run.finish(grads)``. Where one
        launch can update every parameter (CuPy), ``on_grad`` does nothing and ``finish`` launches;
        otherwise ``on_grad`` updates that parameter at once (``during_backward``: while its gradient is
        still in cache) and ``finish`` updates the rest. Both orders give the same values."""
        return StepRun(self, params, lr, during_backward and not self._use_multi(params))

    def step(self, params: dict, grads: dict, lr: float):
        """Update every ``params[k]`` in place from ``grads[k]`` (converted to the parameter's dtype)."""
        if self._use_multi(params):
            self.prepare(params, lr)
            self.apply(params, grads)
            return
        grads = self._grads(params, grads)
        for k, w in params.items():
            self.rule(w, grads[k], self.config, self.state.setdefault(k, {}), lr)


class StepRun:
    """One step's update in progress (``Optimizer.begin``)."""

    def __init__(self, opt, params, lr, eager):
        self.opt, self.params, self.lr, self.eager, self.done = opt, params, lr, eager, set()

    def on_grad(self, name, grad):
        if self.eager:
            self.opt.update(name, self.params[name], grad, self.lr)
            self.done.add(name)

    def finish(self, grads):
        if not self.done:
            self.opt.step(self.params, grads, self.lr)
            return
        for k in self.params:  # a parameter the model did not report
            if k not in self.done:
                self.opt.update(k, self.params[k], grads[k], self.lr)


# ---------------------------------------------------------------- multi-tensor update (CuPy)
# rule -> (its state arrays, in the kernel's output order after w; its elementwise kernel)
_MULTI_RULES = {
    "sgd": ((), SGD),
    "sgd_momentum": (("velocity",), MOMENTUM),
    "rmsprop": (("cache",), RMSPROP),
    "adam": (("m", "v"), ADAM),
}
MULTI_KERNELS = {
    (k.source.name, dt): multi_tensor.declare(k.source, dt, __name__)
    for k in (SGD, MOMENTUM, NESTEROV, RMSPROP, ADAM)
    for dt in ("float32", "float64")
}


SCALAR_KERNELS = {
    k.source.name: multi_tensor.declare_scalars(k.source, __name__)
    for k in (SGD, MOMENTUM, NESTEROV, RMSPROP, ADAM)
}


class _Multi:
    """Glue between an ``Optimizer`` and ``multi_tensor.MultiTensor``: state arrays and the step's scalars.

    The scalars are computed on the device (``multi_tensor.declare_scalars``) from ``lr_dev`` and
    ``t_dev`` (Adam's step count), so the part of a step a CUDA graph captures (``device`` then
    ``apply``) reads them from memory; ``host`` runs before it, outside any graph: it writes lr only
    when it changed, and t only when the Python count (``state[k]["t"]``, kept for checkpoints and
    the NumPy path) is not what the device holds (a loaded checkpoint), then advances that count.
    """

    def __init__(self, opt: Optimizer):
        name = "sgd_momentum" if opt.rule is sgd_momentum else opt.rule.__name__
        self.opt, (self.state_names, k) = opt, _MULTI_RULES[name]
        if name == "sgd_momentum" and opt.config.nesterov:
            k = NESTEROV
        self.launcher = multi_tensor.MultiTensor(k.source)
        self.scalar_kernel = SCALAR_KERNELS[k.source.name]
        self.counts = self.state_names == ("m", "v")  # Adam: a step count
        self.lr_dev = self.t_dev = self.c_dev = None
        self.lr_host = self.t_host = self.c_host = None  # what the device holds (after queued work)

    def prepare(self, params, lr):
        self.host(params, lr)
        self.device()

    def host(self, params, lr):
        """Create missing state; queue writes of lr, t and the config where the device's copy is stale;
        advance the Python step count. Outside any CUDA graph."""
        xp = backend.get_array_module(*params.values())
        st = self.opt.state
        for k, w in params.items():
            s = st.setdefault(k, {})
            for n in self.state_names:
                if n not in s:
                    s[n] = xp.zeros_like(w)
        if self.lr_dev is None:
            self.lr_dev, self.t_dev = xp.zeros(1, np.float64), xp.zeros(1, np.float64)
            self.c_dev = xp.zeros(6, np.float64)
            self.launcher.hp = xp.zeros(1 + len(self.launcher.src.scalars), np.float64)
        c = multi_tensor.config_vector(self.opt.config)
        if self.c_host is None or not np.array_equal(c, self.c_host):
            self.c_dev[...] = xp.asarray(c)
            self.c_host = c
        if lr != self.lr_host:
            self.lr_dev[...] = xp.asarray(np.array([lr], np.float64))
            self.lr_host = lr
        if self.counts:
            t = st[next(iter(params))].get("t", 0)
            if t != self.t_host:
                self.t_dev[...] = xp.asarray(np.array([t], np.float64))
            self.t_host = t + 1  # the scalars kernel adds 1
            for k in params:
                st[k]["t"] = t + 1

    def device(self):
        """The scalars kernel: ``hp`` from lr and t + 1 (t advances on the device). Capturable."""
        self.scalar_kernel((1,), (1,), (self.launcher.hp, self.t_dev, self.lr_dev, self.c_dev))

    def snapshot(self):
        """Device copies and host mirrors of the scalars' state (``restore`` puts them back)."""
        st = self.opt.state
        ts = {k: s.get("t") for k, s in st.items()}
        return (self.lr_dev.copy(), self.t_dev.copy(), self.lr_host, self.t_host, ts)

    def restore(self, snap):
        lr, t, self.lr_host, self.t_host, ts = snap
        self.lr_dev[...], self.t_dev[...] = lr, t
        for k, v in ts.items():
            if v is not None:
                self.opt.state[k]["t"] = v

    def scalars(self, xp, params, lr):
        """The host twin of the scalars kernel: create missing state, advance Adam's step count; return
        (1 - lr * weight_decay, {scalar: value})."""
        cfg, st = self.opt.config, self.opt.state
        for k, w in params.items():
            s = st.setdefault(k, {})
            for n in self.state_names:
                if n not in s:
                    s[n] = xp.zeros_like(w)
            if self.state_names == ("m", "v"):
                s["t"] = s.get("t", 0) + 1
        vals = {
            "lr": lr,
            "mu": cfg.momentum,
            "r": cfg.decay_rate,
            "eps": cfg.epsilon,
            "b1": cfg.beta1,
            "b2": cfg.beta2,
        }
        if self.state_names == ("m", "v"):  # bias corrections, as in adam()
            t = st[next(iter(params))]["t"]
            vals["lr_t"], vals["inv_sqrt_bc2"] = lr / (1 - cfg.beta1**t), 1 / math.sqrt(1 - cfg.beta2**t)
        return 1.0 - lr * cfg.weight_decay, vals

    def apply(self, params, grads):
        st = self.opt.state
        self.launcher.launch(
            backend.get_array_module(*params.values()),
            [[grads[k], w] + [st[k][n] for n in self.state_names] for k, w in params.items()],
        )


# ---------------------------------------------------------------- schedules

SCHEDULES = ("constant", "step", "exponential", "cosine")


@dataclass
class Schedule:
    """Per-epoch learning rate: ``lr(epoch)`` for epoch = 0, 1, ..."""

    name: str = "constant"  # constant | step | exponential | cosine
    step_size: int = 10  # step: epochs between drops
    gamma: float = 0.1  # step: factor per drop; exponential: factor per epoch
    total_epochs: int = 10  # cosine: length of the half period
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of the base lr
    warmup_epochs: int = 0  # linear warm-up before any schedule

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
            return self.gamma**e
        if self.name == "cosine":
            T = max(1, self.total_epochs - self.warmup_epochs)
            c = 0.5 * (1 + math.cos(math.pi * min(e, T) / T))
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * c
        return 1.0
