"""Shared fixtures: run a test body on every array backend.

``xp`` is parametrized over NumPy, the emulated GPU and CuPy:

- ``emulated`` runs the CuPy-only branches on the CPU (``gpunet.testing.emulated``: NumPy arrays
  standing for device memory, the CUDA kernel bodies compiled by g++), so CI executes the GPU
  path's own code; it skips only where g++ is missing;
- ``cupy`` skips with the reason the backend module gives when no GPU is usable, and runs when one is.

The whole suite runs with ``GPUNET_CHECK_SAVED=1``: every array a layer keeps for its backward
is read-only on NumPy until that backward, so a write into one fails where it happens.

A test that checks what only a real GPU has (memory pools, cuRAND's streams) asks for
``real_gpu`` or skips itself on ``backend.emulated()``.
"""

import os

os.environ.setdefault("GPUNET_CHECK_SAVED", "1")  # before gpunet loads: kept arrays read-only (gpunet.nn)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gpunet import backend  # noqa: E402
from gpunet.testing import emulated  # noqa: E402


def _gpu_skip_reason():
    return None if backend.gpu_available() else f"no usable GPU: {backend.gpu_unavailable_reason()}"


BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("emulated", id="emulated", marks=pytest.mark.emulated),
    pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module of the backend under test (activated for the test's duration)."""
    name = request.param
    if name == "cupy":
        reason = _gpu_skip_reason()
        if reason:
            pytest.skip(reason)
    if name == "emulated" and emulated.available():
        pytest.skip(emulated.available())
    with backend.using(name) as module:
        yield module


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _backend_restored():
    """Whatever a test selects (a CLI's --backend, say) ends with it: the next test starts on the same
    backend."""
    before = backend.selected()
    yield
    if backend.selected() != before:
        backend.use(before)
