"""Classification metrics (on-device confusion matrices, sklearn-equal scores) and PNG plots."""

from jaxdl.metrics.classification import (
    accuracy,
    as_confusion_matrix,
    classification_report,
    confusion_matrix,
    precision_recall_f1,
)
from jaxdl.metrics.plots import plot_confusion_matrix, plot_learning_curves

__all__ = [
    "accuracy",
    "as_confusion_matrix",
    "classification_report",
    "confusion_matrix",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "precision_recall_f1",
]
