"""Optimisers and learning-rate schedules built from config sections.

Log the learning rate by calling the schedule at the trainer's step: ``schedule(step)``.
"""

from jaxdl.optim.optimizers import build_optimizer
from jaxdl.optim.schedules import (
    build_schedule,
    constant,
    cosine_annealing,
    cosine_warm_restarts,
    exponential_decay,
    step_decay,
    with_linear_warmup,
)

__all__ = [
    "build_optimizer",
    "build_schedule",
    "constant",
    "cosine_annealing",
    "cosine_warm_restarts",
    "exponential_decay",
    "step_decay",
    "with_linear_warmup",
]
