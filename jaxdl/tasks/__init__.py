"""Tasks: the seam between data, model and the training loop (see ``jaxdl.tasks.base``).

``build_task(config, info)`` picks the task named by ``config.task.name`` and fills what it needs
from the data (class names, vocabulary, sequence length, unigram counts). A new task subclasses
``Task`` and registers a builder with ``register_task``; the step and loop need no change.
"""

import jaxdl.tasks.distillation  # noqa: F401  (registers the distillation tasks)
from jaxdl.tasks.base import EXAMPLE_MASK, BatchSpec, Field, Task, masked_mean
from jaxdl.tasks.classification import (
    ImageClassification,
    SequenceClassification,
    classification_loss,
)
from jaxdl.tasks.language_modeling import LanguageModeling, unigram_log_probs
from jaxdl.tasks.masked_lm import MaskedLanguageModeling
from jaxdl.tasks.registry import available_tasks, build_task, register_task

__all__ = [
    "EXAMPLE_MASK",
    "BatchSpec",
    "Field",
    "ImageClassification",
    "LanguageModeling",
    "MaskedLanguageModeling",
    "SequenceClassification",
    "Task",
    "available_tasks",
    "build_task",
    "classification_loss",
    "masked_mean",
    "register_task",
    "unigram_log_probs",
]
