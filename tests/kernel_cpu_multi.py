"""CPU-execution cases of the multi-tensor optimizer kernels (``gpunet/multi_tensor.py``).

Each generated raw kernel runs on the CPU over a pointer table of NumPy arrays
(three parameters of different sizes, one of them empty) and must give what the
NumPy optimizer gives parameter by parameter, weight decay included.
Collected by ``tests/kernels/test_kernel_cpu.py`` through ``MULTI_CASES``.
"""

import numpy as np

from gpunet import multi_tensor, optim
from gpunet.cuda_sources import SOURCES

import kernel_harness as H

ARG_TYPES = ["const long long*", "int", "long long", "const double*"]
RULES = {
    "sgd": "sgd",
    "momentum": "sgd_momentum",
    "nesterov": "nesterov",
    "rmsprop": "rmsprop",
    "adam": "adam",
}


def run_multi(rule, dt, rng, steps=3, shapes=((7, 5), (0,), (13,), (1,))):
    cfg = {"weight_decay": 0.01, "momentum": 0.8}
    params = {f"p{k}": rng.standard_normal(s).astype(dt) for k, s in enumerate(shapes)}
    twin = optim.Optimizer(RULES[rule], cfg, multi_tensor=False)
    twin_params = {k: v.copy() for k, v in params.items()}
    opt = optim.Optimizer(RULES[rule], cfg)
    multi = optim._Multi(opt)
    src = SOURCES[f"multi_{multi.launcher.src.name}_{np.dtype(dt).name}"]
    for step in range(steps):
        grads = {k: rng.standard_normal(v.shape).astype(dt) for k, v in params.items()}
        lr = 0.05 / (step + 1)
        twin.step(twin_params, grads, lr)
        hp = multi_tensor.scalar_vector(multi.launcher.src, *multi.scalars(np, params, lr))
        per_param = [[grads[k], w] + [opt.state[k][n] for n in multi.state_names] for k, w in params.items()]
        rows, total = multi_tensor.table_rows(per_param)
        H.run_raw(src, ARG_TYPES, 2, 8, np.array(rows, np.int64), np.int32(len(rows)), np.int64(total), hp)
    return params, twin_params, opt, twin


def _case(rule):
    def case(dt, rng):
        params, want, opt, twin = run_multi(rule, dt, rng)
        tol = 3e-6 if dt == np.float32 else 1e-13
        for k in params:
            np.testing.assert_allclose(params[k], want[k], rtol=tol, atol=tol, err_msg=f"{rule} {k}")
            for n, s in twin.state[k].items():
                np.testing.assert_allclose(opt.state[k][n], s, rtol=tol, atol=tol, err_msg=f"{rule} {k} {n}")

    return case


# multi_<rule>_<dtype>: test_kernel_cpu.py runs each with its own dtype only
MULTI_CASES = {f"multi_{r}_{d}": _case(r) for r in RULES for d in ("float32", "float64")}


def _scalars_case(rule):
    """``scalars_<rule>``: hp from device lr, t (advanced by 1) and the config equals the host twin
    ``_Multi.scalars`` (the same libm on both sides: bit for bit), step after step."""

    def case(dt, rng):
        opt = optim.Optimizer(RULES[rule], {"weight_decay": 0.01, "momentum": 0.8})
        multi = optim._Multi(opt)
        params = {"p": np.zeros(3)}
        src = SOURCES[f"scalars_{multi.launcher.src.name}"]
        t, c = np.zeros(1), multi_tensor.config_vector(opt.config)
        for step in range(4):
            lr = np.array([0.05 / (step + 1)])
            hp = np.zeros(1 + len(multi.launcher.src.scalars))
            H.run_raw(src, ["double*", "double*", "const double*", "const double*"], 1, 1, hp, t, lr, c)
            want = multi_tensor.scalar_vector(multi.launcher.src, *multi.scalars(np, params, float(lr[0])))
            np.testing.assert_array_equal(hp, want, err_msg=f"{rule} step {step + 1}")
            assert t[0] == step + 1

    return case


MULTI_CASES.update({f"scalars_{r}": _scalars_case(r) for r in RULES})
