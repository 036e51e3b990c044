"""``jaxdl cv``: k-fold cross-validation through the real trainer, one workdir per fold.

Fold ``k`` is the experiment with ``data.cv_folds=K, data.cv_fold=k`` (``jaxdl.data.folds``)
trained into ``ROOT/fold_k`` exactly as ``jaxdl train`` would: resumable, and a fold whose
workdir already holds its results is not trained again, so an interrupted sweep re-runs with the
same command. The summary gives each metric's mean and sample standard deviation over the folds,
for the fold's own held-out validation part (the cross-validation estimate) and for the shared
test split, as a table and ``ROOT/cv_results.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxdl.data.folds import check_fold

RESULTS_FILENAME = "cv_results.json"


def fold_config(config: ml_collections.ConfigDict, folds: int, fold: int):
    """A copy of ``config`` training fold ``fold`` of ``folds``."""
    check_fold(folds, fold)
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.data.cv_folds = folds
    copy.data.cv_fold = fold
    return copy


def fold_workdir(root: str, fold: int) -> str:
    return os.path.join(root, f"fold_{fold}")


def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in results.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "step"
    }


def finished_results(workdir: str) -> dict[str, Any] | None:
    """A fold's ``results.json`` when its training finished, else None."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def summarize(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) of every scalar metric, for 'val' and 'test'."""
    summary: dict[str, Any] = {"folds": len(per_fold)}
    for split, pick in (("val", lambda r: r.get("val", {})), ("test", lambda r: r)):
        rows = [_scalars(pick(results)) for results in per_fold]
        keys = sorted(set.intersection(*(set(r) for r in rows))) if rows else []
        keys = [k for k in keys if not k.startswith("best_") and k != "train_seconds"]
        summary[split] = {
            key: {
                "mean": float(np.mean([r[key] for r in rows])),
                "std": float(np.std([r[key] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
                "per_fold": [r[key] for r in rows],
            }
            for key in keys
        }
    return summary


def format_summary(summary: Mapping[str, Any], metrics: Sequence[str]) -> str:
    """A Markdown table: one row per metric, mean ± std on validation folds and on test."""
    lines = [
        f"| metric ({summary['folds']} folds) | validation fold | test |",
        "|---|---|---|",
    ]
    for key in metrics:
        cells = []
        for split in ("val", "test"):
            entry = summary[split].get(key)
            cells.append("" if entry is None else f"{entry['mean']:.4f} ± {entry['std']:.4f}")
        if any(cells):
            lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def run_cross_validation(
    config: ml_collections.ConfigDict, root: str, folds: int
) -> dict[str, Any]:
    """Trains every fold not finished yet into ``root/fold_k``; writes and returns the summary."""
    from jaxdl.experiment import build_experiment
    from jaxdl.train import Trainer

    per_fold = []
    for fold in range(folds):
        workdir = fold_workdir(root, fold)
        results = finished_results(workdir)
        if results is None:
            experiment = build_experiment(fold_config(config, folds, fold))
            results = Trainer(experiment, workdir).fit()
            results = finished_results(workdir) or results
        per_fold.append(results)
    summary = summarize(per_fold)
    summary["workdirs"] = [fold_workdir(root, fold) for fold in range(folds)]
    with open(os.path.join(root, RESULTS_FILENAME), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary
