"""Resuming a workdir: bit-identical continuation between step-based checkpoints, and the
training fingerprint that refuses (or, when allowed, records) a changed config."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdl.errors import UserError
from jaxdl.experiment import build_experiment
from jaxdl.train import ConfigChangedError, Trainer
from tests.helpers import tiny_digits_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 25 steps, evaluations at 10/20/25, checkpoints every 4 steps and after each evaluation.
STEP_OVERRIDES = (
    "--config.train.num_steps=25",
    "--config.train.eval_every_steps=10",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.max_to_keep=10",
    "--config.schedule.warmup_epochs=0.2",
)


def _short(steps: int, *overrides: str):
    """The tiny digits config for ``steps`` steps (warm-up 2 steps)."""
    return tiny_digits_config(
        1, f"--config.train.num_steps={steps}", "--config.schedule.warmup_epochs=0.1", *overrides
    )


class Interrupted(Exception):
    pass


def _params(state):
    return jax.tree.map(np.asarray, jax.device_get(state.params))


def _crash_after(trainer: Trainer, steps: int) -> None:
    """Makes the trainer's step raise once ``steps`` steps have run (a kill between saves)."""
    step = trainer.train_step
    calls = {"n": 0}

    def crashing(state, batch):
        if calls["n"] == steps:
            raise Interrupted
        calls["n"] += 1
        return step(state, batch)

    trainer.train_step = crashing


# make test-slow: make test kills a run in both commit windows (test_kill_campaign.py).
@pytest.mark.slow
def test_a_run_killed_between_step_checkpoints_resumes_bit_identical(tmp_path):
    config = tiny_digits_config(3, *STEP_OVERRIDES)
    full = Trainer(build_experiment(config), str(tmp_path / "full"), quiet=True)
    full_results = full.fit()

    first = Trainer(build_experiment(config), str(tmp_path / "resumed"), quiet=True)
    _crash_after(first, 14)  # after step 14: latest checkpoint is step 12, not an eval step
    with pytest.raises(Interrupted):
        first.fit()
    first.checkpointer.wait()
    assert first.checkpointer.latest_step() == 12

    second = Trainer(build_experiment(config), str(tmp_path / "resumed"), quiet=True)
    resumed_results = second.fit()
    assert int(second.state.step) == int(full.state.step) == 25
    jax.tree.map(np.testing.assert_array_equal, _params(second.state), _params(full.state))
    assert resumed_results["loss"] == full_results["loss"]
    assert resumed_results["confusion_matrix"] == full_results["confusion_matrix"]
    assert resumed_results["best_step"] == full_results["best_step"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fingerprint") / "run"
    config = _short(6)
    Trainer(build_experiment(config), str(workdir), quiet=True).fit()
    return workdir


def _snapshot(workdir) -> dict[str, bytes]:
    """Every file under ``workdir`` with its bytes."""
    files = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, workdir)] = handle.read()
    return files


def test_a_changed_learning_rate_refuses_to_resume_and_touches_nothing(finished_run):
    before = _snapshot(finished_run)
    config = _short(12, "--config.optimizer.learning_rate=0.05")
    trainer = Trainer(build_experiment(config), str(finished_run), quiet=True)
    with pytest.raises(ConfigChangedError, match=r"optimizer\.learning_rate: 0\.1 -> 0\.05"):
        trainer.fit()
    assert _snapshot(finished_run) == before


def test_fields_that_do_not_shape_training_resume_without_the_flag(tmp_path):
    config = _short(6)
    Trainer(build_experiment(config), str(tmp_path), quiet=True).fit()
    relaxed = _short(
        6,
        "--config.logging.every_steps=2",
        "--config.train.eval_every_steps=3",
        "--config.checkpoint.max_to_keep=1",
        "--config.early_stopping.patience=4",
        "--config.train.eval_batch_size=128",
    )
    trainer = Trainer(build_experiment(relaxed), str(tmp_path), quiet=True)
    assert trainer.check_resume() == 6
    assert not (tmp_path / "config_changes.jsonl").exists()


@pytest.mark.slow  # CI time (25 s): the refusals above stay in make test
def test_allow_config_change_resumes_and_records_the_diff(tmp_path):
    config = _short(6)
    Trainer(build_experiment(config), str(tmp_path), quiet=True).fit()
    changed = _short(9, "--config.optimizer.learning_rate=0.05")
    trainer = Trainer(
        build_experiment(changed), str(tmp_path), quiet=True, allow_config_change=True
    )
    results = trainer.fit()
    assert int(trainer.state.step) == 9 and results["split"] == "test"
    records = [
        json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()
    ]
    assert len(records) == 1 and records[0]["step"] == 6
    assert records[0]["changes"]["optimizer.learning_rate"] == [0.1, 0.05]
    assert "train.total_steps" in records[0]["changes"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["optimizer"]["learning_rate"] == 0.05


def test_a_changed_state_structure_cannot_resume_even_when_allowed(finished_run):
    before = _snapshot(finished_run)
    wider = _short(6, "--config.model.width=16")
    trainer = Trainer(
        build_experiment(wider), str(finished_run), quiet=True, allow_config_change=True
    )
    with pytest.raises(UserError, match="structure changed"):
        trainer.fit()
    assert _snapshot(finished_run) == before


def test_the_command_line_reports_a_changed_config_in_one_line_with_exit_2(finished_run):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    before = _snapshot(finished_run)
    done = subprocess.run(
        [
            sys.executable, "-m", "jaxdl", "train",
            "--config", "experiments/digits_resnet.py:depth=8,epochs=1",
            "--workdir", str(finished_run),
            "--config.model.width=8", "--config.train.num_steps=6",
            "--config.checkpoint.max_to_keep=3", "--config.logging.every_steps=5",
            "--config.task.label_smoothing=0.2", "--config.schedule.warmup_epochs=0.1",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1
    assert "task.label_smoothing: 0.1 -> 0.2" in done.stderr
    assert "--allow-config-change" in done.stderr
    assert _snapshot(finished_run) == before
