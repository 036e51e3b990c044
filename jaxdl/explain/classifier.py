"""Image classifiers as jit-friendly callables for the explanation and attack functions.

Attributions and attacks are jitted once per model: a ``Classifier`` is a pytree whose leaves are
the variables (traced, not baked into the graph as constants) and whose static part is the flax
module, so calling a jitted function again with the same model reuses the compiled graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.export.inference import InferenceFunction

LogitsFn = Callable[[jax.Array], jax.Array]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Classifier:
    """``model`` in inference mode with ``variables``: images [B, H, W, C] -> float32 logits
    [B, classes]. Examples must not interact (true in inference mode), so the gradient of a
    summed score is each example's own gradient."""

    model: nn.Module
    variables: Any

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.model.apply(self.variables, images, train=False).astype(jnp.float32)

    def tree_flatten(self) -> tuple[tuple[Any], nn.Module]:
        return (self.variables,), self.model

    @classmethod
    def tree_unflatten(cls, model: nn.Module, children: tuple[Any]) -> Classifier:
        return cls(model, children[0])


def plain_model(model: nn.Module) -> nn.Module:
    """``model`` without rematerialisation (same parameters and values): explanations never
    train, and flax's lifted remat does not mix with the interceptors Grad-CAM uses."""
    if getattr(model, "remat_policy", "none") != "none":
        return model.clone(remat_policy="none")
    return model


def classifier(model: nn.Module, variables: Any) -> Classifier:
    """The image classifier ``model`` with ``variables`` (params plus batch stats; logical
    partitioning boxes are removed)."""
    return Classifier(plain_model(model), nn.meta.unbox(variables))


def from_inference(inference: InferenceFunction) -> Classifier:
    """The classifier behind an ``InferenceFunction`` (its model and host variables)."""
    return classifier(inference.model, inference.variables)


def as_logits_fn(logits_fn: LogitsFn) -> LogitsFn:
    """``logits_fn`` as something ``jax.jit`` can take as an argument: pytrees (``Classifier``,
    ``jax.tree_util.Partial``) as they are, plain functions wrapped in a ``Partial`` (compiled
    once per function object)."""
    if isinstance(logits_fn, Classifier | jax.tree_util.Partial):
        return logits_fn
    return jax.tree_util.Partial(logits_fn)


def class_scores(logits_fn: LogitsFn, inputs: jax.Array, targets: jax.Array | None) -> jax.Array:
    """The logit [B] of each example's target class (its predicted class when None)."""
    logits = logits_fn(inputs)
    if targets is None:
        targets = jnp.argmax(logits, axis=-1)
    return jnp.take_along_axis(logits, jnp.asarray(targets)[:, None], axis=-1)[:, 0]
