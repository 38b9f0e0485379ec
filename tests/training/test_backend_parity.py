"""The GPU path trains the same model as the NumPy path: the fixed-batch experiment of issue 19.

The FC and CNN recipes (dropout 0) train on one fixed batch from identical weights through the
Solver's own training step (``gpunet.testing.parity``), on NumPy and on

- the emulated GPU (CI, no GPU needed): the CuPy-only branches on NumPy arrays, the CUDA bodies
  compiled for the CPU, the one-launch update receiving the real pointer table. One step and 20
  steps must match NumPy. float64 shows the logic (rounding then stays near 1e-12); float32, the
  dtype of every recipe, one step. The update that read a strided conv gradient as flat memory
  failed both by far (see the note of issue 19);
- a real GPU (marker ``gpu``): 50 Adam and 50 SGD-momentum steps on a batch of 128; in float64 the
  loss curves and the final parameters within 1e-3 relative (max-norm); in float32 the first 10
  losses within 1e-2 (see ``test_gpu_trains_as_numpy_float32`` for why no tighter).

In float32 a conv bias followed by batch norm has an exact gradient of zero, and Adam turns the
rounding noise into steps of +-lr, so those biases are left out of float32 parameter comparisons
(``parity.cancelled_by_batchnorm``); float64 compares every parameter.
"""

import json

import numpy as np
import pytest

from gpunet import backend
from gpunet.testing import emulated, parity

emulated_only = pytest.mark.skipif(emulated.available() is not None, reason=str(emulated.available()))


def _check(kind, rule, steps, dtype, other, tol=None, n=64, loss_steps=None, params=None):
    """Curves on NumPy and ``other``, judged by ``parity.verdict`` (``parity.CRITERIA`` for the dtype
    unless the arguments are given)."""
    ref = parity.curve(kind, "numpy", rule, steps, dtype, n)
    got = parity.curve(kind, other, rule, steps, dtype, n)
    d = parity.verdict(kind, ref, got, dtype, tol, loss_steps, params)
    print(
        f"PARITY {kind} {rule} {np.dtype(dtype).name} {steps} steps vs {other}: loss {d['loss']:.2e} "
        f"(first {d['loss_steps']} steps {d['early']:.2e}), param {d['param']:.2e} ({d['worst_param']}); "
        f"final loss numpy {ref[0][-1]:.6f}, {other} {got[0][-1]:.6f}"
    )
    assert d["ok"], (
        f"{kind} {rule} {np.dtype(dtype).name}: the backends differ (tolerance {d['tol']}): first "
        f"{d['loss_steps']} losses by {d['early']:.2e}, parameter {d['worst_param']} by {d['param']:.2e}"
        f"\nnumpy    {ref[0]}\n{other} {got[0]}\nall parameters: {d['params']}"
    )
    return d


@emulated_only
@pytest.mark.parametrize("kind", parity.KINDS)
@pytest.mark.parametrize("steps", [1, 20])
def test_emulated_gpu_trains_as_numpy_float64(kind, steps):
    _check(kind, "adam", steps, np.float64, "emulated", 1e-7)  # the same BLAS: far below 1e-3


@emulated_only
@pytest.mark.parametrize("kind", parity.KINDS)
def test_emulated_gpu_trains_as_numpy_sgd_momentum(kind):
    _check(kind, "sgd_momentum", 20, np.float64, "emulated", 1e-7)


@emulated_only
@pytest.mark.parametrize("kind", parity.KINDS)
def test_emulated_gpu_one_step_as_numpy_float32(kind):
    """float32, one SGD-momentum step (linear in the gradient), judged against the float64 run as the
    oracle: every emulated-GPU parameter within 4x NumPy float32's own distance from float64, plus
    1e-5 (relative, max-norm). Where a gradient is a sum with heavy cancellation (a batch-norm beta:
    NumPy float32 sits 1.3e-3 from float64) both backends are as far off; elsewhere both sit near
    1e-7. The strided-gradient defect of issue 19 put the conv weights 1e-2 off."""
    rule = "sgd_momentum"
    truth = parity.curve(kind, "numpy", rule, 1, np.float64, 64)[1]
    ref = parity.curve(kind, "numpy", rule, 1, np.float32, 64)[1]
    got = parity.curve(kind, "emulated", rule, 1, np.float32, 64)[1]

    def off(p, k):
        return float(np.max(np.abs(p[k] - truth[k])) / max(float(np.max(np.abs(truth[k]))), 1e-30))

    far = {k: (off(got, k), off(ref, k)) for k in truth if off(got, k) > 4 * off(ref, k) + 1e-5}
    print(
        "SGD float32, distance from float64 (emulated, numpy):",
        {k: (off(got, k), off(ref, k)) for k in truth},
    )
    assert not far, far


@emulated_only
@pytest.mark.parametrize("kind", parity.KINDS)
def test_emulated_gpu_one_adam_step_as_numpy_float32(kind):
    """float32, one Adam step. Adam's first step is lr * g / (|g| + eps), about lr * sign(g): a weight
    whose gradient is rounding-sized can step either way when the two backends sum in different orders
    (measured: 1 of 18,432 in the CNN's second conv). So count the weights that moved differently by
    more than lr / 2: at most 1 in 1,000 per weight matrix. The strided-gradient defect of issue 19
    moved most of them differently."""
    lr = parity.RULES["adam"]["learning_rate"]
    ref = parity.curve(kind, "numpy", "adam", 1, np.float32, 64)[1]
    got = parity.curve(kind, "emulated", "adam", 1, np.float32, 64)[1]
    moved = {k: float(np.mean(np.abs(ref[k] - got[k]) > lr / 2)) for k in ref if "W" in k}
    print("ADAM float32 weights moved differently:", moved)
    assert max(moved.values()) <= 1e-3, moved


@emulated_only
def test_emulated_gpu_takes_the_one_launch_update(monkeypatch):
    """The emulated run goes through the real multi-tensor launch (else the tests above prove nothing)."""
    from gpunet import multi_tensor

    seen = []
    launch = multi_tensor.MultiTensor.launch

    def spy(self, xp, arrays_per_param):
        seen.append([(a.shape, a.flags.c_contiguous) for arrays in arrays_per_param for a in arrays])
        return launch(self, xp, arrays_per_param)

    monkeypatch.setattr(multi_tensor.MultiTensor, "launch", spy)
    parity.curve("cnn", "emulated", "adam", 1, np.float32, 8)
    assert len(seen) == 1 and len(seen[0]) == 4 * len(parity.build("cnn").params)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", parity.KINDS)
@pytest.mark.parametrize("rule", sorted(parity.RULES))
def test_gpu_trains_as_numpy(kind, rule):
    """float64, 50 steps: every loss and every final parameter within 1e-3 (rounding leaves ~1e-9)."""
    if not backend.gpu_available():
        pytest.skip(f"no usable GPU: {backend.gpu_unavailable_reason()}")
    _check(kind, rule, 50, np.float64, "cupy", n=128)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", parity.KINDS)
@pytest.mark.parametrize("rule", sorted(parity.RULES))
def test_gpu_trains_as_numpy_float32(kind, rule):
    """float32, 50 steps: the first 10 losses within 1e-2. Not tighter, and not the parameters: training
    one batch to zero loss is chaotic in float32. Between NumPy and the emulated GPU, two summation
    orders on one CPU, the CNN's Adam curves part by 1e-3 at step 10, 1e-2 at step 16, 15 % by step 50
    (SGD-momentum: 2.6e-2 in a BN shift after 50 steps). The strided-gradient defect parted them by
    a factor of 2 to 4 (0.36 against 1.73 at step 20 on an H200)."""
    if not backend.gpu_available():
        pytest.skip(f"no usable GPU: {backend.gpu_unavailable_reason()}")
    _check(kind, rule, 50, np.float32, "cupy", n=128)


@emulated_only
def test_gpunet_train_on_the_emulated_gpu_gives_the_numpy_run(tmp_path):
    """End to end (HDF5 streaming to the device, the Solver, evaluation): with dropout and augmentation
    off the FER CNN recipe's run on the emulated GPU is the NumPy run, up to rounding."""
    from data_prep import h5format
    from data_prep.splits import SourceData, Split
    from gpunet.cli import train

    rng = np.random.default_rng(0)
    splits = {
        k: Split(rng.integers(0, 256, (n, 1, 48, 48), dtype=np.uint8), rng.integers(0, 7, n), u)
        for k, (n, u) in {
            "train": (300, "Training"),
            "val": (100, "PublicTest"),
            "test": (100, "PrivateTest"),
        }.items()
    }
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    h5format.write(
        tmp_path / "fer2013.h5",
        SourceData(splits, names, {"sha256": "0" * 64}),
        dataset="fer2013",
        source="synthetic",
        command="test",
    )
    runs = {}
    for b in ("numpy", "emulated"):
        out = tmp_path / b
        assert (
            train.main(
                [
                    "fer2013",
                    "--arch",
                    "cnn",
                    "--backend",
                    b,
                    "--epochs",
                    "2",
                    "--channels",
                    "8",
                    "16",
                    "--hidden",
                    "32",
                    "--dropout",
                    "0",
                    "--no-augment",
                    "--crop-pad",
                    "0",
                    "--data-dir",
                    str(tmp_path),
                    "--no-download",
                    "--out",
                    str(out),
                    "--no-plots",
                    "-q",
                ]
            )
            == 0
        )
        runs[b] = (
            json.loads((out / "history.json").read_text()),
            json.loads((out / "metrics.json").read_text()),
        )
    (h_np, m_np), (h_emu, m_emu) = runs["numpy"], runs["emulated"]
    assert m_emu["backend"] == "emulated" and m_np["backend"] == "numpy"
    assert len(h_np["loss"]) == len(h_emu["loss"]) > 4
    np.testing.assert_allclose(h_emu["loss"], h_np["loss"], rtol=1e-4)
    assert h_emu["val_acc"] == h_np["val_acc"]
