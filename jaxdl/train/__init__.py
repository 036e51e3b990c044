"""Training: the functional train state, jitted sharded steps, callbacks and the loop."""

from jaxdl.train.callbacks import EarlyStopping
from jaxdl.train.experiment import Experiment, Splits, build_experiment, load_splits
from jaxdl.train.state import TrainState, count_params, create_sharded_train_state
from jaxdl.train.steps import (
    ShardedStep,
    classification_loss,
    make_eval_step,
    make_train_step,
)
from jaxdl.train.trainer import Trainer

__all__ = [
    "EarlyStopping",
    "Experiment",
    "ShardedStep",
    "Splits",
    "TrainState",
    "Trainer",
    "build_experiment",
    "classification_loss",
    "count_params",
    "create_sharded_train_state",
    "load_splits",
    "make_eval_step",
    "make_train_step",
]
