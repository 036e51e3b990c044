"""The data report's PNGs: class counts per split, and image galleries (suspected label errors,
near-duplicate pairs). Built on matplotlib's Agg canvas without pyplot, like
``jaxdl.metrics.plots``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdl.metrics.plots import _save_png


def plot_class_counts(
    counts: Mapping[str, Sequence[int]], class_names: Sequence[str], path: str | Path
) -> Path:
    """Grouped bars: one group per class, one bar per split."""
    width = 0.8 / max(len(counts), 1)
    figure = Figure(figsize=(max(6.0, 0.5 * len(class_names) + 2), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    positions = np.arange(len(class_names))
    for k, (split, values) in enumerate(counts.items()):
        axes.bar(positions + (k - (len(counts) - 1) / 2) * width, values, width, label=split)
    axes.set_xticks(
        positions, [str(n) for n in class_names], rotation=45 if len(positions) > 10 else 0
    )
    axes.set_xlabel("class")
    axes.set_ylabel("examples")
    axes.set_title("class counts per split")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save_png(figure, path)


def _displayable(pixels: np.ndarray) -> np.ndarray:
    """An image scaled into [0, 1] for display (grayscale as 2-D)."""
    image = np.asarray(pixels, np.float32)
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def plot_gallery(
    images: Sequence[np.ndarray], captions: Sequence[str], path: str | Path, title: str,
    columns: int = 6,
) -> Path:  # fmt: skip
    """Images in a grid with one caption each."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2.0 * columns, 2.2 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions, strict=False):
        ax.imshow(_displayable(image), cmap="gray", interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    figure.suptitle(title)
    return _save_png(figure, path)
