"""The layer objects: each thin over ``gpunet.layers``, configured only by its constructor and its call.

``forward(x, train)`` keeps what its backward needs (``saved()`` lists those arrays),
``backward(dout)`` returns the input gradient and fills ``grads``; ``params`` (W, b, gamma, beta)
and ``buffers`` (running statistics) are dicts. What a container decides per call (the layout of
the activations, whether the input gradient is wanted, a ReLU applied by the pool after it) is a
keyword argument of ``forward``/``backward``, checked there: a container never sets attributes
on its layers, so a layer behaves the same alone or in any model.
"""

from __future__ import annotations

import numpy as np

from .. import backend, seeding
from ..layers import (
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_relu_backward,
    batchnorm_relu_forward,
    conv2d_backward,
    conv2d_forward,
    dropout_backward,
    dropout_forward,
    linear_backward,
    linear_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    max_pool2d_relu_backward,
    max_pool2d_relu_forward,
    relu_backward,
    relu_forward,
)

LAYOUTS = ("NCHW", "CNHW")


def _layout(value, what):
    if value not in LAYOUTS:
        raise ValueError(f"{what}: layout: expected one of {list(LAYOUTS)}, got {value!r}")
    return value


class Layer:
    """Base class: no parameters, no buffers."""

    def __init__(self):
        self.params, self.grads, self.buffers = {}, {}, {}

    def init(self, rng, dtype):
        """Create the parameters from ``rng`` (``standard_normal``) in ``dtype``."""

    def saved(self) -> list:
        """The arrays the backward reads, kept by the last ``forward`` (none here)."""
        return []

    def config(self) -> dict:
        return {"type": type(self).__name__}

    def to(self, name: str):
        """Move this layer's parameters and buffers to backend ``name`` (a layer used alone); returns self."""
        self.params = {k: backend.to_backend(v, name) for k, v in self.params.items()}
        self.buffers = {k: backend.to_backend(v, name) for k, v in self.buffers.items()}
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Linear(Layer):
    """``x @ W + b``; x: (N, in_features) or (N, ...) flattened; W: (in, out) as in the coursework."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.init(seeding.init_rng(None), np.float32)  # usable alone; Sequential draws them again

    def init(self, rng, dtype):
        self.params = seeding.uniform_init(
            rng, (self.in_features, self.out_features), self.in_features, dtype
        )

    def forward(self, x, train=True):
        self.x = x
        return linear_forward(x, self.params["W"], self.params["b"])

    def saved(self):
        return [self.x]

    def backward(self, dout, need_dx=True):
        """need_dx: False when nothing consumes the input gradient (the first layer of a model)."""
        dx, self.grads["W"], self.grads["b"] = linear_backward(
            dout, self.x, self.params["W"], self.params["b"], need_dx=need_dx
        )
        return dx

    def config(self):
        return {"type": "Linear", "in_features": self.in_features, "out_features": self.out_features}


class ReLU(Layer):
    """``max(x, 0)``; the backward needs only the output. inplace (per call): overwrite x."""

    def forward(self, x, train=True, inplace=False):
        self.out = relu_forward(x, out=x if inplace else None)
        return self.out

    def saved(self):
        return [self.out]

    def backward(self, dout):
        return relu_backward(dout, self.out, out=dout)


class Dropout(Layer):
    """Inverted dropout with drop probability ``p``; ``rng``: the generator of the masks (per call, or
    set on the layer; ``Sequential`` passes its own)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: expected a drop probability in [0, 1), got {p}")
        self.p, self.rng = float(p), None

    def forward(self, x, train=True, rng=None):
        out, self.mask = dropout_forward(x, self.p, train=train, rng=rng if rng is not None else self.rng)
        return out

    def saved(self):
        return [self.mask] if self.mask is not None else []

    def backward(self, dout):
        return dropout_backward(dout, self.mask, self.p, train=True)

    def config(self):
        return {"type": "Dropout", "p": self.p}


class Flatten(Layer):
    """(N, d1, ..., dk) -> (N, d1 * ... * dk), in PyTorch's order (C, H, W) for images.
    layout (per call): ``"CNHW"`` when the convolutions before it hand over (C, N, H, W)."""

    def forward(self, x, train=True, layout="NCHW"):
        self.layout = _layout(layout, "Flatten")
        if layout == "CNHW":
            x = x.transpose(1, 0, 2, 3)
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        dx = dout.reshape(self.shape)
        return dx.transpose(1, 0, 2, 3) if self.layout == "CNHW" else dx


class Conv2d(Layer):
    """2-D convolution; W: (out_channels, in_channels, k, k) as in PyTorch, b: (out_channels,).

    Alone it takes and returns (N, C, H, W). ``in_layout``/``out_layout`` (per call) say what
    arrives and what leaves: a stack of convolutions passes (C, N, H, W), the order the GEMM
    produces, so no layer transposes between them.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.init(seeding.init_rng(None), np.float32)  # usable alone; Sequential draws them again

    def init(self, rng, dtype):
        k = self.kernel_size
        self.params = seeding.uniform_init(
            rng, (self.out_channels, self.in_channels, k, k), self.in_channels * k * k, dtype
        )

    def forward(self, x, train=True, in_layout="NCHW", out_layout="NCHW"):
        self.layouts = (_layout(in_layout, "Conv2d"), _layout(out_layout, "Conv2d"))
        if in_layout == "NCHW":
            x = x.transpose(1, 0, 2, 3)  # a view
        self.x, self.cache = x, ({} if train else None)
        out = conv2d_forward(
            x, self.params["W"], self.params["b"], self.stride, self.padding, cache=self.cache, layout="CNHW"
        )
        return (
            backend.get_array_module(out).ascontiguousarray(out.transpose(1, 0, 2, 3))
            if out_layout == "NCHW"
            else out
        )

    def saved(self):
        return [self.x] + list((self.cache or {}).values())

    def backward(self, dout, need_dx=True):
        """need_dx: False when nothing consumes the input gradient (the first layer of a model)."""
        in_layout, out_layout = self.layouts
        if out_layout == "NCHW":
            dout = dout.transpose(1, 0, 2, 3)
        dx, self.grads["W"], self.grads["b"] = conv2d_backward(
            dout,
            self.x,
            self.params["W"],
            self.params["b"],
            self.stride,
            self.padding,
            cache=self.cache,
            need_dx=need_dx,
            layout="CNHW",
        )
        self.cache = None
        return dx.transpose(1, 0, 2, 3) if dx is not None and in_layout == "NCHW" else dx

    def config(self):
        return {
            "type": "Conv2d",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
        }


class MaxPool2d(Layer):
    """Max over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``).

    relu (per call): apply the ReLU that precedes the pool to the pool's output instead: the named
    fused op ``max_pool2d_relu_forward`` (``relu(max(x)) == max(relu(x))``, 4x fewer values; the
    gradients agree too).
    """

    def __init__(self, size, stride=None):
        super().__init__()
        self.size = int(size)
        self.stride = self.size if stride is None else int(stride)

    def forward(self, x, train=True, relu=False):
        self.x, self.cache, self.relu = x, {}, bool(relu)
        fwd = max_pool2d_relu_forward if relu else max_pool2d_forward
        self.out = fwd(x, self.size, self.stride, cache=self.cache)
        return self.out

    def saved(self):
        return [self.x, self.out] + list(self.cache.values())

    def backward(self, dout):
        if self.relu:
            return max_pool2d_relu_backward(dout, self.x, self.out, self.size, self.stride, cache=self.cache)
        return max_pool2d_backward(dout, self.x, self.size, self.stride, cache=self.cache)

    def config(self):
        return {"type": "MaxPool2d", "size": self.size, "stride": self.stride}


class BatchNorm1d(Layer):
    """Batch norm of (N, D) features: ``gamma``, ``beta`` and running statistics of shape (D,).
    axis (per call): the feature axis, 1; 0 for (C, N, H, W) activations.
    relu (per call): apply the ReLU that follows too, the named fused op ``batchnorm_relu_forward``
    (one cuDNN graph on the GPU)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.9):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.relu = False
        self.init(None, np.float32)

    def init(self, rng, dtype):
        D = self.num_features
        self.params = {"gamma": np.ones(D, dtype=dtype), "beta": np.zeros(D, dtype=dtype)}
        self.buffers = {"running_mean": np.zeros(D, dtype=dtype), "running_var": np.ones(D, dtype=dtype)}

    def forward(self, x, train=True, axis=1, relu=False):
        if axis not in (0, 1):
            raise ValueError(
                f"{type(self).__name__}: axis: expected 1 (N, C, ...) or 0 (C, N, H, W), got {axis!r}"
            )
        self.relu = bool(relu)
        out, self.cache = (batchnorm_relu_forward if self.relu else batchnorm_forward)(
            x,
            self.params["gamma"],
            self.params["beta"],
            self.buffers["running_mean"],
            self.buffers["running_var"],
            train=train,
            momentum=self.momentum,
            eps=self.eps,
            axis=axis,
        )
        return out

    def saved(self):
        kept = list((self.cache or {}).values())
        kept += [v for d in kept if isinstance(d, dict) for v in d.values()]  # the fused op's inner cache
        return [v for v in kept if hasattr(v, "flags")]

    def backward(self, dout):
        bwd = batchnorm_relu_backward if self.relu else batchnorm_backward
        dx, self.grads["gamma"], self.grads["beta"] = bwd(dout, self.cache)
        self.cache = None
        return dx

    def config(self):
        return {
            "type": type(self).__name__,
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
        }


class BatchNorm2d(BatchNorm1d):
    """Batch norm of (N, C, H, W) per channel: ``gamma``, ``beta`` and running statistics of shape (C,)."""


LAYER_TYPES = {
    cls.__name__: cls for cls in (Linear, ReLU, Dropout, Flatten, Conv2d, MaxPool2d, BatchNorm1d, BatchNorm2d)
}


def layer_from_config(cfg: dict) -> Layer:
    """The layer a ``config()`` dict describes; ValueError naming an unknown type or setting."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in LAYER_TYPES:
        raise ValueError(f"layer: unknown type {kind!r}; expected one of {sorted(LAYER_TYPES)}")
    try:
        return LAYER_TYPES[kind](**cfg)
    except TypeError as e:
        raise ValueError(f"layer {kind}: bad settings {cfg} ({e})") from None
