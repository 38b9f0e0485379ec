"""The Solver's step updates each layer inside the backward pass (``model.loss(..., on_grad=...)``).

Oracle: the plain composition, ``model.loss(X, y)`` then ``Optimizer.step``, on a twin model.
The arithmetic is the same on the same values, so parameters, optimizer state and losses must
be bit-identical after several steps, for every update rule, with dropout, L2 and batch norm.
"""

import numpy as np
import pytest

from gpunet import backend, optim, train_step
from gpunet.model import FullyConnectedNet
from h5_fixtures import numpy_backend  # noqa: F401 (a shared fixture)
from gpunet.nn import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential

RULES = [
    ("sgd", {}),
    ("sgd_momentum", {"momentum": 0.9}),
    ("nesterov", {"momentum": 0.9}),
    ("rmsprop", {}),
    ("adam", {}),
    ("adamw", {"weight_decay": 1e-2}),
]


def _fc():
    return FullyConnectedNet([16, 12], input_dim=20, num_classes=5, dropout=0.3, reg=1e-3, seed=4)


def _cnn():
    return Sequential(
        [
            Conv2d(2, 4, 3, padding=1),
            BatchNorm2d(4),
            ReLU(),
            MaxPool2d(2),
            Flatten(),
            Linear(4 * 3 * 3, 8),
            ReLU(),
            Dropout(0.3),
            Linear(8, 5),
        ],
        reg=1e-3,
        seed=4,
    )


def _batches(shape, n=4):
    rng = np.random.default_rng(11)
    return [(rng.standard_normal((6,) + shape).astype(np.float32), rng.integers(0, 5, 6)) for _ in range(n)]


def _plain_step(model, opt):
    def step(X, y, lr):
        loss, grads = model.loss(X, y)
        opt.step(model.params, grads, lr)
        return loss

    return step


@pytest.mark.parametrize("rule,cfg", RULES, ids=[r for r, _ in RULES])
@pytest.mark.parametrize("make,shape", [(_fc, (20,)), (_cnn, (2, 6, 6))], ids=["fc", "cnn"])
def test_update_inside_backward_is_bit_identical(numpy_backend, make, shape, rule, cfg):
    fused_model, plain_model = make(), make()
    fused_opt, plain_opt = optim.Optimizer(rule, dict(cfg)), optim.Optimizer(rule, dict(cfg))
    fused, plain = train_step.eager_step(fused_model, fused_opt), _plain_step(plain_model, plain_opt)
    calls = []
    original = fused_opt.update
    fused_opt.update = lambda name, *a: (calls.append(name), original(name, *a))
    before = {k: v.copy() for k, v in plain_model.params.items()}
    for k, (X, y) in enumerate(_batches(shape)):
        lr = 0.05 / (1 + k)
        assert float(fused(X, y, lr)) == float(plain(X, y, lr))
    # every parameter went through the per-layer path, last layer first
    n = len(plain_model.params)
    assert len(calls) == 4 * n and set(calls) == set(plain_model.params)
    assert calls[0] in list(plain_model.params)[-2:]
    for k in plain_model.params:
        assert np.array_equal(fused_model.params[k], plain_model.params[k]), k
        assert not np.array_equal(plain_model.params[k], before[k]) or k.endswith("b"), k
        for s in plain_opt.state[k]:
            assert np.array_equal(np.asarray(fused_opt.state[k][s]), np.asarray(plain_opt.state[k][s])), (
                k,
                s,
            )
    for k in getattr(plain_model, "buffers", {}):
        assert np.array_equal(fused_model.buffers[k], plain_model.buffers[k]), k


def test_models_without_on_grad_still_train(numpy_backend):
    """A coursework-style model whose loss takes only (X, y) gets the plain composition."""

    class Tiny:
        def __init__(self):
            self.params = {"W": np.ones((3, 2), np.float32)}

        def loss(self, X, y):
            return np.float32(1.0), {"W": np.full((3, 2), 0.5, np.float32)}

    m = Tiny()
    train_step.eager_step(m, optim.Optimizer("sgd", {}))(np.zeros((1, 3), np.float32), np.zeros(1, int), 0.1)
    np.testing.assert_array_equal(m.params["W"], np.full((3, 2), 0.95, np.float32))
    assert backend.name() == "numpy"


def test_solver_with_and_without_the_fused_update_train_alike(numpy_backend):
    from gpunet import Solver

    rng = np.random.default_rng(5)
    data = {
        "X_train": rng.standard_normal((60, 20)).astype(np.float32),
        "y_train": rng.integers(0, 5, 60),
        "X_val": rng.standard_normal((20, 20)).astype(np.float32),
        "y_val": rng.integers(0, 5, 20),
    }
    models = []
    for fused in (True, False):
        m = _fc()
        Solver(
            m,
            data,
            update_rule="adam",
            batch_size=16,
            num_epochs=2,
            verbose=False,
            seed=3,
            fused_update=fused,
        ).train()
        models.append(m)
    for k in models[0].params:
        assert np.array_equal(models[0].params[k], models[1].params[k]), k
