"""The pure-functional train state and its sharded initialisation."""

from __future__ import annotations

from collections.abc import Callable
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
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    *model_args: Any,
    **model_kwargs: Any,
) -> TrainState:
    """Builds a TrainState whose params (and, through ``tx.init``, optimiser moments) keep their
    logical-partitioning boxes, so their shardings can be read off the abstract state.

    ``model_args``/``model_kwargs`` are sample inputs the model is initialised on."""
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init(
        {"params": params_rng, "dropout": dropout_rng}, *model_args, train=False, **model_kwargs
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


InitInputs = Callable[[], tuple[tuple, dict]]


def _zeros_like(tree: Any) -> Any:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def sharded_state_initializer(
    model: nn.Module,
    tx: optax.GradientTransformation,
    init_inputs: InitInputs,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> tuple[TrainState, TrainState, Callable[[jax.Array], TrainState]]:
    """The abstract train state, its shardings and a jitted ``init(key) -> state``.

    ``init_inputs()`` returns the ``(args, kwargs)`` the model is initialised on. ``init`` is
    jitted with ``out_shardings`` derived from the logical axis names, so each device only ever
    materialises its own shard: no host holds the full model. The abstract state's leaves are
    ShapeDtypeStructs carrying their shardings (the restore target for Orbax, the argument for
    AOT lowering); the shardings tree mirrors the state (NamedSharding leaves).
    """

    def init(key):
        args, kwargs = init_inputs()
        with nn.logical_axis_rules(rules):
            return init_train_state(model, tx, key, *args, **kwargs)

    with jax.set_mesh(mesh):
        boxed = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32))
        shardings = logical_to_shardings(boxed, mesh, rules)
    jitted = jax.jit(lambda key: nn.meta.unbox(init(key)), out_shardings=shardings)

    def initialize(key: jax.Array) -> TrainState:
        """``key``: a raw uint32 [2] key (``PRNGKey``) or a typed one (``jax.random.key``)."""
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)  # the state stores raw key data
        with jax.set_mesh(mesh):
            return jitted(key)

    return abstract_state(shardings, nn.meta.unbox(boxed)), shardings, initialize


def create_sharded_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    sample_inputs: jax.ShapeDtypeStruct | jax.Array,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """Initialises the train state of a single-input model directly in its sharded layout.

    ``sample_inputs`` gives the input's shape and dtype. Returns ``(state, state_shardings)``.
    """
    sample = jax.ShapeDtypeStruct(sample_inputs.shape, sample_inputs.dtype)
    _, shardings, initialize = sharded_state_initializer(
        model, tx, lambda: ((_zeros_like(sample),), {}), mesh, rules
    )
    return initialize(rng), shardings


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
