"""gpunet.benchmark.torch_forms (issue 21): every form of PyTorch's step the CNN bench times, on the CPU.

The eager forms (default, foreach, fused, for-loop) start from the same seeded net and must train
it alike (an independent check that each is the same step, not just that it runs); the CUDA-graph
form says "not on CPU"; torch.compile is skipped cleanly when it fails or runs out of time.
"""

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpunet.benchmark import torch_forms  # noqa: E402
from gpunet.benchmark.cnn import torch_cnn  # noqa: E402
from gpunet.benchmark.fc import synthetic_batches  # noqa: E402
from gpunet.benchmark.torch_forms import FORMS, Timeout, time_box  # noqa: E402


def _small(n=4):
    return synthetic_batches((n, 1, 48, 48), 7, n=2)


def test_eager_forms_train_the_same_net_alike_and_cpu_skips_the_graph():
    X, y = _small()
    cases, skipped = torch_forms.torch_forms(
        torch, lambda: torch_cnn(torch), torch.optim.Adam, {"lr": 1e-3}, X, y, "cpu", compile=False
    )
    assert {"default", "foreach", "forloop"} <= set(cases) and set(cases) | set(skipped) == set(FORMS)
    assert skipped["cudagraph"] == "not on CPU (CUDA graphs need a GPU)"
    assert skipped["compile"].startswith("not asked for")
    losses = {}
    for form, case in cases.items():
        torch.manual_seed(5)  # the same dropout masks for every form
        for _ in range(2):
            case.train_step()
        losses[form] = float(case.loss)
        case.infer_step()
    ref = losses["forloop"]
    assert all(np.isfinite(v) for v in losses.values())
    for form, v in losses.items():
        assert v == pytest.approx(ref, rel=1e-4, abs=1e-5), losses  # the same two Adam steps


def test_a_failing_compile_is_skipped_with_its_reason(monkeypatch):
    def broken(fn, *a, **kw):
        raise RuntimeError("no C++ compiler\nmore")

    monkeypatch.setattr(torch, "compile", broken)
    X, y = _small(2)
    cases, skipped = torch_forms.torch_forms(
        torch, lambda: torch_cnn(torch), torch.optim.Adam, {"lr": 1e-3}, X, y, "cpu", compile=True
    )
    assert "compile" not in cases and skipped["compile"] == "failed: RuntimeError: no C++ compiler"


def test_compile_is_time_boxed(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **kw: fn)
    monkeypatch.setattr(torch_forms.TorchCase, "compile_now", lambda self: time.sleep(5))
    X, y = _small(2)
    cases, skipped = torch_forms.torch_forms(
        torch,
        lambda: torch_cnn(torch),
        torch.optim.Adam,
        {"lr": 1e-3},
        X,
        y,
        "cpu",
        compile=True,
        compile_timeout=0.2,
    )
    # the 5 s compile was cut off at 0.2 s (had it finished, the form would be timed, not skipped)
    assert "compile" not in cases and skipped["compile"] == "failed: Timeout: took more than 0.2 s"
    with pytest.raises(Timeout):
        with time_box(0.05):
            time.sleep(2)
    with time_box(1.0):  # a block that ends in time is left alone, and the alarm is off after it
        pass
    time.sleep(0.05)


def test_cnn_bench_names_the_fastest_form_and_the_skipped_ones():
    from gpunet import backend
    from gpunet.benchmark import BenchConfig
    from gpunet.benchmark.cnn import bench_cnn

    cfg = BenchConfig(cnn=True, steps=1, repeats=1, warmup=0, settle=0.0, batch_sizes=[2])
    with backend.using("numpy"):
        r = bench_cnn(2, cfg)
    forms = r["torch_train_variants"]
    assert {"default", "forloop"} <= set(forms) and r["torch_optimizer"] == max(forms, key=forms.get)
    assert r["torch_skipped"]["cudagraph"].startswith("not on CPU")
    assert r["train_ratio"] == pytest.approx(r["gpunet_train"] / r["torch_train"])
