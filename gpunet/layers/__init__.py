"""Layer kernels: the one home of every layer's math, forward beside backward.

Pure functions with the coursework's signatures (``f_forward(...) -> out``,
``f_backward(dout, ...) -> grads``). Each takes NumPy or CuPy arrays and returns
the same kind and dtype. A rule's fast path is the same function with keyword
options (``out=``, ``relu=``, ``scale=``, ``need_dx=``), computed through the ops object of the
arrays' backend (``gpunet.ops``): ``NumpyOps`` holds the NumPy form, ``CupyOps`` the GPU kernel.

- ``linear``: ``linear_forward``, ``linear_backward``
- ``activations``: ``relu_forward``, ``relu_backward``, ``dropout_forward``, ``dropout_backward``
- ``softmax``: ``softmax``, ``softmax_loss``
- ``conv``: ``conv2d_forward``, ``conv2d_backward``
- ``pool``: ``max_pool2d_forward``, ``max_pool2d_backward``; fused with the ReLU before it:
  ``max_pool2d_relu_forward``, ``max_pool2d_relu_backward``
- ``batchnorm``: ``batchnorm_forward``, ``batchnorm_backward``; fused with the ReLU after it:
  ``batchnorm_relu_forward``, ``batchnorm_relu_backward``
"""

from .activations import dropout_backward, dropout_forward, keep_mask, relu_backward, relu_forward
from .batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_relu_backward, batchnorm_relu_forward
from .conv import conv2d_backward, conv2d_forward
from .linear import linear_backward, linear_forward
from .pool import max_pool2d_backward, max_pool2d_forward, max_pool2d_relu_backward, max_pool2d_relu_forward
from .softmax import softmax, softmax_loss

__all__ = [
    "linear_forward",
    "linear_backward",
    "relu_forward",
    "relu_backward",
    "dropout_forward",
    "dropout_backward",
    "keep_mask",
    "softmax",
    "softmax_loss",
    "conv2d_forward",
    "conv2d_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "max_pool2d_relu_forward",
    "max_pool2d_relu_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_relu_forward",
    "batchnorm_relu_backward",
]
