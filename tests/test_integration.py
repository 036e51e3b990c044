"""End to end through the command line: train, outputs, resume, evaluate."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxdl.data import load_digits_dataset, stratified_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jaxdl(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user has
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-m", "jaxdl", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _split_sizes():
    labels = load_digits_dataset().labels
    return [len(indices) for indices in stratified_split(labels, (0.7, 0.15, 0.15), seed=0)]


def _train_args(workdir):
    """A tiny ResNet-8 for 6 epochs: seconds on CPU, yet clearly learning."""
    return (
        "train",
        "--config",
        "experiments/digits_resnet.py:depth=8,epochs=6",
        "--workdir",
        str(workdir),
        "--config.model.width=8",
        "--config.schedule.warmup_epochs=0.5",
    )


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "digits"
    result = _jaxdl(*_train_args(workdir), "--config.logging.wandb.mode=offline")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_train_writes_every_output(trained_workdir):
    workdir, result = trained_workdir
    for name in ("config.json", "metrics.jsonl", "results.json"):
        assert (workdir / name).is_file(), name
    for plot in ("learning_curves.png", "confusion_matrix.png"):
        assert (workdir / "plots" / plot).stat().st_size > 5000
    assert any(
        p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir()
    )
    run_id = json.loads((workdir / "run.json").read_text())["wandb_run_id"]
    assert list((workdir / "wandb").glob(f"offline-run-*-{run_id}")), "W&B offline run missing"
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len([p for p in (workdir / "best").iterdir() if p.name.isdigit()]) == 1

    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["depth"] == 8 and config["model"]["width"] == 8


def test_metrics_log_has_train_steps_and_val_epochs(trained_workdir):
    workdir, _ = trained_workdir
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3, 4, 5, 6]
    for record in train:
        for key in ("step", "epoch", "loss", "accuracy", "learning_rate", "examples_per_sec"):
            assert key in record, key
    assert train[-1]["loss"] < train[0]["loss"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in val)


def test_results_report_test_metrics(trained_workdir):
    workdir, result = trained_workdir
    results = json.loads((workdir / "results.json").read_text())
    assert results["split"] == "test"
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class"):
        assert key in results
    assert len(results["per_class"]) == 10
    # The matrix counts each test digit exactly once.
    assert sum(map(sum, results["confusion_matrix"])) == _split_sizes()[2]
    # A 3-epoch ResNet-8 is far from converged but must beat chance (10%) by a wide margin.
    assert results["accuracy"] > 0.5
    assert f"accuracy          | {results['accuracy']:.4f}" in result.stderr + result.stdout


# make test-slow: resuming is tested in make test (test_resume.py, test_kill_campaign.py).
@pytest.mark.slow
def test_rerun_resumes_instead_of_retraining(trained_workdir):
    workdir, _ = trained_workdir
    before = json.loads((workdir / "results.json").read_text())
    run_id = json.loads((workdir / "run.json").read_text())["wandb_run_id"]
    result = _jaxdl(*_train_args(workdir), "--config.logging.wandb.mode=offline")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step" in result.stderr + result.stdout
    # The resumed run logs to the same W&B run.
    assert json.loads((workdir / "run.json").read_text())["wandb_run_id"] == run_id
    assert {p.name.rsplit("-", 1)[-1] for p in (workdir / "wandb").glob("offline-run-*")} == {
        run_id
    }
    after = json.loads((workdir / "results.json").read_text())
    assert after["confusion_matrix"] == before["confusion_matrix"]


@pytest.mark.slow  # CI time (18 s): test_evaluate_recomputes_metrics_from_best_checkpoint stays
def test_re_evaluating_the_test_split_keeps_what_training_recorded(trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    trained = json.loads((copy / "results.json").read_text())
    result = _jaxdl("evaluate", "--workdir", str(copy))
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((copy / "results.json").read_text())
    for key in ("train_seconds", "stopped_early", "best_step", "val_accuracy"):
        assert evaluated[key] == trained[key], key
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"])  # recomputed, same state
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]


def test_evaluate_recomputes_metrics_from_best_checkpoint(trained_workdir):
    workdir, _ = trained_workdir
    result = _jaxdl("evaluate", "--workdir", str(workdir), "--split", "val")
    assert result.returncode == 0, result.stderr[-3000:]
    val = json.loads((workdir / "results_val.json").read_text())
    assert sum(map(sum, val["confusion_matrix"])) == _split_sizes()[1]
    assert (workdir / "plots" / "confusion_matrix_val.png").is_file()
    history = [
        json.loads(line)
        for line in (workdir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "val"
    ]
    assert val["accuracy"] == pytest.approx(max(r["accuracy"] for r in history))
