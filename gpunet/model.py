"""FullyConnectedNet: a thin holder of parameters that calls the layer kernels in order.

Architecture: ``[linear - relu - (dropout)] x (L-1) - linear - softmax``.
``load_model`` reads both model kinds (see ``gpunet.modelfile`` for the file format).
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import backend, seeding
from .modelfile import (
    MODEL_FORMAT,
    MODEL_VERSION,
    ModelFileError,
    read_model,
    read_npz,
    save_model,  # noqa: F401
    write_model,
)
from .preprocess import check_meta
from .nn import Sequential
from .layers import dropout_forward, linear_backward, linear_forward, softmax_loss
from .ops import get_ops


class FullyConnectedNet:
    """Fully connected classifier.

    hidden_dims: sizes of the hidden layers, e.g. [512, 256].
    input_dim: D, features per sample (3072 for CIFAR-10, 2304 for FER2013).
    num_classes: C.
    dropout: drop probability p of every hidden layer (0 disables dropout).
    reg: L2 strength; the loss adds ``0.5 * reg * sum(W**2)`` over all weights.
    weight_scale: std of the initial weights; None means He initialisation
        (std = sqrt(2 / fan_in)).
    dtype: float32 (default) or float64 (gradient checks).
    seed: seeds initialisation and the dropout generator.
    """

    def __init__(
        self,
        hidden_dims,
        input_dim=3072,
        num_classes=10,
        dropout=0.0,
        reg=0.0,
        weight_scale=None,
        dtype=np.float32,
        seed=None,
    ):
        hidden_dims = [int(h) for h in hidden_dims]
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims: expected positive sizes, got {hidden_dims}")
        if int(input_dim) < 1 or int(num_classes) < 2:
            raise ValueError(f"input_dim/num_classes: expected >= 1 / >= 2, got {input_dim}/{num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a drop probability in [0, 1), got {dropout}")
        if reg < 0:
            raise ValueError(f"reg: expected >= 0, got {reg}")
        self.hidden_dims = hidden_dims
        self.input_dim = int(input_dim)
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.reg = float(reg)
        self.dtype = np.dtype(dtype)
        self.num_layers = len(hidden_dims) + 1
        self.meta = {}  # preprocessing and provenance carried into the model file
        init_rng = seeding.init_rng(seed)  # None: NumPy's global generator (np.random.seed works)
        dims = [self.input_dim] + hidden_dims + [self.num_classes]
        params = {}
        for i in range(self.num_layers):
            std = weight_scale if weight_scale is not None else np.sqrt(2.0 / dims[i])
            params[f"W{i + 1}"] = (init_rng.standard_normal((dims[i], dims[i + 1])) * std).astype(self.dtype)
            params[f"b{i + 1}"] = np.zeros(dims[i + 1], dtype=self.dtype)
        self.params = {k: backend.to_device(v) for k, v in params.items()}
        self.rng = backend.default_rng(seeding.resolve_seed(seed) if seed is None else seed)  # dropout masks
        self._buffers = {}

    # ------------------------------------------------------------------ compute
    def _buf(self, key, shape):
        """A reusable work array (the pool stays steady after the first step)."""
        b = self._buffers.get((key, shape))
        if b is None:
            xp = backend.get_array_module(self.params["W1"])
            b = self._buffers[(key, shape)] = xp.empty(shape, dtype=self.dtype)
        return b

    def _check_input(self, X, y):
        D = int(np.prod(X.shape[1:])) if X.ndim > 1 else -1
        if D != self.input_dim:
            raise ValueError(f"X: expected {self.input_dim} features per sample, got shape {tuple(X.shape)}")
        if y is not None and tuple(y.shape) != (X.shape[0],):
            raise ValueError(
                f"y: expected shape ({X.shape[0]},) (one label per sample), got {tuple(y.shape)}"
            )

    def loss(self, X, y=None, on_grad=None):
        """Class scores, or the loss and gradients.

        X: (N, D) or (N, d1, ...) on the model's backend; y: (N,) int labels or None.
        Returns scores (N, C) when y is None (test mode, no dropout); otherwise
        ``(loss, grads)`` with grads shaped like ``self.params`` (training mode).
        The gradients are new arrays on every call; activations live in reused buffers.
        on_grad: optional ``on_grad(name, grad)``, called as soon as a gradient is final and
            the rest of the backward pass no longer reads ``params[name]`` (the Solver updates
            each layer there, while its gradient is still in cache).
        """
        self._check_input(X, y)
        train = y is not None
        N = X.shape[0]
        X = X.reshape(N, -1)
        if X.dtype != self.dtype:
            X = X.astype(self.dtype)
        p, L = self.params, self.num_layers
        drop = self.dropout if train else 0.0
        ops = get_ops(X)
        acts = [X]  # acts[i]: input of layer i + 1, (N, dims[i])
        # saved[i]: what layer i's Linear+ReLU kept for the backward (a GPU's ReLU bitmask; ops/epilogue.py),
        # asked for in training without dropout (a dropout after the ReLU changes the mask)
        saved = [None] + [{} if train and not drop else None for _ in range(1, L)]
        h = X
        for i in range(1, L):
            W = p[f"W{i}"]
            h = ops.affine_bias(h, W, p[f"b{i}"], True, self._buf(f"a{i}", (N, W.shape[1])), saved[i])
            if drop:
                dropout_forward(h, drop, rng=self.rng, out=h)  # in place: the backward needs only h > 0
            acts.append(h)
        W = p[f"W{L}"]
        scores = linear_forward(h, W, p[f"b{L}"], out=self._buf("scores", (N, W.shape[1])) if train else None)
        if not train:
            return scores

        loss, dout = softmax_loss(scores, y)
        if self.reg:
            loss = loss + self.dtype.type(0.5 * self.reg) * sum(
                (p[f"W{i}"] ** 2).sum() for i in range(1, L + 1)
            )
        scale = 1.0 / (1.0 - drop)
        grads = {}
        db_prev = None  # layer i's bias gradient, when layer i + 1's backward computed it
        for i in range(L, 0, -1):
            W = p[f"W{i}"]
            if i > 1:
                # Linear, then ReLU and dropout backward (acts[i-1] > 0 exactly where a unit passed both),
                # and the bias gradient of layer i - 1: one DRELU_BGRAD matmul on a GPU where it can
                db = dout.sum(axis=0) if db_prev is None else db_prev
                dout, dW, db_prev = ops.affine_relu_backward(
                    acts[i - 1], dout, W, scale, saved[i - 1], o_dx=self._buf(f"d{i - 1}", acts[i - 1].shape)
                )
            elif db_prev is None:  # a net without hidden layers
                _, dW, db = linear_backward(dout, acts[0], W, p["b1"], need_dx=False)
            else:  # the first layer: its weight gradient only (as linear_backward without need_dx)
                dW = ops.affine(acts[0].T, dout) if ops.on_device else np.matmul(acts[0].T, dout)
                db = db_prev
            if self.reg:
                dW += self.dtype.type(self.reg) * W
            grads[f"W{i}"], grads[f"b{i}"] = dW, db
            if on_grad is not None:  # dout (the input gradient) is computed: W{i} is free
                on_grad(f"W{i}", dW)
                on_grad(f"b{i}", db)
        return loss, {k: grads[k] for k in p}

    def predict(self, X, batch_size=1024):
        """Predicted labels (N,) on the model's backend, in batches of ``batch_size``."""
        xp = backend.get_array_module(self.params["W1"])
        out = [self.loss(X[i : i + batch_size]).argmax(axis=1) for i in range(0, X.shape[0], batch_size)]
        return xp.concatenate(out) if out else xp.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------- placement
    def to(self, name: str):
        """Move the parameters to backend ``name`` (``numpy`` or ``cupy``); returns self."""
        self.params = {k: backend.to_backend(v, name) for k, v in self.params.items()}
        self._buffers = {}
        xp = backend.get_array_module(self.params["W1"])
        self.rng = xp.random.default_rng() if xp is not np else np.random.default_rng()
        return self

    def get_params(self) -> dict:
        """A NumPy copy of every parameter."""
        return {k: backend.to_numpy(v).copy() for k, v in self.params.items()}

    def set_params(self, params: dict):
        """Copy arrays (NumPy or CuPy) into the parameters, keeping their backend."""
        for k, v in params.items():
            if k not in self.params or tuple(v.shape) != tuple(self.params[k].shape):
                raise ValueError(
                    f"set_params: parameter {k!r} with shape {tuple(v.shape)} does not fit this model"
                )
            xp = backend.get_array_module(self.params[k])
            self.params[k][...] = xp.asarray(backend.to_numpy(v) if xp is np else v)

    # ----------------------------------------------------------- persistence
    def config(self) -> dict:
        return {
            "kind": "fully_connected",
            "hidden_dims": self.hidden_dims,
            "input_dim": self.input_dim,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "reg": self.reg,
            "dtype": self.dtype.name,
        }

    def save(self, path, float16=False):
        """Write the model (architecture, parameters, ``self.meta``) to ``path`` atomically.

        float16: store the parameters in half precision (a smaller file; loaded back in ``dtype``).
        """
        return save_model(path, self, float16)


def _build(cfg: dict, path):
    """The model ``cfg`` describes; ``cfg`` was checked (``gpunet.modelspec``), so sizes fit the file."""
    try:
        if cfg.get("kind", "fully_connected") == "sequential":  # version 1 files have no kind
            return Sequential.from_config(cfg)
        return FullyConnectedNet(
            cfg["hidden_dims"],
            input_dim=cfg["input_dim"],
            num_classes=cfg["num_classes"],
            dropout=cfg.get("dropout", 0.0),
            reg=cfg.get("reg", 0.0),
            dtype=np.dtype(cfg.get("dtype", "float32")),
            seed=0,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: bad model config ({type(e).__name__}: {e})") from None


def _checked_meta(meta, model, path) -> dict:
    """The file's ``meta`` (a dict) with its preprocessing fields checked where present
    (all of them together by ``check_meta`` when a file has all three); ModelFileError naming ``path``."""
    meta = meta or {}
    for key in ("mean", "std"):
        v = meta.get(key)
        if v is not None and not (
            isinstance(v, list)
            and v
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        ):
            raise ModelFileError(
                f"{path}: meta.{key}: expected a list of finite numbers (one per channel), found {v!r:.120}"
            )
    names = meta.get("class_names")
    if names is not None and (
        not isinstance(names, list)
        or len(names) != model.num_classes
        or not all(isinstance(n, str) for n in names)
    ):
        raise ModelFileError(
            f"{path}: meta.class_names: expected a list of {model.num_classes} names "
            f"(one per class), found {names!r:.120}"
        )
    if all(meta.get(k) is not None for k in ("mean", "std", "image_shape")):
        try:
            check_meta(meta, f"{path}: meta")
        except ValueError as e:
            raise ModelFileError(str(e)) from None
    return meta


def load_model(path):
    """Load a model saved by ``FullyConnectedNet.save`` or ``Sequential.save`` onto the active backend.

    Reads model format versions 1 and 2; returns a ``FullyConnectedNet`` or a ``gpunet.nn.Sequential``.
    Raises ``FileNotFoundError`` for a missing file and ``gpunet.modelfile.ModelFileError`` (a
    ``ValueError``) naming the file and the entry for anything else wrong with it
    (see ``gpunet.modelfile.read_model`` for what is checked, and in which order).
    """
    arrays, desc = read_model(path)
    model = _build(dict(desc["config"]), path)
    cast = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for k, a in arrays.items():
            cast[k] = a.astype(model.dtype, copy=False)
            if cast[k].dtype.kind == "f" and not np.isfinite(cast[k]).all():  # 1e300 becomes inf in float32
                big = float(np.abs(a[~np.isfinite(cast[k])]).max())
                raise ModelFileError(
                    f"{path}: entry {k!r}: values up to {big:.3g} do not fit the model's {model.dtype} "
                    "(they would become inf)"
                )
    try:
        model.set_params(cast)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None
    if getattr(model, "input_shape", None):  # a Sequential: its layers must chain from its input shape
        xp = backend.get_array_module(next(iter(model.params.values())))
        try:
            model.loss(xp.zeros((1,) + tuple(model.input_shape), model.dtype))
        except (ValueError, TypeError, IndexError) as e:
            raise ModelFileError(
                f"{path}: config.layers do not fit input_shape {list(model.input_shape)} ({e})"
            ) from None
    model.meta = _checked_meta(desc.get("meta"), model, os.fspath(path))
    model.source = os.fspath(path)  # named in later error messages
    return model
