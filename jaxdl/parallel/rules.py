"""Logical axis rules: the one table that maps model axis names onto mesh axes.

Models name every parameter and activation axis (``embed``, ``mlp``, ``conv_out``, ``batch`` ...);
this table says which mesh axis shards each name. A rule whose mesh axis has size 1 is a no-op, so
the same table gives pure data parallelism, FSDP (ZeRO-3), Megatron tensor parallelism or a mix,
depending only on the mesh sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Flax takes the first rule for a name whose mesh axes are not already used in that array, so
# several rules for one name act as fallbacks (e.g. conv_out: tensor, else fsdp).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Activations: batch over every data-like axis; features over tensor.
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("height", None),
    ("width", None),
    ("channels", "tensor"),
    # Parameters: tensor-parallel (Megatron column/row) names first ...
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query key/value heads; override with None if too few
    ("vocab", "tensor"),
    ("conv_out", "tensor"),
    # ... then FSDP shards the remaining large dimension of each kernel.
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("conv_in", "fsdp"),
    ("mlp", "fsdp"),
    ("vocab", "fsdp"),
    ("kv", None),
    ("qkv", None),
    ("layers", None),  # stacked (nn.scan) layer axis: each device keeps every layer's shard
    ("pos", None),
    ("token_types", None),  # token-type (segment) embedding rows
    ("classes", None),
    ("conv_height", None),
    ("conv_width", None),
    ("norm", None),
)


def rules_with_overrides(overrides: Rules | None, base: Rules = DEFAULT_RULES) -> tuple:
    """``base`` with ``overrides`` (``config.mesh.rules``) in front: the first rule for a name
    wins, so an override replaces the base's mapping of that name and a new name extends it.

    Each override is ``(logical_name, mesh_axis | (mesh_axes...) | None)``; ``None`` replicates.
    """
    from jaxdl.parallel.mesh import MESH_AXES

    checked = []
    for rule in overrides or ():
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(
                f"mesh.rules entry {rule!r} must be (logical_name, mesh_axis or tuple or None)"
            )
        name, entry = rule
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"mesh.rules entry {rule!r} names unknown mesh axis {unknown[0]!r}; "
                f"mesh axes are {list(MESH_AXES)}"
            )
        checked.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
    return (*checked, *base)


def _divisible(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide evenly (e.g. a 3-channel stem conv).

    jit refuses uneven output shardings, and such dimensions are small, so replicating them
    costs little.
    """
    entries = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept = []
        size = 1
        for axis in axes:
            if dim % (size * mesh.shape[axis]) == 0:
                kept.append(axis)
                size *= mesh.shape[axis]
        entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*entries)


def logical_to_shardings(abstract_tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedShardings for a tree of (abstract) variables boxed with logical axis names.

    ``abstract_tree`` is typically ``jax.eval_shape(init_fn, ...)``: ``nn.LogicallyPartitioned``
    leaves get their rule-mapped spec, unboxed leaves are replicated. Returns an unboxed tree.
    """
    logical_specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    shapes = nn.meta.unbox(abstract_tree)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _divisible(spec, leaf.shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a batch's leading axis (the ``batch`` rule), other axes replicated."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))
