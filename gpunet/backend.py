"""The array-backend switch: the only module in gpunet that imports cupy.

Every other module asks this one for the array module (``xp``) or moves arrays
with it. The backend is chosen once, by ``use(name)``, by the environment
variable ``GPUNET_BACKEND`` or by a script's ``--backend`` flag:

- ``auto`` (default): CuPy when it imports *and* a tiny operation on the GPU
  succeeds, otherwise NumPy. The decision and its reason are logged once.
- ``numpy`` / ``cpu``: NumPy.
- ``cupy`` / ``gpu``: CuPy; a ``BackendError`` when no GPU is usable (never a
  silent fall-back).
- ``emulated``: the GPU emulated on the CPU (``gpunet.testing.emulated``): every CuPy-only
  branch runs, on NumPy arrays, with the CUDA kernel bodies compiled for the CPU by g++.
  ``name()`` then says ``"cupy"`` and ``emulated()`` says True. For tests and debugging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import numpy

log = logging.getLogger("gpunet")

_ALIASES = {
    "auto": "auto",
    "numpy": "numpy",
    "cpu": "numpy",
    "cupy": "cupy",
    "gpu": "cupy",
    "emulated": "emulated",
}

_cupy = None  # the cupy module once it has been imported and probed
_cupy_error = None  # why cupy is not usable (str), once probed
_probed = False
_active = None  # "numpy" or "cupy"; None until first use
_device = 0
_emulated = False  # _cupy is gpunet.testing.emulated's stand-in module


class BackendError(RuntimeError):
    """The requested backend cannot be used."""


def _probe_cupy(device: int = 0):
    """Import cupy and run a tiny operation on ``device``; remember why it failed."""
    global _cupy, _cupy_error, _probed
    if _probed:
        return _cupy
    _probed = True
    _cupy = None  # a failed re-probe (another device) must not leave the old module looking usable
    try:
        import cupy  # the one place cupy is imported
    except Exception as e:  # ImportError, or a broken CUDA install raising anything
        _cupy_error = f"cupy does not import ({type(e).__name__}: {e})"
        return None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if device >= n:
            raise BackendError(f"GPU index {device} requested but only {n} GPU(s) are visible")
        with cupy.cuda.Device(device):
            a = cupy.arange(4, dtype=cupy.float32)
            float((a * 2).sum())  # forces a kernel launch and a copy back
    except Exception as e:
        _cupy_error = f"cupy imports but no GPU is usable ({type(e).__name__}: {e})"
        return None
    _cupy = cupy
    _cupy_error = None
    return cupy


def use(name: str | None = None, device: int | None = None) -> str:
    """Select the backend (``auto``, ``numpy``/``cpu``, ``cupy``/``gpu``, ``emulated``); return the one chosen
    (``"numpy"`` or ``"cupy"``; the emulated GPU is ``"cupy"``).

    ``name=None`` reads ``GPUNET_BACKEND`` (default ``auto``); ``device`` is the GPU index.
    """
    global _active, _device, _probed, _cupy, _cupy_error, _emulated
    if name is None:
        name = os.environ.get("GPUNET_BACKEND", "auto")
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ValueError(f"backend: expected one of {sorted(_ALIASES)}, got {name!r}")
    if key == "emulated":
        from .testing import emulated

        why = emulated.available()
        if why:
            raise BackendError(f"backend 'emulated' requested but {why}")
        _cupy, _cupy_error, _probed, _emulated, _active = emulated.module(), None, True, True, "cupy"
        log.info("gpunet backend: cupy emulated on the CPU (asked for explicitly)")
        return _active
    if _emulated:  # leaving the emulated GPU: probe for a real one again
        _cupy, _cupy_error, _probed, _emulated = None, None, False, False
    if device is not None:
        device = int(device)
        if device < 0:
            raise ValueError(f"device: expected a GPU index >= 0, got {device}")
        if device != _device:
            _probed = False  # probe again on the new device
        _device = device
    if key == "numpy":
        _active = "numpy"
        log.info("gpunet backend: numpy (asked for explicitly)")
        return _active
    cp = _probe_cupy(_device)
    if key == "cupy":
        if cp is None:
            raise BackendError(
                f"backend 'cupy' requested but {_cupy_error}; "
                "use --backend numpy (or GPUNET_BACKEND=numpy) to run on the CPU"
            )
        cp.cuda.Device(_device).use()
        _active = "cupy"
        log.info("gpunet backend: cupy on GPU %d (asked for explicitly)", _device)
        return _active
    if cp is not None:
        cp.cuda.Device(_device).use()
        _active = "cupy"
        log.info("gpunet backend: cupy on GPU %d (auto: a GPU is usable)", _device)
    else:
        _active = "numpy"
        log.info("gpunet backend: numpy (auto: %s)", _cupy_error)
    return _active


def name() -> str:
    """Name of the active backend, ``"numpy"`` or ``"cupy"`` (choosing it on first call)."""
    if _active is None:
        use()
    return _active


def selected() -> str:
    """What ``use`` was last given, resolved: ``"numpy"``, ``"cupy"`` or ``"emulated"`` (``name()``
    says ``"cupy"`` for the emulated GPU too); ``use(selected())`` restores it."""
    return "emulated" if _emulated and name() == "cupy" else name()


@contextlib.contextmanager
def using(backend_name: str):
    """``with using("numpy"): ...``: run a block on another backend, then restore the one before."""
    previous = selected()
    use(backend_name)
    try:
        yield xp()
    finally:
        use(previous)


def emulated() -> bool:
    """True while the emulated GPU stands in for CuPy (``use("emulated")``)."""
    return _emulated


def gpu_available() -> bool:
    """True when CuPy imports and a GPU is really usable."""
    return _probe_cupy(_device) is not None


def gpu_unavailable_reason() -> str | None:
    """Why CuPy cannot be used, or None when it can."""
    _probe_cupy(_device)
    return _cupy_error


def xp():
    """The array module of the active backend (``numpy`` or ``cupy``)."""
    return _cupy if name() == "cupy" else numpy


def get_array_module(*arrays):
    """The array module (numpy or cupy) the given arrays live in."""
    if _cupy is None and not _probed and "cupy" in sys.modules:
        _probe_cupy(_device)  # the caller made CuPy arrays before gpunet chose a backend
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return numpy


def is_device_array(a) -> bool:
    """True for a CuPy array."""
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def to_device(a, dtype=None):
    """Move ``a`` to the active backend (a no-op when it is already there)."""
    if name() == "cupy":
        out = _cupy.asarray(a)
    else:
        out = to_numpy(a)
    if dtype is not None and out.dtype != numpy.dtype(dtype):
        out = out.astype(dtype)
    return out


def to_numpy(a):
    """Return ``a`` as a NumPy array (copying from the GPU when needed)."""
    if is_device_array(a):
        return _cupy.asnumpy(a)
    return numpy.asarray(a)


def to_backend(a, backend: str):
    """Move ``a`` to the named backend (``numpy`` or ``cupy``)."""
    key = _ALIASES.get(backend, backend)
    if key == "numpy":
        return to_numpy(a)
    if _probe_cupy(_device) is None:
        raise BackendError(f"cannot move an array to cupy: {_cupy_error}")
    return _cupy.asarray(a)


def synchronize():
    """Wait for all queued GPU work (no-op on NumPy)."""
    if _active == "cupy":
        _cupy.cuda.Device().synchronize()


def default_rng(seed):
    """A random generator of the active backend, seeded by ``seed`` (int or sequence of ints)."""
    if name() == "cupy":
        if not isinstance(seed, (int, numpy.integer)):
            # fold a sequence into one int through numpy's SeedSequence (works on every CuPy version)
            seed = int(numpy.random.SeedSequence(seed).generate_state(1, numpy.uint64)[0] >> 1)
        return _cupy.random.default_rng(int(seed))
    return numpy.random.default_rng(seed)


def pinned_empty(shape, dtype):
    """Host array in page-locked memory on CuPy (fast async copies); a plain array on NumPy."""
    if name() != "cupy":
        return numpy.empty(shape, dtype)
    dtype = numpy.dtype(dtype)
    size = int(numpy.prod(shape)) * dtype.itemsize
    mem = _cupy.cuda.alloc_pinned_memory(max(size, 1))
    return numpy.frombuffer(mem, dtype, int(numpy.prod(shape))).reshape(shape)


def stream():
    """A new non-blocking CUDA stream on CuPy; None on NumPy."""
    return _cupy.cuda.Stream(non_blocking=True) if name() == "cupy" else None


def cupy_toolchain():
    """The cupy module for code generation and NVRTC only (no device is touched); None if it does not import.

    For ``gpunet.nvrtc``, which compiles kernels on machines without a GPU.
    """
    try:
        import cupy  # the one place cupy is imported
    except Exception:  # ImportError, or a broken CUDA install raising anything
        return None
    return cupy


def cupy_module():
    """The cupy module when a GPU is usable, else None (for code paths that need raw CUDA)."""
    return _cupy if _probe_cupy(_device) is not None else None
