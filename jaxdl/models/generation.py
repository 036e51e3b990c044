"""Autoregressive generation from a ``TransformerLM`` with key/value caches.

Greedy decoding, sampling (temperature, top-k, top-p) and beam search, each one jitted program:
the prompt fills the caches in one call (prefill), then ``lax.scan`` runs one cached step per
new token over caches of a fixed size (prompt + new tokens). The caches live in Flax's 'cache'
collection (``decode=True``) and carry logical axis names ('batch', 'length', kv heads, 'kv'),
so under ``jax.set_mesh`` and ``nn.logical_axis_rules`` they are sharded like the activations
and generation runs on the training mesh.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.transformer import TransformerLM


def _is_boxed(leaf: Any) -> bool:
    return isinstance(leaf, nn.LogicallyPartitioned)


def _abstract_cache(model: TransformerLM, batch_size: int, length: int) -> Any:
    """The cache collection's shapes and logical names (boxed), from an abstract ``init``."""
    tokens = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)

    def init(tokens: jax.Array) -> Any:
        variables = model.init(
            jax.random.key(0), tokens, positions=tokens, train=False, decode=True
        )
        return variables["cache"]

    return jax.eval_shape(init, tokens)


def init_cache(model: TransformerLM, batch_size: int, length: int) -> Any:
    """Zeroed key/value caches for ``batch_size`` rows of up to ``length`` tokens, each
    constrained to its logical sharding (a no-op outside a mesh and rules context)."""

    def zeros(leaf: Any) -> jax.Array:
        if _is_boxed(leaf):
            array = jnp.zeros(leaf.value.shape, leaf.value.dtype)
            return nn.with_logical_constraint(array, leaf.names)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree.map(zeros, _abstract_cache(model, batch_size, length), is_leaf=_is_boxed)


def _forward(
    model: TransformerLM, params: Any, cache: Any, tokens: jax.Array, start: jax.Array | int
) -> tuple[jax.Array, Any]:
    """Last-position float32 logits [B, vocab] of ``tokens`` [B, L] placed at positions
    start..start+L-1 after the cached ones, and the updated cache."""
    positions = start + jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, updated = model.apply(
        {"params": params, "cache": cache},
        tokens,
        positions=positions,
        train=False,
        decode=True,
        mutable=["cache"],
    )
    return logits[:, -1].astype(jnp.float32), updated["cache"]


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """``logits`` [..., vocab] with all but the ``k`` largest of each row set to -inf (a tie
    with the k-th largest is kept)."""
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filtering (Holtzman et al. 2020): keep, per row of ``logits`` [..., vocab], the
    smallest set of most probable tokens whose probability reaches ``p``; the rest get -inf."""
    descending = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    # Probability of the strictly more probable tokens (an exclusive cumulative sum).
    before = jnp.cumsum(probs, axis=-1)
    before = jnp.concatenate([jnp.zeros_like(before[..., :1]), before[..., :-1]], axis=-1)
    cutoff = jnp.min(jnp.where(before < p, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def _sample(
    logits: jax.Array,
    key: jax.Array,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> jax.Array:
    """Next tokens [B] from ``logits`` [B, vocab]: argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted by top-k, then top-p."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(key, logits)


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p")
)
def _generate(
    model: TransformerLM,
    params: Any,
    prompt: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> jax.Array:
    batch, prompt_len = prompt.shape
    sample = functools.partial(_sample, temperature=temperature, top_k=top_k, top_p=top_p)
    cache = init_cache(model, batch, prompt_len + max_new_tokens)
    logits, cache = _forward(model, params, cache, prompt, 0)
    first = sample(logits, jax.random.fold_in(key, 0))

    def step(carry: tuple[Any, jax.Array], index: jax.Array) -> tuple[Any, jax.Array]:
        cache, token = carry
        # The token drawn at step index - 1 sits at position prompt_len + index - 1.
        logits, cache = _forward(model, params, cache, token[:, None], prompt_len + index - 1)
        token = sample(logits, jax.random.fold_in(key, index))
        return (cache, token), token

    _, rest = jax.lax.scan(step, (cache, first), jnp.arange(1, max_new_tokens))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def _check_request(model: TransformerLM, prompt: jax.Array, max_new_tokens: int) -> None:
    """Raise unless ``prompt`` is int [B, P>=1] and P + ``max_new_tokens`` fits max_len."""
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [batch, length >= 1], got shape {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise TypeError(f"prompt must hold integer tokens, got dtype {prompt.dtype}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt.shape[1] + max_new_tokens > model.max_len:
        raise ValueError(
            f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} exceeds the "
            f"model's max_len={model.max_len}"
        )


def generate(
    model: TransformerLM,
    params: Any,
    prompt: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Continue each row of ``prompt`` [B, P] (int, unpadded) by ``max_new_tokens`` tokens.

    ``temperature`` 0 (the default) decodes greedily; above 0 it samples from
    softmax(logits / temperature), optionally restricted to the ``top_k`` most probable
    tokens and then to the nucleus of probability ``top_p``, drawing with ``key`` (the same
    key gives the same tokens). ``params`` are the model's (boxed or not). Returns the new
    tokens [B, max_new_tokens].
    """
    prompt = jnp.asarray(prompt)
    _check_request(model, prompt, max_new_tokens)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= model.vocab_size:
        raise ValueError(f"top_k must be in [1, {model.vocab_size}], got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key")
    return _generate(
        model,
        params,
        prompt,
        jax.random.key(0) if key is None else key,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
    )


def _batch_axis(leaf: Any) -> int | None:
    """The axis named 'batch' of a boxed cache leaf (None: the leaf has none, e.g. an index)."""
    names = leaf.names if _is_boxed(leaf) else ()
    return names.index("batch") if "batch" in names else None


def _take_rows(cache: Any, abstract: Any, rows: jax.Array) -> Any:
    """Every cache leaf's batch rows ``rows`` (its batch axis found by its logical name)."""

    def take(leaf: jax.Array, meta: Any) -> jax.Array:
        axis = _batch_axis(meta)
        return leaf if axis is None else jnp.take(leaf, rows, axis=axis)

    return jax.tree.map(take, cache, abstract)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "beams"))
def _beam_search(
    model: TransformerLM, params: Any, prompt: jax.Array, *, max_new_tokens: int, beams: int
) -> tuple[jax.Array, jax.Array]:
    batch, prompt_len = prompt.shape
    length = prompt_len + max_new_tokens
    logits, cache = _forward(model, params, init_cache(model, batch, length), prompt, 0)
    # Every beam starts as a copy of its prompt; all but the first start at -inf so that the
    # first step expands only one of the identical copies.
    abstract = _abstract_cache(model, batch, length)
    cache = _take_rows(cache, abstract, jnp.repeat(jnp.arange(batch), beams))
    log_probs = jnp.repeat(jax.nn.log_softmax(logits), beams, axis=0)
    scores = jnp.tile(jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf), (batch, 1))
    sequences = jnp.zeros((batch, beams, max_new_tokens), jnp.int32)

    def extend(scores, log_probs, sequences, index):
        """Keep the ``beams`` best one-token extensions of every beam."""
        candidates = (scores[..., None] + log_probs.reshape(batch, beams, -1)).reshape(batch, -1)
        scores, flat = jax.lax.top_k(candidates, beams)
        origin, tokens = jnp.divmod(flat, model.vocab_size)
        sequences = jnp.take_along_axis(sequences, origin[..., None], axis=1)
        sequences = sequences.at[:, :, index].set(tokens)
        return scores, origin, tokens, sequences

    def step(carry, index):
        cache, scores, origin, tokens, sequences = carry
        rows = (jnp.arange(batch)[:, None] * beams + origin).reshape(-1)
        cache = _take_rows(cache, abstract, rows)
        logits, cache = _forward(
            model, params, cache, tokens.reshape(-1, 1), prompt_len + index - 1
        )
        scores, origin, tokens, sequences = extend(
            scores, jax.nn.log_softmax(logits), sequences, index
        )
        return (cache, scores, origin, tokens, sequences), None

    carry = (cache, *extend(scores, log_probs, sequences, 0))
    (_, scores, _, _, sequences), _ = jax.lax.scan(step, carry, jnp.arange(1, max_new_tokens))
    return sequences[:, 0], scores[:, 0]


def beam_search(
    model: TransformerLM,
    params: Any,
    prompt: jax.Array,
    *,
    max_new_tokens: int,
    beams: int,
) -> tuple[jax.Array, jax.Array]:
    """Beam search continuation of each row of ``prompt`` [B, P] (int, unpadded).

    Keeps the ``beams`` highest-scoring continuations (score = sum of the new tokens'
    log-probabilities; all have ``max_new_tokens`` tokens, so no length normalisation) and
    returns the best one per row, [B, max_new_tokens], with its score [B]. One beam is greedy
    decoding.
    """
    prompt = jnp.asarray(prompt)
    _check_request(model, prompt, max_new_tokens)
    if beams < 1:
        raise ValueError(f"beams must be >= 1, got {beams}")
    return _beam_search(model, params, prompt, max_new_tokens=max_new_tokens, beams=beams)
