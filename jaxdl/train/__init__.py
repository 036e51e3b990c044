"""Training: the functional train state, generic jitted sharded steps, the step loop and its
callbacks, warm starts, and the trainer that ties them to a workdir."""

from jaxdl.tasks import classification_loss
from jaxdl.train.callbacks import (
    Callback,
    Checkpointing,
    EarlyStopper,
    EarlyStopping,
    Evaluator,
    Profiler,
    TrainLogger,
)
from jaxdl.train.loop import TrainLoop
from jaxdl.train.state import (
    TrainState,
    count_params,
    create_sharded_train_state,
    init_train_state,
    sharded_state_initializer,
)
from jaxdl.train.steps import ShardedStep, eval_forward, make_eval_step, make_train_step
from jaxdl.train.trainer import ConfigChangedError, Trainer
from jaxdl.train.warm_start import warm_start

__all__ = [
    "Callback",
    "Checkpointing",
    "ConfigChangedError",
    "EarlyStopper",
    "EarlyStopping",
    "Evaluator",
    "Profiler",
    "ShardedStep",
    "TrainLogger",
    "TrainLoop",
    "TrainState",
    "Trainer",
    "classification_loss",
    "count_params",
    "create_sharded_train_state",
    "eval_forward",
    "init_train_state",
    "make_eval_step",
    "make_train_step",
    "sharded_state_initializer",
    "warm_start",
]
