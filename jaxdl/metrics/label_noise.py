"""Label-noise estimation by confident learning (Northcutt, Jiang & Chuang, JAIR 2021).

Given out-of-sample predicted probabilities (cross-validated: a model must not score examples it
was fitted on), an example whose probability for another class reaches that class's average
self-confidence is *confidently* of that class; counting these per (given, confident) label pair
gives the confident joint, whose calibrated off-diagonal mass estimates the fraction of wrong
labels. Written here because ``cleanlab`` is AGPL-3.0, which this Apache-2.0 project does not
take as a dependency; the few array operations it needs are below.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelNoiseEstimate:
    """``joint[i, j]``: estimated fraction of examples whose given label is i and true label j.

    ``noise_rate`` is its off-diagonal mass; ``issues`` the indices of examples confidently of
    another class than their label, least self-confident first; ``thresholds`` the per-class
    average self-confidence.
    """

    joint: np.ndarray
    noise_rate: float
    issues: np.ndarray
    thresholds: np.ndarray


def _thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class, the mean probability of that class over the examples labelled with it."""
    return np.array(
        [
            probs[labels == k, k].mean() if (labels == k).any() else 1.0
            for k in range(probs.shape[1])
        ]
    )


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(counts [K, K], confident label per example [N] or -1)`` of confident learning.

    Example i counts at ``(labels[i], j)`` for the class j of highest probability among those
    whose probability reaches the class threshold (the mean of ``probs[:, j]`` over examples
    labelled j); examples reaching no threshold are not counted (-1).
    """
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"labels [N] and probs [N, K] expected, got {labels.shape}, {probs.shape}")
    num_classes = probs.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes})")
    thresholds = _thresholds(labels, probs)
    above = probs >= thresholds[None, :] - 1e-12
    confident = np.where(above.any(1), np.argmax(np.where(above, probs, -1.0), 1), -1)
    counts = np.zeros((num_classes, num_classes), np.int64)
    counted = confident >= 0
    np.add.at(counts, (labels[counted], confident[counted]), 1)
    return counts, confident


def estimate_label_noise(labels: np.ndarray, probs: np.ndarray) -> LabelNoiseEstimate:
    """Calibrated confident joint and the label issues it implies (see the module docs)."""
    labels = np.asarray(labels)
    counts, confident = confident_joint(labels, probs)
    num_classes = counts.shape[0]
    per_label = np.bincount(labels, minlength=num_classes).astype(np.float64)
    row_sums = counts.sum(1, keepdims=True).astype(np.float64)
    # Each row rescaled to the number of examples carrying that label, then normalised.
    calibrated = np.where(row_sums > 0, counts / np.maximum(row_sums, 1) * per_label[:, None], 0)
    joint = calibrated / max(calibrated.sum(), 1.0)
    flagged = np.flatnonzero((confident >= 0) & (confident != labels))
    self_confidence = np.asarray(probs)[flagged, labels[flagged]]
    return LabelNoiseEstimate(
        joint=joint,
        noise_rate=float(joint.sum() - np.trace(joint)),
        issues=flagged[np.argsort(self_confidence, kind="stable")],
        thresholds=_thresholds(labels, np.asarray(probs, np.float64)),
    )
