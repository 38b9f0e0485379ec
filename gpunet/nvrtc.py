"""Compile gpunet's CUDA sources with NVRTC, exactly as CuPy would, without a GPU.

The one module that uses private CuPy APIs, so it is pinned to one CuPy release
(``PINNED_CUPY``; ``.ci/run`` installs it with the NVRTC wheel). For an
``ElementwiseKernel`` CuPy generates the kernel text from the argument *layout*
(array or scalar, dimensions, contiguity), so ``variants`` lists the layouts the
call sites produce and ``expand`` asks CuPy's own generator
(``cupy._core._kernel._get_elementwise_kernel_code``) for the text; ``compile``
then runs NVRTC with CuPy's options for one ``sm_XX``. A ``RawKernel`` is
compiled as it is. Nothing here touches a device.

Layouts: arrays that are not ``raw`` are C-contiguous and of one shape at the
call sites, which CuPy reduces to 1-d; parameters named in ``BROADCAST`` are a
row vector broadcast over a 2-d array (the bias add), which keeps 2-d indexing.
``raw`` arrays are 1-d contiguous. Type placeholders: ``T`` is float32 or
float64; any other letter (a label type such as ``S``) is int32 or int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend

PINNED_CUPY = "14.2.0"
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
INTS = (np.dtype(np.int32), np.dtype(np.int64))
# elementwise kernel -> parameters the call site broadcasts as an (M,) row over (N, M)
BROADCAST = {"bias_add": ("b",), "bias_relu": ("b",)}
_ARG_NDARRAY, _ARG_INDEXER, _ARG_SCALAR = 1, 2, 3  # cupy._core._kernel._ArgKind in 14.2


class NvrtcError(RuntimeError):
    """NVRTC rejected a source; the message holds the kernel, variant, arch and compiler log."""


@dataclass(frozen=True)
class Variant:
    """One concrete form of a kernel: ``types`` maps placeholders to dtypes; ``code`` is the CUDA text."""

    source: str  # kernel name in cuda_sources.SOURCES
    label: str  # e.g. "T=float32,S=int64,flat"
    code: str
    function: str  # entry point


def unavailable() -> str | None:
    """Why NVRTC compilation cannot run here (None when it can)."""
    cupy = backend.cupy_toolchain()
    if cupy is None:
        return "cupy does not import"
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as e:  # the NVRTC library is not found
        return f"NVRTC unavailable ({type(e).__name__}: {e})"
    if cupy.__version__ != PINNED_CUPY:
        return f"gpunet.nvrtc is pinned to cupy {PINNED_CUPY}, found {cupy.__version__}"
    return None


def _cupy():
    return backend.cupy_toolchain()


def _placeholders(src):
    _kernel = _cupy()._core._kernel
    params = _kernel._get_param_info(src.in_params, True) + _kernel._get_param_info(src.out_params, False)
    return params, sorted({p.ctype for p in params if p.dtype is None and p.ctype})


def type_choices(src):
    """All placeholder assignments to compile: [{"T": float32, "S": int32}, ...]."""
    _, names = _placeholders(src)
    combos = [{}]
    for n in names:
        combos = [dict(c, **{n: d}) for c in combos for d in (FLOATS if n == "T" else INTS)]
    return combos


def expand(src, types: dict, broadcast=()) -> str:
    """CuPy's generated text of elementwise ``src`` with placeholders ``types`` (name -> dtype).

    broadcast: parameter names passed as a row broadcast over a 2-d array (2-d indexing).
    """
    cupy = _cupy()
    _carray, _kernel, _scalar = cupy._core._carray, cupy._core._kernel, cupy._core._scalar
    params, _ = _placeholders(src)
    unknown = set(src.scalars) - {p.name for p in params[: len(_kernel._get_param_info(src.in_params, True))]}
    if unknown:
        raise NvrtcError(
            f"kernel {src.name!r} ({src.module}): scalars={sorted(unknown)} are not input "
            f"parameters of {src.in_params!r}"
        )
    k = cupy.ElementwiseKernel(
        src.in_params, src.out_params, src.body, name=f"gpunet_{src.name}", preamble=src.preamble
    )
    nin = len(k.in_params)

    def dtype_of(p):
        return np.dtype(p.dtype) if p.dtype is not None else np.dtype(types[p.ctype])

    in_dt = tuple(None if p.name in src.scalars else dtype_of(p) for p in k.in_params)
    out_dt = tuple(dtype_of(p) for p in k.out_params)
    in_types, out_types, type_map = k._decide_params_type(in_dt, out_dt)
    ndim = 2 if broadcast else 1
    infos = []
    for p, t in zip(k.in_params + k.out_params, in_types + out_types):
        if p.name in src.scalars:
            infos.append(_kernel._ArgInfo(_ARG_SCALAR, _scalar.CScalar, np.dtype(t), 0, True, True))
        elif p.raw:
            infos.append(_kernel._ArgInfo(_ARG_NDARRAY, cupy.ndarray, np.dtype(t), 1, True, True))
        else:
            contiguous = p.name not in broadcast
            infos.append(_kernel._ArgInfo(_ARG_NDARRAY, cupy.ndarray, np.dtype(t), ndim, contiguous, True))
    infos.append(_kernel._ArgInfo(_ARG_INDEXER, _carray.Indexer, None, ndim, True, True))
    assert len(infos) == nin + len(k.out_params) + 1
    return _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, k.params, k.operation, k.name, k.preamble
    )


def variants(src) -> list[Variant]:
    """Every form of ``src`` that the call sites can produce (see the module docstring)."""
    if src.kind == "raw":
        return [Variant(src.name, "raw", src.body, src.function)]
    out = []
    for types in type_choices(src):
        tl = ",".join(f"{n}={d.name}" for n, d in types.items())
        out.append(Variant(src.name, f"{tl},flat", expand(src, types), f"gpunet_{src.name}"))
        bc = BROADCAST.get(src.name, ())
        if bc:
            out.append(Variant(src.name, f"{tl},row-broadcast", expand(src, types, bc), f"gpunet_{src.name}"))
    return out


def _options(arch: str):
    """CuPy's own NVRTC options (CCCL and CuPy include paths, C++17) plus what its compiler adds."""
    return _cupy()._core.core.assemble_cupy_compiler_options(()) + (
        "-ftz=true",
        f"-arch=sm_{arch}",
        "--device-as-default-execution-space",
    )


def compile(v: Variant, arch: str = "80") -> bytes:
    """Compile one variant to a cubin for ``sm_<arch>``; raise ``NvrtcError`` with NVRTC's log."""
    core, compiler = _cupy()._core.core, _cupy().cuda.compiler
    elementwise = v.label != "raw"
    code = v.code
    if elementwise:  # what core.compile_with_cache prepends for elementwise kernels
        code = "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + code
    try:
        prog = compiler._NVRTCProgram(code, f"{v.source}.cu", method="cubin")
        cubin, _ = prog.compile(_options(arch))
    except compiler.CompileException as e:
        raise NvrtcError(
            f"CUDA kernel {v.source!r} [{v.label}] does not compile for sm_{arch}:\n{e}"
        ) from None
    return cubin
