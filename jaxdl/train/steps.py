"""Jitted train and eval steps for classification, with explicit shardings.

Steps are pure functions ``(state, batch) -> (state, metrics)``; ``ShardedStep`` compiles them with
in/out shardings (pjit semantics) and traces them under the mesh and the logical-axis rules so the
models' activation constraints take effect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from jaxdl.metrics import confusion_matrix
from jaxdl.parallel.rules import DEFAULT_RULES, Rules
from jaxdl.train.state import TrainState

Batch = dict[str, jax.Array]
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def classification_loss(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy [B] in float32, with optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_train_step(
    *,
    augment: Augment | None = None,
    label_smoothing: float = 0.0,
    microbatches: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """A train step: augment on device, forward/backward, optimiser update.

    With ``microbatches > 1`` the batch is split and gradients are accumulated in a ``lax.scan``
    before one optimiser update, so the effective batch is independent of device memory.
    Returns metrics ``loss``, ``accuracy``, ``grad_norm`` (scalars, averaged over the batch).
    """

    def train_step(state: TrainState, batch: Batch):
        step_key = jax.random.fold_in(state.rng, state.step)
        augment_key, dropout_key = jax.random.split(step_key)
        inputs, labels = batch["inputs"], batch["labels"]
        if augment is not None:
            inputs = augment(augment_key, inputs)

        def loss_and_grads(params, batch_stats, x, y, key):
            def loss_fn(p):
                logits, mutated = state.apply_fn(
                    {"params": p, "batch_stats": batch_stats},
                    x,
                    train=True,
                    rngs={"dropout": key},
                    mutable=["batch_stats"],
                )
                loss = classification_loss(logits, y, label_smoothing).mean()
                return loss, (logits, mutated.get("batch_stats", batch_stats))

            (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return grads, loss, jnp.mean(jnp.argmax(logits, -1) == y), stats

        if microbatches == 1:
            grads, loss, accuracy, batch_stats = loss_and_grads(
                state.params, state.batch_stats, inputs, labels, dropout_key
            )
        else:
            grads, loss, accuracy, batch_stats = _accumulate(
                loss_and_grads, state, inputs, labels, dropout_key, microbatches
            )
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return train_step


def _accumulate(loss_and_grads, state, inputs, labels, dropout_key, microbatches):
    """Mean gradients/metrics over ``microbatches`` slices of the batch (a sequential scan)."""
    if inputs.shape[0] % microbatches:
        raise ValueError(
            f"batch size {inputs.shape[0]} is not divisible by microbatches={microbatches}"
        )
    split = lambda x: x.reshape(microbatches, -1, *x.shape[1:])  # noqa: E731
    keys = jax.random.split(dropout_key, microbatches)

    def body(carry, xs):
        grads_sum, loss_sum, acc_sum, batch_stats = carry
        micro_inputs, micro_labels, key = xs
        grads, loss, acc, batch_stats = loss_and_grads(
            state.params, batch_stats, micro_inputs, micro_labels, key
        )
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return (grads_sum, loss_sum + loss, acc_sum + acc, batch_stats), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, jnp.zeros(()), jnp.zeros(()), state.batch_stats)
    (grads, loss, acc, batch_stats), _ = jax.lax.scan(
        body, init, (split(inputs), split(labels), keys)
    )
    scale = 1.0 / microbatches
    return jax.tree.map(lambda g: g * scale, grads), loss * scale, acc * scale, batch_stats


def make_eval_step(num_classes: int) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """An eval step returning sums over the real (mask=1) examples of a padded batch:
    ``loss_sum``, ``correct``, ``count`` and the ``confusion`` matrix [C, C]."""

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits = state.apply_fn(variables, batch["inputs"], train=False)
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["labels"]
        predictions = jnp.argmax(logits, -1)
        return {
            "loss_sum": jnp.sum(classification_loss(logits, labels) * mask),
            "correct": jnp.sum((predictions == labels) * mask),
            "count": jnp.sum(mask),
            "confusion": confusion_matrix(labels, predictions, num_classes, mask=mask),
        }

    return eval_step


class ShardedStep:
    """A step function compiled with explicit shardings and traced under the mesh and rules."""

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
        replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
        out_shardings = (state_shardings, replicated) if returns_state else replicated
        self._jitted = jax.jit(
            fn,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=out_shardings,
            donate_argnums=(0,) if returns_state else (),
        )

    def __call__(self, state, batch):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._jitted(state, batch)

    def lower(self, state, batch):
        """Lowers without running (for AOT compilation, HLO and memory analysis)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._jitted.lower(state, batch)
