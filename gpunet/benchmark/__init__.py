"""Throughput benchmarks of gpunet beside PyTorch: the library behind ``gpunet-bench``.

``run(BenchConfig(...))`` times each case interleaved -- gpunet, torch, gpunet,
torch ... -- and returns ``{"command", "machine", "results"}`` with the median
samples/s of the repeats and the ratio gpunet / torch; with ``json_path`` the
document is rewritten after every case, so a run cut short keeps what it measured.
Cases: the fully connected nets A and B (``fc.py``, with the GEMM-only bound) or,
with ``cnn=True``, the FER-size CNN (``cnn.py``). For the FC nets there are two views:
``steps`` (bare training steps on device-held batches) and ``epoch`` (``epoch.py``: a whole
``Solver.train()`` epoch against the PyTorch loop a user would write, the headline figure).
PyTorch runs in every optimizer form that works (default, foreach, fused; ``compile`` adds
the ``torch.compile``-d step) and each ratio is against the fastest, which is named. ``machine.py`` records
the
machine and pins the BLAS thread count; ``timing.py`` does the interleaving.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from .. import backend
from ..io import write_json
from .cnn import bench_cnn
from .epoch import EPOCH_TRAIN, bench_epoch
from .fc import NETS
from .fc_bench import bench_case
from .machine import loadavg, machine_info
from .profile import format_profile, profile_case

FC_BATCHES, CNN_BATCHES, EPOCH_BATCH = [256, 1024], [128], 256
VIEWS = ("steps", "epoch", "both")


@dataclass
class BenchConfig:
    nets: list = field(default_factory=lambda: ["A", "B"])  # FC reference nets to time
    batch_sizes: list | None = None  # None: 256 and 1024 for the FC nets, 128 for the CNN
    steps: int = 20  # training steps per timed repeat
    repeats: int = 5  # interleaved repeats (the median is reported)
    warmup: int = 3  # untimed steps per measurement before the repeats
    threads: int = 1  # CPU threads for torch (numpy's are pinned by the caller)
    torch: bool = True  # time PyTorch beside gpunet
    tf32: bool = False  # allow TF32 matmuls on the GPU (both libraries)
    precision: str = "fp32"  # fp32 | tf32 | bf16 on both sides (gpunet: gemm.use_precision; torch: autocast)
    cnn: bool = False  # the FER CNN instead of the FC nets
    view: str = "both"  # FC nets: "steps", "epoch" (Solver.train() epochs) or "both"
    compile: bool = False  # also time PyTorch's step under torch.compile
    epoch_samples: int = EPOCH_TRAIN  # training samples per epoch in the epoch view
    levers: bool = False  # epoch view: also time gpunet with each speed lever off
    profile: bool = False  # per-pass, per-layer times of one step instead (profile.py)
    settle: float | None = None  # untimed sleep before each timed call; None: 0.2 s on the CPU, 0 on a GPU
    json_path: str | None = None  # also write the results here, after every case
    command: str = ""  # recorded in the JSON

    def __post_init__(self):
        for k in ("steps", "repeats", "threads", "epoch_samples"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k}: expected >= 1, got {getattr(self, k)}")
        if self.warmup < 0:
            raise ValueError(f"--warmup: expected >= 0, got {self.warmup}")
        if self.batch_sizes is None:
            self.batch_sizes = list(CNN_BATCHES if self.cnn else FC_BATCHES)
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"--batch-sizes: expected positive sizes, got {self.batch_sizes}")
        if self.settle is not None and self.settle < 0:
            raise ValueError(f"--settle: expected >= 0 seconds, got {self.settle}")
        if self.view not in VIEWS:
            raise ValueError(f"--view: expected one of {', '.join(VIEWS)}, got {self.view!r}")
        unknown = sorted(set(self.nets) - set(NETS))
        if unknown:
            raise ValueError(f"--nets: expected some of {sorted(NETS)}, got {unknown}")


def prepare_torch(cfg: BenchConfig, say=print) -> bool:
    """Set torch's TF32 switch as ``cfg.tf32``; False (with a note) when torch cannot take part."""
    if not cfg.torch:
        return False
    try:
        import torch
    except ImportError:
        say("note: PyTorch is not installed; skipping the comparison")
        return False
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
    if backend.name() == "cupy" and not torch.cuda.is_available():
        say("note: torch has no CUDA here; skipping the PyTorch comparison")
        return False
    return True


def set_tf32_env(tf32: bool):
    """CuPy reads CUPY_TF32 at its first float32 matmul (cached per process): set it either way,
    so an inherited CUPY_TF32=1 cannot turn TF32 on in a run reported as "tf32 False"."""
    os.environ["CUPY_TF32"] = "1" if tf32 else "0"


def run(cfg: BenchConfig, say=None) -> dict:
    """Run every case of ``cfg`` on the active backend; ``say(result)`` after each one."""
    cfg.torch = prepare_torch(cfg, say=lambda m: print(m, file=sys.stderr))
    if cfg.settle is None:
        cfg.settle = 0.0 if backend.name() == "cupy" else 0.2
    info = machine_info()
    info.update(
        threads=cfg.threads,
        tf32=bool(cfg.tf32),
        precision=cfg.precision,
        settle_s=cfg.settle,
        loadavg_start=loadavg(),
    )
    doc = {"command": cfg.command, "machine": info, "results": []}
    if cfg.profile:
        nets = ["cnn"] if cfg.cnn else cfg.nets
        cases = [(profile_case, net, b) for net in nets for b in cfg.batch_sizes]
    elif cfg.cnn:
        cases = [(bench_cnn, "cnn", b) for b in cfg.batch_sizes]
    else:
        cases = (
            [(bench_case, net, b) for net in cfg.nets for b in cfg.batch_sizes] if cfg.view != "epoch" else []
        )
        cases += [(bench_epoch, net, EPOCH_BATCH) for net in cfg.nets] if cfg.view != "steps" else []
    for fn, net, batch in cases:
        r = fn(batch, cfg) if fn is bench_cnn else fn(net, batch, cfg)
        doc["results"].append(r)
        if cfg.json_path:
            write_json(cfg.json_path, doc)
        if say is not None:
            say(r)
    info["loadavg_end"] = loadavg()
    if cfg.json_path:
        write_json(cfg.json_path, doc)
    return doc


def progress_line(r: dict) -> str:
    """One line per finished case."""
    if r.get("view") == "profile":
        g = sum(r["totals"]["gpunet"].values())
        t = sum(r["totals"].get("torch", {}).values())
        return f"{r['net']} profile, batch {r['batch']}: gpunet {g:.1f} ms/step" + (
            f", torch {t:.1f} ms/step" if t else ""
        )
    if r.get("view") == "epoch":
        return f"{r['net']} epoch, batch {r['batch']}: gpunet {r['gpunet_epoch']:,.0f}/s" + (
            f", torch ({r['torch_optimizer']}) {r['torch_epoch']:,.0f}/s ({r['epoch_ratio']:.2f}x)"
            if "torch_epoch" in r
            else ""
        )
    return (
        f"{r['net']} batch {r['batch']}: gpunet {r['gpunet_train']:,.0f}/s"
        + (f", torch {r['torch_train']:,.0f}/s ({r['train_ratio']:.2f}x)" if "torch_train" in r else "")
        + (f", gemm bound {r['gemm_bound']:,.0f}/s" if "gemm_bound" in r else "")
    )


def machine_line(info: dict) -> str:
    return (
        f"machine: {info['cpu']}, {info['cores']} cores ({info.get('cores_usable')} usable), "
        f"SIMD {' '.join(info.get('simd') or []) or '-'}, L2 {info.get('l2_bytes', 0) >> 10} KiB, "
        f"{info['threads']} threads, backend {info['backend']}"
        + (f" ({info.get('gpu')})" if "gpu" in info else "")
        + f", numpy {info['numpy']} ({info['blas']}, kernel {info.get('blas_core') or 'unknown'}), "
        f"torch {info['torch']}, tf32 {info['tf32']}, precision {info.get('precision', 'fp32')}, "
        f"load average {info['loadavg_start']} -> {info['loadavg_end']}"
    )


def format_table(results) -> str:
    """The results as Markdown tables (samples/s): steps, then epochs; the device-memory lines on CuPy."""
    steps = [r for r in results if r.get("view") not in ("epoch", "profile")]
    epochs = [r for r in results if r.get("view") == "epoch"]
    profiles = [format_profile(r) for r in results if r.get("view") == "profile"]
    return "\n\n".join(
        t
        for t in (_steps_table(steps) if steps else "", _epoch_table(epochs) if epochs else "", *profiles)
        if t
    )


def _markdown(head, rows) -> list:
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w[i]) for i, c in enumerate(cells)) + " |"
    return [line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows]


def _epoch_table(results) -> str:
    head = [
        "net",
        "batch",
        "gpunet epoch samples/s",
        "torch best samples/s",
        "torch best form",
        "ratio (median)",
        "paired ratio (median)",
        "ratio range",
        "torch forms (samples/s)",
        "update in backward: gain",
        "batch prefetch: gain",
        "products side by side: gain",
        "threads pinned: gain",
    ]
    rows = []
    for r in results:
        forms = ", ".join(
            f"{k[len('torch_epoch_') :]} {v:,.0f}"
            for k, v in r.items()
            if k.startswith("torch_epoch_") and isinstance(v, float)
        )
        rr = r.get("epoch_ratio_all")
        rows.append(
            [
                r["net"],
                str(r["batch"]),
                f"{r['gpunet_epoch']:,.0f}",
                f"{r['torch_epoch']:,.0f}" if "torch_epoch" in r else "-",
                r.get("torch_optimizer", "-"),
                f"{r['epoch_ratio']:.2f}x" if "epoch_ratio" in r else "-",
                f"{r['epoch_ratio_paired']:.2f}x" if "epoch_ratio_paired" in r else "-",
                f"{min(rr):.2f}-{max(rr):.2f}x" if rr else "-",
                forms or "-",
                f"{r['fused_update_gain']:.3f}x" if "fused_update_gain" in r else "-",
                f"{r['prefetch_gain']:.3f}x" if "prefetch_gain" in r else "-",
                f"{r['concurrent_gain']:.3f}x" if "concurrent_gain" in r else "-",
                f"{r['pin_gain']:.3f}x" if "pin_gain" in r else "-",
            ]
        )
    return "\n".join(["whole epochs (Solver.train() vs the PyTorch loop):"] + _markdown(head, rows))


def _steps_table(results) -> str:
    head = [
        "net",
        "batch",
        "gpunet train/s",
        "torch best train/s",
        "torch form",
        "ratio",
        "gemm bound/s",
        "of bound",
        "gpunet infer/s",
        "torch infer/s",
        "ratio",
        "torch forms (train/s)",
    ]
    rows = []
    for r in results:
        f = lambda k, fmt="{:,.0f}": fmt.format(r[k]) if k in r else "-"
        rows.append(
            [
                r["net"],
                str(r["batch"]),
                f("gpunet_train"),
                f("torch_train"),
                r.get("torch_optimizer", "-"),
                f("train_ratio", "{:.2f}x"),
                f("gemm_bound"),
                f("train_frac_of_gemm_bound", "{:.0%}"),
                f("gpunet_infer"),
                f("torch_infer"),
                f("infer_ratio", "{:.2f}x"),
                ", ".join(f"{k} {v:,.0f}" for k, v in r.get("torch_train_variants", {}).items()) or "-",
            ]
        )
    out = _markdown(head, rows)
    for r in results:
        if r.get("torch_compile_s") is not None:
            out.append(
                f"{r['net']} batch {r['batch']}: torch.compile took {r['torch_compile_s']:.1f} s "
                f"(first two steps, not in the throughput)"
            )
    for r in results:
        for form, why in r.get("torch_skipped", {}).items():
            out.append(f"{r['net']} batch {r['batch']}: torch form {form} not timed: {why}")
    for r in results:
        if "device_memory" in r:
            m = r["device_memory"]
            out.append(
                f"{r['net']} batch {r['batch']}: gpunet training holds "
                f"{m['after_6_steps']['total_bytes'] / 2**20:.1f}"
                f" MiB of device pool (used {m['after_6_steps']['used_bytes'] / 2**20:.1f} MiB); no growth "
                f"after the first step: {m['pool_steady']}"
            )
    return "\n".join(out)
