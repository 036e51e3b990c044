"""Tests for jaxdl.data.split: stratified splits, k-fold, class weights, oversampling."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxdl.data.split import class_weights, oversample_indices, stratified_kfold, stratified_split

IMBALANCED = np.repeat(np.arange(4), [200, 60, 23, 11])


@pytest.mark.parametrize("labels", [load_digits().target, IMBALANCED])
@pytest.mark.parametrize("seed", [0, 7])
def test_stratified_split_keeps_class_proportions_within_one_example(labels, seed):
    fractions = (0.7, 0.15, 0.15)
    parts = stratified_split(labels, fractions, seed=seed)
    assert len(parts) == 3
    for part, fraction in zip(parts, fractions, strict=True):
        for cls, total in zip(*np.unique(labels, return_counts=True), strict=True):
            assert abs(np.sum(labels[part] == cls) - fraction * total) <= 1


def test_stratified_split_parts_are_disjoint_and_cover_everything():
    parts = stratified_split(IMBALANCED, (0.6, 0.2, 0.2), seed=3)
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(IMBALANCED)))


def test_stratified_split_is_seeded():
    first = stratified_split(IMBALANCED, seed=1)
    np.testing.assert_array_equal(first[1], stratified_split(IMBALANCED, seed=1)[1])
    assert not np.array_equal(first[1], stratified_split(IMBALANCED, seed=2)[1])


def test_stratified_split_two_fractions_gives_two_parts():
    train, test = stratified_split(IMBALANCED, (0.8, 0.2))
    assert len(train) + len(test) == len(IMBALANCED)
    assert abs(len(test) - 0.2 * len(IMBALANCED)) <= 1


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.5, 0.4), (1.0,), (1.2, -0.2)])
def test_stratified_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(IMBALANCED, fractions)


def test_stratified_kfold_validation_folds_partition_data_and_stratify():
    folds = stratified_kfold(IMBALANCED, n_splits=5, seed=0)
    assert len(folds) == 5
    val = np.concatenate([v for _, v in folds])
    np.testing.assert_array_equal(np.sort(val), np.arange(len(IMBALANCED)))
    for train, val_fold in folds:
        assert np.intersect1d(train, val_fold).size == 0
        assert len(train) + len(val_fold) == len(IMBALANCED)
        assert abs(np.sum(IMBALANCED[val_fold] == 3) - 11 / 5) <= 1
    shuffled_first = stratified_kfold(IMBALANCED, n_splits=5, seed=1)[0][1]
    assert not np.array_equal(folds[0][1], shuffled_first)


def test_class_weights_are_balanced_and_zero_for_absent_classes():
    weights = class_weights(np.array([0, 0, 0, 1]), num_classes=3)
    np.testing.assert_allclose(weights, [4 / (2 * 3), 4 / (2 * 1), 0.0])
    assert weights.dtype == np.float32
    with pytest.raises(ValueError, match="labels must lie"):
        class_weights(np.array([0, 3]), num_classes=3)


def test_oversample_indices_balances_classes_and_keeps_all_originals():
    indices = oversample_indices(IMBALANCED, seed=0)
    counts = np.bincount(IMBALANCED[indices])
    np.testing.assert_array_equal(counts, [200, 200, 200, 200])
    assert np.isin(np.arange(len(IMBALANCED)), indices).all()
    np.testing.assert_array_equal(indices, oversample_indices(IMBALANCED, seed=0))
    assert not np.array_equal(indices, oversample_indices(IMBALANCED, seed=1))
