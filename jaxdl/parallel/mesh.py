"""Device meshes built from a config section.

A mesh has the fixed axis order ``MESH_AXES``; a config sets each axis' size and ``-1`` means
"all devices not used by the other axes". Axes of size 1 cost nothing, so one logical-rules table
serves every strategy: data parallel, FSDP, tensor parallel and their combinations differ only in
the sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

# Outermost first: data-parallel replicas span hosts/slices, tensor parallelism stays on the fastest
# (innermost) links, as in MaxText.
MESH_AXES: tuple[str, ...] = ("data", "fsdp", "sequence", "tensor")

# One line of config picks a strategy; the values are the axis sizes it implies (-1 = the rest).
STRATEGIES: dict[str, dict[str, int]] = {
    "dp": {"data": -1},
    "fsdp": {"fsdp": -1},
    "tp": {"tensor": -1},
    "dp_tp": {"data": -1, "tensor": 0},
    "fsdp_tp": {"fsdp": -1, "tensor": 0},
}


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Replaces a single ``-1`` by the devices left over; checks the product is ``num_devices``."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axis {sorted(unknown)}; valid axes: {list(MESH_AXES)}")
    resolved = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in resolved.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {fill}")
    if any(size < 1 and size != -1 for size in resolved.values()):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {resolved}")
    known = math.prod(size for size in resolved.values() if size != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices cannot be split into mesh {resolved}")
        resolved[fill[0]] = num_devices // known
    if math.prod(resolved.values()) != num_devices:
        raise ValueError(
            f"mesh {resolved} uses {math.prod(resolved.values())} devices but {num_devices} exist"
        )
    return resolved


def mesh_sizes_from_config(mesh_config: Mapping, num_devices: int) -> dict[str, int]:
    """Axis sizes from a ``config.mesh`` section: ``strategy`` preset, then explicit per-axis sizes.

    ``strategy='custom'`` uses the explicit sizes as given. A preset uses only its own axes (others
    are 1); a preset entry of ``0`` means "take this axis' size from the config" (e.g. ``fsdp_tp``
    with ``mesh.tensor=4``).
    """
    strategy = mesh_config.get("strategy", "custom")
    explicit = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    if strategy == "custom":
        return resolve_axis_sizes(explicit, num_devices)
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown mesh.strategy {strategy!r}; choose one of {['custom', *STRATEGIES]}"
        )
    preset = STRATEGIES[strategy]
    # A preset fixes every axis it does not take from the config: a size set there would be
    # silently ignored, so it is an error (1 and -1 are the defaults and mean "unset").
    ignored = [a for a in MESH_AXES if preset.get(a) != 0 and explicit[a] not in (1, -1)]
    if ignored:
        settings = ", ".join(f"mesh.{axis}={explicit[axis]}" for axis in ignored)
        raise ValueError(
            f"{settings} has no effect with mesh.strategy={strategy!r}; "
            "use mesh.strategy='custom' to set axis sizes"
        )
    sizes = {axis: 1 for axis in MESH_AXES}
    for axis, size in preset.items():
        sizes[axis] = explicit[axis] if size == 0 else size
        if size == 0 and explicit[axis] <= 1:
            raise ValueError(f"mesh.strategy={strategy!r} needs mesh.{axis} > 1")
    return resolve_axis_sizes(sizes, num_devices)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` with axes ``MESH_AXES`` (Auto sharding mode, topology-aware device order)."""
    devices = list(jax.devices() if devices is None else devices)
    resolved = resolve_axis_sizes(sizes, len(devices))
    shape = tuple(resolved[axis] for axis in MESH_AXES)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    except (ValueError, NotImplementedError):
        # Device subsets that the topology-aware builder rejects still get a plain row-major mesh.
        return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def mesh_from_config(mesh_config: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh a ``config.mesh`` section describes, over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    return make_mesh(mesh_sizes_from_config(mesh_config, len(devices)), devices)
