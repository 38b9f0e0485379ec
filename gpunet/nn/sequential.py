"""``Sequential``: a classifier built from a list of layers, and the plan of how it calls them.

``Sequential`` names parameters ``"<index>.<name>"`` like PyTorch's ``"0.weight"`` and follows
the model contract of the Solver, evaluation and tuning: ``loss(X, y=None)``, ``params``,
``predict``, ``save``, ``config``, ``to(backend)``.

It never sets attributes on the layers it is given. What it decides, it decides once in its own
``plan`` and passes as call arguments: the layout between layers (a stack of convolutions hands
over (C, N, H, W)), ``need_dx=False`` to the first layer, ``inplace`` to a ReLU whose input no
layer keeps, and a ReLU right before a ``MaxPool2d`` applied by the pool (``relu=True``, 4x fewer
values; the ReLU's own calls are skipped); otherwise a ReLU right after a ``BatchNorm2d`` applied
by the batch norm (``relu=True``: the fused op ``batchnorm_relu_forward``, one cuDNN graph on the
GPU; the ReLU's calls skipped too).

With ``CHECK_SAVED`` (environment ``GPUNET_CHECK_SAVED=1``; the test suite sets it) every array
a layer keeps for its backward is made read-only on NumPy from the end of its forward until the
backward is done, so a later write into it fails where it happens.
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend, seeding
from ..layers import softmax_loss
from ..modelfile import save_model
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    layer_from_config,
)

CHECK_SAVED = os.environ.get("GPUNET_CHECK_SAVED", "") not in ("", "0")
FRESH = (Linear, Conv2d, BatchNorm1d, Dropout)  # layers whose output is a new array none of them keeps


def plan(layers) -> list:
    """Per layer ``(forward kwargs, backward kwargs, skipped)``; ValueError for a Linear or BatchNorm1d
    right after convolutions (a Flatten must come between)."""
    out, layout = [], "NCHW"  # what flows between layers: after a Conv2d, (C, N, H, W)
    for i, layer in enumerate(layers):
        fwd, bwd = {}, {}
        prev, nxt = layers[i - 1] if i else None, layers[i + 1] if i + 1 < len(layers) else None
        pooled = isinstance(layer, ReLU) and i > 0 and isinstance(nxt, MaxPool2d)  # the pool applies it
        skipped = pooled or (isinstance(layer, ReLU) and isinstance(prev, BatchNorm2d))
        if isinstance(layer, (Linear, Conv2d)):
            bwd["need_dx"] = i > 0  # nothing consumes the first layer's input gradient
        if isinstance(layer, ReLU):
            fwd["inplace"] = isinstance(prev, FRESH)  # never the caller's batch, never a kept array
        elif isinstance(layer, MaxPool2d):
            fwd["relu"] = isinstance(prev, ReLU) and i > 1
        if isinstance(layer, Conv2d):
            fwd.update(in_layout=layout, out_layout="CNHW")
            layout = "CNHW"
        elif isinstance(layer, BatchNorm2d):
            fwd["axis"] = 0 if layout == "CNHW" else 1
            after = layers[i + 2] if i + 2 < len(layers) else None
            if isinstance(nxt, ReLU) and not isinstance(after, MaxPool2d):  # else the pool takes the ReLU
                fwd["relu"] = True
        elif isinstance(layer, Flatten):
            fwd["layout"] = "CNHW" if layout == "CNHW" else "NCHW"
            layout = "flat"
        elif isinstance(layer, (Linear, BatchNorm1d)):
            if layout == "CNHW":
                raise ValueError(
                    f"Sequential: layer {i} ({type(layer).__name__}) needs a Flatten() after the convolutions"
                )
            layout = "flat"
        out.append((fwd, bwd, skipped))
    return out


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
        self.plan = plan(self.layers)
        init_rng = seeding.init_rng(seed)
        for layer in self.layers:
            layer.init(init_rng, self.dtype)
        self._collect(lambda a: backend.to_device(a))
        self.rng = backend.default_rng(seeding.resolve_seed(seed))  # dropout masks (the Solver reseeds)
        self.num_classes = self._num_classes()
        self._frozen = []

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
        self._thaw()
        for i, (layer, (fwd, _, skipped)) in enumerate(zip(self.layers, self.plan)):
            if skipped:
                continue
            X = layer.forward(X, train, **(dict(fwd, rng=self.rng) if isinstance(layer, Dropout) else fwd))
            if CHECK_SAVED and train:
                self._freeze(i, layer.saved())
        return X

    def _freeze(self, i, arrays):
        """Make layer ``i``'s kept NumPy arrays read-only until its backward (``CHECK_SAVED``)."""
        for a in arrays:
            if isinstance(a, np.ndarray) and a.flags.writeable:
                a.flags.writeable = False
                self._frozen.append((i, a))

    def _thaw(self, i=None):
        """Writable again: layer ``i``'s arrays (its backward is done), or all of them."""
        keep = []
        while self._frozen:
            j, a = self._frozen.pop()
            if i is None or j == i:
                a.flags.writeable = True
            else:
                keep.append((j, a))
        self._frozen = keep[::-1]

    def loss(self, X, y=None, on_grad=None):
        """Scores (N, C) when ``y`` is None (test mode); otherwise ``(loss, grads)`` in training mode.

        X: (N, C, H, W) images or (N, D) features; y: (N,) integer labels.
        grads has the keys of ``params``; buffers (running statistics) update in training mode.
        on_grad: optional ``on_grad(name, grad)`` called once each layer's backward is done.
        """
        if y is not None and tuple(y.shape) != (X.shape[0],):
            raise ValueError(
                f"y: expected shape ({X.shape[0]},) (one label per sample), got {tuple(y.shape)}"
            )
        scores = self.forward(X, train=y is not None)
        if y is None:
            return scores
        loss, dout = softmax_loss(scores, y)
        if self.reg:
            loss = loss + self.dtype.type(0.5 * self.reg) * sum(
                (w**2).sum() for k, w in self.params.items() if k.endswith(".W")
            )
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer, (_, bwd, skipped) = self.layers[i], self.plan[i]
            if skipped:
                continue
            dout = layer.backward(dout, **bwd)
            if self._frozen:
                self._thaw(i)  # its parameters may be updated now (on_grad)
            for k, g in layer.grads.items():
                name = f"{i}.{k}"
                if self.reg and k == "W":
                    g += self.dtype.type(self.reg) * self.params[name]
                grads[name] = g
                if on_grad is not None:
                    on_grad(name, g)
            layer.grads = {}
        self._thaw()
        return loss, {k: grads[k] for k in self.params}

    def predict(self, X, batch_size=1024):
        """Predicted labels (N,) on the model's backend, in batches of ``batch_size``."""
        xp = backend.get_array_module(next(iter(self.params.values())))
        out = [self.loss(X[i : i + batch_size]).argmax(axis=1) for i in range(0, X.shape[0], batch_size)]
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
                raise ValueError(
                    f"set_params: parameter {k!r} with shape {tuple(v.shape)} does not fit this model"
                )
            xp = backend.get_array_module(own[k])
            own[k][...] = xp.asarray(backend.to_numpy(v) if xp is np else v)

    # ----------------------------------------------------------- persistence
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "layers": [layer.config() for layer in self.layers],
            "reg": self.reg,
            "dtype": self.dtype.name,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_config(cls, cfg: dict, seed=0) -> "Sequential":
        return cls(
            [layer_from_config(c) for c in cfg["layers"]],
            reg=cfg.get("reg", 0.0),
            dtype=np.dtype(cfg.get("dtype", "float32")),
            seed=seed,
            input_shape=cfg.get("input_shape"),
        )

    def save(self, path, float16=False):
        """Write the model (layer list, parameters, buffers, ``self.meta``) to ``path`` atomically.

        float16: store the arrays in half precision (a smaller file; loaded back in ``dtype``).
        """
        return save_model(path, self, float16)

    def __repr__(self):
        return (
            "Sequential(\n  "
            + ",\n  ".join(f"({i}) {layer!r}" for i, layer in enumerate(self.layers))
            + "\n)"
        )
