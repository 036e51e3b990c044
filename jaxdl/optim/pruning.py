"""Magnitude pruning: masks, the Zhu & Gupta (2017) gradual schedule and an optax transform.

``magnitude_masks`` zeroes the smallest-magnitude kernel entries, per kernel (``scope='layer'``,
as ``torch.nn.utils.prune.l1_unstructured``) or with one ranking over all kernels
(``scope='global'``, as ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``).
``magnitude_pruning`` is an optax transform, chained last, that keeps pruned weights at exactly
zero whatever the update rule (momentum, Adam) proposes, and recomputes the masks as a sparsity
schedule (``polynomial_sparsity``) rises. Everything is pure ``jnp``: it runs under ``jax.jit``
and on sharded parameters (the global scope gathers all kernels into one vector to rank them).

Tie rule: entries are ranked by ``|w|`` with a stable sort, so among equal magnitudes the one
that comes first is pruned first (row-major order within a kernel; kernels in ``jax.tree``
leaf order for the global scope). In the transform, entries already pruned rank below every live
entry, so a non-decreasing schedule never revives a pruned weight.
"""

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdl.optim.schedules import reject_unknown_fields

SCOPES = ("layer", "global")

Sparsity = float | jax.Array
SparsitySchedule = Callable[[jax.Array], jax.Array]
Prunable = Any | Callable[[optax.Params], Any]  # a pytree of bools, or params -> that pytree


def prunable_kernels(params: optax.Params) -> optax.Params:
    """Default prunable set: kernels (ndim >= 2); biases and norm scales/offsets are kept.

    The same rule as ``decay_kernels_only`` in ``jaxdl.optim.optimizers``.
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _check_sparsity(value: object, name: str = "sparsity") -> None:
    """Static sparsities must be numbers in [0, 1]; traced ones are taken as given."""
    if isinstance(value, jax.Array):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; expected one of {SCOPES}")


def _prune_count(sparsity: Sparsity, size: int) -> int | jax.Array:
    """How many entries to prune: ``round(sparsity * size)``, half to even, as torch's
    ``_compute_nparams_toprune``. Exact for a Python float; a traced sparsity is float32, so the
    count can differ by one when ``sparsity * size`` is within float32 rounding of a half."""
    if isinstance(sparsity, numbers.Real):
        return round(float(sparsity) * size)
    return jnp.round(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)


def _keep_all_but_smallest(scores: jax.Array, count: int | jax.Array) -> jax.Array:
    """Bool vector, False at the ``count`` smallest ``scores`` (ties: lower index first)."""
    order = jnp.argsort(scores, stable=True)
    rank_kept = jnp.arange(scores.size) >= count
    return jnp.zeros(scores.shape, bool).at[order].set(rank_kept)


def _scores(param: jax.Array, previous: jax.Array | None) -> jax.Array:
    """Flat float32 ``|param|``; entries ``previous`` masked rank below all others (-1)."""
    magnitude = jnp.abs(param).astype(jnp.float32)
    if previous is not None:
        magnitude = jnp.where(previous, magnitude, -1.0)
    return magnitude.ravel()


def _prunable_flags(params: optax.Params, prunable: Prunable | None) -> list[bool]:
    """One static bool per params leaf, from a pytree of bools or a params -> pytree callable."""
    tree = prunable_kernels(params) if prunable is None else prunable
    if callable(tree):
        tree = tree(params)
    return [bool(flag) for flag in jax.tree.structure(params).flatten_up_to(tree)]


def magnitude_masks(
    params: optax.Params,
    sparsity: Sparsity,
    scope: str = "layer",
    prunable: Prunable | None = None,
    previous: optax.Params | None = None,
) -> optax.Params:
    """Pytree of bool masks like ``params`` (True = keep) pruning ``sparsity`` of the kernels.

    ``scope='layer'``: each prunable leaf of size n loses its ``round(sparsity * n)``
    smallest-|w| entries (torch ``l1_unstructured``). ``scope='global'``: one ranking over all
    prunable leaves together, ``round(sparsity * total)`` pruned (torch ``global_unstructured``).
    ``prunable`` (default: ndim >= 2) is a pytree of bools or a ``params -> pytree`` callable;
    other leaves get all-True masks. ``previous`` masks, if given, make their pruned entries
    rank first, so pruning only grows. Ties: stable ranking, lower index pruned first.
    """
    _check_sparsity(sparsity)
    _check_scope(scope)
    leaves, treedef = jax.tree.flatten(params)
    flags = tuple(_prunable_flags(params, prunable))
    sizes = [math.prod(jnp.shape(leaf)) for leaf, flag in zip(leaves, flags, strict=True) if flag]
    totals = sizes if scope == "layer" else [sum(sizes)]
    # Counts are computed here (exact Python round for a float) and passed as traced ints, so
    # one compiled program serves every sparsity.
    counts = [_prune_count(sparsity, size) for size in totals]
    old = None if previous is None else treedef.flatten_up_to(previous)
    return treedef.unflatten(_masks(leaves, counts, old, flags, scope))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _masks(
    leaves: list[jax.Array],
    counts: list[jax.Array],
    previous: list[jax.Array] | None,
    flags: tuple[bool, ...],
    scope: str,
) -> list[jax.Array]:
    """``magnitude_masks`` on flat leaves: ``counts`` per prunable leaf, or one for all."""
    old = [None] * len(leaves) if previous is None else previous
    masks = [jnp.ones(jnp.shape(leaf), bool) for leaf in leaves]
    chosen = [i for i, flag in enumerate(flags) if flag]
    if not chosen:
        return masks
    if scope == "layer":
        for i, count in zip(chosen, counts, strict=True):
            keep = _keep_all_but_smallest(_scores(leaves[i], old[i]), count)
            masks[i] = keep.reshape(masks[i].shape)
        return masks
    keep = _keep_all_but_smallest(
        jnp.concatenate([_scores(leaves[i], old[i]) for i in chosen]), counts[0]
    )
    offset = 0
    for i in chosen:
        size = masks[i].size
        masks[i] = keep[offset : offset + size].reshape(masks[i].shape)
        offset += size
    return masks


def _check_schedule(
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    initial_sparsity: float,
    frequency: int,
    power: float,
) -> None:
    """One clear error for each invalid polynomial schedule argument."""
    _check_sparsity(final_sparsity, "final_sparsity")
    _check_sparsity(initial_sparsity, "initial_sparsity")
    if initial_sparsity > final_sparsity:
        raise ValueError(
            f"initial_sparsity {initial_sparsity} must not exceed final_sparsity {final_sparsity}"
        )
    for name, value, low in (("begin_step", begin_step, 0), ("frequency", frequency, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if isinstance(end_step, bool) or not isinstance(end_step, numbers.Integral):
        raise ValueError(f"end_step must be an int, got {end_step!r}")
    if end_step < begin_step:
        raise ValueError(f"end_step {end_step} must be >= begin_step {begin_step}")
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or not power > 0:
        raise ValueError(f"power must be a number > 0, got {power!r}")


def polynomial_sparsity(
    step: int | jax.Array,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    initial_sparsity: float = 0.0,
    frequency: int = 1,
    power: float = 3,
) -> jax.Array:
    """Sparsity of the masks after update ``step`` under Zhu & Gupta's gradual schedule.

    ``s(t) = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** power``
    (tensorflow_model_optimization's ``PolynomialDecay``), evaluated at the last pruning step
    ``<= step``: pruning happens at ``begin_step + k * frequency`` and always at ``end_step`` (so
    the final sparsity is reached there even when ``frequency`` does not divide the span; TF MOT
    would skip it), never after. 0 before ``begin_step``. ``begin_step == end_step``: one-shot
    pruning to ``final_sparsity`` at that step. Jit-traceable in ``step``; float32.
    """
    _check_schedule(final_sparsity, begin_step, end_step, initial_sparsity, frequency, power)
    step = jnp.asarray(step, jnp.int32)
    if end_step == begin_step:
        progress = jnp.float32(1.0)
    else:
        clipped = jnp.clip(step, begin_step, end_step)
        last = begin_step + (clipped - begin_step) // frequency * frequency
        last = jnp.where(step >= end_step, end_step, last)
        progress = (last - begin_step).astype(jnp.float32) / (end_step - begin_step)
    value = final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power
    return jnp.where(step < begin_step, 0.0, value).astype(jnp.float32)


def polynomial_schedule(
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    initial_sparsity: float = 0.0,
    frequency: int = 1,
    power: float = 3,
) -> SparsitySchedule:
    """``polynomial_sparsity`` as a ``step -> sparsity`` callable, arguments checked now."""
    _check_schedule(final_sparsity, begin_step, end_step, initial_sparsity, frequency, power)
    return functools.partial(
        polynomial_sparsity,
        final_sparsity=final_sparsity,
        begin_step=begin_step,
        end_step=end_step,
        initial_sparsity=initial_sparsity,
        frequency=frequency,
        power=power,
    )


class MagnitudePruningState(NamedTuple):
    """Update count, the sparsity the masks were computed for, and the masks (True = keep)."""

    count: jax.Array
    sparsity: jax.Array
    masks: optax.Params


# Written by hand because optax (0.2.8, optax.contrib included) has no pruning transform.
def magnitude_pruning(
    schedule_or_sparsity: float | SparsitySchedule,
    scope: str = "layer",
    prunable: Prunable | None = None,
) -> optax.GradientTransformation:
    """Optax transform, chained last, holding magnitude-pruning masks in its state.

    ``schedule_or_sparsity``: a constant sparsity (one-shot at the first update, masks fixed
    afterwards) or a ``count -> sparsity`` schedule such as ``polynomial_schedule``; the masks
    are recomputed from the current params whenever its value changes (a staircase schedule
    therefore re-ranks only at its pruning steps). Returned updates are
    ``where(mask, updates, -params)``, so ``params + updates`` is exactly zero where masked:
    pruned weights stay zero however momentum or Adam moves them. ``update`` needs params.
    """
    _check_scope(scope)
    static = not callable(schedule_or_sparsity)
    if static:
        _check_sparsity(schedule_or_sparsity)

    def init_fn(params: optax.Params) -> MagnitudePruningState:
        masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
        return MagnitudePruningState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32), masks)

    def update_fn(
        updates: optax.Updates, state: MagnitudePruningState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, MagnitudePruningState]:
        if params is None:
            raise ValueError("magnitude_pruning needs params: call update(grads, state, params)")
        if static:
            sparsity = jnp.float32(schedule_or_sparsity)
            changed = state.count == 0
        else:
            sparsity = jnp.asarray(schedule_or_sparsity(state.count), jnp.float32)
            changed = sparsity != state.sparsity
        target = schedule_or_sparsity if static else sparsity
        masks = jax.lax.cond(
            changed,
            lambda: magnitude_masks(params, target, scope, prunable, previous=state.masks),
            lambda: state.masks,
        )
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        count = optax.safe_increment(state.count)
        return updates, MagnitudePruningState(count, sparsity, masks)

    return optax.GradientTransformation(init_fn, update_fn)


def _path_name(path: tuple) -> str:
    """'Dense_0/kernel' for a ``jax.tree_util`` key path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def sparsity_report(params: optax.Params, prunable: Prunable | None = None) -> dict[str, Any]:
    """Fraction of exact zeros: ``{'overall': float, 'per_kernel': {path: float}}``.

    Counts prunable leaves only (default: ndim >= 2); ``overall`` weights kernels by size.
    """
    flags = _prunable_flags(params, prunable)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    per_kernel, zeros, total = {}, 0, 0
    for (path, leaf), flag in zip(leaves, flags, strict=True):
        if not flag:
            continue
        leaf_zeros, size = int(jnp.sum(leaf == 0)), math.prod(jnp.shape(leaf))
        per_kernel[_path_name(path)] = leaf_zeros / size if size else 0.0
        zeros, total = zeros + leaf_zeros, total + size
    return {"overall": zeros / total if total else 0.0, "per_kernel": per_kernel}


# Every field of the optional ``optimizer.pruning`` config section.
PRUNING_FIELDS = frozenset(["sparsity", "scope", "begin_step", "end_step", "frequency", "power"])


def _config_int(section: ml_collections.ConfigDict, field: str, default: int, low: int) -> int:
    """Fetch an integer field (``default`` when absent) and check ``value >= low``."""
    value = section.get(field, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(
            f"optimizer.pruning field '{field}' must be an int >= {low}, got {value!r}"
        )
    return int(value)


def _config_number(section: ml_collections.ConfigDict, field: str, default: float | None) -> float:
    """Fetch a real-number field (not a bool); range checks are the caller's."""
    value = section.get(field, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"optimizer.pruning field '{field}' must be a number, got {value!r}")
    return float(value)


def build_pruning(
    section: ml_collections.ConfigDict | dict | None,
) -> optax.GradientTransformation | None:
    """The transform for the ``optimizer.pruning`` section; None when it is absent or its
    ``sparsity`` is 0 or None (a placeholder left unset); the other fields are checked anyway.

    Fields: ``sparsity`` (final, in [0, 1)), ``scope`` ('layer' or 'global'; default
    'layer'), ``begin_step`` (default 0), ``end_step`` (default ``begin_step``: one-shot),
    ``frequency`` (updates between mask recomputations; default 100, as TF MOT) and ``power``
    (default 3). Steps count optimiser updates from 0.
    """
    if section is None:
        return None
    if not isinstance(section, ml_collections.ConfigDict | dict):
        raise ValueError(f"optimizer field 'pruning' must be a config section, got {section!r}")
    section = ml_collections.ConfigDict(section)
    reject_unknown_fields(section, PRUNING_FIELDS, "optimizer.pruning")
    sparsity = section.get("sparsity")
    sparsity = 0.0 if sparsity is None else _config_number(section, "sparsity", None)
    if not 0 <= sparsity < 1:
        raise ValueError(f"optimizer.pruning field 'sparsity' must be in [0, 1), got {sparsity!r}")
    scope = section.get("scope", "layer")
    if scope not in SCOPES:
        raise ValueError(f"optimizer.pruning field 'scope' must be one of {SCOPES}, got {scope!r}")
    begin_step = _config_int(section, "begin_step", 0, 0)
    end_step = _config_int(section, "end_step", begin_step, begin_step)
    frequency = _config_int(section, "frequency", 100, 1)
    power = _config_number(section, "power", 3)
    if not power > 0:
        raise ValueError(f"optimizer.pruning field 'power' must be > 0, got {power!r}")
    if sparsity == 0:
        return None
    schedule = polynomial_schedule(sparsity, begin_step, end_step, frequency=frequency, power=power)
    return magnitude_pruning(schedule, scope=scope)
