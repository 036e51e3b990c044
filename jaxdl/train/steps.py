"""Jitted train and eval steps, generic over the task, with explicit shardings.

Steps are pure functions ``(state, batch) -> (state, metrics)`` / ``(state, batch) -> sums``. The
task
supplies the loss and the evaluation statistics; the step owns what is common to every task:
RNG derivation, on-device batch preparation, mutable collections (BatchNorm statistics), gradient
accumulation over micro-batches and the optimiser update. ``ShardedStep`` compiles them with
in/out shardings (pjit semantics) and buffer donation, traced under the mesh and logical-axis rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from jaxdl.parallel.gradients import CompilerReduction, GradientReduction
from jaxdl.parallel.rules import DEFAULT_RULES, Rules
from jaxdl.tasks import ImageClassification, Task
from jaxdl.train.state import TrainState

Batch = dict[str, jax.Array]

# Collections a forward pass in training mode may update (BatchNorm running statistics).
MUTABLE_COLLECTIONS = ("batch_stats",)


def model_variables(state: TrainState, params: Any | None = None) -> dict[str, Any]:
    """The variables dict ``apply`` takes: params plus the non-trainable collections."""
    variables = {"params": state.params if params is None else params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def eval_forward(state: TrainState) -> Callable[..., Any]:
    """The model in inference mode, bound to ``state``'s variables: what tasks' ``predict`` and
    ``eval_sums`` call."""
    variables = model_variables(state)
    return lambda *args, **kwargs: state.apply_fn(variables, *args, train=False, **kwargs)


def make_train_step(
    task: Task | None = None,
    *,
    microbatches: int = 1,
    skip_nonfinite: bool = False,
    reduction: GradientReduction | None = None,
    freeze_batch_stats: bool = False,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A train step for ``task`` (default: classification of ``inputs`` by ``labels``).

    The step key is ``fold_in(state.rng, state.step)``, split into the batch-preparation
    (augmentation) key and the dropout key, so a resumed run draws the same randomness. With
    ``microbatches > 1`` the batch is split and gradients are accumulated in a ``lax.scan`` before
    one optimiser update; the micro-batches' mean losses are averaged with equal weights, which
    equals the full-batch loss when they hold equally many targets (always for classification;
    for language modelling when padding is spread evenly). Returns ``loss``, the task's aux
    metrics, ``grad_norm`` and ``nonfinite`` (the loss or gradient norm is not finite).

    With ``skip_nonfinite`` a non-finite step is skipped on device: params, optimiser state and
    BatchNorm statistics keep their values (only ``step`` advances, as the data iterator did), so
    no NaN enters the state and deciding what to do about it needs no host sync. It is off for
    ``train.on_nonfinite='stop'`` (nothing after a divergence is saved anyway) because the
    select on one global flag keeps XLA from combining the gradient all-reduces of unrolled
    layers (41 collectives instead of 2 in tests/test_aot.py). ``lr_scale`` multiplies the
    optimiser's updates (the learning rate, for every optax optimiser): rollbacks lower it
    without touching the optimiser state's structure.

    ``reduction`` is the hook that sums gradients over data-parallel devices
    (``jaxdl.parallel.gradients``; ``gradient_reduction(mesh, ...)`` picks it for a mesh). The
    default leaves the reductions to XLA, which is what one device needs.

    ``freeze_batch_stats`` (``transfer.freeze_batch_norm``) keeps BatchNorm's running statistics
    as they are: the step's batch statistics still normalise the forward pass, but none is
    stored.
    """
    task = task or ImageClassification()
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")

    reduce = reduction or CompilerReduction()

    def train_step(state: TrainState, batch: Batch, lr_scale: jax.Array | float = 1.0):
        step_key = jax.random.fold_in(state.rng, state.step)
        prepare_key, dropout_key = jax.random.split(step_key)
        batch = task.prepare_train_batch(prepare_key, batch)

        def weighted_grads(params, batch_stats, micro_batch, key, sync):
            """Gradients and metrics of this device's share of the global weighted mean loss."""
            weight = task.loss_weight(micro_batch)
            total = sync.global_sum(weight)
            share = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 0.0)

            def loss_fn(p):
                mutated = {}

                def forward(*args, **kwargs):
                    variables = {"params": p}
                    if batch_stats:
                        variables["batch_stats"] = batch_stats
                    out, updates = state.apply_fn(
                        variables,
                        *args,
                        train=True,
                        rngs={"dropout": key},
                        mutable=list(MUTABLE_COLLECTIONS),
                        **kwargs,
                    )
                    mutated.update(updates)
                    return out

                loss, aux = task.loss(forward, micro_batch)
                return loss * share, (aux, mutated.get("batch_stats", batch_stats))

            (loss, (aux, stats)), grads = jax.value_and_grad(
                sync.checkpoint(loss_fn), has_aux=True
            )(params)
            metrics = {"loss": loss, **jax.tree.map(lambda m: m * share, aux)}
            return grads, metrics, stats

        def local_grads(params, batch_stats, local_batch, key, sync):
            if microbatches == 1:
                return weighted_grads(params, batch_stats, local_batch, key, sync)
            return _accumulate(
                weighted_grads, params, batch_stats, local_batch, key, sync, microbatches
            )

        grads, metrics, batch_stats = reduce(
            local_grads, state.params, state.batch_stats, batch, dropout_key
        )
        grad_norm = optax.tree.norm(grads)
        nonfinite = ~(jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm))
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * jnp.asarray(lr_scale, u.dtype), updates)

        def keep(old, new):  # the old values where the step is non-finite
            if not skip_nonfinite:
                return new
            return jax.tree.map(lambda o, n: jnp.where(nonfinite, o, n), old, new)

        new_state = state.replace(
            step=state.step + 1,
            params=keep(state.params, optax.apply_updates(state.params, updates)),
            opt_state=keep(state.opt_state, opt_state),
            batch_stats=state.batch_stats
            if freeze_batch_stats
            else keep(state.batch_stats, batch_stats),
        )
        return new_state, {**metrics, "grad_norm": grad_norm, "nonfinite": nonfinite}

    return train_step


def _accumulate(weighted_grads, params, batch_stats, batch, key, sync, microbatches):
    """Mean gradients/metrics over ``microbatches`` slices of the batch (a sequential scan)."""
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    if batch_size % microbatches:
        raise ValueError(f"batch size {batch_size} is not divisible by microbatches={microbatches}")
    split = lambda x: x.reshape(microbatches, -1, *x.shape[1:])  # noqa: E731
    keys = jax.random.split(key, microbatches)

    def body(carry, xs):
        grads_sum, metrics_sum, stats = carry
        micro_batch, micro_key = xs
        grads, metrics, stats = weighted_grads(params, stats, micro_batch, micro_key, sync)
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        metrics_sum = jax.tree.map(jnp.add, metrics_sum, metrics)
        return (grads_sum, metrics_sum, stats), None

    # The metric names and shapes of one micro-batch, to start the sums at zero.
    first = jax.tree.map(lambda x: x[0], jax.tree.map(split, batch))
    metric_shapes = jax.eval_shape(
        lambda b: weighted_grads(params, batch_stats, b, keys[0], sync)[1], first
    )
    zeros = jax.tree.map(jnp.zeros_like, params)
    metric_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
    init = (zeros, metric_zeros, batch_stats)
    (grads, metrics, batch_stats), _ = jax.lax.scan(body, init, (jax.tree.map(split, batch), keys))
    scale = 1.0 / microbatches
    return (
        jax.tree.map(lambda g: g * scale, grads),
        jax.tree.map(lambda m: m * scale, metrics),
        batch_stats,
    )


def make_eval_step(task: Task | None = None) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """An eval step: ``task.eval_sums`` of a padded batch (``mask`` marks real examples)."""
    task = task or ImageClassification()

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        return task.eval_sums(eval_forward(state), batch)

    return eval_step


class ShardedStep:
    """A step function compiled with explicit shardings and traced under the mesh and rules.

    A train step (``returns_state``) also takes the learning-rate scale, a replicated float32
    scalar: changing it never recompiles.
    """

    def __init__(
        self,
        fn: Callable,
        mesh: Mesh,
        state_shardings: Any,
        batch_sharding: NamedSharding,
        *,
        returns_state: bool,
        rules: Rules = DEFAULT_RULES,
    ):
        self.mesh = mesh
        self.rules = rules
        self.returns_state = returns_state
        replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._scale_sharding = replicated
        self._scale: tuple[float, jax.Array] | None = None  # last (value, replicated array)
        out_shardings = (state_shardings, replicated) if returns_state else replicated
        in_shardings = (state_shardings, batch_sharding)
        if returns_state:
            in_shardings += (replicated,)  # lr_scale
        self._jitted = jax.jit(
            fn,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            donate_argnums=(0,) if returns_state else (),
        )

    def _args(self, state, batch, lr_scale) -> tuple:
        return (state, batch, lr_scale) if self.returns_state else (state, batch)

    def __call__(self, state, batch, lr_scale: float = 1.0):
        # The scale goes in as ``lower`` declares it (a replicated array), so a step compiled
        # ahead of time by ``lower(...).compile()`` is the one called: no second compile.
        if self._scale is None or self._scale[0] != lr_scale:  # placed once per value
            self._scale = (lr_scale, jax.device_put(np.float32(lr_scale), self._scale_sharding))
        scale = self._scale[1]
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._jitted(*self._args(state, batch, scale))

    def lower(self, state, batch):
        """Lowers without running (for AOT compilation, HLO and memory analysis)."""
        scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=self._scale_sharding)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._jitted.lower(*self._args(state, batch, scale))
