"""Class imbalance on the data side: a seeded imbalance of the train split (for experiments),
class-balanced oversampling of the train split, and SMOTE for feature/embedding arrays.

The imbalance and oversampling options are *index views* (``SubsetSource``) built once from the
split's labels and ``data.split_seed``: the train loader shuffles and reshuffles them every epoch
like any source, and its checkpointed position resumes them exactly (the view is a pure function
of labels and seed, and its ``repr``, which grain checks on restore, carries an index digest).
``data.smote`` instead replaces an in-memory train split by new arrays (the originals followed
by synthetic examples), again a pure function of the split and the seed. Validation and test
splits (and a cross-validation fold's held-out part) are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxdl.data.records import ArraySource, DataSplits, RecordSource
from jaxdl.data.views import ConcatenatedSource, SubsetSource, source_labels
from jaxdl.errors import ConfigError

OVERSAMPLE_MODES = ("balanced",)
SMOTE_KEYS = ("enabled", "k_neighbors", "sampling_strategy")


def imbalance_indices(labels: np.ndarray, keep: Sequence[float], seed: int) -> np.ndarray:
    """Sorted indices keeping ``round(keep[c] * count_c)`` (at least 1) examples of each class
    ``c``, drawn without replacement with ``seed``: a reproducible class imbalance."""
    labels = np.asarray(labels)
    keep = np.asarray(keep, np.float64)
    rng = np.random.default_rng(seed)
    kept = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(keep[cls] * len(members))))
        kept.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(kept))


def balanced_repeat_indices(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices in which every class appears as often as the largest one: each class's examples
    repeated ``target // count`` times plus ``target % count`` of them (a seeded choice without
    replacement), so copies of a minority example differ in number by at most one.

    Unlike ``split.oversample_indices`` (top-up drawn with replacement) no example is favoured
    by chance. Grouped by class; the loader shuffles them.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    target = int(counts.max())
    parts = []
    for cls, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == cls)
        extra = rng.choice(members, size=target % count, replace=False)
        parts.append(np.concatenate([np.tile(members, target // count), np.sort(extra)]))
    return np.concatenate(parts)


def apply_train_options(splits: DataSplits, data_config: ml_collections.ConfigDict) -> DataSplits:
    """``splits`` with ``data.imbalance`` (per-class keep fractions) and then ``data.oversample``
    (``'balanced'``) or ``data.smote`` applied to the train split, all seeded by
    ``data.split_seed``."""
    keep = data_config.get("imbalance", None)
    mode = data_config.get("oversample", None)
    mode = None if isinstance(mode, str) and mode.lower() in ("", "none") else mode
    smote_options = _smote_options(data_config.get("smote", None))
    if smote_options is not None and mode is not None:
        raise ConfigError("data.smote and data.oversample both oversample the train split; set one")
    if keep is None and mode is None and smote_options is None:
        return splits
    seed = int(data_config.get("split_seed", 0))
    train = splits.train
    labels = _labels_for(train, "data.imbalance" if keep is not None else "data.oversample")
    if keep is not None:
        fractions = _keep_fractions(keep, int(labels.max()) + 1, splits.info)
        indices = imbalance_indices(labels, fractions, seed)
        train, labels = SubsetSource(train, indices), labels[indices]
    if mode is not None:
        if mode not in OVERSAMPLE_MODES:
            raise ConfigError(f"data.oversample must be 'balanced' or None, got {mode!r}")
        train = SubsetSource(train, balanced_repeat_indices(labels, seed))
    if smote_options is not None:
        train = _smote_source(train, seed, **smote_options)
    return DataSplits(train, splits.val, splits.test, info=splits.info)


def _smote_options(value: Any) -> dict[str, Any] | None:
    """``data.smote`` checked: None (or ``enabled`` false) is off, else the ``smote`` keywords."""
    if value is None:
        return None
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if not isinstance(value, dict) or set(value) - set(SMOTE_KEYS):
        raise ConfigError(
            f"data.smote must be None or a mapping with keys {list(SMOTE_KEYS)}, got {value!r}"
        )
    if not value.get("enabled", True):
        return None
    k = value.get("k_neighbors", 5)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"data.smote.k_neighbors must be an integer >= 1, got {k!r}")
    return {"k_neighbors": k, "sampling_strategy": value.get("sampling_strategy", "auto")}


def in_memory_arrays(source: RecordSource) -> dict[str, np.ndarray] | None:
    """The arrays of an ``ArraySource``, or of index views and concatenations of them, in the
    source's record order; None for sources that decode records one at a time."""
    if isinstance(source, ArraySource):
        return dict(source.arrays)
    if isinstance(source, SubsetSource):
        inner = in_memory_arrays(source.source)
        return None if inner is None else {k: v[source.indices] for k, v in inner.items()}
    if isinstance(source, ConcatenatedSource):
        parts = [in_memory_arrays(part) for part in source.sources]
        if not parts or any(p is None or set(p) != set(parts[0]) for p in parts):
            return None
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return None


def _smote_source(
    train: RecordSource, seed: int, k_neighbors: int, sampling_strategy: Any
) -> ArraySource:
    """The train split's feature arrays followed by SMOTE's synthetic examples."""
    arrays = in_memory_arrays(train)
    if arrays is None:
        raise ConfigError(
            f"data.smote needs in-memory feature arrays; this train split "
            f"({type(train).__name__}) decodes its records one at a time"
        )
    fields = sorted(arrays)
    if fields != ["inputs", "labels"] or not np.issubdtype(arrays["inputs"].dtype, np.floating):
        raise ConfigError(
            f"data.smote needs float feature arrays ('inputs' and 'labels'); this train split "
            f"holds {fields} (text and audio cannot be interpolated)"
        )
    if isinstance(sampling_strategy, Mapping):
        sampling_strategy = {int(c): int(n) for c, n in sampling_strategy.items()}
    try:
        inputs, labels = smote(
            arrays["inputs"],
            arrays["labels"],
            seed=seed,
            k_neighbors=k_neighbors,
            sampling_strategy=sampling_strategy,
        )
    except ValueError as error:
        raise ConfigError(f"data.smote: {' '.join(str(error).split())}") from None
    return ArraySource(inputs=inputs, labels=labels)


def _labels_for(source: RecordSource, option: str) -> np.ndarray:
    """The train split's class labels (read record by record when the source does not know
    them); records without ``labels`` (language modelling) cannot be balanced."""
    labels = source_labels(source)
    if labels is None:
        try:
            labels = np.asarray([int(source[i]["labels"]) for i in range(len(source))])
        except KeyError:
            raise ConfigError(f"{option} needs class-labelled records (a 'labels' field)") from None
    return np.asarray(labels, np.int64)


def _keep_fractions(keep: Any, num_labels: int, info: dict) -> np.ndarray:
    """``data.imbalance`` checked: one fraction in (0, 1] per class."""
    num_classes = int(info.get("num_classes") or len(info.get("class_names") or []) or num_labels)
    try:
        fractions = np.asarray([float(f) for f in keep], np.float64)
    except (TypeError, ValueError):
        fractions = None
    if (
        fractions is None
        or len(fractions) != num_classes
        or not np.all((fractions > 0) & (fractions <= 1))
    ):
        raise ConfigError(
            f"data.imbalance must hold one keep fraction in (0, 1] per class ({num_classes}), "
            f"got {keep!r}"
        )
    return fractions


def smote(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    k_neighbors: int = 5,
    sampling_strategy: str | float | dict = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE (Chawla et al. 2002) via ``imblearn.over_sampling.SMOTE``: minority classes get
    synthetic examples interpolated between neighbours, seeded by ``seed``.

    ``features`` is [N, D] (embeddings, tabular features) or [N, ...] (flattened for the
    neighbour search and reshaped back); returns the originals followed by the synthetic
    examples, with their labels. Meant for feature spaces where interpolation is meaningful,
    not raw pixels or token ids.
    """
    try:
        from imblearn.over_sampling import SMOTE
    except ImportError:
        raise ImportError("smote needs imbalanced-learn: pip install imbalanced-learn") from None
    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    smallest = int(np.bincount(labels).astype(float)[np.unique(labels)].min())
    if smallest <= k_neighbors:
        raise ValueError(
            f"SMOTE with k_neighbors={k_neighbors} needs more than {k_neighbors} examples of "
            f"every class; the smallest has {smallest}"
        )
    sampler = SMOTE(sampling_strategy=sampling_strategy, k_neighbors=k_neighbors, random_state=seed)
    flat, resampled_labels = sampler.fit_resample(features.reshape(len(features), -1), labels)
    shape = (len(flat), *features.shape[1:])
    return flat.reshape(shape).astype(features.dtype), resampled_labels.astype(labels.dtype)
