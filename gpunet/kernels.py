"""Renamed ``gpunet.cuda_sources`` (it holds the registry of CUDA sources, no kernels); the CPU thread
team is ``gpunet.threads``. This name stays so that existing imports keep working."""

from .cuda_sources import SOURCES, CudaSource, Kernel, elementwise, on_gpu, raw  # noqa: F401
from .threads import CHUNK, PAR_MIN, num_threads, parallel, set_num_threads  # noqa: F401
