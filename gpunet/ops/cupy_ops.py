"""``CupyOps``: what runs only on a GPU, in one place.

``CupyOps`` overrides a ``NumpyOps`` method only where it has a GPU kernel (cuBLAS products, an
elementwise CUDA kernel, the one-launch update), each CUDA source declared right beside the
override that launches it. Every override checks its kernel's preconditions (one dtype for the
kernel's type ``T``, an in-place output, contiguous raw arguments) and otherwise calls
``super()``, the NumPy form of the same rule on CuPy arrays. On the emulated GPU
(``backend.use("emulated")``) this very class runs, its kernels compiled for the CPU.
"""

from __future__ import annotations

import numpy as np

from .. import backend, cuda_sources, multi_tensor
from . import epilogue, gemm, philox
from .cudnn import CudnnConvOps
from .cudnn_norm import CudnnNormOps
from .numpy_ops import NumpyOps

# ReLU (and dropout) backward from the output a (dropout itself: philox.py, a counter-based stream)
_RELU_BWD = cuda_sources.elementwise(
    "relu_bwd", "T a, T scale", "T d", "d = a > (T)0 ? d * scale : (T)0", module=__name__, scalars=("scale",)
)
# the bias add: h = h + b, and h = relu(h + b) (NaN propagates as in np.maximum)
_BIAS_ADD = cuda_sources.elementwise("bias_add", "T b", "T h", "h = h + b", module=__name__)
_BIAS_RELU = cuda_sources.elementwise(
    "bias_relu", "T b", "T h", "T t = h + b; h = t < (T)0 ? (T)0 : t", module=__name__
)
# softmax cross-entropy: one thread per row of (N, C) logits writes the row loss and the gradient row
# (softmax - onehot) / N. A label outside [0, C) gives a NaN row loss (and a NaN gradient row)
# instead of reading another row.
_SOFTMAX_XENT = cuda_sources.elementwise(
    "softmax_xent",
    "raw T x, raw S y, int64 C, T inv_n",
    "T row_loss, raw T dx",
    """
    const ptrdiff_t o = i * C;
    const ptrdiff_t t = (ptrdiff_t)y[i];
    if (t < 0 || t >= C) {
        row_loss = (T)CUDART_NAN;
        for (ptrdiff_t j = 0; j < C; ++j) dx[o + j] = (T)CUDART_NAN;
    } else {
        T m = x[o];
        for (ptrdiff_t j = 1; j < C; ++j) m = x[o + j] > m ? x[o + j] : m;
        T s = 0;
        for (ptrdiff_t j = 0; j < C; ++j) s += exp(x[o + j] - m);
        row_loss = log(s) - (x[o + t] - m);
        for (ptrdiff_t j = 0; j < C; ++j)
            dx[o + j] = (exp(x[o + j] - m) / s - (j == t ? (T)1 : (T)0)) * inv_n;
    }
    """,
    module=__name__,
    scalars=("C", "inv_n"),
)
# the update rules, one elementwise launch per parameter (the one-launch update is generated from them)
SGD = cuda_sources.elementwise("sgd", "T dw, T lr", "T w", "w -= lr * dw", module=__name__, scalars=("lr",))
MOMENTUM = cuda_sources.elementwise(
    "momentum",
    "T dw, T mu, T lr",
    "T w, T v",
    "v = mu * v - lr * dw; w += v",
    module=__name__,
    scalars=("mu", "lr"),
)
NESTEROV = cuda_sources.elementwise(
    "nesterov",
    "T dw, T mu, T lr",
    "T w, T v",
    "v = mu * v - lr * dw; w += mu * v - lr * dw",
    module=__name__,
    scalars=("mu", "lr"),
)
RMSPROP = cuda_sources.elementwise(
    "rmsprop",
    "T dw, T r, T lr, T eps",
    "T w, T c",
    "c = r * c + ((T)1 - r) * dw * dw; w -= lr * dw / (sqrt(c) + eps)",
    module=__name__,
    scalars=("r", "lr", "eps"),
)
ADAM = cuda_sources.elementwise(
    "adam",
    "T dw, T b1, T b2, T lr_t, T inv_sqrt_bc2, T eps",
    "T w, T m, T v",
    "m = b1 * m + ((T)1 - b1) * dw; v = b2 * v + ((T)1 - b2) * dw * dw; "
    "w -= lr_t * m / (sqrt(v) * inv_sqrt_bc2 + eps)",
    module=__name__,
    scalars=("b1", "b2", "lr_t", "inv_sqrt_bc2", "eps"),
)


def _one_type(*arrays) -> bool:
    """The kernel's single type ``T`` fits: every array of one floating dtype."""
    return len({a.dtype for a in arrays}) == 1 and arrays[0].dtype.kind == "f"


class CupyOps(CudnnConvOps, CudnnNormOps, NumpyOps):
    """The primitives on CuPy (see the module docstring); convolutions through cuDNN (``cudnn.py``),
    batch norm and batch norm + ReLU through cuDNN (``cudnn_norm.py``)."""

    name = "cupy"
    on_device = True

    @property
    def xp(self):
        return backend.cupy_module()

    # ------------------------------------------------------------------ affine (cuBLAS)
    def affine(self, X2, W, out=None):
        """``gemm.matmul``: CuPy's product, or one direct cuBLAS call while a CUDA graph's stream is bound
        (capturable) or a reduced precision is set."""
        return gemm.matmul(self.xp, X2, W, out)

    def affine_backward(self, X2, dout, W, o_dx=None, o_dw=None):
        return gemm.matmul(self.xp, dout, W.T, o_dx), gemm.matmul(self.xp, X2.T, dout, o_dw)

    def affine_bias(self, X2, W, b, relu, out=None, saved=None):
        """``relu(X2 @ W + b)``: one cuBLASLt call with a fused epilogue where ``epilogue.refusal`` allows
        (``saved`` given: RELU_AUX_BIAS, keeping the ReLU bitmask there), else the product then ``bias_``
        (the plain path, and the epilogue's oracle)."""
        h = epilogue.affine_bias(self.xp, X2, W, b, relu, out, saved)
        return h if h is not None else self.bias_(self.affine(X2, W, out), b, relu)

    def affine_relu_backward(self, X2, dout, W, scale=1.0, saved=None, o_dx=None, o_dw=None):
        """(dZ, db_prev) as one cuBLASLt DRELU_BGRAD call reading the bitmask the forward kept in ``saved``
        where ``epilogue.backward_refusal`` allows (no dropout: ``scale`` 1), then the weight product;
        else the plain path (the oracle)."""
        aux = saved.get("relu_aux") if saved and scale == 1.0 else None
        got = epilogue.drelu_bgrad(self.xp, dout, W, aux, X2, o_dx)
        if got is None:
            return super().affine_relu_backward(X2, dout, W, scale, saved, o_dx, o_dw)
        dZ, db = got
        return dZ, gemm.matmul(self.xp, X2.T, dout, o_dw), db

    def bias_(self, h, b, relu):
        if not _one_type(h, b):
            return super().bias_(h, b, relu)
        (_BIAS_RELU if relu else _BIAS_ADD)(b, h)
        return h

    # ------------------------------------------------------------------ activations
    def relu_backward_(self, d, a, scale=1.0):
        if not _one_type(d, a):
            return super().relu_backward_(d, a, scale)
        _RELU_BWD(a, d.dtype.type(scale), d)
        return d

    def dropout_(self, h, p, rng, keep_mask):
        """Philox counter-based masks (``philox.py``): the key and offset live on the device, so a
        CUDA graph replay draws a new mask. ``rng`` keys the stream when it changes (``philox.follow``)."""
        if (
            h.dtype.name not in philox.DROPOUT
            or not h.flags.c_contiguous
            or isinstance(rng, np.random.Generator)
        ):
            return super().dropout_(h, p, rng, keep_mask)
        philox.stream(self.xp).follow(rng).dropout_(h, p)
        return h

    # ------------------------------------------------------------------ loss
    def softmax_xent(self, logits, y):
        """The kernel reads its raw arguments as flat rows: logits and y are made contiguous (copies only
        for views). A bad label gives NaN instead of a ValueError: checking would stall the queue."""
        if logits.dtype.kind != "f" or y.dtype.kind not in "iu":
            return super().softmax_xent(logits, y)
        xp = self.xp
        N, C = logits.shape
        x = xp.ascontiguousarray(logits).reshape(-1)
        dx = xp.empty(N * C, dtype=logits.dtype)
        row = xp.empty(N, dtype=logits.dtype)
        _SOFTMAX_XENT(x, xp.ascontiguousarray(y), C, logits.dtype.type(1.0 / N), row, dx)
        return row.mean(), dx.reshape(N, C)

    # ------------------------------------------------------------------ update rules (elementwise kernels)
    def sgd_(self, w, dw, lr):
        if not _one_type(w, dw):
            return super().sgd_(w, dw, lr)
        SGD(dw, w.dtype.type(lr), w)
        return w

    def momentum_(self, w, dw, v, mu, lr, nesterov=False):
        if not _one_type(w, dw, v):
            return super().momentum_(w, dw, v, mu, lr, nesterov)
        t = w.dtype.type
        (NESTEROV if nesterov else MOMENTUM)(dw, t(mu), t(lr), w, v)
        return w

    def rmsprop_(self, w, dw, c, decay, lr, eps):
        if not _one_type(w, dw, c):
            return super().rmsprop_(w, dw, c, decay, lr, eps)
        t = w.dtype.type
        RMSPROP(dw, t(decay), t(lr), t(eps), w, c)
        return w

    def adam_(self, w, dw, m, v, b1, b2, lr_t, inv_sqrt_bc2, eps):
        if not _one_type(w, dw, m, v):
            return super().adam_(w, dw, m, v, b1, b2, lr_t, inv_sqrt_bc2, eps)
        t = w.dtype.type
        ADAM(dw, t(b1), t(b2), t(lr_t), t(inv_sqrt_bc2), t(eps), w, m, v)
        return w

    def one_launch_refusal(self, arrays_per_param) -> str | None:
        """``multi_tensor.refusal``: the outputs contiguous, of one float dtype, sharing no memory."""
        return multi_tensor.refusal(arrays_per_param)
