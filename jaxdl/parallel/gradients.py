"""Gradient reduction across data-parallel devices: the one hook the train step calls.

``make_train_step`` computes gradients through a ``GradientReduction``:

* ``CompilerReduction`` (one device, or ``mesh.gradient_reduction='compiler'``) differentiates
  the global-batch loss and leaves every cross-device reduction to XLA's SPMD partitioner.
* ``ExplicitReduction`` (the default on data-parallel and FSDP meshes) runs the forward and
  backward pass in a ``shard_map`` that is manual over the data-parallel mesh axes (``data``,
  ``fsdp``) and automatic over the others (``tensor``, ``sequence``): each layer all-gathers
  its parameter shards when it reads them (``GatherOnRead``), each device differentiates the
  loss of its own examples, and each gradient is reduced once — reduce-scattered into the
  parameter's shard (the all-gather's transpose) over the axes it is sharded on, then
  all-reduced (``psum``) over the rest. The backward pass gathers the weights again instead of
  keeping them (``save_all_but_gathers``), as ZeRO-3 does.

Why by hand: the partitioner emits what the program does not ask for. It all-reduces FSDP
gradients and then slices them (4(n−1)/n instead of 3(n−1)/n of the parameter bytes), and
reduces a parameter used twice (GPT-2's tied token embedding) once per use. In the manual
region the cotangents of every use are summed locally before the single reduction, and the
reduction is the collective the layout needs (docs/scaling.md has the before/after bytes).

Numerics: the global loss is the weighted mean of the devices' losses, weighted by
``Task.loss_weight`` (examples, or target tokens for language modelling), so it equals the
single-device loss of the same batch; BatchNorm statistics are averaged over the manual axes
(``batch_axes()``), so they are the global batch's. Dropout keys are folded with the device's
index. With ``microbatches > 1`` each device splits its own rows, so micro-batch j is the union
of every device's j-th slice rather than the j-th contiguous slice of the global batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from flax.core import meta
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdl.parallel.rules import Rules

# The mesh axes a batch is split over; the manual region of ``ExplicitReduction``.
DATA_PARALLEL_AXES: tuple[str, ...] = ("data", "fsdp")
GRADIENT_REDUCTIONS: tuple[str, ...] = ("auto", "explicit", "compiler")

# ``grads_fn(params, batch_stats, batch, key, sync) -> (grads, metrics, batch_stats)``: the
# step's local computation (see ``Sync``); the returned gradients and metrics are this device's
# weighted contributions to the global values.
GradsFn = Callable[..., tuple[Any, dict[str, jax.Array], Any]]
GATHERED_NAME = "jaxdl_gathered_param"


@dataclasses.dataclass(frozen=True)
class Sync:
    """What the step's local computation needs from the reduction.

    ``global_sum`` adds a value over the data-parallel devices; ``checkpoint`` wraps the loss
    before it is differentiated (in a manual region: rematerialise the parameter gathers in the
    backward pass instead of keeping every gathered layer alive, as ZeRO-3 does).
    """

    global_sum: Callable[[Any], Any]
    checkpoint: Callable[[Callable], Callable]


_BATCH_AXES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "jaxdl_batch_axes", default=None
)


def batch_axes() -> tuple[str, ...] | None:
    """Named axes the batch is split over inside a manual region (None outside one).

    Layers that reduce over the batch (BatchNorm) pass it as their ``axis_name``.
    """
    return _BATCH_AXES.get()


@contextlib.contextmanager
def _batch_axes(axes: tuple[str, ...]) -> Iterator[None]:
    token = _BATCH_AXES.set(axes)
    try:
        yield
    finally:
        _BATCH_AXES.reset(token)


def _identity(x: Any) -> Any:
    return x


class CompilerReduction:
    """Differentiates the global-batch loss; XLA inserts the reductions."""

    def __call__(self, grads_fn: GradsFn, params, batch_stats, batch, key):
        return grads_fn(params, batch_stats, batch, key, Sync(_identity, _identity))


class GatherOnRead(struct.PyTreeNode, meta.AxisMetadata):
    """A parameter shard that a layer reads as the full parameter.

    Flax unboxes a variable each time a module reads it (``self.param``), which inside
    ``nn.scan`` is once per layer with that layer's slice: so each layer's weights are
    all-gathered over the data-parallel axes just before use, and the all-gather's transpose,
    a reduce-scatter, returns that layer's gradient to its shard. Per dimension, ``gather``
    holds the manual mesh axes it is sharded over and ``keep`` the automatic ones (``tensor``),
    which the gathered parameter keeps (a constraint, or the partitioner would gather them too).
    """

    value: Any
    gather: tuple = struct.field(pytree_node=False)
    keep: tuple = struct.field(pytree_node=False)

    def unbox(self) -> jax.Array:
        full = self.value
        for dim, entry in enumerate(self.gather):
            if entry is not None:
                full = jax.lax.all_gather(full, entry, axis=dim, tiled=True)
        if full is self.value:
            return full
        if any(entry is not None for entry in self.keep):
            full = jax.lax.with_sharding_constraint(full, PartitionSpec(*self.keep))
        return checkpoint_name(full, GATHERED_NAME)

    def replace_boxed(self, val: Any) -> GatherOnRead:
        return self.replace(value=val)

    def add_axis(self, index: int, params: dict[Any, Any]) -> GatherOnRead:
        return self.replace(
            gather=(*self.gather[:index], None, *self.gather[index:]),
            keep=(*self.keep[:index], None, *self.keep[index:]),
        )

    def remove_axis(self, index: int, params: dict[Any, Any]) -> GatherOnRead:
        return self.replace(
            gather=self.gather[:index] + self.gather[index + 1 :],
            keep=self.keep[:index] + self.keep[index + 1 :],
        )


def _is_box(x: Any) -> bool:
    return isinstance(x, GatherOnRead)


def _entry_axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _split_spec(
    spec: PartitionSpec, ndim: int, manual: tuple[str, ...], want_manual: bool = True
) -> PartitionSpec:
    """``spec`` restricted to the manual axes (or, ``want_manual=False``, to the others)."""
    entries = tuple(spec) + (None,) * (ndim - len(spec))
    kept = []
    for entry in entries:
        axes = tuple(a for a in _entry_axes(entry) if (a in manual) == want_manual)
        kept.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*kept)


def strip_axes(rules: Rules, axes: tuple[str, ...]) -> tuple:
    """``rules`` without mesh ``axes`` (inside a region manual over them they are not shardings)."""
    stripped = []
    for name, entry in rules:
        kept = tuple(a for a in _entry_axes(entry) if a not in axes)
        stripped.append((name, None if not kept else kept[0] if len(kept) == 1 else kept))
    return tuple(stripped)


@dataclasses.dataclass(frozen=True)
class ExplicitReduction:
    """Gather on use, differentiate locally, reduce each gradient once (see the module doc).

    ``param_shardings`` mirrors the params (NamedSharding leaves); ``batch_spec`` is the
    batch's leading-axis spec (the ``batch`` rule); ``rules`` are the step's logical-axis rules.
    BatchNorm statistics enter and leave replicated (the rules give them no mesh axis).
    """

    mesh: Mesh
    param_shardings: Any
    batch_spec: PartitionSpec
    rules: Rules

    @property
    def manual_axes(self) -> tuple[str, ...]:
        return tuple(a for a in DATA_PARALLEL_AXES if a in self.mesh.shape)

    def _param_specs(self, params, want_manual: bool = True) -> Any:
        return jax.tree.map(
            lambda x, s: _split_spec(s.spec, x.ndim, self.manual_axes, want_manual),
            params,
            self.param_shardings,
        )

    def __call__(self, grads_fn: GradsFn, params, batch_stats, batch, key):
        manual = self.manual_axes
        param_specs = self._param_specs(params)
        auto_specs = self._param_specs(params, want_manual=False)
        batch_entry = _entry_axes(self.batch_spec[0] if len(self.batch_spec) else None)
        batch_manual = tuple(a for a in batch_entry if a in manual)
        batch_specs = jax.tree.map(
            lambda x: PartitionSpec(batch_manual or None, *([None] * (x.ndim - 1))), batch
        )
        stats_specs = jax.tree.map(lambda _: PartitionSpec(), batch_stats)
        inner_rules = strip_axes(self.rules, manual)

        def global_sum(x):
            return jax.lax.psum(x, manual)

        sync = Sync(global_sum, lambda fn: jax.checkpoint(fn, policy=save_all_but_gathers))

        def region(params, batch_stats, batch, key):
            key = jax.random.fold_in(key, _linear_index(manual, self.mesh))
            boxed = jax.tree.map(
                lambda p, s, a: GatherOnRead(p, tuple(s), tuple(a)), params, param_specs, auto_specs
            )
            with _batch_axes(manual), nn.logical_axis_rules(inner_rules):
                grads, metrics, stats = grads_fn(boxed, batch_stats, batch, key, sync)
            grads = jax.tree.map(
                lambda g, s: _reduce_rest(g.value, s, manual), grads, param_specs, is_leaf=_is_box
            )
            return grads, jax.tree.map(global_sum, metrics), stats

        mapped = jax.shard_map(
            region,
            mesh=self.mesh,
            in_specs=(param_specs, stats_specs, batch_specs, PartitionSpec()),
            out_specs=(param_specs, PartitionSpec(), stats_specs),
            axis_names=frozenset(manual),
            check_vma=False,
        )
        return mapped(params, batch_stats, batch, key)


def save_all_but_gathers(primitive, *_, **params) -> bool:
    """Remat policy: the backward pass keeps every residual except gathered parameters, which
    it gathers again: ZeRO-3's memory. Sharding constraints are not kept either (they are
    free to recompute, and one on a gathered parameter would otherwise be kept in its place).

    Around a whole loss it works for unrolled models; a scanned stack must apply it per block
    (inside ``nn.scan``, as ``TransformerStack`` does in a manual region), or JAX recomputes
    every layer's gather in one loop before the backward loop and keeps them all.
    """
    if primitive.name.startswith("all_gather") or primitive.name == "sharding_constraint":
        return False
    return not (primitive.name == "name" and params.get("name") == GATHERED_NAME)


def _linear_index(axes: tuple[str, ...], mesh: Mesh) -> jax.Array:
    """This device's row-major index over the mesh ``axes``."""
    index = jnp.zeros((), jnp.int32)
    for axis in axes:
        index = index * mesh.shape[axis] + jax.lax.axis_index(axis)
    return index


def _reduce_rest(grad: jax.Array, spec: PartitionSpec, manual: tuple[str, ...]) -> jax.Array:
    """All-reduces a gradient over the manual axes its parameter is not sharded on (the
    reduce-scatter over the others already ran, as the transpose of the gather)."""
    sharded = {axis for entry in spec for axis in _entry_axes(entry)}
    rest = tuple(a for a in manual if a not in sharded)
    return jax.lax.psum(grad, rest) if rest else grad


GradientReduction = CompilerReduction | ExplicitReduction


def gradient_reduction(
    mesh: Mesh,
    param_shardings: Any,
    batch_sharding: NamedSharding,
    rules: Rules,
    mode: str = "auto",
) -> GradientReduction:
    """The reduction for a mesh (``mesh.gradient_reduction``).

    ``auto`` is explicit on meshes that only split the batch and the parameters' shards
    (``data × fsdp > 1``, ``tensor = sequence = 1``) and the compiler's otherwise: XLA
    replicates the automatic axes of a manual collective's operand, so gathering FSDP shards by
    hand next to tensor parallelism would gather the tensor-parallel dimensions too
    (docs/scaling.md). ``explicit`` forces the manual region wherever a batch axis is split.
    """
    if mode not in GRADIENT_REDUCTIONS:
        raise ValueError(
            f"unknown mesh.gradient_reduction {mode!r}; choose one of {list(GRADIENT_REDUCTIONS)}"
        )
    data_parallel = math.prod(mesh.shape.get(a, 1) for a in DATA_PARALLEL_AXES)
    model_parallel = math.prod(
        size for axis, size in mesh.shape.items() if axis not in DATA_PARALLEL_AXES
    )
    if mode == "compiler" or data_parallel == 1 or (mode == "auto" and model_parallel > 1):
        return CompilerReduction()
    return ExplicitReduction(mesh, param_shardings, batch_sharding.spec, tuple(rules))
