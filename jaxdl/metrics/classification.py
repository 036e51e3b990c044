"""Classification metrics: on-device confusion matrices and host-side summaries.

The on-device half (`confusion_matrix`, `accuracy`) is pure `jnp` and jit-able, so an eval step
returns only a tiny `[num_classes, num_classes]` count matrix per batch. The host half
(`precision_recall_f1`, `classification_report`) turns the accumulated matrix into scores.

Why compute scores from the confusion matrix instead of calling scikit-learn on raw predictions:
the confusion matrix is accumulated on device across (possibly sharded, multi-host) eval batches,
so no host ever holds every prediction. Summing per-batch matrices is exact, and the scores below
reproduce `sklearn.metrics.precision_recall_fscore_support(..., labels=range(num_classes),
zero_division=0)` from that sum alone.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

AVERAGES = ("macro", "micro", "weighted", None)


def _check_same_shape(labels: jax.Array, other: jax.Array, other_name: str) -> None:
    if labels.shape != other.shape:
        raise ValueError(
            f"labels shape {labels.shape} does not match {other_name} shape {other.shape}"
        )


def confusion_matrix(
    labels: jax.Array,
    predictions: jax.Array,
    num_classes: int,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Count (true class, predicted class) pairs on device; jit-able with static `num_classes`.

    Args:
      labels: integer class ids, any shape, e.g. `[batch]` or `[batch, time]`.
      predictions: integer class ids, same shape as `labels`.
      num_classes: number of classes `C` (a Python int; static under `jax.jit`).
      mask: optional, same shape as `labels`; entries where it is zero/False (padding) are not
        counted.

    Returns:
      int32 `[C, C]` matrix; rows are the true class, columns the predicted class. Entries whose
      label or prediction lies outside `[0, C)` (e.g. a `-1` padding label) count nowhere.
      Per-batch matrices can be summed (or `psum`-ed) to get the matrix of the whole eval set.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    labels = jnp.asarray(labels)
    predictions = jnp.asarray(predictions)
    _check_same_shape(labels, predictions, "predictions")
    # One-hot rows are all zero for ids outside [0, C), which drops padding labels for free.
    true_one_hot = jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32)
    pred_one_hot = jax.nn.one_hot(predictions.reshape(-1), num_classes, dtype=jnp.float32)
    if mask is not None:
        mask = jnp.asarray(mask)
        _check_same_shape(labels, mask, "mask")
        true_one_hot = true_one_hot * (mask.reshape(-1, 1) != 0)
    # A contraction over the (possibly sharded) batch axis rather than a scatter-add: XLA turns it
    # into per-shard partial sums plus one all-reduce, and it needs no index bounds handling.
    # Float32 is exact here: 0/1 inputs (exact even in bf16 matmul passes) and per-batch counts
    # far below 2**24. Memory is O(batch * C).
    counts = jnp.einsum("nt,np->tp", true_one_hot, pred_one_hot)
    return jnp.round(counts).astype(jnp.int32)


def accuracy(
    logits_or_predictions: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Fraction of (unmasked) entries whose predicted class equals the label; jit-able.

    Args:
      logits_or_predictions: either logits `[..., C]` (arg-maxed over the last axis) or integer
        class predictions with the same shape as `labels`.
      labels: integer class ids `[...]`, e.g. `[batch]`.
      mask: optional, same shape as `labels`; entries where it is zero/False are ignored.

    Returns:
      float32 scalar in [0, 1]; 0.0 when no entry is unmasked (never NaN).
    """
    labels = jnp.asarray(labels)
    logits_or_predictions = jnp.asarray(logits_or_predictions)
    if logits_or_predictions.ndim == labels.ndim + 1:
        predictions = jnp.argmax(logits_or_predictions, axis=-1)
    else:
        predictions = logits_or_predictions
    _check_same_shape(labels, predictions, "predictions (or logits without the class axis)")
    valid = jnp.ones(labels.shape, bool) if mask is None else jnp.asarray(mask) != 0
    _check_same_shape(labels, valid, "mask")
    correct = jnp.sum((predictions == labels) & valid)
    total = jnp.sum(valid)
    return (correct / jnp.maximum(total, 1)).astype(jnp.float32)


def as_confusion_matrix(cm: Any) -> np.ndarray:
    """Check a confusion matrix (numpy/jax array or nested lists) and return it as int64 `[C, C]`.

    Raises ValueError unless it is square, non-empty and holds non-negative whole numbers.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be a non-empty square 2-D array, got {cm.shape}")
    if not np.issubdtype(cm.dtype, np.integer):
        if not np.all(np.isfinite(cm)) or np.any(cm != np.round(cm)):
            raise ValueError("confusion matrix must hold whole-number counts")
        cm = cm.astype(np.int64)
    if np.any(cm < 0):
        raise ValueError("confusion matrix must not contain negative counts")
    return cm.astype(np.int64)


def _divide_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise division returning 0 where the denominator is 0 (sklearn zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, numerator / safe)


def precision_recall_f1(
    cm: Any, average: str | None = "macro"
) -> tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]:
    """Precision, recall and F1 from a confusion matrix, matching scikit-learn.

    Equals `sklearn.metrics.precision_recall_fscore_support(y_true, y_pred,
    labels=range(C), average=average, zero_division=0)[:3]`: every one of the `C` classes counts in
    macro averages, including classes never present and never predicted (they score 0).

    Args:
      cm: `[C, C]` counts, rows = true class, columns = predicted class.
      average: 'macro' (unweighted class mean), 'micro' (global counts), 'weighted' (class mean
        weighted by support), or None for per-class scores.

    Returns:
      `(precision, recall, f1)`: float64 arrays `[C]` when `average` is None, else Python floats.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    cm = as_confusion_matrix(cm)
    true_positives = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    if average == "micro":
        true_positives, predicted, support = true_positives.sum(), predicted.sum(), support.sum()
    precision = _divide_or_zero(true_positives, predicted)
    recall = _divide_or_zero(true_positives, support)
    # sklearn's F-score form 2tp / (2tp + fp + fn) (not 2PR / (P + R)); 0 when its denominator is.
    f1 = _divide_or_zero(2 * true_positives, predicted + support)
    if average is None:
        return precision, recall, f1
    if average == "micro":
        return float(precision), float(recall), float(f1)
    weights = support if average == "weighted" else np.ones_like(support)
    if weights.sum() == 0:
        return 0.0, 0.0, 0.0
    return tuple(float(np.average(score, weights=weights)) for score in (precision, recall, f1))


def classification_report(cm: Any, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON-serialisable summary of a confusion matrix (plain Python floats/ints only).

    Args:
      cm: `[C, C]` counts, rows = true class, columns = predicted class.
      class_names: `C` unique names; defaults to "0" .. "C-1".

    Returns:
      dict with 'accuracy'; 'precision_<avg>', 'recall_<avg>', 'f1_<avg>' for avg in macro,
      micro, weighted; 'per_class' (name -> {'precision', 'recall', 'f1', 'support'}); and
      'confusion_matrix' (list of lists of ints).
    """
    cm = as_confusion_matrix(cm)
    num_classes = cm.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"got {len(class_names)} class_names for a {num_classes}-class confusion matrix"
        )
    if len(set(class_names)) != num_classes:
        raise ValueError("class_names must be unique")

    report: dict[str, Any] = {
        "accuracy": float(_divide_or_zero(np.trace(cm), cm.sum())),
    }
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1 = precision_recall_f1(cm, average)
        report[f"precision_{average}"] = precision
        report[f"recall_{average}"] = recall
        report[f"f1_{average}"] = f1
    precision, recall, f1 = precision_recall_f1(cm, None)
    support = cm.sum(axis=1)
    report["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    report["confusion_matrix"] = cm.tolist()
    return report
