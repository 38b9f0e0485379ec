"""The training step, run eagerly or replayed from a CUDA graph (CuPy).

``make_train_step(model, optimizer)`` returns ``step(X, y, lr) -> loss``. Eagerly
that is ``loss, grads = model.loss(X, y); optimizer.step(model.params, grads, lr)``.
On CuPy with ``graph=True`` the whole step (forward, backward and the one-launch
multi-tensor update) is captured once into a ``cupy.cuda.Graph`` and replayed:

- call 1 runs eagerly on the step's own stream and memory pool (warm-up: kernels
  compile, buffers and optimizer state are allocated, the pool caches blocks);
- call 2 (same batch shape) captures it, then launches the graph;
- later calls copy X and y into the fixed input buffers, write the step's scalars
  (lr, bias corrections) into the optimizer's device vector, and replay.

lr is never baked into the graph: ``optimizer.prepare`` writes it to device memory
before each replay. A batch of another shape (the last partial batch) runs
eagerly; when capture fails (a host synchronisation inside ``model.loss``, an
optimizer without a multi-tensor kernel) the step says why once in the log and
stays eager. The graph's memory comes from a private pool used only on the step's
stream, so nothing outside the graph is handed memory the graph writes.
"""

from __future__ import annotations

import inspect
import logging

from . import backend

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
    if _uses_dropout(model):
        # a replayed graph would have to advance the generator's device state itself; until a
        # GPU run shows the masks differ from step to step, dropout nets step eagerly
        log.info("CUDA graph off, training step runs eagerly: the model uses dropout")
        return eager_step(model, optimizer, fused_update)
    return GraphStep(model, optimizer)


def _uses_dropout(model) -> bool:
    if getattr(model, "dropout", 0.0):
        return True
    return any(type(layer).__name__ == "Dropout" and layer.p > 0 for layer in getattr(model, "layers", ()))


class GraphStep:
    """A training step captured into a CUDA graph for one batch shape (see the module docstring)."""

    def __init__(self, model, optimizer):
        self.model, self.opt = model, optimizer
        self.cp = backend.cupy_module()
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self.pool = self.cp.cuda.MemoryPool()
        self.eager = eager_step(model, optimizer)
        self.key = None  # (X shape, X dtype, y shape, y dtype) of the captured batch
        self.X = self.y = None  # fixed input buffers
        self.graph = None
        self.loss = None  # the graph's loss (overwritten by every replay)
        self.failed = None  # why the step stays eager
        self.replays = 0

    def _give_up(self, why):
        self.failed = why
        log.info("CUDA graph off, training step runs eagerly: %s", why)

    def __call__(self, X, y, lr):
        cp = self.cp
        if self.failed is None and not self.opt._use_multi(self.model.params):
            self._give_up("the optimizer has no one-launch update for these parameters")
        key = (tuple(X.shape), X.dtype, tuple(y.shape), y.dtype)
        if self.failed is not None or (self.key is not None and key != self.key):
            return self.eager(X, y, lr)  # another batch shape: the last partial batch
        cur = cp.cuda.get_current_stream()
        self.stream.wait_event(cur.record())
        with self.stream, cp.cuda.using_allocator(self.pool.malloc):
            if self.key is None:  # warm-up: eager, on this stream and pool
                self.key = key
                self.X, self.y = cp.empty(X.shape, X.dtype), cp.empty(y.shape, y.dtype)
                self.X[...], self.y[...] = X, y
                loss = self.eager(self.X, self.y, lr)
            else:
                self.X[...], self.y[...] = X, y
                self.opt.prepare(self.model.params, lr)
                if self.graph is None:
                    self._capture()
                if self.graph is not None:
                    self.graph.launch(self.stream)
                    self.replays += 1
                    loss = self.loss
                else:  # capture failed: this step eagerly (already prepared)
                    loss, grads = self.model.loss(self.X, self.y)
                    self.opt.apply(self.model.params, grads)
        cur.wait_event(self.stream.record())
        return loss.copy()  # the graph's loss is overwritten by the next replay

    def _capture(self):
        s = self.stream
        s.begin_capture()
        try:
            loss, grads = self.model.loss(self.X, self.y)
            self.opt.apply(self.model.params, grads)
        except Exception as e:
            try:
                s.end_capture()
            except Exception:
                pass
            self._give_up(f"capture failed ({type(e).__name__}: {e})")
            return
        try:
            self.graph = s.end_capture()
        except Exception as e:
            self._give_up(f"capture failed ({type(e).__name__}: {e})")
            return
        self.loss = loss
