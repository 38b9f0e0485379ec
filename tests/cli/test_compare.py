"""gpunet.compare and gpunet-compare.

Oracles: scipy's ``binomtest`` (tests only) for McNemar's exact p-value; a plain
Python loop over the same resample indices, with a hand-written percentile, for the
paired bootstrap; the normal approximation of a paired difference for its width;
labels pushed through the weights with plain NumPy for the end-to-end command.
"""

import json

import h5py
import numpy as np
import pytest

from gpunet.cli.compare import main as compare_main
from gpunet.compare import compare_predictions, mcnemar_exact, paired_bootstrap
from gpunet.data import h5file as fmt
from gpunet.model import FullyConnectedNet

stats = pytest.importorskip("scipy.stats")

NAMES = ["cat", "dog", "owl"]
SHAPE = (1, 5, 5)


@pytest.mark.parametrize(
    "b,c", [(0, 0), (0, 1), (1, 0), (3, 3), (5, 1), (2, 9), (0, 20), (40, 61), (300, 250), (1200, 1311)]
)
def test_mcnemar_matches_scipy_binomtest(b, c):
    want = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="b, c >= 0"):
        mcnemar_exact(-1, 3)


def _loop_bootstrap(a, b, n_boot, seed, level):
    """The same resamples, summed one sample at a time; percentiles by linear interpolation."""
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        total = 0
        for i in idx:
            total += int(a[i]) - int(b[i])
        diffs.append(total / n)
    diffs.sort()

    def pct(q):
        pos = q * (n_boot - 1)
        lo = int(pos)
        hi = min(lo + 1, n_boot - 1)
        return diffs[lo] + (diffs[hi] - diffs[lo]) * (pos - lo)

    alpha = 1 - level
    return pct(alpha / 2), pct(1 - alpha / 2)


def test_paired_bootstrap_matches_plain_loop():
    rng = np.random.default_rng(5)
    a = rng.random(83) < 0.7
    b = rng.random(83) < 0.55
    got = paired_bootstrap(a, b, n_boot=300, seed=11, level=0.9)
    want = _loop_bootstrap(a, b, 300, 11, 0.9)
    assert got == pytest.approx(want, abs=1e-12)
    assert paired_bootstrap(a, b, n_boot=300, seed=11, level=0.9) == got  # seeded: reproducible
    assert paired_bootstrap(a, b, n_boot=300, seed=12, level=0.9) != got


def test_paired_bootstrap_width_matches_normal_approximation():
    rng = np.random.default_rng(0)
    a = rng.random(4000) < 0.62
    b = np.where(rng.random(4000) < 0.8, a, ~a)  # paired: B agrees with A on 80%
    d = a.astype(float) - b.astype(float)
    se = d.std() / np.sqrt(len(d))
    lo, hi = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert lo == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)


def test_compare_predictions_counts_by_hand():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    pa = np.array([0, 1, 2, 0, 0, 0, 0, 1])  # right on 0,1,2,3,6,7
    pb = np.array([0, 2, 2, 1, 1, 0, 1, 1])  # right on 0,2,4,7
    r = compare_predictions(y, pa, pb, n_boot=50, seed=0)
    assert (r.n, r.a_only, r.b_only) == (8, 3, 1)  # A only: 1,3,6; B only: 4
    assert (r.acc_a, r.acc_b, r.diff) == (0.75, 0.5, 0.25)
    assert r.p_value == pytest.approx(stats.binomtest(1, 4, 0.5).pvalue)
    assert r.ci[0] <= r.ci[1]
    with pytest.raises(ValueError, match="one length"):
        compare_predictions(y, pa[:-1], pb)


# ------------------------------------------------------------------ end to end


def _write_h5(path, n=120, seed=0):
    """A toy gpunet HDF5 file (train, test), written through the format's owner."""
    rng = np.random.default_rng(seed)
    with fmt.create(
        path,
        dataset="toy",
        class_names=NAMES,
        mean=np.full(1, 110.0),
        std=np.full(1, 55.0),
        image_shape=SHAPE,
    ) as f:
        for split in ("train", "test"):
            fmt.write_split(
                f,
                split,
                rng.integers(0, 256, (n,) + SHAPE, dtype=np.uint8),
                rng.integers(0, len(NAMES), n).astype(np.int64),
                256,
            )
    return path


def _model(path, seed):
    m = FullyConnectedNet([10], input_dim=int(np.prod(SHAPE)), num_classes=len(NAMES), seed=seed)
    m.meta = {
        "mean": [100.0 + seed],
        "std": [50.0],
        "image_shape": list(SHAPE),
        "class_names": NAMES,
        "dataset": "toy",
    }
    m.save(path)
    return m


def _reference_pred(m, x):
    p = m.get_params()
    z = ((x.astype(np.float64) - m.meta["mean"][0]) / m.meta["std"][0]).reshape(len(x), -1)
    return (np.maximum(z @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]).argmax(1)


def test_cli_reports_accuracies_mcnemar_and_interval(tmp_path, capsys):
    data = _write_h5(tmp_path / "toy.h5")
    ma, mb = _model(tmp_path / "a.npz", 1), _model(tmp_path / "b.npz", 2)
    with h5py.File(data, "r") as f:
        x, y = f["test"]["x"][()], f["test"]["y"][()]
    ca, cb = _reference_pred(ma, x) == y, _reference_pred(mb, x) == y
    rc = compare_main(
        [
            str(tmp_path / "a.npz"),
            str(tmp_path / "b.npz"),
            "--data",
            str(data),
            "--split",
            "test",
            "--boot",
            "200",
            "--seed",
            "3",
            "--backend",
            "numpy",
            "--json",
            str(tmp_path / "r.json"),
            "-q",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"accuracy A: {ca.mean():.4f}" in out and f"accuracy B: {cb.mean():.4f}" in out
    assert "McNemar" in out and "95% paired-bootstrap interval" in out
    r = json.loads((tmp_path / "r.json").read_text())
    b, c = int((ca & ~cb).sum()), int((cb & ~ca).sum())
    assert (r["a_only"], r["b_only"]) == (b, c)
    assert r["p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
    assert r["ci"] == pytest.approx(list(_loop_bootstrap(ca, cb, 200, 3, 0.95)), abs=1e-12)


def test_cli_errors_are_one_line(tmp_path, capsys):
    data = _write_h5(tmp_path / "toy.h5")
    _model(tmp_path / "a.npz", 1)
    rc = compare_main(
        [str(tmp_path / "a.npz"), str(tmp_path / "missing.npz"), "--data", str(data), "--backend", "numpy"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "missing.npz" in err[0]
    rc = compare_main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--data", str(data), "--boot", "0"])
    assert rc == 2 and "--boot" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--boot", "1000000000000"), ("--seed", "-1")])
def test_out_of_range_flags_are_named_before_any_work(tmp_path, capsys, flag, value):
    """Issue 24 #16: a huge --boot was a MemoryError bug line; --seed -1 named no flag."""
    data = _write_h5(tmp_path / "toy.h5")
    _model(tmp_path / "a.npz", 1)
    rc = compare_main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--data", str(data), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {flag}:") and value in err[0], err
