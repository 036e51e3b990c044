"""Sweeps: W&B sweep files parse into the trials the agent would run, the agent's command lines
are ones ``jaxdl train`` accepts, and the local runner runs, resumes and ranks trials."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from jaxdl.cli import _parser, agent_workdir
from jaxdl.config import load_config
from jaxdl.errors import ConfigError, UserError
from jaxdl.sweeps import (
    format_table,
    metric_value,
    parse_sweep,
    read_sweep,
    run_sweep,
    should_prune,
    validation_curve,
    write_report,
)

EXAMPLE = "experiments/digits_sweep.yaml"
FAKE_TRAIN = os.path.join(os.path.dirname(__file__), "data", "fake_jaxdl_train.py")


def _example_body():
    with open(EXAMPLE) as handle:
        return yaml.safe_load(handle)


def _agent_argv(spec_path, params):
    """The argv ``wandb agent`` runs for one trial: its sweep command with ${env},
    ${interpreter} and ${args} filled in by wandb's own helper (wandb_agent.Agent._command_run)."""
    with open(spec_path) as handle:
        command = yaml.safe_load(handle)["command"]
    flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    filled = {"${env}": ["/usr/bin/env"], "${interpreter}": ["python"], "${args}": flags["args"]}
    return [part for token in command for part in filled.get(token, [token])]


def test_the_example_sweep_is_a_six_trial_grid_over_the_default_experiment():
    spec = read_sweep(EXAMPLE)
    assert spec.method == "grid" and spec.metric == "best_val_accuracy"
    trials = spec.grid_trials()
    assert len(trials) == 6
    assert trials[0] == {
        "config.optimizer.learning_rate": 0.05,
        "config.model.width": 8,
        "config.train.num_epochs": 15,
    }
    assert spec.config == "experiments/digits_resnet.py:depth=8" and spec.prune_after == 3


def test_the_agents_command_line_is_one_jaxdl_train_accepts_with_every_value_applied():
    spec = read_sweep(EXAMPLE)
    params = spec.grid_trials()[3]
    argv = _agent_argv(EXAMPLE, params)
    assert argv[:4] == ["/usr/bin/env", "python", "-m", "jaxdl"]
    args, extra = _parser().parse_known_args(argv[4:])
    assert args.command == "train" and args.workdir is None  # the agent passes none
    config = load_config(args.config, extra)
    assert config.optimizer.learning_rate == params["config.optimizer.learning_rate"]
    assert config.model.width == params["config.model.width"]
    assert config.train.num_epochs == 15 and config.model.depth == 8
    # The local runner passes exactly the agent's flags.
    assert (
        spec.overrides(params)
        == create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
    )


def test_an_agent_trial_without_workdir_gets_one_per_run_id():
    environ = {"WANDB_RUN_ID": "abc123", "WANDB_SWEEP_ID": "sw9", "JAXDL_SWEEP_DIR": "/s"}
    assert agent_workdir(environ) == "/s/sw9/abc123"
    assert agent_workdir({"WANDB_RUN_ID": "r1"}) == "runs/sweeps/no-sweep/r1"
    with pytest.raises(UserError, match="train needs --workdir"):
        agent_workdir({})


def test_train_without_workdir_outside_an_agent_is_one_line_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_RUN")}
    done = subprocess.run(
        [sys.executable, "-m", "jaxdl", "train", "--config", "experiments/digits_resnet.py"],
        capture_output=True, text=True, env=env, cwd=os.getcwd(),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "jaxdl: error: train needs --workdir (outside a W&B sweep agent, which sets it)"
    )


def _spec(method="random", **extra):
    body = {
        "method": method,
        "metric": {"name": "best_val_accuracy", "goal": "maximize"},
        "parameters": {
            "config.optimizer.learning_rate": {"min": 0.01, "max": 0.3},
            "config.model.width": {"values": [8, 16]},
            "config.train.batch_size": {"min": 16, "max": 64},
            "config.optimizer.weight_decay": {
                "min": 1e-5, "max": 1e-2, "distribution": "log_uniform_values"
            },
        },
        "run_cap": 5,
        "command": ["${env}", "python", "-m", "jaxdl", "train", "--config", "x.py", "${args}"],
        **extra,
    }  # fmt: skip
    return parse_sweep(yaml.safe_dump(body))


def test_random_trials_are_seeded_and_inside_their_ranges():
    spec = _spec()
    trials = spec.random_trials(seed=3)
    assert trials == spec.random_trials(seed=3) != spec.random_trials(seed=4)
    for trial in trials:
        assert 0.01 <= trial["config.optimizer.learning_rate"] <= 0.3
        assert trial["config.model.width"] in (8, 16)
        assert isinstance(trial["config.train.batch_size"], int)
        assert 16 <= trial["config.train.batch_size"] <= 64
        assert 1e-5 <= trial["config.optimizer.weight_decay"] <= 1e-2


@pytest.mark.parametrize(
    "change,message",
    [
        ({"method": "hyperband"}, "method must be one of"),
        ({"metric": {}}, "metric.name is required"),
        ({"metric": {"name": "m", "goal": "up"}}, "metric.goal must be one of"),
        ({"parameters": {"lr": {"value": 1}}}, "must be a config path"),
        ({"parameters": {"config.a": {"values": []}}}, "empty values list"),
        ({"parameters": {"config.a": {"min": 2, "max": 1}}}, "need 0 < min < max"),
        ({"parameters": {"config.a": {"min": 0.1}}}, "needs value, values, or min and max"),
        ({"command": ["python", "-m", "jaxdl", "train"]}, "no --config EXPERIMENT"),
        ({"run_cap": 0}, "run_cap must be a positive integer"),
        ({"unknown_key": 1}, "unknown key 'unknown_key'"),
        ({"early_terminate": {"type": "hyperband", "min_iter": 0}}, "min_iter must be"),
    ],
)
def test_bad_sweep_files_are_one_clear_error(change, message):
    body = _example_body() | change
    with pytest.raises(ConfigError, match=message):
        parse_sweep(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_sweep("method: [grid")


def test_metric_values_come_from_results_json():
    results = {"best_val_accuracy": 0.9, "accuracy": 0.8, "val": {"loss": 0.3}}
    assert metric_value(results, "best_val_accuracy") == 0.9
    assert metric_value(results, "test_accuracy") == 0.8
    assert metric_value(results, "val_loss") == 0.3
    with pytest.raises(ConfigError, match="'val_f1' is not in results.json"):
        metric_value(results, "val_f1")


def test_median_pruning_stops_a_trial_worse_than_the_finished_median(tmp_path):
    rows = [
        {"step": 5, "split": "val", "accuracy": 0.4},
        {"step": 10, "split": "val", "accuracy": 0.3},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{partial")
    curve = validation_curve(str(tmp_path), "best_val_accuracy", "maximize")
    assert curve == {5: 0.4, 10: 0.4}  # best so far; a half-written line is skipped
    finished = [{5: 0.6, 10: 0.8}, {5: 0.5, 10: 0.7}, {5: 0.2, 10: 0.3}]
    assert should_prune(curve, finished, "maximize")  # 0.4 < median(0.8, 0.7, 0.3)
    assert not should_prune({5: 0.55, 10: 0.75}, finished, "maximize")
    assert not should_prune(curve, finished[:1], "maximize")  # too few finished to judge
    assert should_prune({10: 0.9}, [{10: 0.2}, {10: 0.4}], "minimize")
    assert not should_prune(curve, finished, "maximize", min_evals=3)  # only 2 evaluations yet


def test_the_local_runner_runs_resumes_and_ranks_a_grid(tmp_path):
    spec = read_sweep(EXAMPLE)
    trials = run_sweep(spec, str(tmp_path), parallel=2, python=FAKE_TRAIN)
    assert sorted(trials) == [str(n) for n in range(6)]
    assert all(record["status"] == "done" for record in trials.values())
    rows = write_report(spec, trials, str(tmp_path))
    best = rows[0]
    assert best["params"]["config.optimizer.learning_rate"] == 0.1
    assert best["params"]["config.model.width"] == 16
    assert (tmp_path / "sweep_parameters.png").stat().st_size > 1000
    assert "| trial | optimizer.learning_rate | model.width | best_val_accuracy | status |" in (
        format_table(spec, rows)
    )
    calls = (tmp_path / "trial_004" / "calls.txt").read_text().split()
    assert calls[calls.index("--workdir") + 1] == str(tmp_path / "trial_004")
    # Continue after an interruption: trial 5 lost its state and results; nothing else reruns.
    state = json.loads((tmp_path / "sweep_state.json").read_text())
    del state["trials"]["5"]
    (tmp_path / "sweep_state.json").write_text(json.dumps(state))
    shutil.rmtree(tmp_path / "trial_005")
    again = run_sweep(spec, str(tmp_path), parallel=2, python=FAKE_TRAIN)
    assert again == trials
    assert len((tmp_path / "trial_000" / "calls.txt").read_text().splitlines()) == 1


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    body = _example_body()
    body["parameters"] = {"config.fail": {"values": [0, 1, 0]}}
    spec = parse_sweep(yaml.safe_dump(body))
    trials = run_sweep(spec, str(tmp_path), python=FAKE_TRAIN)
    assert [trials[str(n)]["status"] for n in range(3)] == ["done", "failed", "done"]
    assert trials["1"]["exit_code"] == 3


def test_bayes_trials_live_in_an_optuna_journal_and_a_rerun_continues_the_study(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec = _spec("bayes", run_cap=4)
    trials = run_sweep(spec, str(tmp_path), python=FAKE_TRAIN, seed=0)
    assert len(trials) == 4 and all(t["status"] == "done" for t in trials.values())
    more = parse_sweep(yaml.safe_dump({**_example_body(), **{
        "method": "bayes", "run_cap": 6, "parameters": {
            "config.optimizer.learning_rate": {"min": 0.01, "max": 0.3},
            "config.model.width": {"values": [8, 16]},
            "config.train.batch_size": {"min": 16, "max": 64},
            "config.optimizer.weight_decay": {
                "min": 1e-5, "max": 1e-2, "distribution": "log_uniform_values"},
        }}}))  # fmt: skip
    trials = run_sweep(more, str(tmp_path), python=FAKE_TRAIN, seed=0)
    assert len(trials) == 6
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.load_study(study_name="jaxdl", storage=storage)
    values = sorted(t.value for t in study.trials)
    assert len(values) == 6
    assert values == sorted(trials[str(n)]["value"] for n in range(6))
    assert np.all(np.isfinite(values))


@pytest.mark.slow  # six real trainings of the default experiment (~3 min on 2 cores)
def test_the_example_sweep_completes_from_one_command(tmp_path):
    command = [sys.executable, "-m", "jaxdl", "sweep", EXAMPLE, "--workdir", str(tmp_path),
               "--parallel", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "sweep_results.json").read_text())
    assert len(results["trials"]) == 6
    assert all(t["status"] in ("done", "pruned") for t in results["trials"])
    best = results["trials"][0]
    assert best["status"] == "done" and best["value"] > 0.9


def test_a_second_sweep_on_the_same_root_is_refused_while_the_first_runs(tmp_path):

    from jaxdl.errors import WorkdirLockedError

    hold = "import sys, time; from jaxdl.train.workdir_lock import WorkdirLock as L; "
    hold += "L(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"  # another live process holds ROOT
        with pytest.raises(WorkdirLockedError):
            run_sweep(read_sweep(EXAMPLE), str(tmp_path), python=FAKE_TRAIN)
        assert not (tmp_path / "trial_000").exists()
    finally:
        holder.kill()
        holder.wait()
