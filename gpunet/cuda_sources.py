"""The registry of gpunet's CUDA sources and their lazy compilation (no kernels live here).

No arithmetic lives here. Each CUDA text is declared beside the ``CupyOps`` method that
launches it (``gpunet/ops/cupy_ops.py``; the one-launch update in ``gpunet/multi_tensor.py``)
with ``elementwise(...)`` or ``raw(...)``; this module records it in ``SOURCES`` (so the NVRTC and
CPU-execution
tests can find every CUDA source in the project) and compiles it through
``backend.cupy_module()`` on first use. It never imports cupy itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import backend


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
    function: str = ""  # raw kernels: the entry point
    module: str = ""
    scalars: tuple = ()  # elementwise: parameters the call sites pass as scalars (the rest are arrays)


SOURCES: dict[str, CudaSource] = {}  # name -> source: every CUDA kernel of gpunet
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

    def compile(self):
        """Compile and load it now, without a launch (before a CUDA graph capture that launches it first)."""
        k = _compiled.get(self.source.name)
        if k is None:
            k = _compiled[self.source.name] = _build(self.source)
        load = getattr(k, "compile", None)  # cupy.RawKernel; ElementwiseKernels compile per call
        if load is not None:
            load()


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
    return _register(
        CudaSource(
            name, "elementwise", body, in_params, out_params, preamble, module=module, scalars=tuple(scalars)
        )
    )


def raw(name, code, function, module="") -> Kernel:
    """Declare a ``cupy.RawKernel`` of full CUDA source ``code`` with entry point ``function``."""
    return _register(CudaSource(name, "raw", code, function=function, module=module))


def _build(src: CudaSource):
    cp = backend.cupy_module()
    if cp is None:
        raise RuntimeError(
            f"CUDA kernel {src.name!r} needs CuPy and a usable GPU ({backend.gpu_unavailable_reason()})"
        )
    if src.kind == "elementwise":
        return cp.ElementwiseKernel(
            src.in_params, src.out_params, src.body, name=f"gpunet_{src.name}", preamble=src.preamble
        )
    return cp.RawKernel(src.body, src.function)


def on_gpu(a) -> bool:
    """True when ``a`` is a CuPy array (the fused CUDA path applies), the emulated GPU's included."""
    return backend.is_device_array(a)
