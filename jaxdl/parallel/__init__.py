"""Multi-device scaling: meshes, logical-axis rules and multi-host helpers."""

from jaxdl.parallel.mesh import (
    MESH_AXES,
    STRATEGIES,
    make_mesh,
    mesh_from_config,
    mesh_sizes_from_config,
    resolve_axis_sizes,
)
from jaxdl.parallel.multihost import initialize_distributed, is_main_process, shard_batch
from jaxdl.parallel.rules import DEFAULT_RULES, batch_sharding, logical_to_shardings

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "STRATEGIES",
    "batch_sharding",
    "initialize_distributed",
    "is_main_process",
    "logical_to_shardings",
    "make_mesh",
    "mesh_from_config",
    "mesh_sizes_from_config",
    "resolve_axis_sizes",
    "shard_batch",
]
