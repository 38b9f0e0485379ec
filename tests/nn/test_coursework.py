"""The coursework's own calls work unchanged: CS231n's fixed-number checks and CO395's call forms."""

import numpy as np
import pytest

import gpunet
from gpunet import optim
from gpunet.layers import dropout_backward, dropout_forward
from gpunet.solver import Solver

N, D = 4, 5


def lin(a, b):
    return np.linspace(a, b, num=N * D).reshape(N, D)


def test_sgd_momentum_matches_cs231n():
    next_w, config = optim.sgd_momentum(
        lin(-0.4, 0.6), lin(-0.6, 0.4), config={"learning_rate": 1e-3, "velocity": lin(0.6, 0.9)}
    )
    expected_next_w = np.asarray(
        [
            [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
            [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
            [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
            [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096],
        ]
    )
    np.testing.assert_allclose(next_w, expected_next_w, atol=1e-8)
    np.testing.assert_allclose(config["velocity"], 0.9 * lin(0.6, 0.9) - 1e-3 * lin(-0.6, 0.4))


def test_adam_matches_cs231n():
    w = lin(-0.4, 0.6)
    config = {"learning_rate": 1e-2, "m": lin(0.6, 0.9), "v": lin(0.7, 0.5), "t": 5}
    next_w, config = optim.adam(w, lin(-0.6, 0.4), config=config)
    expected_next_w = np.asarray(
        [
            [-0.40094747, -0.34836187, -0.29577703, -0.24319299, -0.19060977],
            [-0.1380274, -0.08544591, -0.03286534, 0.01971428, 0.0722929],
            [0.1248705, 0.17744702, 0.23002243, 0.28259667, 0.33516969],
            [0.38774145, 0.44031188, 0.49288093, 0.54544852, 0.59801459],
        ]
    )
    np.testing.assert_allclose(next_w, expected_next_w, atol=1e-7)
    assert config["t"] == 6
    np.testing.assert_array_equal(w, lin(-0.4, 0.6))  # the caller's w is left alone


def test_rmsprop_and_sgd_follow_their_formulas_with_default_configs():
    w, dw, cache = lin(-0.4, 0.6), lin(-0.6, 0.4), lin(0.6, 0.9)
    next_w, config = optim.rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache.copy()})
    c = 0.99 * cache + 0.01 * dw**2
    np.testing.assert_allclose(next_w, w - 1e-2 * dw / (np.sqrt(c) + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(config["cache"], c, rtol=1e-12)
    next_w, config = optim.sgd(w, dw)  # config=None: the coursework's defaults
    np.testing.assert_allclose(next_w, w - 1e-2 * dw)
    assert config["learning_rate"] == 1e-2
    next_w, config = optim.adam(w, dw)
    assert config["t"] == 1 and config["m"].shape == w.shape
    next_w, config = optim.sgd_momentum(w, dw, None)
    np.testing.assert_allclose(next_w, w - 1e-2 * dw)


def test_dropout_seed_reproduces_the_reference_mask():
    x = np.random.default_rng(0).standard_normal((50, 40)) + 10
    for p in (0.25, 0.4, 0.7):
        out, mask = dropout_forward(x, p=p, seed=123, train=True)
        keep = np.random.RandomState(123).random_sample(x.shape) >= p  # the reference draw
        np.testing.assert_allclose(out, np.where(keep, x / (1 - p), 0))
        out2, _ = dropout_forward(x, p=p, seed=123, train=True)
        np.testing.assert_array_equal(out, out2)  # fixed mask for a fixed seed
        assert abs((out == 0).mean() - p) < 0.05
        np.testing.assert_allclose(dropout_backward(np.ones_like(x), mask, p=p, train=True), keep / (1 - p))
    out, _ = dropout_forward(x, p=0.5, seed=1, train=False)
    np.testing.assert_array_equal(out, x)


def test_np_random_seed_makes_seedless_models_identical():
    def build():
        return gpunet.FullyConnectedNet([20, 10], input_dim=30, num_classes=4, dropout=0.3)

    np.random.seed(395)
    a = build()
    np.random.seed(395)
    b = build()
    X = np.random.default_rng(1).standard_normal((8, 30))
    y = np.arange(8) % 4
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    la, ga = a.loss(X, y)
    lb, gb = b.loss(X, y)
    assert float(la) == float(lb)  # the dropout masks agree too
    np.random.seed(395)
    c = gpunet.FullyConnectedNet([20, 10], input_dim=30, num_classes=4, dropout=0.3, seed=7)
    assert not np.array_equal(c.params["W1"], a.params["W1"])  # an explicit seed wins


def test_solver_check_accuracy_takes_arrays():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 6)), rng.integers(0, 3, 60)
    model = gpunet.FullyConnectedNet([8], input_dim=6, num_classes=3, seed=0)
    solver = Solver(model, {"X_train": X, "y_train": y, "X_val": X, "y_val": y}, verbose=False)
    expected = float((np.asarray(model.loss(X)).argmax(1) == y).mean())
    assert solver.check_accuracy(X, y) == pytest.approx(expected)
    assert solver.check_accuracy(X, y, batch_size=7) == pytest.approx(expected)
    sub = solver.check_accuracy(X, y, num_samples=20)
    assert 0.0 <= sub <= 1.0
