"""Tests for jaxdl.metrics.plots: valid PNGs written headlessly, bad input rejected."""

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from jaxdl.metrics import plot_confusion_matrix, plot_learning_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FULL_HISTORY = [
    {
        "epoch": epoch,
        "train_loss": 2.0 / epoch,
        "train_accuracy": 1 - 0.5 / epoch,
        "val_loss": 2.2 / epoch,
        "val_accuracy": 1 - 0.6 / epoch,
    }
    for epoch in range(1, 6)
]


def _assert_valid_png(path, min_bytes=5_000):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert image.std() > 0.01  # not a blank canvas


def test_learning_curves_png_is_written_in_new_parent_dirs(tmp_path):
    path = tmp_path / "nested" / "dirs" / "curves.png"
    returned = plot_learning_curves(FULL_HISTORY, path)
    assert returned == path
    _assert_valid_png(path)


def test_learning_curves_tolerate_missing_keys(tmp_path):
    train_only = [{"train_loss": 1.0 / (i + 1)} for i in range(4)]
    partial_val = [dict(record) for record in FULL_HISTORY]
    del partial_val[0]["val_loss"], partial_val[0]["val_accuracy"]
    plot_learning_curves(train_only, tmp_path / "train_only.png")
    plot_learning_curves(partial_val, tmp_path / "partial_val.png")
    _assert_valid_png(tmp_path / "train_only.png")
    _assert_valid_png(tmp_path / "partial_val.png")


def test_learning_curves_reject_empty_or_malformed_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_learning_curves([], tmp_path / "empty.png")
    with pytest.raises(TypeError, match="history"):
        plot_learning_curves({"train_loss": 1.0}, tmp_path / "dict.png")
    with pytest.raises(TypeError, match="record"):
        plot_learning_curves([1.0, 2.0], tmp_path / "floats.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_png_is_written(tmp_path, normalize):
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # last class never present
    path = tmp_path / "figs" / f"cm_{normalize}.png"
    assert plot_confusion_matrix(cm, ["cat", "dog", "bird"], path, normalize=normalize) == path
    _assert_valid_png(path)


def test_confusion_matrix_rejects_mismatched_class_names(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b"], tmp_path / "cm.png")


def test_plots_leave_no_pyplot_figures_open(tmp_path):
    plot_learning_curves(FULL_HISTORY, tmp_path / "curves.png")
    plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b"], tmp_path / "cm.png")
    assert plt.get_fignums() == []
