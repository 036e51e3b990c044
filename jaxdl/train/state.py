"""The pure-functional train state and its sharded initialisation."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from jaxdl.parallel.rules import DEFAULT_RULES, Rules, logical_to_shardings


class TrainState(train_state.TrainState):
    """Params, optimiser state and step (from Flax) plus BatchNorm statistics and the step RNG.

    ``rng`` is a raw uint32 key so checkpoints stay plain arrays; each step derives its keys with
    ``fold_in(rng, step)``, which makes a resumed run draw exactly the same randomness.
    """

    batch_stats: Any = None
    rng: jax.Array | None = None


def init_train_state(
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, sample_inputs: jax.Array
) -> TrainState:
    """Builds a TrainState whose params (and, through ``tx.init``, optimiser moments) keep their
    logical-partitioning boxes, so their shardings can be read off the abstract state."""
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init(
        {"params": params_rng, "dropout": dropout_rng}, sample_inputs, train=False
    )
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        batch_stats=variables.get("batch_stats", {}),
        rng=state_rng,
    )


def create_sharded_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    sample_inputs: jax.ShapeDtypeStruct | jax.Array,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """Initialises the train state directly in its sharded layout.

    The init function is jitted with ``out_shardings`` derived from the logical axis names, so each
    device only ever materialises its own shard: no host holds the full model. Returns
    ``(state, state_shardings)``; the shardings tree mirrors the state (NamedSharding leaves).
    """
    sample = jax.ShapeDtypeStruct(sample_inputs.shape, sample_inputs.dtype)

    def init(key):
        with nn.logical_axis_rules(rules):
            return init_train_state(model, tx, key, jnp.zeros(sample.shape, sample.dtype))

    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(init, rng)
        shardings = logical_to_shardings(abstract, mesh, rules)
        state = jax.jit(lambda key: nn.meta.unbox(init(key)), out_shardings=shardings)(rng)
    return state, shardings


def abstract_state(state_shardings: TrainState, state: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying the target shardings: the restore target for Orbax."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        state,
        state_shardings,
    )


def count_params(params: Any) -> int:
    """Number of scalar parameters in a (possibly boxed) params tree."""
    return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(params)))
