"""Token attributions of text classifiers: gradient x input and integrated gradients.

Both explain the logit of a target class (default: the predicted one) with respect to the
output of the token-embedding lookup (the ``token_embed`` module of the Transformer and RNN
classifiers), reduced to one score per token by summing over the embedding dimension; padding
positions get exactly 0. The lookup's output is intercepted (``flax.linen.intercept_methods``)
and replaced by the embeddings being explained, so neither the model nor its parameter tree
changes. Position (and token-type) embeddings are added after the lookup, as in training.

Integrated gradients interpolate the real tokens' embeddings from a baseline: ``'zero'`` (the
default: the zero vector, Sundararajan et al. 2017's text baseline) or ``'pad'`` (the pad
token's embedding, which masked padding leaves near its initialisation); padding positions keep
their own embedding along the path, so the attributions of the real tokens sum to
f(x) - f(baseline) up to the quadrature error (completeness).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.explain.classifier import plain_model

TEXT_BASELINES = ("zero", "pad")
EMBEDDING_LAYER = "token_embed"


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class TextClassifier:
    """``model`` in inference mode with ``variables``: (tokens [B, T], padding mask [B, T],
    optional replacement embeddings [B, T, E]) -> (float32 logits [B, classes], float32 output
    of the ``layer`` lookup [B, T, E], before any replacement). A pytree whose leaves are the
    variables, so jitted attributions compile once per model."""

    model: nn.Module
    variables: Any
    layer: str = EMBEDDING_LAYER

    def __call__(
        self, tokens: jax.Array, padding_mask: jax.Array, embeddings: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        path = tuple(part for part in self.layer.split("/") if part)
        captured: list[jax.Array] = []

        def intercept(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path == path and not captured:
                captured.append(out)
                if embeddings is not None:
                    out = embeddings.astype(out.dtype)
            return out

        with nn.intercept_methods(intercept):
            logits = self.model.apply(self.variables, tokens, padding_mask, train=False)
        if not captured:
            raise ValueError(f"{type(self.model).__name__} has no {self.layer!r} module to explain")
        return logits.astype(jnp.float32), captured[0].astype(jnp.float32)

    def tree_flatten(self) -> tuple[tuple[Any], tuple[nn.Module, str]]:
        return (self.variables,), (self.model, self.layer)

    @classmethod
    def tree_unflatten(cls, static: tuple[nn.Module, str], children: tuple[Any]) -> TextClassifier:
        return cls(static[0], children[0], static[1])


def text_classifier(
    model: nn.Module, variables: Any, layer: str = EMBEDDING_LAYER
) -> TextClassifier:
    """The text classifier ``model`` with ``variables`` (logical partitioning boxes removed)."""
    return TextClassifier(plain_model(model), nn.meta.unbox(variables), layer)


def _score(model: TextClassifier, tokens, mask, embeddings, targets) -> jax.Array:
    logits, _ = model(tokens, mask, embeddings)
    return jnp.take_along_axis(logits, targets[:, None], axis=-1).sum()


def _inputs(model: TextClassifier, tokens, mask, targets):
    """(target logits [B], embeddings [B, T, E], targets [B]: the given ones or the predicted
    classes)."""
    logits, embeddings = model(tokens, mask)
    if targets is None:
        targets = jnp.argmax(logits, axis=-1)
    targets = jnp.asarray(targets, jnp.int32)
    return jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0], embeddings, targets


def _baseline(model: TextClassifier, tokens, mask, embeddings, use_pad, pad_id):
    """The baseline embeddings: the pad token's (``use_pad``) or zeros at real tokens, the
    input's own at padding."""
    _, pad = model(jnp.full_like(tokens, pad_id), mask)
    base = jnp.where(use_pad, pad, jnp.zeros_like(pad))
    return jnp.where(mask[..., None], base, embeddings)


@jax.jit
def _gradient_x_input(model, tokens, mask, targets):
    _, embeddings, targets = _inputs(model, tokens, mask, targets)
    grads = jax.grad(_score, argnums=3)(model, tokens, mask, embeddings, targets)
    return jnp.where(mask, (grads * embeddings).sum(-1), 0.0)


@functools.partial(jax.jit, static_argnames=("steps",))
def _integrated_gradients(model, tokens, mask, targets, use_pad, pad_id, steps):
    score, embeddings, targets = _inputs(model, tokens, mask, targets)
    base = _baseline(model, tokens, mask, embeddings, use_pad, pad_id)
    delta = embeddings - base
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    # Trapezoid weights: the end points count half.
    weights = jnp.ones(steps + 1).at[0].set(0.5).at[-1].set(0.5) / steps
    gradient = jax.grad(_score, argnums=3)

    def add(total, alpha_weight):
        alpha, weight = alpha_weight
        step = gradient(model, tokens, mask, base + alpha * delta, targets)
        return total + weight * step, None

    total, _ = jax.lax.scan(add, jnp.zeros_like(embeddings), (alphas, weights))
    base_logits, _ = model(tokens, mask, base)
    base_score = jnp.take_along_axis(base_logits, targets[:, None], axis=-1)[:, 0]
    return jnp.where(mask, (delta * total).sum(-1), 0.0), score - base_score


def _mask(tokens: Any, padding_mask: Any, pad_id: int) -> tuple[jax.Array, jax.Array]:
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = tokens != pad_id if padding_mask is None else jnp.asarray(padding_mask).astype(bool)
    return tokens, mask


def token_gradient_x_input(
    model: TextClassifier,
    tokens: Any,
    padding_mask: Any = None,
    targets: Any = None,
    *,
    pad_id: int = 0,
) -> jax.Array:
    """Gradient x input per token: float32 [B, T], sum over the embedding dimension of the
    target logit's gradient w.r.t. each token's embedding times that embedding; 0 at padding
    (``padding_mask`` False, default ``tokens == pad_id``)."""
    tokens, mask = _mask(tokens, padding_mask, pad_id)
    return _gradient_x_input(model, tokens, mask, targets)


def token_integrated_gradients(
    model: TextClassifier,
    tokens: Any,
    padding_mask: Any = None,
    targets: Any = None,
    *,
    baseline: str = "zero",
    steps: int = 64,
    pad_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Integrated gradients per token and the completeness target: (float32 [B, T], float32
    [B]). Per token: (embedding - ``baseline``) times the path integral of the target logit's
    gradient (trapezoid rule over ``steps`` intervals), summed over the embedding dimension;
    0 at padding. Per example: f(x) - f(baseline), what the tokens' scores sum to up to the
    quadrature error."""
    if steps < 1:
        raise ValueError(f"integrated gradients need steps >= 1, got {steps}")
    if baseline not in TEXT_BASELINES:
        raise ValueError(f"baseline must be one of {list(TEXT_BASELINES)}, got {baseline!r}")
    tokens, mask = _mask(tokens, padding_mask, pad_id)
    use_pad = jnp.asarray(baseline == "pad")
    return _integrated_gradients(model, tokens, mask, targets, use_pad, pad_id, steps)


def _colour(score: float, scale: float) -> str:
    """Red for positive, blue for negative attribution, opacity by magnitude."""
    strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    rgb = "214, 39, 40" if score >= 0 else "31, 119, 180"
    return f"rgba({rgb}, {strength:.3f})"


def render_token_html(
    examples: Sequence[tuple[str, Sequence[str], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "token attributions",
) -> Path:
    """Write an HTML page with one line per example (heading, tokens): each token's background
    is red for positive, blue for negative attribution, opaque at the example's largest
    magnitude; hovering shows the score. Returns the path written."""
    rows = []
    for heading, tokens, scores in examples:
        if len(tokens) != len(scores):
            raise ValueError(f"{len(tokens)} tokens but {len(scores)} scores")
        scale = max((abs(s) for s in scores), default=0.0)
        spans = "".join(
            f'<span title="{s:+.4g}" style="background:{_colour(s, scale)}">'
            f"{html.escape(str(t))}</span>"
            for t, s in zip(tokens, scores, strict=True)
        )
        rows.append(f"<h3>{html.escape(heading)}</h3>\n<p class='tokens'>{spans}</p>")
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".tokens span{padding:0.1em 0.15em;margin:0 1px;border-radius:3px;line-height:2}"
        f"</style></head><body>\n<h2>{html.escape(title)}</h2>\n"
        "<p>red: raises the explained class's logit, blue: lowers it</p>\n"
        + "\n".join(rows)
        + "\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
