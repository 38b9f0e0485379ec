"""Throughput benchmarks of gpunet beside PyTorch: the library behind ``gpunet-bench``.

``run(BenchConfig(...))`` times each case interleaved -- gpunet, torch, gpunet,
torch ... -- and returns ``{"command", "machine", "results"}`` with the median
samples/s of the repeats and the ratio gpunet / torch; with ``json_path`` the
document is rewritten after every case, so a run cut short keeps what it measured.
Cases: the fully connected nets A and B (``fc.py``, with the GEMM-only bound) or,
with ``cnn=True``, the FER-size CNN (``cnn.py``). ``machine.py`` records the
machine and pins the BLAS thread count; ``timing.py`` does the interleaving.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from .. import backend
from ..io import write_json
from .cnn import bench_cnn
from .fc import NETS, bench_case
from .machine import loadavg, machine_info

FC_BATCHES, CNN_BATCHES = [256, 1024], [128]


@dataclass
class BenchConfig:
    nets: list = field(default_factory=lambda: ["A", "B"])  # FC reference nets to time
    batch_sizes: list | None = None   # None: 256 and 1024 for the FC nets, 128 for the CNN
    steps: int = 20                   # training steps per timed repeat
    repeats: int = 5                  # interleaved repeats (the median is reported)
    warmup: int = 3                   # untimed steps per measurement before the repeats
    threads: int = 1                  # CPU threads for torch (numpy's are pinned by the caller)
    torch: bool = True                # time PyTorch beside gpunet
    tf32: bool = False                # allow TF32 matmuls on the GPU (both libraries)
    cnn: bool = False                 # the FER CNN instead of the FC nets
    json_path: str | None = None      # also write the results here, after every case
    command: str = ""                 # recorded in the JSON

    def __post_init__(self):
        for k in ("steps", "repeats", "threads"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k}: expected >= 1, got {getattr(self, k)}")
        if self.warmup < 0:
            raise ValueError(f"--warmup: expected >= 0, got {self.warmup}")
        if self.batch_sizes is None:
            self.batch_sizes = list(CNN_BATCHES if self.cnn else FC_BATCHES)
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"--batch-sizes: expected positive sizes, got {self.batch_sizes}")
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
    info = machine_info()
    info.update(threads=cfg.threads, tf32=bool(cfg.tf32), loadavg_start=loadavg())
    doc = {"command": cfg.command, "machine": info, "results": []}
    cases = [("cnn", b) for b in cfg.batch_sizes] if cfg.cnn else \
        [(net, b) for net in cfg.nets for b in cfg.batch_sizes]
    for net, batch in cases:
        r = bench_cnn(batch, cfg) if net == "cnn" else bench_case(net, batch, cfg)
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
    return (f"{r['net']} batch {r['batch']}: gpunet {r['gpunet_train']:,.0f}/s"
            + (f", torch {r['torch_train']:,.0f}/s ({r['train_ratio']:.2f}x)" if "torch_train" in r else "")
            + (f", gemm bound {r['gemm_bound']:,.0f}/s" if "gemm_bound" in r else ""))


def machine_line(info: dict) -> str:
    return (f"machine: {info['cpu']}, {info['cores']} cores, {info['threads']} threads, backend {info['backend']}"
            + (f" ({info.get('gpu')})" if "gpu" in info else "")
            + f", numpy {info['numpy']} ({info['blas']}), torch {info['torch']}, tf32 {info['tf32']}, "
            f"load average {info['loadavg_start']} -> {info['loadavg_end']}")


def format_table(results) -> str:
    """The results as a Markdown table (samples/s), then the device-memory lines on CuPy."""
    head = ["net", "batch", "gpunet train/s", "torch train/s", "ratio", "gemm bound/s", "of bound",
            "gpunet infer/s", "torch infer/s", "ratio"]
    rows = []
    for r in results:
        f = lambda k, fmt="{:,.0f}": fmt.format(r[k]) if k in r else "-"
        rows.append([r["net"], str(r["batch"]), f("gpunet_train"), f("torch_train"), f("train_ratio", "{:.2f}x"),
                     f("gemm_bound"), f("train_frac_of_gemm_bound", "{:.0%}"), f("gpunet_infer"),
                     f("torch_infer"), f("infer_ratio", "{:.2f}x")])
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w[i]) for i, c in enumerate(cells)) + " |"
    out = [line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows]
    for r in results:
        if "device_memory" in r:
            m = r["device_memory"]
            out.append(f"{r['net']} batch {r['batch']}: gpunet training holds {m['after_6_steps']['total_bytes'] / 2**20:.1f}"
                       f" MiB of device pool (used {m['after_6_steps']['used_bytes'] / 2**20:.1f} MiB); no growth "
                       f"after the first step: {m['pool_steady']}")
    return "\n".join(out)
