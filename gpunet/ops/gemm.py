"""Matrix products on the GPU that a CUDA graph can capture, and the GEMM precision (fp32, tf32, bf16).

Why not ``cupy.matmul`` inside a capture: every cuBLAS wrapper of CuPy 14 first calls
``cublas.setStream(handle, current stream)``, and ``setStream`` raises ``NotImplementedError``
while that stream is being captured. cuBLAS itself can be captured. So ``bound(stream)``, outside
any capture, binds CuPy's own cuBLAS handle of the device to ``stream`` (through CuPy, which is
allowed then) and gives it a workspace of ours (``cublasSetWorkspace``: no allocation inside
cuBLAS during a capture; set after ``setStream``, which resets it), and ``matmul`` then calls
``cublasGemmEx`` through ctypes on that same handle, in the very libcublas CuPy loaded, without
any ``setStream``. Outside ``bound`` (and for what it refuses) ``matmul`` is ``xp.matmul``.

Precision (``use_precision``; the CLIs' ``--precision``) sets the compute type of float32 products:

- ``fp32``: ``CUBLAS_COMPUTE_32F`` (the default; CuPy's own call outside a capture);
- ``tf32``: ``CUBLAS_COMPUTE_32F_FAST_TF32``: inputs rounded to TF32 on the tensor cores;
- ``bf16``: ``CUBLAS_COMPUTE_32F_FAST_16BF``: inputs rounded to bfloat16, products summed in float32;
  weights, gradients, optimizer state, activations and the loss stay float32 (master copies).
  This is not PyTorch autocast (which also stores activations in bf16): the tensor cores do the
  products in bf16, memory traffic stays float32.

float64 products ignore the precision. On the emulated GPU (CI) the same calls run on NumPy:
the inputs are rounded to the compute type (round to nearest even, as ``round_to`` says), then
multiplied in float32, which is what the tensor cores compute up to summation order.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os

import numpy as np

from .. import backend

log = logging.getLogger("gpunet")

PRECISIONS = ("fp32", "tf32", "bf16")
COMPUTE = {"fp32": 68, "tf32": 77, "bf16": 75}  # cublasComputeType_t: 32F, 32F_FAST_TF32, 32F_FAST_16BF
COMPUTE_64F = 70
DATA = {"float32": 0, "float64": 1}  # cudaDataType: CUDA_R_32F, CUDA_R_64F
OP_N, OP_T = 0, 1
GEMM_DEFAULT = -1
WORKSPACE = 32 << 20  # bytes handed to cuBLAS while bound (NVIDIA's advice for Hopper: 32 MiB)

ENV = "GPUNET_PRECISION"  # the precision a process starts with (spawned tuning workers inherit it)
_precision = os.environ.get(ENV, "fp32") if os.environ.get(ENV) in PRECISIONS else "fp32"
_bound = None  # (handle, stream pointer, workspace) while a stream is bound
_said = set()


def use_precision(name: str):
    """Set the compute type of float32 products (``PRECISIONS``) for the process."""
    global _precision
    if name not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {name!r}")
    _precision = name


def precision() -> str:
    return _precision


@contextlib.contextmanager
def using_precision(name: str):
    before = _precision
    use_precision(name)
    try:
        yield
    finally:
        use_precision(before)


def precision_refusal(name: str, backend_name: str) -> str | None:
    """Why ``name`` cannot run on backend ``backend_name`` (``numpy``/``cupy``/``emulated``), or None.

    NumPy has no TF32 or bfloat16 product: a reduced precision needs the GPU, or the emulated GPU,
    which rounds the inputs as the tensor cores do (slowly: for tests, not for speed)."""
    if name not in PRECISIONS:
        return f"expected one of {list(PRECISIONS)}, got {name!r}"
    if name != "fp32" and backend_name == "numpy":
        return (
            f"{name} products need the GPU (--backend cupy), or the emulated GPU (--backend emulated) "
            "to check them; NumPy has no reduced-precision product"
        )
    return None


def round_to(a, name: str):
    """float32 ``a`` rounded to the inputs of a ``name`` product (a copy; round to nearest even):
    bf16 keeps 8 bits of mantissa, tf32 10. fp32, and other dtypes, come back as they are."""
    if name == "fp32" or a.dtype != np.float32:
        return a
    drop = 16 if name == "bf16" else 13
    u = np.ascontiguousarray(a).view(np.uint32).astype(np.uint64)
    half, low = np.uint64((1 << (drop - 1)) - 1), np.uint64(drop)
    r = (u + half + ((u >> low) & np.uint64(1))) & np.uint64((0xFFFFFFFF >> drop) << drop)
    r = r.astype(np.uint32).view(np.float32).reshape(a.shape)
    nan = np.isnan(a)
    return np.where(nan, a, r) if nan.any() else r


# ------------------------------------------------------------------ cuBLAS through ctypes


_lib = None
_workspaces: dict = {}  # device id -> the workspace handed to cuBLAS (kept: captured graphs point into it)


def _libcublas():
    """The libcublas CuPy loaded (the same library, so CuPy's handle is valid in it), or None."""
    global _lib
    if _lib is None:
        _lib = False
        try:
            backend.cupy_module().cuda.device.get_cublas_handle()  # creates the handle: libcublas is loaded
            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "/libcublas.so" in line}
            path = pick_libcublas(paths, backend.cupy_module().cuda.runtime.runtimeGetVersion() // 1000)
            if path:
                lib = ctypes.CDLL(path)
                vp, i = ctypes.c_void_p, ctypes.c_int
                lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
                ll = ctypes.c_longlong
                abc = [vp, i, i, ll]  # pointer, type, leading dimension, stride of an operand
                lib.cublasGemmStridedBatchedEx.argtypes = [
                    vp,
                    i,
                    i,
                    i,
                    i,
                    i,
                    vp,
                    *abc,
                    *abc,
                    vp,
                    *abc,
                    i,
                    i,
                    i,
                ]
                lib.cublasGemmStridedBatchedEx.restype = ctypes.c_int
                lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
                lib.cublasSetStream_v2.argtypes = [vp, vp]
                lib.cublasSetPointerMode_v2.argtypes = [vp, i]
                for f in (lib.cublasGemmEx, lib.cublasSetWorkspace_v2, lib.cublasSetStream_v2):
                    f.restype = ctypes.c_int
                lib.cublasSetPointerMode_v2.restype = ctypes.c_int
                _lib = lib
        except Exception:  # noqa: BLE001 - no library (OSError), no symbol, or CuPy's handle failing
            # (CUBLASError / CUDARuntimeError, both RuntimeError: a driver mismatch): the xp.matmul path
            _lib = False
    return _lib or None


def pick_libcublas(paths, cuda_major: int) -> str | None:
    """The libcublas among the mapped ``paths`` whose handle CuPy made: the only one, or else the one of
    CuPy's CUDA major version (another library's, e.g. PyTorch's libcublas.so.12 next to CuPy's .so.13,
    would be handed a handle it never made); None when that is not one file."""
    paths = sorted(set(paths))
    if len(paths) > 1:
        paths = [p for p in paths if os.path.basename(p).startswith(f"libcublas.so.{cuda_major}")]
    return paths[0] if len(paths) == 1 else None


def _check(status, what):
    if status:
        raise RuntimeError(f"{what} failed (cuBLAS status {status})")


def _bind(handle, stream_ptr):
    """Point CuPy's handle at ``stream_ptr`` (host pointer mode): CuPy's own wrappers do this on each
    call, refusing during a capture; ours runs before the call, outside any capture."""
    lib = _libcublas()
    _check(lib.cublasSetStream_v2(handle, stream_ptr), "cublasSetStream_v2")
    _check(lib.cublasSetPointerMode_v2(handle, 0), "cublasSetPointerMode_v2")


def capture_refusal() -> str | None:
    """Why products cannot be captured here, or None (the emulated GPU always can)."""
    if backend.emulated():
        return None
    cp = backend.cupy_module()
    if cp is None:
        return "no GPU"
    if _libcublas() is None:
        return "libcublas is not loaded in this process (CuPy's cuBLAS wrapper did not load it)"
    return None


@contextlib.contextmanager
def bound(stream):
    """Bind the device's cuBLAS handle to ``stream`` (CuPy stream; call outside any capture): ``matmul``
    calls cuBLAS directly while the current stream is ``stream``."""
    global _bound
    before = _bound
    if backend.emulated():
        _bound = ("emulated", stream.ptr, None)
    else:
        try:
            cp = backend.cupy_module()
            handle = cp.cuda.device.get_cublas_handle()
            _bind(handle, stream.ptr)
            dev = cp.cuda.get_device_id()
            ws = _workspaces.get(dev)
            if ws is None:
                ws = _workspaces[dev] = cp.empty(WORKSPACE, np.uint8)
            # after setStream, which resets it: cuBLAS then allocates nothing while a graph is captured
            _check(
                _libcublas().cublasSetWorkspace_v2(handle, ws.data.ptr, WORKSPACE), "cublasSetWorkspace_v2"
            )
            _bound = (handle, stream.ptr, ws)
        except Exception as e:  # noqa: BLE001 - not bound: products through xp.matmul (a capture refuses them)
            _say_once(f"cuBLAS not bound to the stream ({type(e).__name__}: {e}): products through xp.matmul")
    try:
        yield
    finally:
        _bound = before


def bound_here(xp) -> bool:
    """True while the current stream is the bound one (a CUDA graph's step: warm-up, capture, check)."""
    return _bound is not None and xp.cuda.get_current_stream().ptr == _bound[1]


def _operand(a):
    """(op, ld) of row-major 2-d ``a`` read by column-major cuBLAS as ``a``'s transpose; None if ``a`` is
    neither C- nor F-contiguous."""
    if a.flags.c_contiguous:
        return OP_N, max(1, a.shape[1])
    if a.flags.f_contiguous:
        return OP_T, max(1, a.shape[0])
    return None


def direct_refusal(A, B, out) -> str | None:
    """Why ``matmul(A, B, out)`` cannot be one direct cuBLAS call (the pure precondition check)."""
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        return f"shapes {tuple(A.shape)} @ {tuple(B.shape)} are not a 2-d product"
    if A.dtype != B.dtype or A.dtype.name not in DATA:
        return f"dtypes {A.dtype}, {B.dtype}: expected one of float32, float64 for both"
    if _operand(A) is None or _operand(B) is None:
        return "an operand is neither C- nor F-contiguous"
    if out is not None and (
        tuple(out.shape) != (A.shape[0], B.shape[1]) or out.dtype != A.dtype or not out.flags.c_contiguous
    ):
        return "out is not a C-contiguous array of the product's shape and dtype"
    return None


def _say_once(why):
    if why not in _said:
        _said.add(why)
        log.info("%s", why)


def matmul(xp, A, B, out=None):
    """``A @ B`` (2-d device arrays) on the bound stream as one cuBLAS call with the process's
    precision; otherwise ``xp.matmul`` (fp32), or the direct call on the current stream where a
    reduced precision asks for it."""
    on_bound = bound_here(xp)
    if not on_bound and (_precision == "fp32" or A.dtype != np.float32):
        return xp.matmul(A, B, out=out)
    why = direct_refusal(A, B, out)
    if why is not None:
        _say_once(f"matrix product through xp.matmul (fp32, not capturable): {why}")
        return xp.matmul(A, B, out=out)
    if out is None:
        out = xp.empty((A.shape[0], B.shape[1]), A.dtype)
    if backend.emulated():
        p = _precision if A.dtype == np.float32 else "fp32"
        np.matmul(round_to(A.view(np.ndarray), p), round_to(B.view(np.ndarray), p), out=out.view(np.ndarray))
        return out
    if on_bound:
        handle = _bound[0]
    else:  # a reduced precision outside a graph's step: the current stream (not a capturing one)
        if _libcublas() is None:
            _say_once("matrix product in fp32: libcublas is not loaded in this process")
            return xp.matmul(A, B, out=out)
        handle = xp.cuda.device.get_cublas_handle()
        _bind(handle, xp.cuda.get_current_stream().ptr)
    return _gemm(handle, A, B, out)


def _gemm(handle, A, B, out):
    """C = A @ B row-major, as column-major C^T = B^T A^T: cublasGemmEx(B, A) with m = n(C), n = m(C)."""
    m, k = A.shape
    n = B.shape[1]
    if m == 0 or n == 0:
        return out
    (opb, ldb), (opa, lda) = _operand(B), _operand(A)
    dt = DATA[A.dtype.name]
    if A.dtype == np.float64:
        one, zero, compute = ctypes.c_double(1.0), ctypes.c_double(0.0), COMPUTE_64F
    else:
        one, zero, compute = ctypes.c_float(1.0), ctypes.c_float(0.0), COMPUTE[_precision]
    if k == 0:
        out.fill(0)
        return out
    st = _libcublas().cublasGemmEx(
        handle,
        opb,
        opa,
        n,
        m,
        k,
        ctypes.addressof(one),
        B.data.ptr,
        dt,
        ldb,
        A.data.ptr,
        dt,
        lda,
        ctypes.addressof(zero),
        out.data.ptr,
        dt,
        max(1, n),
        compute,
        GEMM_DEFAULT,
    )
    _check(st, f"cublasGemmEx of {tuple(A.shape)} @ {tuple(B.shape)} {A.dtype}")
    return out


def rowdot(xp, a, b):
    """Per-row dot products of 2-d ``a``, ``b`` (R, J) -> (R,), always at full precision:
    ``einsum("ij,ij->i")`` (on CuPy a batched cuBLAS product); on the bound stream one direct
    strided-batched GEMM call, R products (1, J) @ (J, 1), capturable (where ``direct_refusal``'s
    conditions fail, the elementwise ``(a * b).sum(1)``). The emulated GPU computes the direct call
    as ``np.einsum``."""
    if not bound_here(xp):
        return xp.einsum("ij,ij->i", a, b)
    if (
        a.shape != b.shape
        or direct_refusal(a, b.T, None) is not None
        or not (a.flags.c_contiguous and b.flags.c_contiguous)
    ):
        return (a * b).sum(axis=1)
    out = xp.empty(a.shape[0], a.dtype)
    if backend.emulated():
        np.einsum("ij,ij->i", a.view(np.ndarray), b.view(np.ndarray), out=out.view(np.ndarray))
        return out
    return _rowdot(_bound[0], a, b, out)


def _rowdot(handle, a, b, out):
    """out[r] = a[r] . b[r] (C-contiguous (R, J)) as one cublasGemmStridedBatchedEx: R column-major
    products A_r (1, J) (lda 1) @ B_r (J, 1) (ldb J), both at row r (stride J), into C_r (1, 1)."""
    R, J = a.shape
    if R == 0:
        return out
    if J == 0:
        out.fill(0)
        return out
    if a.dtype == np.float64:
        one, zero, compute = ctypes.c_double(1.0), ctypes.c_double(0.0), COMPUTE_64F
    else:
        one, zero, compute = ctypes.c_float(1.0), ctypes.c_float(0.0), COMPUTE["fp32"]
    dt = DATA[a.dtype.name]
    st = _libcublas().cublasGemmStridedBatchedEx(
        handle,
        OP_N,
        OP_N,
        1,
        1,
        J,
        ctypes.addressof(one),
        a.data.ptr,
        dt,
        1,
        J,
        b.data.ptr,
        dt,
        J,
        J,
        ctypes.addressof(zero),
        out.data.ptr,
        dt,
        1,
        1,
        R,
        compute,
        GEMM_DEFAULT,
    )
    _check(st, f"cublasGemmStridedBatchedEx (row dots of {tuple(a.shape)} {a.dtype})")
    return out
