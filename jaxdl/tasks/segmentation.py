"""Semantic segmentation: images ``inputs`` [H, W, C] and per-pixel class ``labels`` [H, W].

Training batches may be augmented on device with one random geometric transform per example,
applied alike to image and mask (``jaxdl.data.segmentation.random_joint_transform``): rotation
(``rotate_degrees``), scale (``scale_range``), a random ``crop`` window resized back to the full
size, an integer shift (``max_shift``) and a horizontal flip (``flip_left_right``). Images are
resampled bilinearly (``interpolation='nearest'``: like the masks), masks by the nearest pixel
(labels are never interpolated); pixels brought
in from outside the image take ``fill`` (the standardised value of a black pixel) in the image and,
in the mask, ``ignore_index`` when set (as torchvision's and mmsegmentation's pipelines do), else
class 0, the background — the bundled scenes' own convention for "no object here".

``ignore_index`` (``task.ignore_index``; None: every pixel counts; Pascal VOC marks object
borders 255) is a label outside ``[0, num_classes)`` whose pixels count nowhere: not in the
cross-entropy (the mean over the other pixels, as ``torch.nn.functional.cross_entropy(...,
ignore_index=...)``; 0 for a batch with none), the soft Dice loss, the confusion matrix or any
metric. Image sources decode masks holding it when ``data.options.ignore_index`` says so.

Trains with per-pixel cross-entropy plus, with ``dice_weight`` > 0, the soft Dice loss
(``1 - mean_c dice_c`` over the batch, Milletari et al. 2016). Evaluation sums a pixel confusion
matrix over the split (exact across batches and hosts), from which pixel accuracy, per-class IoU
``tp / (tp + fp + fn)``, mIoU and Dice ``2 tp / (2 tp + fp + fn)`` follow; classes absent from both
labels and predictions are left out of the means (their IoU is NaN in the per-class report).
Plots: per-class IoU bars after each evaluation, and ``plot_mask_overlays`` for predicted masks
(``predict_segmentation``, what ``jaxdl predict`` runs on a segmentation workdir; training draws
the first test examples' overlays too, ``plots/mask_overlays.png``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdl.data.records import RecordError
from jaxdl.data.segmentation import INTERPOLATIONS, joint_shift_flip, random_joint_transform
from jaxdl.metrics import confusion_matrix
from jaxdl.metrics.plots import _save_png
from jaxdl.tasks.base import EXAMPLE_MASK, Batch, BatchSpec, Field, Forward, Task


def soft_dice_loss(
    logits: jax.Array, labels: jax.Array, eps: float = 1.0, valid: jax.Array | None = None
) -> jax.Array:
    """``1 - mean_c (2 sum p_c y_c + eps) / (sum p_c + sum y_c + eps)`` over a batch's pixels
    (float32 scalar); ``logits`` [..., C], ``labels`` int [...]; pixels where ``valid`` [...] is
    False (ignored labels) are left out of every sum."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if valid is not None:
        weight = valid.astype(jnp.float32)[..., None]
        probs, targets = probs * weight, targets * weight
    axes = tuple(range(probs.ndim - 1))
    overlap = jnp.sum(probs * targets, axis=axes)
    total = jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes)
    return 1.0 - jnp.mean((2.0 * overlap + eps) / (total + eps))


# How many of a split's first examples the end-of-training mask overlay plot shows.
OVERLAY_EXAMPLES = 6


def check_ignore_index(ignore_index: Any, num_classes: int) -> int | None:
    """``ignore_index`` as an int (or None), or a one-line ValueError: it must be a whole number
    outside the class ids ``[0, num_classes)``."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int | np.integer):
        raise ValueError(
            f"ignore_index must be a whole number outside [0, {num_classes}) or None, got "
            f"{ignore_index!r}"
        )
    if 0 <= int(ignore_index) < num_classes:
        raise ValueError(
            f"ignore_index {int(ignore_index)} is a class id (classes are 0..{num_classes - 1}); "
            "pick a label outside them, e.g. 255, or None"
        )
    return int(ignore_index)


def segmentation_metrics(
    confusion: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU and Dice, mIoU and mean Dice from a [C, C] confusion matrix
    (rows true, columns predicted)."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        dice = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    names = list(class_names) if class_names else [str(c) for c in range(len(tp))]
    return {
        "pixel_accuracy": float(tp.sum() / max(confusion.sum(), 1.0)),
        "miou": float(np.nanmean(iou)) if present.any() else 0.0,
        "mean_dice": float(np.nanmean(dice)) if present.any() else 0.0,
        "per_class_iou": {n: float(v) for n, v in zip(names, iou, strict=True)},
        "per_class_dice": {n: float(v) for n, v in zip(names, dice, strict=True)},
        "confusion_matrix": confusion.astype(np.int64).tolist(),
    }


class SemanticSegmentation(Task):
    """Per-pixel classification; the model maps [B, H, W, C] to logits [B, H, W, classes]."""

    name = "segmentation"
    default_monitor = ("val_miou", "max")

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        dice_weight: float = 0.0,
        max_shift: int = 0,
        flip_left_right: bool = False,
        fill: float | Sequence[float] = 0.0,
        rotate_degrees: float = 0.0,
        scale_range: Sequence[float] = (1.0, 1.0),
        crop: int = 0,
        interpolation: str = "bilinear",
        ignore_index: int | None = None,
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.ignore_index = check_ignore_index(ignore_index, num_classes)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be [H, W, C], got {tuple(input_shape)}")
        if not np.isfinite(dice_weight) or dice_weight < 0:
            raise ValueError(f"dice_weight must be a finite number >= 0, got {dice_weight}")
        if max_shift < 0 or max_shift >= min(input_shape[:2]):
            raise ValueError(f"max_shift must be in [0, image size), got {max_shift}")
        if not np.isfinite(rotate_degrees) or not 0 <= rotate_degrees <= 180:
            raise ValueError(f"rotate_degrees must be in [0, 180], got {rotate_degrees}")
        try:
            scale_range = tuple(float(v) for v in np.ravel(np.asarray(scale_range, float)))
        except (TypeError, ValueError):
            raise ValueError(
                f"scale_range must be two numbers (low, high), got {scale_range!r}"
            ) from None
        if (
            len(scale_range) != 2
            or not np.all(np.isfinite(scale_range))
            or not 0 < scale_range[0] <= scale_range[1]
        ):
            raise ValueError(
                f"scale_range must be two numbers (low, high) with 0 < low <= high, got "
                f"{scale_range}"
            )
        if (
            not isinstance(crop, int | np.integer)
            or isinstance(crop, bool)
            or not 0 <= crop <= min(input_shape[:2])
        ):
            raise ValueError(
                f"crop must be a whole number of pixels in [0, {min(input_shape[:2])}] "
                f"(0: off), got {crop}"
            )
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        self.interpolation = interpolation
        self.rotate_degrees, self.scale_range = float(rotate_degrees), scale_range
        self.crop = 0 if int(crop) == min(input_shape[:2]) == max(input_shape[:2]) else int(crop)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.dice_weight = float(dice_weight)
        self.max_shift, self.flip_left_right = int(max_shift), bool(flip_left_right)
        self.fill = np.asarray(fill, np.float32)
        self._overlays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def batch_spec(self) -> BatchSpec:
        return {
            "inputs": Field(np.float32, self.input_shape),
            "labels": Field(np.int32, self.input_shape[:2]),
        }

    def model_inputs(self, batch: Batch) -> tuple[tuple, dict]:
        return (batch["inputs"],), {}

    @property
    def mask_fill(self) -> int:
        """The label of mask pixels that augmentation brings in from outside the image."""
        return 0 if self.ignore_index is None else self.ignore_index

    def valid_pixels(self, labels: jax.Array) -> jax.Array | None:
        """Bool [..] of the pixels that count (None: all of them)."""
        return None if self.ignore_index is None else labels != self.ignore_index

    def pixel_cross_entropy(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Float32 cross-entropy per pixel [...]; 0 at ignored pixels."""
        valid = self.valid_pixels(labels)
        if valid is not None:
            labels = jnp.where(valid, labels, 0)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return loss if valid is None else jnp.where(valid, loss, 0.0)

    def prepare_train_batch(self, key: jax.Array, batch: Batch) -> Batch:
        """Joint image + mask augmentation on device: shift and flip alone keep the exact pad-and-
        crop of ``joint_shift_flip``; rotation, scale or crop resample both in one warp."""
        if self.rotate_degrees or self.scale_range != (1.0, 1.0) or self.crop:
            images, masks = random_joint_transform(
                key,
                batch["inputs"],
                batch["labels"],
                rotate_degrees=self.rotate_degrees,
                scale_range=self.scale_range,
                crop=self.crop,
                max_shift=self.max_shift,
                flip_left_right=self.flip_left_right,
                fill=self.fill,
                mask_fill=self.mask_fill,
                interpolation=self.interpolation,
            )
            return {**batch, "inputs": images, "labels": masks}
        if not (self.max_shift or self.flip_left_right):
            return batch
        images, masks = joint_shift_flip(
            key,
            batch["inputs"],
            batch["labels"],
            self.max_shift,
            self.flip_left_right,
            self.fill,
            mask_fill=self.mask_fill,
        )
        return {**batch, "inputs": images, "labels": masks}

    def loss(self, forward: Forward, batch: Batch):
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        labels = batch["labels"]
        valid = self.valid_pixels(labels)
        correct = jnp.argmax(logits, -1) == labels
        if valid is None:
            loss = self.pixel_cross_entropy(logits, labels).mean()
            accuracy = jnp.mean(correct)
        else:  # the mean over the pixels that count; 0, not NaN, when none does
            counted = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
            loss = jnp.sum(self.pixel_cross_entropy(logits, labels)) / counted
            accuracy = jnp.sum(correct & valid) / counted
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, labels, valid=valid)
        return loss, {"pixel_accuracy": accuracy}

    def eval_sums(self, forward: Forward, batch: Batch) -> dict[str, jax.Array]:
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        labels = batch["labels"]
        mask = batch[EXAMPLE_MASK].astype(jnp.float32)
        pixel_mask = jnp.broadcast_to(mask[:, None, None], labels.shape)
        valid = self.valid_pixels(labels)
        if valid is not None:
            pixel_mask = pixel_mask * valid
        predictions = jnp.argmax(logits, -1)
        return {  # plain cross-entropy over the pixels that count: comparable across dice weights
            "loss_sum": jnp.sum(self.pixel_cross_entropy(logits, labels) * pixel_mask),
            "pixels": jnp.sum(pixel_mask),
            "count": jnp.sum(mask),
            "confusion": confusion_matrix(labels, predictions, logits.shape[-1], mask=pixel_mask),
        }

    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
        pixels = max(float(sums["pixels"]), 1.0)
        metrics = segmentation_metrics(np.asarray(sums["confusion"]), self.class_names)
        return {"loss": float(sums["loss_sum"]) / pixels, **metrics}

    def predict(self, forward: Forward, inputs: Batch) -> jax.Array:
        args, kwargs = self.model_inputs(inputs)
        return jnp.argmax(forward(*args, **kwargs), -1)

    def input_spec(self) -> BatchSpec:
        return {"inputs": self.batch_spec()["inputs"]}

    def serving_outputs(self, forward: Forward, inputs: Batch) -> dict[str, jax.Array]:
        """``logits`` [B, H, W, classes] (float32) and the per-pixel class ``mask`` [B, H, W]."""
        args, kwargs = self.model_inputs(inputs)
        logits = forward(*args, **kwargs).astype(jnp.float32)
        return {"logits": logits, "mask": jnp.argmax(logits, -1)}

    def summary_rows(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [
            ("loss", f"{results['loss']:.4f}"),
            ("pixel accuracy", f"{results['pixel_accuracy']:.4f}"),
            ("mIoU", f"{results['miou']:.4f}"),
            ("mean Dice", f"{results['mean_dice']:.4f}"),
        ]

    def report_outputs(self, forward: Forward, inputs: Batch) -> jax.Array:
        """What ``report`` draws: the predicted masks [B, H, W]."""
        return self.predict(forward, inputs)

    def report(
        self,
        outputs: Callable[[Batch], np.ndarray],
        records: Any,
        batch_size: int,
        path: str,
    ) -> dict[str, Any]:
        """The trainer's end-of-run hook (after training and ``jaxdl evaluate``): predicts the
        first ``OVERLAY_EXAMPLES`` readable examples of the split (one batch, padded to
        ``batch_size`` for one compiled shape) and keeps them for ``write_plots``, which draws
        them with ``plot_mask_overlays`` as ``jaxdl predict`` does. Adds nothing to the results
        and writes nothing at ``path`` (the per-example report's file)."""
        del path
        shown = []
        for index in range(len(records)):
            if len(shown) == OVERLAY_EXAMPLES:
                break
            try:
                shown.append(records[index])
            except RecordError:  # skipped or fatal per data.on_error when the trainer read it
                continue
        self._overlays = None
        if not shown:
            return {}
        batch = {name: np.stack([np.asarray(r[name]) for r in shown]) for name in shown[0]}
        count = len(shown)
        if count < batch_size:
            batch = {
                name: np.concatenate([value, np.repeat(value[-1:], batch_size - count, 0)])
                for name, value in batch.items()
            }
        predictions = np.asarray(outputs(batch))[:count]
        self._overlays = (batch["inputs"][:count], batch["labels"][:count], predictions)
        return {}

    def write_plots(self, results: Mapping[str, Any], plots_dir: str, suffix: str) -> None:
        """``per_class_iou{suffix}.png`` and, after ``report``, ``mask_overlays{suffix}.png``."""
        plot_per_class_iou(
            results["per_class_iou"], os.path.join(plots_dir, f"per_class_iou{suffix}.png")
        )
        overlays, self._overlays = self._overlays, None
        if overlays is not None:
            plot_mask_overlays(
                *overlays,
                self.num_classes,
                os.path.join(plots_dir, f"mask_overlays{suffix}.png"),
            )


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    """A pyplot-free figure on the Agg canvas (safe in threads and without a display)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def plot_per_class_iou(per_class_iou: Mapping[str, float], path: str | os.PathLike) -> Path:
    """A bar chart PNG of each class's IoU (absent classes, NaN, drawn empty)."""
    names, values = list(per_class_iou), np.nan_to_num(list(per_class_iou.values()))
    figure, (axes,) = _figure(max(4.0, 0.5 * len(names) + 2), 3.5)
    axes.bar(range(len(names)), values)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("IoU")
    return _save_png(figure, path)


def plot_mask_overlays(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    num_classes: int,
    path: str | os.PathLike,
    alpha: float = 0.5,
) -> Path:
    """A PNG with one row per image [N, H, W, C]: the image, the true mask and the predicted mask
    ([N, H, W] class ids) overlaid on it (class 0, the background, left transparent; labels
    outside ``[0, num_classes)``, ignored pixels, white)."""
    colors = np.concatenate([[[0, 0, 0, 0]], _class_colors(num_classes - 1), [[1, 1, 1, 1]]])
    count = len(images)
    figure = Figure(figsize=(7.5, 2.5 * count), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(count, 3, squeeze=False)
    for row, (image, label, prediction) in enumerate(zip(images, labels, predictions, strict=True)):
        gray = np.asarray(image, np.float32).mean(-1)
        for column, (title, mask) in enumerate(
            (("image", None), ("true mask", label), ("predicted", prediction))
        ):
            axes = grid[row, column]
            axes.imshow(gray, cmap="gray")
            if mask is not None:
                mask = np.asarray(mask)
                outside = (mask < 0) | (mask >= num_classes)
                overlay = colors[np.where(outside, num_classes, mask)]
                overlay[..., 3] *= alpha
                axes.imshow(overlay, interpolation="nearest")
            axes.set_title(title)
            axes.axis("off")
    return _save_png(figure, path)


def _class_colors(count: int) -> np.ndarray:
    """``count`` distinct opaque RGBA colours (matplotlib's tab20)."""
    return colormaps["tab20"](np.arange(count) % 20)


def pixel_confusion(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """The int64 [C, C] confusion matrix (rows true) of one mask's pixels, those labelled
    ``ignore_index`` left out."""
    labels, predictions = np.ravel(labels).astype(np.int64), np.ravel(predictions)
    if ignore_index is not None:
        kept = labels != ignore_index
        labels, predictions = labels[kept], predictions[kept]
    return np.bincount(
        labels * num_classes + predictions, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)


def predict_segmentation(
    inference: Any,
    source: Any,
    out_dir: str | os.PathLike,
    split: str,
    class_names: Sequence[str] | None,
    batch_size: int = 64,
    overlays: int = OVERLAY_EXAMPLES,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """``jaxdl predict`` for a segmentation run: the predicted masks of ``source`` (an
    ``InferenceFunction`` with a ``mask`` output) scored against its labels — metrics in
    ``out_dir/segmentation_{split}.json``, per-class IoU bars in ``per_class_iou_{split}.png`` and
    the first ``overlays`` readable examples' true and predicted masks over their images in
    ``mask_overlays_{split}.png``. Unreadable records are counted (``skipped``), not scored;
    pixels labelled ``ignore_index`` neither."""
    from jaxdl.export.predictions import infer_records

    if "mask" not in inference.output_names:
        raise ValueError("predict_segmentation needs a model with a 'mask' output")
    num_classes = len(class_names) if class_names else None
    confusion, shown, skipped, scored = None, [], 0, 0
    for row in infer_records(inference, source, batch_size):
        if "error" in row:
            skipped += 1
            continue
        prediction = np.asarray(row["outputs"]["mask"])
        labels = np.asarray(row["record"]["labels"])
        if num_classes is None:
            num_classes = int(np.asarray(row["outputs"]["logits"]).shape[-1])
        counts = pixel_confusion(labels, prediction, num_classes, ignore_index)
        confusion = counts if confusion is None else confusion + counts
        scored += 1
        if len(shown) < overlays:
            shown.append((np.asarray(row["record"]["inputs"]), labels, prediction))
    if confusion is None:
        raise ValueError(f"no readable example in the {split} split")
    os.makedirs(out_dir, exist_ok=True)
    metrics = {
        "split": split,
        "examples": scored,
        "skipped": skipped,
        **segmentation_metrics(confusion, class_names),
    }
    Path(out_dir, f"segmentation_{split}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_per_class_iou(
        metrics["per_class_iou"], os.path.join(out_dir, f"per_class_iou_{split}.png")
    )
    images, labels, predictions = (np.stack(column) for column in zip(*shown, strict=True))
    plot_mask_overlays(
        images,
        labels,
        predictions,
        num_classes,
        os.path.join(out_dir, f"mask_overlays_{split}.png"),
    )
    return metrics
