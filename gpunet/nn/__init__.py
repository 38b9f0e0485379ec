"""``gpunet.nn``: layer objects and ``Sequential``, any model built from a list of layers.

- ``modules``: ``Linear``, ``ReLU``, ``Dropout``, ``Flatten``, ``Conv2d``, ``MaxPool2d``,
  ``BatchNorm1d``/``BatchNorm2d``, each thin over ``gpunet.layers``; ``LAYER_TYPES`` and
  ``layer_from_config`` (what model files name);
- ``sequential``: ``Sequential`` and its ``plan``, how it calls the layers (it never sets
  attributes on them).
"""

from .modules import (
    LAYER_TYPES,
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
from .sequential import CHECK_SAVED, Sequential, plan

__all__ = [
    "Layer",
    "Linear",
    "ReLU",
    "Dropout",
    "Flatten",
    "Conv2d",
    "MaxPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "LAYER_TYPES",
    "layer_from_config",
    "Sequential",
    "plan",
    "CHECK_SAVED",
]
