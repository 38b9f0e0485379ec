"""One launch that updates every parameter of a model (CuPy): the multi-tensor optimizer kernel.

For each update rule of ``gpunet/optim.py`` and each float dtype, ``declare`` makes a
raw kernel from the rule's elementwise kernel: the same body text, with the
rule's arrays read through a table of pointers and its scalars from a device
vector, so one launch walks all parameters as one flat index range.

- ``tab``: (P, 1 + A) int64; row k = [first flat index of parameter k, then the
  pointer of each array of the rule in signature order: gradient, weights, state...].
  A thread finds its row by binary search over the first column.
- ``hp``: float64 [1 - lr * weight_decay, then the rule's scalars in signature order].
  ``write_scalars`` fills it on the stream before each step, outside any CUDA
  graph, so a captured launch reads each step's values (lr is never baked in).

Tables are uploaded from page-locked host copies kept alive with them, so an
upload can also be captured into a graph; a table made during a capture is never dropped.
"""
from __future__ import annotations

import numpy as np

from . import backend, kernels

_CODE = """typedef {ctype} T;
extern "C" __global__ void {fn}(const long long* __restrict__ tab, const int n_params,
                                const long long total, const double* __restrict__ hp) {{
  for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < total;
       j += (long long)blockDim.x * gridDim.x) {{
    int lo = 0, hi = n_params - 1;
    while (lo < hi) {{ const int mid = (lo + hi + 1) >> 1; if (tab[mid * {stride}] <= j) lo = mid; else hi = mid - 1; }}
    const long long* row = tab + lo * {stride};
    const long long e = j - row[0];
{binds}
    w *= (T)hp[0];
    {body};
  }}
}}
"""
CTYPES = {"float32": "float", "float64": "double"}
BLOCK = 256
MAX_GRID = 4096       # grid-stride loop beyond this many blocks
_KEEP = 16            # eager tables kept (gradients move between a few memory-pool blocks)


def _names(spec):
    return [p.split()[-1] for p in spec.split(",") if p.strip()]


def arrays_of(src):
    """Array parameters of elementwise ``src`` in table order (inputs that are not scalars, then outputs)."""
    return [n for n in _names(src.in_params) if n not in src.scalars] + _names(src.out_params)


def declare(src, dtype_name: str, module: str):
    """Register the multi-tensor twin of elementwise ``src`` for ``float32``/``float64``; returns the Kernel."""
    arrays = arrays_of(src)
    if arrays[:2] != ["dw", "w"]:
        raise ValueError(f"kernel {src.name!r}: a multi-tensor update needs arrays dw, w first, got {arrays}")
    binds = [f"    const T {n} = (T)hp[{1 + k}];" for k, n in enumerate(src.scalars)]
    binds += [f"    {'const ' if k == 0 else ''}T &{n} = (({'const ' if k == 0 else ''}T*)row[{1 + k}])[e];"
              for k, n in enumerate(arrays)]
    fn = f"gpunet_multi_{src.name}_{dtype_name}"
    code = _CODE.format(ctype=CTYPES[dtype_name], fn=fn, stride=1 + len(arrays), binds="\n".join(binds),
                        body=src.body)
    return kernels.raw(f"multi_{src.name}_{dtype_name}", code, fn, module=module)


def table_rows(arrays_per_param):
    """Host rows of ``tab`` for [[dw, w, state...] per parameter] and the total element count."""
    rows, start = [], 0
    for arrays in arrays_per_param:
        rows.append([start] + [a.data.ptr if hasattr(a, "data") and hasattr(a.data, "ptr") else a.ctypes.data
                               for a in arrays])
        start += arrays[1].size
    return rows, start


def scalar_vector(src, decay_factor: float, values: dict) -> np.ndarray:
    """The host copy of ``hp``: float64 [decay_factor, values of src's scalars in signature order]."""
    return np.array([decay_factor] + [values[n] for n in src.scalars], np.float64)


class MultiTensor:
    """Launches the multi-tensor twin of one rule's elementwise kernel ``src``."""

    def __init__(self, src):
        self.src = src
        self.hp = None
        self._tables = {}   # pointer rows -> (pinned host copy, device table, made during a capture)

    def write_scalars(self, xp, decay_factor: float, values: dict):
        """Queue the step's scalars into the device vector ``hp`` (call outside a CUDA graph)."""
        host = scalar_vector(self.src, decay_factor, values)
        if self.hp is None:
            self.hp = xp.empty(host.size, np.float64)
        staged = xp.asarray(host)          # CuPy stages this through pinned memory: no stall of the queue
        self.hp.data.copy_from_device_async(staged.data, host.nbytes)

    def _table(self, xp, rows):
        key = tuple(map(tuple, rows))
        hit = self._tables.get(key)
        if hit is None:
            host = backend.pinned_empty((len(rows), len(rows[0])), np.int64)
            host[...] = rows
            dev = xp.empty(host.shape, np.int64)
            dev.data.copy_from_host_async(host.ctypes.data, host.nbytes)
            if len(self._tables) >= _KEEP:
                for old in [k for k, v in self._tables.items() if not v[2]][:_KEEP // 2]:
                    del self._tables[old]
            hit = self._tables[key] = (host, dev, xp.cuda.get_current_stream().is_capturing())
        return hit[1]

    def launch(self, xp, arrays_per_param):
        """One launch over [[dw, w, state...] per parameter] (all of one dtype, C-contiguous)."""
        rows, total = table_rows(arrays_per_param)
        dtype = arrays_per_param[0][1].dtype.name
        kern = kernels.SOURCES[f"multi_{self.src.name}_{dtype}"]
        grid = max(1, min(-(-total // BLOCK), MAX_GRID))
        kernels.Kernel(kern)((grid,), (BLOCK,), (self._table(xp, rows), np.int32(len(rows)), np.int64(total),
                                                 self.hp))
