"""One case of the fully connected bench (``fc.py`` holds the nets and the cases it times): gpunet's
Solver step and every PyTorch form of ``torch_forms.FORMS`` interleaved, in the run's precision,
plus the GEMM-only bound. Apart from ``fc.py`` because ``torch_forms`` builds on it."""

from __future__ import annotations

import contextlib


from .. import backend
from ..optim import Optimizer
from .fc import (
    INPUT_DIM,
    LR,
    MOMENTUM,
    NETS,
    NUM_CLASSES,
    GemmBound,
    GpunetCase,
    add_torch_fns,
    gpunet_fc,
    measure_memory,
    summarise_torch,
    synthetic_batches,
    torch_fc,
    torch_precision,
    under,
)
from .machine import free_pool
from .timing import interleaved, rates
from .torch_forms import COMPILE_TIMEOUT_S, FORMS, torch_forms

ORDER = ["gpunet_train"] + [f"torch_train_{k}" for k in FORMS] + ["gpunet_infer", "torch_infer", "gemm_bound"]


def bench_case(net_name: str, batch: int, cfg) -> dict:
    """Time one (net, batch size): gpunet and torch interleaved, plus the GEMM bound.

    cfg: a ``BenchConfig`` (steps, repeats, warmup, torch, threads). Rates are samples/s.
    """
    net = NETS[net_name]
    X, y = synthetic_batches((batch, INPUT_DIM), NUM_CLASSES)
    free_pool()
    model = gpunet_fc(net)
    g = GpunetCase(model, Optimizer("sgd_momentum", {"learning_rate": LR, "momentum": MOMENTUM}), X, y, LR)
    memory = measure_memory(g)
    cases, skipped, ctx = {}, {}, contextlib.nullcontext
    if cfg.torch:
        import torch

        torch.set_num_threads(cfg.threads)
        device = "cuda" if backend.name() == "cupy" else "cpu"
        ctx = lambda: torch_precision(torch, getattr(cfg, "precision", "fp32"), device)  # noqa: E731
        with ctx():
            cases, skipped = torch_forms(
                torch,
                lambda: torch_fc(torch, net),
                torch.optim.SGD,
                {"lr": LR, "momentum": MOMENTUM},
                X,
                y,
                device,
                compile=cfg.compile or device == "cuda",
                compile_timeout=COMPILE_TIMEOUT_S,
            )
    gemm = GemmBound(net, batch)
    fns = {
        "gpunet_train": (g.train_step, backend.synchronize),
        "gpunet_infer": (g.infer_step, backend.synchronize),
        "gemm_bound": (gemm.step, backend.synchronize),
    }
    add_torch_fns(fns, cases)
    for k in [k for k in fns if k.startswith("torch_")]:
        fns[k] = (under(ctx, fns[k][0]), fns[k][1])
    times = interleaved(fns, ORDER, cfg.steps, cfg.repeats, cfg.warmup, cfg.settle)
    res = {"net": net_name, "batch": batch, "steps": cfg.steps, "repeats": cfg.repeats}
    res["precision"] = getattr(cfg, "precision", "fp32")
    res.update(rates({k: times[k] for k in fns}, batch, cfg.steps))
    summarise_torch(res, cases)
    if skipped:
        res["torch_skipped"] = skipped
    res["train_frac_of_gemm_bound"] = res["gpunet_train"] / res["gemm_bound"]
    res["final_loss"] = g.last_loss()
    if memory is not None:
        res["device_memory"] = memory
    return res
