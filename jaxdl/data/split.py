"""Stratified splitting, cross-validation folds and class-imbalance helpers (index based)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.utils.class_weight import compute_class_weight


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    return labels


def stratified_split(
    labels: Sequence[int] | np.ndarray,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Splits example indices into len(fractions) disjoint, class-stratified parts.

    Uses scikit-learn's `train_test_split(stratify=...)` in successive stages (train vs rest,
    then rest into val/test), so each part keeps the class proportions of `labels` [N].
    Returns one sorted int64 index array per fraction; together they cover range(N).
    """
    labels = _as_labels(labels)
    fractions = [float(f) for f in fractions]
    if len(fractions) < 2 or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be at least two positive numbers, got {fractions}")
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    remaining = np.arange(len(labels))
    remaining_fraction = 1.0
    parts = []
    for fraction in fractions[:-1]:
        part, remaining = train_test_split(
            remaining,
            train_size=fraction / remaining_fraction,
            stratify=labels[remaining],
            random_state=seed,
        )
        parts.append(np.sort(part))
        remaining_fraction -= fraction
    parts.append(np.sort(remaining))
    return tuple(parts)


def stratified_kfold(
    labels: Sequence[int] | np.ndarray, n_splits: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns `n_splits` shuffled, stratified (train_idx, val_idx) folds over labels [N]."""
    labels = _as_labels(labels)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(labels)), labels))


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Returns float32 [num_classes] 'balanced' weights n / (k * count_c) for a weighted loss.

    Computed by scikit-learn's `compute_class_weight` over the k classes present; classes absent
    from `labels` get weight 0 (they contribute no examples to weight).
    """
    labels = _as_labels(labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    present = np.unique(labels)
    weights = np.zeros(num_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def oversample_indices(labels: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    """Returns shuffled indices where every class appears as often as the largest class.

    All original indices are kept and minority classes are topped up by sampling with
    replacement (random oversampling). On indices rather than arrays, so it serves any record
    source (imbalanced-learn's RandomOverSampler resamples feature arrays).
    """
    labels = _as_labels(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    indices = []
    for cls, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == cls)
        indices.extend([members, rng.choice(members, size=target - count, replace=True)])
    return rng.permutation(np.concatenate(indices))
