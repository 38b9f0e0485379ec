"""The CPU thread team (the calling thread plus ``num_threads() - 1`` pool threads) and BLAS's thread count.

NumPy's ufuncs and BLAS calls release the GIL, so plain threads use every core. The team runs

- ``parallel(fn, n)``: a memory-bound pass (the optimizer updates) over CHUNK-aligned ranges;
- ``split(fn, n, work)``: a pass over ``n`` independent items (channels, samples) in one range per
  thread, e.g. batch norm and pooling over channel blocks;
- ``blocked(n, item_bytes)``: the ranges of items a thread works through so each block's arrays
  stay in the core's L2 cache (``l2_bytes``, read from the machine);
- ``concurrently(f, g, ...)``: independent products side by side, one per thread, each a
  single-threaded BLAS call (a hidden layer's input and weight gradients; the parts of a large
  forward product split by ``cuts``/``ways`` over the rows of W each core updates); whether that
  pays on a machine is measured in docs/BENCHMARKS.md.

``pinned`` keeps the caller and BLAS's worker threads on separate cores while the Solver trains.

OpenBLAS's thread count is process-wide (its ``_local`` setter too, in the pthreads builds that
NumPy's wheels ship), so ``concurrently`` sets it to 1 for the call and restores it after; where
NumPy's BLAS cannot be driven (not OpenBLAS, not found, not Linux) the products run one after the
other with BLAS's own threads. This module is the only one that talks to the BLAS library.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 16  # elements per block of the blocked NumPy updates (256 KB per float32 array)
PAR_MIN = 1 << 18  # elements per thread below which one thread is faster
CONCURRENT_MIN = 1 << 27  # multiply-adds per product below which ``concurrently`` runs them in turn

_threads = None  # team size (None: from the environment)
_pool, _pool_size = None, 0
_pool_lock = threading.Lock()
_blas = None  # (get_num_threads, set_num_threads) of NumPy's OpenBLAS; False: none usable
_concurrent = True
_pinning, _pin_lock = False, threading.Lock()  # a ``pinned`` section is open (one at a time)
_held, _held_before, _held_lock = 0, None, threading.Lock()  # callers inside ``concurrently`` now


def set_num_threads(n: int | None):
    """Threads of the team (None: $OMP_NUM_THREADS, $OPENBLAS_NUM_THREADS, $MKL_NUM_THREADS or the CPUs
    this process may use, ``usable_cpus``)."""
    global _threads, _pool, _pool_size
    _threads = None if n is None else max(1, int(n))
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool, _pool_size = None, 0


def num_threads() -> int:
    """Threads the team uses, the caller included."""
    if _threads is not None:
        return _threads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return usable_cpus()


def _affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_USABLE = _affinity_count()  # read at import: inside ``pinned`` the calling thread's own mask is 1 CPU


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask when gpunet was imported: ``taskset``, a
    container's cpuset), else all."""
    return _USABLE


def _in_team() -> bool:
    return threading.current_thread().name.startswith("gpunet-team")


def _run(jobs):
    """Run the callables ``jobs``: the first on the caller, the others on pool threads; wait for all."""
    global _pool, _pool_size
    rest = jobs[1:]
    if rest and _pool_size < len(rest):
        with _pool_lock:
            if _pool_size < len(rest):
                _pool = ThreadPoolExecutor(max_workers=len(rest), thread_name_prefix="gpunet-team")
                _pool_size = len(rest)
    futures = [_pool.submit(job) for job in rest]
    try:
        jobs[0]()
    finally:
        for f in futures:
            f.result()


def parallel(fn, n: int):
    """Run ``fn(lo, hi)`` over [0, n) split into CHUNK-aligned ranges, one per thread of the team.

    The caller takes the first range instead of waiting for the pool (measured in docs/BENCHMARKS.md).
    """
    t = min(num_threads(), n // PAR_MIN)
    if t <= 1 or _in_team():  # never nested inside a team job
        fn(0, n)
        return
    c = cuts(n, t)
    _run([lambda lo=lo, hi=hi: fn(lo, hi) for lo, hi in zip(c[:-1], c[1:])])


def split(fn, n: int, work: int):
    """Run ``fn(lo, hi)`` over [0, n) items cut into one contiguous range per thread of the team;
    ``work``: elements the whole pass touches (one thread below ``PAR_MIN`` per thread)."""
    t = min(num_threads(), n, work // PAR_MIN)
    if t <= 1 or _in_team():
        fn(0, n)
        return
    c = [n * k // t for k in range(t + 1)]
    _run([lambda lo=lo, hi=hi: fn(lo, hi) for lo, hi in zip(c[:-1], c[1:])])


_l2 = None


def l2_bytes() -> int:
    """One core's L2 cache in bytes, as the machine reports it (Linux sysfs; 1 MiB where unknown); read
    once per process."""
    global _l2
    if _l2 is None:
        _l2 = 1 << 20
        try:
            base = "/sys/devices/system/cpu/cpu0/cache"
            for index in sorted(os.listdir(base)):
                with open(f"{base}/{index}/level") as f:
                    if f.read().strip() != "2":
                        continue
                with open(f"{base}/{index}/size") as f:
                    size = f.read().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                _l2 = int(size.rstrip("KM")) * mult
                break
        except (OSError, ValueError):
            pass
    return _l2


def blocked(lo: int, hi: int, item_bytes: int, share: float = 0.5):
    """Ranges ``(a, b)`` covering [lo, hi), each of as many items as fit ``share`` of the L2 cache
    (at least one item), so a block's passes after the first read it from the cache."""
    step = max(1, int(l2_bytes() * share) // max(1, item_bytes))
    return [(a, min(hi, a + step)) for a in range(lo, hi, step)]


def cuts(n: int, t: int) -> list:
    """The boundaries of ``parallel``'s t CHUNK-aligned ranges over [0, n): range k runs on team thread k."""
    blocks = -(-n // CHUNK)
    return [min(n, (blocks * k // t) * CHUNK) for k in range(t + 1)]


def ways(work: int) -> int:
    """Into how many side-by-side products (one per team thread) a product of ``work`` multiply-adds
    may be split: the team's size when ``concurrently`` would run them side by side, else 1."""
    t = num_threads()
    if t < 2 or not _concurrent or work < CONCURRENT_MIN or _in_team() or blas_control() is None:
        return 1
    return t


def _current_cpu(tid: int):
    """The CPU thread ``tid`` of this process last ran on (Linux), or None."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


class pinned:
    """``with threads.pinned():`` the calling thread stays on one CPU, the team's pool threads and
    the process's native threads (OpenBLAS's workers among them) on the others (Linux).

    An OpenBLAS worker woken onto the caller's CPU can stall the products that use it (measured in
    docs/BENCHMARKS.md). Python threads other than the team's are left alone. Every affinity
    changed is restored on exit, and threads started inside get the process's whole CPU set.
    A no-op with fewer than 2 allowed CPUs or a team of 1, and inside a team job.
    """

    def __enter__(self):
        global _pinning
        self.saved, self.allowed, self.before, self.owner = {}, None, set(), False
        if not hasattr(os, "sched_setaffinity") or num_threads() < 2 or _in_team():
            return self
        with _pin_lock:  # one pinning at a time in the process: later entrants do nothing
            if _pinning:
                return self
            _pinning = self.owner = True
        try:
            allowed = os.sched_getaffinity(0)
            if len(allowed) < 2:
                return self
            _run([lambda: None] * min(num_threads(), len(allowed)))  # the pool threads exist now
            me = threading.get_native_id()
            cpu = _current_cpu(me)
            cpu = cpu if cpu in allowed else min(allowed)
            python = {t.native_id for t in threading.enumerate()}
            team = {t.native_id for t in threading.enumerate() if t.name.startswith("gpunet-team")}
            self.allowed, self.before = allowed, {int(t) for t in os.listdir("/proc/self/task")}
            for tid in self.before:
                target = {cpu} if tid == me else allowed - {cpu} if tid in team or tid not in python else None
                if target is not None:
                    old = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, target)
                    self.saved[tid] = old
        except OSError:
            self.__exit__()
        return self

    def __exit__(self, *exc):
        global _pinning
        if not self.owner:
            return False
        for tid, cpus in self.saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:  # the thread has ended
                pass
        if self.allowed is not None:
            try:
                for tid in {int(t) for t in os.listdir("/proc/self/task")} - self.before:
                    os.sched_setaffinity(tid, self.allowed)
            except OSError:
                pass
        self.saved = {}
        with _pin_lock:
            _pinning = self.owner = False
        return False


# ------------------------------------------------------------------ BLAS
_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),  # NumPy's wheels
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


def _find_openblas():
    """``(get, set)`` thread-count functions of an OpenBLAS this process has loaded, or None (Linux only)."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted(
                {
                    line.split(None, 5)[5].strip()
                    for line in f
                    if len(line.split(None, 5)) == 6 and "openblas" in line.rsplit("/", 1)[-1].lower()
                }
            )
    except OSError:
        return None
    for get_name, set_name in _SYMBOLS:
        for path in paths:
            try:  # RTLD_NOLOAD: only a library that is already loaded (never a second copy)
                lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
            except (OSError, AttributeError):
                continue
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                get, set_ = getattr(lib, get_name), getattr(lib, set_name)
                get.argtypes, get.restype = [], ctypes.c_int
                set_.argtypes, set_.restype = [ctypes.c_int], None
                return get, set_
    return None


def blas_core() -> dict:
    """What NumPy's OpenBLAS says of itself: ``{"core": kernel it chose for this CPU (e.g. Haswell,
    SkylakeX), "config": its build line}``; empty where it cannot be asked."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split(None, 5)[5].strip() for line in f if "openblas" in line.lower()})
    except (OSError, IndexError):
        return {}
    info = {}
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        except (OSError, AttributeError):
            continue
        for key, names in (
            ("core", ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename")),
            ("config", ("scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config")),
        ):
            for name in names:
                if key not in info and hasattr(lib, name):
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = [], ctypes.c_char_p
                    info[key] = fn().decode(errors="replace").strip()
        if info:
            return info
    return info


def blas_control():
    """``(get_num_threads, set_num_threads)`` of NumPy's OpenBLAS, or None where it cannot be driven."""
    global _blas
    if _blas is None:
        __import__("numpy")  # NumPy's BLAS must be loaded to be found
        _blas = _find_openblas() or False
    return _blas or None


def concurrent_products(on: bool | None = None) -> bool:
    """Whether ``concurrently`` may run products side by side (``on`` sets it); returns the setting."""
    global _concurrent
    if on is not None:
        _concurrent = bool(on)
    return _concurrent


def concurrently(*jobs, work: int):
    """Run the independent products ``jobs`` (callables); ``work``: the multiply-adds that decide
    whether running them side by side pays (as for ``ways``).

    Side by side, one per team thread with BLAS held to one thread, when ``ways(work)`` gives the
    team a thread for each job; otherwise in turn. The values may differ from the sequential run
    in the last bits (BLAS sums in another order).
    """
    if len(jobs) < 2 or ways(work) < len(jobs):
        for job in jobs:
            job()
        return
    ctl = blas_control()
    global _held, _held_before
    get, set_ = ctl
    with _held_lock:  # the first caller in saves BLAS's count, the last one out restores it
        if _held == 0:
            _held_before = get()
            set_(1)
        _held += 1
    try:
        _run(list(jobs))
    finally:
        with _held_lock:
            _held -= 1
            if _held == 0:
                set_(_held_before)
