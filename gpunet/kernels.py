"""Kernel plumbing: the registry of CUDA sources, their lazy compilation, and the CPU thread pool.

No arithmetic lives here. Each rule's CUDA text is declared beside its NumPy
twin (in ``gpunet/layers/`` and ``gpunet/optim.py``) with ``elementwise(...)`` or
``raw(...)``; this module records it in ``SOURCES`` (so the NVRTC and CPU-execution
tests can find every CUDA source in the project) and compiles it through
``backend.cupy_module()`` on first use. It never imports cupy itself.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import backend

CHUNK = 1 << 16        # elements per block of the blocked NumPy updates (256 KB per float32 array)
PAR_MIN = 1 << 18      # elements per thread below which one thread is faster


@dataclass(frozen=True)
class CudaSource:
    """One CUDA kernel of the project, as declared beside its rule.

    kind: ``"elementwise"`` (``cupy.ElementwiseKernel(in_params, out_params, body)``)
    or ``"raw"`` (``cupy.RawKernel(body, function)``). ``module`` names where it is declared.
    """
    name: str
    kind: str
    body: str
    in_params: str = ""
    out_params: str = ""
    preamble: str = ""
    function: str = ""      # raw kernels: the entry point
    module: str = ""
    scalars: tuple = ()     # elementwise: parameters the call sites pass as scalars (the rest are arrays)


SOURCES: dict[str, CudaSource] = {}   # name -> source: every CUDA kernel of gpunet
_compiled: dict[str, object] = {}


class Kernel:
    """A registered CUDA kernel; calling it compiles it on first use (CuPy only)."""

    def __init__(self, source: CudaSource):
        self.source = source

    def __call__(self, *args, **kwargs):
        k = _compiled.get(self.source.name)
        if k is None:
            k = _compiled[self.source.name] = _build(self.source)
        return k(*args, **kwargs)


def _register(src: CudaSource) -> Kernel:
    old = SOURCES.get(src.name)
    if old is not None and old != src:
        raise ValueError(f"CUDA kernel {src.name!r} is declared twice ({old.module} and {src.module})")
    SOURCES[src.name] = src
    return Kernel(src)


def elementwise(name, in_params, out_params, body, preamble="", module="", scalars=()) -> Kernel:
    """Declare a ``cupy.ElementwiseKernel``; returns the lazily compiled kernel.

    scalars: names of the parameters that the call sites pass as (NumPy) scalars rather
    than arrays; CuPy generates different code for each, and the NVRTC tests expand
    the kernel exactly as the call sites use it.
    """
    return _register(CudaSource(name, "elementwise", body, in_params, out_params, preamble, module=module,
                                scalars=tuple(scalars)))


def raw(name, code, function, module="") -> Kernel:
    """Declare a ``cupy.RawKernel`` of full CUDA source ``code`` with entry point ``function``."""
    return _register(CudaSource(name, "raw", code, function=function, module=module))


def _build(src: CudaSource):
    cp = backend.cupy_module()
    if cp is None:
        raise RuntimeError(f"CUDA kernel {src.name!r} needs CuPy and a usable GPU "
                           f"({backend.gpu_unavailable_reason()})")
    if src.kind == "elementwise":
        return cp.ElementwiseKernel(src.in_params, src.out_params, src.body, name=f"gpunet_{src.name}",
                                    preamble=src.preamble)
    return cp.RawKernel(src.body, src.function)


def on_gpu(a) -> bool:
    """True when ``a`` is a CuPy array (the fused CUDA path applies)."""
    return not isinstance(a, np.ndarray) and backend.get_array_module(a) is not np



# ------------------------------------------------------------------ CPU threads
_threads = None         # CPU threads for the blocked NumPy updates (None: from the environment)
_pool, _pool_size = None, 0


def set_num_threads(n: int | None):
    """Threads for the blocked NumPy updates (None: $OMP_NUM_THREADS, $OPENBLAS_NUM_THREADS or all cores)."""
    global _threads, _pool, _pool_size
    _threads = None if n is None else max(1, int(n))
    if _pool is not None:
        _pool.shutdown(wait=True)
    _pool, _pool_size = None, 0


def num_threads() -> int:
    """Threads the blocked NumPy updates use."""
    if _threads is not None:
        return _threads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return os.cpu_count() or 1


def parallel(fn, n: int):
    """Run ``fn(lo, hi)`` over [0, n) split into CHUNK-aligned ranges, one per thread.

    NumPy's ufuncs release the GIL, so plain threads use every core for
    memory-bound updates (as BLAS does for the products).
    """
    global _pool, _pool_size
    t = min(num_threads(), n // PAR_MIN)
    if t <= 1:
        fn(0, n)
        return
    if _pool_size < t:
        _pool = ThreadPoolExecutor(max_workers=t, thread_name_prefix="gpunet-update")
        _pool_size = t
    blocks = -(-n // CHUNK)
    cuts = [min(n, (blocks * k // t) * CHUNK) for k in range(t + 1)]
    list(_pool.map(fn, cuts[:-1], cuts[1:]))
