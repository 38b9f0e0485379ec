"""Every CUDA kernel body of gpunet, run on the CPU (g++) and compared with its NumPy twin.

The text that goes to the GPU (``kernels.SOURCES[name].body``) is compiled by
``tests/kernel_harness.py`` inside a loop over ``i`` and run on random arrays,
float32 and float64, plus edge cases. The twin is the public NumPy function.

Adding a case for a new kernel ``foo`` (about ten lines): write a function
``case_foo(dt, rng)`` below that builds NumPy inputs of dtype ``dt``, runs the
body with ``H.run_elementwise(SOURCES["foo"], {"T": dt}, n, name=array, ...)``
(outputs are changed in place; broadcast non-raw arrays to ``n`` elements first;
a raw kernel uses ``H.run_raw(src, ["float*", "int", ...], grid, block, *args)``),
and asserts the result against the layer's public function run on NumPy
(``close(got, want, dt)``); then add ``"foo": case_foo`` to ``CASES``.
``test_every_kernel_has_a_case`` fails until a registered kernel has one, and
``test_every_body_compiles_as_cpp`` already builds the body without a case.
"""

import shutil

import numpy as np
import pytest

import gpunet.layers  # noqa: F401  (declares the layer kernels)
from gpunet import optim
from gpunet.cuda_sources import SOURCES
from gpunet.layers import activations, linear
from gpunet.layers.softmax import softmax_loss

import kernel_harness as H

pytestmark = [
    pytest.mark.kernel_cpu,
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed"),
]
DTYPES = (np.float32, np.float64)


def close(got, want, dt):
    tol = 2e-6 if dt == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _run(name, dt, n, **args):
    H.run_elementwise(SOURCES[name], {"T": dt}, n, **args)


# ------------------------------------------------------------------ layers


def case_bias(name, relu, dt, rng):
    X, W, b = (rng.standard_normal(s).astype(dt) for s in ((6, 5), (5, 7), (7,)))
    h = X @ W
    h[0, :3] = -b[:3]  # exact zeros after the add: ReLU at 0
    want = np.maximum(h + b, 0) if relu else h + b
    twin = linear._bias_(h.copy(), b, relu)  # the NumPy branch of the same rule
    _run(name, dt, h.size, b=np.ascontiguousarray(np.broadcast_to(b, h.shape)), h=h)
    close(h, twin, dt)
    close(h, want, dt)


def case_relu_bwd(dt, rng):
    a = rng.standard_normal((8, 9)).astype(dt)
    a[0] = 0  # ReLU at 0: no gradient passes
    a[1] = -0.0
    dout = rng.standard_normal(a.shape).astype(dt)
    for scale in (1.0, 2.5):
        d = dout.copy()
        _run("relu_bwd", dt, d.size, a=a, scale=scale, d=d)
        close(d, activations.relu_backward(dout, a, scale=scale), dt)
        assert not d[0].any()


def case_softmax_xent(dt, rng, label_dtype=np.int64):
    N, C = 12, 5
    x = rng.standard_normal((N, C)).astype(dt) * 3
    x[0], x[1] = 1e4, -1e4  # huge logits: stable only with the row max subtracted
    x[2, 0] = 1e4
    y = (np.arange(N) % C).astype(label_dtype)  # every label index
    row, dx = np.empty(N, dt), np.empty(N * C, dt)
    H.run_elementwise(
        SOURCES["softmax_xent"],
        {"T": dt, "S": label_dtype},
        N,
        x=x.ravel(),
        y=y,
        C=C,
        inv_n=1.0 / N,
        row_loss=row,
        dx=dx,
    )
    loss, dlogits = softmax_loss(x, y)
    assert np.isfinite(row).all()
    close(row.mean(), loss, dt)
    close(dx.reshape(N, C), dlogits, dt)
    # labels outside [0, C): NumPy refuses, the kernel gives NaN rows and touches no other row
    bad = y.copy()
    bad[3], bad[7] = C, -1
    row[:], dx[:] = 0, 0
    H.run_elementwise(
        SOURCES["softmax_xent"],
        {"T": dt, "S": label_dtype},
        N,
        x=x.ravel(),
        y=bad,
        C=C,
        inv_n=1.0 / N,
        row_loss=row,
        dx=dx,
    )
    with pytest.raises(ValueError, match="labels in"):
        softmax_loss(x, bad)
    assert np.isnan(row[[3, 7]]).all() and np.isnan(dx.reshape(N, C)[[3, 7]]).all()
    good = np.setdiff1d(np.arange(N), [3, 7])
    close(dx.reshape(N, C)[good], dlogits[good], dt)


# ------------------------------------------------------------------ optimizers


def _wgv(dt, rng, k=3, n=300):
    return [rng.standard_normal(n).astype(dt) for _ in range(k)]


def case_sgd(dt, rng):
    w, g = _wgv(dt, rng, 2)
    got = w.copy()
    _run("sgd", dt, w.size, dw=g, lr=dt(0.1), w=got)
    close(got, optim.sgd_(w.copy(), g, 0.1), dt)


def case_momentum(name, dt, rng):
    w, g, v = _wgv(dt, rng)
    got_w, got_v = w.copy(), v.copy()
    _run(name, dt, w.size, dw=g, mu=dt(0.9), lr=dt(0.05), w=got_w, v=got_v)
    want_w, want_v = w.copy(), v.copy()
    optim.sgd_momentum_(want_w, g, want_v, 0.9, 0.05, nesterov=name == "nesterov")
    close(got_w, want_w, dt)
    close(got_v, want_v, dt)


def case_rmsprop(dt, rng):
    w, g, c = _wgv(dt, rng)
    c = np.abs(c)
    got_w, got_c = w.copy(), c.copy()
    _run("rmsprop", dt, w.size, dw=g, r=dt(0.99), lr=dt(0.01), eps=dt(1e-8), w=got_w, c=got_c)
    want_w, want_c = w.copy(), c.copy()
    optim.rmsprop_(want_w, g, want_c, 0.99, 0.01, 1e-8)
    close(got_w, want_w, dt)
    close(got_c, want_c, dt)


def case_adam(dt, rng):
    w, g, m = _wgv(dt, rng)
    v = np.abs(rng.standard_normal(w.size)).astype(dt)
    g[:5] = 0  # zero gradient and moments: the eps floor
    m[:5], v[:5] = 0, 0
    args = dict(b1=0.9, b2=0.999, lr_t=1e-3 / (1 - 0.9**3), inv_sqrt_bc2=1 / np.sqrt(1 - 0.999**3), eps=1e-8)
    got = [w.copy(), m.copy(), v.copy()]
    _run("adam", dt, w.size, dw=g, **{k: dt(a) for k, a in args.items()}, w=got[0], m=got[1], v=got[2])
    want = [w.copy(), m.copy(), v.copy()]
    optim.adam_(want[0], g, want[1], want[2], *args.values())
    for a, b in zip(got, want):
        close(a, b, dt)


CASES = {
    "bias_add": lambda dt, rng: case_bias("bias_add", False, dt, rng),
    "bias_relu": lambda dt, rng: case_bias("bias_relu", True, dt, rng),
    "relu_bwd": case_relu_bwd,
    "softmax_xent": case_softmax_xent,
    "softmax_xent/int32": lambda dt, rng: case_softmax_xent(dt, rng, np.int32),
    "sgd": case_sgd,
    "momentum": lambda dt, rng: case_momentum("momentum", dt, rng),
    "nesterov": lambda dt, rng: case_momentum("nesterov", dt, rng),
    "rmsprop": case_rmsprop,
    "adam": case_adam,
}
try:  # the multi-tensor update (its cases live beside it)
    from kernel_cpu_multi import MULTI_CASES

    CASES.update(MULTI_CASES)
except ImportError:
    pass
from kernel_cpu_philox import PHILOX_CASES  # the Philox dropout stream (gpunet/ops/philox.py)

CASES.update(PHILOX_CASES)


def _case_params():
    """(name, dtype) pairs: both dtypes, or only the one a dtype-specific kernel's name ends with."""
    out = []
    for name in sorted(CASES):
        for dt in DTYPES:
            own = [d for d in ("float32", "float64") if name.endswith("_" + d)]
            if not own or own[0] == np.dtype(dt).name:
                out.append(pytest.param(name, dt, id=f"{name}-{np.dtype(dt).name}"))
    return out


@pytest.mark.parametrize("name, dt", _case_params())
def test_kernel_matches_numpy_twin(name, dt):
    CASES[name](dt, np.random.default_rng(abs(hash(name)) % 2**32))


def test_every_kernel_has_a_case():
    missing = sorted(set(SOURCES) - {n.split("/")[0] for n in CASES})
    assert not missing, (
        f"no CPU-execution case for CUDA kernel(s) {missing}: add case_<name> to "
        "tests/kernels/test_kernel_cpu.py (see its docstring)"
    )


@pytest.mark.parametrize("name", sorted(n for n, s in SOURCES.items() if s.kind == "elementwise"))
def test_every_body_compiles_as_cpp(name):
    src = SOURCES[name]
    letters = sorted({t for _, t, _ in H.parse_params(src.in_params + "," + src.out_params) if len(t) == 1})
    for dt in DTYPES:
        H._compile(H.elementwise_code(src, {t: dt if t == "T" else np.int64 for t in letters}))


def test_harness_can_fail():
    """A wrong body gives a wrong answer: the comparison is not vacuous."""
    wrong = SOURCES["sgd"].__class__(
        "sgd_wrong", "elementwise", "w += lr * dw", "T dw, T lr", "T w", scalars=("lr",)
    )
    w, g = np.ones(4), np.full(4, 2.0)
    H.run_elementwise(wrong, {"T": np.float64}, 4, dw=g, lr=0.5, w=w)
    with pytest.raises(AssertionError):
        close(w, optim.sgd_(np.ones(4), g, 0.5), np.float64)
