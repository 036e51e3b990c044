"""One process of a two-process CPU "cluster" training from a streamed image folder, launched by
tests/test_streaming_multihost.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
    python tests/streaming_worker.py --process-id 0 --port P --folder DIR --workdir W

Each process first reads one epoch of its own shard through the trainer's loader and writes the
pixel sums of what it read (``read_<i>.json``), then runs the real ``Trainer.fit`` on the same
streamed source for a few steps (per-process iterator state goes into the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from jaxdl.config import load_config
from jaxdl.data.pipeline import make_train_loader
from jaxdl.experiment import build_experiment
from jaxdl.parallel import initialize_distributed
from jaxdl.train import Trainer

OVERRIDES = (
    "--config.model.depth=8",
    "--config.model.width=8",
    "--config.train.batch_size=8",
    "--config.train.num_steps=6",
    "--config.train.eval_batch_size=8",
    "--config.schedule.warmup_epochs=0",
    "--config.logging.tensorboard=False",
    "--config.checkpoint.async_save=False",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    config = load_config(f"experiments/folder_resnet.py:root={args.folder},image_size=8", OVERRIDES)
    with config.unlocked():
        config.distributed.coordinator_address = f"127.0.0.1:{args.port}"
        config.distributed.num_processes = 2
        config.distributed.process_id = args.process_id
        config.distributed.cpu_collectives = "gloo"
    initialize_distributed(config.distributed)
    experiment = build_experiment(config)
    train = experiment.data.train
    iterator = iter(
        make_train_loader(
            train,
            batch_size=1,
            seed=experiment.seed,
            spec=experiment.task.batch_spec(),
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        )
    )
    sums = [
        float(next(iterator)["inputs"].astype(np.float64).sum()) for _ in range(len(train) // 2)
    ]
    with open(os.path.join(args.workdir, f"read_{jax.process_index()}.json"), "w") as handle:
        json.dump(sums, handle)
    Trainer(experiment, os.path.join(args.workdir, "run"), quiet=True).fit()


if __name__ == "__main__":
    main()
