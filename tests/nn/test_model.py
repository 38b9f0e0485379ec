"""FullyConnectedNet: whole-net gradients, the coursework overfit check, save/load."""

import json

import numpy as np
import pytest

import gpunet
from gpunet import FullyConnectedNet, Solver, backend, load_model
from gradcheck import numerical_gradient, rel_error


@pytest.mark.parametrize("dropout,reg", [(0.0, 0.0), (0.0, 0.7), (0.3, 0.5)])
def test_whole_net_gradcheck_float64(xp, dropout, reg):
    N, D, C = 4, 7, 3
    rng = np.random.default_rng(0)
    X = xp.asarray(rng.standard_normal((N, D)))
    y = xp.asarray(rng.integers(0, C, N))
    model = FullyConnectedNet(
        [6, 5],
        input_dim=D,
        num_classes=C,
        dropout=dropout,
        reg=reg,
        weight_scale=0.5,
        dtype=np.float64,
        seed=1,
    )
    for (
        name,
        b,
    ) in model.params.items():  # nonzero biases: a unit whose inputs all dropped sits off the ReLU kink
        if name.startswith("b"):
            b[...] = xp.asarray(rng.uniform(0.05, 0.2, b.shape))

    def f():
        model.rng = backend.default_rng(42)  # fixed dropout mask for every evaluation
        return model.loss(X, y)[0]

    model.rng = backend.default_rng(42)
    loss, grads = model.loss(X, y)
    for name, p in model.params.items():
        assert grads[name].shape == p.shape
        assert rel_error(grads[name], numerical_gradient(f, p)) < 1e-6, name


def test_l2_term_is_half_reg_sum_of_squares(xp):
    model = FullyConnectedNet([5], input_dim=4, num_classes=3, reg=0.0, dtype=np.float64, seed=0)
    model_r = FullyConnectedNet([5], input_dim=4, num_classes=3, reg=2.5, dtype=np.float64, seed=0)
    X = xp.asarray(np.random.default_rng(1).standard_normal((3, 4)))
    y = xp.asarray([0, 1, 2])
    l0, _ = model.loss(X, y)
    l1, _ = model_r.loss(X, y)
    sq = sum(float((backend.to_numpy(model.params[k]) ** 2).sum()) for k in ("W1", "W2"))
    assert abs(float(l1) - float(l0) - 0.5 * 2.5 * sq) < 1e-10


def test_he_initialisation_and_weight_scale(xp):
    m = FullyConnectedNet([2000], input_dim=3000, num_classes=10, seed=0)
    std = float(backend.to_numpy(m.params["W1"]).std())
    assert abs(std - np.sqrt(2 / 3000)) / np.sqrt(2 / 3000) < 0.02
    m = FullyConnectedNet([50], input_dim=30, num_classes=10, weight_scale=1e-3, seed=0)
    assert abs(float(backend.to_numpy(m.params["W2"]).std()) - 1e-3) < 2e-4
    assert float(abs(backend.to_numpy(m.params["b1"])).max()) == 0.0


def test_scores_in_test_mode_ignore_dropout(xp):
    m = FullyConnectedNet([20], input_dim=6, num_classes=4, dropout=0.5, seed=0)
    X = xp.asarray(np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32))
    s1, s2 = m.loss(X), m.loss(X)
    assert s1.shape == (5, 4)
    np.testing.assert_array_equal(backend.to_numpy(s1), backend.to_numpy(s2))


def test_overfit_50_cifar_shaped_samples(xp):
    """The coursework sanity check: 100% training accuracy within 20 epochs."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (50, 3, 32, 32)).astype(np.float32) / 255 - 0.5
    y = rng.integers(0, 10, 50)
    model = FullyConnectedNet([100, 100], seed=0)
    solver = Solver(
        model,
        {"X_train": X, "y_train": y, "X_val": X, "y_val": y},
        update_rule="adam",
        optim_config={"learning_rate": 1e-3},
        batch_size=25,
        num_epochs=20,
        verbose=False,
        seed=0,
    )
    solver.train()
    assert max(solver.train_acc_history) == 1.0
    assert solver.check_accuracy(solver.train_eval_loader) == 1.0


def test_no_silent_float64_in_float32_training(xp):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    for rule in ("sgd", "sgd_momentum", "nesterov", "rmsprop", "adam"):
        model = FullyConnectedNet([8, 8], input_dim=12, num_classes=3, dropout=0.2, reg=1e-3, seed=0)
        Xd, yd = xp.asarray(X), xp.asarray(y)
        loss, grads = model.loss(Xd, yd)
        assert loss.dtype == np.float32
        assert all(g.dtype == np.float32 for g in grads.values())
        opt = gpunet.Optimizer(rule, {"learning_rate": 1e-2, "weight_decay": 1e-4})
        opt.step(model.params, grads, 1e-2)
        opt.step(model.params, model.loss(Xd, yd)[1], 1e-2)
        assert all(p.dtype == np.float32 for p in model.params.values()), rule
        for st in opt.state.values():
            assert all(v.dtype == np.float32 for v in st.values() if hasattr(v, "dtype")), rule


def test_save_load_round_trip_identical_predictions(xp, tmp_path):
    model = FullyConnectedNet([16, 8], input_dim=10, num_classes=4, dropout=0.25, reg=0.1, seed=3)
    model.meta = {"class_names": ["a", "b", "c", "d"], "mean": [1.0], "std": [2.0]}
    X = xp.asarray(np.random.default_rng(0).standard_normal((9, 10)).astype(np.float32))
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = load_model(path)
    assert gpunet.load_model is load_model
    assert loaded.config() == model.config() and loaded.meta == model.meta
    np.testing.assert_array_equal(backend.to_numpy(loaded.loss(X)), backend.to_numpy(model.loss(X)))
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: no pickled objects inside
        assert sorted(z.files) == sorted(["W1", "b1", "W2", "b2", "W3", "b3", "__meta__"])
        assert all(z[k].dtype != object for k in z.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temporary left behind


def test_model_moves_between_backends(tmp_path):
    model = FullyConnectedNet([4], input_dim=3, num_classes=2, seed=0)
    model.to("numpy")
    assert all(isinstance(p, np.ndarray) for p in model.params.values())
    if backend.gpu_available():
        model.to("cupy")
        assert all(backend.is_device_array(p) for p in model.params.values())
        model.to("numpy")
    else:
        with pytest.raises(backend.BackendError):
            model.to("cupy")


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_model(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz.*not a gpunet model"):
        load_model(bad)
    plain = tmp_path / "plain.npz"
    np.savez(plain, W1=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="plain.npz.*no __meta__"):
        load_model(plain)
    pickled = tmp_path / "pickled.npz"
    np.savez(
        pickled,
        __meta__=np.frombuffer(json.dumps({"format": "gpunet-model"}).encode(), np.uint8),
        W1=np.array([{"evil": 1}], dtype=object),
    )
    with pytest.raises(ValueError, match="pickled.npz"):
        load_model(pickled)
    future = tmp_path / "future.npz"
    np.savez(
        future,
        __meta__=np.frombuffer(json.dumps({"format": "gpunet-model", "version": 99}).encode(), np.uint8),
    )
    with pytest.raises(ValueError, match="future.npz.*newer"):
        load_model(future)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dropout=1.0), "dropout: expected a drop probability"),
        (dict(dropout=-0.1), "dropout: expected a drop probability"),
        (dict(reg=-1.0), "reg: expected >= 0"),
        (dict(hidden_dims=[0]), "hidden_dims: expected positive"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = dict(hidden_dims=[4], input_dim=3, num_classes=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FullyConnectedNet(**args)


def test_loss_rejects_bad_inputs(xp):
    m = FullyConnectedNet([4], input_dim=6, num_classes=3, seed=0)
    with pytest.raises(ValueError, match=r"X: expected 6 features per sample, got shape \(2, 5\)"):
        m.loss(xp.zeros((2, 5), dtype=xp.float32))
    with pytest.raises(ValueError, match=r"y: expected shape \(2,\)"):
        m.loss(xp.zeros((2, 6), dtype=xp.float32), xp.zeros(3, dtype=xp.int64))
    if xp.__name__ == "numpy":
        with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
            m.loss(xp.zeros((2, 6), dtype=xp.float32), xp.asarray([0, 3]))


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    from gpunet.io import atomic_open, write_json

    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as f:
            f.write("{half")
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"a": 1}  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
