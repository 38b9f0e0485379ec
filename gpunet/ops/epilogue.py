"""Linear (+ReLU) forward as one cuBLASLt matmul with a fused bias (+ReLU) epilogue, through nvmath-python.

``h = relu(X2 @ W + b)`` is one ``nvmath.linalg.advanced.Matmul`` planned once per (shapes, dtype,
epilogue) with ``MatmulEpilog.RELU_BIAS`` (or ``BIAS``): cuBLASLt adds the bias and applies the
ReLU as the product is written, instead of a GEMM then a bias/ReLU kernel. cuBLASLt's bias is one
value per row of a column-major result, so the plan computes ``h.T = W.T @ X2.T`` with the bias as
an (M, 1) column; ``h`` is its transpose.

``refusal`` (pure, tested in CI) says when the plain path (``gemm.matmul`` then ``bias_``, which is
also the oracle) must run instead: nvmath missing, not a real GPU, a stream being captured (nvmath's
calls are not known to be capture-safe: the CUDA graph keeps the bound cuBLAS path), float64,
a reduced precision, operands that are not contiguous. The first use of each plan is checked
against the plain path on the same operands; a mismatch or an error turns the epilogue off for the
process, said once. The backward epilogues (DRELU_BGRAD) need the model's backward to hand the
ReLU mask to the product: not done; the backward stays the plain path.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import backend
from . import gemm

log = logging.getLogger("gpunet")

_nvmath = None  # the module, False when it does not import
_plans: dict = {}
_off = None  # why the epilogue path is off for the process
TOLERANCE = (1e-4, 1e-5)  # rtol, atol of the first-use check (cuBLASLt may pick another algorithm)


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


def refusal(have_nvmath, real_gpu, capturing, X2, W, b, precision, off=None) -> str | None:
    """Why ``relu(X2 @ W + b)`` cannot take the fused epilogue; None when it can (no side effects)."""
    if off:
        return off
    if not have_nvmath:
        return "nvmath-python is not installed (pip install 'gpunet[cuda13x]')"
    if not real_gpu:
        return "not a real GPU"
    if capturing:
        return "a CUDA graph's step (the bound cuBLAS path is the capturable one)"
    if precision != "fp32":
        return f"precision {precision}: the bound cuBLAS path sets the compute type"
    if not (X2.dtype == W.dtype == b.dtype == np.float32):
        return f"dtypes {X2.dtype}, {W.dtype}, {b.dtype}: the epilogue path is float32 only"
    if X2.ndim != 2 or W.ndim != 2 or b.ndim != 1 or X2.shape[1] != W.shape[0] or b.shape[0] != W.shape[1]:
        return "shapes are not (N, D) @ (D, M) + (M,)"
    if not (X2.flags.c_contiguous and W.flags.c_contiguous and b.flags.c_contiguous):
        return "an operand is not C-contiguous"
    if min(X2.shape + W.shape) == 0:
        return "an empty operand"
    return None


def _say_off(why):
    global _off
    _off = why
    log.info("fused GEMM epilogue off, Linear runs GEMM then bias/ReLU: %s", why)


def _plan(X2, W, b, relu, stream):
    key = (tuple(X2.shape), tuple(W.shape), relu)
    plan = _plans.get(key)
    if plan is None:
        adv = _nvmath.linalg.advanced
        epi = adv.MatmulEpilog.RELU_BIAS if relu else adv.MatmulEpilog.BIAS
        plan = adv.Matmul(W.T, X2.T, stream=stream)
        plan.plan(epilog=epi, epilog_inputs={"bias": b.reshape(-1, 1)}, stream=stream)
        _plans[key] = plan
    else:
        plan.reset_operands(a=W.T, b=X2.T, epilog_inputs={"bias": b.reshape(-1, 1)}, stream=stream)
    return plan, key


_checked = set()


def affine_bias(xp, X2, W, b, relu, out=None):
    """``relu(X2 @ W + b)`` (N, M) via the fused epilogue; None when ``refusal`` says no or it failed
    (the caller then runs the plain path)."""
    stream = xp.cuda.get_current_stream()
    why = refusal(
        nvmath_module(),
        not backend.emulated(),
        stream.is_capturing() or gemm.bound_here(xp),
        X2,
        W,
        b,
        gemm.precision(),
        _off,
    )
    if why is not None:
        return None
    try:
        plan, key = _plan(X2, W, b, relu, stream)
        hT = plan.execute(stream=stream)  # (M, N)
    except Exception as e:  # an nvmath version without these calls, a cuBLASLt refusal
        _say_off(f"{type(e).__name__}: {e}")
        return None
    h = hT.T
    if out is not None:
        out[...] = h
        h = out
    elif not h.flags.c_contiguous:
        h = xp.ascontiguousarray(h)
    if key not in _checked:  # first use of this plan: against the plain path (a synchronisation, once)
        plain = gemm.matmul(xp, X2, W) + b
        if relu:
            plain = xp.maximum(plain, 0)
        rtol, atol = TOLERANCE
        if not bool(xp.allclose(h, plain, rtol=rtol, atol=atol)):
            _say_off(f"first use for {key} differs from the plain path by {float(abs(h - plain).max()):.3g}")
            return None
        _checked.add(key)
    return h
