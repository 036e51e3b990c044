"""Calibration and uncertainty of predicted probabilities, host side (numpy).

A classifier is calibrated when, among the examples it predicts with confidence p, a fraction p
is correct. `reliability_bins` / `expected_calibration_error` measure this on the top-label
(max-probability) confidence with equal-width bins, the definition of Guo et al., "On
Calibration of Modern Neural Networks" (ICML 2017); `fit_temperature` / `apply_temperature`
implement their fix, temperature scaling. `predictive_entropy`, `mutual_information` and
`rejection_curve` summarise per-example uncertainty (e.g. of MC-dropout samples or an ensemble).

Everything here takes whole evaluation sets as host arrays (numpy or jax) and computes in
float64: these are one-off analyses after evaluation, not per-step metrics, so there is nothing
to gain from jit and much to gain from exact, deterministic reductions.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special

from jaxdl.metrics.plots import _new_figure, _save_png

# Rows of `probs` must sum to 1 within this; loose enough for float16/bfloat16 softmax outputs,
# tight enough to catch logits or unnormalised scores passed by mistake.
PROB_SUM_ATOL = 1e-3
# Search interval of `fit_temperature`. On separable logits (every example right) the NLL keeps
# falling as T -> 0 until it underflows to 0; the bounds keep the result finite.
MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 1e2
DEFAULT_REJECTION_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(19))  # 0, 0.05, .., 0.9


# --------------------------------------------------------------------------- input validation


_SHAPE_NAMES = {None: "[..., C]", 2: "[N, C]", 3: "[M, N, C]"}


def _check_probs(probs: Any, name: str = "probs", ndim: int | None = 2) -> np.ndarray:
    """`probs` as float64 with `ndim` dims (None: any >= 1), non-empty, finite, >= 0, rows
    summing to 1."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 0 or (ndim is not None and probs.ndim != ndim):
        raise ValueError(f"{name} must have shape {_SHAPE_NAMES[ndim]}, got shape {probs.shape}")
    if probs.size == 0:
        raise ValueError(f"{name} is empty (shape {probs.shape})")
    if probs.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes on its last axis, got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(probs < 0):
        raise ValueError(f"{name} contains negative values; pass probabilities, not logits")
    deviation = np.abs(probs.sum(axis=-1) - 1.0)
    if np.any(deviation > PROB_SUM_ATOL):
        where = np.unravel_index(np.argmax(deviation), deviation.shape)
        row = where[0] if len(where) == 1 else where
        raise ValueError(
            f"{name} rows must sum to 1 (off by {deviation[where]:.3g} at row {row}); "
            "pass softmax probabilities, not logits or scores"
        )
    return probs


def _check_labels(labels: Any, num_examples: int, num_classes: int, what: str) -> np.ndarray:
    """`labels` as int64 `[N]` with ids in `[0, num_classes)`, `N` matching `what`."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N], got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("labels is empty")
    if labels.shape[0] != num_examples:
        raise ValueError(f"labels has {labels.shape[0]} entries but {what} has {num_examples} rows")
    if not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == bool or not np.issubdtype(labels.dtype, np.floating):
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("labels must be whole-number class ids")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels out of range: got ids in [{labels.min()}, {labels.max()}] "
            f"for {num_classes} classes"
        )
    return labels


def _check_probs_and_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated `(probs [N, C] float64, labels [N] int64)`."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1], "probs")
    return probs, labels


def _check_logits_and_labels(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated `(logits [N, C] float64, labels [N] int64)`."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, C], got shape {logits.shape}")
    if logits.size == 0:
        raise ValueError(f"logits is empty (shape {logits.shape})")
    if logits.shape[1] < 2:
        raise ValueError(f"logits needs at least 2 classes, got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contains NaN or infinite values")
    return logits, _check_labels(labels, logits.shape[0], logits.shape[1], "logits")


def _check_positive_int(value: Any, name: str) -> int:
    """`value` as a Python int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- calibration error


@dataclasses.dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of top-label confidence; bin m covers `(edges[m], edges[m + 1]]`.

    `accuracy[m]` is the fraction of bin m's examples whose arg-max class is the label,
    `confidence[m]` their mean max-probability and `count[m]` their number; empty bins have
    accuracy and confidence 0 (check `count`).
    """

    edges: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-serialisable copy (plain Python lists)."""
        return {
            "edges": self.edges.tolist(),
            "accuracy": self.accuracy.tolist(),
            "confidence": self.confidence.tolist(),
            "count": self.count.tolist(),
        }


def reliability_bins(probs: Any, labels: Any, bins: int = 15) -> ReliabilityBins:
    """Bin examples by max-probability into `bins` equal-width bins over [0, 1].

    Bins are right-closed, `(m / bins, (m + 1) / bins]` (a confidence of exactly 0 goes to the
    first bin), as in Guo et al. 2017 and `sklearn.calibration.calibration_curve`.

    Args:
      probs: `[N, C]` predicted probabilities (rows sum to 1).
      labels: `[N]` integer class ids.
      bins: number of bins `M`.
    """
    probs, labels = _check_probs_and_labels(probs, labels)
    bins = _check_positive_int(bins, "bins")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Number of inner edges strictly below the confidence = index of its right-closed bin.
    bin_ids = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bin_ids, minlength=bins)
    safe_count = np.maximum(count, 1)
    return ReliabilityBins(
        edges=edges,
        accuracy=np.bincount(bin_ids, weights=correct, minlength=bins) / safe_count,
        confidence=np.bincount(bin_ids, weights=confidence, minlength=bins) / safe_count,
        count=count,
    )


def expected_calibration_error(probs: Any, labels: Any, bins: int = 15) -> float:
    """ECE = sum over bins of (bin size / N) * |bin accuracy - bin confidence|, in [0, 1].

    0 means perfectly calibrated top-label confidence; see `reliability_bins` for the binning.
    """
    return _ece(reliability_bins(probs, labels, bins))


def _ece(table: ReliabilityBins) -> float:
    """Count-weighted mean |accuracy - confidence| over the bins of `table`."""
    weights = table.count / table.count.sum()
    return float(np.sum(weights * np.abs(table.accuracy - table.confidence)))


def plot_reliability_diagram(
    probs: Any, labels: Any, path: str | os.PathLike, bins: int = 15
) -> Path:
    """Save a reliability diagram PNG: per-bin accuracy vs confidence, plus a count histogram.

    Bars show each bin's accuracy, red outlines the gap to its mean confidence (the diagonal is
    perfect calibration); the title gives the ECE. Empty bins are left blank.
    Returns the path written (parent directories are created).
    """
    table = reliability_bins(probs, labels, bins)
    ece = _ece(table)
    centres = (table.edges[:-1] + table.edges[1:]) / 2
    width = 1.0 / len(centres)
    shown = table.count > 0

    figure, (diagram, histogram) = _new_figure(11, 5, ncols=2)
    diagram.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    diagram.bar(
        centres[shown], table.accuracy[shown], width=width, edgecolor="black", label="accuracy"
    )
    diagram.bar(
        centres[shown],
        table.confidence[shown] - table.accuracy[shown],
        bottom=table.accuracy[shown],
        width=width,
        color="red",
        alpha=0.3,
        edgecolor="red",
        label="gap to confidence",
    )
    diagram.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    diagram.set_title(f"reliability diagram (ECE {ece:.4f}, {len(centres)} bins)")
    diagram.legend(loc="upper left")
    histogram.bar(centres, table.count, width=width, edgecolor="black")
    histogram.set(xlim=(0, 1), xlabel="confidence", ylabel="examples")
    histogram.set_title("confidence histogram")
    for axes in (diagram, histogram):
        axes.grid(alpha=0.3)
    return _save_png(figure, path)


# --------------------------------------------------------------------------- temperature scaling


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under `softmax(logits / temperature)`."""
    log_probs = special.log_softmax(logits / temperature, axis=1)
    return float(-np.mean(log_probs[np.arange(labels.shape[0]), labels]))


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature T minimising the NLL of `softmax(logits / T)` on held-out (validation) data.

    Solved with scipy's bounded Brent search over log T in
    `[log MIN_TEMPERATURE, log MAX_TEMPERATURE]`, in float64 on the host. Why this rather than
    optax's L-BFGS: the problem is one-dimensional and the NLL is convex in 1/T, hence unimodal
    in log T, so a derivative-free bracketing search converges without line-search tuning; and it
    needs no jit compile and no float64 mode in JAX (float32 would limit T to ~1e-4 relative).
    The result never has a higher NLL than T = 1 (1.0 is returned if the search ends worse).
    """
    logits, labels = _check_logits_and_labels(logits, labels)
    result = optimize.minimize_scalar(
        lambda log_t: _nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-8, "maxiter": 500},
    )
    temperature = float(math.exp(result.x))
    if _nll(logits, labels, temperature) > _nll(logits, labels, 1.0):
        return 1.0
    return temperature


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities `softmax(logits / temperature)` over the last axis (float64).

    Temperature scaling divides every logit by the same T > 0, so arg-max predictions (and thus
    accuracy) are unchanged; only confidence moves (T > 1 softens, T < 1 sharpens).
    """
    if isinstance(temperature, bool) or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim < 1 or logits.size == 0:
        raise ValueError(f"logits is empty or scalar (shape {logits.shape})")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contains NaN or infinite values")
    return special.softmax(logits / float(temperature), axis=-1)


# --------------------------------------------------------------------------- uncertainty


def predictive_entropy(probs: Any) -> np.ndarray:
    """Entropy in nats of each predictive distribution, `[..., C] -> [...]` (0 log 0 = 0).

    Total uncertainty: 0 for a one-hot prediction, log C for a uniform one.
    """
    probs = _check_probs(probs, ndim=None)
    return -np.sum(special.xlogy(probs, probs), axis=-1)


def mutual_information(member_probs: Any) -> np.ndarray:
    """Mutual information between prediction and model, `[M, N, C] -> [N]` nats (BALD).

    `member_probs[m]` are the probabilities of ensemble member / MC-dropout sample m. The result,
    H(mean_m p_m) - mean_m H(p_m), is the epistemic part of the predictive entropy: 0 when all
    members agree, large when confident members disagree. Tiny negative rounding is clipped to 0.
    """
    member_probs = _check_probs(member_probs, "member_probs", ndim=3)
    total = predictive_entropy(member_probs.mean(axis=0))
    expected = predictive_entropy(member_probs).mean(axis=0)
    return np.maximum(total - expected, 0.0)


@dataclasses.dataclass(frozen=True)
class RejectionCurve:
    """Accuracy on the examples kept after rejecting the most uncertain `fractions` of them."""

    fractions: np.ndarray
    accuracy: np.ndarray
    num_kept: np.ndarray

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-serialisable copy (plain Python lists)."""
        return {
            "fractions": self.fractions.tolist(),
            "accuracy": self.accuracy.tolist(),
            "num_kept": self.num_kept.tolist(),
        }


def rejection_curve(
    probs: Any, labels: Any, fractions: Sequence[float] = DEFAULT_REJECTION_FRACTIONS
) -> RejectionCurve:
    """Accuracy after abstaining on the highest-entropy `fraction` of examples, per fraction.

    For fraction f, the `floor(f * N)` examples with the largest predictive entropy are rejected
    (ties: the lower example index is rejected first, so the result is deterministic) and
    accuracy is measured on the rest. A useful uncertainty gives a rising curve; f = 0 is plain
    accuracy. Each f must lie in [0, 1) so at least one example is kept.
    """
    probs, labels = _check_probs_and_labels(probs, labels)
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size == 0:
        raise ValueError(f"fractions must be a non-empty 1-D sequence, got shape {fractions.shape}")
    if np.any(~np.isfinite(fractions)) or np.any(fractions < 0) or np.any(fractions >= 1):
        raise ValueError(f"fractions must lie in [0, 1), got {fractions.tolist()}")
    num_examples = labels.shape[0]
    # Stable sort on -entropy: most uncertain first, equal entropies in index order.
    order = np.argsort(-predictive_entropy(probs), kind="stable")
    correct_in_order = (probs.argmax(axis=1) == labels)[order]
    # Correct predictions among the last k of the order = kept examples when N - k are rejected.
    correct_in_suffix = np.cumsum(correct_in_order[::-1])
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    num_rejected = np.minimum(np.floor(fractions * num_examples + 1e-9), num_examples - 1)
    num_kept = (num_examples - num_rejected).astype(np.int64)
    accuracy = correct_in_suffix[num_kept - 1] / num_kept
    return RejectionCurve(fractions=fractions, accuracy=accuracy, num_kept=num_kept)
