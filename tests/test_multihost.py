"""Two real JAX processes (gloo collectives, 4 CPU devices each) train like one 8-device process.

Each test launches one two-process run (``tests/multihost_worker.py``) and checks it against
single-process computations done here, partly while the workers run.

Tolerances: the two runs do the same float32 math, but cross-process all-reduces (gloo) sum
partials in another order than in-process ones, so values may differ in the last bits; over 3
SGD steps that stays near 1e-7 relative. ``rtol=1e-5`` (about 100 float32 ulps) is far below
what a real fault causes, e.g. both processes feeding the same half of the batch changes the
losses at the 1e-2 level.
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
import portpicker
import pytest
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxdl.checkpoint import Checkpointer
from jaxdl.config import load_config
from jaxdl.errors import InterruptedRun
from jaxdl.experiment import build_experiment
from jaxdl.parallel import batch_sharding, make_mesh, shard_batch
from jaxdl.train import Trainer, TrainState
from jaxdl.train.state import abstract_state
from tests import multihost_worker as worker

REPO = Path(__file__).resolve().parents[1]
STEPS, GLOBAL_BATCH, STEPS_MESH = 3, 64, "fsdp4_tensor2"
TIMEOUT_S = 300
RTOL = 1e-5

_jaxlib = getattr(jax._src.lib, "_jax", None)  # private, but the only place gloo shows
pytestmark = pytest.mark.skipif(
    _jaxlib is not None and not hasattr(_jaxlib, "make_gloo_tcp_collectives"),
    reason="this jaxlib has no gloo CPU collectives",
)


def _launch(workdir: Path, *args: str) -> list[subprocess.Popen]:
    """Starts the two worker processes of one run; their output goes to workdir/worker_<i>.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # replaces conftest's 8
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # as in this process: see fast_compiles
    processes = []
    for process_id in range(2):
        log = open(workdir / f"worker_{process_id}.log", "w")  # noqa: SIM115 - the child keeps it
        command = [sys.executable, str(REPO / "tests" / "multihost_worker.py")]
        command += ["--process-id", str(process_id), "--num-processes", "2"]
        command += ["--port", str(port), "--workdir", str(workdir), *args]
        processes.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()
    return processes


def _wait(processes: list[subprocess.Popen], workdir: Path, deadline: float) -> None:
    """Waits for both workers; on a failure or at ``deadline`` kills the other (which would
    otherwise hang in a collective) and fails with both logs' tails."""
    while any(process.poll() is None for process in processes):
        failed = any(process.poll() not in (None, 0) for process in processes)
        if failed or time.monotonic() > deadline:
            for process in processes:
                process.kill()
                process.wait()
            if not failed:
                pytest.fail(f"workers in {workdir} timed out after {TIMEOUT_S}s:\n{_logs(workdir)}")
            break
        time.sleep(0.2)
    codes = [process.returncode for process in processes]
    assert codes == [0, 0], f"worker exit codes {codes}:\n{_logs(workdir)}"


def _logs(workdir: Path) -> str:
    return "\n".join(
        f"--- worker {i} ---\n" + (workdir / f"worker_{i}.log").read_text()[-3000:]
        for i in range(2)
    )


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """Compiles at LLVM -O0 here and in the workers: at -O3 XLA's CPU backend needs about 2 s
    for one ``jax.random.normal`` and 10 s for the ResNet-8's sharded init on these machines,
    at -O0 several times less. Only code generation changes; XLA's HLO passes, hence the
    arithmetic and its order, stay the same."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture
def launch(tmp_path):
    """Starts a two-process run in ``tmp_path`` and returns a function that waits for it.

    Each test starts its own run (so ``pytest -n`` spreads them over its workers) and does its
    single-process work while the workers compile; leftover workers are killed at teardown.
    """
    started: list[subprocess.Popen] = []

    def start(*args: str):
        processes = _launch(tmp_path, *args)
        started.extend(processes)
        deadline = time.monotonic() + TIMEOUT_S

        def finished() -> Path:
            _wait(processes, tmp_path, deadline)
            return tmp_path

        finished.processes = processes  # for tests that signal the workers
        return finished

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _single_process_reference() -> tuple[list[dict], list[float], TrainState]:
    """The same run on one process' 8 devices, fed the concatenated per-process halves."""
    halves = [worker.process_batches(STEPS, GLOBAL_BATCH, i, 2) for i in range(2)]
    batches = [
        {key: np.concatenate([first[key], second[key]]) for key in first}
        for first, second in zip(*halves, strict=True)
    ]
    mesh = make_mesh(worker.MESHES[STEPS_MESH])
    state, shardings = worker.create_state(mesh, GLOBAL_BATCH)
    step = worker.make_step(mesh, shardings)
    sharding = batch_sharding(mesh)
    losses = []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, sharding))
        losses.append(float(metrics["loss"]))
    return batches, losses, state


@pytest.mark.slow  # CI time (40-78 s): every multi-process run is in make test-slow
def test_two_processes_train_like_one_process_and_checkpoint_restores_on_other_meshes(launch):
    finished = launch(
        *("--mode", "steps", "--mesh", STEPS_MESH),
        *("--steps", str(STEPS), "--global-batch", str(GLOBAL_BATCH)),
    )
    batches, reference_losses, reference_state = _single_process_reference()
    workdir = finished()
    result = json.loads((workdir / "result.json").read_text())
    assert result["process_count"] == 2
    assert (result["device_count"], result["local_device_count"]) == (8, 4)

    # make_array_from_process_local_data put process 0's rows first, then process 1's.
    assert result["global_labels"] == [batch["labels"].tolist() for batch in batches]
    np.testing.assert_allclose(result["losses"], reference_losses, rtol=RTOL)

    saved = dict(np.load(workdir / "params.npz"))
    reference = worker.host_variables(reference_state)
    assert saved.keys() == reference.keys()
    for name, value in saved.items():
        np.testing.assert_allclose(value, reference[name], rtol=RTOL, atol=1e-6, err_msg=name)

    # Latest and best saved the same steps concurrently (their multi-host barriers must not
    # collide); keep-2 left the last two steps.
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [STEPS - 1, STEPS]
    assert [int(p.name) for p in (workdir / "best").iterdir()] == [STEPS]

    # The checkpoint both processes wrote (each its own parameter shards) restores here onto a
    # 4-device FSDP mesh and onto a single device, exactly.
    mesh4 = make_mesh({"fsdp": 4}, jax.devices()[:4])
    state4, shardings4 = worker.create_state(mesh4, GLOBAL_BATCH)
    mesh1 = make_mesh({"data": 1}, jax.devices()[:1])
    shardings1 = jax.tree.map(lambda _: NamedSharding(mesh1, PartitionSpec()), shardings4)
    for shardings in (shardings4, shardings1):
        checkpointer = Checkpointer(str(workdir))
        restored, loop = checkpointer.restore_latest(abstract_state(shardings, state4))
        checkpointer.close()
        assert int(restored.step) == STEPS
        assert loop["losses"] == result["losses"]
        jax.tree.map(_assert_sharding, restored, shardings)
        restored_host = worker.host_variables(restored)
        for name, value in saved.items():
            np.testing.assert_array_equal(restored_host[name], value, err_msg=name)
        # The optimiser's momentum, which the workers never gathered, matches the reference.
        for got, want in zip(
            jax.tree.leaves(multihost_utils.process_allgather(restored.opt_state)),
            jax.tree.leaves(multihost_utils.process_allgather(reference_state.opt_state)),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


def _assert_sharding(leaf: jax.Array, sharding: NamedSharding) -> None:
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)


# make test-slow: make test trains two processes (test_two_processes_train_like_one_process_*).
@pytest.mark.slow
def test_cli_training_across_two_processes_matches_single_process_evaluation(launch):
    finished = launch("--mode", "trainer")
    config = load_config(worker.DIGITS_CONFIG, worker.TRAINER_OVERRIDES)
    experiment = build_experiment(config)
    workdir = finished()
    results = json.loads((workdir / "results.json").read_text())
    per_epoch = experiment.steps_per_epoch
    total_steps = 2 * per_epoch
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [
        per_epoch,
        total_steps,
    ]
    # The test metrics are those of the best epoch's state, kept apart in best/.
    best_step = results["best_step"]
    assert best_step in (per_epoch, total_steps)
    assert [int(p.name) for p in (workdir / "best").iterdir()] == [best_step]
    assert results["step"] == best_step

    # Only process 0 writes logs: one validation record per epoch.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "val"] == [1, 2]

    # Each process checkpointed its own data-iterator position in its own shard: both read
    # their half of every global batch.
    data_dir = workdir / "checkpoints" / str(total_steps) / "data"
    positions = [
        json.loads((data_dir / f"process_{i}-of-2.json").read_text())["next_index"]
        for i in range(2)
    ]
    assert positions == [total_steps * experiment.global_batch_size // 2] * 2

    # One process re-evaluating the two-process checkpoint reproduces the two-process evaluation.
    single = Trainer(experiment, str(workdir), quiet=True).evaluate_checkpoint("test")
    assert single["step"] == results["step"]
    assert single["confusion_matrix"] == results["confusion_matrix"]
    np.testing.assert_allclose(single["loss"], results["loss"], rtol=RTOL)


# make test-slow: SIGTERM on one process is tested in make test (test_reliability.py).
@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(launch, tmp_path):
    processes = launch("--mode", "preempt").processes
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while not (
        metrics.exists()
        and any(json.loads(line)["step"] >= 10 for line in metrics.read_text().splitlines())
    ):
        assert time.monotonic() < deadline, _logs(tmp_path)
        assert all(p.poll() is None for p in processes), _logs(tmp_path)
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)  # the preemption notice reaches process 1 only
    codes = [p.wait(timeout=TIMEOUT_S) for p in processes]
    assert codes == [InterruptedRun.exit_code] * 2, _logs(tmp_path)
    saved = []
    for i in range(2):
        last = (tmp_path / f"worker_{i}.log").read_text().strip().splitlines()[-1]
        assert last.startswith("jaxdl: SIGTERM: saved step "), _logs(tmp_path)
        saved.append(int(last.split("saved step ")[1].split()[0]))
    assert saved[0] == saved[1] > 10
    loop = json.loads((tmp_path / "checkpoints" / str(saved[0]) / "loop" / "metadata").read_text())
    assert loop["step"] == saved[0]
    # Each process saved its own data-iterator position at that step.
    data = tmp_path / "checkpoints" / str(saved[0]) / "data"
    assert sorted(p.name for p in data.glob("process_*")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    assert not list(tmp_path.rglob("*.orbax-checkpoint-tmp*"))
