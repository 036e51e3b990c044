"""The task interface: what differs between image classification, text classification, language
modelling (and later CTC, masked-LM, distillation), so that one step and one loop train them all.

A task owns the batch it consumes (``batch_spec``), how the model is called on it, the training
loss,
the evaluation statistics (a pytree of *sums*, so batches and hosts add up exactly), how those sums
become metrics, ``results.json`` fields and plots, and ``predict`` for evaluate/export/serving.

``forward`` below is the model's ``apply`` with the variables, ``train`` flag and RNGs already
bound by the step: ``forward(*args, **kwargs) -> outputs``. Tasks never see parameters, mutable
collections or
shardings, which live in the generic step.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import DataError

Batch = Mapping[str, jax.Array]
Forward = Callable[..., Any]

# Every evaluation batch carries this field: 1.0 for real examples, 0.0 for padding examples.
EXAMPLE_MASK = "mask"


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of an example: dtype, per-example shape and the value used to pad with.

    ``length_field`` names the field holding a variable-length field's valid length (its first
    axis): with ``data.length_buckets`` the train loader cuts it to the batch's bucket bound."""

    dtype: Any
    shape: tuple[int, ...] = ()
    pad_value: int | float = 0
    length_field: str | None = None

    def abstract(self, batch_size: int) -> jax.ShapeDtypeStruct:
        """The field of a ``batch_size`` batch as a ShapeDtypeStruct."""
        return jax.ShapeDtypeStruct((batch_size, *self.shape), jnp.dtype(self.dtype))


BatchSpec = dict[str, Field]


class Task(abc.ABC):
    """Base class of tasks; subclasses set ``name`` and implement the abstract methods."""

    name: str = "task"
    # The unit ``throughput`` counts (examples/s, tokens/s) and the metric early stopping watches
    # when the config names none.
    throughput_unit: str = "examples"
    default_monitor: tuple[str, str] = ("val_loss", "min")

    @abc.abstractmethod
    def batch_spec(self) -> BatchSpec:
        """Per-example fields the loader must deliver (names, dtypes, shapes, padding values)."""

    @abc.abstractmethod
    def model_inputs(self, batch: Batch) -> tuple[tuple, dict]:
        """``(args, kwargs)`` the model is called with for ``batch`` (besides ``train``)."""

    @abc.abstractmethod
    def loss(self, forward: Forward, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss (float32) and auxiliary scalar metrics (batch means)."""

    @abc.abstractmethod
    def eval_sums(self, forward: Forward, batch: Batch) -> dict[str, jax.Array]:
        """Sums over the real examples of a padded batch (``batch['mask']``); they add up
        across batches and hosts, so ``summarize`` of the total is the metric of the split."""

    @abc.abstractmethod
    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Metrics of a split from its summed statistics; scalar entries are logged, the rest
        (reports, matrices) go to ``results.json``. Always includes ``loss``."""

    @abc.abstractmethod
    def predict(self, forward: Forward, inputs: Batch) -> jax.Array:
        """Predictions for ``inputs`` (a batch without targets): class ids, token ids, ..."""

    # ------------------------------------------------------------------------------------------
    def loss_weight(self, batch: Batch) -> jax.Array:
        """What ``loss`` averages over in ``batch`` (float32 scalar): examples by default.

        Data-parallel devices weight their losses (and aux metrics) by it, so the global loss is
        the mean over the global batch's examples (or target tokens), as on one device.
        """
        return jnp.float32(jax.tree.leaves(batch)[0].shape[0])

    def prepare_train_batch(self, key: jax.Array, batch: Batch) -> Batch:
        """On-device preprocessing of a training batch (augmentation); identity by default."""
        del key
        return batch

    def throughput(self, global_batch_size: int) -> int:
        """How many ``throughput_unit`` one global training batch holds."""
        return global_batch_size

    def summary_rows(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Rows of the console table printed after training/evaluation."""
        return [("loss", f"{results['loss']:.4f}")]

    def write_plots(self, results: Mapping[str, Any], plots_dir: str, suffix: str) -> None:
        """Task-specific plots of a split's results (learning curves are drawn by the loop)."""
        del results, plots_dir, suffix

    def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """A ``batch_size`` training batch as ShapeDtypeStructs (for init and AOT compilation)."""
        return {name: field.abstract(batch_size) for name, field in self.batch_spec().items()}

    def init_inputs(self, batch_size: int = 1) -> tuple[tuple, dict]:
        """Zero-filled model inputs to initialise parameters with."""
        batch = {
            name: jnp.zeros(spec.shape, spec.dtype)
            for name, spec in self.abstract_batch(batch_size).items()
        }
        return self.model_inputs(batch)

    def input_spec(self) -> BatchSpec:
        """The fields a deployed model takes (``batch_spec`` without targets): what export,
        serving and ``predict`` feed. Tasks not deployable yet raise ``NotImplementedError``."""
        raise NotImplementedError(f"task {self.name!r} has no deployment inputs yet")

    def serving_outputs(self, forward: Forward, inputs: Batch) -> dict[str, jax.Array]:
        """Named outputs of a deployed model for ``inputs`` (an ``input_spec`` batch): what an
        exported graph and the server return. Default: the model's output as ``outputs``."""
        args, kwargs = self.model_inputs(inputs)
        return {"outputs": forward(*args, **kwargs)}

    def check_record(self, record: Mapping[str, Any], where: str) -> None:
        """Raises ``DataError`` unless ``record`` has every field of the spec with its shape
        and a dtype that converts safely (ints stay ints: token ids never become floats)."""
        for name, field in self.batch_spec().items():
            if name not in record:
                raise DataError(
                    f"{where}: task {self.name!r} needs field {name!r}, records have "
                    f"{sorted(record)}"
                )
            value = np.asarray(record[name])
            if tuple(value.shape) != tuple(field.shape):
                raise DataError(
                    f"{where}: field {name!r} has shape {tuple(value.shape)}, task {self.name!r} "
                    f"expects {tuple(field.shape)}"
                )
            target = np.dtype(field.dtype)
            if np.issubdtype(target, np.integer) and not np.issubdtype(value.dtype, np.integer):
                raise DataError(
                    f"{where}: field {name!r} must hold integers for task {self.name!r}, "
                    f"got {value.dtype}"
                )


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean of ``values`` (any shape) with ``weights`` of the same shape; 0 if empty."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
