"""Likely label errors: confident learning (``jaxdl.metrics.label_noise``) on out-of-fold
probabilities from a ``jaxdl cv`` root.

``jaxdl cv`` saves each fold's checkpoints but not its held-out predictions, so each fold's best
checkpoint is run over its own validation part here, through the same prediction code as
``jaxdl predict``. The folds partition train + val, so every example of those splits gets one
probability row from a model that never trained on it; the test split is not scored. The fold
workdirs must come from the report's config: same data fields (``POOL_FIELDS``), ``cv_folds``
equal to the number of fold directories, finished training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from jaxdl.config import read_config
from jaxdl.cross_validation import finished_results, fold_workdir
from jaxdl.data.folds import cross_validation_fold
from jaxdl.data.imbalance import apply_train_options
from jaxdl.data.records import DataSplits
from jaxdl.data_report.duplicates import Catalogue
from jaxdl.errors import UserError
from jaxdl.metrics.label_noise import confident_joint, estimate_label_noise

# The data fields that decide the cross-validation pool and its folds.
POOL_FIELDS = ("name", "options", "split_fractions", "split_seed", "standardize")
RestoreState = Callable[[Any, str], Any]


def _plain(value: Any) -> Any:
    """A config value as JSON would hold it (tuples as lists), for comparison."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def count_folds(root: str) -> int:
    """The number of ``fold_k`` directories of a cv root, counted from 0."""
    if not os.path.isdir(root):
        raise UserError(f"--oof {root}: no such directory")
    folds = 0
    while os.path.isdir(fold_workdir(root, folds)):
        folds += 1
    if folds < 2:
        raise UserError(f"--oof {root} holds {folds} fold_k directories: not a `jaxdl cv` root")
    return folds


def fold_config(
    config: ml_collections.ConfigDict, root: str, folds: int, fold: int
) -> ml_collections.ConfigDict:
    """The saved config of fold ``fold``, checked against ``config`` (see the module docs)."""
    workdir = fold_workdir(root, fold)
    if finished_results(workdir) is None:
        raise UserError(f"{workdir} has not finished training (no results.json): rerun `jaxdl cv`")
    saved = read_config(os.path.join(workdir, "config.json"))
    data = saved.get("data") or ml_collections.ConfigDict()
    if data.get("cv_folds") != folds or data.get("cv_fold") != fold:
        raise UserError(
            f"{workdir} was trained as fold {data.get('cv_fold')} of {data.get('cv_folds')}, "
            f"but {root} holds {folds} folds"
        )
    for field in POOL_FIELDS:
        theirs, ours = _plain(data.get(field)), _plain(config.data.get(field))
        if theirs != ours:
            raise UserError(
                f"{workdir} was trained on other data than the config: data.{field} is "
                f"{theirs!r} there, {ours!r} here"
            )
    return saved


def out_of_fold_probabilities(
    config: ml_collections.ConfigDict,
    data: DataSplits,
    root: str,
    restore: RestoreState,
    batch_size: int = 64,
) -> tuple[np.ndarray, int]:
    """float64 [len(train) + len(val), K] held-out probabilities (rows in train-then-val order,
    NaN for unreadable records) and the number of folds of the cv ``root``.

    ``data`` holds the report's splits (as ``load_data`` gives them without cv folds);
    ``restore(experiment, workdir)`` returns the fold's best train state.
    """
    from jaxdl.experiment import build_experiment
    from jaxdl.export import experiment_inference
    from jaxdl.export.predictions import classify_records

    folds = count_folds(root)
    seed = int(config.data.get("split_seed", 0))
    probabilities = None
    for fold in range(folds):
        saved = fold_config(config, root, folds, fold)
        fold_data = cross_validation_fold(data, folds, fold, seed)
        fold_data = apply_train_options(fold_data, saved.data)
        experiment = build_experiment(saved, data=fold_data)
        inference = experiment_inference(experiment, restore(experiment, fold_workdir(root, fold)))
        positions = fold_data.val.indices
        for row in classify_records(inference, fold_data.val, batch_size):
            if "error" in row:
                continue
            if probabilities is None:
                shape = (len(data.train) + len(data.val), len(row["probabilities"]))
                probabilities = np.full(shape, np.nan)
            probabilities[positions[row["index"]]] = row["probabilities"]
    if probabilities is None:
        raise UserError(f"no readable held-out example in the folds of {root}")
    return probabilities, folds


def label_issue_section(
    catalogue: Catalogue, probabilities: np.ndarray, top: int, source: str
) -> dict[str, Any]:
    """Confident learning on ``probabilities`` (rows = the catalogue's first examples; NaN rows
    and unknown labels skipped): the estimated noise rate, the raw and calibrated confident
    joints, per-class thresholds, and the ``top`` suspected examples, least self-confident
    first, with their given and suggested (confident) labels."""
    names = catalogue.class_names
    if probabilities.shape[1] != len(names):
        raise UserError(
            f"the out-of-fold predictions have {probabilities.shape[1]} classes, the data "
            f"{len(names)}"
        )
    labels = catalogue.labels[: len(probabilities)]
    scored = np.flatnonzero(np.isfinite(probabilities).all(1) & (labels >= 0))
    given, probs = labels[scored], probabilities[scored]
    estimate = estimate_label_noise(given, probs)
    counts, confident = confident_joint(given, probs)
    suspects = []
    for k in estimate.issues[:top]:
        entry = catalogue.describe(int(scored[k]))
        entry["label"] = names[given[k]]
        entry["suggested"] = names[confident[k]]
        entry["p_label"] = round(float(probs[k, given[k]]), 4)
        entry["p_suggested"] = round(float(probs[k, confident[k]]), 4)
        suspects.append(entry)
    return {
        "computed": True,
        "source": source,
        "method": "confident learning (Northcutt et al. 2021) on out-of-fold probabilities",
        "examples_scored": int(len(scored)),
        "estimated_noise_rate": round(estimate.noise_rate, 6),
        "estimated_label_errors": int(round(estimate.noise_rate * len(scored))),
        "flagged": int(len(estimate.issues)),
        "thresholds": dict(zip(names, np.round(estimate.thresholds, 6).tolist(), strict=True)),
        "confident_joint_counts": counts.tolist(),
        "calibrated_joint": np.round(estimate.joint, 6).tolist(),
        "top": suspects,
    }
