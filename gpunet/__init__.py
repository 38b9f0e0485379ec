"""gpunet: hand-written fully connected networks on NumPy (CPU) or CuPy (GPU).

The same kernels run on either array backend, chosen by ``gpunet.backend.use``
(or ``GPUNET_BACKEND`` / ``--backend``).
"""
from . import backend
from .layers import (dropout_backward, dropout_forward, linear_backward, linear_forward,
                     relu_backward, relu_forward, softmax_loss)
from .model import FullyConnectedNet, load_model
from .optim import OptimConfig, Optimizer, Schedule
from .solver import Solver, TrainingDiverged

__version__ = "0.1.0"

__all__ = ["backend", "FullyConnectedNet", "Solver", "TrainingDiverged", "load_model", "Optimizer",
           "OptimConfig", "Schedule", "linear_forward", "linear_backward", "relu_forward",
           "relu_backward", "dropout_forward", "dropout_backward", "softmax_loss"]
