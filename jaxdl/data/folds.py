"""Cross-validation folds over a loaded experiment's data (``data.cv_folds`` / ``data.cv_fold``).

The configured train and validation splits are pooled and re-partitioned into ``cv_folds``
stratified folds (scikit-learn's ``StratifiedKFold``, seeded by ``data.split_seed``; plain
shuffled ``KFold`` when the records' labels are not known without decoding them); fold ``k``
validates on part ``k`` and trains on the rest. The test split stays fixed and untouched, so every
fold reports on the same held-out data. Statistics fitted while loading (image standardisation,
tokenizers) come from the configured train split, which overlaps each fold's validation part:
a small, documented leak into validation only, never into test.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from jaxdl.data.records import DataSplits
from jaxdl.data.views import ConcatenatedSource, SubsetSource, source_labels
from jaxdl.errors import ConfigError


def check_fold(folds: int, fold: int) -> None:
    """``ConfigError`` unless 2 <= folds and 0 <= fold < folds."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"data.cv_folds must be an integer >= 2, got {folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(f"data.cv_fold must be an integer in [0, {folds}), got {fold!r}")


def fold_indices(pool, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train, validation) index pairs over ``pool``: stratified when labels are known."""
    labels = source_labels(pool)
    if labels is None:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(pool))))
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < folds:
        rare = {int(c): int(n) for c, n in zip(classes, counts, strict=True) if n < folds}
        raise ConfigError(
            f"data.cv_folds={folds} needs at least {folds} train+val examples of every class; "
            f"these classes have fewer (class: count): {rare}"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def cross_validation_fold(data: DataSplits, folds: int, fold: int, seed: int) -> DataSplits:
    """``data`` with train and validation replaced by fold ``fold`` of ``folds`` (see module)."""
    check_fold(folds, fold)
    pool = ConcatenatedSource([data.train, data.val])
    if len(pool) < folds:
        raise ConfigError(f"data.cv_folds={folds} exceeds the {len(pool)} train+val examples")
    train_index, val_index = fold_indices(pool, folds, seed)[fold]
    info = {**data.info, "cv_folds": folds, "cv_fold": fold}
    info.pop("train_examples", None)  # counted from the new train split
    return dataclasses.replace(
        data,
        train=SubsetSource(pool, np.sort(train_index)),
        val=SubsetSource(pool, np.sort(val_index)),
        info=info,
    )
