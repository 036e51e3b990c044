"""Multi-host helpers: start ``jax.distributed``, build global batches from per-process data."""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

# Environments in which jax.distributed.initialize() discovers the cluster by itself.
_AUTO_DETECTED_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _enabled(value: object) -> bool | str:
    """``distributed.enabled`` as True, False or 'auto'. The field defaults to the string 'auto',
    so ``--config.distributed.enabled=False`` arrives as the string 'False' (truthy): read it."""
    if isinstance(value, bool) or value == "auto":
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    from jaxdl.errors import ConfigError

    raise ConfigError(f"distributed.enabled must be 'auto', True or False, got {value!r}")


def initialize_distributed(distributed_config: Mapping | None) -> bool:
    """Starts ``jax.distributed`` when the config (or the cluster environment) asks for it.

    ``distributed_config`` fields: ``enabled`` ('auto' | True | False), ``coordinator_address``,
    ``num_processes``, ``process_id``, ``cpu_collectives`` ('gloo' for multi-process CPU runs).
    'auto' initialises only on SLURM or TPU pods, where JAX finds the cluster itself. Returns
    whether ``jax.distributed`` was initialised.
    """
    cfg = dict(distributed_config or {})
    enabled = _enabled(cfg.get("enabled", "auto"))
    explicit = cfg.get("coordinator_address") is not None
    if enabled == "auto":
        enabled = explicit or any(name in os.environ for name in _AUTO_DETECTED_ENV)
    if not enabled:
        return False
    if cfg.get("cpu_collectives"):
        jax.config.update("jax_cpu_collectives_implementation", cfg["cpu_collectives"])
    kwargs = {}
    if explicit:
        kwargs = {
            "coordinator_address": cfg["coordinator_address"],
            "num_processes": int(cfg["num_processes"]),
            "process_id": int(cfg["process_id"]),
        }
    jax.distributed.initialize(**kwargs)
    return True


def is_main_process() -> bool:
    """True on the process that writes logs, plots and summaries (process 0)."""
    return jax.process_index() == 0


def shard_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Assembles each process' share of a batch into global ``jax.Array``s split over ``sharding``.

    Every process passes only the examples it loaded; the global batch size is the sum over
    processes.
    """
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
