"""PNG plots of training runs: learning curves and confusion-matrix heatmaps.

Figures are built with matplotlib's object-oriented API (`Figure` + the Agg canvas) instead of
`pyplot`: they are never registered with pyplot's figure manager, so no window can open, the
process-wide backend is left alone, and nothing stays alive after the function returns (the
figure is explicitly cleared and dropped, which is what closing a pyplot figure amounts to).
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from jaxdl.metrics.classification import as_confusion_matrix

# Above this many classes per-cell numbers are unreadable, so the heatmap is left unannotated.
MAX_ANNOTATED_CLASSES = 40


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    """A pyplot-free figure on the Agg canvas, with `ncols` axes side by side."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols)


def _save_png(figure: Figure, path: str | os.PathLike) -> Path:
    """Write `figure` as PNG to `path` (creating parent directories) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, format="png", dpi=100)
    finally:
        figure.clear()
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the records that have `key`; epoch defaults to the 1-based index."""
    epochs, values = [], []
    for index, record in enumerate(history, start=1):
        if record.get(key) is not None:
            epochs.append(float(record.get("epoch", index)))
            values.append(float(record[key]))
    return epochs, values


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Save a two-panel PNG (loss, accuracy) with train and val curves over epochs.

    Args:
      history: one record per epoch, e.g. `{'epoch': 1, 'train_loss': ..., 'train_accuracy': ...,
        'val_loss': ..., 'val_accuracy': ...}`. Any key may be missing from some or all records
        (e.g. no validation); missing points are skipped and an empty panel says "no data".
      path: output PNG file; parent directories are created.

    Returns:
      The path written.
    """
    if isinstance(history, Mapping) or not isinstance(history, Sequence):
        raise TypeError(f"history must be a list of per-epoch dicts, got {type(history).__name__}")
    if not history:
        raise ValueError("history is empty: nothing to plot")
    if not all(isinstance(record, Mapping) for record in history):
        raise TypeError("every history record must be a dict")

    figure, (loss_axes, accuracy_axes) = _new_figure(11, 4, ncols=2)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        plotted = False
        for split in ("train", "val"):
            epochs, values = _series(history, f"{split}_{metric}")
            if values:
                axes.plot(epochs, values, marker="o", markersize=3, label=split)
                plotted = True
        if plotted:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(metric)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
    return _save_png(figure, path)


def plot_confusion_matrix(
    cm: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = False,
) -> Path:
    """Save an annotated confusion-matrix heatmap PNG (rows = true, columns = predicted class).

    Args:
      cm: `[C, C]` whole-number counts (numpy or jax array, or nested lists).
      class_names: `C` tick labels.
      path: output PNG file; parent directories are created.
      normalize: if True, show each row as fractions of that true class (empty rows stay 0).

    Returns:
      The path written. Cells are annotated when `C <= MAX_ANNOTATED_CLASSES`.
    """
    cm = as_confusion_matrix(cm)
    num_classes = cm.shape[0]
    if len(class_names) != num_classes:
        raise ValueError(
            f"got {len(class_names)} class_names for a {num_classes}-class confusion matrix"
        )
    if normalize:
        row_totals = cm.sum(axis=1, keepdims=True).astype(np.float64)
        cm = np.divide(cm, row_totals, out=np.zeros(cm.shape), where=row_totals != 0)

    side = float(np.clip(0.45 * num_classes + 3, 5, 30))
    figure, axes = _new_figure(side, side)
    ConfusionMatrixDisplay(cm, display_labels=[str(name) for name in class_names]).plot(
        ax=axes,
        include_values=num_classes <= MAX_ANNOTATED_CLASSES,
        values_format=".2f" if normalize else "d",
        cmap="Blues",
        xticks_rotation="vertical",
        colorbar=True,
    )
    axes.set_title("confusion matrix (row-normalised)" if normalize else "confusion matrix")
    return _save_png(figure, path)
