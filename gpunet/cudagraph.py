"""Renamed ``gpunet.train_step`` (it holds the eager CPU step as well as the CUDA graph). This name
stays, as the very same module, so that existing imports (and monkeypatches) keep working."""

import sys

from . import train_step

sys.modules[__name__] = train_step
