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
from .cudnn import ALIGNMENT, CUDNN, MAX_ELEMENTS, dense_layout, misaligned, nchw

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
    for name, a in (("X", X), ("gamma", gamma), ("beta", beta), ("dout", dout)):
        if a is not None and misaligned(a):
            return f"{name} is not {ALIGNMENT}-byte aligned (an offset view)"
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
        """``(out, cache)`` through cuDNN, or None (the caller then runs the reference). X is tried as it
        is, then, when cuDNN refused that memory order, as an NHWC-packed copy (``_candidates``)."""
        why = norm_refusal(X, gamma, beta, axis)
        if why:
            CUDNN.say_fallback(why, PATH)
            return None
        xp, t = backend.get_array_module(X), X.dtype.type
        axes, _ = _channels(X, axis)
        C = X.shape[axis]
        ref = []

        def reference():  # on copies of the running statistics: the real ones are updated once, below
            if not ref:
                rm, rv = running_mean.copy(), running_var.copy()
                o, c = self._reference_forward(relu)(X, gamma, beta, rm, rv, train, momentum, eps, axis)
                ref.append((o, c, rm, rv))
            return ref[0][0], (ref[0][1]["bn"] if relu else ref[0][1])["inv_std"]

        if train:
            mean, inv_var = xp.empty(C, X.dtype), xp.empty(C, X.dtype)
        else:
            mean = running_mean.astype(X.dtype, copy=True)
            inv_var = 1 / xp.sqrt(running_var.astype(X.dtype) + t(eps))
        for x, ax, seen in _candidates(X, axis):
            out = _empty_as(x)
            arrays = {"X": x, "scale": gamma, "bias": beta, "Y": out, "mean": mean, "inv_var": inv_var}

            def check(seen=seen):
                o, inv_std = reference()
                return (
                    {"Y": seen(o), "mean": X.mean(axis=axes), "inv_var": inv_std} if train else {"Y": seen(o)}
                )

            key = norm_key("bn_train" if train else "bn_infer", x, ax, eps, relu)
            if CUDNN.attempt(key, arrays, check):
                break
            if ref:  # its first-use check failed: the reference's result stands
                o, c, rm, rv = ref[0]
                running_mean[...], running_var[...] = rm, rv
                return o, c
        else:
            return None
        if train:  # the reference's update, from the batch statistics cuDNN returns
            var = inv_var**-2 - t(eps)
            running_mean *= t(momentum)
            running_mean += t(1 - momentum) * mean
            running_var *= t(momentum)
            running_var += t(1 - momentum) * var
        y = out if x is X else _packed_as(out, axis)
        cache = {"X": X, "mean": mean, "inv_std": inv_var, "gamma": gamma, "train": train, "axis": axis}
        cache.update(cudnn=True, relu=relu, out=y if relu else None, run=(x, ax, out if relu else None))
        return y, cache

    def _bn_backward(self, dout, cache):
        """``(dX, dgamma, dbeta)`` of a cuDNN forward's cache: through cuDNN in training mode (on the
        memory the forward ran on), else by the reference on the cache it would have kept."""
        X, gamma, axis, relu = cache["X"], cache["gamma"], cache["axis"], cache["relu"]
        x, ax, y = cache["run"]  # what the forward's graph read and wrote
        xp = backend.get_array_module(dout)
        _, bshape = _channels(X, axis)
        if cache["train"] and dout.shape == X.shape and not dout.flags.c_contiguous:
            dout = xp.ascontiguousarray(dout)  # e.g. im2col's input gradient: one copy, not the reference

        def reference():
            d = dout * (cache["out"] > 0) if relu else dout
            ref_cache = {"xc": X - cache["mean"].reshape(bshape), "inv_std": cache["inv_std"], "gamma": gamma}
            ref_cache.update(train=cache["train"], axis=axis)
            return super(CudnnNormOps, self).batchnorm_backward(d, ref_cache)

        why = norm_refusal(X, gamma, gamma, axis, dout) or (None if cache["train"] else "inference mode")
        if why:
            CUDNN.say_fallback(why, PATH)
            return reference()
        copied = x is not X
        dy = _nhwc(dout, axis) if copied else dout
        C = X.shape[axis]
        dX, dgamma, dbeta = _empty_as(x), xp.empty(C, X.dtype), xp.empty(C, X.dtype)
        arrays = {"dY": dy, "X": x, "scale": gamma, "mean": cache["mean"], "inv_var": cache["inv_std"]}
        arrays.update(DX=dX, DScale=dgamma, DBias=dbeta)
        if relu:
            arrays["Y"] = y
        ref = []

        def check():
            if not ref:
                ref.append(reference())
            return {
                "DX": _seen(ref[0][0], axis) if copied else ref[0][0],
                "DScale": ref[0][1],
                "DBias": ref[0][2],
            }

        if CUDNN.attempt(norm_key("bn_bwd", x, ax, 0.0, relu), arrays, check):
            return (_packed_as(dX, axis) if copied else dX), dgamma, dbeta
        return ref[0] if ref else reference()


def _seen(a, axis):
    """The caller's (C, N, H, W) or (N, C, H, W) array in (N, C, H, W) axis order (a view)."""
    return a.transpose(1, 0, 2, 3) if axis == 0 else a


def _nhwc(a, axis):
    """An NHWC-packed copy of ``a`` (channel axis ``axis``), seen in (N, C, H, W) axis order."""
    xp = backend.get_array_module(a)
    return xp.ascontiguousarray(_seen(a, axis).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _packed_as(v, axis):
    """A (N, C, H, W)-ordered view ``v`` copied into the caller's packed layout (channel axis ``axis``)."""
    return backend.get_array_module(v).ascontiguousarray(_seen(v, axis))


def _empty_as(x):
    """An uninitialised array with the shape and the memory order of ``x`` (packed NCHW, CNHW or NHWC)."""
    xp = backend.get_array_module(x)
    if x.flags.c_contiguous:
        return xp.empty(x.shape, x.dtype)
    return xp.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]), x.dtype).transpose(0, 3, 1, 2)


def _candidates(X, axis):
    """``(x, axis, seen)`` to run cuDNN on: X as it is; then, if cuDNN took that key off (engines that
    take only channels-last memory), an NHWC-packed copy in (N, C, H, W) axis order. ``seen`` maps the
    reference's output to the candidate's axis order."""
    yield X, axis, (lambda a: a)
    if _refused(X, axis):
        yield _nhwc(X, axis), 1, (lambda a: _seen(a, axis))


def _refused(X, axis):
    """True when cuDNN could not build or run a batch-norm key on X's memory order (a key disabled by
    its first-use check does not count: a copy would not make its engine right)."""
    dims, strides = nchw(X, _layout(axis))
    return any(
        isinstance(k, NormKey)
        and k.x_dims == dims
        and k.x_strides == strides
        and not why.startswith("first-use")
        for k, why in CUDNN.cache.disabled.items()
    )
