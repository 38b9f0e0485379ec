"""Update rules against reference formulas written out per element; schedules by hand."""

import math

import numpy as np
import pytest

from gpunet import backend, optim
from gpunet.optim import OptimConfig, Optimizer, Schedule, get_rule


def _ref_run(rule, w0, grads, cfg, lr):
    """Independent per-element reference (plain Python floats)."""
    w = [float(v) for v in w0]
    st = [dict(v=0.0, m=0.0, c=0.0) for _ in w]
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(map(float, g)):
            s = st[i]
            w[i] -= lr * cfg.weight_decay * w[i]
            if rule == "sgd":
                w[i] -= lr * gi
            elif rule in ("sgd_momentum", "nesterov"):
                s["v"] = cfg.momentum * s["v"] - lr * gi
                w[i] += cfg.momentum * s["v"] - lr * gi if rule == "nesterov" else s["v"]
            elif rule == "rmsprop":
                s["c"] = cfg.decay_rate * s["c"] + (1 - cfg.decay_rate) * gi * gi
                w[i] -= lr * gi / (math.sqrt(s["c"]) + cfg.epsilon)
            elif rule == "adam":
                s["m"] = cfg.beta1 * s["m"] + (1 - cfg.beta1) * gi
                s["c"] = cfg.beta2 * s["c"] + (1 - cfg.beta2) * gi * gi
                mhat = s["m"] / (1 - cfg.beta1**t)
                vhat = s["c"] / (1 - cfg.beta2**t)
                w[i] -= lr * mhat / (math.sqrt(vhat) + cfg.epsilon)
    return np.array(w)


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "nesterov", "rmsprop", "adam"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_rules_match_reference(xp, rule, wd):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) for _ in range(5)]
    cfg = OptimConfig(learning_rate=0.05, weight_decay=wd)
    opt = Optimizer(rule, cfg)
    params = {"W": xp.asarray(w0.copy())}
    for g in grads:
        opt.step(params, {"W": xp.asarray(g)}, 0.05)
    np.testing.assert_allclose(
        backend.to_numpy(params["W"]), _ref_run(rule, w0, grads, opt.config, 0.05), rtol=1e-10, atol=1e-12
    )


def test_hyperparameters_apart_from_state(xp):
    opt = Optimizer("adam", {"learning_rate": 1e-3})
    params = {"W": xp.ones(3), "b": xp.zeros(2)}
    opt.step(params, {"W": xp.ones(3), "b": xp.ones(2)}, 1e-3)
    assert set(opt.state) == {"W", "b"}
    assert opt.state["W"]["m"].shape == (3,) and opt.state["W"]["t"] == 1
    assert isinstance(opt.config, OptimConfig) and not hasattr(opt.config, "m")


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="update_rule: expected one of .* got 'sgdd'"):
        get_rule("sgdd")
    with pytest.raises(ValueError, match=r"optim_config: unknown key\(s\) \['lr'\]"):
        OptimConfig.from_dict({"lr": 1})
    with pytest.raises(ValueError, match="schedule: expected one of .* got 'linear'"):
        Schedule("linear")
    with pytest.raises(ValueError, match="learning_rate: expected a positive"):
        OptimConfig.from_dict({"learning_rate": -1})


def test_schedules():
    assert [Schedule("constant").factor(e) for e in (0, 5)] == [1.0, 1.0]
    s = Schedule("step", step_size=3, gamma=0.5)
    assert [s.factor(e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    e = Schedule("exponential", gamma=0.9)
    assert math.isclose(e.factor(4), 0.9**4)
    c = Schedule("cosine", total_epochs=10, min_lr_ratio=0.1)
    assert c.factor(0) == 1.0
    assert math.isclose(c.factor(5), 0.1 + 0.9 * 0.5)
    assert math.isclose(c.factor(10), 0.1) and math.isclose(c.factor(20), 0.1)
    w = Schedule("cosine", total_epochs=12, warmup_epochs=2)
    assert [w.factor(0), w.factor(1), w.factor(2)] == [1 / 3, 2 / 3, 1.0]


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
def test_float64_grads_are_converted_to_float32_weights(xp, rule):
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    g64 = rng.standard_normal((5, 3))  # float64
    got, want = {"W": xp.asarray(w0.copy())}, {"W": xp.asarray(w0.copy())}
    optim.Optimizer(rule, {}).step(got, {"W": xp.asarray(g64)}, 0.1)
    optim.Optimizer(rule, {}).step(want, {"W": xp.asarray(g64.astype(np.float32))}, 0.1)
    assert got["W"].dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(got["W"]), backend.to_numpy(want["W"]))


def test_bad_grads_are_refused_with_the_parameter_name(xp):
    params = {"W1": xp.zeros((2, 3), np.float32)}
    opt = optim.Optimizer("sgd", {})
    with pytest.raises(TypeError, match="gradient of W1: expected a floating-point array, got int64"):
        opt.step(params, {"W1": xp.zeros((2, 3), np.int64)}, 0.1)
    with pytest.raises(ValueError, match=r"gradient of W1: expected shape \(2, 3\), got \(3, 2\)"):
        opt.step(params, {"W1": xp.zeros((3, 2), np.float32)}, 0.1)
    with pytest.raises(KeyError, match="no gradient for parameter"):
        opt.step(params, {}, 0.1)
