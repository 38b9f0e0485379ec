"""gpunet.metrics against hand-computed cases and a plain-Python reference loop."""

import json
import warnings

import numpy as np
import pytest

from gpunet import backend
from gpunet.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    format_report,
    normalize_rows,
    precision_recall_f1,
)


def reference(y_true, y_pred, C):
    """Confusion matrix and per-class P/R/F1 with plain Python loops (0 where undefined)."""
    cm = [[0] * C for _ in range(C)]
    for t, p in zip(y_true, y_pred):
        cm[t][p] += 1
    prec, rec, f1 = [], [], []
    for k in range(C):
        tp = cm[k][k]
        predicted = sum(cm[i][k] for i in range(C))
        actual = sum(cm[k])
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        prec.append(p)
        rec.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return cm, prec, rec, f1


def test_hand_computed_three_classes():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 2, 2, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == np.int64 and isinstance(cm, np.ndarray)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 1], [0, 0, 2]])
    p, r, f = precision_recall_f1(y_true, y_pred, 3)
    np.testing.assert_allclose(p, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(r, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(f, [2 / 3, 0.5, 0.8])
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_never_predicted_class_gives_zero_not_nan():
    y_true = [0, 1, 2, 2]
    y_pred = [0, 0, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero RuntimeWarning either
        p, r, f = precision_recall_f1(y_true, y_pred, 4)  # class 3: no samples, never predicted
        rep = classification_report(y_true, y_pred, ["a", "b", "c", "d"])
    np.testing.assert_allclose(p, [0.25, 0, 0, 0])
    np.testing.assert_allclose(r, [1, 0, 0, 0])
    np.testing.assert_allclose(f, [0.4, 0, 0, 0])
    assert rep["macro_avg"]["f1"] == pytest.approx(0.1)
    assert not np.isnan(np.array(rep["confusion_matrix_normalized"])).any()
    assert rep["confusion_matrix_normalized"][3] == [0, 0, 0, 0]


def test_perfect_predictions():
    y = np.array([2, 0, 1, 1, 2, 0, 0])
    p, r, f = precision_recall_f1(y, y, 3)
    for a in (p, r, f):
        np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(confusion_matrix(y, y, 3), np.diag([3, 2, 2]))
    assert accuracy(y, y) == 1.0


@pytest.mark.parametrize("seed", range(8))
def test_random_cases_match_reference_loop(seed):
    rng = np.random.default_rng(seed)
    C = int(rng.integers(2, 11))
    n = int(rng.integers(1, 300))
    y_true = rng.integers(0, C, n)
    # skewed predictions so that some classes are rarely or never predicted
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, max(1, C // 2), n))
    cm_ref, p_ref, r_ref, f_ref = reference(y_true.tolist(), y_pred.tolist(), C)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, C), cm_ref)
    p, r, f = precision_recall_f1(y_true, y_pred, C)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12)
    np.testing.assert_allclose(r, r_ref, rtol=1e-12)
    np.testing.assert_allclose(f, f_ref, rtol=1e-12)
    rep = classification_report(y_true, y_pred, [f"c{i}" for i in range(C)])
    assert rep["accuracy"] == pytest.approx(sum(int(a == b) for a, b in zip(y_true, y_pred)) / n)
    assert rep["macro_avg"]["f1"] == pytest.approx(sum(f_ref) / C)
    assert [c["support"] for c in rep["per_class"]] == [sum(row) for row in cm_ref]


def test_report_is_json_ready_and_formatted():
    rep = classification_report([0, 1, 1, 2], [0, 1, 2, 2], ["angry", "happy", "sad"])
    back = json.loads(json.dumps(rep))
    assert back["num_samples"] == 4 and back["accuracy"] == 0.75
    rows = np.array(back["confusion_matrix_normalized"])
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    text = format_report(rep)
    for s in ("angry", "happy", "sad", "macro avg", "precision", "0.750", "true \\ pred"):
        assert s in text
    # the counts table: row "happy" reads 0 1 1
    happy = [line for line in text.splitlines() if line.startswith("happy")][0]
    assert happy.split()[1:] == ["0", "1", "1"]


def test_normalize_rows_keeps_empty_rows_zero():
    np.testing.assert_array_equal(normalize_rows([[2, 2], [0, 0]]), [[0.5, 0.5], [0, 0]])


@pytest.mark.parametrize(
    "args, name",
    [
        (([0, 1], [0], 2), "y_pred"),  # different lengths
        (([0, 2], [0, 1], 2), "y_true"),  # label >= C
        (([0, 1], [0, -1], 2), "y_pred"),  # negative label
        (([[0, 1]], [[0, 1]], 2), "y_true"),  # not 1-D
        (([0.0, 1.0], [0, 1], 2), "y_true"),  # float labels
        (([0, 1], [0, 1], 0), "num_classes"),
    ],
)
def test_invalid_inputs_name_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        confusion_matrix(*args)


def test_accuracy_and_report_reject_empty_and_mismatch():
    with pytest.raises(ValueError, match="y_true"):
        accuracy([], [])
    with pytest.raises(ValueError, match="y_pred"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="class_names|y_true"):
        classification_report([0, 1], [0, 1], ["a"])
    np.testing.assert_array_equal(confusion_matrix([], [], 2), np.zeros((2, 2)))


def test_on_each_backend(xp):
    """Device inputs (CuPy on the GPU run) give the same NumPy results; mixed inputs work too."""
    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(0, 5, 500), rng.integers(0, 5, 500)
    cm_ref, p_ref, _, f_ref = reference(y_true.tolist(), y_pred.tolist(), 5)
    yt, yp = xp.asarray(y_true), xp.asarray(y_pred)
    cm = confusion_matrix(yt, yp, 5)
    assert isinstance(cm, np.ndarray) and cm.dtype == np.int64
    np.testing.assert_array_equal(cm, cm_ref)
    np.testing.assert_array_equal(confusion_matrix(y_true, yp, 5), cm_ref)  # NumPy + device
    p, _, f = precision_recall_f1(yt, yp, 5)
    np.testing.assert_allclose(p, p_ref)
    np.testing.assert_allclose(f, f_ref)
    assert accuracy(yt, yp) == pytest.approx(np.mean(y_true == y_pred))
    with pytest.raises(ValueError, match="y_true"):
        confusion_matrix(xp.asarray([0, 5]), xp.asarray([0, 1]), 5)
    assert backend.get_array_module(yt) is xp
