"""Run a CUDA kernel body of ``kernels.SOURCES`` on the CPU: the same text, compiled by g++.

An elementwise body becomes the inside of ``for (i = 0; i < n; ++i)`` in a C++
function, with ``T`` (and other placeholders) typedef'd, every non-raw parameter
bound as a reference to element ``i`` (as CuPy does), raw parameters as an
indexable array with ``size()``, and scalars as values. A raw kernel (1-d grid,
no shared memory or barriers) is run thread by thread with ``threadIdx``,
``blockIdx``, ``blockDim`` and ``gridDim`` defined. Shared objects are cached per
machine in a temporary directory shared by the processes of one user (pytest's workers compile
each text once), keyed by the generated text. Needs g++ only.

``tests/kernel_cpu.py`` checks every body against its NumPy twin; ``gpunet.testing.emulated``
runs the bodies in place of the GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading

import numpy as np

CTYPES = {
    "float32": "float",
    "float64": "double",
    "int8": "signed char",
    "uint8": "unsigned char",
    "int16": "short",
    "int32": "int",
    "int64": "long long",
    "uint32": "unsigned int",
    "uint64": "unsigned long long",
    "bool": "bool",
}

PRELUDE = r"""
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <algorithm>
using std::min; using std::max;
#define CUDART_NAN NAN
#define CUDART_NAN_F NAN
#define CUDART_INF INFINITY
#define CUDART_INF_F INFINITY
template <class U> struct RawArg {   // what a raw CArray offers a body: x[k] and x.size()
    U* p; ptrdiff_t n;
    U& operator[](ptrdiff_t k) const { return p[k]; }
    ptrdiff_t size() const { return n; }
};
struct IndArg { ptrdiff_t n; ptrdiff_t size() const { return n; } };
"""

_cache: dict[str, ctypes.CDLL] = {}
_lock = threading.Lock()


def parse_params(spec: str):
    """``"raw T x, int64 C"`` -> [(name, type, raw)], as CuPy reads an ElementwiseKernel signature."""
    out = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        words = part.split()
        out.append((words[-1], words[-2], "raw" in words[:-2]))
    return out


def _cache_dir() -> str:
    d = os.path.join(
        tempfile.gettempdir(), f"gpunet-kernel-cpu-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def _compile(code: str) -> ctypes.CDLL:
    key = hashlib.sha1(code.encode()).hexdigest()[:16]
    with _lock:
        if key in _cache:
            return _cache[key]
        d = _cache_dir()
        so = os.path.join(d, key + ".so")
        if not os.path.exists(so):
            with tempfile.TemporaryDirectory(dir=d) as tmp:  # another process may build the same text
                cpp, out = os.path.join(tmp, key + ".cpp"), os.path.join(tmp, key + ".so")
                with open(cpp, "w") as f:
                    f.write(code)
                r = subprocess.run(
                    ["g++", "-std=c++17", "-O1", "-fPIC", "-shared", "-o", out, cpp],
                    capture_output=True,
                    text=True,
                )
                if r.returncode:
                    raise RuntimeError(
                        f"g++ rejected the CPU harness of this text:\n{code[:3000]}\n{r.stderr[-3000:]}"
                    )
                os.replace(out, so)  # atomic: never a half-written library
        _cache[key] = ctypes.CDLL(so)
        return _cache[key]


def _ctype(t: str, types: dict) -> str:
    return CTYPES[np.dtype(types[t]).name] if t in types else CTYPES[np.dtype(t).name]


def elementwise_code(src, types: dict) -> str:
    """The C++ text of elementwise ``src`` with placeholders ``types`` (e.g. {"T": np.float32})."""
    ins, outs = parse_params(src.in_params), parse_params(src.out_params)
    lines = [PRELUDE] + [f"typedef {CTYPES[np.dtype(d).name]} {n};" for n, d in sorted(types.items())]
    lines += [
        src.preamble,
        'extern "C" void run(ptrdiff_t _n, void** _a, const ptrdiff_t* _sz) {',
        "  IndArg _ind{_n}; (void)_ind;",
    ]
    refs = []
    for k, (name, t, raw) in enumerate(ins + outs):
        c = _ctype(t, types)
        const = "const " if k < len(ins) else ""
        if name in src.scalars:
            lines.append(f"  const {c} {name} = *(const {c}*)_a[{k}];")
        elif raw:
            lines.append(f"  RawArg<{const}{c}> {name}{{({const}{c}*)_a[{k}], _sz[{k}]}};")
        else:
            lines.append(f"  {const}{c}* _raw_{name} = ({const}{c}*)_a[{k}];")
            refs.append(f"    {const}{t if t in types else c} &{name} = _raw_{name}[i];")
    lines += (
        ["  for (ptrdiff_t i = 0; i < _n; ++i) {"] + refs + [src.body + ";", "  }", "}"]
    )  # CuPy adds the ";" too
    return "\n".join(lines)


def run_elementwise(src, types: dict, n: int, **args):
    """Run elementwise ``src`` for i in [0, n) on NumPy arrays/scalars ``args`` (outputs change in place).

    Arrays must already have the dtype the kernel expects and be C-contiguous;
    non-raw arrays need ``n`` elements (broadcast them first, as CuPy would).
    """
    lib = _compile(elementwise_code(src, types))
    params = parse_params(src.in_params) + parse_params(src.out_params)
    missing = {p[0] for p in params} - set(args)
    if missing:
        raise TypeError(f"kernel {src.name!r}: missing arguments {sorted(missing)}")
    keep, ptrs, sizes = [], (ctypes.c_void_p * len(params))(), (ctypes.c_ssize_t * len(params))()
    for k, (name, t, raw) in enumerate(params):
        dt = np.dtype(types.get(t, t))
        a = args[name]
        if name in src.scalars:
            a = np.array(a, dtype=dt)
        elif not isinstance(a, np.ndarray) or a.dtype != dt or not a.flags.c_contiguous:
            raise TypeError(f"kernel {src.name!r}: argument {name!r} must be a C-contiguous {dt} array")
        elif not raw and a.size != n:
            raise ValueError(f"kernel {src.name!r}: argument {name!r} has {a.size} elements, expected {n}")
        keep.append(a)
        ptrs[k], sizes[k] = a.ctypes.data, a.size
    lib.run(ctypes.c_ssize_t(n), ptrs, sizes)


def raw_code(src, arg_types) -> str:
    """C++ text running raw ``src`` thread by thread; ``arg_types`` are the C types of its parameters."""
    for bad in ("__syncthreads", "__shared__", "atomic"):
        if bad in src.body:
            raise ValueError(f"kernel {src.name!r} uses {bad}: it cannot run thread by thread on the CPU")
    call = ", ".join(
        f"({t})_a[{k}]" if t.rstrip().endswith("*") else f"*({t}*)_a[{k}]" for k, t in enumerate(arg_types)
    )
    return "\n".join(
        [
            PRELUDE,
            "struct dim3_ { unsigned x = 0, y = 0, z = 0; };",
            "static dim3_ threadIdx, blockIdx, blockDim, gridDim;",
            "#define __global__",
            "#define __device__",
            "#define __forceinline__ inline",
            "#define __restrict__ __restrict",
            src.body,
            'extern "C" void launch(unsigned _g, unsigned _b, void** _a) {',
            "  gridDim.x = _g; blockDim.x = _b; gridDim.y = gridDim.z = blockDim.y = blockDim.z = 1;",
            "  for (blockIdx.x = 0; blockIdx.x < _g; ++blockIdx.x)",
            "    for (threadIdx.x = 0; threadIdx.x < _b; ++threadIdx.x)",
            f"      {src.function}({call});",
            "}",
        ]
    )


def run_raw(src, arg_types, grid: int, block: int, *args):
    """Run raw ``src`` over a 1-d grid on the CPU; arrays change in place, scalars are NumPy scalars."""
    lib = _compile(raw_code(src, arg_types))
    keep, ptrs = [], (ctypes.c_void_p * len(args))()
    for k, a in enumerate(args):
        a = a if isinstance(a, np.ndarray) else np.array(a)
        keep.append(a)
        ptrs[k] = a.ctypes.data
    lib.launch(ctypes.c_uint(grid), ctypes.c_uint(block), ptrs)
