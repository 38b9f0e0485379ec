"""What a benchmark records about the machine it ran on, and how it pins the CPU thread count.

numpy's BLAS reads its thread count from the environment when numpy is imported,
so ``pin_threads`` re-executes the command once with OMP_NUM_THREADS /
OPENBLAS_NUM_THREADS / MKL_NUM_THREADS set (torch gets ``set_num_threads``).
"""

from __future__ import annotations

import os
import platform
import sys

import numpy as np

from .. import backend, threads

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PINNED = "GPUNET_BENCH_THREADS"  # set in the re-executed process: pinning is done


def pin_threads(n: int, module: str, argv):
    """Re-execute ``python -m module argv`` once with the BLAS thread variables set to ``n``."""
    if os.environ.get(_PINNED) == str(n):
        return
    env = dict(os.environ, **{_PINNED: str(n)}, **{k: str(n) for k in THREAD_ENV})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_flags() -> list:
    """The SIMD extensions among ``SIMD`` that the CPU reports (Linux /proc/cpuinfo; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [s for s in SIMD if s in have]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """CPU model, cores, SIMD flags, library versions, BLAS and its kernel, load, for the record."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = threads.usable_cpus()
    core = threads.blas_core()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "simd": cpu_flags(),
        "l2_bytes": threads.l2_bytes(),
        "blas_core": core.get("core"),
        "blas_config": core.get("config"),
        "loadavg_1_5_15": loadavg3(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_name(),
        "backend": backend.selected(),
        "threads_env": {k: os.environ.get(k) for k in THREAD_ENV},
    }
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


def loadavg3():
    """The 1-, 5- and 15-minute load averages (None where the system does not say)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def loadavg():
    """1-minute load average (other processes on the machine make every figure noisier)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older numpy without mode="dicts"
        return "unknown"


def pool_bytes():
    """CuPy memory-pool use ``{"used_bytes", "total_bytes"}``, or None on the CPU."""
    cp = backend.cupy_module() if backend.name() == "cupy" else None
    if cp is None:
        return None
    pool = cp.get_default_memory_pool()
    return {"used_bytes": int(pool.used_bytes()), "total_bytes": int(pool.total_bytes())}


def free_pool():
    """Return the CuPy pool's cached blocks (a no-op on the CPU), so each case starts from empty."""
    cp = backend.cupy_module() if backend.name() == "cupy" else None
    if cp is not None:
        cp.get_default_memory_pool().free_all_blocks()
