"""Layer objects and ``Sequential``: any model built from a list of layers.

Each layer is thin over ``gpunet.layers``: ``forward(x, train)`` keeps what its backward needs,
``backward(dout)`` returns the input gradient and fills ``grads``; ``params`` (W, b, gamma,
beta) and ``buffers`` (running statistics) are dicts. ``Sequential`` names them
``"<index>.<name>"`` like PyTorch's ``"0.weight"`` and follows the model contract of the
Solver, evaluation and tuning: ``loss(X, y=None)``, ``params``, ``predict``, ``save``,
``config``, ``to(backend)``.
"""
from __future__ import annotations

import numpy as np

from . import backend, seeding
from .layers import (batchnorm_backward, batchnorm_forward, conv2d_backward, conv2d_forward, dropout_backward,
                     dropout_forward, linear_backward, linear_forward, max_pool2d_backward, max_pool2d_forward,
                     relu_backward, relu_forward, softmax_loss)
from .modelfile import save_model


class Layer:
    """Base class: no parameters, no buffers."""
    first = False            # set by Sequential on the first layer: its input gradient is not needed

    def __init__(self):
        self.params, self.grads, self.buffers = {}, {}, {}

    def init(self, rng, dtype):
        """Create the parameters from ``rng`` (``standard_normal``) in ``dtype``."""

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
        self.init(seeding.init_rng(None), np.float32)      # usable alone; Sequential draws them again

    def init(self, rng, dtype):
        self.params = seeding.uniform_init(rng, (self.in_features, self.out_features), self.in_features, dtype)

    def forward(self, x, train=True):
        self.x = x
        return linear_forward(x, self.params["W"], self.params["b"])

    def backward(self, dout):
        dx, self.grads["W"], self.grads["b"] = linear_backward(dout, self.x, self.params["W"], self.params["b"],
                                                               need_dx=not self.first)
        return dx

    def config(self):
        return {"type": "Linear", "in_features": self.in_features, "out_features": self.out_features}


class ReLU(Layer):
    """``max(x, 0)``, in place unless its input is the model's own input (the backward needs only the output).

    Right before a ``MaxPool2d`` it is applied by the pool to its 4x smaller output instead:
    ``relu(max(x)) == max(relu(x))``, and the gradients agree too (Sequential arranges it).
    """
    inplace = True
    deferred = False

    def forward(self, x, train=True):
        if self.deferred:
            return x
        self.out = relu_forward(x, out=x if self.inplace else None)
        return self.out

    def backward(self, dout):
        return dout if self.deferred else relu_backward(dout, self.out, out=dout)


class Dropout(Layer):
    """Inverted dropout with drop probability ``p``; the generator is the model's ``rng``."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: expected a drop probability in [0, 1), got {p}")
        self.p, self.rng = float(p), None

    def forward(self, x, train=True):
        out, self.mask = dropout_forward(x, self.p, train=train, rng=self.rng)
        return out

    def backward(self, dout):
        return dropout_backward(dout, self.mask, self.p, train=True)

    def config(self):
        return {"type": "Dropout", "p": self.p}


class Flatten(Layer):
    """(N, d1, ..., dk) -> (N, d1 * ... * dk), in PyTorch's order (C, H, W) for images."""
    from_cnhw = False        # set by Sequential when the convolutions before it hand over (C, N, H, W)

    def forward(self, x, train=True):
        if self.from_cnhw:
            x = x.transpose(1, 0, 2, 3)
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        dx = dout.reshape(self.shape)
        return dx.transpose(1, 0, 2, 3) if self.from_cnhw else dx


class Conv2d(Layer):
    """2-D convolution; W: (out_channels, in_channels, k, k) as in PyTorch, b: (out_channels,).

    Alone it takes and returns (N, C, H, W). Inside a ``Sequential`` the activations between
    convolutions travel as (C, N, H, W), the order the GEMM produces, so no layer transposes
    them; ``in_layout``/``out_layout`` say what arrives and what leaves.
    """
    in_layout = out_layout = "NCHW"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.init(seeding.init_rng(None), np.float32)      # usable alone; Sequential draws them again

    def init(self, rng, dtype):
        k = self.kernel_size
        self.params = seeding.uniform_init(rng, (self.out_channels, self.in_channels, k, k), self.in_channels * k * k, dtype)

    def forward(self, x, train=True):
        if self.in_layout == "NCHW":
            x = x.transpose(1, 0, 2, 3)                                   # a view
        self.x, self.cache = x, ({} if train else None)
        out = conv2d_forward(x, self.params["W"], self.params["b"], self.stride, self.padding, cache=self.cache,
                             layout="CNHW")
        return backend.get_array_module(out).ascontiguousarray(out.transpose(1, 0, 2, 3)) \
            if self.out_layout == "NCHW" else out

    def backward(self, dout):
        if self.out_layout == "NCHW":
            dout = dout.transpose(1, 0, 2, 3)
        dx, self.grads["W"], self.grads["b"] = conv2d_backward(
            dout, self.x, self.params["W"], self.params["b"], self.stride, self.padding, cache=self.cache,
            need_dx=not self.first, layout="CNHW")
        self.cache = None
        return dx.transpose(1, 0, 2, 3) if dx is not None and self.in_layout == "NCHW" else dx

    def config(self):
        return {"type": "Conv2d", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


class MaxPool2d(Layer):
    """Max over ``size`` x ``size`` windows every ``stride`` pixels (default: ``size``)."""

    def __init__(self, size, stride=None):
        super().__init__()
        self.size = int(size)
        self.stride = self.size if stride is None else int(stride)

    relu = False             # set by Sequential when the ReLU before it is deferred to here

    def forward(self, x, train=True):
        self.x, self.cache = x, {}
        out = max_pool2d_forward(x, self.size, self.stride, cache=self.cache)
        if self.relu:            # in place: windows whose maximum is <= 0 get no gradient either way
            self.out = relu_forward(out, out=out)
        return out

    def backward(self, dout):
        if self.relu:
            dout = relu_backward(dout, self.out)
        return max_pool2d_backward(dout, self.x, self.size, self.stride, cache=self.cache)

    def config(self):
        return {"type": "MaxPool2d", "size": self.size, "stride": self.stride}


class BatchNorm1d(Layer):
    """Batch norm of (N, D) features: ``gamma``, ``beta`` and running statistics of shape (D,)."""
    axis = 1                 # BatchNorm2d after a convolution in a Sequential: 0, as it gets (C, N, H, W)

    def __init__(self, num_features, eps=1e-5, momentum=0.9):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.init(None, np.float32)

    def init(self, rng, dtype):
        D = self.num_features
        self.params = {"gamma": np.ones(D, dtype=dtype), "beta": np.zeros(D, dtype=dtype)}
        self.buffers = {"running_mean": np.zeros(D, dtype=dtype), "running_var": np.ones(D, dtype=dtype)}

    def forward(self, x, train=True):
        out, self.cache = batchnorm_forward(x, self.params["gamma"], self.params["beta"],
                                            self.buffers["running_mean"], self.buffers["running_var"],
                                            train=train, momentum=self.momentum, eps=self.eps, axis=self.axis)
        return out

    def backward(self, dout):
        dx, self.grads["gamma"], self.grads["beta"] = batchnorm_backward(dout, self.cache)
        self.cache = None
        return dx

    def config(self):
        return {"type": type(self).__name__, "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum}


class BatchNorm2d(BatchNorm1d):
    """Batch norm of (N, C, H, W) per channel: ``gamma``, ``beta`` and running statistics of shape (C,)."""


LAYER_TYPES = {cls.__name__: cls for cls in (Linear, ReLU, Dropout, Flatten, Conv2d, MaxPool2d,
                                             BatchNorm1d, BatchNorm2d)}


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


class Sequential:
    """A classifier made of ``layers`` applied in order, ending in class scores; softmax cross-entropy loss.

    layers: list of ``Layer`` objects (their parameters are created here).
    reg: L2 strength; the loss adds ``0.5 * reg * sum(W**2)`` over every ``W``.
    dtype: float32 (default) or float64 (gradient checks).
    seed: initial weights and the dropout generator; None draws both from NumPy's global RNG.
    input_shape: one sample's shape, e.g. (1, 48, 48); flat (N, D) input is reshaped to it.
    """

    kind = "sequential"

    def __init__(self, layers, reg=0.0, dtype=np.float32, seed=None, input_shape=None):
        self.layers = list(layers)
        if not self.layers or not all(isinstance(layer, Layer) for layer in self.layers):
            raise ValueError("Sequential: expected a non-empty list of gpunet.nn layers")
        if reg < 0:
            raise ValueError(f"reg: expected >= 0, got {reg}")
        self.reg, self.dtype = float(reg), np.dtype(dtype)
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        self.meta = {}
        init_rng = seeding.init_rng(seed)
        layout = "NCHW"                   # what flows between layers: after a Conv2d, (C, N, H, W)
        for i, layer in enumerate(self.layers):
            layer.first = i == 0
            if isinstance(layer, ReLU):   # never overwrite the caller's batch in place
                layer.inplace = not all(isinstance(prev, Flatten) for prev in self.layers[:i])
                nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
                layer.deferred = isinstance(nxt, MaxPool2d) and i > 0   # the pool applies it, 4x cheaper
                if layer.deferred:
                    nxt.relu = True
            if isinstance(layer, Conv2d):
                layer.in_layout, layer.out_layout, layout = layout, "CNHW", "CNHW"
            elif isinstance(layer, BatchNorm2d):
                layer.axis = 0 if layout == "CNHW" else 1
            elif isinstance(layer, (Flatten, Linear, BatchNorm1d)):
                layer.from_cnhw = layout == "CNHW" and isinstance(layer, Flatten)
                if layout == "CNHW" and not isinstance(layer, Flatten):
                    raise ValueError(f"Sequential: layer {i} ({type(layer).__name__}) needs a Flatten() after "
                                     "the convolutions")
                layout = "flat"
            layer.init(init_rng, self.dtype)
        self._collect(lambda a: backend.to_device(a))
        self.rng = backend.default_rng(seeding.resolve_seed(seed))        # dropout masks (the Solver reseeds)
        self.num_classes = self._num_classes()

    def _collect(self, move):
        """(Re)build the flat ``params``/``buffers`` dicts, sharing memory with the layers."""
        self.params, self.buffers = {}, {}
        for i, layer in enumerate(self.layers):
            layer.params = {k: move(v) for k, v in layer.params.items()}
            layer.buffers = {k: move(v) for k, v in layer.buffers.items()}
            self.params.update({f"{i}.{k}": v for k, v in layer.params.items()})
            self.buffers.update({f"{i}.{k}": v for k, v in layer.buffers.items()})

    @property
    def input_dim(self):
        """Features per sample, prod(input_shape) (None when the input shape is not fixed)."""
        return int(np.prod(self.input_shape)) if self.input_shape else None

    def _num_classes(self):
        for layer in reversed(self.layers):
            if isinstance(layer, Linear):
                return layer.out_features
        return None

    # ------------------------------------------------------------------ compute
    def forward(self, X, train=False):
        """Class scores (N, C) of X (N, ...) on the model's backend."""
        if X.ndim == 2 and self.input_shape is not None and len(self.input_shape) > 1:
            X = X.reshape((X.shape[0],) + self.input_shape)
        if X.dtype != self.dtype:
            X = X.astype(self.dtype)
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.rng = self.rng
            X = layer.forward(X, train)
        return X

    def loss(self, X, y=None, on_grad=None):
        """Scores (N, C) when ``y`` is None (test mode); otherwise ``(loss, grads)`` in training mode.

        X: (N, C, H, W) images or (N, D) features; y: (N,) integer labels.
        grads has the keys of ``params``; buffers (running statistics) update in training mode.
        on_grad: optional ``on_grad(name, grad)`` called once each layer's backward is done.
        """
        if y is not None and tuple(y.shape) != (X.shape[0],):
            raise ValueError(f"y: expected shape ({X.shape[0]},) (one label per sample), got {tuple(y.shape)}")
        scores = self.forward(X, train=y is not None)
        if y is None:
            return scores
        loss, dout = softmax_loss(scores, y)
        if self.reg:
            loss = loss + self.dtype.type(0.5 * self.reg) * sum(
                (w ** 2).sum() for k, w in self.params.items() if k.endswith(".W"))
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            dout = layer.backward(dout)
            for k, g in layer.grads.items():
                name = f"{i}.{k}"
                if self.reg and k == "W":
                    g += self.dtype.type(self.reg) * self.params[name]
                grads[name] = g
                if on_grad is not None:
                    on_grad(name, g)
            layer.grads = {}
        return loss, {k: grads[k] for k in self.params}

    def predict(self, X, batch_size=1024):
        """Predicted labels (N,) on the model's backend, in batches of ``batch_size``."""
        xp = backend.get_array_module(next(iter(self.params.values())))
        out = [self.loss(X[i:i + batch_size]).argmax(axis=1) for i in range(0, X.shape[0], batch_size)]
        return xp.concatenate(out) if out else xp.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------- placement
    def to(self, name: str):
        """Move parameters and buffers to backend ``name`` (``numpy`` or ``cupy``); returns self."""
        self._collect(lambda a: backend.to_backend(a, name))
        xp = backend.get_array_module(next(iter(self.params.values())))
        self.rng = xp.random.default_rng() if xp is not np else np.random.default_rng()
        return self

    def get_params(self) -> dict:
        """A NumPy copy of every parameter and buffer."""
        return {k: backend.to_numpy(v).copy() for k, v in {**self.params, **self.buffers}.items()}

    def set_params(self, params: dict):
        """Copy arrays (NumPy or CuPy) into parameters or buffers of the same names, keeping their backend."""
        own = {**self.params, **self.buffers}
        for k, v in params.items():
            if k not in own or tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"set_params: parameter {k!r} with shape {tuple(v.shape)} does not fit this model")
            xp = backend.get_array_module(own[k])
            own[k][...] = xp.asarray(backend.to_numpy(v) if xp is np else v)

    # ----------------------------------------------------------- persistence
    def config(self) -> dict:
        return {"kind": self.kind, "layers": [layer.config() for layer in self.layers], "reg": self.reg,
                "dtype": self.dtype.name, "input_shape": list(self.input_shape) if self.input_shape else None,
                "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, cfg: dict, seed=0) -> "Sequential":
        return cls([layer_from_config(c) for c in cfg["layers"]], reg=cfg.get("reg", 0.0),
                   dtype=np.dtype(cfg.get("dtype", "float32")), seed=seed, input_shape=cfg.get("input_shape"))

    def save(self, path, float16=False):
        """Write the model (layer list, parameters, buffers, ``self.meta``) to ``path`` atomically.

        float16: store the arrays in half precision (a smaller file; loaded back in ``dtype``).
        """
        return save_model(path, self, float16)

    def __repr__(self):
        return "Sequential(\n  " + ",\n  ".join(f"({i}) {layer!r}" for i, layer in enumerate(self.layers)) + "\n)"
