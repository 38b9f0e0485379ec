"""The CPU thread team (``gpunet.threads``): independent products side by side, BLAS's thread count.

Oracles: the same products run one after the other, and float64 products (the concurrent
single-threaded BLAS calls may sum in another order, so values agree to float32 rounding).
"""

import threading

import numpy as np
import pytest

from gpunet import threads
from gpunet.layers import linear_backward


@pytest.fixture
def always_concurrent(monkeypatch):
    """Every product counts as large, on a team of two (one pool thread beside the caller)."""
    monkeypatch.setattr(threads, "CONCURRENT_MIN", 0)
    threads.set_num_threads(2)
    yield
    threads.set_num_threads(None)


def test_concurrently_runs_every_job_on_two_threads(always_concurrent):
    if threads.blas_control() is None:
        pytest.skip("NumPy's BLAS cannot be driven here: the jobs run in turn")
    seen = []
    barrier = threading.Barrier(2, timeout=10)  # both jobs must be running at once to pass it

    def job(k):
        def run():
            barrier.wait()
            seen.append((k, threading.current_thread().name))

        return run

    threads.concurrently(job(0), job(1), work=1)
    assert sorted(k for k, _ in seen) == [0, 1]
    assert len({name for _, name in seen}) == 2


def test_blas_thread_count_is_restored(always_concurrent):
    ctl = threads.blas_control()
    if ctl is None:
        pytest.skip("NumPy's BLAS cannot be driven here")
    get, _ = ctl
    before = get()
    inside = []
    a = np.ones((64, 64), np.float32)
    threads.concurrently(lambda: inside.append(get()), lambda: a @ a, work=1)
    assert inside == [1]
    assert get() == before
    with pytest.raises(ZeroDivisionError):  # a failing job still restores the count, and propagates
        threads.concurrently(lambda: None, lambda: 1 / 0, work=1)
    assert get() == before


def test_small_products_and_nested_calls_run_in_turn(monkeypatch):
    order = []
    threads.concurrently(lambda: order.append(1), lambda: order.append(2), work=1)  # below CONCURRENT_MIN
    assert order == [1, 2]
    monkeypatch.setattr(threads, "CONCURRENT_MIN", 0)
    inner = []
    threads.set_num_threads(2)
    try:  # a job that itself asks for the team: no deadlock, the inner jobs run on its thread
        threads.concurrently(
            lambda: None,
            lambda: threads.concurrently(lambda: inner.append(1), lambda: inner.append(2), work=1),
            work=1,
        )
    finally:
        threads.set_num_threads(None)
    assert inner == [1, 2]


def test_concurrent_callers_leave_the_blas_count_as_found(always_concurrent):
    ctl = threads.blas_control()
    if ctl is None:
        pytest.skip("NumPy's BLAS cannot be driven here")
    before = ctl[0]()
    a = np.ones((128, 128), np.float32)

    def caller():
        for _ in range(20):
            threads.concurrently(lambda: a @ a, lambda: a @ a, work=1)

    ts = [threading.Thread(target=caller) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert ctl[0]() == before


@pytest.mark.parametrize("need_dx", [True, False])
def test_linear_backward_concurrent_matches_float64(always_concurrent, need_dx):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 3, 40)).astype(np.float32)
    W = rng.standard_normal((120, 70)).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    dout = rng.standard_normal((96, 70)).astype(np.float32)
    dX, dW, db = linear_backward(dout, X, W, b, need_dx=need_dx)
    X64, d64 = X.reshape(96, -1).astype(np.float64), dout.astype(np.float64)
    np.testing.assert_allclose(dW, X64.T @ d64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, d64.sum(0), rtol=1e-5, atol=1e-4)
    if need_dx:
        assert dX.shape == X.shape
        np.testing.assert_allclose(dX.reshape(96, -1), d64 @ W.astype(np.float64).T, rtol=1e-4, atol=1e-4)
    else:
        assert dX is None
    # into caller-given buffers, as the model passes them
    o = (np.empty((96, 120), np.float32), np.empty((120, 70), np.float32), np.empty(70, np.float32))
    dX2, dW2, db2 = linear_backward(dout, X, W, b, need_dx=need_dx, out=o)
    assert dW2 is o[1] and db2 is o[2]
    np.testing.assert_array_equal(dW2, dW)
    if need_dx:
        assert np.shares_memory(dX2, o[0])
        np.testing.assert_array_equal(dX2, dX)


@pytest.mark.parametrize("relu", [False, True])
def test_linear_forward_split_over_rows_of_W_matches_float64(always_concurrent, relu):
    from gpunet.layers import linear_forward

    if threads.ways(1 << 40) < 2:
        pytest.skip("NumPy's BLAS cannot be driven here: the product is not split")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 2, 100)).astype(np.float32)
    W = rng.standard_normal((200, 30)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    want = X.reshape(40, -1).astype(np.float64) @ W.astype(np.float64) + b
    if relu:
        want = np.maximum(want, 0)
    got = linear_forward(X, W, b, relu=relu)
    assert got.shape == (40, 30) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    buf = np.full((40, 30), np.nan, np.float32)  # into a caller's buffer, as the model does
    assert linear_forward(X, W, b, out=buf, relu=relu) is buf
    np.testing.assert_array_equal(buf, got)


def test_the_forward_split_follows_the_update_s_ranges():
    """The rows of W each core reads in the forward pass are those it updates (``parallel``'s ranges)."""
    D, M = 3072, 512
    c = threads.cuts(D * M, 2)
    assert c[0] == 0 and c[-1] == D * M and c[1] % threads.CHUNK == 0
    assert c[1] // M == 1536


def _affinity(tid=0):
    import os

    return os.sched_getaffinity(tid)


def test_pinned_keeps_the_caller_apart_and_restores_every_thread():
    import os

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and two CPUs")
    threads.set_num_threads(2)
    stop = threading.Event()
    bystander = threading.Thread(target=stop.wait, name="user-thread")  # a Python thread of the user's
    bystander.start()
    try:
        me, before = threading.get_native_id(), _affinity()
        started = []
        with threads.pinned():
            mine = _affinity()
            assert len(mine) == 1 and mine <= before
            team = [t.native_id for t in threading.enumerate() if t.name.startswith("gpunet-team")]
            assert team and all(_affinity(t) == before - mine for t in team)
            assert _affinity(bystander.native_id) == before  # left alone
            late = threading.Thread(target=stop.wait)  # started inside: inherits the pin
            late.start()
            started.append(late)
        assert _affinity() == before and all(_affinity(t) == before for t in team)
        assert _affinity(started[0].native_id) == before  # given the whole set on exit
        assert threading.get_native_id() == me
    finally:
        stop.set()
        bystander.join()
        threads.set_num_threads(None)


def test_solver_train_restores_the_caller_s_cpus():
    import os
    from gpunet import FullyConnectedNet, Solver

    rng = np.random.default_rng(0)
    data = {
        "X_train": rng.standard_normal((64, 6)).astype(np.float32),
        "y_train": rng.integers(0, 3, 64),
        "X_val": rng.standard_normal((16, 6)).astype(np.float32),
        "y_val": rng.integers(0, 3, 16),
    }
    before = _affinity() if hasattr(os, "sched_getaffinity") else None
    seen = []
    probe = (lambda s, e: seen.append(_affinity())) if before is not None else None
    for pin in (True, False):
        seen.clear()
        Solver(
            FullyConnectedNet([5], input_dim=6, num_classes=3, seed=0),
            data,
            batch_size=16,
            num_epochs=1,
            verbose=False,
            pin_threads=pin,
            on_epoch_end=probe,
        ).train()
        if before is not None:
            assert _affinity() == before
            if not pin or len(before) < 2 or threads.num_threads() < 2:
                assert seen == [before]
            else:
                assert len(seen[0]) == 1


def test_pinned_sections_do_not_nest_or_overlap():
    import os

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and two CPUs")
    threads.set_num_threads(2)
    try:
        before = _affinity()
        with threads.pinned():
            mine = _affinity()
            with threads.pinned():  # nested: leaves the outer pin as it is
                assert _affinity() == mine
            assert _affinity() == mine
            other = []

            def second():  # another thread's Solver meanwhile: a no-op
                own = _affinity()
                with threads.pinned():
                    other.append(_affinity() == own)

            t = threading.Thread(target=second)
            t.start()
            t.join()
            assert other == [True] and _affinity() == mine
        assert _affinity() == before
    finally:
        threads.set_num_threads(None)
