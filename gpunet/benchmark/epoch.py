"""A whole epoch as users run it: ``Solver.train()`` beside the PyTorch loop a user would write.

Both sides get the same in-memory data (``EPOCH_TRAIN`` CIFAR-shaped float32 samples,
standard normal, 10 balanced classes, and ``EPOCH_VAL`` validation samples) and do, per epoch:
a fresh shuffle; every mini-batch gathered from the arrays, forward, backward and the
SGD-momentum update; then the train accuracy on the Solver's 1,000-sample subset, the
validation accuracy, and a copy of the parameters when validation improved. One timed call
is one epoch; repeats interleave gpunet with every PyTorch optimizer form (default, foreach,
fused, and the compiled step with ``--compile``), and the ratio is against the fastest.
"""

from __future__ import annotations

import numpy as np

from .. import backend, threads
from ..solver import Solver
from .fc import (
    INPUT_DIM,
    LR,
    MOMENTUM,
    NETS,
    NUM_CLASSES,
    gpunet_fc,
    torch_fc,
    torch_precision,
    torch_step,
    under,
)
from .timing import TORCH_KINDS, best_of, interleaved, torch_optimizer

EPOCH_TRAIN, EPOCH_VAL, TRAIN_EVAL = 10240, 1000, 1000
ORDER = [
    "gpunet_epoch",
    "gpunet_epoch_unfused",
    "gpunet_epoch_prefetch",
    "gpunet_epoch_sequential",
    "gpunet_epoch_unpinned",
] + [f"torch_epoch_{k}" for k in TORCH_KINDS + ("compile",)]


def epoch_data(n_train=EPOCH_TRAIN, n_val=EPOCH_VAL, seed=0) -> dict:
    """The coursework's data dict: X_train (N, 3072) float32, y_train (N,), X_val, y_val."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train + n_val, INPUT_DIM), dtype=np.float32)
    y = np.arange(n_train + n_val) % NUM_CLASSES
    rng.shuffle(y)
    return {"X_train": X[:n_train], "y_train": y[:n_train], "X_val": X[n_train:], "y_val": y[n_train:]}


class GpunetEpoch:
    """One more epoch of a Solver per call (its loaders, evaluation and best-state bookkeeping)."""

    def __init__(
        self,
        net: dict,
        data: dict,
        batch: int,
        fused_update: bool = True,
        prefetch: bool = False,
        pin_threads: bool = True,
    ):
        model = gpunet_fc(net)
        self.solver = Solver(
            model,
            data,
            update_rule="sgd_momentum",
            optim_config={"learning_rate": LR, "momentum": MOMENTUM},
            batch_size=batch,
            num_epochs=0,
            num_train_samples=TRAIN_EVAL,
            verbose=False,
            fused_update=fused_update,
            prefetch=prefetch,
            pin_threads=pin_threads,
        )

    def epoch(self):
        self.solver.num_epochs += 1
        self.solver.schedule.total_epochs = self.solver.num_epochs
        self.solver.train()

    def sequential_epoch(self):
        """The epoch without side-by-side products (``threads.concurrent_products(False)``): every
        product is one BLAS call on OpenBLAS's own threads."""
        threads.concurrent_products(False)
        try:
            self.epoch()
        finally:
            threads.concurrent_products(True)


class TorchEpoch:
    """The plain PyTorch epoch: ``randperm``, index the tensors, step; then score and keep the best."""

    def __init__(self, torch, net, opt, data: dict, batch: int, compile: bool = False, device: str = "cpu"):
        self.torch, self.net, self.opt, self.batch, self.device = torch, net, opt, batch, device
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in data.items()}
        self.X, self.y, self.Xv, self.yv = t["X_train"], t["y_train"], t["X_val"], t["y_val"]
        self.gen = torch.Generator(device=device).manual_seed(0)
        sub = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(1))[:TRAIN_EVAL].to(device)
        self.Xs, self.ys = self.X[sub], self.y[sub]
        self.best, self.best_state = -1.0, None
        self.step = torch.compile(self._step) if compile else self._step

    def _step(self, xb, yb):
        return torch_step(self.torch, self.net, self.opt, xb, yb)

    def _accuracy(self, X, y):
        with self.torch.inference_mode():
            correct = sum(
                (self.net(X[i : i + 1024]).argmax(1) == y[i : i + 1024]).sum() for i in range(0, len(y), 1024)
            )
        return int(correct) / len(y)

    def sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def epoch(self):
        torch = self.torch
        self.net.train()
        perm = torch.randperm(len(self.y), generator=self.gen, device=self.device)
        losses = []
        for i in range(0, len(perm), self.batch):
            idx = perm[i : i + self.batch]
            losses.append(self.step(self.X[idx], self.y[idx]))
        if not bool(torch.isfinite(torch.stack(losses)).all()):
            raise FloatingPointError("torch epoch diverged")
        self.net.eval()
        self._accuracy(self.Xs, self.ys)
        val = self._accuracy(self.Xv, self.yv)
        if val > self.best:
            self.best = val
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}


def bench_epoch(net_name: str, batch: int, cfg) -> dict:
    """Epochs per second of gpunet's Solver and of each PyTorch form, interleaved; samples/s reported."""
    net = NETS[net_name]
    data = epoch_data(cfg.epoch_samples)
    fns = {}
    g = GpunetEpoch(net, data, batch)
    fns["gpunet_epoch"] = (g.epoch, backend.synchronize)
    if cfg.levers:  # the same Solver with the update after the backward pass
        fns["gpunet_epoch_unfused"] = (
            GpunetEpoch(net, data, batch, fused_update=False).epoch,
            backend.synchronize,
        )
        fns["gpunet_epoch_prefetch"] = (
            GpunetEpoch(net, data, batch, prefetch=True).epoch,
            backend.synchronize,
        )
        fns["gpunet_epoch_sequential"] = (GpunetEpoch(net, data, batch).sequential_epoch, backend.synchronize)
        fns["gpunet_epoch_unpinned"] = (
            GpunetEpoch(net, data, batch, pin_threads=False).epoch,
            backend.synchronize,
        )
    kinds = []
    if cfg.torch:
        import torch

        torch.set_num_threads(cfg.threads)
        device = "cuda" if backend.name() == "cupy" else "cpu"
        for kind in TORCH_KINDS + (("compile",) if cfg.compile else ()):
            tnet = torch_fc(torch, net).to(device)
            opt = torch_optimizer(
                torch,
                torch.optim.SGD,
                tnet.parameters(),
                "default" if kind == "compile" else kind,
                lr=LR,
                momentum=MOMENTUM,
            )
            if opt is not None:
                t = TorchEpoch(torch, tnet, opt, data, batch, kind == "compile", device)
                ctx = lambda: torch_precision(torch, getattr(cfg, "precision", "fp32"), device)  # noqa: E731
                fns[f"torch_epoch_{kind}"] = (under(ctx, t.epoch), t.sync)  # bf16: autocast, as gpunet
                kinds.append(kind)
    n = len(data["y_train"])
    times = interleaved(fns, ORDER, 1, cfg.repeats, 1, cfg.settle)
    res = {"net": net_name, "batch": batch, "view": "epoch", "samples": n, "repeats": cfg.repeats}
    res["precision"] = getattr(cfg, "precision", "fp32")
    for k, ts in times.items():
        med = float(np.median(ts))
        res[k] = n / med
        res[k + "_all"] = [n / t for t in ts]
        res[k + "_spread"] = [n / max(ts), n / min(ts)]
    best = best_of(res, "torch_epoch_", kinds)
    if best is not None:
        res["torch_optimizer"] = best
        res["torch_epoch"] = res[f"torch_epoch_{best}"]
        res["epoch_ratio"] = res["gpunet_epoch"] / res["torch_epoch"]
        res["epoch_ratio_all"] = [
            a / b for a, b in zip(res["gpunet_epoch_all"], res[f"torch_epoch_{best}_all"])
        ]
        # each repeat's two epochs ran side by side in time: the median of their ratios is immune to
        # the machine's slow swings between fast and slow spells, which the ratio of medians is not
        res["epoch_ratio_paired"] = float(np.median(res["epoch_ratio_all"]))
    if "gpunet_epoch_unfused" in res:
        res["fused_update_gain"] = res["gpunet_epoch"] / res["gpunet_epoch_unfused"]
        res["prefetch_gain"] = res["gpunet_epoch_prefetch"] / res["gpunet_epoch"]
        res["concurrent_gain"] = res["gpunet_epoch"] / res["gpunet_epoch_sequential"]
        res["pin_gain"] = res["gpunet_epoch"] / res["gpunet_epoch_unpinned"]
    return res
