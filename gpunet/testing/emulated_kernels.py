"""The emulated GPU's kernels: ``cupy.ElementwiseKernel`` and ``cupy.RawKernel`` run on the CPU.

An elementwise kernel runs its CUDA body (compiled by g++, ``gpunet.testing.kernel_cpu``) over
its broadcast arguments as CuPy would: any strides, since arguments are gathered into contiguous
buffers and outputs scattered back. A raw kernel runs thread by thread over a 1-d grid and gets
each array argument as its raw address, exactly what a GPU receives: no strides.
"""

from __future__ import annotations

import types

import numpy as np

from . import kernel_cpu


def _is_host(x) -> bool:
    """A plain NumPy array (not 0-d): host memory, which CuPy refuses where it wants device arrays."""
    return type(x) is np.ndarray and x.ndim > 0


def _plain(x):
    return x.view(np.ndarray) if isinstance(x, np.ndarray) and type(x) is not np.ndarray else x


def _device(shape, dtype, args):
    """A new array of the device-array type among ``args`` (an output CuPy would allocate)."""
    like = next((a for a in args if isinstance(a, np.ndarray) and type(a) is not np.ndarray), None)
    if like is None:
        raise TypeError("an output to allocate, but no device array among the arguments")
    return np.empty(shape, dtype).view(type(like))


def _placeholder(t: str) -> bool:
    """A type placeholder of a kernel signature (``T``, ``S``), as against a dtype name (``float32``)."""
    return len(t) == 1 and t.isupper()


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) and (a.ndim > 0 or type(a) is not np.ndarray)


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` whose body runs on the CPU (see the module docstring)."""

    def __init__(self, in_params, out_params, operation, name="kernel", preamble="", **_):
        self.in_params, self.out_params, self.body, self.name, self.preamble = (
            in_params,
            out_params,
            operation,
            name,
            preamble,
        )
        self.ins, self.outs = kernel_cpu.parse_params(in_params), kernel_cpu.parse_params(out_params)

    def __call__(self, *args, size=None, stream=None):
        params = self.ins + self.outs
        if len(args) == len(self.ins):
            args = args + (None,) * len(self.outs)
        if len(args) != len(params):
            raise TypeError(
                f"{self.name}: expected {len(self.ins)} or {len(params)} arguments, got {len(args)}"
            )
        if any(_is_host(a) for a in args):
            raise TypeError(f"{self.name}: a NumPy array among the arguments (CuPy takes device arrays only)")
        types_, scalars = {}, []
        for (name, t, raw), a in zip(params, args):
            if a is None or not _is_array(a):
                if a is not None:
                    scalars.append(name)
                continue
            if not _placeholder(t):
                continue
            if types_.setdefault(t, a.dtype) != a.dtype:
                raise TypeError(f"{self.name}: type is mismatched: {t} is {types_[t]} and {a.dtype} ({name})")
        shapes = [
            a.shape for (name, t, raw), a in zip(params, args) if a is not None and _is_array(a) and not raw
        ]
        shape = np.broadcast_shapes(*shapes) if shapes else (size,)
        n = int(np.prod(shape))
        src = types.SimpleNamespace(
            name=self.name,
            in_params=self.in_params,
            out_params=self.out_params,
            body=self.body,
            preamble=self.preamble,
            scalars=tuple(scalars),
        )
        call, back = {}, []
        for k, ((name, t, raw), a) in enumerate(zip(params, args)):
            if _placeholder(t) and t not in types_:
                raise TypeError(f"{self.name}: the type {t} of {name} follows from no array argument")
            dt = np.dtype(types_[t]) if _placeholder(t) else np.dtype(t)
            if name in scalars:
                call[name] = dt.type(a)
                continue
            if a is None:  # an output CuPy would allocate
                a = _device(shape, dt, args)
                args = args[:k] + (a,) + args[k + 1 :]
            buf = np.ascontiguousarray((_plain(a) if raw else np.broadcast_to(_plain(a), shape)), dtype=dt)
            call[name] = buf
            if k >= len(self.ins):
                if not raw and tuple(a.shape) != tuple(shape):
                    raise ValueError(f"{self.name}: output {name} has shape {a.shape}, expected {shape}")
                back.append((a, buf))
        kernel_cpu.run_elementwise(src, {t: d for t, d in types_.items()}, n, **call)
        for a, buf in back:
            _plain(a)[...] = buf.reshape(a.shape)
        outs = args[len(self.ins) :]
        return outs[0] if len(outs) == 1 else outs


_CTYPE = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.uint64): "unsigned long long",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int8): "signed char",
    np.dtype(np.bool_): "bool",
}


class RawKernel:
    """``cupy.RawKernel``: the source runs thread by thread on the CPU over a 1-d grid; each array
    argument is passed as its raw address, as a GPU receives it (strides are not passed)."""

    def __init__(self, code, name, options=(), **_):
        self.src = types.SimpleNamespace(name=name, body=code, function=name)

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid, block = tuple(np.atleast_1d(grid)), tuple(np.atleast_1d(block))
        if any(int(g) != 1 for g in grid[1:] + block[1:]):
            raise ValueError(f"{self.src.name}: the emulated GPU runs 1-d grids only, got {grid} x {block}")
        if any(_is_host(a) for a in args):
            raise TypeError(f"{self.src.name}: a NumPy array among the arguments (CuPy takes device arrays)")
        arg_types, vals = [], []
        for a in args:
            if isinstance(a, np.ndarray) and (a.ndim > 0 or type(a) is not np.ndarray):
                arg_types.append(_CTYPE[a.dtype] + "*")
                vals.append(a.view(np.ndarray))  # its address only: no strides
            else:
                a = np.asarray(
                    a
                    if not isinstance(a, (bool, int, float))
                    else (np.int64(a) if isinstance(a, int) else np.float64(a))
                )
                arg_types.append(_CTYPE[a.dtype])
                vals.append(a)
        kernel_cpu.run_raw(self.src, arg_types, int(grid[0]), int(block[0]), *vals)
