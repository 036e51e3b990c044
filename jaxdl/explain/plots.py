"""PNG overlays of explanations: attribution heatmaps over images, attention-weight grids.

Drawn like ``jaxdl.metrics.plots``: matplotlib's object-oriented API on the Agg canvas, so no
window opens, pyplot's global state is untouched and nothing outlives the call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdl.metrics.plots import _new_figure, _save_png


def _displayable(image: Any) -> np.ndarray:
    """An image [H, W, C] (any range, e.g. standardised) min-max scaled to [0, 1] as [H, W, 3]
    or [H, W] (one channel; other channel counts show their mean)."""
    image = np.asarray(image, np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    if image.shape[-1] == 3:
        return image
    return image.mean(axis=-1)


def _attribution_map(attribution: Any, shape: tuple[int, int]) -> np.ndarray:
    """An attribution [H, W] or [H, W, C] (reduced by max |.| over channels) as [H, W] in
    [0, 1]: magnitudes scaled by their 99th percentile, so a few extreme pixels do not wash out
    the rest."""
    attribution = np.asarray(attribution, np.float64)
    if attribution.ndim == 3:
        attribution = np.abs(attribution).max(axis=-1)
    if attribution.shape != shape:
        raise ValueError(f"attribution shape {attribution.shape} does not match image {shape}")
    magnitude = np.abs(attribution)
    top = np.percentile(magnitude, 99)
    return np.clip(magnitude / top, 0.0, 1.0) if top > 0 else np.zeros_like(magnitude)


def plot_attribution(
    image: Any,
    attribution: Any,
    path: str | os.PathLike,
    title: str | None = None,
    alpha: float = 0.5,
) -> Path:
    """Save a two-panel PNG: the image, and the attribution's magnitude as a heatmap over it.

    ``image`` [H, W, C] (or [H, W]) in any range; ``attribution`` [H, W] or [H, W, C] (a
    saliency map, integrated gradients, an upsampled Grad-CAM map). Returns the path written.
    """
    shown = _displayable(image)
    heat = _attribution_map(attribution, shown.shape[:2])
    figure, (image_axes, overlay_axes) = _new_figure(8, 4.3, ncols=2)
    cmap = "gray" if shown.ndim == 2 else None
    for axes in (image_axes, overlay_axes):
        axes.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
    overlay = overlay_axes.imshow(heat, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    figure.colorbar(overlay, ax=overlay_axes, fraction=0.046)
    image_axes.set_title("input")
    overlay_axes.set_title("attribution")
    if title:
        figure.suptitle(title)
    return _save_png(figure, path)


def plot_attention(
    tokens: Sequence[str],
    weights: Any,
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
) -> Path:
    """Save attention weights as heatmaps (rows = queries, columns = keys, labelled with
    ``tokens``): ``weights`` [T, T] for one panel or [P, T, T] for a grid of P panels (heads or
    layers), each titled from ``titles``. Returns the path written."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim == 2:
        weights = weights[None]
    if weights.ndim != 3 or weights.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(
            f"weights must be [T, T] or [P, T, T] for {len(tokens)} tokens, got {weights.shape}"
        )
    if titles is not None and len(titles) != len(weights):
        raise ValueError(f"got {len(titles)} titles for {len(weights)} panels")
    count = len(weights)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    side = float(np.clip(0.25 * len(tokens) + 2.5, 3.5, 10))
    figure = Figure(figsize=(side * columns, side * rows), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    labels = [str(token) for token in tokens]
    for index, axes in enumerate(grid.flat):
        if index >= count:
            axes.set_visible(False)
            continue
        image = axes.imshow(weights[index], cmap="viridis", vmin=0.0, vmax=1.0)
        ticks = range(len(labels)) if len(labels) <= 48 else []
        axes.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=7)
        axes.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=7)
        axes.set_xlabel("key")
        axes.set_ylabel("query")
        if titles is not None:
            axes.set_title(titles[index])
    figure.colorbar(image, ax=grid.ravel().tolist(), fraction=0.03)
    return _save_png(figure, path)
