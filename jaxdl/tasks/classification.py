"""Classification tasks: images (float inputs, on-device augmentation) and token sequences.

Both train with softmax cross-entropy (optional label smoothing, class weights and focal
modulation: ``classification_loss``) and evaluate into a confusion matrix, from which accuracy,
precision/recall/F1 and the per-class report follow exactly (summed across batches and hosts,
equal to scikit-learn's). The evaluation loss is always the plain, unweighted cross-entropy, so
``val_loss`` stays comparable between runs with and without the imbalance remedies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl.metrics import classification_report, confusion_matrix, plot_confusion_matrix
from jaxdl.tasks.base import EXAMPLE_MASK, Batch, BatchSpec, Field, Forward, Task

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def classification_loss(
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    *,
    class_weights: jax.Array | Sequence[float] | None = None,
    focal_gamma: float = 0.0,
) -> jax.Array:
    """Per-example loss [B] in float32: ``sum_c q_c * w_c * (1 - p_c)**gamma * -log p_c``.

    ``q`` is the (label-smoothed) one-hot target, ``p`` the softmax of ``logits``, ``w`` the
    ``class_weights`` (1 when None) and ``gamma`` the focal exponent (Lin et al. 2017; 0 is
    cross-entropy). Without smoothing this is ``w_y * (1 - p_y)**gamma * -log p_y``; with it,
    each class's share of the soft target is weighted by that class's weight, as in torch's
    ``F.cross_entropy(weight=..., label_smoothing=...)``. Divide the sum over a batch by
    ``target_weight_sum`` (not the batch size) for torch's weighted mean.
    """
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    if class_weights is None and not focal_gamma:
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    terms = -log_probs
    if focal_gamma:
        terms = terms * _focal_modulation(log_probs, focal_gamma)
    if class_weights is not None:
        terms = terms * jnp.asarray(class_weights, jnp.float32)
    return jnp.sum(targets * terms, axis=-1)


def _focal_modulation(log_probs: jax.Array, gamma: float) -> jax.Array:
    """``(1 - p)**gamma``, with ``1 - p`` from ``expm1`` (accurate near p = 1) and floored at the
    smallest normal float so that gamma < 1 has no infinite gradient at p = 1."""
    one_minus_p = jnp.maximum(-jnp.expm1(log_probs), jnp.finfo(jnp.float32).tiny)
    return one_minus_p**gamma


def target_weight_sum(labels: jax.Array, class_weights: jax.Array | Sequence[float]) -> jax.Array:
    """``sum_i w[labels_i]`` (float32 scalar): the denominator of torch's weighted mean."""
    return jnp.sum(jnp.asarray(class_weights, jnp.float32)[labels])


def check_imbalance_options(
    class_weights: Sequence[float] | None, focal_gamma: float, num_classes: int | None
) -> tuple[np.ndarray | None, float]:
    """Validated ``(class_weights float32 [classes] or None, focal_gamma)``; a ValueError names
    the first problem (negative or non-finite gamma, weights of the wrong length or sign)."""
    gamma = float(focal_gamma)
    if not np.isfinite(gamma) or gamma < 0:
        raise ValueError(f"focal_gamma must be a finite number >= 0, got {focal_gamma}")
    if class_weights is None:
        return None, gamma
    weights = np.asarray(class_weights, np.float32)
    if weights.ndim != 1 or (num_classes is not None and len(weights) != num_classes):
        raise ValueError(
            f"class_weights must hold one weight per class ({num_classes}), got shape "
            f"{weights.shape}"
        )
    if not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError(
            f"class_weights must be finite, >= 0 and not all 0, got {weights.tolist()}"
        )
    return weights, gamma


class _Classification(Task):
    """Shared loss, statistics and reporting of the classification tasks."""

    default_monitor = ("val_accuracy", "max")

    def __init__(
        self,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 0.0,
    ):
        if class_names is not None and num_classes is None:
            num_classes = len(class_names)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.label_smoothing = float(label_smoothing)
        self.class_weights, self.focal_gamma = check_imbalance_options(
            class_weights, focal_gamma, num_classes
        )

    def loss(self, forward: Forward, batch: Batch):
        """The batch's weighted mean loss: ``sum_i loss_i / sum_i w[y_i]`` (torch's
        normalisation; the plain mean without class weights). Across data-parallel devices it is
        the global batch's (``loss_weight``); with ``train.microbatches`` > 1 the micro-batches'
        weighted means are averaged with equal weights."""
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        labels = batch["labels"]
        per_example = classification_loss(
            logits,
            labels,
            self.label_smoothing,
            class_weights=self.class_weights,
            focal_gamma=self.focal_gamma,
        )
        if self.class_weights is None:
            loss = per_example.mean()
        else:
            total = target_weight_sum(labels, self.class_weights)
            loss = jnp.where(total > 0, per_example.sum() / jnp.where(total > 0, total, 1.0), 0.0)
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    def loss_weight(self, batch: Batch) -> jax.Array:
        """Examples, or with class weights the sum of the targets' weights (torch's denominator),
        so data-parallel devices combine into the global weighted mean."""
        if self.class_weights is None:
            return super().loss_weight(batch)
        return target_weight_sum(batch["labels"], self.class_weights)

    def eval_sums(self, forward: Forward, batch: Batch) -> dict[str, jax.Array]:
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        mask = batch[EXAMPLE_MASK].astype(jnp.float32)
        labels = batch["labels"]
        predictions = jnp.argmax(logits, -1)
        return {  # unweighted cross-entropy, comparable across loss settings
            "loss_sum": jnp.sum(classification_loss(logits, labels) * mask),
            "count": jnp.sum(mask),
            "confusion": confusion_matrix(labels, predictions, logits.shape[-1], mask=mask),
        }

    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
        count = max(float(sums["count"]), 1.0)
        report = classification_report(np.asarray(sums["confusion"]), self.class_names)
        return {"loss": float(sums["loss_sum"]) / count, **report}

    def predict(self, forward: Forward, inputs: Batch) -> jax.Array:
        args, kwargs = self.model_inputs(inputs)
        return jnp.argmax(forward(*args, **kwargs), -1)

    def input_spec(self) -> BatchSpec:
        return {name: f for name, f in self.batch_spec().items() if name != "labels"}

    def serving_outputs(self, forward: Forward, inputs: Batch) -> dict[str, jax.Array]:
        """``logits`` [B, classes] and ``probabilities`` (their softmax), float32."""
        args, kwargs = self.model_inputs(inputs)
        logits = forward(*args, **kwargs).astype(jnp.float32)
        return {"logits": logits, "probabilities": jax.nn.softmax(logits, axis=-1)}

    def summary_rows(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [
            ("loss", f"{results['loss']:.4f}"),
            ("accuracy", f"{results['accuracy']:.4f}"),
            ("precision (macro)", f"{results['precision_macro']:.4f}"),
            ("recall (macro)", f"{results['recall_macro']:.4f}"),
            ("f1 (macro)", f"{results['f1_macro']:.4f}"),
        ]

    def write_plots(self, results: Mapping[str, Any], plots_dir: str, suffix: str) -> None:
        plot_confusion_matrix(
            np.asarray(results["confusion_matrix"]),
            self.class_names,
            os.path.join(plots_dir, f"confusion_matrix{suffix}.png"),
        )


class ImageClassification(_Classification):
    """Images ``inputs`` float32 [H, W, C] and ``labels`` int32 [] → class logits [B, classes].

    ``augment(key, images)`` runs on device inside the jitted train step.
    """

    name = "image_classification"

    def __init__(
        self,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        augment: Augment | None = None,
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 0.0,
    ):
        super().__init__(num_classes, class_names, label_smoothing, class_weights, focal_gamma)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape else None
        self.augment = augment

    def batch_spec(self) -> BatchSpec:
        if self.input_shape is None:
            raise ValueError("ImageClassification needs input_shape to describe its batches")
        return {"inputs": Field(np.float32, self.input_shape), "labels": Field(np.int32)}

    def model_inputs(self, batch: Batch) -> tuple[tuple, dict]:
        return (batch["inputs"],), {}

    def prepare_train_batch(self, key: jax.Array, batch: Batch) -> Batch:
        if self.augment is None:
            return batch
        return {**batch, "inputs": self.augment(key, batch["inputs"])}


class SequenceClassification(_Classification):
    """Token ids ``tokens`` int32 [T] (right-padded with ``pad_id``) and ``labels`` int32 [].

    The model is called as ``model(tokens, padding_mask=tokens != pad_id, train=...)`` so padding
    is masked out of attention and pooling (recurrent models use it to find each length).
    """

    name = "sequence_classification"

    def __init__(
        self,
        max_len: int,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        pad_id: int = 0,
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 0.0,
    ):
        super().__init__(num_classes, class_names, label_smoothing, class_weights, focal_gamma)
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)
        self.pad_id = int(pad_id)

    def batch_spec(self) -> BatchSpec:
        return {
            "tokens": Field(np.int32, (self.max_len,), pad_value=self.pad_id),
            "labels": Field(np.int32),
        }

    def model_inputs(self, batch: Batch) -> tuple[tuple, dict]:
        tokens = batch["tokens"]
        return (tokens,), {"padding_mask": tokens != self.pad_id}
