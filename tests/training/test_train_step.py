"""The graph-replayed training step gives the parameters the eager step gives.

On CuPy (mark ``gpu``; skipped without a usable GPU) a model trained by replaying a
captured step, with a last partial batch and a changing learning rate, must end
with the same parameters as a twin trained step by step. On NumPy the factory
returns the eager step, checked against the written-out loop. On the emulated GPU (CI) and on a
real one: with dropout on, replays equal eager steps (the same masks from the device counter), two
replays draw different masks, a changed lr takes effect without re-capture; on the emulated GPU
also: a first replay that differs turns the graph off, and a product outside the bound cuBLAS path
is refused in capture and the step goes on eagerly.
"""

import numpy as np
import pytest

from gpunet import backend, optim, train_step
from gpunet.ops import philox
from gpunet.testing import emulated
from gpunet.model import FullyConnectedNet

N, D, C = 64, 24, 5


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
        # the products are direct cuBLAS calls on the bound stream (gpunet/ops/gemm.py): capture works
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


# ---------------------------------------------------------------- control flow, on the emulated GPU
emulated_only = pytest.mark.skipif(emulated.available() is not None, reason=str(emulated.available()))


@pytest.fixture(
    params=[pytest.param("emulated", marks=pytest.mark.emulated), pytest.param("cupy", marks=pytest.mark.gpu)]
)
def device(request):
    """The emulated GPU (CI) and a real one (skipped without): the graph's control flow on both."""
    if request.param == "emulated" and emulated.available():
        pytest.skip(emulated.available())
    if request.param == "cupy" and not backend.gpu_available():
        pytest.skip(f"no usable GPU: {backend.gpu_unavailable_reason()}")
    return request.param


def _same(got, want, device, err_msg=""):
    """Bit for bit on the emulated GPU; on a GPU the eager twin's products are CuPy's own cuBLAS calls,
    which may pick another algorithm than the graph's direct call: equal to float32 rounding."""
    if device == "emulated":
        np.testing.assert_array_equal(got, want, err_msg=err_msg)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=err_msg)


def _twins(rule, dropout=0.3):
    return [
        FullyConnectedNet([32, 16], input_dim=D, num_classes=C, dropout=dropout, reg=1e-3, seed=3)
        for _ in range(2)
    ]


def _run(step, model, batches, lrs):
    """Train on ``batches`` with one lr per step; the dropout stream keyed from the model's generator."""
    philox.follow(model.rng, force=True)
    losses = [float(step(X, y, lr)) for (X, y), lr in zip(batches, lrs)]
    return {k: backend.to_numpy(v) for k, v in model.params.items()}, losses


@pytest.mark.parametrize("rule", ["adam", "sgd_momentum"])
def test_replays_with_dropout_equal_eager_steps(device, rule):
    """Dropout on, lr changing every step, a last partial batch: the replayed steps give exactly the eager
    steps' losses and parameters (the same masks from the same device counter), without re-capture."""
    with backend.using(device) as xp:
        batches = _data(xp, n_batches=4)
        batches = batches[:4] * 2 + batches[4:]  # 8 full batches, then the partial one
        lrs = [0.05 / (1 + 0.3 * k) for k in range(len(batches))]
        a, b = _twins(rule)
        replay = train_step.make_train_step(a, optim.Optimizer(rule, {"weight_decay": 1e-3}))
        assert isinstance(replay, train_step.GraphStep)
        got, got_losses = _run(replay, a, batches, lrs)
        graph = replay.graph
        want, want_losses = _run(
            train_step.eager_step(b, optim.Optimizer(rule, {"weight_decay": 1e-3})), b, batches, lrs
        )
    assert replay.failed is None and graph is not None and replay.replays == 7  # calls 2..8; 9 is partial
    assert replay.check_diff == 0.0 if device == "emulated" else replay.check_diff < 1e-4
    _same(np.array(got_losses), np.array(want_losses), device)
    for k in want:
        _same(got[k], want[k], device, err_msg=k)


def test_two_replays_draw_different_masks(device):
    """The same batch with lr 0 (nothing moves but the counter): each replay drops other units, and the
    units it drops are the Philox twin's for the counter the device holds."""
    with backend.using(device) as xp:
        model = _twins("sgd", dropout=0.5)[0]
        step = train_step.make_train_step(model, optim.Optimizer("sgd", {}))
        X, y = _data(xp, 1)[0]
        st = philox.stream(xp).follow(model.rng, force=True)
        masks, losses = [], []
        for _ in range(4):
            key, off = st.host_state()
            losses.append(float(step(X, y, 0.0)))
            a1 = backend.to_numpy(model._buffers[("a1", (N, 32))])
            masks.append(a1 != 0)
            relu = backend.to_numpy(X) @ backend.to_numpy(model.params["W1"]) + backend.to_numpy(
                model.params["b1"]
            )
            keep = philox.keep_mask(a1.size, key, off, 0.5).reshape(a1.shape)
            clear = np.abs(relu) > 1e-4  # (on a GPU the host product may round across 0 where relu ~ 0)
            np.testing.assert_array_equal(masks[-1][clear], (keep & (relu > 0))[clear])
    assert step.replays == 3  # calls 2 (captured, launched once, checked against an eager step), 3 and 4
    assert not np.array_equal(masks[2], masks[3]) and losses[2] != losses[3]


def test_a_changed_lr_takes_effect_without_recapture(device):
    with backend.using(device) as xp:
        a, b = _twins("adam", dropout=0.0)
        step = train_step.make_train_step(a, optim.Optimizer("adam", {}))
        batches = _data(xp, 3)[:3]
        for X, y in batches:
            step(X, y, 1e-3)
        graph = step.graph
        w = backend.to_numpy(a.params["W1"]).copy()
        step(*batches[0], 0.0)  # lr 0: Adam moves nothing
        _same(backend.to_numpy(a.params["W1"]), w, device)
        step(*batches[1], 0.5)
        assert step.graph is graph and step.replays == 4  # calls 2 (the capture) to 5
        eager = train_step.eager_step(b, optim.Optimizer("adam", {}))
        for (X, y), lr in zip(batches + batches[:2], [1e-3] * 3 + [0.0, 0.5]):
            eager(X, y, lr)
    _same(backend.to_numpy(a.params["W1"]), backend.to_numpy(b.params["W1"]), device)


def _cnn(seed=3):
    """Convolutions (one padded, one strided), batch norm, the pool's ReLU, dropout: every CNN op."""
    from gpunet import nn

    return nn.Sequential(
        [
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 8),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(8, C),
        ],
        reg=1e-3,
        seed=seed,
        input_shape=(3, 8, 8),
    )


def _images(xp, n_batches=4, partial=5):
    rng = np.random.default_rng(11)
    sizes = [16] * n_batches + [partial]
    return [
        (xp.asarray(rng.standard_normal((n, 3, 8, 8)).astype(np.float32)), xp.asarray(rng.integers(0, C, n)))
        for n in sizes
    ]


def _cnn_replay_equals_eager(device, rule="adam"):
    with backend.using(device) as xp:
        batches = _images(xp)
        batches = batches[:4] * 2 + batches[4:]
        lrs = [1e-2 / (1 + 0.3 * k) for k in range(len(batches))]
        a, b = _cnn(), _cnn()
        replay = train_step.make_train_step(a, optim.Optimizer(rule, {}))
        assert isinstance(replay, train_step.GraphStep)
        got, got_losses = _run(replay, a, batches, lrs)
        want, want_losses = _run(train_step.eager_step(b, optim.Optimizer(rule, {})), b, batches, lrs)
        buffers = [(backend.to_numpy(a.buffers[k]), backend.to_numpy(b.buffers[k])) for k in a.buffers]
    assert replay.failed is None and replay.graph is not None and replay.replays == 7, replay.failed
    _same(np.array(got_losses), np.array(want_losses), device)
    for k in want:
        _same(got[k], want[k], device, err_msg=k)
    for g, w in buffers:  # batch norm's running statistics
        _same(g, w, device)
    return replay


@pytest.mark.parametrize("rule", ["adam", "sgd_momentum"])
def test_the_cnn_step_is_captured_and_replays_equal_eager_steps(device, rule):
    """The CNN's step in one graph: the convolutions' products go through the bound cuBLAS handle
    (``gemm.matmul``), batch norm and pooling are kernels; replays (dropout on, lr changing, the last
    partial batch eager) equal the eager steps. On a GPU cuDNN plans built and checked in the warm-up
    run inside the capture."""
    replay = _cnn_replay_equals_eager(device, rule)
    assert replay.check_diff == 0.0 if device == "emulated" else replay.check_diff < 1e-4


@emulated_only
def test_inside_the_cnn_graph_only_cudnn_plans_checked_in_the_warm_up_run(monkeypatch):
    """With a stand-in cuDNN executor (tests/kernels/test_cudnn.py): every plan is built and checked in the
    eager warm-up, none inside the capture, the captured step runs the checked plans, replays equal
    eager steps."""
    from tests.kernels.test_cudnn import StandIn

    from gpunet.ops import cudnn

    monkeypatch.setattr(cudnn.CUDNN, "cache", cudnn.PlanCache())
    monkeypatch.setattr(cudnn.CUDNN, "enabled", True)
    ex = StandIn()
    monkeypatch.setattr(cudnn.CUDNN, "executor", ex)
    built_in_capture, runs_in_capture = [], []
    build, run = ex.build, ex.run
    monkeypatch.setattr(
        ex, "build", lambda key, arrays: (built_in_capture.append(cudnn._capturing()), build(key, arrays))[1]
    )
    monkeypatch.setattr(
        ex, "run", lambda plan, arrays: (runs_in_capture.append(cudnn._capturing()), run(plan, arrays))[1]
    )
    _cnn_replay_equals_eager("emulated")
    assert ex.builds and not any(built_in_capture)  # fprop, wgrad and dgrad keys, all outside the capture
    # (the stand-in knows convolutions only: batch norm's cuDNN keys, issue 21, fall back to the reference)
    conv_disabled = [k for k in cudnn.CUDNN.cache.disabled if isinstance(k, cudnn.PlanKey)]
    assert any(runs_in_capture) and not conv_disabled
    assert {k for k in ex.builds} <= cudnn.CUDNN.cache.checked


@emulated_only
def test_a_first_replay_that_differs_turns_the_graph_off(monkeypatch, caplog):
    """The first-replay check: a graph that forgets the update is caught, said once, and training goes on
    eagerly with the eager step's results."""

    def broken(self):  # a "graph" whose replay runs the forward only: no update
        return train_step._PyGraph(lambda: self.model.loss(self.X, self.y)), False

    monkeypatch.setattr(train_step.GraphStep, "_capture", broken)
    with backend.using("emulated") as xp:
        a, b = _twins("sgd_momentum")
        step = train_step.make_train_step(a, optim.Optimizer("sgd_momentum", {}))
        batches = _data(xp, 4)[:4]
        with caplog.at_level("INFO", logger="gpunet"):
            got, got_losses = _run(step, a, batches, [0.05] * 4)
        want, want_losses = _run(
            train_step.eager_step(b, optim.Optimizer("sgd_momentum", {})), b, batches, [0.05] * 4
        )
    assert step.failed is not None and "first replay differs" in step.failed
    assert sum("first replay differs" in r.getMessage() for r in caplog.records) == 1
    assert got_losses == want_losses
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@emulated_only
def test_a_first_replay_that_leaves_the_optimizer_state_behind_turns_the_graph_off(monkeypatch):
    """The first-replay check looks at every array a step changes: a graph that updates the parameters but
    not the momentum (the parameters alone agree after one step) is caught."""

    def forgetful(self):
        def body():
            velocity = [s["velocity"].copy() for s in self.opt.state.values()]
            self._body()
            for s, v in zip(self.opt.state.values(), velocity):
                s["velocity"][...] = v

        return train_step._PyGraph(body), False

    monkeypatch.setattr(train_step.GraphStep, "_capture", forgetful)
    with backend.using("emulated") as xp:
        a, _ = _twins("sgd_momentum")
        step = train_step.make_train_step(a, optim.Optimizer("sgd_momentum", {}))
        _run(step, a, _data(xp, 3)[:3], [0.05] * 3)
    assert step.failed is not None and "first replay differs" in step.failed


@emulated_only
def test_a_graph_whose_first_launch_fails_leaves_the_step_eager(monkeypatch):
    """A captured graph whose first launch raises (CUDA instantiates it then: an error there is a failed
    capture) is said, and training goes on eagerly with the eager twin's results, not an exception."""

    class _Unlaunchable:
        def launch(self, stream=None):
            raise RuntimeError("cudaErrorInvalidValue: cudaGraphInstantiate")

    def unlaunchable(self):
        s = self.stream
        s.begin_capture()
        try:
            s.end_capture()
        except RuntimeError:
            pass
        return _Unlaunchable(), False

    monkeypatch.setattr(train_step.GraphStep, "_capture", unlaunchable)
    with backend.using("emulated") as xp:
        a, b = _twins("adam")
        step = train_step.make_train_step(a, optim.Optimizer("adam", {}))
        batches = _data(xp, 3)[:3]
        got, got_losses = _run(step, a, batches, [1e-2] * 3)
        want, want_losses = _run(
            train_step.eager_step(b, optim.Optimizer("adam", {})), b, batches, [1e-2] * 3
        )
    assert step.failed is not None and "cudaGraphInstantiate" in step.failed
    assert got_losses == want_losses
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@emulated_only
def test_a_product_outside_the_bound_stream_is_refused_in_capture(monkeypatch):
    """A product through CuPy's own cuBLAS call inside the capture is refused (as CuPy 14 refuses it): the
    step says why, restores what the capture changed and trains on eagerly, as its eager twin does."""
    from gpunet.ops import gemm

    monkeypatch.setattr(gemm, "matmul", lambda xp, A, B, out=None: xp.matmul(A, B, out=out))
    with backend.using("emulated") as xp:
        a, b = _twins("adam")
        step = train_step.make_train_step(a, optim.Optimizer("adam", {}))
        batches = _data(xp, 3)[:3]
        got, got_losses = _run(step, a, batches, [1e-2] * 3)
        want, want_losses = _run(
            train_step.eager_step(b, optim.Optimizer("adam", {})), b, batches, [1e-2] * 3
        )
    assert step.failed is not None and "cuBLAS" in step.failed and step.replays == 0
    assert got_losses == want_losses
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_old_module_names_still_import():
    """gpunet.cudagraph and gpunet.data.stream were renamed (issue 20); their names keep working."""
    from gpunet import cudagraph
    from gpunet.data import stream

    assert cudagraph is train_step and stream.H5Loader.__module__ == "gpunet.data.h5loader"


@emulated_only
def test_a_table_a_graph_reads_is_never_evicted():
    """The multi-tensor launch's pointer table made by an eager step (the warm-up) and found again inside
    the capture (the same pool blocks) is kept however many eager tables follow: evicted, its device
    memory would be reused while every replay still reads it."""
    from gpunet import multi_tensor

    with backend.using("emulated") as xp:
        mt = multi_tensor.MultiTensor(None)  # the table does not depend on the rule
        rows = [[0, 1, 2]]
        dev = mt._table(xp, rows)
        s = xp.cuda.Stream()
        with s:
            s.begin_capture()
            try:
                assert mt._table(xp, rows) is dev
            finally:
                try:
                    s.end_capture()
                except RuntimeError:
                    pass
        for k in range(3 * multi_tensor._KEEP):  # later eager steps' tables
            mt._table(xp, [[k + 10, 1, 2]])
        assert mt._table(xp, rows) is dev


@emulated_only
def test_the_scalars_kernel_is_loaded_before_the_capture(monkeypatch):
    """The scalars kernel runs only inside the graph: it is compiled and loaded before the capture begins
    (``Kernel.compile``: ``cupy.RawKernel.compile`` on CuPy), not first launched inside it."""
    from gpunet import cuda_sources

    seen = []

    class _Built:
        def compile(self):
            seen.append("compiled")

    monkeypatch.setattr(cuda_sources, "_compiled", {"k": _Built()})
    cuda_sources.Kernel(cuda_sources.CudaSource("k", "raw", "", function="k")).compile()
    assert seen == ["compiled"]
    real_capture = train_step.GraphStep._capture

    def capture(self):
        seen.append("capture")
        return real_capture(self)

    monkeypatch.setattr(cuda_sources.Kernel, "compile", lambda self: seen.append("compiled"))
    monkeypatch.setattr(train_step.GraphStep, "_capture", capture)
    seen.clear()
    with backend.using("emulated") as xp:
        a, _ = _twins("adam")
        step = train_step.make_train_step(a, optim.Optimizer("adam", {}))
        _run(step, a, _data(xp, 2)[:2], [1e-2] * 2)
    assert seen == ["compiled", "capture"] and step.failed is None
