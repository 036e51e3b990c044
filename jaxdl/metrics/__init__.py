"""Classification metrics (on-device confusion matrices, sklearn-equal scores), label-noise
estimation (confident learning) and PNG plots."""

from jaxdl.metrics.classification import (
    accuracy,
    as_confusion_matrix,
    classification_report,
    confusion_matrix,
    precision_recall_f1,
)
from jaxdl.metrics.edit_distance import error_counts, levenshtein, words_from_chars
from jaxdl.metrics.label_noise import LabelNoiseEstimate, confident_joint, estimate_label_noise
from jaxdl.metrics.plots import plot_confusion_matrix, plot_learning_curves

__all__ = [
    "LabelNoiseEstimate",
    "accuracy",
    "as_confusion_matrix",
    "classification_report",
    "confident_joint",
    "confusion_matrix",
    "error_counts",
    "estimate_label_noise",
    "levenshtein",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "precision_recall_f1",
    "words_from_chars",
]
