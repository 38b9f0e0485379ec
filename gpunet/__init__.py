"""gpunet: hand-written neural networks (fully connected and convolutional) on NumPy (CPU) or CuPy (GPU).

The same kernels run on either array backend, chosen by ``gpunet.backend.use``
(or ``GPUNET_BACKEND`` / ``--backend``).
"""

import os as _os

# OpenBLAS's idle threads spin for about 2**28 cycles (~0.1 s) after each product before they
# sleep; between products gpunet runs its own passes (bias, ReLU, dropout, the update), which
# those spinning threads slow (a short timeout is measured in docs/BENCHMARKS.md). OpenBLAS reads it once,
# when NumPy loads, so
# it applies when gpunet is imported before NumPy (every gpunet command); a value already set wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import backend  # noqa: E402 (after the OpenBLAS setting)
from .layers import (
    dropout_backward,
    dropout_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)
from . import nn
from .model import FullyConnectedNet, load_model
from .nn import Sequential
from .optim import OptimConfig, Optimizer, Schedule
from .solver import Solver, TrainingDiverged

__version__ = "0.1.0"

__all__ = [
    "backend",
    "nn",
    "Sequential",
    "FullyConnectedNet",
    "Solver",
    "TrainingDiverged",
    "load_model",
    "Optimizer",
    "OptimConfig",
    "Schedule",
    "linear_forward",
    "linear_backward",
    "relu_forward",
    "relu_backward",
    "dropout_forward",
    "dropout_backward",
    "softmax_loss",
]


def __getattr__(name):  # lazy: ``gpunet.detect_emotions`` loads the face code (and Pillow) on first use
    if name == "detect_emotions":
        from .faces import detect_emotions

        return detect_emotions
    raise AttributeError(f"module 'gpunet' has no attribute {name!r}")
