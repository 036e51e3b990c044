"""The misclassified examples of an evaluation: a JSON list of all of them, most confident
mistakes first, and for images a PNG grid of the first ones titled with labels and confidence.

The most confident mistakes are the ones worth looking at first: label errors, ambiguous
examples and systematic confusions show up there, not among the near-ties.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdl.metrics.plots import _save_png

GALLERY_SIZE = 24
GALLERY_COLUMNS = 6


def misclassified_order(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row positions of the wrong arg-max predictions, by descending confidence (ties: lower
    position first)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    wrong = np.flatnonzero(probs.argmax(-1) != labels)
    return wrong[np.argsort(-probs[wrong].max(-1), kind="stable")]


def misclassified_examples(
    probs: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int],
    names: Sequence[str],
    texts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One entry per mistake, most confident first: the example's ``index`` in its split (rows
    of ``probs`` are examples ``indices``), true and predicted class id and name, confidence,
    and the example's text when ``texts`` (by split index) is given."""
    entries = []
    for row in misclassified_order(probs, labels):
        predicted = int(np.argmax(probs[row]))
        entry = {
            "index": int(indices[row]),
            "true": int(labels[row]),
            "true_name": names[int(labels[row])],
            "predicted": predicted,
            "predicted_name": names[predicted],
            "confidence": float(probs[row, predicted]),
        }
        if texts is not None:
            entry["text"] = texts[int(indices[row])]
        entries.append(entry)
    return entries


def _displayable(image: np.ndarray) -> np.ndarray:
    """``image`` [H, W, C] scaled to [0, 1] by its own range (undoes any per-dataset
    standardisation up to contrast); one channel becomes [H, W] for a gray colormap."""
    image = np.asarray(image, np.float64)
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image[..., 0] if image.shape[-1] == 1 else image


def plot_misclassified(
    entries: Sequence[dict[str, Any]], images: Sequence[np.ndarray], path: str | os.PathLike
) -> Path:
    """A grid PNG of ``images`` ([H, W, C] each), the examples of the first ``len(images)``
    ``entries`` (``misclassified_examples`` order), each titled "true X / pred Y (p=0.97)"."""
    columns = min(GALLERY_COLUMNS, max(len(images), 1))
    rows = max(math.ceil(len(images) / columns), 1)
    figure = Figure(figsize=(2.0 * columns, 2.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, entry, image in zip(axes, entries, images, strict=False):
        ax.imshow(_displayable(image), cmap="gray", interpolation="nearest")
        ax.set_title(
            f"true {entry['true_name']} / pred {entry['predicted_name']} "
            f"(p={entry['confidence']:.2f})",
            fontsize=8,
        )
    for ax in axes:
        ax.axis("off")
    if not len(images):
        axes[0].text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
    return _save_png(figure, path)


def write_misclassified(
    probs: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int],
    names: Sequence[str],
    out_dir: str,
    split: str,
    *,
    source: Any = None,
    texts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Writes ``misclassified_{split}.json`` (every mistake, see ``misclassified_examples``)
    and, when ``source``'s records hold images (``inputs`` [H, W, C]), the gallery
    ``misclassified_{split}.png``. Returns the entries."""
    entries = misclassified_examples(probs, labels, indices, names, texts)
    os.makedirs(out_dir, exist_ok=True)
    report = {"split": split, "count": len(entries), "examples": entries}
    path = os.path.join(out_dir, f"misclassified_{split}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False)  # texts stay readable
    if source is not None and np.ndim(source[int(indices[0])].get("inputs")) == 3:
        images = [source[entry["index"]]["inputs"] for entry in entries[:GALLERY_SIZE]]
        plot_misclassified(entries, images, os.path.join(out_dir, f"misclassified_{split}.png"))
    return entries
