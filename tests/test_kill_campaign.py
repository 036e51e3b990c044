"""The kill campaign: ``jaxdl train`` on the default experiment (shortened) is SIGKILLed again and
again, at random (seeded) moments and inside both checkpoint commit windows, one checkpoint has
4 KiB of its bytes flipped, and each time the same command is re-run. The run must finish with
params, optimiser state, metrics and results bit-identical to an uninterrupted run, no tmp
leftovers, and a log that holds each step once.

The commit windows (latest committed while best is still being written, and best committed while
latest is) are hit exactly by a hook that wraps ``Checkpointer.save`` in the child process and
SIGKILLs it from inside; every other kill comes from outside at a random moment after the run got
a random number of steps past its resume point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = Path(__file__).resolve().parents[1]
COMMAND = [
    "train", "--config.model.width=8", "--config.logging.every_steps=5",
    "--config.train.eval_every_steps=10", "--config.checkpoint.every_steps=10",
    "--config.schedule.warmup_epochs=0.5", "--config.logging.tensorboard=False",
    # Every evaluation improves, so each evaluation step saves latest and best together.
    "--config.early_stopping.min_delta=-1e9",
]  # fmt: skip
TIMING_FIELDS = {"period_seconds", "train_seconds"}

# Runs ``jaxdl train`` with ``Checkpointer.save`` wrapped: with KILL_WINDOW set, the first save of
# a best checkpoint SIGKILLs the process inside one of the two commit windows.
HOOK = """
import os, signal, sys
from jaxdl import checkpoint
from jaxdl.cli import console_main

window = os.environ.get("KILL_WINDOW")
original = checkpoint.Checkpointer.save


def save(self, step, state, **kwargs):
    if window and kwargs.get("is_best"):
        latest_save, best_save, pending = self.latest.save, self.best.save, []
        if window == "best-tmp":  # latest committed, best still being written
            def best_then_kill(*args, **kw):
                self.latest.wait_until_finished()
                best_save(*args, **kw)
                os.kill(os.getpid(), signal.SIGKILL)
        else:  # "latest-tmp": best committed, latest still being written
            self.latest.save = lambda *args, **kw: pending.append((args, kw))
            def best_then_kill(*args, **kw):
                best_save(*args, **kw)
                self.best.wait_until_finished()
                latest_save(*pending[0][0], **pending[0][1])
                os.kill(os.getpid(), signal.SIGKILL)
        self.best.save = best_then_kill
    return original(self, step, state, **kwargs)


checkpoint.Checkpointer.save = save
sys.argv = ["jaxdl", *sys.argv[1:]]
console_main()
"""


def _start(workdir: Path, epochs: int, window: str | None = None) -> subprocess.Popen:
    """Starts the hooked ``jaxdl train``; stderr goes to a file beside the workdir (a pipe the
    campaign does not read while it waits for steps would fill and stall a chatty restart)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if window:
        env["KILL_WINDOW"] = window
    config = f"experiments/digits_resnet.py:depth=8,epochs={epochs}"
    command = [sys.executable, "-c", HOOK, *COMMAND[:1], "--config", config]
    command += ["--workdir", str(workdir), *COMMAND[1:]]
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with open(workdir.parent / f"{workdir.name}.stderr", "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    process.stderr_path = workdir.parent / f"{workdir.name}.stderr"
    return process


def _finish(process: subprocess.Popen) -> str:
    """Waits for ``process`` and returns its stderr."""
    process.wait(timeout=300)
    return process.stderr_path.read_text()


def _steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        if directory.is_dir()
        else []
    )


def _logged_step(workdir: Path, since: float) -> int:
    """The last train step logged by the run started at ``since`` (-1 before its first record)."""
    path = workdir / "metrics.jsonl"
    if not path.exists() or path.stat().st_mtime < since:
        return -1
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=-1)


def _flip_bytes(step_dir: Path) -> None:
    """Flips 4 KiB in the middle of the checkpoint's largest array file."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    largest.write_bytes(data)


def _campaign(workdir: Path, epochs: int, plan: list[str], seed: int) -> dict:
    """Runs ``plan`` (one kill each: 'random', 'best-tmp', 'latest-tmp', 'random+corrupt'), then
    re-runs to the end. Returns the figures: kills, restarts (a re-run after each kill), damaged
    checkpoints set aside."""
    rng = np.random.default_rng(seed)
    total = epochs * 19  # 1,257 training digits / 64
    kills = 0
    for kind in plan:
        resume = _steps(workdir)[-1] if _steps(workdir) else 0
        window = kind if kind in ("best-tmp", "latest-tmp") else None
        started = time.time()
        process = _start(workdir, epochs, window)
        if window is None:
            target = min(resume + int(rng.integers(1, 16)), total - 1)
            while process.poll() is None and _logged_step(workdir, started) < target:
                assert time.time() - started < 300, f"no step {target} in 5 min: stalled?"
                time.sleep(0.05)
            time.sleep(float(rng.uniform(0.0, 0.4)))  # anywhere: a step, an eval, a save
            process.send_signal(signal.SIGKILL)
        err = _finish(process)
        if process.returncode == 0:
            break  # finished before the kill landed
        assert process.returncode == -signal.SIGKILL, err[-3000:]
        kills += 1
        best = workdir / "best"
        best_steps = sorted(int(p.name) for p in best.iterdir() if p.name.isdigit())
        if window == "best-tmp":  # the step is latest but not (yet) best
            assert _steps(workdir)[-1] > max(best_steps, default=0)
        elif window == "latest-tmp":  # the step is best but not (yet) latest
            assert best_steps[-1] > _steps(workdir)[-1]
        if kind == "random+corrupt" and _steps(workdir):
            _flip_bytes(workdir / "checkpoints" / str(_steps(workdir)[-1]))
    final = _start(workdir, epochs)
    err = _finish(final)
    assert final.returncode == 0, err[-3000:]
    damaged = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("damaged")]
    return {"kills": kills, "restarts": kills, "damaged_set_aside": damaged, "stderr": err}


def _records(workdir: Path) -> dict[tuple[str, int], dict]:
    """metrics.jsonl by (split, step), timing fields left out; each key must appear once."""
    records = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = (record["split"], record["step"])
        assert key not in records, f"{key} logged twice"
        records[key] = {
            k: v for k, v in record.items() if k not in TIMING_FIELDS and not k.endswith("_per_sec")
        }
    return records


def _final_state(workdir: Path) -> list[np.ndarray]:
    step = _steps(workdir)[-1]
    restored = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return [np.asarray(leaf) for leaf in jax.tree.leaves(restored)]


def _assert_same_as_uninterrupted(reference: Path, workdir: Path) -> bool:
    """Params/optimiser state, metrics and results bit-identical; no leftovers. Returns True."""
    assert _steps(workdir)[-1] == _steps(reference)[-1]
    for got, want in zip(_final_state(workdir), _final_state(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    assert _records(workdir) == _records(reference)
    results, expected = (
        {
            k: v
            for k, v in json.loads((d / "results.json").read_text()).items()
            if k not in TIMING_FIELDS
        }
        for d in (workdir, reference)
    )
    assert results == expected
    leftovers = [
        p for p in workdir.rglob("*")
        if "orbax-checkpoint-tmp" in p.name or p.name.endswith(".tmp") or p.name == ".jaxdl.lock"
    ]  # fmt: skip
    assert leftovers == []
    return True


def _reference(path: Path, epochs: int) -> Path:
    process = _start(path, epochs)
    err = _finish(process)
    assert process.returncode == 0, err[-3000:]
    return path


@pytest.mark.slow  # ~40 s; CI time (the commit-window repairs also have fast unit tests)
def test_two_kills_in_both_commit_windows_resume_bit_identical(tmp_path):
    """The short campaign ``make test`` runs: one kill in each commit window."""
    reference = _reference(tmp_path / "reference", epochs=1)
    figures = _campaign(tmp_path / "killed", 1, ["best-tmp", "latest-tmp"], seed=0)
    assert figures["kills"] == 2
    assert _assert_same_as_uninterrupted(reference, tmp_path / "killed")


@pytest.mark.slow
def test_kill_campaign(tmp_path):
    """12 SIGKILLs (random moments, both commit windows, one corrupted checkpoint), then the
    run finishes bit-identical to an uninterrupted one."""
    epochs = 3
    plan = ["random", "random", "best-tmp", "random", "random", "latest-tmp", "random"]
    plan += ["random+corrupt", "random", "best-tmp", "random", "random"]
    reference = _reference(tmp_path / "reference", epochs)
    figures = _campaign(tmp_path / "killed", epochs, plan, seed=1)
    identical = _assert_same_as_uninterrupted(reference, tmp_path / "killed")
    assert figures["kills"] >= 10
    assert len(figures["damaged_set_aside"]) <= 1
    summary = {k: v for k, v in figures.items() if k != "stderr"} | {"bit_identical": identical}
    print(f"kill campaign: {json.dumps(summary)}")
