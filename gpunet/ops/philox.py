"""Counter-based random bits for dropout on the GPU: Philox4x32-10 (Salmon et al., SC'11; Random123).

A word of Philox is a pure function of a 128-bit counter and a 64-bit key, so a mask needs no
generator state beyond (key, offset), and both can live in device memory:

- ``DeviceStream.state``: uint64 (2,) = [key, offset], on the device;
- dropout call: element j of the (flat, contiguous) activation gets word ``j % 4`` of
  ``philox4x32_10(ctr = [q lo, q hi, offset lo, offset hi], key = [key lo, key hi])`` with q = j // 4;
  it is dropped when that word < ``threshold(p)`` (probability round(p 2^32) / 2^32);
- then a one-thread kernel adds 1 to the offset, on the device: a CUDA graph that captured both
  launches draws a new mask on every replay, and no host value is baked into it.

``philox4x32_10`` and ``dropout_words`` are the NumPy twins of the CUDA text below (bit for bit,
checked in CI through ``gpunet.testing.kernel_cpu``, and against Random123's known answers).
NumPy training keeps NumPy's generator (``layers.activations.keep_mask``); this stream serves
``CupyOps.dropout_`` only.
"""

from __future__ import annotations

import numpy as np

from .. import backend, cuda_sources

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # key schedule (Weyl) increments
_LO = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, key):
    """Philox4x32-10. ctr: 4 uint32 words (scalars or (n,) arrays); key: 2 uint32 words.
    Returns (4, n) uint32 (n = 1 for scalars)."""
    c = [np.atleast_1d(np.asarray(w, np.uint64)) for w in ctr]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0, p1 = c[0] * np.uint64(M0), c[2] * np.uint64(M1)  # exact: 32 x 32 bits fit 64
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _LO, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _LO]
        k0, k1 = (k0 + np.uint64(W0)) & _LO, (k1 + np.uint64(W1)) & _LO
    return np.stack(np.broadcast_arrays(*c)).astype(np.uint32)


def dropout_words(n: int, key: int, offset: int) -> np.ndarray:
    """The (n,) uint32 words the dropout kernel draws for n elements from state [key, offset]."""
    q = np.arange(-(-n // 4), dtype=np.uint64)
    off = np.uint64(offset)
    ctr = [q & _LO, q >> np.uint64(32), off & _LO, off >> np.uint64(32)]
    words = philox4x32_10(ctr, [np.uint64(key) & _LO, np.uint64(key) >> np.uint64(32)])
    return words.T.reshape(-1)[:n]


def threshold(p: float) -> np.uint32:
    """Words below this are dropped: probability round(p 2^32) / 2^32 (within 2^-33 of p)."""
    return np.uint32(min(int(round(p * 2.0**32)), 2**32 - 1))


def keep_mask(n: int, key: int, offset: int, p: float) -> np.ndarray:
    """(n,) bool: the units the dropout kernel keeps (the NumPy twin)."""
    return dropout_words(n, key, offset) >= threshold(p)


# ------------------------------------------------------------------ the CUDA text (twin of the above)
_PHILOX = r"""
__device__ __forceinline__ void gpunet_philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
  for (int r = 0; r < 10; ++r) {
    const unsigned long long p0 = (unsigned long long)0xD2511F53u * c[0];
    const unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c[2];
    const unsigned int n0 = (unsigned int)(p1 >> 32) ^ c[1] ^ k0, n1 = (unsigned int)p1;
    const unsigned int n2 = (unsigned int)(p0 >> 32) ^ c[3] ^ k1, n3 = (unsigned int)p0;
    c[0] = n0; c[1] = n1; c[2] = n2; c[3] = n3;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
}
"""
_LOOP = r"""
  const unsigned long long key = state[0], off = state[1];
  const long long nq = (n + 3) / 4;
  for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < nq;
       q += (long long)blockDim.x * gridDim.x) {
    unsigned int c[4] = {(unsigned int)q, (unsigned int)((unsigned long long)q >> 32),
                         (unsigned int)off, (unsigned int)(off >> 32)};
    gpunet_philox4x32_10(c, (unsigned int)key, (unsigned int)(key >> 32));
    for (int r = 0; r < 4; ++r) {
      const long long j = q * 4 + r;
      if (j < n) { BODY; }
    }
  }
"""
WORDS = cuda_sources.raw(
    "philox_words",
    _PHILOX
    + 'extern "C" __global__ void gpunet_philox_words(unsigned int* out, const long long n,\n'
    + "    const unsigned long long* __restrict__ state) {"
    + _LOOP.replace("BODY", "out[j] = c[r]")
    + "}\n",
    "gpunet_philox_words",
    module=__name__,
)
DROPOUT = {
    dt: cuda_sources.raw(
        f"philox_dropout_{dt}",
        f"typedef {ct} T;\n"
        + _PHILOX
        + f'extern "C" __global__ void gpunet_philox_dropout_{dt}(T* h, const long long n,\n'
        + "    const unsigned long long* __restrict__ state, const unsigned int thr, const T scale) {"
        + _LOOP.replace("BODY", "h[j] = c[r] < thr ? (T)0 : h[j] * scale")
        + "}\n",
        f"gpunet_philox_dropout_{dt}",
        module=__name__,
    )
    for dt, ct in (("float32", "float"), ("float64", "double"))
}
ADVANCE = cuda_sources.raw(
    "philox_advance",
    'extern "C" __global__ void gpunet_philox_advance(unsigned long long* state) {\n'
    "  if (blockIdx.x == 0 && threadIdx.x == 0) state[1] += 1ull;\n}\n",
    "gpunet_philox_advance",
    module=__name__,
)
BLOCK, MAX_GRID = 256, 4096


def _grid(n):
    quads = -(-n // 4)  # one thread per counter: four words
    return (max(1, min(-(-quads // BLOCK), MAX_GRID)),)


class DeviceStream:
    """The device-resident state of GPU dropout: ``state`` uint64 (2,) = [key, offset] (see the module
    docstring). One per device array module; ``follow(rng)`` keys it from a generator."""

    def __init__(self, xp):
        self.xp = xp
        self.state = xp.zeros(2, np.uint64)
        self.source = None  # the generator the key was last drawn from

    def set(self, key: int, offset: int = 0):
        """Write [key, offset] from the host (outside any CUDA graph)."""
        self.state[...] = self.xp.asarray(np.array([key, offset], np.uint64))

    def follow(self, rng, force: bool = False):
        """Key the stream from generator ``rng`` (offset 0) when it is not the one it follows, or
        ``force``: two uniforms drawn on the device make the key, so nothing waits for the GPU."""
        if rng is self.source and not force:
            return self
        u = (rng.random(2, dtype=np.float64) * 2.0**32).astype(np.uint64)  # (2,) 32-bit halves
        self.state[:1] = (u[:1] << np.uint64(32)) | u[1:]
        self.state[1:] = 0
        self.source = rng
        return self

    def words(self, n: int):
        """(n,) uint32 words from the current offset, which then advances (tests; masks elsewhere)."""
        out = self.xp.empty(n, np.uint32)
        WORDS(_grid(n), (BLOCK,), (out, np.int64(n), self.state))
        ADVANCE((1,), (1,), (self.state,))
        return out

    def dropout_(self, h, p: float):
        """Inverted dropout of the C-contiguous float32/float64 device array ``h`` in place; advances
        the offset. Two launches, both capturable into a CUDA graph."""
        n = h.size
        DROPOUT[h.dtype.name](
            _grid(n), (BLOCK,), (h, np.int64(n), self.state, threshold(p), h.dtype.type(1.0 / (1.0 - p)))
        )
        ADVANCE((1,), (1,), (self.state,))
        return h

    def host_state(self):
        """(key, offset) read back to the host (a synchronisation: tests and checks only)."""
        k, o = backend.to_numpy(self.state).tolist()
        return int(k), int(o)


_STREAMS: dict = {}  # id of the device array module -> its DeviceStream


def stream(xp) -> DeviceStream:
    """The dropout stream of device array module ``xp`` (made on first use)."""
    s = _STREAMS.get(id(xp))
    if s is None:
        s = _STREAMS[id(xp)] = DeviceStream(xp)
    return s


def device_keep_mask(rng, shape, p: float):
    """(shape) bool device array of the units kept with drop probability ``p``, from the active device
    backend's stream keyed by ``rng`` (the masks ``CupyOps.dropout_`` draws for the same state)."""
    s = stream(backend.cupy_module()).follow(rng)
    n = int(np.prod(shape))
    return (s.words(n) >= threshold(p)).reshape(shape)


def follow(rng, force: bool = False):
    """Key the active device backend's dropout stream from ``rng`` (see ``DeviceStream.follow``); does
    nothing on NumPy. The Solver calls it (``force``) when it reseeds the model's generator."""
    xp = backend.cupy_module() if backend.name() == "cupy" else None
    if xp is None or isinstance(rng, np.random.Generator):
        return None
    return stream(xp).follow(rng, force)
