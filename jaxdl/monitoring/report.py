"""Drift of windows of inputs against a reference: per-window statistics, a JSON report and a plot.

A window drifts when any input feature or the predicted-class distribution has PSI ≥ 0.25, any
feature's KS p-value is below ``ALPHA`` divided by the number of features (Bonferroni), or the
embeddings' MMD permutation p-value is below ``ALPHA``; PSI in [0.1, 0.25) is only a warning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdl.monitoring.reference import MAX_EMBEDDINGS, DriftReference, sample_indices
from jaxdl.monitoring.statistics import (
    ALPHA,
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    bin_proportions,
    categorical_psi,
    class_proportions,
    ks_test,
    mmd_test,
    psi_from_proportions,
)

THRESHOLDS = {
    "psi_moderate": PSI_MODERATE,
    "psi_significant": PSI_SIGNIFICANT,
    "ks_alpha": ALPHA,
    "ks_correction": "bonferroni over input features",
    "mmd_alpha": ALPHA,
}
KS_PLOT_FLOOR = 1e-12


def compare_window(
    reference: DriftReference,
    features: Mapping[str, np.ndarray],
    predictions: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    *,
    permutations: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Statistics of one window (``features`` as ``input_features`` gives them, predicted class
    ids, embeddings) against ``reference``, its ``status`` (ok / warning / drift) and the
    reasons."""
    ks_alpha = ALPHA / len(reference.features)
    reasons, warnings = [], []

    def judge_psi(name: str, value: float) -> None:
        if value >= PSI_SIGNIFICANT:
            reasons.append(f"{name} PSI {value:.3f} >= {PSI_SIGNIFICANT}")
        elif value >= PSI_MODERATE:
            warnings.append(f"{name} PSI {value:.3f} >= {PSI_MODERATE}")

    per_feature = {}
    for name, values in reference.features.items():
        current = np.asarray(features[name], np.float64)
        value = psi_from_proportions(
            reference.proportions[name], bin_proportions(current, reference.edges[name])
        )
        statistic, p_value = ks_test(values, current)
        per_feature[name] = {
            "psi": value,
            "ks_statistic": statistic,
            "ks_pvalue": p_value,
            "mean": float(current.mean()),
            "reference_mean": float(values.mean()),
        }
        judge_psi(name, value)
        if p_value < ks_alpha:
            reasons.append(f"{name} KS p {p_value:.2g} < {ks_alpha:.3g}")
    result: dict[str, Any] = {
        "examples": len(next(iter(features.values()))),
        "features": per_feature,
    }
    if predictions is not None and reference.predictions is not None:
        value = categorical_psi(reference.predictions, predictions, reference.num_classes)
        result["prediction_psi"] = value
        result["predicted_class_distribution"] = class_proportions(
            predictions, reference.num_classes
        ).tolist()
        judge_psi("prediction", value)
    if embeddings is not None and reference.embeddings is not None and len(embeddings) >= 2:
        sample = embeddings[sample_indices(len(embeddings), MAX_EMBEDDINGS, seed)]
        value, p_value, bandwidth = mmd_test(reference.embeddings, sample, permutations, seed)
        result["embedding_mmd2"] = value
        result["embedding_mmd_pvalue"] = p_value
        result["embedding_mmd_bandwidth"] = bandwidth
        if p_value < ALPHA:
            reasons.append(f"embedding MMD² {value:.4f}, p {p_value:.3g} < {ALPHA}")
    result["status"] = "drift" if reasons else "warning" if warnings else "ok"
    result["reasons"] = reasons + warnings
    return result


def window_bounds(total: int, window: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive windows of ``window`` examples; a remainder shorter than
    half a window joins the previous window (PSI over a handful of examples is noise: its
    expected value without any drift is about (bins − 1) / examples)."""
    bounds = [(start, min(start + window, total)) for start in range(0, total, window)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < window / 2:
        _, stop = bounds.pop()
        bounds[-1] = (bounds[-1][0], stop)
    return bounds


def drift_report(
    reference: DriftReference,
    features: Mapping[str, np.ndarray],
    predictions: np.ndarray | None,
    embeddings: np.ndarray | None,
    window: int,
    *,
    permutations: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """``compare_window`` over consecutive windows (``window_bounds``), with the thresholds and
    the reference's provenance."""
    total = len(next(iter(features.values())))
    windows = []
    for index, (start, stop) in enumerate(window_bounds(total, window)):
        result = compare_window(
            reference,
            {name: values[start:stop] for name, values in features.items()},
            None if predictions is None else predictions[start:stop],
            None if embeddings is None else embeddings[start:stop],
            permutations=permutations,
            seed=seed + index,
        )
        windows.append({"index": index, "start": start, "stop": stop, **result})
    return {
        "reference": {"examples": reference.examples, **reference.info},
        "examples": total,
        "window": window,
        "permutations": permutations,
        "thresholds": THRESHOLDS,
        "drifted_windows": sum(w["status"] == "drift" for w in windows),
        "windows": windows,
    }


def plot_report(report: Mapping[str, Any], path: str) -> None:
    """A PNG of each statistic per window with its thresholds: PSI (input features and
    predictions), KS p-values and, when computed, the embeddings' MMD²."""
    windows = report["windows"]
    index = [w["index"] for w in windows]
    has_mmd = any("embedding_mmd2" in w for w in windows)
    figure = Figure(figsize=(11 if has_mmd else 8, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3 if has_mmd else 2, squeeze=False)[0]
    names = list(windows[0]["features"])
    for name in names:
        axes[0].plot(index, [w["features"][name]["psi"] for w in windows], "o-", label=name)
        p_values = [max(w["features"][name]["ks_pvalue"], KS_PLOT_FLOOR) for w in windows]
        axes[1].plot(index, p_values, "o-", label=name)
    if "prediction_psi" in windows[0]:
        psi = [w["prediction_psi"] for w in windows]
        axes[0].plot(index, psi, "s--", color="black", label="predicted class")
    axes[0].axhline(PSI_MODERATE, color="orange", linestyle=":", label=f"{PSI_MODERATE} moderate")
    axes[0].axhline(PSI_SIGNIFICANT, color="red", linestyle=":", label=f"{PSI_SIGNIFICANT} drift")
    axes[0].set(title="PSI", xlabel="window")
    axes[0].set_yscale("symlog", linthresh=0.1)
    axes[0].set_ylim(bottom=0.0)
    ks_alpha = ALPHA / len(names)
    axes[1].axhline(ks_alpha, color="red", linestyle=":", label=f"α/{len(names)} = {ks_alpha:.3g}")
    axes[1].set(title=f"KS p-value (floor {KS_PLOT_FLOOR:g})", xlabel="window", yscale="log")
    axes[1].set_ylim(KS_PLOT_FLOOR / 2, 2.0)
    if has_mmd:
        mmd = [w.get("embedding_mmd2", np.nan) for w in windows]
        axes[2].plot(index, mmd, "o-", color="purple", label="MMD²")
        for i, w in zip(index, windows, strict=True):
            if "embedding_mmd_pvalue" in w:
                axes[2].annotate(f"p={w['embedding_mmd_pvalue']:.2g}", (i, w["embedding_mmd2"]))
        axes[2].axhline(0.0, color="gray", linewidth=0.5)
        axes[2].set(title=f"embedding MMD² (drift: p < {ALPHA})", xlabel="window")
    for axis in axes:
        axis.legend(fontsize="x-small")
        if len(index) <= 20:
            axis.set_xticks(index)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        figure.savefig(path, format="png", dpi=100)
    finally:
        figure.clear()
