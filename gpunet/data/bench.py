"""Benchmark of the HDF5 data path: conversion, streaming throughput, epoch cost, memory.

``run_all`` measures, in one run on this machine:

1. the time ``data_prep.convert`` takes for each real dataset found;
2. loader throughput (samples/s, MB/s of uint8) from HDF5 to the device, streaming
   and preloaded, with no compute;
3. one training epoch of a 3072-512-256-10 net fed by the streaming loader against
   the same epoch fed from memory (``ArrayLoader``), interleaved in short blocks so
   that other load on a shared machine hits both alike, and the overhead in percent;
4. the extra resident memory (VmRSS) of streaming a synthetic file of ``big_gb``
   GB, whose pages are evicted from the page cache first (so it is read cold).

``table`` formats the results; ``gpunet-bench-data`` only parses arguments around them.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import backend
from . import h5file
from .arrays import ArrayLoader
from .h5file import read_meta
from .norm import channel_stats
from .h5loader import H5Loader

_DATASETS = {"cifar10": "cifar-10-python.tar.gz", "fer2013": "fer2013-images.tar.gz"}


def rss_mb() -> float:
    """Resident set size of this process in MB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def evict(path):
    """Drop ``path``'s pages from the page cache (flushed first), so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_synthetic(path, n, shape=(3, 32, 32), chunk=256, seed=0, block=16384):
    """A gpunet HDF5 file of ``n`` random uint8 images (labels 0..9), written block by block
    through the format's owner (atomically)."""
    base = np.random.default_rng(seed).integers(0, 256, (block,) + shape, dtype=np.uint8)
    with h5file.create(
        path,
        dataset="synthetic",
        class_names=[str(i) for i in range(10)],
        mean=np.full(shape[0], 127.5),
        std=np.full(shape[0], 73.9),
        image_shape=shape,
    ) as f:
        x, y = h5file.create_split(f, "train", n, shape, chunk)
        for a in range(0, n, block):
            m = min(block, n - a)
            x[a : a + m] = base[:m] + np.uint8(a // block)  # different content per block, no new RNG draw
            y[a : a + m] = np.arange(a, a + m) % 10


def time_conversions(sources: Path, out_dir: Path) -> dict:
    """Seconds ``data_prep.convert`` takes per dataset; ``{name: {seconds, path} or {skipped}}``."""
    try:
        from data_prep import convert
    except ImportError as e:
        return {name: {"skipped": f"data_prep.convert is not importable yet ({e})"} for name in _DATASETS}
    out = {}
    for name, file in _DATASETS.items():
        src = sources / file
        if not src.is_file():
            out[name] = {"skipped": f"{src} not found"}
            continue
        dst = out_dir / f"{name}.h5"
        t0 = time.perf_counter()
        try:
            convert(name, src, dst)
        except Exception as e:  # report it and go on with the other measurements
            out[name] = {"skipped": f"convert failed: {type(e).__name__}: {e}"}
            continue
        out[name] = {
            "seconds": time.perf_counter() - t0,
            "path": str(dst),
            "file_mb": dst.stat().st_size / 1e6,
            "counts": read_meta(dst)["counts"],
        }
    return out


def loader_throughput(path, preload, batch_size=256, on_batch=None) -> dict:
    """One epoch through ``H5Loader`` with no compute: samples/s and MB/s of uint8 moved."""
    with H5Loader(path, "train", batch_size=batch_size, preload=preload) as ld:
        t0 = time.perf_counter()
        n = 0
        for X, y in ld:
            n += len(y)
            if on_batch is not None:
                on_batch()
        backend.synchronize()
        dt = time.perf_counter() - t0
        mb = n * int(np.prod(ld.sample_shape)) / 1e6
    return {"samples": n, "seconds": dt, "samples_per_s": n / dt, "mb_per_s": mb / dt}


def _net(seed=0):
    """A fresh 3072-512-256-10 net and its SGD+momentum optimizer."""
    from ..model import FullyConnectedNet
    from ..optim import Optimizer

    return (
        FullyConnectedNet([512, 256], input_dim=3072, num_classes=10, seed=seed),
        Optimizer("sgd_momentum", {"learning_rate": 1e-3}),
    )


def _train_steps(model, opt, batches, n) -> tuple:
    """Train on the next ``n`` batches of the iterator ``batches``: (wall s, CPU s, batches done)."""
    t0, c0, done = time.perf_counter(), time.process_time(), 0
    for X, y in itertools.islice(batches, n):
        _, grads = model.loss(X, y)
        opt.step(model.params, grads, 1e-3)
        done += 1
    backend.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, done


def compare_epochs(path, batch_size, repeats, block) -> dict:
    """One training epoch streaming from ``path`` vs the same epoch from memory, ``repeats`` times.

    The two epochs run interleaved in blocks of ``block`` batches (ABBA order), each on its own
    net, so load from other processes on a shared machine hits both alike; a mode's epoch time
    is the sum of its blocks. The overhead is reported from the totals (best repeat) and, more
    robust to bursts of load, as the median over block pairs of streaming/memory - 1.
    """
    X, y = h5file.load_split(path, "train")
    mean, std = channel_stats(read_meta(path))
    mem = ArrayLoader(X, y, batch_size, seed=0, mean=mean, std=std)
    totals = {"memory": [], "streaming": []}
    cpu = {"memory": [], "streaming": []}
    ratios = []
    with H5Loader(path, "train", batch_size=batch_size, preload=False) as stream:
        for rep in range(repeats):
            loaders = {"memory": mem, "streaming": stream}
            nets = {k: _net() for k in loaders}
            its = {}
            for k, ld in loaders.items():
                ld.set_epoch(rep)
                its[k] = iter(ld)
            wall, proc = {k: 0.0 for k in loaders}, {k: 0.0 for k in loaders}
            for b in itertools.count():
                pair = {}
                for k in ("memory", "streaming") if b % 2 == 0 else ("streaming", "memory"):
                    w, p, done = _train_steps(*nets[k], its[k], block)
                    wall[k], proc[k], pair[k] = wall[k] + w, proc[k] + p, (w, done)
                if pair["memory"][1] == 0:
                    break
                if pair["memory"][1] == pair["streaming"][1] == block:
                    ratios.append(pair["streaming"][0] / pair["memory"][0])
            for k in loaders:
                totals[k].append(wall[k])
                cpu[k].append(proc[k])
    best = {k: min(v) for k, v in totals.items()}
    return {
        "samples": len(y),
        "batch_size": batch_size,
        "block_batches": block,
        "epoch_wall_s": totals,
        "best_s": best,
        "process_cpu_s": cpu,
        "overhead_pct": 100 * (best["streaming"] / best["memory"] - 1),
        "overhead_median_block_pct": 100 * (float(np.median(ratios)) - 1),
        "loadavg_after": os.getloadavg(),
    }


def memory_check(tmp: Path, gb: float) -> dict:
    """Extra VmRSS while streaming a synthetic file of ``gb`` GB read cold; the file is deleted."""
    n = int(gb * 1e9 / 3072)
    path = tmp / "bench_big.h5"
    try:
        t0 = time.perf_counter()
        write_synthetic(path, n)
        write_s = time.perf_counter() - t0
        evict(path)
        with H5Loader(path, "train", preload="auto") as ld:  # 'auto' must choose streaming here
            auto_streams = not ld.preloaded
        before = rss_mb()
        peak = [before]
        res = loader_throughput(path, preload=False, on_batch=lambda: peak.append(rss_mb()))
        return {
            "file_gb": path.stat().st_size / 1e9,
            "samples": n,
            "write_s": write_s,
            "auto_chose_streaming": auto_streams,
            "rss_before_mb": before,
            "rss_peak_mb": max(peak),
            "extra_rss_mb": max(peak) - before,
            "cold_read": res,
        }
    finally:
        path.unlink(missing_ok=True)


def table(r: dict) -> str:
    """The results of ``run_all`` as a two-column text table."""
    rows = [("measurement", "value")]
    for name, c in r["convert"].items():
        rows.append(
            (
                f"convert {name}",
                f"{c['seconds']:.1f} s ({c['file_mb']:.0f} MB)"
                if "seconds" in c
                else f"skipped: {c['skipped']}",
            )
        )
    for name, t in r["throughput"].items():
        rows.append((f"loader {name}", f"{t['samples_per_s']:,.0f} samples/s, {t['mb_per_s']:,.0f} MB/s"))
    e = r.get("epoch")
    if e:
        rows.append((f"epoch from memory ({e['samples']} samples)", f"{e['best_s']['memory']:.2f} s"))
        rows.append(("epoch streaming from HDF5", f"{e['best_s']['streaming']:.2f} s"))
        rows.append(
            (
                "streaming overhead (target <= 5%)",
                f"{e['overhead_pct']:+.2f} % (median over "
                f"{e['block_batches']}-batch blocks {e['overhead_median_block_pct']:+.2f} %)",
            )
        )
        rows.append(
            (
                "process CPU per epoch, memory/streaming",
                f"{min(e['process_cpu_s']['memory']):.1f} / {min(e['process_cpu_s']['streaming']):.1f} s",
            )
        )
        rows.append(
            ("load average after (other processes)", " ".join(f"{v:.1f}" for v in e["loadavg_after"]))
        )
    m = r.get("memory")
    if m:
        rows.append(
            (
                f"stream {m['file_gb']:.2f} GB file, cold",
                f"{m['cold_read']['samples_per_s']:,.0f} samples/s, {m['cold_read']['mb_per_s']:,.0f} MB/s",
            )
        )
        rows.append(
            (
                "extra RSS while streaming it",
                f"{m['extra_rss_mb']:.1f} MB ({m['rss_before_mb']:.0f} -> {m['rss_peak_mb']:.0f} MB)",
            )
        )
        rows.append(("preload='auto' chose streaming", str(m["auto_chose_streaming"])))
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def run_all(
    sources=None,
    tmp=None,
    big_gb=2.2,
    batch_size=100,
    repeats=1,
    block=10,
    skip_memory=False,
    skip_train=False,
) -> dict:
    """Every measurement above, as a JSON-ready dict; temporary files go under ``tmp``
    (default: the system's) and are deleted."""
    r = {"backend": backend.selected(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="gpunet-bench-", dir=tmp))
    try:
        if not skip_memory:
            r["memory"] = memory_check(work, big_gb)
        r["convert"] = time_conversions(Path(sources), work) if sources else {}
        cifar = r["convert"].get("cifar10", {}).get("path")
        if cifar is None:
            cifar = work / "synthetic_cifar.h5"
            write_synthetic(cifar, 50000)
        r["epoch_data"] = (
            str(cifar) if "path" in r["convert"].get("cifar10", {}) else "synthetic 50000x3x32x32"
        )
        r["throughput"] = {
            f"{name} ({r['epoch_data'].split('/')[-1]})": loader_throughput(cifar, pre)
            for name, pre in (("streaming", False), ("preloaded", True))
        }
        if not skip_train:
            r["epoch"] = compare_epochs(cifar, batch_size, repeats, block)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return r
