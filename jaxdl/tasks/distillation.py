"""Knowledge distillation (Hinton et al. 2015): a student classifier trained from a teacher run.

``task.name = 'image_distillation'`` (or ``'sequence_distillation'``) trains the model of
``config.model`` (the student) against the temperature-softened predictions of a trained jaxdl
classifier (``task.teacher_workdir``) plus the hard labels::

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * CE(student, labels)      # label smoothing as task.label_smoothing

The T^2 factor keeps the soft term's gradients on the hard term's scale as T changes. The teacher
is the teacher run's own model (built from its saved ``config.json``) with its best checkpoint
(else its latest), read by ``jaxdl.train.warm_start`` as ``init.from_workdir`` would be. It runs in
inference mode (BatchNorm running statistics, no dropout) inside the jitted train step, on the
same augmented batch as the student, with its variables as compile-time constants: no gradient
reaches it and it is never updated. That suits research-scale teachers (the constants are part of
the compiled program); a teacher too large for that would need its variables in the train state.

Everything else (evaluation, metrics, predictions, export, serving) is the student's
classification task: a distilled workdir evaluates and deploys like any classifier, though
rebuilding its experiment (``jaxdl evaluate``/``export``) loads the teacher again, so the teacher
workdir must still exist.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl.data.records import DataSplits
from jaxdl.errors import ConfigError, UserError
from jaxdl.tasks.base import Batch, Forward, Task
from jaxdl.tasks.classification import (
    ImageClassification,
    SequenceClassification,
    classification_loss,
)
from jaxdl.tasks.registry import build_task, register_task

# Distillation task name → the classification task of its student (which builds from the data).
STUDENT_TASKS = {
    "image_distillation": "image_classification",
    "sequence_distillation": "sequence_classification",
}
TASK_SETTINGS = ("teacher_workdir", "temperature", "alpha", "label_smoothing")


def soft_target_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
    """Per-example KL(softmax(teacher / T) || softmax(student / T)) [B], float32."""
    student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Per-example ``alpha * T^2 * KL + (1 - alpha) * CE`` [B] (Hinton et al. 2015), float32."""
    soft = soft_target_kl(student_logits, teacher_logits, temperature)
    hard = classification_loss(student_logits, labels, label_smoothing)
    return combine_terms(soft, hard, temperature=temperature, alpha=alpha)


def combine_terms(
    soft: jax.Array, hard: jax.Array, *, temperature: float, alpha: float
) -> jax.Array:
    """``alpha * T^2 * soft + (1 - alpha) * hard``: T^2 keeps the soft gradients' scale."""
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


@flax.struct.dataclass
class _Variables:
    """The two variable collections ``warm_start`` restores, as a state it can ``replace``."""

    params: Any
    batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A trained classifier in inference mode: ``teacher(*model_inputs) -> logits`` (float32).

    ``variables`` are host numpy arrays, so a jitted step embeds them as constants."""

    model: nn.Module
    variables: Mapping[str, Any]
    workdir: str
    config: ml_collections.ConfigDict  # the teacher run's saved config

    def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
        logits = self.model.apply(dict(self.variables), *args, train=False, **kwargs)
        return jax.lax.stop_gradient(logits.astype(jnp.float32))


def _teacher_config(workdir: str) -> ml_collections.ConfigDict:
    """The saved config of a trained teacher run; a ConfigError naming ``task.teacher_workdir``
    when it is missing, untrained or unreadable."""
    from jaxdl.cli import trained_workdir_config

    if not workdir:
        raise ConfigError("task.teacher_workdir must name a trained jaxdl workdir")
    try:
        return trained_workdir_config(workdir)
    except UserError as error:
        raise ConfigError(f"task.teacher_workdir: {error}") from None


def _abstract_variables(
    model: nn.Module, inputs: tuple[tuple, dict], device: jax.Device
) -> _Variables:
    """The model's variables on ``inputs`` as ShapeDtypeStructs placed on ``device``."""
    args, kwargs = inputs
    key = jax.random.key(0)
    shapes = jax.eval_shape(
        lambda: model.init({"params": key, "dropout": key}, *args, train=False, **kwargs)
    )
    sharding = jax.sharding.SingleDeviceSharding(device)
    placed = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), nn.meta.unbox(shapes)
    )
    return _Variables(params=placed["params"], batch_stats=placed.get("batch_stats") or None)


def load_teacher(workdir: str, student: Task, data_info: Mapping[str, Any]) -> Teacher:
    """The teacher of ``workdir`` built for ``student``'s inputs, with its best weights.

    Its model comes from its own saved config (``num_classes`` 0 is filled from this run's data,
    as for any model); a checkpoint that does not fit that model on this run's inputs, or logits
    over another number of classes than the student's, is a ConfigError naming the workdir.
    """
    from jaxdl.experiment import model_kwargs
    from jaxdl.models import get_model
    from jaxdl.train.warm_start import warm_start

    config = _teacher_config(workdir)
    _check_teacher_task(workdir, config, student)
    try:
        model = get_model(config.model.name, **model_kwargs(config.model, dict(data_info)))
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError(
            f"task.teacher_workdir {workdir}: cannot build its model: {error}"
        ) from None
    inputs = student.init_inputs(1)
    fits = _describe_student(student)
    try:
        abstract = _abstract_variables(model, inputs, jax.local_devices()[0])
        # An absolute path: Orbax reads no tree metadata from a relative one (item_metadata None).
        source = {"from_workdir": os.path.abspath(workdir), "checkpoint": "best"}
        restored, _ = warm_start(abstract, source)
    except (ConfigError, ValueError, TypeError) as error:
        raise ConfigError(
            f"task.teacher_workdir {workdir}: its checkpoint does not fit its model on {fits}: "
            f"{error}"
        ) from None
    variables = {"params": jax.tree.map(np.asarray, restored.params)}
    if restored.batch_stats:
        variables["batch_stats"] = jax.tree.map(np.asarray, restored.batch_stats)
    teacher = Teacher(model, variables, workdir, config)
    _check_classes(teacher, student, inputs)
    return teacher


def _check_teacher_task(workdir: str, config: ml_collections.ConfigDict, student: Task) -> None:
    """Refuses a teacher trained for another kind of task than the student's (e.g. an LM)."""
    name = (config.get("task") or {}).get("name", "image_classification")
    same_kind = {student.name, *(k for k, v in STUDENT_TASKS.items() if v == student.name)}
    if name not in same_kind:
        raise ConfigError(
            f"task.teacher_workdir {workdir} trained task {name!r}; a {student.name!r} student "
            f"needs one of {sorted(same_kind)}"
        )


def _describe_student(student: Task) -> str:
    """``"this run's data (inputs (8, 8, 1), 10 classes)"``: what the teacher must fit."""
    fields = {name: field.shape for name, field in student.input_spec().items()}
    shapes = ", ".join(f"{name} {shape}" for name, shape in fields.items())
    return f"this run's data ({shapes}, {getattr(student, 'num_classes', None)} classes)"


def _check_classes(teacher: Teacher, student: Task, inputs: tuple[tuple, dict]) -> None:
    """Refuses a teacher whose logits are not over the student's classes."""
    args, kwargs = inputs
    shape = jax.eval_shape(lambda: teacher(*args, **kwargs)).shape
    expected = getattr(student, "num_classes", None)
    if len(shape) != 2 or (expected is not None and shape[-1] != expected):
        raise ConfigError(
            f"task.teacher_workdir {teacher.workdir}: the teacher's logits have shape {shape}, "
            f"the student's data has {expected} classes"
        )


class Distillation:
    """Mixin over a classification task: the training loss becomes the distillation loss.

    Built from the student's task (``student``): it takes over that task's settings (shapes,
    class names, label smoothing, augmentation), so batches, evaluation, metrics, predictions
    and export are the student task's. Train metrics add ``soft_kl`` (the KL at temperature T),
    ``hard_loss`` (the cross-entropy term) and ``teacher_agreement`` (same top-1 class).
    """

    teacher: Teacher
    temperature: float
    alpha: float

    def __init__(self, student: Task, teacher: Teacher, temperature: float, alpha: float):
        if not temperature > 0:
            raise ConfigError(f"task.temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"task.alpha must be in [0, 1], got {alpha}")
        vars(self).update(vars(student))
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def loss(self, forward: Forward, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        teacher_logits = self.teacher(*args, **kwargs)
        labels = batch["labels"]
        soft = soft_target_kl(logits, teacher_logits, self.temperature)
        hard = classification_loss(logits, labels, self.label_smoothing)
        loss = combine_terms(soft, hard, temperature=self.temperature, alpha=self.alpha)
        predictions = jnp.argmax(logits, -1)
        return loss.mean(), {
            "accuracy": jnp.mean(predictions == labels),
            "soft_kl": soft.mean(),
            "hard_loss": hard.mean(),
            "teacher_agreement": jnp.mean(predictions == jnp.argmax(teacher_logits, -1)),
        }


class ImageDistillation(Distillation, ImageClassification):
    """Image classification trained from a teacher (``task.name = 'image_distillation'``)."""

    name = "image_distillation"


class SequenceDistillation(Distillation, SequenceClassification):
    """Sequence classification trained from a teacher (``'sequence_distillation'``)."""

    name = "sequence_distillation"


def _student_task(config: ml_collections.ConfigDict, data: DataSplits, name: str) -> Task:
    """The student's classification task, built by its own registered builder."""
    student_config = ml_collections.ConfigDict(config.to_dict())
    student_config.task.name = STUDENT_TASKS[name]
    return build_task(student_config, data)


def _build(cls: type[Distillation], task_config, data: DataSplits, config) -> Task:
    """``cls`` from ``task.teacher_workdir``, ``task.temperature`` and ``task.alpha``."""
    unknown = sorted(set(task_config) - {"name", *TASK_SETTINGS})
    if unknown:
        raise ConfigError(
            f"unknown task setting {unknown[0]!r} for {cls.name!r}; known: "
            f"{', '.join(TASK_SETTINGS)}"
        )
    student = _student_task(config, data, cls.name)
    workdir = task_config.get("teacher_workdir") or ""
    teacher = load_teacher(workdir, student, data.info)
    _warn_on_other_data(teacher, config)
    return cls(
        student,
        teacher,
        temperature=float(task_config.get("temperature", 4.0)),
        alpha=float(task_config.get("alpha", 0.9)),
    )


def _warn_on_other_data(teacher: Teacher, config: ml_collections.ConfigDict) -> None:
    """One warning when the teacher was trained on another ``data`` section (other splits or
    standardisation): its predictions on this run's inputs may then mean little."""
    from jaxdl.train.fingerprint import FINGERPRINT_IGNORED

    ignored = FINGERPRINT_IGNORED.get("data", ())

    def section(c: ml_collections.ConfigDict) -> dict:
        data = json.loads(c.to_json_best_effort()).get("data") or {}
        return {k: v for k, v in data.items() if k not in ignored}

    if section(teacher.config) != section(config):
        logging.getLogger("jaxdl").warning(
            "task.teacher_workdir %s was trained on another data section than this run's",
            teacher.workdir,
        )


@register_task("image_distillation")
def _image_distillation(task_config, data, config) -> Task:
    return _build(ImageDistillation, task_config, data, config)


@register_task("sequence_distillation")
def _sequence_distillation(task_config, data, config) -> Task:
    return _build(SequenceDistillation, task_config, data, config)
