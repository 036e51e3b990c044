"""Classification metrics (on-device confusion matrices, sklearn-equal scores), label-noise
estimation (confident learning) and PNG plots."""

from jaxdl.metrics.calibration import (
    RejectionCurve,
    ReliabilityBins,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    mutual_information,
    plot_reliability_diagram,
    predictive_entropy,
    rejection_curve,
    reliability_bins,
)
from jaxdl.metrics.classification import (
    accuracy,
    as_confusion_matrix,
    classification_report,
    confusion_matrix,
    precision_recall_f1,
)
from jaxdl.metrics.curves import (
    most_confused_pairs,
    one_vs_rest_curves,
    plot_per_class_metrics,
    plot_pr_curves,
    plot_roc_curves,
)
from jaxdl.metrics.edit_distance import error_counts, levenshtein, words_from_chars
from jaxdl.metrics.label_noise import LabelNoiseEstimate, confident_joint, estimate_label_noise
from jaxdl.metrics.plots import plot_confusion_matrix, plot_learning_curves

__all__ = [
    "LabelNoiseEstimate",
    "RejectionCurve",
    "ReliabilityBins",
    "accuracy",
    "apply_temperature",
    "as_confusion_matrix",
    "classification_report",
    "confident_joint",
    "confusion_matrix",
    "error_counts",
    "estimate_label_noise",
    "expected_calibration_error",
    "fit_temperature",
    "levenshtein",
    "most_confused_pairs",
    "mutual_information",
    "one_vs_rest_curves",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_per_class_metrics",
    "plot_pr_curves",
    "plot_reliability_diagram",
    "plot_roc_curves",
    "precision_recall_f1",
    "predictive_entropy",
    "rejection_curve",
    "reliability_bins",
    "words_from_chars",
]
