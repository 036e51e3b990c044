"""Classification tasks: images (float inputs, on-device augmentation) and token sequences.

Both train with softmax cross-entropy (optional label smoothing) and evaluate into a confusion
matrix, from which accuracy, precision/recall/F1 and the per-class report follow exactly
(summed across batches and hosts, equal to scikit-learn's).
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
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy [B] in float32, with optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


class _Classification(Task):
    """Shared loss, statistics and reporting of the classification tasks."""

    default_monitor = ("val_accuracy", "max")

    def __init__(
        self,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
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

    def loss(self, forward: Forward, batch: Batch):
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        labels = batch["labels"]
        loss = classification_loss(logits, labels, self.label_smoothing).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    def eval_sums(self, forward: Forward, batch: Batch) -> dict[str, jax.Array]:
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        mask = batch[EXAMPLE_MASK].astype(jnp.float32)
        labels = batch["labels"]
        predictions = jnp.argmax(logits, -1)
        return {
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
    ):
        super().__init__(num_classes, class_names, label_smoothing)
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
    ):
        super().__init__(num_classes, class_names, label_smoothing)
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
