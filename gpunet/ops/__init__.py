"""Backends you can see: one ops object per array backend (after Thinc's ``Ops`` and Chainer's
``forward_cpu``/``forward_gpu``).

- ``NumpyOps`` (``numpy_ops.py``, with ``conv.py``, ``pool.py`` and ``batchnorm.py``): the NumPy form
  of every primitive of the layers and the update rules, the reference;
- ``CupyOps(NumpyOps)`` (``cupy_ops.py``): everything that runs only on a GPU, with its CUDA
  sources; each override checks its preconditions and otherwise calls ``super()``.

The layer functions (``gpunet.layers``, the coursework API, now thin) and the update rules
(``gpunet.optim``) compute through ``get_ops(array)``, so the CuPy-only code is the ``CupyOps`` class, which
CI
runs on the emulated GPU (``backend.use("emulated")``).
"""

from __future__ import annotations

from .. import backend
from .cupy_ops import CupyOps
from .numpy_ops import NumpyOps

NUMPY = NumpyOps()
CUPY = CupyOps()


def get_ops(*arrays) -> NumpyOps:
    """The ops object of the arrays' backend: ``CUPY`` when any is a CuPy array (the emulated GPU's
    included), else ``NUMPY``."""
    return CUPY if any(backend.is_device_array(a) for a in arrays) else NUMPY


__all__ = ["NumpyOps", "CupyOps", "get_ops", "NUMPY", "CUPY"]
