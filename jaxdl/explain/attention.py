"""Attention maps of Transformer models: every layer's per-head attention probabilities.

The attention layers sow their probabilities into the ``attention_weights`` collection when a
caller makes it mutable (``jaxdl.layers.attention``); nothing else changes, and without it no
probabilities are computed. A scanned layer stack is unrolled first (same values), so each
layer's weights come out under its own name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.explain.classifier import plain_model
from jaxdl.export.inference import unroll_scanned_layers
from jaxdl.layers.attention import ATTENTION_WEIGHTS


def _layer_key(path: tuple[str, ...]) -> tuple:
    """Sort key: module paths in layer order (layers_2 before layers_10)."""
    return tuple(
        (0, int(m.group(1)), part) if (m := re.fullmatch(r".*_(\d+)", part)) else (1, 0, part)
        for part in path
    )


def _collect(tree: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], jax.Array]:
    """{module path: weights} for every sown ``weights`` entry in ``tree``."""
    found = {}
    for name, value in tree.items():
        if name == "weights" and isinstance(value, tuple):
            found[path] = value[0]
        elif isinstance(value, Mapping):
            found.update(_collect(value, (*path, name)))
    return found


@functools.partial(jax.jit, static_argnums=0)
def _sown_weights(model: nn.Module, variables: Any, args: tuple, kwargs: dict) -> Any:
    """The ``attention_weights`` collection of one inference-mode forward pass."""
    _, state = model.apply(variables, *args, train=False, mutable=[ATTENTION_WEIGHTS], **kwargs)
    return state.get(ATTENTION_WEIGHTS, {})


def attention_maps_by_layer(
    model: nn.Module, variables: Any, *args: Any, **kwargs: Any
) -> dict[str, jax.Array]:
    """{attention module path ('encoder/layers_0/attention'): probabilities float32 [B, heads,
    queries, keys]} of ``model.apply(variables, *args, train=False, **kwargs)``, in layer order.
    Rows sum to 1 and masked keys (padding, the future under causal attention) get 0."""
    model, variables = unroll_scanned_layers(plain_model(model), nn.meta.unbox(variables))
    found = _collect(_sown_weights(model, variables, args, kwargs))
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention layers to read weights from")
    return {"/".join(path): found[path] for path in sorted(found, key=_layer_key)}


def attention_maps(model: nn.Module, variables: Any, *args: Any, **kwargs: Any) -> jax.Array:
    """All layers' attention probabilities stacked: float32 [layers, B, heads, queries, keys]
    (see ``attention_maps_by_layer``; every layer must have the same shape)."""
    return jnp.stack(list(attention_maps_by_layer(model, variables, *args, **kwargs).values()))
