"""Two real JAX processes (gloo collectives, 4 CPU devices each) train like one 8-device process.

Both two-process runs start together when the module's fixture first runs (4 worker processes) so
their compiles overlap with the single-process references computed here.

Tolerances: the two runs do the same float32 math, but cross-process all-reduces (gloo) sum
partials in another order than in-process ones, so values may differ in the last bits; over 3
SGD steps that stays near 1e-7 relative. ``rtol=1e-5`` (about 100 float32 ulps) is far below
what a real fault causes, e.g. both processes feeding the same half of the batch changes the
losses at the 1e-2 level.
"""

from __future__ import annotations

import json
import os
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
from jaxdl.parallel import batch_sharding, make_mesh, shard_batch
from jaxdl.train import Trainer, build_experiment
from jaxdl.train.state import abstract_state
from tests import multihost_worker as worker

REPO = Path(__file__).resolve().parents[1]
STEPS, GLOBAL_BATCH, STEPS_MESH = 3, 64, "fsdp4_tensor2"
TIMEOUT_S = 300
RTOL = 1e-5

_jaxlib = getattr(jax._src.lib, "_jax", None)  # noqa: SLF001 - the only place gloo is visible
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
        log = open(workdir / f"worker_{process_id}.log", "w")  # noqa: SIM115 - closed by wait
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
    """Compiles at LLVM -O0 here and in the workers: XLA's CPU compiles of random-init programs
    take seconds at -O3 (about 2 s for one ``jax.random.normal`` on these machines) and ~3x less
    at -O0. Only code generation changes; XLA's HLO passes, hence the arithmetic and its order,
    stay the same."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both two-process runs, started at once: ``steps`` (manual loop) and ``trainer`` (CLI)."""
    root = tmp_path_factory.mktemp("multihost")
    steps_args = ("--mode", "steps", "--mesh", STEPS_MESH, "--steps", str(STEPS))
    steps_args += ("--global-batch", str(GLOBAL_BATCH))
    launched = {
        "steps": (root / "steps", _launch(root / "steps", *steps_args)),
        "trainer": (root / "trainer", _launch(root / "trainer", "--mode", "trainer")),
    }
    deadline = time.monotonic() + TIMEOUT_S

    def finished(name: str) -> Path:
        workdir, processes = launched[name]
        _wait(processes, workdir, deadline)
        return workdir

    yield finished
    for _, processes in launched.values():
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _single_process_reference() -> tuple[list[dict], list[float], object]:
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


def test_two_processes_train_like_one_process_and_checkpoint_restores_on_other_meshes(runs):
    batches, reference_losses, reference_state = _single_process_reference()
    workdir = runs("steps")
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
        jax.tree.map(lambda leaf, s: _assert_sharding(leaf, s), restored, shardings)
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


def test_cli_training_across_two_processes_matches_single_process_evaluation(runs):
    workdir = runs("trainer")
    results = json.loads((workdir / "results.json").read_text())
    config = load_config(worker.DIGITS_CONFIG, worker.TRAINER_OVERRIDES)
    experiment = build_experiment(config)
    total_steps = 2 * experiment.steps_per_epoch
    assert results["step"] == total_steps
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [
        experiment.steps_per_epoch,
        total_steps,
    ]

    # Only process 0 writes logs: one validation record per epoch.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "val"] == [1, 2]

    # Each process checkpointed its own data-iterator position: disjoint shards of one stream.
    data_dir = workdir / "checkpoints" / str(total_steps) / "data"
    positions = [
        json.loads((data_dir / f"process_{i}-of-2.json").read_text())["last_seen_indices"]["0"]
        for i in range(2)
    ]
    consumed = total_steps * experiment.global_batch_size
    assert positions == [consumed - 2, consumed - 1]

    # One process re-evaluating the two-process checkpoint reproduces the two-process evaluation.
    single = Trainer(experiment, str(workdir), quiet=True).evaluate_checkpoint("test")
    assert single["step"] == results["step"]
    assert single["confusion_matrix"] == results["confusion_matrix"]
    np.testing.assert_allclose(single["loss"], results["loss"], rtol=RTOL)
