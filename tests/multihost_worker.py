"""One process of a two-process CPU "cluster", launched by tests/test_multihost.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
    python tests/multihost_worker.py --process-id 0 --num-processes 2 --port P --workdir D \
        --mode steps --mesh data8

Each process owns 4 CPU devices; ``jax.distributed`` with gloo collectives joins them into one
8-device mesh. Modes:

- ``steps``: N jitted train steps of a ResNet-8 where each process loads only its half of every
  global batch (grain shard ``process_id`` of 2), each followed by an async latest-and-best
  checkpoint written by both processes.
  Process 0 writes ``result.json`` (losses, the gathered global labels of each batch) and
  ``params.npz`` (the gathered final params and BatchNorm statistics).
- ``trainer``: the real ``jaxdl train`` path (config file, overrides, ``build_experiment``,
  ``Trainer.fit``) for a tiny model and 2 epochs.
- ``preempt``: the same for 200 epochs, to be stopped by SIGTERM (a pod preemption); exits with
  the CLI's exit code.

Run from the repository root (the trainer mode reads experiments/digits_resnet.py). The helpers
below are shared with the test, which recomputes the same run in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from jaxdl.checkpoint import Checkpointer
from jaxdl.data import load_digits_dataset, make_train_loader
from jaxdl.models import get_model
from jaxdl.parallel import batch_sharding, initialize_distributed, make_mesh, shard_batch
from jaxdl.train import ShardedStep, TrainState, create_sharded_train_state, make_train_step

MESHES: dict[str, dict[str, int]] = {
    "data8": {"data": 8},
    "fsdp4_tensor2": {"fsdp": 4, "tensor": 2},
}
DIGITS_CONFIG = "experiments/digits_resnet.py:depth=8,epochs=2"
LONG_DIGITS_CONFIG = "experiments/digits_resnet.py:depth=8,epochs=200"
TRAINER_OVERRIDES = (
    "--config.model.width=8",
    "--config.train.batch_size=256",
    "--config.logging.tensorboard=False",
    "--config.logging.every_steps=5",
    "--config.schedule.warmup_epochs=0.5",
)


def make_model() -> nn.Module:
    """The ResNet-8 (width 16, CIFAR stem) trained by ``steps`` mode."""
    return get_model("resnet", depth=8, stem="cifar", width=16, num_classes=10)


def make_optimizer() -> optax.GradientTransformation:
    """SGD with momentum, so the optimiser state is a params-shaped tree worth checkpointing."""
    return optax.sgd(0.05, momentum=0.9)


def process_batches(
    num_steps: int, global_batch: int, shard_index: int, shard_count: int
) -> list[dict[str, np.ndarray]]:
    """The first ``num_steps`` local batches {'inputs' [B/n, 8, 8, 1], 'labels' [B/n]} that
    process ``shard_index`` of ``shard_count`` loads from the digits train loader (seed 0)."""
    loader = make_train_loader(
        load_digits_dataset(),
        batch_size=global_batch // shard_count,
        seed=0,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    iterator = iter(loader)
    return [next(iterator) for _ in range(num_steps)]


def create_state(mesh: jax.sharding.Mesh, global_batch: int) -> tuple[TrainState, TrainState]:
    """The sharded initial train state (seed 0) on ``mesh`` and its shardings tree."""
    sample = jax.ShapeDtypeStruct((global_batch, 8, 8, 1), np.float32)
    return create_sharded_train_state(
        make_model(), make_optimizer(), jax.random.PRNGKey(0), sample, mesh
    )


def make_step(mesh: jax.sharding.Mesh, state_shardings: TrainState) -> ShardedStep:
    """The jitted train step with the mesh's batch sharding."""
    return ShardedStep(
        make_train_step(), mesh, state_shardings, batch_sharding(mesh), returns_state=True
    )


def host_variables(state: TrainState) -> dict[str, np.ndarray]:
    """Params and BatchNorm statistics as flat {path: full numpy array}, gathered from every
    process (a collective: all processes must call it)."""
    tree = {"params": state.params, "batch_stats": state.batch_stats}
    gathered = multihost_utils.process_allgather(tree, tiled=True)
    flat, _ = jax.tree_util.tree_flatten_with_path(gathered)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def run_steps(args: argparse.Namespace) -> None:
    """N train steps on per-process halves of each global batch, each followed by a checkpoint
    that both processes write; process 0 then writes the results the test compares."""
    mesh = make_mesh(MESHES[args.mesh])
    state, shardings = create_state(mesh, args.global_batch)
    step = make_step(mesh, shardings)
    sharding = batch_sharding(mesh)
    checkpointer = Checkpointer(args.workdir, max_to_keep=2, async_save=True)
    losses, global_labels = [], []
    local = process_batches(args.steps, args.global_batch, jax.process_index(), args.num_processes)
    for batch in local:
        global_batch = shard_batch(batch, sharding)
        # The global row order make_array_from_process_local_data chose, for the test to check.
        labels = multihost_utils.process_allgather(global_batch["labels"], tiled=True)
        global_labels.append(np.asarray(labels).tolist())
        state, metrics = step(state, global_batch)
        losses.append(float(metrics["loss"]))
        # As the trainer does after an improving epoch: latest and best save the same step at
        # once, asynchronously, while the next step already runs.
        loop_state = {"losses": list(losses)}
        checkpointer.save(int(state.step), state, loop_state=loop_state, is_best=True)
    checkpointer.close()
    variables = host_variables(state)
    if jax.process_index() == 0:
        np.savez(os.path.join(args.workdir, "params.npz"), **variables)
        result = {
            "losses": losses,
            "global_labels": global_labels,
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "mesh": dict(mesh.shape),
        }
        with open(os.path.join(args.workdir, "result.json"), "w") as handle:
            json.dump(result, handle)


def run_trainer(args: argparse.Namespace) -> int:
    """``jaxdl train`` end to end through the CLI: the config's ``distributed`` section, set by
    overrides, starts ``jax.distributed``; then ``build_experiment`` and ``Trainer.fit``."""
    from jaxdl.cli import main as cli_main

    distributed = (
        f"--config.distributed.coordinator_address=127.0.0.1:{args.port}",
        f"--config.distributed.num_processes={args.num_processes}",
        f"--config.distributed.process_id={args.process_id}",
        "--config.distributed.cpu_collectives=gloo",
    )
    config = LONG_DIGITS_CONFIG if args.mode == "preempt" else DIGITS_CONFIG
    argv = ["train", "--config", config, "--workdir", args.workdir]
    try:
        return cli_main([*argv, *TRAINER_OVERRIDES, *distributed])
    except SystemExit as exit_:  # a JaxdlExit: its one line is printed, the code returned
        return int(exit_.code or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--mode", choices=["steps", "trainer", "preempt"], default="steps")
    parser.add_argument("--mesh", choices=sorted(MESHES), default="data8")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=64)
    args = parser.parse_args(argv)
    if args.mode in ("trainer", "preempt"):
        return run_trainer(args)
    initialize_distributed(
        {
            "enabled": True,
            "coordinator_address": f"127.0.0.1:{args.port}",
            "num_processes": args.num_processes,
            "process_id": args.process_id,
            "cpu_collectives": "gloo",
        }
    )
    if jax.process_count() != args.num_processes:
        raise RuntimeError(f"expected {args.num_processes} processes, got {jax.process_count()}")
    os.makedirs(args.workdir, exist_ok=True)
    run_steps(args)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
