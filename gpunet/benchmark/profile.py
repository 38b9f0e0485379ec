"""Per-pass profile of one training step: gpunet beside PyTorch, layer by layer.

For the FER CNN (``cnn.py``) and the FC nets A and B (``fc.py``; here as a ``Sequential`` of the
same layers, so each layer has its own row), one repeat times, in turn,
gpunet's step and PyTorch's step split into the same passes:

- ``data``: one batch gathered from in-memory training arrays (gpunet: ``ArrayLoader``, uint8
  images converted and normalised for the CNN; PyTorch: indexing the tensors and the same
  conversion);
- ``forward`` of each layer, then the loss;
- ``backward`` of each layer, last to first;
- ``update``: the optimizer's step over every parameter (gpunet: ``Optimizer.step`` after the
  backward; PyTorch: the fastest working form of ``opt.step()``).

PyTorch's layers are timed one at a time by cutting the autograd graph between them (each
layer's input is a detached leaf), so its backward is the layer's own. A ReLU that gpunet
applies inside the max pool after it (``MaxPool2d(relu=True)``) shows as 0 on gpunet's side.
Times are medians over the repeats, in milliseconds; the machine's load is recorded with them.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .. import threads
from ..data.arrays import ArrayLoader
from ..layers import softmax_loss
from ..nn import Dropout
from ..optim import Optimizer
from .cnn import INPUT_SHAPE, LR as CNN_LR, NUM_CLASSES as CNN_CLASSES, gpunet_cnn, torch_cnn
from .fc import INPUT_DIM, LR as FC_LR, MOMENTUM, NETS, NUM_CLASSES as FC_CLASSES, torch_fc
from .timing import TORCH_KINDS, torch_optimizer

PASSES = ("data", "forward", "loss", "backward", "update")


def _fc_sequential(net: dict):
    """Net A or B as a ``gpunet.nn.Sequential`` with the layer list of ``torch_fc`` (same indices)."""
    from ..nn import Linear, ReLU, Sequential

    dims = [INPUT_DIM] + net["hidden"]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [Linear(a, b), ReLU()] + ([Dropout(net["dropout"])] if net["dropout"] else [])
    layers.append(Linear(dims[-1], FC_CLASSES))
    return Sequential(layers, seed=0)


class _GpunetSteps:
    """gpunet's training step, pass by pass, as ``Sequential.loss`` and the Solver run it."""

    def __init__(self, model, opt, loader, lr):
        self.model, self.opt, self.loader, self.lr = model, opt, loader, lr
        self.batches = iter(())

    def _next(self):
        b = next(self.batches, None)
        if b is None:
            self.batches = iter(self.loader)
            b = next(self.batches)
        return b

    def step(self, rec):
        m = self.model
        t = time.perf_counter()
        with threads.pinned():
            X, y = self._next()
            t = rec("data", None, t)
            if X.dtype != m.dtype:
                X = X.astype(m.dtype)
            for i, (layer, (fwd, _, skipped)) in enumerate(zip(m.layers, m.plan)):
                if not skipped:
                    kw = dict(fwd, rng=m.rng) if isinstance(layer, Dropout) else fwd
                    X = layer.forward(X, True, **kw)
                t = rec("forward", i, t)
            loss, dout = softmax_loss(X, y)
            t = rec("loss", None, t)
            grads = {}
            for i in range(len(m.layers) - 1, -1, -1):
                layer, (_, bwd, skipped) = m.layers[i], m.plan[i]
                if not skipped:
                    dout = layer.backward(dout, **bwd)
                    grads.update({f"{i}.{k}": g for k, g in layer.grads.items()})
                    layer.grads = {}
                t = rec("backward", i, t)
            self.opt.step(m.params, grads, self.lr)
            rec("update", None, t)
        return loss


class _TorchSteps:
    """PyTorch's step, pass by pass: each layer's input a detached leaf, so each backward is its own."""

    def __init__(self, torch, net, opt, X, y, batch, normalise):
        self.torch, self.net, self.opt, self.batch = torch, net, opt, batch
        self.X, self.y, self.normalise = torch.from_numpy(X), torch.from_numpy(y), normalise
        self.gen = torch.Generator().manual_seed(0)
        self.perm, self.pos = None, len(y)

    def step(self, rec):
        torch = self.torch
        t = time.perf_counter()
        if self.pos + self.batch > len(self.y):
            self.perm, self.pos = torch.randperm(len(self.y), generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        x, y = self.X[idx], self.y[idx]
        if self.normalise is not None:
            x = (x.float() - self.normalise[0]) / self.normalise[1]
        t = rec("data", None, t)
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        ins, outs = [], []
        for i, layer in enumerate(self.net):
            x = x.detach().requires_grad_(i > 0)
            ins.append(x)
            x = layer(x)
            outs.append(x)
            t = rec("forward", i, t)
        last = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(last, y)
        loss.backward()
        t = rec("loss", None, t)
        g = last.grad
        for i in range(len(outs) - 1, -1, -1):
            outs[i].backward(g)
            g = ins[i].grad
            t = rec("backward", i, t)
        self.opt.step()
        rec("update", None, t)
        return loss.detach()


def _recorder(table):
    def rec(kind, i, t0):
        t = time.perf_counter()
        table.setdefault((kind, i), []).append(t - t0)
        return t

    return rec


def _run(sides: dict, repeats: int, warmup: int, settle: float) -> dict:
    """``{side: {(pass, layer): median ms}}``, the sides taking turns every repeat."""
    tables = {k: {} for k in sides}
    for step in sides.values():
        for _ in range(warmup):
            step(lambda kind, i, t: time.perf_counter())
    for _ in range(repeats):
        for k, step in sides.items():
            if settle:
                time.sleep(settle)
            step(_recorder(tables[k]))
    return {k: {key: 1e3 * statistics.median(v) for key, v in t.items()} for k, t in tables.items()}


def _torch_best_opt(torch, make_net, cls, kw):
    """(net, optimizer) in PyTorch's fastest optimizer form that works here: fused, then foreach, then
    default (on the CPU the fused forms are the fastest where they exist)."""
    for kind in reversed(TORCH_KINDS):
        net = make_net()
        opt = torch_optimizer(torch, cls, net.parameters(), kind, **kw)
        if opt is not None:
            return net, opt, kind
    raise RuntimeError("no PyTorch optimizer form works here")


def profile_case(case: str, batch: int, cfg) -> dict:
    """Profile the CNN (``case="cnn"``) or FC net ``"A"``/``"B"`` at ``batch``; cfg: a ``BenchConfig``."""
    rng = np.random.default_rng(0)
    if case == "cnn":
        n = 16 * batch
        X = rng.integers(0, 256, (n,) + INPUT_SHAPE, dtype=np.uint8)
        y = rng.integers(0, CNN_CLASSES, n)
        mean, std = np.float32(128.0), np.float32(64.0)
        loader = ArrayLoader(X, y, batch_size=batch, drop_last=True, mean=mean, std=std)
        model, lr = gpunet_cnn(), CNN_LR
        opt = Optimizer("adam", {"learning_rate": lr})
        names = [type(layer).__name__ for layer in model.layers]
        make_torch = lambda torch: torch_cnn(torch)
        torch_opt = lambda torch: (torch.optim.Adam, {"lr": lr})
        normalise = (mean, std)
    else:
        net = NETS[case]
        n = 16 * batch
        X = rng.standard_normal((n, INPUT_DIM), dtype=np.float32)
        y = rng.integers(0, FC_CLASSES, n)
        loader = ArrayLoader(X, y, batch_size=batch, drop_last=True)
        model, lr = _fc_sequential(net), FC_LR
        opt = Optimizer("sgd_momentum", {"learning_rate": lr, "momentum": MOMENTUM})
        names = [type(layer).__name__ for layer in model.layers]
        make_torch = lambda torch: torch_fc(torch, net)
        torch_opt = lambda torch: (torch.optim.SGD, {"lr": lr, "momentum": MOMENTUM})
        normalise = None
    sides = {"gpunet": _GpunetSteps(model, opt, loader, lr).step}
    form = None
    if cfg.torch:
        import torch

        torch.set_num_threads(cfg.threads)
        cls, kw = torch_opt(torch)
        tnet, topt, form = _torch_best_opt(torch, lambda: make_torch(torch), cls, kw)
        sides["torch"] = _TorchSteps(torch, tnet, topt, X, y, batch, normalise).step
    ms = _run(sides, cfg.repeats, cfg.warmup, cfg.settle or 0.0)
    rows = []
    for kind in PASSES:
        for i in [None] if kind in ("data", "loss", "update") else range(len(names)):
            row = {"pass": kind, "layer": names[i] if i is not None else "", "index": i}
            for side in ms:
                row[side + "_ms"] = ms[side].get((kind, i), 0.0)
            rows.append(row)
    totals = {side: {p: sum(r[side + "_ms"] for r in rows if r["pass"] == p) for p in PASSES} for side in ms}
    return {
        "net": case,
        "batch": batch,
        "view": "profile",
        "repeats": cfg.repeats,
        "torch_optimizer": form,
        "rows": rows,
        "totals": totals,
    }


def format_profile(r: dict) -> str:
    """One Markdown table per profiled case: ms per layer and pass, and the ratio torch / gpunet."""
    torch = "torch" in r["totals"]
    head = ["pass", "layer", "gpunet ms"] + (["torch ms", "torch / gpunet"] if torch else [])
    lines = [
        f"profile: {r['net']}, batch {r['batch']} (median of {r['repeats']}; torch optimizer "
        f"{r['torch_optimizer'] or '-'})",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * len(head)) + "|",
    ]

    def cells(g, t):
        return [f"{g:.2f}"] + ([f"{t:.2f}", f"{t / g:.2f}x" if g > 0 else "-"] if torch else [])

    for row in r["rows"]:
        g, t = row["gpunet_ms"], row.get("torch_ms", 0.0)
        if g == 0 and t == 0:
            continue
        label = f"{row['index']} {row['layer']}" if row["index"] is not None else ""
        lines.append("| " + " | ".join([row["pass"], label] + cells(g, t)) + " |")
    for p in PASSES:
        g, t = r["totals"]["gpunet"][p], r["totals"].get("torch", {}).get(p, 0.0)
        lines.append("| " + " | ".join([f"**{p}**", "all"] + cells(g, t)) + " |")
    g = sum(r["totals"]["gpunet"].values())
    t = sum(r["totals"].get("torch", {}).values())
    lines.append("| " + " | ".join(["**step**", "all"] + cells(g, t)) + " |")
    return "\n".join(lines)
