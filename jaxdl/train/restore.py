"""A trained workdir's state for the commands that use a run after training (predict, export,
serve, explain, prune, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxdl.checkpoint import abstract_like
from jaxdl.train.trainer import Trainer

if TYPE_CHECKING:
    from jaxdl.experiment import Experiment
    from jaxdl.train.state import TrainState


def restore_trained_state(experiment: Experiment, workdir: str) -> TrainState:
    """The best (else latest) checkpoint of ``workdir`` as a train state on the experiment's
    mesh; takes the workdir's lock while it reads, and gives it back."""
    trainer = Trainer(experiment, workdir, quiet=True)
    try:
        checkpointer, abstract = trainer.checkpointer, abstract_like(trainer.state)
        if checkpointer.best_step() is not None:
            state, _ = checkpointer.restore_best(abstract)
        else:
            state, _ = checkpointer.restore_latest(abstract)
        checkpointer.close()
    finally:
        trainer.release()
    return state
