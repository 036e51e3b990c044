"""One-shot magnitude pruning of a trained model, without fine-tuning.

``one_shot_prune`` zeroes the smallest-magnitude kernel weights of a state with
``magnitude_masks`` (same ranking, rounding and tie rule as the ``optimizer.pruning`` transform)
and leaves everything else — biases, norm parameters, BatchNorm statistics, optimiser state — as
it was::

    state = restore_trained_state(experiment, "runs/digits")  # jaxdl.train.restore
    pruned = one_shot_prune(state, 0.9, scope="global")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

from jaxdl.optim.pruning import Prunable, magnitude_masks

if TYPE_CHECKING:
    from jaxdl.train.state import TrainState


def prune_params(
    params: optax.Params, sparsity: float, scope: str = "layer", prunable: Prunable | None = None
) -> optax.Params:
    """``params`` with ``sparsity`` of the prunable kernels set to exactly zero (see
    ``magnitude_masks`` for ``scope`` and ``prunable``)."""
    masks = magnitude_masks(params, sparsity, scope, prunable)
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def one_shot_prune(
    state: TrainState, sparsity: float, scope: str = "layer", prunable: Prunable | None = None
) -> TrainState:
    """``state`` with its params pruned by ``prune_params``; nothing else changes."""
    return state.replace(params=prune_params(state.params, sparsity, scope, prunable))
