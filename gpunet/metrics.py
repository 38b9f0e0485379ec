"""Classification metrics: confusion matrix, accuracy, per-class precision/recall/F1.

Labels are computed where they live (NumPy or CuPy): the confusion matrix is one
``bincount`` of ``y_true * C + y_pred`` on that array module and a single
transfer of the (C, C) result; every other number is derived from it on the
host. Conventions (NaN-free): a class never predicted has precision 0, a class
with no true samples has recall 0, and F1 is 0 where precision + recall is 0.
Macro averages are unweighted means over the classes.
"""

from __future__ import annotations

import numpy as np

from . import backend


def _labels(y_true, y_pred, num_classes: int):
    """Check the two label vectors; return them on one array module as int64."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    xp = backend.get_array_module(y_true, y_pred)
    out = []
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        y = xp.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D vector of labels, got shape {tuple(y.shape)}")
        if y.size and y.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer labels, got dtype {y.dtype}")
        out.append(y.astype(np.int64, copy=False))
    yt, yp = out
    if yt.shape[0] != yp.shape[0]:
        raise ValueError(f"y_pred: expected {yt.shape[0]} labels (as many as y_true), got {yp.shape[0]}")
    for name, y in (("y_true", yt), ("y_pred", yp)):
        if y.size:
            lo, hi = (int(v) for v in backend.to_numpy(xp.stack([y.min(), y.max()])))  # one transfer
            if lo < 0 or hi >= num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name}: expected labels in [0, {num_classes}), found {bad}")
    return xp, yt, yp


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) int64 NumPy counts; ``cm[i, j]`` = samples of true class i predicted as j.

    y_true, y_pred: (N,) integer labels in [0, C), NumPy or CuPy (computed on their module).
    """
    xp, yt, yp = _labels(y_true, y_pred, num_classes)
    c = int(num_classes)
    counts = xp.bincount(yt * c + yp, minlength=c * c) if yt.size else xp.zeros(c * c, np.int64)
    return backend.to_numpy(counts).astype(np.int64).reshape(c, c)


def _safe_div(num, den):
    """num / den elementwise, 0 where den is 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def scores_from_confusion(cm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(precision, recall, f1)`` float64 (C,) from a (C, C) confusion matrix."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))  # column sums: how often each class was predicted
    recall = _safe_div(tp, cm.sum(axis=1))  # row sums: support
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1


def precision_recall_f1(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 (beta = 1), each float64 (C,) NumPy."""
    return scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


def accuracy(y_true, y_pred) -> float:
    """Fraction of samples with ``y_pred == y_true``; ValueError when there are none."""
    xp = backend.get_array_module(y_true, y_pred)
    yt, yp = xp.asarray(y_true), xp.asarray(y_pred)
    if yt.ndim != 1 or yt.shape != yp.shape:
        raise ValueError(f"y_pred: expected the shape of y_true {tuple(yt.shape)}, got {tuple(yp.shape)}")
    if yt.size == 0:
        raise ValueError("y_true: expected at least one sample, got none")
    return float((yt == yp).mean())


def normalize_rows(cm) -> np.ndarray:
    """Each row of ``cm`` divided by its sum (the per-class recall view); all-zero rows stay 0."""
    cm = np.asarray(cm, np.float64)
    return _safe_div(cm, cm.sum(axis=1, keepdims=True) + np.zeros_like(cm))


def report_from_confusion(cm, class_names) -> dict:
    """The dict of ``classification_report`` from a (C, C) confusion matrix."""
    cm = np.asarray(cm, np.int64)
    names = [str(n) for n in class_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(
            f"class_names: expected {cm.shape[0]} names (one per class of the "
            f"confusion matrix {cm.shape}), got {len(names)}"
        )
    n = int(cm.sum())
    if n == 0:
        raise ValueError("y_true: expected at least one sample, got none")
    p, r, f = scores_from_confusion(cm)
    support = cm.sum(axis=1)
    return {
        "num_samples": n,
        "num_classes": len(names),
        "accuracy": float(np.trace(cm)) / n,
        "class_names": names,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalize_rows(cm).tolist(),
        "per_class": [
            {
                "label": i,
                "name": names[i],
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i in range(len(names))
        ],
        "macro_avg": {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean())},
    }


def classification_report(y_true, y_pred, class_names) -> dict:
    """Everything about a classification, JSON-ready.

    Keys: num_samples, num_classes, accuracy, class_names, confusion_matrix (counts,
    rows = true classes), confusion_matrix_normalized (rows sum to 1), per_class (list of
    {label, name, precision, recall, f1, support}), macro_avg ({precision, recall, f1}).
    """
    return report_from_confusion(confusion_matrix(y_true, y_pred, len(class_names)), class_names)


def _table(corner, row_names, col_names, rows, fmt) -> list[str]:
    """Lines of a right-aligned table with a header row and a name column."""
    cells = [[fmt(v) for v in row] for row in rows]
    w0 = max([len(s) for s in row_names] + [len(corner)])
    widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(col_names)]
    lines = ["  ".join([corner.ljust(w0)] + [c.rjust(w) for c, w in zip(col_names, widths)])]
    for name, row in zip(row_names, cells):
        lines.append("  ".join([name.ljust(w0)] + [c.rjust(w) for c, w in zip(row, widths)]))
    return lines


def format_report(report: dict, digits: int = 3) -> str:
    """A human-readable text of a ``classification_report`` dict: both confusion matrices,
    per-class precision/recall/F1/support and the macro averages."""
    names = report["class_names"]
    f = f"{{:.{digits}f}}".format
    out = [
        f"samples: {report['num_samples']}   classes: {report['num_classes']}   "
        f"classification rate (accuracy): {f(report['accuracy'])}",
        "",
        "confusion matrix (counts; rows = true class, columns = predicted):",
    ]
    out += _table("true \\ pred", names, names, report["confusion_matrix"], str)
    out += ["", "confusion matrix (row-normalised: each row sums to 1):"]
    out += _table("true \\ pred", names, names, report["confusion_matrix_normalized"], f)
    out += ["", "per-class scores:"]
    rows = [[c["precision"], c["recall"], c["f1"], c["support"]] for c in report["per_class"]]
    m = report["macro_avg"]
    rows.append([m["precision"], m["recall"], m["f1"], report["num_samples"]])
    out += _table(
        "class",
        names + ["macro avg"],
        ["precision", "recall", "f1", "support"],
        rows,
        lambda v: str(v) if isinstance(v, (int, np.integer)) else f(v),
    )
    return "\n".join(out)
