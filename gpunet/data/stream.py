"""Renamed ``gpunet.data.h5loader`` (HDF5 streaming, not CUDA streams). This name stays, as the very
same module, so that existing imports (and monkeypatches) keep working."""

import sys

from . import h5loader

sys.modules[__name__] = h5loader
