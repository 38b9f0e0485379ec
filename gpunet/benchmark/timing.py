"""Interleaved timing: every measured function runs once per repeat, in turn, so a change in
machine load hits all of them alike; the median over repeats is what gets reported."""
from __future__ import annotations

import statistics
import time


def interleaved(fns: dict, order, steps: int, repeats: int, warmup: int) -> dict:
    """Seconds per repeat of ``steps`` calls for each ``fns[name] = (fn, sync)``.

    order: the names in the order they take turns (names missing from ``fns`` are skipped).
    sync: drains the device before and after the timed calls. Returns ``{name: [seconds, ...]}``.
    """
    order = [k for k in order if k in fns]
    for k in order:                      # warm-up: caches, pools, kernel compilation
        fn, sync = fns[k]
        for _ in range(warmup):
            fn()
        sync()
    times = {k: [] for k in order}
    for _ in range(repeats):
        for k in order:
            fn, sync = fns[k]
            sync()
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


def torch_optimizer(torch, cls, params, **kw):
    """``cls(params, **kw)`` in its fastest form that works here: fused, then foreach, then the loop.

    Returns ``(optimizer, kind)``; a fused/foreach step unsupported on the device fails on first use,
    so each candidate takes one zero-gradient step on throw-away copies of the parameters first.
    """
    params = list(params)
    for kind in ("fused", "foreach"):
        try:
            probe = [torch.zeros_like(p, requires_grad=True) for p in params]
            opt = cls(probe, **kw, **{kind: True})
            for p in probe:
                p.grad = torch.zeros_like(p)
            opt.step()
            return cls(params, **kw, **{kind: True}), kind
        except (RuntimeError, TypeError, ValueError):
            continue
    return cls(params, **kw), "for-loop"
