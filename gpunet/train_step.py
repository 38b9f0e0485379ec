"""The training step, run eagerly or replayed from a CUDA graph (CuPy).

``make_train_step(model, optimizer)`` returns ``step(X, y, lr) -> loss``. Eagerly
that is ``loss, grads = model.loss(X, y); optimizer.step(model.params, grads, lr)``.
On CuPy with ``graph=True`` the whole step (forward, loss, backward, the scalars kernel and the
one-launch multi-tensor update) is captured once into a ``cupy.cuda.Graph`` and replayed:

- call 1 runs eagerly on the step's own stream and memory pool (warm-up: kernels compile,
  buffers and optimizer state are allocated, the pool caches blocks);
- call 2 (same batch shape) captures it, launches the graph once, then checks that first replay
  against an eager step on the same batch from the same state (restored: parameters, optimizer
  state, Adam's step count, the dropout counter); on a mismatch the step says so once and stays
  eager (the eager step's result is kept either way);
- later calls copy X and y into the fixed input buffers, write lr to device memory when it changed
  (``optim._Multi.host``) and replay.

Nothing of a step is baked into the graph: lr and Adam's step count are device memory read by a
captured kernel that advances the count (``multi_tensor.declare_scalars``); dropout draws from the
Philox stream whose key and offset are device memory advanced by captured kernels
(``ops/philox.py``), so every replay draws new masks. The products are direct cuBLAS calls on
CuPy's handle bound to the step's stream before capture (``ops/gemm.py``: CuPy's own
``matmul`` calls ``setStream``, which refuses during a capture). A batch of another shape (the last
partial batch) runs eagerly, on the caller's stream.

When capture fails (a host synchronisation inside ``model.loss``, a product CuPy would route through
its own cuBLAS call, an optimizer without a multi-tensor kernel) the step says why once and stays
eager. On the emulated GPU (CI) the same control flow runs: the "graph" is the step's Python body,
run once under the capture flag (so a stray cuBLAS call is refused as on CuPy) and called again for
each replay; what it cannot show is a value baked into a real graph's kernel arguments, which the
first-replay check covers on a GPU.
"""

from __future__ import annotations

import inspect
import logging

from . import backend
from .ops import gemm, philox

log = logging.getLogger("gpunet")


def eager_step(model, optimizer, fused_update: bool = True):
    """``step(X, y, lr) -> loss``: one eager training step, the same calls on every backend.

    ``optimizer.begin`` decides inside the optimizer how the update runs: where the update is per
    parameter (NumPy; CuPy without the one-launch update) and ``fused_update``, each parameter is
    updated inside the backward pass the moment its gradient is final, while that gradient is still
    in cache (the same arithmetic on the same values as ``model.loss`` then ``optimizer.step``, so
    bit-identical to it); with the one-launch update it runs after the backward.
    """
    takes = "on_grad" in inspect.signature(model.loss).parameters

    def step(X, y, lr):
        run = optimizer.begin(model.params, lr, during_backward=fused_update and takes)
        loss, grads = model.loss(X, y, on_grad=run.on_grad) if takes else model.loss(X, y)
        run.finish(grads)
        return loss

    return step


def make_train_step(model, optimizer, graph: bool = True, fused_update: bool = True):
    """``step(X, y, lr) -> loss`` for ``model`` and ``optimizer``; graph-replayed on CuPy when ``graph``;
    ``fused_update``: eager steps update each parameter inside the backward pass (``eager_step``)."""
    first = next(iter(model.params.values()))
    if not graph or not backend.is_device_array(first) or backend.cupy_module() is None:
        return eager_step(model, optimizer, fused_update)
    return GraphStep(model, optimizer)


class _PyGraph:
    """The emulated GPU's graph: the captured body, called again on each launch."""

    def __init__(self, body):
        self.body = body

    def launch(self, stream=None):
        self.body()


class GraphStep:
    """A training step captured into a CUDA graph for one batch shape (see the module docstring)."""

    TOLERANCE = (1e-4, 1e-6)  # rtol, atol of the first replay against the eager step (float32 sums)

    def __init__(self, model, optimizer, check: bool = True):
        self.model, self.opt, self.check = model, optimizer, check
        self.cp = backend.cupy_module()
        self.emulated = backend.emulated()
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self.pool = self.cp.cuda.MemoryPool()
        self.eager = eager_step(model, optimizer)
        self.key = None  # (X shape, X dtype, y shape, y dtype) of the captured batch
        self.X = self.y = None  # fixed input buffers
        self.graph = None
        self.loss = None  # the graph's loss buffer (overwritten by every replay)
        self.failed = None  # why the step stays eager
        self.replays = 0
        self.check_diff = None  # the first replay's largest difference from the eager step

    def _give_up(self, why):
        self.failed = why
        self.graph = None
        log.info("CUDA graph off, training step runs eagerly: %s", why)

    def _refusal(self):
        if not self.opt._use_multi(self.model.params):
            return "the optimizer has no one-launch update for these parameters"
        return gemm.capture_refusal()

    def __call__(self, X, y, lr):
        cp = self.cp
        if self.failed is None and (why := self._refusal()) is not None:
            self._give_up(why)
        key = (tuple(X.shape), X.dtype, tuple(y.shape), y.dtype)
        if self.failed is not None or (self.key is not None and key != self.key):
            return self.eager(X, y, lr)  # another batch shape: the last partial batch
        cur = cp.cuda.get_current_stream()
        self.stream.wait_event(cur.record())
        with self.stream, cp.cuda.using_allocator(self.pool.malloc), gemm.bound(self.stream):
            rng = getattr(self.model, "rng", None)
            if rng is not None:
                philox.follow(rng)  # outside the graph: key the dropout stream if the generator changed
            if self.key is None:  # warm-up: eager, on this stream and pool
                self.key = key
                self.X, self.y = cp.empty(X.shape, X.dtype), cp.empty(y.shape, y.dtype)
                self.X[...], self.y[...] = X, y
                loss = self.eager(self.X, self.y, lr)
            else:
                self.X[...], self.y[...] = X, y
                if self.graph is None:
                    loss = self._capture_and_check(lr)
                else:
                    self.opt._multi.host(self.model.params, lr)
                    self.graph.launch(self.stream)
                    self.replays += 1
                    loss = self.loss
        cur.wait_event(self.stream.record())
        return loss.copy()  # the graph's loss is overwritten by the next replay

    def _body(self):
        """The captured step: forward, loss, backward, the scalars kernel and the one-launch update."""
        loss, grads = self.model.loss(self.X, self.y)
        self.opt._multi.device()
        self.opt.apply(self.model.params, grads)
        self.loss[...] = loss

    def _capture(self):
        """(graph, whether the body's work already ran): a CUDA graph, or the emulated stand-in."""
        s = self.stream
        s.begin_capture()
        try:
            self._body()
        except BaseException:
            try:
                s.end_capture()
            except Exception:
                pass
            raise
        if self.emulated:
            try:
                s.end_capture()
            except RuntimeError:  # the emulated GPU ran the work as it was queued: no graph of its own
                pass
            return _PyGraph(self._body), True
        return s.end_capture(), False

    # ---------------------------------------------------------------- capture and the first-replay check
    def _state_arrays(self):
        """Every device array a step changes: parameters, optimizer state, the dropout counter,
        batch-norm running statistics."""
        arrays = list(self.model.params.values())
        arrays += [a for s in self.opt.state.values() for a in s.values() if hasattr(a, "shape")]
        st = philox._STREAMS.get(id(self.cp))
        if st is not None:
            arrays.append(st.state)
        for layer in getattr(self.model, "layers", ()):  # (gpunet.nn layers keep them in ``buffers``)
            arrays += [b for b in (getattr(layer, "buffers", None) or {}).values() if hasattr(b, "shape")]
        return [a for a in arrays if a is not None]

    def _capture_and_check(self, lr):
        arrays = self._state_arrays()
        saved = [a.copy() for a in arrays]
        multi_saved = self.opt._multi.snapshot()

        def restore():
            for a, b in zip(arrays, saved):
                a[...] = b
            self.opt._multi.restore(multi_saved)

        self.opt._multi.host(self.model.params, lr)
        if self.loss is None:
            self.loss = self.cp.zeros((), self.model.params[next(iter(self.model.params))].dtype)
        try:
            # the scalars kernel runs only in the graph (eager steps write the scalars from the host):
            # compiled and loaded here, not first launched inside the capture
            self.opt._multi.scalar_kernel.compile()
            self.graph, ran = self._capture()
            if not ran:  # the first launch also instantiates the graph: an error there is a failed capture
                self.graph.launch(self.stream)
        except Exception as e:
            restore()
            self._give_up(f"capture failed ({type(e).__name__}: {e})")
            return self.eager(self.X, self.y, lr)
        self.replays += 1
        if not self.check:
            return self.loss
        # every array a step changes, not only the parameters: a graph that left the optimizer state, the
        # dropout counter or a running statistic behind would pass a parameters-only check
        replayed = [a.copy() for a in arrays] + [self.loss.copy()]
        restore()
        loss = self.eager(self.X, self.y, lr)
        eager = list(arrays) + [loss]
        rtol, atol = self.TOLERANCE
        diffs = [
            float(abs(a.astype("float64") - b).max()) if a.size else 0.0 for a, b in zip(replayed, eager)
        ]
        self.check_diff = max(diffs)
        ok = all(bool(self.cp.allclose(a, b, rtol=rtol, atol=atol)) for a, b in zip(replayed, eager))
        if not ok:
            self._give_up(
                f"the first replay differs from the eager step on the same batch (largest difference "
                f"{self.check_diff:.3g}; tolerance rtol {rtol}, atol {atol})"
            )
        return loss
