"""Shared fixtures: run a test body on every array backend.

``xp`` is parametrized over NumPy and CuPy; the CuPy case skips with the reason
the backend module gives when no GPU is usable, and runs when one is.
"""
import numpy as np
import pytest

from gpunet import backend


def _gpu_skip_reason():
    return None if backend.gpu_available() else f"no usable GPU: {backend.gpu_unavailable_reason()}"


BACKENDS = [
    pytest.param("numpy", id="numpy"),
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
    previous = backend.name()
    backend.use(name)
    try:
        yield backend.xp()
    finally:
        backend.use(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
