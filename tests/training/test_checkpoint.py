"""Checkpoints: buffers travel with parameters; a refused checkpoint changes nothing at all."""

import json

import numpy as np
import pytest

from gpunet import FullyConnectedNet, Solver, backend


class BufferedNet(FullyConnectedNet):
    """An FC net with one non-trainable buffer (a running mean of the inputs), as batch norm has."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.buffers = {"0.running_mean": backend.to_device(np.zeros(self.input_dim, self.dtype))}

    def loss(self, X, y=None):
        if y is not None:
            rm = self.buffers["0.running_mean"]
            rm *= 0.9
            rm += 0.1 * X.reshape(len(X), -1).mean(axis=0)
        return super().loss(X, y)

    def set_params(self, params):
        params = dict(params)
        for k in [k for k in params if k in self.buffers]:
            v = params.pop(k)
            if tuple(v.shape) != tuple(self.buffers[k].shape):
                raise ValueError(
                    f"set_params: buffer {k!r} with shape {tuple(v.shape)} does not fit this model"
                )
            self.buffers[k][...] = backend.to_device(v)
        super().set_params(params)


from common import separable_data as _data  # the same small separable problem


def _solver(folder=None, hidden=(16, 16), **kw):
    model = BufferedNet(list(hidden), input_dim=10, num_classes=3, dropout=0.2, seed=0)
    opts = dict(
        update_rule="adam",
        optim_config={"learning_rate": 3e-3},
        batch_size=16,
        num_epochs=4,
        verbose=False,
        seed=5,
    )
    if folder is not None:
        folder.mkdir(exist_ok=True)
        opts["checkpoint_name"] = str(folder / "run")
    opts.update(kw)
    return Solver(model, _data(), **opts)


def _np(v):
    if isinstance(v, dict):
        return {k: _np(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_np(x) for x in v]
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return backend.to_numpy(v).copy()
    return v


def _snapshot(solver) -> dict:
    """Every attribute of the solver, its model (parameters, buffers, generator) and optimizer, as copies."""
    skip = {
        "model",
        "optimizer",
        "train_loader",
        "val_loader",
        "train_eval_loader",
        "schedule",
        "config",
        "on_epoch_end",
        "_rng",
    }
    snap = {k: _np(v) for k, v in vars(solver).items() if k not in skip}
    m = solver.model
    snap["model.params"] = _np(m.params)
    snap["model.buffers"] = _np(m.buffers)
    snap["model.rng"] = json.dumps(m.rng.bit_generator.state, default=str)
    snap["optimizer.state"] = _np(solver.optimizer.state)
    snap["optimizer.config"] = solver.optimizer.config.to_dict()
    return snap


def test_buffers_in_best_snapshot_checkpoint_and_resume(tmp_path):
    full = _solver(tmp_path / "a").train()
    best = full.best_params
    assert set(best) == set(full.model.params) | {"0.running_mean"}
    # the model ends with the best epoch's state: parameters and buffer alike
    np.testing.assert_array_equal(
        backend.to_numpy(full.model.buffers["0.running_mean"]), backend.to_numpy(best["0.running_mean"])
    )
    with np.load(tmp_path / "a" / "run.ckpt.npz") as z:
        assert "buffer/0.running_mean" in z.files and "best/0.running_mean" in z.files

    class Interrupt(Exception):
        pass

    def stop(solver, epoch):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        _solver(tmp_path / "b", on_epoch_end=stop).train()
    resumed = _solver(tmp_path / "b", resume=True)
    assert resumed.epoch == 2 and np.abs(backend.to_numpy(resumed.model.buffers["0.running_mean"])).sum() > 0
    resumed.train()
    np.testing.assert_equal(_np(resumed.model.params), _np(full.model.params))
    np.testing.assert_equal(_np(resumed.model.buffers), _np(full.model.buffers))
    assert resumed.val_acc_history == full.val_acc_history


def _tamper(src, dst, arrays=None, meta=None):
    """Copy checkpoint ``src`` to ``dst`` with some arrays replaced and some description entries changed."""
    with np.load(src) as z:
        a = {k: z[k] for k in z.files}
    desc = json.loads(a.pop("__meta__").tobytes())
    a.update(arrays or {})
    desc.update(meta or {})
    a["__meta__"] = np.frombuffer(json.dumps(desc).encode(), np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **a)
    return dst


@pytest.mark.parametrize(
    "case,match",
    [
        ("seed", "seed 5, not 6"),
        ("version", "version 99"),
        ("format", "not a gpunet checkpoint"),
        ("param_shape", r"param/W2: expected shape \(16, 16\), found \(16, 15\)"),
        ("missing_param", r"param: .*missing \['b3'\]"),
        ("buffer_shape", r"buffer/0.running_mean: expected shape \(10,\), found \(9,\)"),
        ("best_shape", r"best/W1: expected shape \(10, 16\)"),
        ("opt_shape", r"opt/W3/m: expected shape \(16, 3\)"),
        ("opt_unknown", r"opt/W9/m: expected opt/<parameter>/<slot>"),
        ("update_rule", "update_rule 'adam', not 'rmsprop'"),
        ("model", "checkpoint is for a model"),
        ("param_nan", "param/W2: expected finite values, found NaN or inf"),  # issue 24 #12
        ("best_inf", "best/W1: expected finite values"),
        ("opt_nan", "opt/W3/m: expected finite values"),
    ],
)
def test_refused_checkpoint_leaves_solver_exactly_as_it_was(tmp_path, case, match):
    src = tmp_path / "a" / "run.ckpt.npz"
    _solver(tmp_path / "a", num_epochs=2).train()
    kw = {"seed": 6} if case == "seed" else {}
    if case == "update_rule":
        kw = {"update_rule": "rmsprop"}
    if case == "model":
        kw = {"hidden": (16, 15)}
    # a solver one epoch into its own run, with optimizer state, histories and a best snapshot
    b = _solver(tmp_path / "b", num_epochs=1, optim_config={"learning_rate": 1e-3}, **kw).train()
    z = dict(np.load(src))
    bad = {
        "version": ({}, {"version": 99}),
        "format": ({}, {"format": "something-else"}),
        "param_shape": ({"param/W2": z["param/W2"][:, :15]}, {}),
        "buffer_shape": ({"buffer/0.running_mean": z["buffer/0.running_mean"][:9]}, {}),
        "best_shape": ({"best/W1": z["best/W1"][:5]}, {}),
        "opt_shape": ({"opt/W3/m": z["opt/W3/m"][:, :2]}, {}),
        "opt_unknown": ({"opt/W9/m": z["opt/W3/m"]}, {}),
        "param_nan": ({"param/W2": np.where(z["param/W2"] > 0, np.nan, z["param/W2"])}, {}),
        "best_inf": ({"best/W1": np.full_like(z["best/W1"], np.inf)}, {}),
        "opt_nan": ({"opt/W3/m": np.full_like(z["opt/W3/m"], np.nan)}, {}),
    }
    path = src
    if case in bad:
        path = _tamper(src, tmp_path / "bad.npz", *bad[case])
    if case == "missing_param":
        z.pop("param/b3")
        desc = z.pop("__meta__")
        with open(tmp_path / "bad.npz", "wb") as f:
            np.savez(f, __meta__=desc, **z)
        path = tmp_path / "bad.npz"
    before = _snapshot(b)
    with pytest.raises(ValueError, match=match) as err:
        b.load_checkpoint(path)
    assert str(path) in str(err.value)
    np.testing.assert_equal(_snapshot(b), before)


def test_accepted_checkpoint_changes_the_solver(tmp_path):
    """The converse of the refusal test: the snapshot does see a real restore."""
    _solver(tmp_path / "a", num_epochs=2).train()
    b = _solver(tmp_path / "b", num_epochs=1, optim_config={"learning_rate": 1e-3}).train()
    before = _snapshot(b)
    b.load_checkpoint(tmp_path / "a" / "run.ckpt.npz")
    after = _snapshot(b)
    assert after["epoch"] == 2 and before["epoch"] == 1
    for k in ("model.params", "model.buffers", "optimizer.state", "best_params"):
        with pytest.raises(AssertionError):
            np.testing.assert_equal(after[k], before[k])


def test_sequential_batchnorm_running_stats_resume_exactly(tmp_path):
    """The real thing: a gpunet.nn model with batch-norm buffers, interrupted and resumed."""
    from gpunet.nn import BatchNorm1d, Dropout, Linear, ReLU, Sequential

    def make(folder, **kw):
        model = Sequential([Linear(10, 16), BatchNorm1d(16), ReLU(), Dropout(0.2), Linear(16, 3)], seed=0)
        folder.mkdir(exist_ok=True)
        return Solver(
            model,
            _data(),
            update_rule="adam",
            optim_config={"learning_rate": 3e-3},
            batch_size=16,
            num_epochs=3,
            verbose=False,
            seed=5,
            checkpoint_name=str(folder / "run"),
            **kw,
        )

    full = make(tmp_path / "a").train()
    assert {"1.running_mean", "1.running_var"} <= set(full.best_params)

    def stop(solver, epoch):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "b", on_epoch_end=stop).train()
    resumed = make(tmp_path / "b", resume=True)
    assert resumed.epoch == 1
    resumed.train()
    np.testing.assert_equal(_np(resumed.model.params), _np(full.model.params))
    np.testing.assert_equal(_np(resumed.model.buffers), _np(full.model.buffers))
    assert not np.allclose(backend.to_numpy(full.model.buffers["1.running_var"]), 1.0)  # they did move


def test_checkpoint_from_before_models_named_their_kind_still_resumes(tmp_path):
    _solver(tmp_path / "a", num_epochs=1).train()
    src = tmp_path / "a" / "run.ckpt.npz"
    with np.load(src) as z:
        desc = json.loads(z["__meta__"].tobytes())
    model = {k: v for k, v in desc["model"].items() if k != "kind"}
    old = _tamper(src, tmp_path / "old.npz", meta={"model": model})
    b = _solver(tmp_path / "b", num_epochs=2)
    b.load_checkpoint(old)
    assert b.epoch == 1
    with pytest.raises(ValueError, match="checkpoint is for a model"):
        _solver(tmp_path / "c", num_epochs=2, hidden=(16, 8)).load_checkpoint(old)
