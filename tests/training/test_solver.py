"""The Solver: sampling, histories, best-parameter restore, early stopping, checkpoints, resume."""

import json

import numpy as np
import pytest

from gpunet import FullyConnectedNet, Solver, TrainingDiverged, backend
from gpunet.data import ArrayLoader

from common import separable_data


_data = separable_data


def _solver(tmp_path=None, data=None, **kw):
    model = FullyConnectedNet([16, 16], input_dim=10, num_classes=3, dropout=0.2, seed=0)
    opts = dict(
        update_rule="adam",
        optim_config={"learning_rate": 3e-3},
        batch_size=16,
        num_epochs=4,
        verbose=False,
        seed=5,
    )
    if tmp_path is not None:
        opts["checkpoint_name"] = str(tmp_path / "run")
    opts.update(kw)
    return Solver(model, data or _data(), **opts)


def test_array_loader_draws_without_replacement_and_reshuffles(xp):
    X = np.arange(50, dtype=np.float32)[:, None]
    loader = ArrayLoader(X, np.arange(50), batch_size=8, seed=1)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        seen = np.concatenate([backend.to_numpy(yb) for _, yb in loader])
        assert sorted(seen.tolist()) == list(range(50))  # each sample exactly once
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])
    loader.set_epoch(0)
    again = np.concatenate([backend.to_numpy(yb) for _, yb in loader])
    np.testing.assert_array_equal(again, orders[0])  # same seed and epoch: same order
    assert len(loader) == 7
    assert len(ArrayLoader(X, np.arange(50), batch_size=8, drop_last=True)) == 6


def test_histories_and_best_params_restored(xp):
    solver = _solver(num_epochs=5).train()
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 5
    assert len(solver.loss_history) == 5 * 6  # 90 samples, batches of 16
    best = int(np.argmax(solver.val_acc_history))
    assert solver.best_epoch == best
    assert solver.check_accuracy(solver.val_loader) == pytest.approx(solver.val_acc_history[best])
    assert solver.val_acc_history[best] > 0.6  # the blobs are easy


def test_early_stopping(xp):
    # a learning rate of ~0 never improves after the first epoch
    solver = _solver(num_epochs=20, patience=2, optim_config={"learning_rate": 1e-12}).train()
    assert solver.stopped_early
    assert len(solver.val_acc_history) == 3


def test_checkpoint_history_and_resume_equal_uninterrupted(xp, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = _solver(tmp_path / "a", num_epochs=4).train()

    class Interrupt(Exception):
        pass

    def stop_after_two(solver, epoch):
        if epoch == 1:
            raise Interrupt

    first = _solver(tmp_path / "b", num_epochs=4, on_epoch_end=stop_after_two)
    with pytest.raises(Interrupt):
        first.train()
    ckpt = tmp_path / "b" / "run.ckpt.npz"
    assert ckpt.exists() and not [p for p in (tmp_path / "b").iterdir() if ".tmp-" in p.name]
    hist = json.loads((tmp_path / "b" / "run.history.json").read_text())
    assert hist["epochs_done"] == 2 and len(hist["val_acc"]) == 2

    resumed = _solver(tmp_path / "b", num_epochs=4, resume=True)
    assert resumed.epoch == 2
    resumed.train()
    for k in full.model.params:
        np.testing.assert_array_equal(
            backend.to_numpy(resumed.model.params[k]), backend.to_numpy(full.model.params[k])
        )
    assert resumed.val_acc_history == full.val_acc_history
    assert resumed.loss_history == pytest.approx(full.loss_history, rel=0, abs=0)


def test_resume_refuses_another_seed(tmp_path):
    _solver(tmp_path, num_epochs=1).train()
    with pytest.raises(ValueError, match="seed 5, not 6"):
        _solver(tmp_path, num_epochs=2, seed=6, resume=True)


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(xp, tmp_path):
    solver = _solver(tmp_path, num_epochs=3, update_rule="sgd", optim_config={"learning_rate": 1e-2})
    solver.train()
    before = (tmp_path / "run.ckpt.npz").read_bytes()
    solver.num_epochs = 5
    solver.optimizer.config.learning_rate = 1e30  # diverges at once
    with pytest.raises(TrainingDiverged, match=r"loss became .* at epoch 4.*lower the learning rate"):
        solver.train()
    assert (tmp_path / "run.ckpt.npz").read_bytes() == before  # last good checkpoint untouched
    assert all(np.isfinite(backend.to_numpy(p)).all() for p in solver.model.params.values())


def test_accepts_batch_iterators(xp):
    d = _data()
    loaders = {
        "train": ArrayLoader(d["X_train"], d["y_train"], 16, seed=0),
        "val": ArrayLoader(d["X_val"], d["y_val"], 64, shuffle=False),
    }
    solver = _solver(data=loaders, num_epochs=3).train()
    assert len(solver.val_acc_history) == 3 and solver.best_val_acc > 0.5


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(update_rule="sgdd"), "update_rule"),
        (dict(optim_config={"lr": 1}), "optim_config"),
        (dict(schedule="linear"), "schedule"),
        (dict(bogus=1), r"unrecognized option\(s\) \['bogus'\]"),
        (dict(patience=0), "patience"),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        _solver(**kw)


def test_bad_labels():
    d = _data()
    d["y_train"] = d["y_train"].copy()
    d["y_train"][3] = 7
    with pytest.raises(ValueError, match=r"y_train: expected labels in \[0, 3\)"):
        _solver(data=d)
    d = _data()
    d["y_val"] = d["y_val"][:-1]
    with pytest.raises(ValueError, match="y_val: expected 30 labels, got 29"):
        _solver(data=d)


def test_lr_decay_is_the_coursework_exponential_schedule():
    solver = _solver(
        num_epochs=3, lr_decay=0.5, update_rule="sgd", optim_config={"learning_rate": 0.1}
    ).train()
    assert solver.lr_history == pytest.approx([0.1, 0.05, 0.025])


class _FirstColumnModel:
    """Scores whose argmax is X[:, 0]; records the rows (X[:, 1]) it was asked about."""

    num_classes, dtype = 3, np.dtype(np.float32)

    def __init__(self):
        self.seen = []

    def loss(self, X, y=None):
        X = backend.to_numpy(X)
        self.seen += X[:, 1].astype(int).tolist()
        return backend.to_device(np.eye(3, dtype=np.float32)[X[:, 0].astype(int)])


def test_check_accuracy_takes_arrays_like_the_coursework():
    solver = _solver()
    fake = _FirstColumnModel()
    solver.model = fake
    pred = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    y = np.array([0, 1, 2, 0, 1, 2, 0, 2, 1, 1])  # 7 of 10 right, counted by hand
    X = np.stack([pred, np.arange(10)], axis=1).astype(np.float32)
    assert solver.check_accuracy(X, y) == pytest.approx(0.7)
    fake.seen.clear()
    assert solver.check_accuracy(X, y, batch_size=3) == pytest.approx(0.7)  # 3 + 3 + 3 + 1
    assert sorted(fake.seen) == list(range(10))
    fake.seen.clear()
    acc = solver.check_accuracy(X, y, num_samples=4, batch_size=3)
    picked = sorted(fake.seen)
    assert len(set(picked)) == 4  # a subsample without replacement
    assert acc == pytest.approx(np.mean(pred[picked] == y[picked]))
    fake.seen.clear()
    assert solver.check_accuracy(X, y, num_samples=4) == acc and sorted(fake.seen) == picked  # seeded
    assert solver.check_accuracy(X, y, num_samples=50) == pytest.approx(0.7)
    loader = ArrayLoader(X, y, 4, shuffle=False)
    assert solver.check_accuracy(loader) == pytest.approx(0.7)  # the loader form still works
    assert np.isnan(solver.check_accuracy(None))
    with pytest.raises(ValueError, match=r"y: expected shape \(10,\)"):
        solver.check_accuracy(X, y[:5])


def test_solver_config_and_coursework_keywords():
    from gpunet.solver import SolverConfig

    course = dict(
        update_rule="sgd_momentum",
        optim_config={"learning_rate": 1e-2},
        lr_decay=0.9,
        batch_size=8,
        num_epochs=2,
        num_train_samples=50,
        num_val_samples=20,
        print_every=3,
        verbose=False,
        checkpoint_name=None,
    )
    model = FullyConnectedNet([8], input_dim=10, num_classes=3, seed=0)
    a = Solver(model, _data(), **course)
    b = Solver(model, _data(), config=SolverConfig(**course))
    c = Solver(model, _data(), config=SolverConfig(**course), batch_size=4)  # keywords override the config
    for name, value in course.items():
        assert getattr(a, name) == getattr(b, name) == value
    assert a.config == b.config and c.batch_size == 4 and c.config.batch_size == 4
    assert len(a.val_loader.y) == 20 and len(a.train_eval_loader.y) == 50
    with pytest.raises(ValueError, match="print_every"):
        Solver(model, _data(), print_every=0)


def test_losses_read_once_per_epoch_when_host_reads_are_costly(monkeypatch):
    """On the GPU the loop must not copy losses to the host every print_every steps."""
    import gpunet.solver as solver_mod

    calls = []
    real = Solver._check_finite

    def counting(self, losses, epoch, it):
        calls.append(len(losses))
        return real(self, losses, epoch, it)

    monkeypatch.setattr(Solver, "_check_finite", counting)
    _solver(num_epochs=2, print_every=2).train()
    assert calls == [2, 2, 2, 6] * 2  # CPU: every 2 of 6 steps, then the epoch
    calls.clear()
    monkeypatch.setattr(solver_mod, "_host_sync_is_free", lambda: False)
    _solver(num_epochs=2, print_every=2).train()
    assert calls == [6, 6]  # "GPU": once per epoch
    solver = _solver(num_epochs=2, print_every=1, update_rule="sgd", optim_config={"learning_rate": 1e30})
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, iteration \d"):
        solver.train()
    assert solver.epoch == 0 and solver.val_acc_history == []  # raised before evaluating the epoch


def test_epoch_generator_is_a_function_of_seed_and_epoch(xp):
    """On CuPy the epoch's generator is reseeded in place; its draws equal a fresh generator's."""
    from gpunet.solver import _epoch_rng

    first = _epoch_rng(None, [5, 0, 1])
    again = _epoch_rng(first, [5, 3, 1])
    fresh = backend.default_rng([5, 3, 1])
    np.testing.assert_array_equal(
        backend.to_numpy(again.random(1000, dtype=np.float32)),
        backend.to_numpy(fresh.random(1000, dtype=np.float32)),
    )
    if xp is not np and not backend.emulated():  # cuRAND's state (the emulated GPU draws with NumPy's)
        assert again is first  # the same device state, reseeded
    other = _epoch_rng(again, [5, 4, 1])
    epoch3 = backend.default_rng([5, 3, 1])
    assert not np.array_equal(backend.to_numpy(other.random(10)), backend.to_numpy(epoch3.random(10)))


def test_extensions_run_in_priority_order_with_their_triggers():
    """A user extension needs no subclass of Solver: hooks, a trigger (every N epochs), a priority."""
    from gpunet import extensions

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    calls = []

    class Every2(extensions.Extension):
        every = 2

        def initialize(self, solver):
            calls.append("init")

        def after_iteration(self, solver, epoch, it, losses):
            assert len(losses) == it + 1

        def after_epoch(self, solver, epoch):
            calls.append(("every2", epoch, solver.epoch, len(solver.val_acc_history)))  # after Evaluate
            return epoch == 3  # stop after epoch 4

        def finalize(self, solver):
            calls.append("final")

    model = FullyConnectedNet([8], input_dim=6, num_classes=3, seed=0)
    s = Solver(
        model,
        {"X_train": X, "y_train": y, "X_val": X, "y_val": y},
        num_epochs=10,
        batch_size=10,
        verbose=False,
        extensions=[Every2()],
    )
    s.extend(lambda solver, epoch: calls.append(("fn", epoch)))
    s.train()
    assert calls[0] == "init" and calls[-1] == "final"
    assert [c for c in calls if c[0] == "every2"] == [("every2", 1, 2, 2), ("every2", 3, 4, 4)]
    assert [c[1] for c in calls if c[0] == "fn"] == [0, 1, 2, 3] and s.epoch == 4
    names = [type(e).__name__ for e in s.extensions]
    assert names[:6] == ["LearningRate", "Progress", "DivergenceCheck", "Evaluate", "LogReport", "Snapshot"]
    with pytest.raises(TypeError, match="extensions"):
        s.extend(42)
