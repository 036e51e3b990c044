"""Where each parameter lives on the mesh: logical axes, the rules' spec, the spec actually used and
the bytes each device holds.

``logical_to_shardings`` replicates a dimension that its mesh axis does not divide (``_divisible``)
instead of failing, e.g. GPT-2's 50,257-token vocabulary and 12 heads under ``tensor=8``. This
report makes those fallbacks visible: ``build_experiment`` logs ``ShardingReport.warning()`` once
when there are any, and ``jaxdl shardings`` prints the whole table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdl.parallel.aot import format_bytes
from jaxdl.parallel.rules import DEFAULT_RULES, Rules, _divisible


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A dimension the rules assign to a mesh axis that does not divide it: kept replicated."""

    dim: int
    logical: str
    size: int
    axis: str
    axis_size: int

    def __str__(self) -> str:
        return f"{self.logical} {self.size} over {self.axis}={self.axis_size}"


@dataclasses.dataclass(frozen=True)
class ParamSharding:
    """One parameter: ``rule_spec`` is what the rules ask for, ``spec`` what it gets after the
    divisibility fallback. ``rule_bytes_per_device`` is what a device would hold under
    ``rule_spec`` (uneven dimensions padded up), so the difference is the fallback's cost."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    logical_axes: tuple[str | None, ...]
    rule_spec: PartitionSpec
    spec: PartitionSpec
    bytes: int
    bytes_per_device: int
    rule_bytes_per_device: int
    fallbacks: tuple[Fallback, ...]


@dataclasses.dataclass(frozen=True)
class ShardingReport:
    """Every parameter's layout on a mesh, with totals.

    The *replicated share* is the fraction of parameter bytes in parameters with at least one
    fallback: bytes held in full along a mesh axis the rules meant to split them over (with
    ``tensor=8`` alone, held in full by every device). ``fallback_bytes_per_device`` is what the
    fallbacks add to each device (``bytes_per_device - rule_bytes_per_device``, summed).
    """

    mesh_shape: dict[str, int]
    params: tuple[ParamSharding, ...]

    @property
    def fallbacks(self) -> list[tuple[str, Fallback]]:
        """``(parameter path, fallback)`` for every replicated dimension."""
        return [(p.path, f) for p in self.params for f in p.fallbacks]

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.params)

    @property
    def bytes_per_device(self) -> int:
        return sum(p.bytes_per_device for p in self.params)

    @property
    def replicated_share(self) -> float:
        replicated = sum(p.bytes for p in self.params if p.fallbacks)
        return replicated / self.total_bytes if self.total_bytes else 0.0

    @property
    def fallback_bytes_per_device(self) -> int:
        return sum(p.bytes_per_device - p.rule_bytes_per_device for p in self.params)

    def warning(self, max_groups: int = 3) -> str | None:
        """One line naming the fallbacks (largest parameters' first), or None without any."""
        if not self.fallbacks:
            return None
        groups: dict[str, int] = {}
        for param in self.params:
            for fallback in param.fallbacks:
                groups[str(fallback)] = groups.get(str(fallback), 0) + param.bytes
        names = sorted(groups, key=groups.get, reverse=True)
        listed = ", ".join(names[:max_groups]) + (", ..." if len(names) > max_groups else "")
        count = len(self.fallbacks)
        cost = self.fallback_bytes_per_device
        hint = (
            "; model.vocab_divisible_by pads the vocabulary"
            if any(f.logical == "vocab" for _, f in self.fallbacks)
            else ""
        )
        return (
            f"sharding fallback: {count} parameter dimension{'s' * (count > 1)} replicated because "
            f"the mesh axis does not divide the size ({listed}): {self.replicated_share:.1%} of "
            "parameter bytes replicated"
            + (f", +{format_bytes(cost)} per device" if cost else "")
            + hint
        )

    def format_table(self) -> str:
        """The console table: one row per parameter, then the totals line."""
        header = ("parameter", "shape", "logical axes", "mesh spec", "bytes/device", "fallback")
        rows = [
            (
                p.path,
                "x".join(map(str, p.shape)) or "scalar",
                _format_axes(p.logical_axes),
                _format_axes(tuple(p.spec)),
                format_bytes(p.bytes_per_device),
                ", ".join(map(str, p.fallbacks)),
            )
            for p in self.params
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [f"mesh {' '.join(f'{a}={n}' for a, n in self.mesh_shape.items())}"]
        for row in [header, *rows]:
            cells = [
                cell.rjust(width) if i == 4 else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        lines.append(
            f"total: {len(self.params)} parameters, {format_bytes(self.total_bytes)}, "
            f"{format_bytes(self.bytes_per_device)} per device, "
            f"{self.replicated_share:.1%} replicated by fallback"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every row (specs as lists, tuple entries as lists) and the totals."""
        return {
            "mesh_shape": self.mesh_shape,
            "params": [
                {
                    **dataclasses.asdict(p),
                    "rule_spec": _spec_list(p.rule_spec),
                    "spec": _spec_list(p.spec),
                    "fallbacks": [dataclasses.asdict(f) for f in p.fallbacks],
                }
                for p in self.params
            ],
            "total_bytes": self.total_bytes,
            "bytes_per_device": self.bytes_per_device,
            "replicated_share": self.replicated_share,
            "fallback_bytes_per_device": self.fallback_bytes_per_device,
            "warning": self.warning(),
        }


def abstract_params(
    model: nn.Module,
    init_inputs: Callable[[], tuple[tuple, dict]],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> Any:
    """The boxed abstract ``params`` of ``model.init`` on ``init_inputs()`` (``jax.eval_shape``:
    nothing is allocated), traced as ``sharded_state_initializer`` traces the init."""

    def init(key):
        args, kwargs = init_inputs()
        with nn.logical_axis_rules(rules):
            rngs = {"params": key, "dropout": key}
            return model.init(rngs, *args, train=False, **kwargs)["params"]

    with jax.set_mesh(mesh):
        return jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))


def sharding_report(params: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> ShardingReport:
    """How ``logical_to_shardings(params, mesh, rules)`` lays out a boxed abstract params tree
    (``abstract_params``, or the ``params`` of an eval_shape'd boxed train state)."""
    logical = nn.get_partition_spec(params)
    requested = nn.logical_to_mesh(logical, rules)
    leaves = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
    rows = [
        _param_sharding(
            jax.tree_util.keystr(path, simple=True, separator="/"), leaf, names, spec, mesh
        )
        for (path, leaf), names, spec in zip(
            leaves,
            jax.tree.leaves(logical, is_leaf=_is_spec),
            jax.tree.leaves(requested, is_leaf=_is_spec),
            strict=True,
        )
    ]
    return ShardingReport(dict(mesh.shape), tuple(rows))


def _is_spec(node: Any) -> bool:
    return isinstance(node, PartitionSpec)


def _entries(spec: PartitionSpec | tuple, rank: int) -> tuple:
    """``spec``'s entries padded with None to ``rank``."""
    return (*spec, *(None,) * (rank - len(spec)))


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _param_sharding(
    path: str, leaf: Any, logical: PartitionSpec, requested: PartitionSpec, mesh: Mesh
) -> ParamSharding:
    shape = tuple(leaf.shape)
    names = _entries(logical, len(shape))
    spec = _divisible(requested, shape, mesh)
    itemsize = np.dtype(leaf.dtype).itemsize
    fallbacks, rule_shard = [], []
    for dim, (size, name, want, got) in enumerate(
        zip(shape, names, _entries(requested, len(shape)), _entries(spec, len(shape)), strict=True)
    ):
        rule_shard.append(-(-size // math.prod(mesh.shape[a] for a in _axes(want))))
        fallbacks += [
            Fallback(dim, name, size, a, mesh.shape[a]) for a in _axes(want) if a not in _axes(got)
        ]
    return ParamSharding(
        path=path,
        shape=shape,
        dtype=str(leaf.dtype),
        logical_axes=names,
        rule_spec=requested,
        spec=spec,
        bytes=math.prod(shape) * itemsize,
        bytes_per_device=math.prod(NamedSharding(mesh, spec).shard_shape(shape)) * itemsize,
        rule_bytes_per_device=math.prod(rule_shard) * itemsize,
        fallbacks=tuple(fallbacks),
    )


def _format_axes(entries: tuple) -> str:
    return "(" + ", ".join("+".join(_axes(e)) or "-" for e in entries) + ")"


def _spec_list(spec: PartitionSpec) -> list:
    return [list(e) if isinstance(e, tuple) else e for e in spec]
