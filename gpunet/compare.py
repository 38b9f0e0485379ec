"""Is model A really better than model B on the same test set?

Two paired answers, both from the per-sample correctness of the two models:

- McNemar's exact test: of the discordant samples (one model right, the other
  wrong), ``b`` are won by A and ``c`` by B. Under "equally accurate" each is
  Binomial(b + c, 1/2); the two-sided p-value is ``min(1, 2 P(X <= min(b, c)))``,
  computed with exact integers (no normal approximation, fine for small counts).
- A paired bootstrap: resample the N samples with replacement, ``n_boot`` times,
  and take the accuracy difference ``acc_A - acc_B`` of each resample; the
  interval is the (alpha/2, 1 - alpha/2) percentiles. The generator is seeded, so
  the interval is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend


@dataclass
class Comparison:
    n: int  # samples compared
    acc_a: float  # accuracy of model A
    acc_b: float  # accuracy of model B
    a_only: int  # b: samples A gets right and B wrong
    b_only: int  # c: samples B gets right and A wrong
    p_value: float  # McNemar's exact two-sided p-value
    diff: float  # acc_a - acc_b on the data itself
    ci: tuple  # (low, high) bootstrap interval of acc_a - acc_b
    level: float  # confidence level of ``ci``
    n_boot: int  # bootstrap resamples
    seed: int  # bootstrap seed

    def report(self, name_a: str = "A", name_b: str = "B") -> str:
        """A few lines for people."""
        lo, hi = self.ci
        return "\n".join(
            [
                f"samples: {self.n}",
                f"accuracy A: {self.acc_a:.4f}  ({name_a})",
                f"accuracy B: {self.acc_b:.4f}  ({name_b})",
                f"difference A - B: {self.diff:+.4f}, {self.level:.0%} paired-bootstrap interval "
                f"[{lo:+.4f}, {hi:+.4f}] ({self.n_boot} resamples, seed {self.seed})",
                f"McNemar exact test: A right/B wrong {self.a_only}, B right/A wrong {self.b_only}, "
                f"p = {self.p_value:.4g}",
            ]
        )


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (ints >= 0)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts: expected b, c >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); exact integers throughout
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)  # C(n, k + 1), exact: C(n, k) (n - k) is divisible by k + 1
        tail += term
    return min(1.0, 2 * tail / 2**n)  # int / int: correctly rounded


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile interval ``(low, high)`` of ``acc_a - acc_b`` over paired resamples.

    correct_a, correct_b: (N,) bool, per-sample correctness of each model on the same samples.
    Resample r draws N indices with ``rng.integers(0, N, N)`` from
    ``np.random.default_rng(seed)``, one call per resample.
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"correct_a, correct_b: expected two non-empty (N,) vectors of one length, "
            f"got {a.shape} and {b.shape}"
        )
    if int(n_boot) < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot, level: expected >= 1 and in (0, 1), got {n_boot}, {level}")
    d = a.astype(np.int64) - b.astype(np.int64)  # (N,) in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    n = d.size
    diffs = np.empty(int(n_boot))
    for r in range(int(n_boot)):
        diffs[r] = d[rng.integers(0, n, n)].sum() / n
    alpha = 1 - level
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def compare_predictions(
    y_true, pred_a, pred_b, n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> Comparison:
    """Compare two models' (N,) integer predictions ``pred_a``, ``pred_b`` of labels ``y_true``."""
    y, pa, pb = (backend.to_numpy(v).astype(np.int64).ravel() for v in (y_true, pred_a, pred_b))
    if not len(y) == len(pa) == len(pb) or len(y) == 0:
        raise ValueError(
            f"y_true, pred_a, pred_b: expected three non-empty vectors of one length, "
            f"got {len(y)}, {len(pa)}, {len(pb)}"
        )
    ca, cb = pa == y, pb == y
    b, c = int((ca & ~cb).sum()), int((cb & ~ca).sum())
    lo, hi = paired_bootstrap(ca, cb, n_boot, seed, level)
    return Comparison(
        n=len(y),
        acc_a=float(ca.mean()),
        acc_b=float(cb.mean()),
        a_only=b,
        b_only=c,
        p_value=mcnemar_exact(b, c),
        diff=float(ca.mean() - cb.mean()),
        ci=(lo, hi),
        level=level,
        n_boot=int(n_boot),
        seed=int(seed),
    )


def compare_models(
    model_a,
    model_b,
    data,
    split: str = "test",
    n_boot: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    batch_size: int = 1024,
) -> Comparison:
    """Evaluate two models (paths or loaded) on one split of a gpunet HDF5 file (each with its
    own preprocessing, as ``gpunet.predict.evaluate`` does) and compare them."""
    from .predict import evaluate

    y_a, pred_a = evaluate(model_a, data, split, batch_size=batch_size)
    y_b, pred_b = evaluate(model_b, data, split, batch_size=batch_size)
    if not np.array_equal(backend.to_numpy(y_a), backend.to_numpy(y_b)):
        raise ValueError(f"{data}: split {split!r} gave different labels to the two models")
    return compare_predictions(y_a, pred_a, pred_b, n_boot=n_boot, seed=seed, level=level)
