"""The stratified, seeded validation carve-out."""

import numpy as np
import pytest

from data_prep import PrepError
from data_prep.splits import Split, carve_validation, stratified_counts


def make_train(counts, seed=0):
    """A shuffled train Split whose x holds each sample's original position."""
    y = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    return Split(np.arange(len(y), dtype=np.int64).reshape(-1, 1, 1, 1), y, "Training")


def test_proportions_sum_and_rounding():
    y = np.repeat(np.arange(3), [50, 30, 20])
    np.testing.assert_array_equal(stratified_counts(y, 10, 3), [5, 3, 2])
    take = stratified_counts(y, 7, 3)  # 3.5, 2.1, 1.4 -> largest remainders
    assert take.sum() == 7 and list(take) == [4, 2, 1]


def test_carve_properties():
    counts = [400, 50, 300, 250]
    train = make_train(counts)
    rest, val = carve_validation(train, 100, seed=7, num_classes=4)
    np.testing.assert_array_equal(np.bincount(val.y, minlength=4), [40, 5, 30, 25])
    a, b = rest.x.ravel(), val.x.ravel()
    assert not set(a) & set(b)  # no overlap
    assert sorted(np.concatenate([a, b])) == list(range(1000))  # union = original
    assert np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)  # source order kept
    np.testing.assert_array_equal(train.y[a], rest.y)  # labels travel with images
    np.testing.assert_array_equal(train.y[b], val.y)
    again = carve_validation(train, 100, seed=7, num_classes=4)[1]
    other = carve_validation(train, 100, seed=8, num_classes=4)[1]
    np.testing.assert_array_equal(again.x, val.x)  # same seed, same draw
    assert not np.array_equal(other.x, val.x)
    assert "seed 7" in val.usage


@pytest.mark.parametrize("n", [0, 1000, 5000])
def test_bad_sizes(n):
    train = make_train([500, 500])
    with pytest.raises(PrepError, match="val-size"):
        carve_validation(train, n, 0, 2)
