"""An emulated GPU: a stand-in for the cupy module that runs gpunet's CuPy-only branches on the CPU.

``gpunet.backend.use("emulated")`` (or ``GPUNET_BACKEND=emulated``, ``--backend emulated``)
installs ``module()`` where the backend keeps cupy, and reports the backend as ``"cupy"``: every
branch that asks for CuPy (``cuda_sources.on_gpu``, ``xp is not numpy``, ``backend.name() == "cupy"``)
takes its GPU side, and what it launches is the real thing:

- arrays are ``ndarray``, a NumPy subclass standing for device memory (``.data.ptr`` is its
  address, ``.get()`` copies it to a plain NumPy array). As on CuPy, a ufunc refuses a plain NumPy
  array argument (``TypeError``): host data must be moved with ``asarray`` first;
- ``ElementwiseKernel`` runs the kernel's own CUDA body, compiled for the CPU by g++
  (``gpunet.testing.kernel_cpu``), over the broadcast arguments as CuPy would (any strides:
  arguments are gathered into contiguous buffers and outputs scattered back);
- ``RawKernel`` runs its CUDA source thread by thread with the raw addresses of its array
  arguments, exactly what a GPU receives: a strided view passed to it is misread as flat memory,
  as on a GPU;
- streams, events, pinned memory and memory pools keep their interfaces and run synchronously;
  a stream capture refuses matrix products, as CuPy 14's cuBLAS handle does, so the training
  step's CUDA graph falls back to eager steps as it does on a GPU;
- ``random.default_rng`` is NumPy's generator (other streams than cuRAND's, the same API).

What it cannot show: timing, races between streams, cuBLAS's or cuRAND's own numbers.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import types

import numpy as np

from . import kernel_cpu  # noqa: F401  (g++ harness of the kernel bodies)
from .emulated_kernels import ElementwiseKernel, RawKernel, _is_host, _plain

NAME = "gpunet emulated GPU (NumPy arrays, CUDA bodies compiled by g++)"
_capturing = []  # streams being captured (a capture refuses cuBLAS calls)
_BLAS = {"matmul", "dot", "vdot", "inner", "tensordot", "einsum"}


class CaptureRefused(RuntimeError):
    """What CuPy 14's cuBLAS raises when asked for a product while a stream is captured."""


def _refuse_during_capture(what):
    if _capturing:
        raise CaptureRefused(
            f"{what}: calling cuBLAS API during stream capture is currently unsupported "
            "(CuPy 14.2's message; the emulated GPU refuses as it does)"
        )


# ------------------------------------------------------------------ arrays


class MemoryPointer:
    """``a.data``: the address of an array's first element, with CuPy's copy methods."""

    def __init__(self, a):
        self._a = a
        self.ptr = a.__array_interface__["data"][0]

    def copy_from_device_async(self, src, size, stream=None):
        ctypes.memmove(self.ptr, src.ptr, size)

    copy_from_device = copy_from_device_async

    def copy_from_host_async(self, mem, size, stream=None):
        ctypes.memmove(self.ptr, mem, size)

    copy_from_host = copy_from_host_async

    def copy_to_host_async(self, mem, size, stream=None):
        ctypes.memmove(mem, self.ptr, size)

    copy_to_host = copy_to_host_async

    def memset_async(self, value, size, stream=None):
        ctypes.memset(self.ptr, value, size)


def _wrap(x):
    """Results as device arrays: plain NumPy arrays and NumPy scalars (CuPy returns 0-d arrays)."""
    if isinstance(x, ndarray):
        return x
    if isinstance(x, np.ndarray):
        return x.view(ndarray)
    if isinstance(x, np.generic):
        return np.asarray(x).view(ndarray)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class ndarray(np.ndarray):
    """Device memory, emulated: a NumPy array that CuPy-only code paths recognise as a GPU array."""

    @property
    def data(self):
        return MemoryPointer(self)

    @property
    def device(self):
        return cuda.Device(0)

    def get(self, stream=None, out=None):
        """A plain NumPy copy (``cupy.ndarray.get``)."""
        if out is not None:
            out[...] = self.view(np.ndarray)
            return out
        return np.array(self.view(np.ndarray))

    def set(self, arr, stream=None):
        """Copy host ``arr`` into this array (``cupy.ndarray.set``)."""
        self.view(np.ndarray)[...] = arr

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if any(_is_host(x) for x in inputs + (out or ())):
            raise TypeError(
                f"{ufunc.__name__}: a NumPy array among the arguments of a device operation "
                "(CuPy refuses implicit host-to-device transfers; move it with asarray)"
            )
        if ufunc is np.matmul:
            _refuse_during_capture("matmul")
        args = [_plain(x) for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        res = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(res)

    def __repr__(self):
        return "emulated." + repr(self.view(np.ndarray))


# ------------------------------------------------------------------ cuda


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.done = True

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True


class _Graph:
    def launch(self, stream=None):
        raise RuntimeError("the emulated GPU cannot replay a captured graph")


class _Stream:
    _current = []

    def __init__(self, null=False, non_blocking=False, ptr=None):
        self.ptr = 0 if null else id(self)

    def __enter__(self):
        _Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        _Stream._current.pop()
        return False

    def use(self):
        _Stream._current[:] = [self]
        return self

    def record(self, event=None):
        return event or _Event()

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def begin_capture(self, mode=None):
        if self in _capturing:
            raise RuntimeError("stream is already capturing")
        _capturing.append(self)

    def end_capture(self):
        if self not in _capturing:
            raise RuntimeError("stream is not capturing")
        _capturing.remove(self)
        # the captured work already ran: replaying it would run it twice
        raise RuntimeError("the emulated GPU ran the captured work eagerly: it has no graph to replay")

    def is_capturing(self):
        return self in _capturing


_NULL = _Stream(null=True)


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        self.compute_capability = "90"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        pass

    def synchronize(self):
        pass


class _MemoryPool:
    def malloc(self, size):
        raise RuntimeError("the emulated GPU allocates through NumPy")

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


class _Runtime:
    class CUDARuntimeError(RuntimeError):
        pass

    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def memGetInfo():
        return 8 << 30, 16 << 30

    @staticmethod
    def getDeviceProperties(device):
        return {
            "name": NAME.encode(),
            "totalGlobalMem": 16 << 30,
            "major": 9,
            "minor": 0,
            "multiProcessorCount": 1,
            "clockRate": 0,
        }

    @staticmethod
    def runtimeGetVersion():
        return 13000

    @staticmethod
    def driverGetVersion():
        return 13000


cuda = types.SimpleNamespace(
    Device=_Device,
    Stream=_Stream,
    Event=_Event,
    Graph=_Graph,
    MemoryPool=_MemoryPool,
    runtime=_Runtime,
    get_current_stream=lambda device=None: _Stream._current[-1] if _Stream._current else _NULL,
    using_allocator=lambda allocator=None: contextlib.nullcontext(),
    alloc_pinned_memory=lambda size: bytearray(max(int(size), 1)),
    get_device_id=lambda: 0,
    is_available=lambda: True,
)


# ------------------------------------------------------------------ random


class Generator:
    """``cupy.random.Generator``: NumPy's generator, drawing device arrays."""

    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        f = getattr(self._g, name)
        if not callable(f):
            return f

        @functools.wraps(f)
        def draw(*args, **kwargs):
            if "out" in kwargs and kwargs["out"] is not None:
                out = kwargs["out"]
                kwargs["out"] = _plain(out)
                f(*args, **kwargs)
                return out
            return _wrap(f(*[_plain(a) for a in args], **kwargs))

        return draw


random = types.SimpleNamespace(default_rng=Generator, Generator=Generator)


# ------------------------------------------------------------------ the module


def asarray(a, dtype=None, order=None, **_):
    """A device array: ``a`` itself when it already is one (of that dtype), else a copy."""
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    if isinstance(a, ndarray):
        return _plain(a).astype(dtype).view(ndarray)
    return np.array(a, dtype=dtype, order=order or "K", copy=True).view(ndarray)


def array(a, dtype=None, copy=True, order="K", **_):
    return np.array(_plain(a), dtype=dtype, copy=copy, order=order).view(ndarray)


def asnumpy(a, stream=None, out=None):
    """A plain NumPy copy of ``a``."""
    if out is not None:
        out[...] = _plain(a)
        return out
    return np.array(_plain(a))


def get_array_module(*args):
    return _MODULE if any(isinstance(a, ndarray) for a in args) else np


def _wrapped(name, f):
    blas = name in _BLAS

    @functools.wraps(f)
    def call(*args, **kwargs):
        if blas:
            _refuse_during_capture(name)
        if isinstance(f, np.ufunc) and any(_is_host(a) for a in args):
            raise TypeError(f"{name}: a NumPy array among the arguments of a device operation")
        return _wrap(f(*args, **kwargs))

    return call


class _Module(types.ModuleType):
    """numpy's namespace whose functions return device arrays, plus CuPy's own names."""

    def __getattr__(self, name):
        f = getattr(np, name)
        if callable(f) and not isinstance(f, type):
            f = _wrapped(name, f)
            setattr(self, name, f)
        return f


_MODULE = _Module("gpunet.testing.emulated.cupy", __doc__)
for _name, _value in dict(
    ndarray=ndarray,
    ElementwiseKernel=ElementwiseKernel,
    RawKernel=RawKernel,
    cuda=cuda,
    random=random,
    asarray=asarray,
    array=array,
    asnumpy=asnumpy,
    get_array_module=get_array_module,
    __version__="emulated",
    get_default_memory_pool=_MemoryPool,
    get_default_pinned_memory_pool=_MemoryPool,
    ascontiguousarray=lambda a, dtype=None: _wrap(np.ascontiguousarray(a, dtype=dtype)),
).items():
    setattr(_MODULE, _name, _value)
sys.modules.setdefault(_MODULE.__name__, _MODULE)


def module():
    """The emulated cupy module (one per process)."""
    return _MODULE


def available() -> str | None:
    """Why the emulated GPU cannot run here (it needs g++), or None."""
    import shutil

    return (
        None
        if shutil.which("g++")
        else "g++ is not installed (the emulated GPU compiles CUDA bodies with it)"
    )
