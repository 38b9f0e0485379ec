"""The fast paths against the plain kernels: fused layers, cheap dropout masks, fused optimizer updates.

Every test runs on NumPy and on CuPy (the CuPy case skips without a GPU). The
oracle is always a straightforward composition of the coursework kernels in
``gpunet.layers`` or the update formula written out with whole-array NumPy ops.
"""

import json
import math

import numpy as np
import pytest

from gpunet import FullyConnectedNet, backend, optim
from gpunet import threads
from gpunet.layers import (
    dropout_backward,
    dropout_forward,
    keep_mask,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
)
from gpunet.optim import Optimizer


def np_(a):
    return backend.to_numpy(a)


def reference_loss(model, X, y, rng):
    """Loss and gradients of ``model`` from the plain kernels, one step at a time (no fusion, no buffers)."""
    p, L, drop = model.params, model.num_layers, model.dropout
    caches, h = [], X
    for i in range(1, L):
        a = linear_forward(h, p[f"W{i}"], p[f"b{i}"])
        r = relu_forward(a)
        out, mask = dropout_forward(r, drop, True, rng) if drop else (r, None)
        caches.append((h, a, mask))
        h = out
    scores = linear_forward(h, p[f"W{L}"], p[f"b{L}"])
    loss, dout = softmax_loss(scores, y)
    if model.reg:
        loss = loss + 0.5 * model.reg * sum(float((np_(p[f"W{i}"]) ** 2).sum()) for i in range(1, L + 1))
    grads = {}
    dout, grads[f"W{L}"], grads[f"b{L}"] = linear_backward(dout, h, p[f"W{L}"], p[f"b{L}"])
    for i in range(L - 1, 0, -1):
        h_in, a, mask = caches[i - 1]
        if drop:
            dout = dropout_backward(dout, mask, drop, True)
        dout = relu_backward(dout, a)
        dout, grads[f"W{i}"], grads[f"b{i}"] = linear_backward(dout, h_in, p[f"W{i}"], p[f"b{i}"])
    for i in range(1, L + 1):
        grads[f"W{i}"] = grads[f"W{i}"] + model.reg * p[f"W{i}"]
    return loss, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "dropout,reg", [(0.0, 0.0), (0.5, 0.0), (0.25, 0.1), (0.3, 0.0), (1 / 65536 * 777, 0.0)]
)
def test_model_loss_matches_plain_kernels(xp, dtype, dropout, reg):
    """Same inputs, same dropout masks (same generator state): same loss and gradients."""
    rng = np.random.default_rng(5)
    N, D, C = 33, 20, 7
    X = xp.asarray(rng.standard_normal((N, D)).astype(dtype))
    y = xp.asarray(rng.integers(0, C, N))
    model = FullyConnectedNet(
        [16, 12, 9], input_dim=D, num_classes=C, dropout=dropout, reg=reg, dtype=dtype, seed=2
    )
    model.rng = backend.default_rng(11)
    loss, grads = model.loss(X, y)
    ref_loss, ref = reference_loss(model, X, y, backend.default_rng(11))
    tol = dict(rtol=2e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(loss), float(ref_loss), **tol)
    assert set(grads) == set(model.params)
    for k in model.params:
        assert grads[k].dtype == dtype and grads[k].shape == model.params[k].shape
        np.testing.assert_allclose(np_(grads[k]), np_(ref[k]), err_msg=k, **tol)


def test_gradients_are_not_overwritten_by_the_next_call(xp):
    """Buffers are internal: the grads a caller holds survive the next ``loss`` call."""
    rng = np.random.default_rng(0)
    model = FullyConnectedNet([8], input_dim=5, num_classes=3, dropout=0.5, seed=0)
    X1, X2 = (xp.asarray(rng.standard_normal((6, 5)).astype(np.float32)) for _ in range(2))
    y = xp.asarray(rng.integers(0, 3, 6))
    _, g1 = model.loss(X1, y)
    keep = {k: np_(v).copy() for k, v in g1.items()}
    model.loss(X2, y)
    s1 = model.loss(X1)
    s2 = model.loss(X2)
    for k in keep:
        np.testing.assert_array_equal(np_(g1[k]), keep[k])
    assert not np.array_equal(np_(s1), np_(s2))


def test_fused_layer_kernels_match_plain(xp):
    rng = np.random.default_rng(1)
    X = xp.asarray(rng.standard_normal((17, 9)).astype(np.float32))
    W = xp.asarray(rng.standard_normal((9, 13)).astype(np.float32))
    b = xp.asarray(rng.standard_normal(13).astype(np.float32))
    fused = linear_forward(X, W, b, relu=True)
    np.testing.assert_allclose(np_(fused), np_(relu_forward(linear_forward(X, W, b))), rtol=1e-6, atol=1e-6)
    dout = xp.asarray(rng.standard_normal((17, 13)).astype(np.float32))
    plain = relu_backward(dout, fused)
    np.testing.assert_array_equal(np_((lambda d: relu_backward(d, fused, out=d))(dout.copy())), np_(plain))
    np.testing.assert_allclose(
        np_((lambda d: relu_backward(d, fused, out=d, scale=2.0))(dout.copy())), 2 * np_(plain), rtol=1e-7
    )
    h = xp.asarray(rng.standard_normal((40, 50)).astype(np.float32))
    out, mask = dropout_forward(h, 0.5, True, backend.default_rng(3))
    np.testing.assert_array_equal(
        np_((lambda c: dropout_forward(c, 0.5, rng=backend.default_rng(3), out=c)[0])(h.copy())), np_(out)
    )


@pytest.mark.parametrize("p", [0.5, 0.25, 0.75, 1 / 256, 300 / 65536, 0.3, 0.9])
def test_keep_mask_has_the_exact_drop_rate(xp, p):
    n = 400_000
    keep = keep_mask(backend.default_rng(0), (n // 100, 100), p)
    assert keep.shape == (n // 100, 100) and keep.dtype == np.bool_
    assert type(keep) is type(xp.zeros(1))
    dropped = 1 - float(np_(keep).mean())
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)
    g = backend.default_rng(1)
    assert not np.array_equal(np_(keep_mask(g, (4096,), p)), np_(keep_mask(g, (4096,), p)))


def test_keep_mask_independent_across_positions():
    """Neighbouring units of the bit-packed p = 1/2 mask are uncorrelated (no repeated bytes or bits)."""
    keep = np_(keep_mask(np.random.default_rng(0), (1000, 64), 0.5)).astype(float)
    c = np.corrcoef(keep[:, :-1].ravel(), keep[:, 1:].ravel())[0, 1]
    assert abs(c) < 0.01
    rows = np.corrcoef(keep[:-1].ravel(), keep[1:].ravel())[0, 1]
    assert abs(rows) < 0.01


def test_softmax_loss_matches_formula(xp):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((37, 10)) * 5
    y = rng.integers(0, 10, 37)
    loss, d = softmax_loss(xp.asarray(logits), xp.asarray(y))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    ref = -np.log(prob[np.arange(37), y]).mean()
    onehot = np.eye(10)[y]
    np.testing.assert_allclose(float(loss), ref, rtol=1e-12)
    np.testing.assert_allclose(np_(d), (prob - onehot) / 37, rtol=1e-10, atol=1e-15)


def _reference_update(rule, w, g, state, lr, mu=0.9):
    if rule == "sgd":
        return w - lr * g
    v = state.setdefault("v", np.zeros_like(w))
    v[...] = mu * v - lr * g
    return w + (mu * v - lr * g if rule == "nesterov" else v)


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "nesterov"])
@pytest.mark.parametrize("shape", [(7,), (300, 171), (3 * threads.CHUNK + 5,)])
def test_fused_updates_match_formula(xp, rule, shape):
    """The blocked NumPy update and the CuPy kernel against whole-array formulas, several steps."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(shape)
    opt = Optimizer(rule, {"learning_rate": 0.05, "momentum": 0.9})
    params, w_ref, st = {"W": xp.asarray(w0.copy())}, w0.copy(), {}
    for t in range(4):
        g = rng.standard_normal(shape)
        opt.step(params, {"W": xp.asarray(g)}, 0.05 / (t + 1))
        w_ref = _reference_update(rule, w_ref, g, st, 0.05 / (t + 1))
    np.testing.assert_allclose(np_(params["W"]), w_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_threaded_blocked_update_covers_every_element(nesterov):
    """Three threads, ranges cut at block boundaries, a ragged last block: the same as the formula."""
    rng = np.random.default_rng(4)
    n = 3 * threads.PAR_MIN + threads.CHUNK // 3
    w, g, v = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    w_ref, v_ref = w.copy(), 0.9 * v - 0.01 * g
    w_ref += 0.9 * v_ref - 0.01 * g if nesterov else v_ref
    threads.set_num_threads(3)
    try:
        optim.sgd_momentum_(w, g, v, 0.9, 0.01, nesterov)
    finally:
        threads.set_num_threads(None)
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(w, w_ref)


def test_momentum_update_on_non_contiguous_arrays():
    w = np.arange(20.0).reshape(4, 5)[:, ::2].copy(order="F")
    g = np.ones_like(w)
    v = np.zeros_like(w)
    optim.sgd_momentum_(w, g, v, 0.9, 0.1)
    np.testing.assert_allclose(v, -0.1 * np.ones_like(w))


def test_training_step_keeps_the_memory_pool_steady(xp):
    """After the first step a training step allocates no new device memory (CuPy pool)."""
    if xp.__name__ != "cupy":
        pytest.skip("the memory pool is CuPy's; NumPy has no pool to watch")
    pool = xp.get_default_memory_pool()
    rng = np.random.default_rng(0)
    model = FullyConnectedNet([64, 32], input_dim=48, dropout=0.5, seed=0)
    opt = Optimizer("sgd_momentum", {"learning_rate": 1e-3})
    X = xp.asarray(rng.standard_normal((32, 48)).astype(np.float32))
    y = xp.asarray(rng.integers(0, 10, 32))

    def step():
        loss, grads = model.loss(X, y)
        opt.step(model.params, grads, 1e-3)
        return loss

    step()
    xp.cuda.Device().synchronize()
    total = pool.total_bytes()
    for _ in range(5):
        step()
    xp.cuda.Device().synchronize()
    assert pool.total_bytes() == total


def test_bench_runs_and_writes_json(tmp_path, monkeypatch, capsys):
    """A tiny run of gpunet-bench (no re-exec: the thread variables are already set)."""
    from gpunet.cli import bench

    monkeypatch.setenv("GPUNET_BENCH_THREADS", "1")
    out = tmp_path / "bench.json"
    previous = backend.selected()
    try:
        rc = bench.main(
            [
                "--settle",
                "0",
                "--threads",
                "1",
                "--nets",
                "A",
                "--batch-sizes",
                "8",
                "--steps",
                "1",
                "--repeats",
                "2",
                "--warmup",
                "1",
                "--no-torch",
                "--json",
                str(out),
                "--backend",
                "numpy",
                "-q",
                "--epoch-samples",
                "64",
            ]
        )
    finally:
        backend.use(previous)
    assert rc == 0
    doc = json.loads(out.read_text())
    r = doc["results"][0]
    assert r["net"] == "A" and r["batch"] == 8 and len(r["gpunet_train_all"]) == 2
    assert r["gpunet_train"] > 0 and r["gemm_bound"] > 0 and math.isfinite(r["final_loss"])
    assert doc["machine"]["numpy"] == np.__version__
    assert "gpunet train/s" in capsys.readouterr().out


def test_bench_compares_with_torch(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from gpunet.cli import bench

    monkeypatch.setenv("GPUNET_BENCH_THREADS", "1")
    out = tmp_path / "bench.json"
    previous = backend.selected()
    try:
        rc = bench.main(
            [
                "--settle",
                "0",
                "--threads",
                "1",
                "--nets",
                "A",
                "--batch-sizes",
                "4",
                "--steps",
                "1",
                "--repeats",
                "1",
                "--warmup",
                "1",
                "--json",
                str(out),
                "--backend",
                "numpy",
                "-q",
                "--epoch-samples",
                "64",
            ]
        )
    finally:
        backend.use(previous)
    assert rc == 0
    steps, epoch = json.loads(out.read_text())["results"]
    forms = steps["torch_train_variants"]
    assert set(forms) <= {"default", "foreach", "fused", "forloop"} and "default" in forms
    assert steps["torch_skipped"]["cudagraph"].startswith("not on CPU")  # (issue 22: every torch form)
    assert steps["torch_optimizer"] == max(forms, key=forms.get)  # compared against the fastest form
    assert steps["torch_train"] == forms[steps["torch_optimizer"]] and steps["train_ratio"] > 0
    assert epoch["view"] == "epoch" and epoch["samples"] == 64 and epoch["epoch_ratio"] > 0
    kinds = [k for k in ("default", "foreach", "fused") if f"torch_epoch_{k}" in epoch]
    assert epoch["torch_epoch"] == max(epoch[f"torch_epoch_{k}"] for k in kinds)
    assert epoch["epoch_ratio_paired"] == pytest.approx(float(np.median(epoch["epoch_ratio_all"])))
