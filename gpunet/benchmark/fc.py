"""The fully connected reference nets: gpunet beside PyTorch, and the GEMM-only bound.

Nets (CIFAR-shaped input, float32, SGD momentum 0.9):
  A: 3072-512-256-10, ReLU;  B: 3072-1024-1024-1024-10, ReLU, dropout 0.5.
The GEMM-only bound is the time of just the matrix products of one training step
(forward, weight-gradient, and input-gradient products except the first layer's)
with the backend's matmul, so each figure reads as a fraction of what the hardware allows.

``fc_bench.bench_case`` times one case. The gpunet step is the Solver's
(``train_step.make_train_step``: one CUDA graph per step on a GPU); PyTorch's is every form of
``torch_forms.FORMS`` that runs (eager with each optimizer implementation, the step in one
``torch.cuda.graph`` on CUDA, ``torch.compile`` time-boxed, mode ``max-autotune`` on CUDA), all in
the run's precision: ``bf16`` is ``torch.autocast`` to bfloat16 around every PyTorch step (and its
capture or compilation) beside gpunet's bf16 products.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from .. import backend, threads
from ..train_step import make_train_step
from .machine import pool_bytes
from .timing import TORCH_KINDS, best_of, torch_optimizer

NETS = {
    "A": {"hidden": [512, 256], "dropout": 0.0, "desc": "3072-512-256-10 ReLU"},
    "B": {"hidden": [1024, 1024, 1024], "dropout": 0.5, "desc": "3072-1024x3-10 ReLU dropout 0.5"},
}
INPUT_DIM, NUM_CLASSES = 3072, 10
LR, MOMENTUM = 1e-3, 0.9
N_BATCHES = 4  # distinct synthetic batches cycled through (all on the device)


def synthetic_batches(shape, num_classes, seed=0, n=N_BATCHES):
    """``n`` standard-normal float32 batches of ``shape`` (B, ...) and int labels (B,)."""
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal(shape, dtype=np.float32) for _ in range(n)]
    y = [rng.integers(0, num_classes, shape[0]) for _ in range(n)]
    return X, y


class GpunetCase:
    """The library path, the Solver's inner loop: ``model.loss`` + ``Optimizer.step`` on device-held
    batches."""

    def __init__(self, model, optimizer, X, y, lr):
        self.model, self.opt, self.lr = model, optimizer, lr
        self.X = [backend.to_device(x) for x in X]
        self.y = [backend.to_device(t) for t in y]
        self.i = 0
        self.loss = None
        self.step = make_train_step(model, optimizer)  # the Solver's step (a CUDA graph on a GPU)

    def _pinned(self):
        """As ``Solver.train`` runs its steps on the CPU: with the threads pinned (``threads.pinned``)."""
        return threads.pinned() if backend.name() == "numpy" else contextlib.nullcontext()

    def train_step(self):
        i = self.i = (self.i + 1) % len(self.X)
        with self._pinned():
            loss = self.step(self.X[i], self.y[i], self.lr)
        self.loss = loss  # stays on the device: no host synchronisation per step

    def infer_step(self):
        i = self.i = (self.i + 1) % len(self.X)
        with self._pinned():
            self.model.loss(self.X[i]).argmax(axis=1)

    def last_loss(self) -> float:
        return float("nan") if self.loss is None else float(self.loss)


def torch_step(torch, net, opt, X, y):
    """The PyTorch training step every comparison uses: zero_grad, cross-entropy, backward, step."""
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(X), y)
    loss.backward()
    opt.step()
    return loss.detach()


class TorchCase:
    """The same recipe in PyTorch eager mode (or ``torch.compile``-d): ``net`` (a torch module) and
    ``opt`` (its optimizer, in one of ``timing.TORCH_KINDS``)."""

    COMPILE_MODE = "max-autotune"  # torch.compile's mode on CUDA (the CPU: the default mode)

    def __init__(self, torch, net, opt, X, y, device: str, compile: bool = False):
        self.torch, self.device = torch, device
        self.net, self.opt = net, opt
        self.X = [torch.from_numpy(x).to(device) for x in X]
        self.y = [torch.from_numpy(t).to(device) for t in y]
        self.i = 0
        self.loss = None
        mode = self.COMPILE_MODE if device == "cuda" else None  # max-autotune: GPU kernels only
        self.step_fn = torch.compile(self._step, mode=mode) if compile else self._step
        self.compile_s = None

    def sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def _step(self, X, y):
        return torch_step(self.torch, self.net, self.opt, X, y)

    def compile_now(self):
        """Seconds of the first two steps (tracing and compiling, for a compiled step)."""
        t0 = time.perf_counter()
        for _ in range(2):
            self.train_step()
        self.sync()
        self.compile_s = time.perf_counter() - t0
        return self.compile_s

    def train_step(self):
        i = self.i = (self.i + 1) % len(self.X)
        self.net.train()
        self.loss = self.step_fn(self.X[i], self.y[i])

    def infer_step(self):
        i = self.i = (self.i + 1) % len(self.X)
        self.net.eval()
        with self.torch.inference_mode():
            self.net(self.X[i]).argmax(dim=1)


def torch_cases(torch, make_net, opt_cls, opt_kw, X, y, device, compile=False) -> dict:
    """``{kind: TorchCase}`` for every optimizer form that works on ``device`` (same seeded net each),
    plus ``"compile"`` (the default form, the step under ``torch.compile``) when asked."""
    cases = {}
    for kind in TORCH_KINDS + (("compile",) if compile else ()):
        net = make_net().to(device)
        opt = torch_optimizer(
            torch, opt_cls, net.parameters(), "default" if kind == "compile" else kind, **opt_kw
        )
        if opt is not None:
            cases[kind] = TorchCase(torch, net, opt, X, y, device, compile=kind == "compile")
    if "compile" in cases:
        cases["compile"].compile_now()
    return cases


def torch_precision(torch, precision: str, device: str):
    """The context every PyTorch step of a ``precision`` run is built and run in: ``torch.autocast`` to
    bfloat16 for ``bf16`` (the loss and the weights stay float32); TF32 is ``prepare_torch``'s switch."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def under(ctx_factory, fn):
    """``fn`` run inside a fresh ``ctx_factory()`` on every call."""

    def call():
        with ctx_factory():
            return fn()

    return call


def add_torch_fns(fns: dict, cases: dict):
    """Register ``torch_train_<kind>`` per case and one ``torch_infer`` (the default form's net)."""
    for kind, c in cases.items():
        fns[f"torch_train_{kind}"] = (c.train_step, c.sync)
    if cases:
        c = cases.get("default") or next(iter(cases.values()))
        fns["torch_infer"] = (c.infer_step, c.sync)


def summarise_torch(res: dict, cases: dict):
    """``torch_train`` = PyTorch's best form, named in ``torch_optimizer``; ratios against it."""
    best = best_of(res, "torch_train_", list(cases))
    if best is None:
        return
    res["torch_optimizer"] = best
    res["torch_train"] = res[f"torch_train_{best}"]
    res["torch_train_variants"] = {k: res[f"torch_train_{k}"] for k in cases}
    if "compile" in cases:
        res["torch_compile_s"] = cases["compile"].compile_s
    res["train_ratio"] = res["gpunet_train"] / res["torch_train"]
    if "torch_infer" in res:
        res["infer_ratio"] = res["gpunet_infer"] / res["torch_infer"]


def gpunet_fc(net: dict):
    """The FC net ``net`` as gpunet's ``FullyConnectedNet`` (float32, seeded 0): ``torch_fc``'s twin."""
    from ..model import FullyConnectedNet

    return FullyConnectedNet(
        net["hidden"],
        input_dim=INPUT_DIM,
        num_classes=NUM_CLASSES,
        dropout=net["dropout"],
        dtype=np.float32,
        seed=0,
    )


def torch_fc(torch, net: dict):
    """The FC net ``net`` as a ``torch.nn.Sequential`` (seeded 0)."""
    torch.manual_seed(0)
    dims = [INPUT_DIM] + net["hidden"]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        if net["dropout"]:
            layers.append(torch.nn.Dropout(net["dropout"]))
    layers.append(torch.nn.Linear(dims[-1], NUM_CLASSES))
    return torch.nn.Sequential(*layers)


class GemmBound:
    """Just the matrix products of one training step, with the backend's matmul and preallocated outputs."""

    def __init__(self, net: dict, batch: int):
        xp = backend.xp()
        rng = np.random.default_rng(1)
        dims = [INPUT_DIM] + net["hidden"] + [NUM_CLASSES]
        mk = lambda *s: backend.to_device(rng.standard_normal(s, dtype=np.float32))
        self.layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            self.layers.append(
                (
                    i,
                    mk(batch, a),
                    mk(a, b),
                    xp.empty((batch, b), np.float32),
                    mk(batch, b),
                    xp.empty((a, b), np.float32),
                    xp.empty((batch, a), np.float32),
                )
            )
        self.matmul = xp.matmul

    def step(self):
        mm = self.matmul
        for _, X, W, H, dH, dW, dX in self.layers:
            mm(X, W, out=H)
        for i, X, W, H, dH, dW, dX in reversed(self.layers):
            mm(X.T, dH, out=dW)
            if i > 0:
                mm(dH, W.T, out=dX)


def measure_memory(case: GpunetCase):
    """Device-pool bytes after the first training step and after 5 more (None on the CPU)."""
    case.train_step()  # the first step allocates optimizer state and buffers
    backend.synchronize()
    first = pool_bytes()
    for _ in range(5):  # ... and no later step may allocate more
        case.train_step()
    backend.synchronize()
    later = pool_bytes()
    if first is None:
        return None
    return {
        "after_first_step": first,
        "after_6_steps": later,
        "pool_steady": later["total_bytes"] == first["total_bytes"],
    }
