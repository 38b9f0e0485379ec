"""Linear (+ReLU) as cuBLASLt matmuls with fused epilogues, through nvmath-python: forward and backward.

Forward: ``h = relu(X2 @ W + b)`` is one ``nvmath.linalg.advanced.Matmul`` planned once per
(shapes, epilogue) with ``MatmulEpilog.RELU_BIAS`` (or ``BIAS``): cuBLASLt adds the bias and
applies the ReLU as the product is written. cuBLASLt's bias is one value per row of a
column-major result, so the plan computes ``h.T = W.T @ X2.T`` (M, N) with the bias as an (M, 1)
column; ``h`` is its transpose. Asked to keep what its backward needs (``saved``, a dict), the
forward runs ``RELU_AUX_BIAS`` instead and keeps cuBLASLt's ReLU bitmask, ``saved["relu_aux"]``:
uint8 (ceil(M/8) rounded up to 16, N), one bit per element of ``h.T``, column-major.

Backward (``drelu_bgrad``), for a layer fed by that ReLU's output ``a`` (N, M): the input gradient
through the ReLU and the bias gradient of the layer that produced ``a``,
``dZ = (dout @ W.T) * (a > 0)`` and ``db = dZ.sum(0)``, are one matmul ``dZ.T = W @ dout.T`` with
``MatmulEpilog.DRELU_BGRAD`` reading the forward's bitmask (nvmath's epilog input ``relu_aux``;
its output ``drelu_bgrad`` is ``db``). The mask is the ReLU's only: after an in-place dropout the
units dropped are not in it, so the model keeps no bitmask then and the plain path runs
(``BGRADA``/``BGRADB``, the bias gradient of a plain weight-gradient product, are not used: the last
layer's bias gradient stays one reduction).

``refusal`` and ``backward_refusal`` (pure, tested in CI) say when the plain path (``gemm.matmul``
then ``bias_``; ``affine_backward`` then ``relu_backward_``: also the oracle) must run: nvmath
missing, not a real GPU, a stream being captured (nvmath's calls allocate their results and are
not known to be capture-safe: the CUDA graph keeps the bound cuBLAS path), float64, a reduced
precision, operands that are not contiguous, no or a misshapen bitmask. The first use of each plan
is checked against the plain path on the same operands (a synchronisation, once per plan); a
mismatch or an error turns the epilogues off for the process, said once.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import backend
from . import gemm

log = logging.getLogger("gpunet")

_nvmath = None  # the module, False when it does not import
_plans: dict = {}
_checked: set = set()
_off = None  # why the epilogue path is off for the process
TOLERANCE = (1e-4, 1e-5)  # first-use check: |fused - plain| <= rtol * max|plain| + atol (summation order)


def nvmath_module():
    """nvmath-python, or None when it does not import (a CPU machine, no cuda extra)."""
    global _nvmath
    if _nvmath is None:
        try:
            import nvmath.linalg.advanced  # noqa: F401  (optional: the cuda extras install it)
            import nvmath

            _nvmath = nvmath
        except Exception:  # ImportError, or a CUDA library that fails to load
            _nvmath = False
    return _nvmath or None


def real_gpu() -> bool:
    return not backend.emulated()


def aux_shape(M, N) -> tuple:
    """cuBLASLt's ReLU bitmask of an (M, N) column-major result, as uint8: (ceil(M/8) rounded up to 16, N)."""
    m = -(-M // 8)
    return (m + (-m) % 16, N)


def _common(have_nvmath, is_real_gpu, capturing, precision, off, arrays) -> str | None:
    if off:
        return off
    if not have_nvmath:
        return "nvmath-python is not installed (pip install 'gpunet[cuda13x]')"
    if not is_real_gpu:
        return "not a real GPU"
    if capturing:
        return "a CUDA graph's step (the bound cuBLAS path is the capturable one)"
    if precision != "fp32":
        return f"precision {precision}: the bound cuBLAS path sets the compute type"
    if not all(a.dtype == np.float32 for a in arrays):
        return f"dtypes {', '.join(str(a.dtype) for a in arrays)}: the epilogue path is float32 only"
    return None


def refusal(have_nvmath, real_gpu, capturing, X2, W, b, precision, off=None) -> str | None:
    """Why ``relu(X2 @ W + b)`` cannot take the fused epilogue; None when it can (no side effects)."""
    why = _common(have_nvmath, real_gpu, capturing, precision, off, (X2, W, b))
    if why:
        return why
    if X2.ndim != 2 or W.ndim != 2 or b.ndim != 1 or X2.shape[1] != W.shape[0] or b.shape[0] != W.shape[1]:
        return "shapes are not (N, D) @ (D, M) + (M,)"
    if not (X2.flags.c_contiguous and W.flags.c_contiguous and b.flags.c_contiguous):
        return "an operand is not C-contiguous"
    if min(X2.shape + W.shape) == 0:
        return "an empty operand"
    return None


def backward_refusal(have_nvmath, real_gpu, capturing, dout, W, aux, precision, off=None) -> str | None:
    """Why ``(dout @ W.T) * mask`` and its column sums cannot be one DRELU_BGRAD matmul reading the
    forward's ReLU bitmask ``aux``; None when they can (no side effects)."""
    if aux is None:
        return "the forward kept no ReLU bitmask (the plain forward ran, or dropout follows the ReLU)"
    why = _common(have_nvmath, real_gpu, capturing, precision, off, (dout, W))
    if why:
        return why
    if dout.ndim != 2 or W.ndim != 2 or dout.shape[1] != W.shape[1]:
        return "shapes are not (N, M) @ (D, M).T"
    if not (dout.flags.c_contiguous and W.flags.c_contiguous):
        return "an operand is not C-contiguous"
    if min(dout.shape + W.shape) == 0:
        return "an empty operand"
    want = aux_shape(W.shape[0], dout.shape[0])
    if aux.dtype != np.uint8 or tuple(aux.shape) != want or not aux.flags.f_contiguous:
        return f"the bitmask is {aux.dtype} {tuple(aux.shape)}, expected a column-major uint8 {want}"
    return None


def _say_off(why):
    global _off
    _off = why
    log.info("fused GEMM epilogues off, Linear runs GEMM then bias/ReLU kernels: %s", why)


def _execute(key, epilog, a, b, inputs, stream):
    """``a @ b`` with ``epilog`` (a ``MatmulEpilog`` name) through a plan kept per ``key``:
    ``(result, aux outputs dict)``."""
    adv = _nvmath.linalg.advanced
    plan = _plans.get(key)
    if plan is None:
        plan = adv.Matmul(a, b, stream=stream)
        plan.plan(epilog=getattr(adv.MatmulEpilog, epilog), epilog_inputs=inputs, stream=stream)
        _plans[key] = plan
    else:
        plan.reset_operands(a=a, b=b, epilog_inputs=inputs, stream=stream)
    got = plan.execute(stream=stream)
    return got if isinstance(got, tuple) else (got, {})


def alignment(a) -> int:
    """The bytes ``a``'s device address is aligned to, at most 256: nvmath's ``Matmul.plan`` hands cuBLASLt
    its operands' alignments as the minimum to expect (``reset_operands`` does not check them again), so a
    plan is only reused for operands aligned at least as well (part of the plan key)."""
    p = int(a.data.ptr)
    return 256 if p % 256 == 0 else p & -p


def _capturing(xp, stream) -> bool:
    return stream.is_capturing() or gemm.bound_here(xp)


def _first_use(xp, key, pairs) -> bool:
    """Check the first result of plan ``key`` against the plain path: [(got, want)]; False (and the
    epilogues off) on a mismatch."""
    if key in _checked:
        return True
    rtol, atol = TOLERANCE
    for got, want in pairs:
        # against the largest value (max-norm), not elementwise: a bias gradient that sums to about 0
        # carries the rounding of its large terms, whichever order cuBLASLt sums them in
        err, scale = float(abs(got - want).max()), float(abs(want).max())
        if not err <= rtol * scale + atol:  # (a NaN fails)
            _say_off(
                f"first use for {key} differs from the plain path by {err:.3g} (largest value {scale:.3g})"
            )
            return False
    _checked.add(key)
    return True


def affine_bias(xp, X2, W, b, relu, out=None, saved=None):
    """``relu(X2 @ W + b)`` (N, M) via the fused epilogue; None when ``refusal`` says no or it failed
    (the caller then runs the plain path). ``saved`` (a dict, with ``relu``): also keep the ReLU bitmask
    there as ``"relu_aux"`` for ``drelu_bgrad``."""
    stream = xp.cuda.get_current_stream()
    why = refusal(nvmath_module(), real_gpu(), _capturing(xp, stream), X2, W, b, gemm.precision(), _off)
    if why is not None:
        return None
    keep = saved is not None and relu
    epilog = "RELU_AUX_BIAS" if keep else ("RELU_BIAS" if relu else "BIAS")
    key = (epilog, tuple(X2.shape), tuple(W.shape), alignment(X2), alignment(W), alignment(b))
    try:
        hT, aux = _execute(key, epilog, W.T, X2.T, {"bias": b.reshape(-1, 1)}, stream)  # (M, N)
    except Exception as e:  # an nvmath version without these calls, a cuBLASLt refusal
        _say_off(f"{type(e).__name__}: {e}")
        return None
    h = _placed(xp, hT.T, out)
    if key not in _checked:
        plain = gemm.matmul(xp, X2, W) + b
        if not _first_use(xp, key, [(h, xp.maximum(plain, 0) if relu else plain)]):
            return None
    if keep:
        saved["relu_aux"] = aux.get("relu_aux")
    return h


def _placed(xp, a, out):
    """``a`` written into ``out`` when given, else ``a`` itself if C-contiguous, else a C-contiguous copy."""
    if out is not None:
        out[...] = a
        return out
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def drelu_bgrad(xp, dout, W, aux, a, out=None):
    """``(dZ, db)``: dZ = (dout @ W.T) * (a > 0) (N, D) and db = dZ.sum(0) (D,) as one DRELU_BGRAD matmul
    reading ``aux``, the ReLU bitmask the forward of ``a`` kept; None when ``backward_refusal`` says no or
    it failed (the caller then runs the plain path). dout: (N, M); W: (D, M); a: (N, D), for the first-use
    check only; out: an optional (N, D) buffer."""
    stream = xp.cuda.get_current_stream()
    why = backward_refusal(
        nvmath_module(), real_gpu(), _capturing(xp, stream), dout, W, aux, gemm.precision(), _off
    )
    if why is not None:
        return None
    key = ("DRELU_BGRAD", tuple(dout.shape), tuple(W.shape), alignment(dout), alignment(W), alignment(aux))
    try:
        dZT, outs = _execute(key, "DRELU_BGRAD", W, dout.T, {"relu_aux": aux}, stream)  # (D, N)
        db = outs["drelu_bgrad"].reshape(-1)
    except Exception as e:  # an nvmath version without these calls, a cuBLASLt refusal
        _say_off(f"{type(e).__name__}: {e}")
        return None
    dZ, db = _placed(xp, dZT.T, out), _placed(xp, db, None)
    if key not in _checked:
        plain = gemm.matmul(xp, dout, W.T) * (a > 0)
        if not _first_use(xp, key, [(dZ, plain), (db, plain.sum(axis=0))]):
            return None
    return dZ, db
