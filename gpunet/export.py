"""ONNX export: a trained gpunet model as one self-contained ONNX graph.

The graph takes what a user has, float32 pixels ``(N, C, H, W)`` in 0..255, and
answers class probabilities ``(N, num_classes)``: the model's preprocessing
``(x - mean[c]) / std[c]`` (from its meta) and the softmax are inside it, so no
gpunet code is needed to deploy it. Class names, mean and std also travel as
metadata properties.

Both model kinds export: ``FullyConnectedNet`` (Flatten, then Gemm/Relu per layer)
and ``Sequential`` (Conv, MaxPool, Relu, Flatten, Gemm; batch norm folded into one
per-channel Mul and Add with its running statistics; dropout is the identity at
test time). The graph is built with ``onnx.helper`` (the reference library of the
format, the optional extra ``gpunet[onnx]``) and checked with ``onnx.checker``.
Opset 13 and IR version 7 keep it loadable by onnxruntime releases of the last years.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import backend
from .io import atomic_open

OPSET = 13
IR_VERSION = 7
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("ONNX export needs onnx: pip install 'gpunet[onnx]'") from None
    return onnx, helper, numpy_helper


class _Graph:
    """Nodes and weights being collected; ``op`` appends a node and returns its output name."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, name, array, dtype=np.float32):
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array, dtype), name))
        return name

    def op(self, kind, inputs, name=None, **attrs):
        self.n += 1
        out = name or f"{kind.lower()}_{self.n}"
        self.nodes.append(self.helper.make_node(kind, inputs, [out], name=f"{kind}_{self.n}", **attrs))
        return out


def _np(a):
    return backend.to_numpy(a).astype(np.float64)


def _fc_layers(g, model, x):
    """FullyConnectedNet: (N, C, H, W) -> scores (N, classes)."""
    x = g.op("Flatten", [x], axis=1)
    p, L = model.params, model.num_layers
    for i in range(1, L + 1):
        x = g.op("Gemm", [x, g.const(f"W{i}", _np(p[f"W{i}"])), g.const(f"b{i}", _np(p[f"b{i}"]))])
        if i < L:
            x = g.op("Relu", [x])
    return x


def _bn(g, model, i, x, spec, rank):
    """Test-time batch norm folded to ``x * scale + shift`` per channel (axis 1 of ``rank`` dims)."""
    eps = float(spec.get("eps", 1e-5))
    gamma, beta = _np(model.params[f"{i}.gamma"]), _np(model.params[f"{i}.beta"])
    mean, var = _np(model.buffers[f"{i}.running_mean"]), _np(model.buffers[f"{i}.running_var"])
    scale = gamma / np.sqrt(var + eps)
    shape = (1, -1) + (1,) * (rank - 2)
    x = g.op("Mul", [x, g.const(f"{i}.scale", scale.reshape(shape))])
    return g.op("Add", [x, g.const(f"{i}.shift", (beta - mean * scale).reshape(shape))])


def _sequential_layers(g, model, x, where):
    """Sequential: its ``config()["layers"]`` in order -> scores (N, classes)."""
    rank = 4
    for i, spec in enumerate(model.config()["layers"]):
        kind, p = spec.get("type"), model.params
        if kind == "Conv2d":
            k, s, pad = (int(spec.get(n, d)) for n, d in (("kernel_size", 3), ("stride", 1), ("padding", 0)))
            x = g.op(
                "Conv",
                [x, g.const(f"{i}.W", _np(p[f"{i}.W"])), g.const(f"{i}.b", _np(p[f"{i}.b"]))],
                kernel_shape=[k, k],
                strides=[s, s],
                pads=[pad] * 4,
            )
        elif kind in ("BatchNorm2d", "BatchNorm1d"):
            x = _bn(g, model, i, x, spec, rank)
        elif kind == "ReLU":
            x = g.op("Relu", [x])
        elif kind == "MaxPool2d":
            size = int(spec["size"])
            stride = int(spec.get("stride", size))
            x = g.op("MaxPool", [x], kernel_shape=[size, size], strides=[stride, stride])
        elif kind == "Flatten":
            x, rank = g.op("Flatten", [x], axis=1), 2
        elif kind == "Linear":
            if rank != 2:
                x, rank = g.op("Flatten", [x], axis=1), 2
            x = g.op("Gemm", [x, g.const(f"{i}.W", _np(p[f"{i}.W"])), g.const(f"{i}.b", _np(p[f"{i}.b"]))])
        elif kind == "Dropout":
            continue  # the identity at test time
        else:
            raise ValueError(
                f"{where}: layer {i} has type {kind!r}, which the ONNX exporter does not "
                "know (expected Conv2d, BatchNorm2d, BatchNorm1d, ReLU, MaxPool2d, Flatten, "
                "Linear or Dropout)"
            )
    return x


def to_onnx(model, where: str = "model"):
    """An ``onnx.ModelProto`` of ``model`` (a FullyConnectedNet or Sequential with preprocessing
    meta): input ``pixels`` float32 (N, C, H, W) in 0..255, output ``probabilities`` (N, classes).
    where: how to name the model in errors."""
    from .predict import model_meta

    onnx, helper, numpy_helper = _onnx()
    meta = model_meta(model, where)
    c, h, w = meta["image_shape"]
    g = _Graph(helper, numpy_helper)
    x = g.op("Sub", [INPUT_NAME, g.const("mean", np.reshape(meta["mean"], (1, c, 1, 1)))])
    x = g.op("Div", [x, g.const("std", np.reshape(meta["std"], (1, c, 1, 1)))])
    if "W1" in model.params:
        scores = _fc_layers(g, model, x)
    elif (model.config() or {}).get("kind") == "sequential":
        scores = _sequential_layers(g, model, x, where)
    else:
        raise ValueError(
            f"{where}: expected a FullyConnectedNet or a Sequential model, found {type(model).__name__}"
        )
    g.op("Softmax", [scores], name=OUTPUT_NAME, axis=1)
    classes = meta.get("class_names") or [str(i) for i in range(int(model.num_classes))]
    graph = helper.make_graph(
        g.nodes,
        "gpunet",
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", len(classes)])],
        g.inits,
    )
    m = helper.make_model(
        graph,
        producer_name="gpunet",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="input: float32 pixels (N, C, H, W) in 0..255; output: class probabilities (N, classes)",
    )
    m.ir_version = IR_VERSION
    helper.set_model_props(
        m,
        {
            "class_names": json.dumps(classes),
            "mean": json.dumps(meta["mean"]),
            "std": json.dumps(meta["std"]),
            "image_shape": json.dumps(meta["image_shape"]),
        },
    )
    onnx.checker.check_model(m)
    return m


def export_onnx(model, out) -> str:
    """Write ``model`` (a loaded model or a model file path) to ``out`` as ONNX, atomically;
    returns ``out``."""
    from .predict import resolve_model

    if isinstance(model, (str, os.PathLike)):
        model, where = resolve_model(model)
    else:
        where = getattr(model, "source", None) or "model"
    proto = to_onnx(model, where)
    with atomic_open(out, "wb") as f:
        f.write(proto.SerializeToString())
    return os.fspath(out)
