"""The FER-size CNN: gpunet beside PyTorch, training and inference at batch 128 with Adam.

Net (input (N, 1, 48, 48) float32, 7 classes):
  conv(1->32, 3, pad 1)-BN-ReLU-pool2, conv(32->64, 3, pad 1)-BN-ReLU-pool2,
  conv(64->128, 3, pad 1)-BN-ReLU-pool2, Linear(4608->256)-ReLU-dropout 0.5-Linear(256->7).
The gpunet step is the Solver's: ``model.loss(X, y)`` then ``Optimizer("adam").step``;
PyTorch's is every form in ``torch_forms.FORMS`` that runs on the device: eager with each Adam
implementation (default, foreach, fused, for-loop) and cuDNN autotuning on, the whole step in one
CUDA graph (CUDA only), and ``torch.compile`` (always tried on CUDA, on the CPU with ``--compile``;
time-boxed). Both sides in the same precision (TF32 as ``--tf32``). The ratio is against the
fastest form, which is named (``torch_optimizer``); forms that could not run are in ``torch_skipped``.
"""

from __future__ import annotations

from .. import backend
from ..nn import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential
from ..optim import Optimizer
from .fc import GpunetCase, add_torch_fns, measure_memory, summarise_torch, synthetic_batches
from .machine import free_pool
from .timing import interleaved, rates
from .torch_forms import COMPILE_TIMEOUT_S, FORMS, prepare_cudnn, torch_forms

INPUT_SHAPE, NUM_CLASSES = (1, 48, 48), 7
CHANNELS = (32, 64, 128)
HIDDEN, DROPOUT = 256, 0.5
LR = 1e-3
DESC = "FER CNN: 3x[conv3x3-BN-ReLU-pool2] 32/64/128, 4608-256-7, dropout 0.5, Adam"
ORDER = ["gpunet_train"] + [f"torch_train_{k}" for k in FORMS] + ["gpunet_infer", "torch_infer"]


def gpunet_cnn(seed=0):
    """The benchmark CNN as a ``gpunet.nn.Sequential``."""
    layers, c_in = [], INPUT_SHAPE[0]
    for c in CHANNELS:
        layers += [Conv2d(c_in, c, 3, padding=1), BatchNorm2d(c), ReLU(), MaxPool2d(2)]
        c_in = c
    flat = c_in * (INPUT_SHAPE[1] // 8) * (INPUT_SHAPE[2] // 8)  # 128 * 6 * 6 = 4608
    layers += [Flatten(), Linear(flat, HIDDEN), ReLU(), Dropout(DROPOUT), Linear(HIDDEN, NUM_CLASSES)]
    return Sequential(layers, seed=seed)


def torch_cnn(torch, seed=0):
    """The same CNN as a ``torch.nn.Sequential``."""
    nn = torch.nn
    torch.manual_seed(seed)
    layers, c_in = [], INPUT_SHAPE[0]
    for c in CHANNELS:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    flat = c_in * (INPUT_SHAPE[1] // 8) * (INPUT_SHAPE[2] // 8)
    layers += [
        nn.Flatten(),
        nn.Linear(flat, HIDDEN),
        nn.ReLU(),
        nn.Dropout(DROPOUT),
        nn.Linear(HIDDEN, NUM_CLASSES),
    ]
    return nn.Sequential(*layers)


CNN_DISTINCT_BATCHES = 32


def bench_cnn(batch: int, cfg) -> dict:
    """Time the CNN at ``batch``: gpunet and torch interleaved (images/s, medians of ``cfg.repeats``)."""
    # more distinct batches than steps: a net that memorises its few batches drives the loss
    # to 0 and its gradients into subnormal floats, which no real training run meets
    X, y = synthetic_batches((batch,) + INPUT_SHAPE, NUM_CLASSES, n=CNN_DISTINCT_BATCHES)
    free_pool()
    g = GpunetCase(gpunet_cnn(), Optimizer("adam", {"learning_rate": LR}), X, y, LR)
    memory = measure_memory(g)
    cases, skipped = {}, {}
    if cfg.torch:
        import torch

        torch.set_num_threads(cfg.threads)
        device = "cuda" if backend.name() == "cupy" else "cpu"
        prepare_cudnn(torch, device, cfg.tf32)
        cases, skipped = torch_forms(
            torch,
            lambda: torch_cnn(torch),
            torch.optim.Adam,
            {"lr": LR},
            X,
            y,
            device,
            compile=cfg.compile or device == "cuda",
            compile_timeout=COMPILE_TIMEOUT_S,
        )
    fns = {
        "gpunet_train": (g.train_step, backend.synchronize),
        "gpunet_infer": (g.infer_step, backend.synchronize),
    }
    add_torch_fns(fns, cases)
    times = interleaved(fns, ORDER, cfg.steps, cfg.repeats, cfg.warmup, cfg.settle)
    res = {"net": "cnn", "batch": batch, "steps": cfg.steps, "repeats": cfg.repeats}
    res.update(rates({k: times[k] for k in fns}, batch, cfg.steps))
    summarise_torch(res, cases)
    if skipped:
        res["torch_skipped"] = skipped
    res["final_loss"] = g.last_loss()
    if memory is not None:
        res["device_memory"] = memory
    return res
