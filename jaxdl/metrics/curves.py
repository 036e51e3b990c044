"""Per-class evaluation analysis: one-vs-rest ROC / precision-recall curves, most confused class
pairs and per-class score plots, host side (numpy + scikit-learn, PNGs via matplotlib Agg).

The curves and their areas come straight from scikit-learn (`roc_curve`, `roc_auc_score`,
`precision_recall_curve`, `average_precision_score`); this module only validates the input,
runs them once per class (one-vs-rest) and packs the results as plain JSON-ready Python values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from jaxdl.metrics.calibration import _check_probs_and_labels
from jaxdl.metrics.classification import as_confusion_matrix
from jaxdl.metrics.plots import _new_figure, _save_png

# Curves drawn per plot at most; with more classes the worst-scoring ones are drawn.
MAX_PLOTTED_CURVES = 20
PER_CLASS_SCORES = ("precision", "recall", "f1")


def _json_floats(values: np.ndarray) -> list[float | None]:
    """Plain floats; non-finite entries (roc_curve's leading `inf` threshold) become None."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """`num_classes` unique names as strings; defaults to "0" .. "C-1"."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class_names for {num_classes} classes")
    if len(set(names)) != num_classes:
        raise ValueError("class_names must be unique")
    return names


def _class_curves(is_positive: np.ndarray, scores: np.ndarray, drop: bool) -> dict[str, Any]:
    """ROC and PR curves with their areas for one binary (one-vs-rest) problem."""
    fpr, tpr, roc_thresholds = skm.roc_curve(is_positive, scores, drop_intermediate=drop)
    precision, recall, pr_thresholds = skm.precision_recall_curve(
        is_positive, scores, drop_intermediate=drop
    )
    return {
        "roc": {
            "fpr": _json_floats(fpr),
            "tpr": _json_floats(tpr),
            "thresholds": _json_floats(roc_thresholds),
            "auc": float(skm.roc_auc_score(is_positive, scores)),
        },
        "pr": {
            "precision": _json_floats(precision),
            "recall": _json_floats(recall),
            "thresholds": _json_floats(pr_thresholds),
            "average_precision": float(skm.average_precision_score(is_positive, scores)),
        },
    }


def one_vs_rest_curves(
    probs: Any,
    labels: Any,
    class_names: Sequence[str] | None = None,
    drop_intermediate: bool = True,
) -> dict[str, Any]:
    """One-vs-rest ROC and precision-recall curves per class, with ROC AUC and average precision.

    Class k's curves treat `labels == k` as positives scored by `probs[:, k]`. A class with no
    positive or no negative example has no defined curve: its 'roc' and 'pr' are None and it is
    left out of the macro averages.

    Args:
      probs: `[N, C]` predicted probabilities (rows sum to 1).
      labels: `[N]` integer class ids.
      class_names: `C` unique names; defaults to "0" .. "C-1".
      drop_intermediate: passed to sklearn's `roc_curve` and `precision_recall_curve`: drop
        points that do not change the curve's shape (keeps the dict small for large N).

    Returns:
      JSON-serialisable dict: 'per_class' (name -> {'support', 'roc': {'fpr', 'tpr',
      'thresholds', 'auc'}, 'pr': {'precision', 'recall', 'thresholds', 'average_precision'}}),
      'macro_roc_auc' and 'macro_average_precision' (means over classes with curves; None if
      none has). roc_curve's first threshold is `inf` in sklearn and is stored as None.
    """
    probs, labels = _check_probs_and_labels(probs, labels)
    num_examples, num_classes = probs.shape
    names = _class_names(class_names, num_classes)
    per_class: dict[str, Any] = {}
    aucs, average_precisions = [], []
    for k, name in enumerate(names):
        is_positive = (labels == k).astype(np.int64)
        support = int(is_positive.sum())
        entry: dict[str, Any] = {"support": support, "roc": None, "pr": None}
        if 0 < support < num_examples:
            entry.update(_class_curves(is_positive, probs[:, k], drop_intermediate))
            aucs.append(entry["roc"]["auc"])
            average_precisions.append(entry["pr"]["average_precision"])
        per_class[name] = entry
    return {
        "per_class": per_class,
        "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "macro_average_precision": float(np.mean(average_precisions)) if aucs else None,
    }


def _plotted_classes(curves: Mapping[str, Any], kind: str, score: str) -> list[str]:
    """Names of the classes with a `kind` curve, the worst `MAX_PLOTTED_CURVES` by `score`."""
    if not isinstance(curves, Mapping) or not isinstance(curves.get("per_class"), Mapping):
        raise ValueError("curves must be the dict returned by one_vs_rest_curves")
    available = [name for name, entry in curves["per_class"].items() if entry.get(kind)]
    if not available:
        raise ValueError(f"no class has a {kind} curve (each needs positives and negatives)")
    # Stable sort: equal scores keep class order, so the choice is deterministic.
    worst_first = sorted(available, key=lambda name: curves["per_class"][name][kind][score])
    return worst_first[:MAX_PLOTTED_CURVES]


def _curve_title(curves: Mapping[str, Any], shown: int, what: str, macro_key: str) -> str:
    """Plot title naming the macro score and, when not all classes are drawn, how many are."""
    total = sum(1 for entry in curves["per_class"].values() if entry.get("roc"))
    subset = "" if shown == total else f", worst {shown} of {total} classes"
    macro = curves.get(macro_key)
    macro_text = "" if macro is None else f" (macro {macro:.4f}{subset})"
    return f"one-vs-rest {what}{macro_text}"


def plot_roc_curves(curves: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a PNG of the one-vs-rest ROC curves from `one_vs_rest_curves(...)`, AUC in legend.

    With more than `MAX_PLOTTED_CURVES` classes only the lowest-AUC ones are drawn.
    Returns the path written (parent directories are created).
    """
    names = _plotted_classes(curves, "roc", "auc")
    figure, axes = _new_figure(8, 7)
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="chance")
    for name in names:
        roc = curves["per_class"][name]["roc"]
        axes.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUC {roc['auc']:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate")
    axes.set_title(_curve_title(curves, len(names), "ROC", "macro_roc_auc"))
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(alpha=0.3)
    return _save_png(figure, path)


def plot_pr_curves(curves: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a PNG of the one-vs-rest precision-recall curves from `one_vs_rest_curves(...)`.

    The legend gives each class's average precision; with more than `MAX_PLOTTED_CURVES`
    classes only the lowest ones are drawn. Returns the path written.
    """
    names = _plotted_classes(curves, "pr", "average_precision")
    figure, axes = _new_figure(8, 7)
    for name in names:
        pr = curves["per_class"][name]["pr"]
        # Steps, as average precision sums them (no optimistic linear interpolation).
        axes.step(
            pr["recall"],
            pr["precision"],
            where="post",
            label=f"{name} (AP {pr['average_precision']:.3f})",
        )
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    axes.set_title(_curve_title(curves, len(names), "precision-recall", "macro_average_precision"))
    axes.legend(loc="lower left", fontsize="small")
    axes.grid(alpha=0.3)
    return _save_png(figure, path)


def most_confused_pairs(
    cm: Any, class_names: Sequence[str] | None = None, top: int | None = 10
) -> list[dict[str, Any]]:
    """The `top` largest off-diagonal confusion counts, largest first.

    Ties are broken by true class index, then predicted class index (row-major order), so the
    result is deterministic. Pairs never confused (count 0) are not listed.

    Args:
      cm: `[C, C]` counts, rows = true class, columns = predicted class.
      class_names: `C` unique names; defaults to "0" .. "C-1".
      top: maximum number of pairs (None: all non-zero pairs).

    Returns:
      JSON-serialisable list of {'true', 'predicted', 'count', 'fraction_of_true'}, where
      'fraction_of_true' is the count over that true class's total.
    """
    cm = as_confusion_matrix(cm)
    names = _class_names(class_names, cm.shape[0])
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
        raise ValueError(f"top must be a non-negative int or None, got {top!r}")
    off_diagonal = cm.copy()
    np.fill_diagonal(off_diagonal, 0)
    flat = off_diagonal.ravel()
    # Stable sort on -count keeps row-major index order among equal counts.
    order = np.argsort(-flat, kind="stable")
    order = order[flat[order] > 0][:top]
    row_totals = cm.sum(axis=1)
    pairs = []
    for index in order:
        true, predicted = divmod(int(index), cm.shape[0])
        pairs.append(
            {
                "true": names[true],
                "predicted": names[predicted],
                "count": int(flat[index]),
                "fraction_of_true": float(flat[index] / row_totals[true]),
            }
        )
    return pairs


def plot_per_class_metrics(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Save a grouped bar chart PNG of per-class precision, recall and F1.

    Args:
      report: the dict from `jaxdl.metrics.classification_report` (reads its 'per_class' entry,
        name -> {'precision', 'recall', 'f1', 'support'}, and the macro F1 if present).
      path: output PNG file; parent directories are created.

    Returns:
      The path written.
    """
    per_class = report.get("per_class") if isinstance(report, Mapping) else None
    if not isinstance(per_class, Mapping) or not per_class:
        raise ValueError("report must be a classification_report dict with a non-empty per_class")
    names = list(per_class)
    try:
        scores = np.array([[float(per_class[n][s]) for s in PER_CLASS_SCORES] for n in names])
    except (KeyError, TypeError) as error:
        raise ValueError(f"per_class entries need precision, recall and f1: {error!r}") from None
    positions = np.arange(len(names))
    bar_width = 0.8 / len(PER_CLASS_SCORES)
    width = float(np.clip(0.45 * len(names) + 3, 6, 40))
    figure, axes = _new_figure(width, 5)
    for i, score in enumerate(PER_CLASS_SCORES):
        axes.bar(positions + (i - 1) * bar_width, scores[:, i], width=bar_width, label=score)
    axes.set_xticks(positions, names, rotation="vertical" if len(names) > 10 else "horizontal")
    axes.set(ylim=(0, 1.15), ylabel="score", xlabel="class")  # headroom for the legend
    macro_f1 = report.get("f1_macro")
    title = "per-class precision / recall / F1"
    axes.set_title(title if macro_f1 is None else f"{title} (macro F1 {float(macro_f1):.4f})")
    axes.legend(loc="upper right", ncols=len(PER_CLASS_SCORES))
    axes.grid(alpha=0.3, axis="y")
    return _save_png(figure, path)
