"""The graph-replayed training step gives the parameters the eager step gives.

On CuPy (mark ``gpu``; skipped without a usable GPU) a model trained by replaying a
captured step, with a last partial batch and a changing learning rate, must end
with the same parameters as a twin trained step by step. On NumPy the factory
returns the eager step, checked against the written-out loop. The order of warm-up,
capture, replay and eager fallback is checked without a GPU through stand-ins.
"""

import numpy as np
import pytest

from gpunet import backend, optim, train_step
from gpunet.model import FullyConnectedNet

N, D, C = 64, 24, 5
CUPY_REFUSES_CUBLAS = "calling cuBLAS API during stream capture is currently unsupported"


def _data(xp, n_batches=5, partial=13):
    rng = np.random.default_rng(7)
    batches = [
        (rng.standard_normal((N, D)).astype(np.float32), rng.integers(0, C, N)) for _ in range(n_batches)
    ]
    batches.append((rng.standard_normal((partial, D)).astype(np.float32), rng.integers(0, C, partial)))
    return [(xp.asarray(X), xp.asarray(y)) for X, y in batches]


def _train(step, model, batches, epochs=2):
    losses = []
    for e in range(epochs):
        for k, (X, y) in enumerate(batches):
            losses.append(float(step(X, y, 0.05 / (1 + e + 0.1 * k))))
    return {k: backend.to_numpy(v) for k, v in model.params.items()}, losses


@pytest.mark.parametrize("rule", ["sgd_momentum", "adam"])
def test_replayed_steps_match_eager_steps(xp, rule):
    batches = _data(xp)
    cfg = {"weight_decay": 1e-3}
    twins = [FullyConnectedNet([32, 16], input_dim=D, num_classes=C, reg=1e-3, seed=3) for _ in range(2)]
    eager = train_step.eager_step(twins[0], optim.Optimizer(rule, cfg))
    replay = train_step.make_train_step(twins[1], optim.Optimizer(rule, cfg), graph=True)
    init = backend.to_numpy(twins[0].params["W1"]).copy()
    want, want_losses = _train(eager, twins[0], batches)
    got, got_losses = _train(replay, twins[1], batches)
    if xp is not np:
        assert isinstance(replay, train_step.GraphStep)
        if replay.failed is not None and CUPY_REFUSES_CUBLAS in replay.failed:
            # CuPy (14.2 included) refuses every cuBLAS call inside a stream capture: the step
            # must say so, never replay, and still train exactly like the eager twin.
            assert replay.graph is None and replay.replays == 0
        else:
            assert replay.failed is None and replay.replays >= 8, replay.failed
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(want["W1"], init)  # training moved the weights


def test_numpy_gets_the_eager_step():
    prev = backend.selected()
    backend.use("numpy")
    try:
        model = FullyConnectedNet([8], input_dim=D, num_classes=C, seed=1)
        step = train_step.make_train_step(model, optim.Optimizer("sgd", {}), graph=True)
        X, y = _data(np, 1, 3)[0]
        before = model.params["W1"].copy()
        ref = FullyConnectedNet([8], input_dim=D, num_classes=C, seed=1)
        loss_ref, grads = ref.loss(X, y)
        loss = step(X, y, 0.1)
        assert float(loss) == float(loss_ref)
        np.testing.assert_array_equal(model.params["W1"], before - np.float32(0.1) * grads["W1"])
    finally:
        backend.use(prev)


# ---------------------------------------------------------------- control flow, without a GPU
class _Log(list):
    capturing = False


class _FakeStream:
    def __init__(self, log, non_blocking=False):
        self.log = log

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def record(self):
        return object()

    def wait_event(self, e):
        pass

    def begin_capture(self):
        self.log.capturing = True

    def end_capture(self):
        self.log.capturing = False
        log = self.log
        return type("G", (), {"launch": lambda self, s: log.append("launch")})()


def _fake_cupy(log):
    import contextlib

    cuda = type("cuda", (), {})
    cuda.Stream = lambda non_blocking=False: _FakeStream(log)
    cuda.MemoryPool = lambda: type("Pool", (), {"malloc": None})()
    cuda.using_allocator = staticmethod(lambda f: contextlib.nullcontext())
    cuda.get_current_stream = staticmethod(lambda: _FakeStream(log))
    return type("cp", (), {"cuda": cuda, "empty": staticmethod(np.empty)})


class _FakeModel:
    def __init__(self, log, fail_capture=False):
        self.log, self.fail, self.params = log, fail_capture, {"W": np.zeros(2)}

    def loss(self, X, y):
        if self.log.capturing and self.fail:
            raise RuntimeError("host synchronisation during capture")
        self.log.append("loss(capture)" if self.log.capturing else "loss")
        return np.array(float(X.shape[0])), {"W": np.zeros(2)}


class _FakeOpt:
    def __init__(self, log):
        self.log = log

    def _use_multi(self, params):
        return True

    def prepare(self, params, lr):
        self.log.append(f"prepare({lr})")

    def apply(self, params, grads):
        self.log.append("apply(capture)" if self.log.capturing else "apply")

    def step(self, params, grads, lr):
        self.log.append(f"step({lr})")

    def begin(self, params, lr, during_backward=True):
        return optim.StepRun(self, params, lr, False)  # the one-launch form: the update after the backward


@pytest.mark.parametrize("fail", [False, True])
def test_graph_step_control_flow(monkeypatch, fail):
    log = _Log()
    monkeypatch.setattr(backend, "cupy_module", lambda: _fake_cupy(log))
    step = train_step.GraphStep(_FakeModel(log, fail), _FakeOpt(log))
    X, y, Xp, yp = np.zeros((4, 3)), np.zeros(4, np.int64), np.zeros((2, 3)), np.zeros(2, np.int64)
    losses = [float(step(X, y, 1)), float(step(X, y, 2)), float(step(X, y, 3)), float(step(Xp, yp, 4))]
    if not fail:
        assert log == [
            "loss",
            "step(1)",  # warm-up, eager
            "prepare(2)",
            "loss(capture)",
            "apply(capture)",
            "launch",  # capture, then launch
            "prepare(3)",
            "launch",  # replay: lr written first
            "loss",
            "step(4)",
        ]  # partial batch: eager
        assert step.replays == 2 and step.failed is None
    else:
        assert log == [
            "loss",
            "step(1)",
            "prepare(2)",
            "loss",
            "apply",  # capture failed: this step eagerly, prepared once
            "loss",
            "step(3)",
            "loss",
            "step(4)",
        ]
        assert "host synchronisation" in step.failed
    assert losses == [4, 4, 4, 2]


def test_old_module_names_still_import():
    """gpunet.cudagraph and gpunet.data.stream were renamed (issue 20); their names keep working."""
    from gpunet import cudagraph
    from gpunet.data import stream

    assert cudagraph is train_step and stream.H5Loader.__module__ == "gpunet.data.h5loader"
