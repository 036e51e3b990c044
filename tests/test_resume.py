"""An interrupted run, resumed from its workdir, ends exactly as an uninterrupted one."""

import jax
import numpy as np
import pytest

from jaxdl.train import Trainer, build_experiment
from tests.helpers import tiny_digits_config


class Interrupted(Exception):
    pass


def _params(trainer):
    return jax.tree.map(np.asarray, jax.device_get(trainer.state.params))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    config = tiny_digits_config(4)
    full = Trainer(build_experiment(config), str(tmp_path / "full"), quiet=True)
    full_results = full.fit()
    full_params = _params(full)

    first = Trainer(build_experiment(config), str(tmp_path / "resumed"), quiet=True)
    original_epoch = Trainer._train_epoch

    def crash_in_epoch_3(self, epoch, iterator, writer):
        if epoch == 3:
            raise Interrupted
        return original_epoch(self, epoch, iterator, writer)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_epoch_3)
    with pytest.raises(Interrupted):
        first.fit()
    first.checkpointer.wait()
    assert first.checkpointer.latest_step() == 2 * first.exp.steps_per_epoch
    monkeypatch.setattr(Trainer, "_train_epoch", original_epoch)

    second = Trainer(build_experiment(config), str(tmp_path / "resumed"), quiet=True)
    resumed_results = second.fit()

    assert int(second.state.step) == int(full.state.step)
    jax.tree.map(np.testing.assert_array_equal, _params(second), full_params)
    assert resumed_results["loss"] == full_results["loss"]
    assert resumed_results["confusion_matrix"] == full_results["confusion_matrix"]
