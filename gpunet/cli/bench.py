"""gpunet-bench: training and inference throughput of the reference nets, beside PyTorch.

Nets (CIFAR-shaped input, float32, SGD momentum 0.9):
  A: 3072-512-256-10, ReLU;  B: 3072-1024-1024-1024-10, ReLU, dropout 0.5.
Each (net, batch size) is timed interleaved -- gpunet, torch, gpunet, torch ... --
and the median of the repeats is reported, with the ratio gpunet / torch and the
GEMM-only bound: the time of just the matrix products of one training step
(forward, weight-gradient, and input-gradient products except the first layer's)
with the backend's matmul, so each figure reads as a fraction of what the
hardware allows. The gpunet training step is the library's own path, the
Solver's inner loop: ``model.loss(X, y)`` then ``Optimizer.step``.

Thread count: numpy's BLAS reads it from the environment at import, so
``--threads N`` re-executes the command once with OMP_NUM_THREADS /
OPENBLAS_NUM_THREADS / MKL_NUM_THREADS set (torch gets ``set_num_threads(N)``).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

from .. import backend
from ..io import write_json
from ..model import FullyConnectedNet
from ..optim import Optimizer
from .common import add_common_args, run, setup

NETS = {
    "A": {"hidden": [512, 256], "dropout": 0.0, "desc": "3072-512-256-10 ReLU"},
    "B": {"hidden": [1024, 1024, 1024], "dropout": 0.5, "desc": "3072-1024x3-10 ReLU dropout 0.5"},
}
INPUT_DIM, NUM_CLASSES = 3072, 10
LR, MOMENTUM = 1e-3, 0.9
N_BATCHES = 4          # distinct synthetic batches cycled through (all on the device)
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------ threads
def _pin_threads(n: int, argv):
    """Re-execute once with the BLAS thread variables set to ``n`` (they are read at numpy import)."""
    if os.environ.get("GPUNET_BENCH_THREADS") == str(n):
        return
    env = dict(os.environ, GPUNET_BENCH_THREADS=str(n), **{k: str(n) for k in _THREAD_ENV})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "gpunet.cli.bench", *argv], env)


# ------------------------------------------------------------------ machine
def machine_info() -> dict:
    """CPU model, cores, library versions and BLAS, for the record."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": _blas_name(), "backend": backend.name(),
            "threads_env": {k: os.environ.get(k) for k in _THREAD_ENV}}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    cp = backend.cupy_module() if backend.name() == "cupy" else None
    if cp is not None:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        info["cupy"] = cp.__version__
    return info


def _loadavg():
    """1-minute load average (other processes on the machine make every figure noisier)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older numpy without mode="dicts"
        return "unknown"


# ------------------------------------------------------------------ timing
def _timed(fn, steps: int) -> float:
    """Seconds for ``steps`` calls of ``fn``, with the device drained before and after."""
    backend.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    backend.synchronize()
    return time.perf_counter() - t0


def _data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((batch, INPUT_DIM), dtype=np.float32) for _ in range(N_BATCHES)]
    y = [rng.integers(0, NUM_CLASSES, batch) for _ in range(N_BATCHES)]
    return X, y


class GpunetCase:
    """The library path: ``model.loss`` + ``Optimizer.step`` on device-held batches."""

    def __init__(self, net: dict, X, y):
        self.model = FullyConnectedNet(net["hidden"], input_dim=INPUT_DIM, num_classes=NUM_CLASSES,
                                       dropout=net["dropout"], dtype=np.float32, seed=0)
        self.opt = Optimizer("sgd_momentum", {"learning_rate": LR, "momentum": MOMENTUM})
        self.X = [backend.to_device(x) for x in X]
        self.y = [backend.to_device(t) for t in y]
        self.i = 0
        self.loss = None

    def train_step(self):
        i = self.i = (self.i + 1) % N_BATCHES
        loss, grads = self.model.loss(self.X[i], self.y[i])
        self.opt.step(self.model.params, grads, LR)
        self.loss = loss                 # stays on the device: no host synchronisation per step

    def infer_step(self):
        i = self.i = (self.i + 1) % N_BATCHES
        self.model.loss(self.X[i]).argmax(axis=1)

    def last_loss(self) -> float:
        return float("nan") if self.loss is None else float(self.loss)


class TorchCase:
    """The same recipe in PyTorch eager mode."""

    def __init__(self, net: dict, X, y, device: str, threads: int):
        import torch
        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        dims = [INPUT_DIM] + net["hidden"]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
            if net["dropout"]:
                layers.append(torch.nn.Dropout(net["dropout"]))
        layers.append(torch.nn.Linear(dims[-1], NUM_CLASSES))
        self.device = device
        self.net = torch.nn.Sequential(*layers).to(device)
        self.opt, self.optimizer_kind = self._sgd()
        self.X = [torch.from_numpy(x).to(device) for x in X]
        self.y = [torch.from_numpy(t).to(device) for t in y]
        self.i = 0
        self.loss = None

    def _sgd(self):
        SGD = self.torch.optim.SGD
        for kind in ("fused", "foreach"):
            try:
                opt = SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM, **{kind: True})
                # a fused/foreach step that is unsupported on this device fails on first use
                for p in self.net.parameters():
                    p.grad = self.torch.zeros_like(p)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM, **{kind: True}), kind
            except (RuntimeError, TypeError, ValueError):
                continue
        return SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM), "for-loop"

    def sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def train_step(self):
        i = self.i = (self.i + 1) % N_BATCHES
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.net(self.X[i]), self.y[i])
        loss.backward()
        self.opt.step()
        self.loss = loss.detach()

    def infer_step(self):
        i = self.i = (self.i + 1) % N_BATCHES
        self.net.eval()
        with self.torch.inference_mode():
            self.net(self.X[i]).argmax(dim=1)


class GemmBound:
    """Just the matrix products of one training step, with the backend's matmul and preallocated outputs."""

    def __init__(self, net: dict, batch: int):
        xp = backend.xp()
        rng = np.random.default_rng(1)
        dims = [INPUT_DIM] + net["hidden"] + [NUM_CLASSES]
        mk = lambda *s: backend.to_device(rng.standard_normal(s, dtype=np.float32))
        self.layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            self.layers.append((i, mk(batch, a), mk(a, b), xp.empty((batch, b), np.float32),
                                mk(batch, b), xp.empty((a, b), np.float32), xp.empty((batch, a), np.float32)))
        self.matmul = xp.matmul

    def step(self):
        mm = self.matmul
        for _, X, W, H, dH, dW, dX in self.layers:
            mm(X, W, out=H)
        for i, X, W, H, dH, dW, dX in reversed(self.layers):
            mm(X.T, dH, out=dW)
            if i > 0:
                mm(dH, W.T, out=dX)


def _pool_bytes():
    cp = backend.cupy_module() if backend.name() == "cupy" else None
    if cp is None:
        return None
    pool = cp.get_default_memory_pool()
    return {"used_bytes": int(pool.used_bytes()), "total_bytes": int(pool.total_bytes())}


def bench_case(net_name: str, batch: int, args, log=print) -> dict:
    """Time one (net, batch size): gpunet and torch interleaved, plus the GEMM bound."""
    net = NETS[net_name]
    X, y = _data(batch)
    cp = backend.cupy_module() if backend.name() == "cupy" else None
    if cp is not None:
        cp.get_default_memory_pool().free_all_blocks()
    g = GpunetCase(net, X, y)
    g.train_step()                       # the first step allocates optimizer state and buffers
    backend.synchronize()
    mem_first = _pool_bytes()
    for _ in range(5):                   # ... and no later step may allocate more
        g.train_step()
    backend.synchronize()
    mem_later = _pool_bytes()
    t = None
    if args.torch:
        device = "cuda" if backend.name() == "cupy" else "cpu"
        t = TorchCase(net, X, y, device, args.threads)
    gemm = GemmBound(net, batch)
    cases = [("gpunet_train", g.train_step, backend.synchronize), ("gpunet_infer", g.infer_step, backend.synchronize),
             ("gemm_bound", gemm.step, backend.synchronize)]
    if t is not None:
        cases += [("torch_train", t.train_step, t.sync), ("torch_infer", t.infer_step, t.sync)]
    order = ["gpunet_train", "torch_train", "gpunet_infer", "torch_infer", "gemm_bound"]
    fns = {k: (fn, sync) for k, fn, sync in cases}
    for k in order:                      # warm-up: caches, pools, kernel compilation
        if k in fns:
            for _ in range(args.warmup):
                fns[k][0]()
            fns[k][1]()
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k in order:
            if k not in fns:
                continue
            fn, sync = fns[k]
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    res = {"net": net_name, "batch": batch, "steps": args.steps, "repeats": args.repeats}
    for k, ts in times.items():
        res[k] = batch * args.steps / statistics.median(ts)   # samples/s
        res[k + "_all"] = [batch * args.steps / s for s in ts]
    if t is not None:
        res["train_ratio"] = res["gpunet_train"] / res["torch_train"]
        res["infer_ratio"] = res["gpunet_infer"] / res["torch_infer"]
        res["torch_optimizer"] = t.optimizer_kind
    res["train_frac_of_gemm_bound"] = res["gpunet_train"] / res["gemm_bound"]
    res["final_loss"] = g.last_loss()
    if mem_first is not None:
        res["device_memory"] = {"after_first_step": mem_first, "after_6_steps": mem_later,
                                "pool_steady": mem_later["total_bytes"] == mem_first["total_bytes"]}
    return res


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpunet-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="+", default=["A", "B"], choices=sorted(NETS), help="reference nets")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024], metavar="N")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per measurement before the repeats")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for numpy's BLAS and torch (default: all cores)")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="skip the PyTorch comparison")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the GPU (both libraries; off by default)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    add_common_args(p)
    return p


def _body(args) -> int:
    for k in ("steps", "repeats"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k}: expected >= 1, got {getattr(args, k)}")
    if any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"--batch-sizes: expected positive sizes, got {args.batch_sizes}")
    # cupy reads CUPY_TF32 at its first float32 matmul (cached per process): set it either way,
    # so an inherited CUPY_TF32=1 cannot turn TF32 on in a run reported as "tf32 False"
    os.environ["CUPY_TF32"] = "1" if args.tf32 else "0"
    setup(args)
    if args.torch:
        try:
            import torch
            if args.tf32 and torch.cuda.is_available():
                torch.backends.cuda.matmul.allow_tf32 = True
            elif torch.cuda.is_available():
                torch.backends.cuda.matmul.allow_tf32 = False
            if backend.name() == "cupy" and not torch.cuda.is_available():
                print("note: torch has no CUDA here; skipping the PyTorch comparison", file=sys.stderr)
                args.torch = False
        except ImportError:
            print("note: PyTorch is not installed; skipping the comparison", file=sys.stderr)
            args.torch = False
    info = machine_info()
    info["threads"] = args.threads
    info["tf32"] = bool(args.tf32)
    info["loadavg_start"] = _loadavg()
    command = "gpunet-bench " + " ".join(sys.argv[1:])
    results = []
    for net in args.nets:
        for batch in args.batch_sizes:
            r = bench_case(net, batch, args)
            results.append(r)
            if args.json:                # after every case: a run cut short keeps what it measured
                _write_json(args.json, {"command": command, "machine": info, "results": results})
            if not args.quiet:
                print(f"{net} batch {batch}: gpunet {r['gpunet_train']:,.0f}/s"
                      + (f", torch {r['torch_train']:,.0f}/s ({r['train_ratio']:.2f}x)" if "torch_train" in r else "")
                      + f", gemm bound {r['gemm_bound']:,.0f}/s", file=sys.stderr, flush=True)
    info["loadavg_end"] = _loadavg()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {args.threads} threads, backend {info['backend']}"
          + (f" ({info.get('gpu')})" if "gpu" in info else "")
          + f", numpy {info['numpy']} ({info['blas']}), torch {info['torch']}, tf32 {info['tf32']}, "
          f"load average {info['loadavg_start']} -> {info['loadavg_end']}")
    print(format_table(results))
    if args.json:
        _write_json(args.json, {"command": command, "machine": info, "results": results})
    return 0


def _write_json(path, doc):
    write_json(path, doc)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    if args.threads < 1:
        print(f"error: --threads: expected >= 1, got {args.threads}", file=sys.stderr)
        return 2
    _pin_threads(args.threads, argv)
    return run(_body, args)


if __name__ == "__main__":
    sys.exit(main())
