"""Interleaved timing: every measured function runs once per repeat, in turn, so a change in
machine load hits all of them alike; the median over repeats is what gets reported.

Between two timed calls the machine may ``settle``: both BLAS/OpenMP thread pools keep
spinning for a while after their work ends, and right after one library a spinning pool of
the other would slow the next call, which no user running one library meets."""

from __future__ import annotations

import statistics
import time


def interleaved(fns: dict, order, steps: int, repeats: int, warmup: int, settle: float = 0.0) -> dict:
    """Seconds per repeat of ``steps`` calls for each ``fns[name] = (fn, sync)``.

    order: the names in the order they take turns (names missing from ``fns`` are skipped).
    sync: drains the device before and after the timed calls. settle: seconds of sleep (not
    timed) before each timed call. Returns ``{name: [seconds, ...]}``.
    """
    order = [k for k in order if k in fns]
    for k in order:  # warm-up: caches, pools, kernel compilation
        fn, sync = fns[k]
        for _ in range(warmup):
            fn()
        sync()
    times = {k: [] for k in order}
    for _ in range(repeats):
        for k in order:
            fn, sync = fns[k]
            sync()
            if settle:
                time.sleep(settle)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def rates(times: dict, batch: int, steps: int) -> dict:
    """``{name: median samples/s, name_all: [samples/s per repeat]}`` from ``interleaved``'s seconds."""
    out = {}
    for k, ts in times.items():
        out[k] = batch * steps / statistics.median(ts)
        out[k + "_all"] = [batch * steps / s for s in ts]
    return out


TORCH_KINDS = ("default", "foreach", "fused")


def torch_optimizer(torch, cls, params, kind="default", **kw):
    """``cls(params, **kw)`` in form ``kind``: ``default`` (PyTorch's own choice), ``foreach`` or ``fused``.

    Returns the optimizer, or None when that form does not work here: a fused/foreach step
    unsupported on the device fails only on first use, so each form takes one zero-gradient
    step on throw-away copies of the parameters first.
    """
    params = list(params)
    extra = {} if kind == "default" else {kind: True}
    try:
        probe = [torch.zeros_like(p, requires_grad=True) for p in params]
        opt = cls(probe, **kw, **extra)
        for p in probe:
            p.grad = torch.zeros_like(p)
        opt.step()
    except (RuntimeError, TypeError, ValueError):
        return None
    return cls(params, **kw, **extra)


def best_of(res: dict, prefix: str, kinds) -> str | None:
    """The kind whose ``res[prefix + kind]`` rate is highest (None when there is none)."""
    have = [k for k in kinds if prefix + k in res]
    return max(have, key=lambda k: res[prefix + k]) if have else None
