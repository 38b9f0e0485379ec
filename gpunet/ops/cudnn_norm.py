"""Batch norm of (N, C, H, W) channels, alone or fused with the ReLU after it, through cuDNN graphs.

``CudnnNormOps`` is a mixin of ``CupyOps`` beside ``CudnnConvOps``: its ``batchnorm_forward``/
``batchnorm_backward`` and ``batchnorm_relu_forward``/``batchnorm_relu_backward`` run the
frontend's ``batchnorm`` (training), ``batchnorm_inference`` and ``batchnorm_backward`` nodes, with
a pointwise ``relu`` after the forward and ``relu_backward`` before the backward for the fused op,
when ``norm_refusal`` finds nothing against it; otherwise they call ``super()``, the NumPy-form
reference of ``gpunet.ops.batchnorm`` run on CuPy arrays.

It shares the conv path's machinery (``cudnn.CUDNN``): one executor, one ``PlanCache`` keyed here
by ``NormKey``, every key's first result checked against the reference on the same batch (and
disabled, said as a warning, when it differs), nothing built inside a CUDA-graph capture, the
fallback said once per reason, ``GPUNET_CUDNN=0`` for the reference always.

Conventions kept from the reference: the graph normalises with the biased batch variance; the
running statistics are not cuDNN's (which keeps the unbiased variance and the other momentum
convention) but updated here from the batch ``mean`` and ``inv_var`` cuDNN returns,
``running = momentum * running + (1 - momentum) * batch`` with ``var = inv_var**-2 - eps``.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import backend
from .cudnn import CUDNN, MAX_ELEMENTS, dense_layout, nchw

NORM_DTYPES = ("float32",)  # float16 batch norm (float32 scale and statistics) is not wired: reference
PATH = "batchnorm: reference kernels"


class NormKey(NamedTuple):
    """What one built batch-norm plan serves: X's dims and strides in cuDNN's (N, C, H, W) order."""

    op: str  # "bn_train" | "bn_infer" | "bn_bwd"
    relu: bool  # a ReLU after the forward (before the backward: its gradient mask)
    x_dims: tuple
    x_strides: tuple
    eps: float  # a constant of the graph (pass-by-value scalar)
    dtype: str

    reference_name = "the reference"
    log_name = "batchnorm"

    def describe(self):
        return f"{self.op}{'+relu' if self.relu else ''} {self.dtype} (x {self.x_dims})"

    def declare(self, c, g, dt):
        """Declare this key's graph on pygraph ``g``: ``{name: tensor}``, outputs marked."""
        dims, strides = list(self.x_dims), list(self.x_strides)
        C = dims[1]
        f32 = c.data_type.FLOAT

        def tensor(name, d=dims, s=strides, t=dt):
            return g.tensor(name=name, dim=list(d), stride=list(s), data_type=t)

        def channel(name):  # a (C,) vector seen as (1, C, 1, 1)
            return tensor(name, [1, C, 1, 1], [C, 1, 1, 1], f32)

        def output(x, d=dims, s=strides, t=dt):
            x.set_output(True).set_data_type(t).set_dim(list(d)).set_stride(list(s))
            return x

        t = {"X": tensor("X"), "scale": channel("scale")}
        if self.op == "bn_train":
            t["bias"] = channel("bias")
            y, mean, inv_var, _, _ = g.batchnorm(
                input=t["X"], scale=t["scale"], bias=t["bias"], epsilon=g.tensor_scalar(self.eps, f32)
            )
            t["Y"] = output(g.relu(input=y) if self.relu else y)
            t["mean"] = output(mean, [1, C, 1, 1], [C, 1, 1, 1], f32)
            t["inv_var"] = output(inv_var, [1, C, 1, 1], [C, 1, 1, 1], f32)
        elif self.op == "bn_infer":
            t.update(bias=channel("bias"), mean=channel("mean"), inv_var=channel("inv_var"))
            y = g.batchnorm_inference(
                input=t["X"], mean=t["mean"], inv_variance=t["inv_var"], scale=t["scale"], bias=t["bias"]
            )
            t["Y"] = output(g.relu(input=y) if self.relu else y)
        else:
            t.update(dY=tensor("dY"), mean=channel("mean"), inv_var=channel("inv_var"))
            grad = t["dY"]
            if self.relu:  # the fused op's ReLU output: its gradient mask
                t["Y"] = tensor("Y")
                grad = g.relu_backward(loss=grad, input=t["Y"])
            dx, dscale, dbias = g.batchnorm_backward(
                grad=grad, input=t["X"], scale=t["scale"], mean=t["mean"], inv_variance=t["inv_var"]
            )
            t["DX"] = output(dx)
            t["DScale"] = output(dscale, [1, C, 1, 1], [C, 1, 1, 1], f32)
            t["DBias"] = output(dbias, [1, C, 1, 1], [C, 1, 1, 1], f32)
        return t


def _layout(axis):
    return "CNHW" if axis == 0 else "NCHW"


def norm_refusal(X, gamma, beta, axis, dout=None) -> str | None:
    """Why this batch norm cannot run on cuDNN (one phrase), or None when it can."""
    why = CUDNN.unavailable()
    if why:
        return why
    if X.ndim != 4 or axis not in (0, 1):
        return "cuDNN batch norm takes (N, C, H, W) or (C, N, H, W) activations"
    arrays = (X, gamma, beta) + (() if dout is None else (dout,))
    if any(a.dtype.name not in NORM_DTYPES for a in arrays):
        return f"cuDNN batch norm takes float32 throughout, got {'/'.join(a.dtype.name for a in arrays)}"
    for name, a in (("X", X), ("dout", dout)):
        if a is None:
            continue
        if not a.flags.c_contiguous or dense_layout(*nchw(a, _layout(axis))) is None:
            return f"{name} is not contiguous"
        if a.size > MAX_ELEMENTS:
            return f"{name} has more than 2**31 elements"
    if dout is not None and tuple(dout.shape) != tuple(X.shape):
        return "dout is not shaped like X"
    C = X.shape[axis]
    for name, a in (("gamma", gamma), ("beta", beta)):
        if a.ndim != 1 or a.shape[0] != C or not a.flags.c_contiguous:
            return f"{name} is not a contiguous ({C},) vector"
    return None


def norm_key(op, X, axis, eps, relu=False) -> NormKey:
    """The ``NormKey`` of ``op`` on X, whose channel axis is ``axis`` (1: NCHW, 0: CNHW)."""
    dims, strides = nchw(X, _layout(axis))
    return NormKey(op, bool(relu), dims, strides, float(eps), X.dtype.name)


def _channels(X, axis):
    """(axes reduced, the broadcast shape of a (C,) vector)."""
    shape = [1] * 4
    shape[axis] = -1
    return tuple(a for a in range(4) if a != axis), tuple(shape)


class CudnnNormOps:
    """The cuDNN overrides of batch norm and the fused batch norm + ReLU (a mixin before ``NumpyOps``).

    A cuDNN forward's cache holds X itself (not ``X - mean``), the batch ``mean``, ``inv_std`` and,
    for the fused op, the ReLU output; ``"cudnn": True`` sends its backward here, and a backward that
    cannot take cuDNN rebuilds the reference's cache from it.
    """

    def batchnorm_forward(
        self, X, gamma, beta, running_mean, running_var, train=True, momentum=0.9, eps=1e-5, axis=1
    ):
        done = self._bn_forward(X, gamma, beta, running_mean, running_var, train, momentum, eps, axis, False)
        if done is not None:
            return done
        return super().batchnorm_forward(
            X, gamma, beta, running_mean, running_var, train, momentum, eps, axis
        )

    def batchnorm_backward(self, dout, cache):
        if cache.get("cudnn"):
            return self._bn_backward(dout, cache)
        return super().batchnorm_backward(dout, cache)

    def batchnorm_relu_forward(
        self, X, gamma, beta, running_mean, running_var, train=True, momentum=0.9, eps=1e-5, axis=1
    ):
        done = self._bn_forward(X, gamma, beta, running_mean, running_var, train, momentum, eps, axis, True)
        if done is not None:
            return done
        return super().batchnorm_relu_forward(
            X, gamma, beta, running_mean, running_var, train, momentum, eps, axis
        )

    def batchnorm_relu_backward(self, dout, cache):
        if cache.get("cudnn"):
            return self._bn_backward(dout, cache)
        return super().batchnorm_relu_backward(dout, cache)

    # ------------------------------------------------------------------ the cuDNN forms
    def _reference_forward(self, relu):
        return super().batchnorm_relu_forward if relu else super().batchnorm_forward

    def _bn_forward(self, X, gamma, beta, running_mean, running_var, train, momentum, eps, axis, relu):
        """``(out, cache)`` through cuDNN, or None (the caller then runs the reference)."""
        why = norm_refusal(X, gamma, beta, axis)
        if why:
            CUDNN.say_fallback(why, PATH)
            return None
        xp, t = backend.get_array_module(X), X.dtype.type
        axes, bshape = _channels(X, axis)
        C = X.shape[axis]
        out = xp.empty(X.shape, X.dtype)
        ref = []

        def reference():  # on copies of the running statistics: the real ones are updated once, below
            if not ref:
                rm, rv = running_mean.copy(), running_var.copy()
                o, c = self._reference_forward(relu)(X, gamma, beta, rm, rv, train, momentum, eps, axis)
                ref.append((o, c, rm, rv))
            o, c = ref[0][0], ref[0][1]
            if not train:
                return {"Y": o}
            inv_std = (c["bn"] if relu else c)["inv_std"]
            return {"Y": o, "mean": X.mean(axis=axes), "inv_var": inv_std}

        if train:
            mean, inv_var = xp.empty(C, X.dtype), xp.empty(C, X.dtype)
            arrays = {"X": X, "scale": gamma, "bias": beta, "Y": out, "mean": mean, "inv_var": inv_var}
        else:
            mean = running_mean.astype(X.dtype, copy=True)
            inv_var = 1 / xp.sqrt(running_var.astype(X.dtype) + t(eps))
            arrays = {"X": X, "scale": gamma, "bias": beta, "mean": mean, "inv_var": inv_var, "Y": out}
        key = norm_key("bn_train" if train else "bn_infer", X, axis, eps, relu)
        if not CUDNN.attempt(key, arrays, reference):
            if not ref:
                return None
            o, c, rm, rv = ref[0]  # its first-use check failed: the reference's result stands
            running_mean[...], running_var[...] = rm, rv
            return o, c
        if train:  # the reference's update, from the batch statistics cuDNN returns
            var = inv_var**-2 - t(eps)
            running_mean *= t(momentum)
            running_mean += t(1 - momentum) * mean
            running_var *= t(momentum)
            running_var += t(1 - momentum) * var
        cache = {"X": X, "mean": mean, "inv_std": inv_var, "gamma": gamma, "train": train, "axis": axis}
        cache.update(cudnn=True, relu=relu, out=out if relu else None)
        return out, cache

    def _bn_backward(self, dout, cache):
        """``(dX, dgamma, dbeta)`` of a cuDNN forward's cache: through cuDNN in training mode, else by
        the reference on the cache it would have kept."""
        X, gamma, axis, relu = cache["X"], cache["gamma"], cache["axis"], cache["relu"]
        xp = backend.get_array_module(dout)
        axes, bshape = _channels(X, axis)
        ref_cache = lambda: {  # noqa: E731 - the reference's cache, rebuilt
            "xc": X - cache["mean"].reshape(bshape),
            "inv_std": cache["inv_std"],
            "gamma": gamma,
            "train": cache["train"],
            "axis": axis,
        }

        def reference():
            d = dout * (cache["out"] > 0) if relu else dout
            return super(CudnnNormOps, self).batchnorm_backward(d, ref_cache())

        why = norm_refusal(X, gamma, gamma, axis, dout) or (None if cache["train"] else "inference mode")
        if why:
            CUDNN.say_fallback(why, PATH)
            return reference()
        C = X.shape[axis]
        dX, dgamma, dbeta = xp.empty(X.shape, X.dtype), xp.empty(C, X.dtype), xp.empty(C, X.dtype)
        arrays = {"dY": dout, "X": X, "scale": gamma, "mean": cache["mean"], "inv_var": cache["inv_std"]}
        arrays.update(DX=dX, DScale=dgamma, DBias=dbeta)
        if relu:
            arrays["Y"] = cache["out"]
        ref = []

        def check():
            if not ref:
                ref.append(reference())
            return dict(zip(("DX", "DScale", "DBias"), ref[0]))

        if CUDNN.attempt(norm_key("bn_bwd", X, axis, 0.0, relu), arrays, check):
            return dX, dgamma, dbeta
        return ref[0] if ref else reference()
