"""One launch that updates every parameter of a model (CuPy): the multi-tensor optimizer kernel.

For each update rule of ``gpunet/optim.py`` and each float dtype, ``declare`` makes a
raw kernel from the rule's elementwise kernel: the same body text, with the
rule's arrays read through a table of pointers and its scalars from a device
vector, so one launch walks all parameters as one flat index range.

- ``tab``: (P, 1 + A) int64; row k = [first flat index of parameter k, then the
  pointer of each array of the rule in signature order: gradient, weights, state...].
  A thread finds its row by binary search over the first column.
- ``hp``: float64 [1 - lr * weight_decay, then the rule's scalars in signature order].
  The one-thread kernel ``scalars_<rule>`` (``declare_scalars``) fills it on the device from
  ``lr`` and Adam's step count ``t``, both device memory (it adds 1 to ``t``): a CUDA graph that
  captured it reads each replay's values, and a changed lr is one host write, outside the graph.
  ``write_scalars`` (the host fill) stays for callers that compute them on the host.

A raw pointer carries no strides: ``refusal`` says when the outputs cannot be updated this
way (the optimizer then updates parameter by parameter), ``safe_gradients`` copies a gradient
the kernel could not read as flat memory (a strided view, another dtype, memory it writes).

Tables are uploaded from page-locked host copies kept alive with them, so an
upload can also be captured into a graph; a table made during a capture is never dropped.
"""

from __future__ import annotations

import numpy as np

from . import backend, cuda_sources

_CODE = """typedef {ctype} T;
extern "C" __global__ void {fn}(const long long* __restrict__ tab, const int n_params,
                                const long long total, const double* __restrict__ hp) {{
  for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < total;
       j += (long long)blockDim.x * gridDim.x) {{
    int lo = 0, hi = n_params - 1;
    while (lo < hi) {{
      const int mid = (lo + hi + 1) >> 1;
      if (tab[mid * {stride}] <= j) lo = mid; else hi = mid - 1;
    }}
    const long long* row = tab + lo * {stride};
    const long long e = j - row[0];
{binds}
    w *= (T)hp[0];
    {body};
  }}
}}
"""
CTYPES = {"float32": "float", "float64": "double"}

# the step's scalars from device lr, t and the config vector c = [weight_decay, mu, r, eps, b1, b2]
SCALAR_EXPR = {
    "lr": "L",
    "mu": "c[1]",
    "r": "c[2]",
    "eps": "c[3]",
    "b1": "c[4]",
    "b2": "c[5]",
    "lr_t": "L / (1.0 - pow(c[4], s))",  # Adam's bias corrections at step s (as optim.adam)
    "inv_sqrt_bc2": "1.0 / sqrt(1.0 - pow(c[5], s))",
}
_SCALARS = """extern "C" __global__ void {fn}(double* __restrict__ hp, double* __restrict__ t,
                                const double* __restrict__ lr, const double* __restrict__ c) {{
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const double L = lr[0];
  const double s = t[0] + 1.0;
  t[0] = s;
  hp[0] = 1.0 - L * c[0];
{sets}
}}
"""


def config_vector(cfg) -> np.ndarray:
    """float64 ``c`` of the scalars kernel: [weight_decay, momentum, decay_rate, epsilon, beta1, beta2]."""
    return np.array(
        [cfg.weight_decay, cfg.momentum, cfg.decay_rate, cfg.epsilon, cfg.beta1, cfg.beta2], np.float64
    )


def declare_scalars(src, module: str):
    """Register ``scalars_<rule>``: one thread writes ``hp`` for elementwise rule ``src`` from device
    ``lr`` and ``t`` (t += 1 first; rules without a step count ignore it)."""
    sets = "\n".join(f"  hp[{1 + k}] = {SCALAR_EXPR[n]};" for k, n in enumerate(src.scalars))
    fn = f"gpunet_scalars_{src.name}"
    return cuda_sources.raw(f"scalars_{src.name}", _SCALARS.format(fn=fn, sets=sets), fn, module=module)


BLOCK = 256
MAX_GRID = 4096  # grid-stride loop beyond this many blocks
_KEEP = 16  # eager tables kept (gradients move between a few memory-pool blocks)


def _names(spec):
    return [p.split()[-1] for p in spec.split(",") if p.strip()]


def arrays_of(src):
    """Array parameters of elementwise ``src`` in table order (inputs that are not scalars, then outputs)."""
    return [n for n in _names(src.in_params) if n not in src.scalars] + _names(src.out_params)


def declare(src, dtype_name: str, module: str):
    """Register the multi-tensor twin of elementwise ``src`` for ``float32``/``float64``; returns the
    Kernel."""
    arrays = arrays_of(src)
    if arrays[:2] != ["dw", "w"]:
        raise ValueError(f"kernel {src.name!r}: a multi-tensor update needs arrays dw, w first, got {arrays}")
    binds = [f"    const T {n} = (T)hp[{1 + k}];" for k, n in enumerate(src.scalars)]
    binds += [
        f"    {'const ' if k == 0 else ''}T &{n} = (({'const ' if k == 0 else ''}T*)row[{1 + k}])[e];"
        for k, n in enumerate(arrays)
    ]
    fn = f"gpunet_multi_{src.name}_{dtype_name}"
    code = _CODE.format(
        ctype=CTYPES[dtype_name], fn=fn, stride=1 + len(arrays), binds="\n".join(binds), body=src.body
    )
    return cuda_sources.raw(f"multi_{src.name}_{dtype_name}", code, fn, module=module)


def _ptr(a) -> int:
    """The address of ``a``'s first element (CuPy: device memory; NumPy: host memory)."""
    return a.data.ptr if hasattr(a, "data") and hasattr(a.data, "ptr") else a.ctypes.data


def _span(a):
    """[first byte, last byte + 1) of a C-contiguous array."""
    p = _ptr(a)
    return p, p + a.nbytes


def _overlaps(a, spans) -> bool:
    lo, hi = _span(a)
    return a.nbytes > 0 and any(lo < h and l < hi for l, h in spans)


def refusal(arrays_per_param) -> str | None:
    """Why the kernel cannot update [[dw, w, state...] per parameter] in place; None when it can.

    The kernel indexes every array as flat memory of ``w``'s size and writes w and the
    state arrays (the outputs): each output must be C-contiguous, of one float dtype
    (``CTYPES``) and ``w``'s shape, and no two outputs may share memory. Gradients are
    not checked here: ``safe_gradients`` copies any that the kernel could not read.
    """
    spans, dtype = [], None
    for k, arrays in enumerate(arrays_per_param):
        w = arrays[1]
        dtype = dtype or w.dtype
        for j, a in enumerate(arrays[1:], 1):
            what = f"array {j} of parameter {k}"
            if a.dtype != dtype or a.dtype.name not in CTYPES:
                return f"{what} is {a.dtype}, expected {dtype} (one float dtype for all)"
            if tuple(a.shape) != tuple(w.shape):
                return f"{what} has shape {tuple(a.shape)}, expected {tuple(w.shape)}"
            if not a.flags.c_contiguous:
                return f"{what} is not C-contiguous (strides {a.strides})"
            if _overlaps(a, spans):
                return f"{what} shares memory with another array the update writes"
            if a.nbytes:
                spans.append(_span(a))
    return None


def safe_gradients(xp, arrays_per_param):
    """[[dw, w, state...]] with each gradient made readable as flat memory: a C-contiguous array of
    w's dtype and shape that shares no memory with any output (a copy where it was not)."""
    outs = [_span(a) for arrays in arrays_per_param for a in arrays[1:] if a.nbytes]
    fixed = []
    for dw, w, *state in arrays_per_param:
        if tuple(dw.shape) != tuple(w.shape):
            raise ValueError(
                f"multi-tensor update: gradient of shape {tuple(dw.shape)} for a parameter of "
                f"shape {tuple(w.shape)}"
            )
        if dw.dtype != w.dtype or not dw.flags.c_contiguous:
            dw = xp.ascontiguousarray(dw, dtype=w.dtype)
        elif _overlaps(dw, outs):
            dw = dw.copy()
        fixed.append([dw, w] + state)
    return fixed


def table_rows(arrays_per_param):
    """Host rows of ``tab`` for [[dw, w, state...] per parameter] and the total element count.

    Raises ValueError for arrays the kernel would misread (see ``refusal``; a gradient must be
    C-contiguous and of w's dtype and shape too): a raw pointer carries no strides.
    """
    why = refusal(arrays_per_param)
    for k, (dw, w, *_) in enumerate(arrays_per_param):
        if why is None and (
            dw.dtype != w.dtype or tuple(dw.shape) != tuple(w.shape) or not dw.flags.c_contiguous
        ):
            why = (
                f"the gradient of parameter {k} is not a C-contiguous {w.dtype} array "
                f"of shape {tuple(w.shape)}"
            )
    if why is not None:
        raise ValueError(f"multi-tensor update: {why}")
    rows, start = [], 0
    for arrays in arrays_per_param:
        rows.append([start] + [_ptr(a) for a in arrays])
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
        self._tables = {}  # pointer rows -> (pinned host copy, device table, made during a capture)

    def write_scalars(self, xp, decay_factor: float, values: dict):
        """Queue the step's scalars into the device vector ``hp`` (call outside a CUDA graph)."""
        host = scalar_vector(self.src, decay_factor, values)
        if self.hp is None:
            self.hp = xp.empty(host.size, np.float64)
        staged = xp.asarray(host)  # CuPy stages this through pinned memory: no stall of the queue
        self.hp.data.copy_from_device_async(staged.data, host.nbytes)

    def _table(self, xp, rows):
        key = tuple(map(tuple, rows))
        hit = self._tables.get(key)
        if hit is not None and not hit[2] and xp.cuda.get_current_stream().is_capturing():
            # an eager step's table (the warm-up's gradients sit in the same pool blocks) now read by a
            # graph: kept from here on, as one made during a capture (evicted, its memory would be reused)
            hit = self._tables[key] = (hit[0], hit[1], True)
        if hit is None:
            host = backend.pinned_empty((len(rows), len(rows[0])), np.int64)
            host[...] = rows
            dev = xp.empty(host.shape, np.int64)
            dev.data.copy_from_host_async(host.ctypes.data, host.nbytes)
            if len(self._tables) >= _KEEP:
                for old in [k for k, v in self._tables.items() if not v[2]][: _KEEP // 2]:
                    del self._tables[old]
            hit = self._tables[key] = (host, dev, xp.cuda.get_current_stream().is_capturing())
        return hit[1]

    def launch(self, xp, arrays_per_param):
        """One launch over [[dw, w, state...] per parameter]; the outputs (w, state) must pass ``refusal``,
        gradients are copied where the kernel could not read them (``safe_gradients``)."""
        arrays_per_param = safe_gradients(xp, arrays_per_param)
        rows, total = table_rows(arrays_per_param)
        dtype = arrays_per_param[0][1].dtype.name
        kern = cuda_sources.SOURCES[f"multi_{self.src.name}_{dtype}"]
        grid = max(1, min(-(-total // BLOCK), MAX_GRID))
        cuda_sources.Kernel(kern)(
            (grid,), (BLOCK,), (self._table(xp, rows), np.int32(len(rows)), np.int64(total), self.hp)
        )
