"""What a model file's ``config`` promises, checked before anything is built or read.

``param_shapes(config, where)`` type-checks every field of a model description (the
``config`` of ``gpunet.modelfile``) and returns the name and shape of every array the
model it describes holds, without building it. ``gpunet.modelfile`` compares those
with the arrays actually present in the file before reading any of them, so a
description that asks for ``hidden_dims [1000000]`` beside small arrays is refused
without allocating 17 GiB. These rules mirror the layers' ``init`` in ``gpunet.nn``
and ``FullyConnectedNet``; ``tests/reliability/test_reliability_model.py`` checks they agree.
"""

from __future__ import annotations

import math

FLOAT_DTYPES = ("float32", "float64")  # the dtypes a model computes in
_MAX_DIM = 2**31 - 1  # no single layer size is larger (int32 indexing)


class ModelFileError(ValueError):
    """A model (or checkpoint) file gpunet refuses; the message names the file and the entry."""


def _int(where, key, v, low=1, optional=False):
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= _MAX_DIM:
        raise ModelFileError(f"{where}: {key}: expected an integer >= {low}, found {v!r}")
    return v


def _number(where, key, v, low, high=math.inf, high_open=False):
    ok = (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and low <= v
        and (v < high if high_open else v <= high)
    )
    if not ok:
        raise ModelFileError(
            f"{where}: {key}: expected a number in [{low}, {high}{')' if high_open else ']'}, found {v!r}"
        )
    return v


def _dtype(where, cfg):
    d = cfg.get("dtype", "float32")
    if d not in FLOAT_DTYPES:
        raise ModelFileError(f"{where}: config.dtype: expected one of {list(FLOAT_DTYPES)}, found {d!r}")


def _fully_connected(where, cfg) -> dict:
    hidden = cfg.get("hidden_dims")
    if not isinstance(hidden, list):
        raise ModelFileError(f"{where}: config.hidden_dims: expected a list of layer sizes, found {hidden!r}")
    dims = [_int(where, "config.input_dim", cfg.get("input_dim"))]
    dims += [_int(where, f"config.hidden_dims[{i}]", h) for i, h in enumerate(hidden)]
    dims.append(_int(where, "config.num_classes", cfg.get("num_classes"), low=2))
    _number(where, "config.dropout", cfg.get("dropout", 0.0), 0, 1, high_open=True)
    _number(where, "config.reg", cfg.get("reg", 0.0), 0)
    _dtype(where, cfg)
    shapes = {}
    for i in range(len(dims) - 1):
        shapes[f"W{i + 1}"], shapes[f"b{i + 1}"] = (dims[i], dims[i + 1]), (dims[i + 1],)
    return shapes


# layer type -> {setting: checker(where, key, value)}; a missing setting takes the layer's default
_LAYER_SETTINGS = {
    "Linear": {"in_features": _int, "out_features": _int},
    "Conv2d": {
        "in_channels": _int,
        "out_channels": _int,
        "kernel_size": _int,
        "stride": _int,
        "padding": lambda w, k, v: _int(w, k, v, low=0),
    },
    "BatchNorm1d": {
        "num_features": _int,
        "eps": lambda w, k, v: _number(w, k, v, 0, 1),
        "momentum": lambda w, k, v: _number(w, k, v, 0, 1),
    },
    "ReLU": {},
    "Flatten": {},
    "Dropout": {"p": lambda w, k, v: _number(w, k, v, 0, 1, high_open=True)},
    "MaxPool2d": {"size": _int, "stride": lambda w, k, v: _int(w, k, v, optional=True)},
}
_LAYER_SETTINGS["BatchNorm2d"] = _LAYER_SETTINGS["BatchNorm1d"]
_REQUIRED = {
    "Linear": ("in_features", "out_features"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size"),
    "BatchNorm1d": ("num_features",),
    "BatchNorm2d": ("num_features",),
    "MaxPool2d": ("size",),
}


def _layer_shapes(where, i, layer) -> dict:
    key = f"config.layers[{i}]"
    if not isinstance(layer, dict) or layer.get("type") not in _LAYER_SETTINGS:
        found = layer.get("type") if isinstance(layer, dict) else layer
        raise ModelFileError(
            f"{where}: {key}.type: expected one of {sorted(_LAYER_SETTINGS)}, found {found!r}"
        )
    kind, allowed = layer["type"], _LAYER_SETTINGS[layer["type"]]
    unknown = sorted(set(layer) - set(allowed) - {"type"})
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in layer]
    if unknown or missing:
        raise ModelFileError(
            f"{where}: {key} ({kind}): expected settings {sorted(allowed)}, "
            f"missing {missing}, unexpected {unknown}"
        )
    for k, v in layer.items():
        if k != "type":
            allowed[k](where, f"{key}.{k}", v)
    if kind == "Linear":
        return {f"{i}.W": (layer["in_features"], layer["out_features"]), f"{i}.b": (layer["out_features"],)}
    if kind == "Conv2d":
        k = layer["kernel_size"]
        return {
            f"{i}.W": (layer["out_channels"], layer["in_channels"], k, k),
            f"{i}.b": (layer["out_channels"],),
        }
    if kind.startswith("BatchNorm"):
        return {
            f"{i}.{n}": (layer["num_features"],) for n in ("gamma", "beta", "running_mean", "running_var")
        }
    return {}


def _sequential(where, cfg) -> dict:
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelFileError(f"{where}: config.layers: expected a non-empty list of layers, found {layers!r}")
    shape = cfg.get("input_shape")
    if shape is not None:
        if not isinstance(shape, list) or not shape:
            raise ModelFileError(
                f"{where}: config.input_shape: expected a list of sizes or null, found {shape!r}"
            )
        for j, d in enumerate(shape):
            _int(where, f"config.input_shape[{j}]", d)
    _number(where, "config.reg", cfg.get("reg", 0.0), 0)
    _dtype(where, cfg)
    shapes = {}
    for i, layer in enumerate(layers):
        shapes.update(_layer_shapes(where, i, layer))
    if not any(isinstance(x, dict) and x.get("type") == "Linear" for x in layers):
        raise ModelFileError(
            f"{where}: config.layers: expected a Linear layer giving the class scores, found none"
        )
    return shapes


def param_shapes(config, where: str) -> dict:
    """``{array name: shape}`` of the model ``config`` describes; ModelFileError naming ``where``
    and the field when a field is missing or of the wrong type or range."""
    if not isinstance(config, dict):
        raise ModelFileError(
            f"{where}: config: expected a JSON object describing the model, found {config!r:.80}"
        )
    kind = config.get("kind", "fully_connected")  # version 1 files have no kind
    if kind == "fully_connected":
        return _fully_connected(where, config)
    if kind == "sequential":
        return _sequential(where, config)
    raise ModelFileError(
        f"{where}: config.kind: expected 'fully_connected' or 'sequential', found {kind!r:.80}"
    )
