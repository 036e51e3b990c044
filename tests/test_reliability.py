"""Runs that end early end cleanly: one writer per workdir, signals, divergence, replayed logs."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdl.errors import DivergedError, WorkdirLockedError
from jaxdl.experiment import build_experiment
from jaxdl.train import ConfigChangedError, Trainer
from jaxdl.train.workdir_lock import LOCK_NAME, WorkdirLock
from tests.helpers import tiny_digits_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_holder_of_a_workdir_lock_is_refused_naming_the_first(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.stdin.read(); time.sleep(60)"],
        stdin=subprocess.PIPE,
    )
    try:
        (tmp_path / LOCK_NAME).write_text(
            json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": "now"})
        )
        with pytest.raises(WorkdirLockedError, match=f"in use by another run \\(pid {holder.pid}"):
            WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    # This process may take a lock it already holds (a trainer that was never released).
    with WorkdirLock(str(tmp_path)):
        WorkdirLock(str(tmp_path)).acquire()
    assert not (tmp_path / LOCK_NAME).exists()  # released


def test_a_lock_left_by_a_dead_process_or_cut_short_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "earlier"})
    )
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    (tmp_path / LOCK_NAME).write_text('{"pid": 1')  # a kill while writing it
    WorkdirLock(str(tmp_path)).acquire()


@pytest.mark.slow  # CI time (45 s): the poisoned-step test below stays in make test
def test_a_diverging_run_stops_keeping_only_finite_checkpoints(tmp_path):
    config = tiny_digits_config(
        2,
        "--config.optimizer.learning_rate=1e6",
        "--config.checkpoint.every_steps=2",
        "--config.schedule.warmup_epochs=0",
    )
    trainer = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    with pytest.raises(DivergedError, match=r"non-finite at step \d+; the last finite checkpoint"):
        trainer.fit()
    assert not (tmp_path / "results.json").exists()
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:
        restored = ocp.PyTreeCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "state")
        for leaf in jax.tree.leaves(restored["params"]):
            assert np.all(np.isfinite(leaf)), step
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("nonfinite") for r in records if r["split"] == "train")
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_state_of_a_non_finite_step_is_never_saved_or_evaluated(tmp_path):
    config = tiny_digits_config(
        3, "--config.checkpoint.every_steps=2", "--config.train.eval_every_steps=4"
    )
    trainer = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    step, calls = trainer.train_step, {"n": 0}

    def poisoned(state, batch):  # from the 7th step on, the update turns every weight into NaN
        state, metrics = step(state, batch)
        calls["n"] += 1
        if calls["n"] >= 7:
            state = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
            metrics = {**metrics, "loss": metrics["loss"] * np.nan, "nonfinite": np.True_}
        return state, metrics

    trainer.train_step = poisoned
    with pytest.raises(DivergedError, match=r"non-finite at step 7; .* \(step 6\)"):
        trainer.fit()
    assert trainer.checkpointer.latest_step() == 6
    assert trainer.checkpointer.best_step() == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [4]


def _cli(workdir, *extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [
        sys.executable, "-m", "jaxdl", "train",
        "--config", "experiments/digits_resnet.py:depth=8,epochs=400",
        "--workdir", str(workdir),
        "--config.model.width=8", "--config.logging.every_steps=5",
        "--config.checkpoint.every_steps=20", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(predicate, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_sigterm_saves_at_a_step_boundary_and_the_rerun_resumes_with_a_clean_log(tmp_path):
    workdir = tmp_path / "run"
    first = _cli(workdir)
    metrics = workdir / "metrics.jsonl"
    # Training is under way once a train record past step 30 was written.
    _wait_for(
        lambda: (
            metrics.exists()
            and any(json.loads(line)["step"] > 30 for line in metrics.read_text().splitlines())
        )
    )
    second = _cli(workdir)  # a second run on the same workdir is refused at once
    _, err = second.communicate(timeout=120)
    assert second.returncode == 3, err
    assert err.strip().splitlines() == [err.strip()] and "in use by another run" in err

    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 75, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("jaxdl: SIGTERM: saved step ") and "run the same command" in last
    saved = int(last.split("saved step ")[1].split()[0])
    assert saved > 30
    assert saved in {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}
    assert not (workdir / LOCK_NAME).exists()

    # Resume for a few more steps (the schedule length is unchanged: 40 epochs), then stop it
    # the same way: each step appears once in the log although steps after `saved` were replayed.
    resumed = _cli(workdir)
    _wait_for(
        lambda: any(
            json.loads(line)["step"] > saved + 10 for line in metrics.read_text().splitlines()
        )
    )
    resumed.send_signal(signal.SIGINT)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 75, err[-2000:]
    assert f"resumed from step {saved}" in out + err
    assert err.strip().splitlines()[-1].startswith("jaxdl: SIGINT: saved step ")
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    train_steps = [s for s, line in zip(steps, metrics.read_text().splitlines(), strict=True)
                   if json.loads(line)["split"] == "train"]  # fmt: skip
    assert len(train_steps) == len(set(train_steps)) and train_steps == sorted(train_steps)


def test_checksums_catch_any_changed_word_and_ignore_layout():
    from jaxdl.integrity import damaged_leaves, tree_checksums

    rng = np.random.default_rng(0)
    tree = {
        "f32": rng.normal(size=(64, 8)).astype(np.float32),
        "bf16": jnp.asarray(rng.normal(size=(33,)), jnp.bfloat16),
        "i32": rng.integers(0, 100, size=(7, 3)).astype(np.int32),
        "flag": np.array([True, False]),
    }
    sums = tree_checksums(tree)
    assert damaged_leaves(tree, sums) == []
    for name in ("f32", "i32"):
        changed = np.array(tree[name])
        changed.reshape(-1)[17] += 1
        assert damaged_leaves({**tree, name: changed}, sums) == [name]
    swapped = np.array(tree["f32"])
    swapped.reshape(-1)[[3, 4]] = swapped.reshape(-1)[[4, 3]]
    assert damaged_leaves({**tree, "f32": swapped}, sums) == ["f32"]
    # The same values sharded over 8 devices give the same checksum.
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    assert tree_checksums({"f32": jax.device_put(tree["f32"], sharding)})["f32"] == sums["f32"]


def _damage(step_dir, how):
    """Flips 4 KiB in the middle of the largest array file, cuts it to half its length, or
    (``value``) makes one array differ from what was saved in a way the storage layer cannot
    see: its recorded checksum no longer matches, as after a silently flipped bit."""
    if how == "value":
        path = step_dir / "loop" / "metadata"
        loop = json.loads(path.read_text())
        loop["checksums"]["params/head/kernel"] ^= 1
        path.write_text(json.dumps(loop))
        return
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
             for name in names]  # fmt: skip
    largest = max(files, key=os.path.getsize)
    with open(largest, "rb") as handle:
        data = bytearray(handle.read())
    if how == "flip":
        middle = len(data) // 2
        data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    else:
        data = data[: len(data) // 2]
    with open(largest, "wb") as handle:
        handle.write(data)


# make test runs "flip"; make test-slow all three.
@pytest.mark.parametrize(
    "how",
    [
        "flip",
        pytest.param("truncate", marks=pytest.mark.slow),
        pytest.param("value", marks=pytest.mark.slow),
    ],
)
def test_a_damaged_latest_checkpoint_is_named_set_aside_and_the_previous_one_used(
    tmp_path, how, capfd
):
    config = tiny_digits_config(3, "--config.checkpoint.every_steps=5")
    trainer = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    trainer.fit()
    steps = sorted(trainer.checkpointer.latest.all_steps())
    newest, previous = steps[-1], steps[-2]
    _damage(tmp_path / "checkpoints" / str(newest), how)

    again = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    from jaxdl.checkpoint import abstract_like

    state, loop = again.checkpointer.restore_latest(abstract_like(again.state))
    assert int(state.step) == previous and loop["step"] == previous
    err = capfd.readouterr().err
    assert f"checkpoint {tmp_path}/checkpoints/{newest} is damaged" in err
    if how == "value":
        assert "checksum mismatch in params/head/kernel" in err, err
    assert (tmp_path / "checkpoints" / f"damaged-{newest}").is_dir()
    assert sorted(again.checkpointer.latest.all_steps()) == steps[:-1]


@pytest.mark.slow  # ~17 s; CI time
def test_the_only_latest_checkpoint_damaged_resumes_from_best_and_replays_identically(
    tmp_path, capfd
):
    """One checkpoint kept and it is corrupted: the run goes back to the best copy (which holds
    the data position too) and replays to the same end, rather than stopping with nothing."""
    # No evaluation after the first counts as better: the best step is the first evaluation.
    config = tiny_digits_config(
        1, "--config.checkpoint.max_to_keep=1", "--config.train.num_steps=12",
        "--config.train.eval_every_steps=4", "--config.schedule.warmup_epochs=0.1",
        "--config.early_stopping.min_delta=1e9", "--config.early_stopping.patience=100",
    )  # fmt: skip
    finished = Trainer(build_experiment(config), str(tmp_path / "reference"), quiet=True).fit()
    workdir = tmp_path / "damaged"
    shutil.copytree(tmp_path / "reference", workdir)
    (last,) = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    (best,) = [int(p.name) for p in (workdir / "best").iterdir() if p.name.isdigit()]
    assert best < last  # the replay is real: it starts before the damaged step
    _damage(workdir / "checkpoints" / str(last), "flip")
    (workdir / "results.json").unlink()

    rerun = Trainer(build_experiment(config), str(workdir), quiet=True)
    assert rerun.check_resume() == last  # metadata still reads; the arrays do not
    rerun.release()
    # A run killed right after setting the damaged step aside leaves no latest checkpoint.
    (workdir / "checkpoints" / str(last)).rename(workdir / "checkpoints" / f"damaged-{last}")
    rerun = Trainer(build_experiment(config), str(workdir), quiet=True)
    assert rerun.check_resume() == best
    results = rerun.fit()
    err = capfd.readouterr().err
    assert f"no intact latest checkpoint; resuming from the best one (step {best})" in err
    assert json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == last
    timing = {"train_seconds"}
    assert {k: v for k, v in results.items() if k not in timing} == {
        k: v for k, v in finished.items() if k not in timing
    }


@pytest.mark.slow  # CI time (27 s): the damaged-checkpoint fallback test above stays
def test_no_intact_checkpoint_is_one_line_with_exit_5(tmp_path):
    config = tiny_digits_config(3, "--config.checkpoint.max_to_keep=1")
    Trainer(build_experiment(config), str(tmp_path), quiet=True).fit()
    for step_dir in [*(tmp_path / "checkpoints").iterdir(), *(tmp_path / "best").iterdir()]:
        if step_dir.name.isdigit():
            _damage(step_dir, "truncate")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "jaxdl", "train",
         "--config", "experiments/digits_resnet.py:depth=8,epochs=3", "--workdir", str(tmp_path),
         "--config.model.width=8", "--config.checkpoint.max_to_keep=1",
         "--config.logging.every_steps=5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 5, done.stderr[-2000:]
    # Each damaged step is named; Orbax's reader threads may still print asyncio noise before
    # the final line (a known limitation), but the last line says what happened.
    assert done.stderr.count("is damaged") == 2  # the latest and the best copy
    assert done.stderr.strip().splitlines()[-1].startswith("jaxdl: no intact checkpoint in ")


# Every evaluation counts as an improvement (min_delta < 0), so the best step is the last one.
WINDOW_OVERRIDES = (
    "--config.train.num_steps=8",
    "--config.train.eval_every_steps=4",
    "--config.checkpoint.every_steps=4",
    "--config.early_stopping.min_delta=-1e9",
    "--config.schedule.warmup_epochs=0.1",
)


# make test-slow (with test_kill_campaign.py's real kills); make test repairs the other window.
@pytest.mark.slow
def test_a_kill_after_the_best_copy_but_before_the_latest_commit_resumes(tmp_path):
    config = tiny_digits_config(1, *WINDOW_OVERRIDES)
    finished = Trainer(build_experiment(config), str(tmp_path), quiet=True).fit()
    assert finished["step"] == 8
    # best/8 committed; checkpoints/8 was still being written when the kill came.
    shutil.rmtree(tmp_path / "checkpoints" / "8")
    (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1").mkdir()
    rerun = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    results = rerun.fit()
    assert results["step"] == 8 and results["confusion_matrix"] == finished["confusion_matrix"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4", "8"]


def test_a_kill_after_the_latest_commit_but_before_the_best_copy_repairs_best(tmp_path):
    config = tiny_digits_config(1, *WINDOW_OVERRIDES)
    finished = Trainer(build_experiment(config), str(tmp_path), quiet=True).fit()
    shutil.rmtree(tmp_path / "best" / "8")
    rerun = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    results = rerun.fit()
    assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == ["8"]
    # The repaired copy holds the data position too: a later resume may start from it.
    assert rerun.checkpointer.resume_candidates()[-1] == ("best", 8)
    assert results["step"] == 8 and results["best_step"] == 8
    assert results["confusion_matrix"] == finished["confusion_matrix"]


def _poison_calls(trainer: Trainer, calls: set[int], log: list | None = None) -> None:
    """Makes the trainer's step see NaN inputs at the given (1-based) calls: a non-finite loss;
    ``log`` collects the learning-rate scale of every call."""
    step, count = trainer.train_step, {"n": 0}

    def poisoned(state, batch, lr_scale=1.0):
        count["n"] += 1
        if log is not None:
            log.append(lr_scale)
        if count["n"] in calls:
            batch = {**batch, "inputs": batch["inputs"] * np.nan}
        return step(state, batch, lr_scale=lr_scale)

    trainer.train_step = poisoned


def _latest_loop_state(workdir) -> dict:
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return json.loads((workdir / "checkpoints" / str(steps[-1]) / "loop" / "metadata").read_text())


def _finite_checkpoints(workdir) -> None:
    for step_dir in (workdir / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            restored = ocp.PyTreeCheckpointer().restore(step_dir / "state")
            for leaf in jax.tree.leaves(restored):
                assert np.all(np.isfinite(leaf)), step_dir


# CI time (16 s): make test keeps the step-level skip (test_train_steps.py) and the stop policy.
@pytest.mark.slow
def test_skip_drops_non_finite_updates_and_trains_on(tmp_path, capsys):
    config = tiny_digits_config(
        1, "--config.train.num_steps=12", "--config.train.on_nonfinite=skip",
        "--config.train.max_nonfinite_skips=3", "--config.schedule.warmup_epochs=0.1",
    )  # fmt: skip
    trainer = Trainer(build_experiment(config), str(tmp_path))
    _poison_calls(trainer, {3, 4, 9})  # two in a row: below the limit of 3
    results = trainer.fit()
    assert results["step"] == 12 and math.isfinite(results["loss"])
    assert _latest_loop_state(tmp_path)["callbacks"]["DivergenceGuard"] == {"run": 0, "skipped": 3}
    assert "skipped 2 non-finite update(s) by step 5 (2 in all)" in capsys.readouterr().out
    _finite_checkpoints(tmp_path)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


# make test-slow: make test checks the skipped step itself (test_train_steps.py).
@pytest.mark.slow
def test_skip_stops_after_max_nonfinite_skips_in_a_row(tmp_path):
    config = tiny_digits_config(
        2, "--config.optimizer.learning_rate=1e6", "--config.checkpoint.every_steps=2",
        "--config.schedule.warmup_epochs=0", "--config.train.on_nonfinite=skip",
        "--config.train.max_nonfinite_skips=3", "--config.logging.every_steps=1",
    )  # fmt: skip
    trainer = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    with pytest.raises(DivergedError, match=r"non-finite for 3 steps in a row \(steps (\d+)-") as e:
        trainer.fit()
    first = int(e.value.args[0].split("(steps ")[1].split("-")[0])
    # Checked every step (logging.every_steps=1): stopped right at the third skip, never saved.
    assert trainer.checkpointer.latest_step() < first + 2
    _finite_checkpoints(tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow  # ~18 s; CI time
def test_rollback_restores_the_last_checkpoint_with_a_lower_lr_that_survives_a_resume(tmp_path):
    overrides = (
        "--config.train.num_steps=16", "--config.checkpoint.every_steps=4",
        "--config.train.eval_every_steps=8", "--config.schedule.warmup_epochs=0.1",
        "--config.train.on_nonfinite=rollback", "--config.train.rollback_lr_factor=0.25",
    )  # fmt: skip
    config = tiny_digits_config(1, *overrides)
    first = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    scales: list[float] = []
    _poison_calls(first, {7}, scales)  # found at the step-8 check; back to step 4
    step = first.train_step

    def crash(state, batch, lr_scale=1.0):  # a kill after step 12 was saved (the 17th call)
        if len(scales) == 16:
            raise KeyboardInterrupt
        return step(state, batch, lr_scale=lr_scale)

    first.train_step = crash
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    first.checkpointer.wait()
    # 8 steps at scale 1 (the 8th checked and found bad), then steps 5.. again at 0.25.
    assert scales[:8] == [1.0] * 8 and set(scales[8:]) == {0.25}
    loop = _latest_loop_state(tmp_path)
    assert loop["step"] == 12 and loop["lr_scale"] == 0.25 and loop["rollbacks"] == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not any(r.get("nonfinite") for r in records)  # the diverged window was cut

    resumed = Trainer(build_experiment(config), str(tmp_path), quiet=True)
    resumed_scales: list[float] = []
    _poison_calls(resumed, set(), resumed_scales)
    results = resumed.fit()
    assert resumed_scales == [0.25] * 4 and results["step"] == 16
    assert _latest_loop_state(tmp_path)["lr_scale"] == 0.25
    _finite_checkpoints(tmp_path)
    train_steps = [json.loads(line)["step"] for line in
                   (tmp_path / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["split"] == "train"]  # fmt: skip
    assert train_steps == sorted(set(train_steps))


# make test-slow, as the rollback test above; make test checks the lr scale of a step.
@pytest.mark.slow
def test_rollback_gives_up_after_max_rollbacks(tmp_path, capsys):
    config = tiny_digits_config(
        1, "--config.optimizer.learning_rate=1e6", "--config.schedule.warmup_epochs=0",
        "--config.train.on_nonfinite=rollback", "--config.train.max_rollbacks=2",
    )  # fmt: skip
    trainer = Trainer(build_experiment(config), str(tmp_path))
    with pytest.raises(DivergedError, match=r"after 2 rollback\(s\) \(learning rate x0\.25\)"):
        trainer.fit()
    out = capsys.readouterr().out
    assert "rolled back to step 0 with the learning rate x0.5 (rollback 1 of 2)" in out
    assert "rolled back to step 0 with the learning rate x0.25 (rollback 2 of 2)" in out
    assert trainer.checkpointer.latest_step() == 0  # the initial state, saved for rollbacks
    _finite_checkpoints(tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.train.on_nonfinite=ignore", "train.on_nonfinite must be one of stop, skip"),
        # The rest in make test-slow: each starts a process.
        *(
            pytest.param(override, message, marks=pytest.mark.slow)
            for override, message in [
                ("--config.train.max_nonfinite_skips=0", "train.max_nonfinite_skips must be >= 1"),
                (
                    "--config.train.rollback_lr_factor=1.5",
                    "train.rollback_lr_factor must be in (0, 1)",
                ),
                ("--config.train.max_rollbacks=-1", "train.max_rollbacks must be >= 0"),
            ]
        ),
    ],
)
def test_a_bad_nonfinite_setting_is_one_line_with_exit_2(tmp_path, override, message):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "jaxdl", "train",
         "--config", "experiments/digits_resnet.py:depth=8,epochs=3",
         "--workdir", str(tmp_path / "run"), override],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxdl: error: ") and message in lines[0]
    assert not (tmp_path / "run").exists()


# make test-slow: test_resume.py refuses config changes in make test.
@pytest.mark.slow
def test_config_history_is_kept_on_an_allowed_change_and_untouched_on_a_refused_one(tmp_path):
    config = tiny_digits_config(
        1, "--config.train.num_steps=4", "--config.schedule.warmup_epochs=0"
    )
    Trainer(build_experiment(config), str(tmp_path), quiet=True).fit()
    original = (tmp_path / "config.json").read_text()
    refused = tiny_digits_config(
        1, "--config.train.num_steps=4", "--config.seed=1", "--config.schedule.warmup_epochs=0"
    )
    with pytest.raises(ConfigChangedError):
        Trainer(build_experiment(refused), str(tmp_path), quiet=True).fit()
    assert (tmp_path / "config.json").read_text() == original
    assert sorted(p.name for p in tmp_path.glob("config*.json")) == ["config.json"]

    changed = tiny_digits_config(
        1, "--config.train.num_steps=6", "--config.schedule.warmup_epochs=0"
    )
    Trainer(build_experiment(changed), str(tmp_path), quiet=True, allow_config_change=True).fit()
    assert (tmp_path / "config.4.json").read_text() == original  # what steps 1-4 trained with
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 6
    # A plain resume with the same config keeps no copy.
    Trainer(build_experiment(changed), str(tmp_path), quiet=True).fit()
    assert sorted(p.name for p in tmp_path.glob("config*.json")) == ["config.4.json", "config.json"]
