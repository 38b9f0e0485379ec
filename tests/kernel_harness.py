"""The CPU harness of the CUDA kernel bodies now lives in ``gpunet.testing.kernel_cpu``."""

from gpunet.testing.kernel_cpu import *  # noqa: F401,F403
from gpunet.testing.kernel_cpu import (
    parse_params,
    raw_code,
    elementwise_code,
    run_elementwise,
    run_raw,
    _compile,
)  # noqa: F401
