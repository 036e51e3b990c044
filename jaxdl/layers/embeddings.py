"""Token and position embeddings with logically named tables."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

TOKEN_TABLE_AXES = ("vocab", "embed")
# Position tables get their own name ('pos', not 'length'): 'length' shards activations over the
# 'sequence' mesh axis, whereas a position table is small and stays replicated.
POSITION_TABLE_AXES = ("pos", "embed")
# Token-type (segment) tables, e.g. BERT's 2 rows: tiny, so replicated ('token_types' -> None).
TOKEN_TYPE_TABLE_AXES = ("token_types", "embed")
EMBED_ACTIVATION_AXES = ("batch", "length", "embed")

# GPT-2's initialiser for token and position tables.
embedding_normal_init = nn.initializers.normal(stddev=0.02)


class Embed(nn.Embed):
    """``nn.Embed`` whose table [vocab, embed] is named ``table_axes`` (('vocab','embed')).

    ``__call__``: int tokens [batch, length] -> [batch, length, embed];
    ``attend``: [batch, length, embed] -> [batch, length, vocab], the tied output projection
    (inner products with every table row). Both outputs carry logical constraints.

    ``rows_divisible_by`` > 1 rounds the table up to a multiple of that many rows (Megatron's
    ``make_vocab_size_divisible_by``): a mesh axis that does not divide the vocabulary (GPT-2's
    50,257) would leave the table replicated, so its tensor-parallel gradient is all-gathered
    every step. The extra rows are never looked up and ``attend`` drops their logits.
    """

    embedding_init: nn.initializers.Initializer = embedding_normal_init
    table_axes: tuple[str, str] = TOKEN_TABLE_AXES
    rows_divisible_by: int = 1

    def setup(self) -> None:
        """Create the logically named table (``nn.Embed.setup`` with a boxed initialiser)."""
        if self.rows_divisible_by < 1:
            raise ValueError(f"rows_divisible_by must be >= 1, got {self.rows_divisible_by}")
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, tuple(self.table_axes)),
            (padded_size(self.num_embeddings, self.rows_divisible_by), self.features),
            self.param_dtype,
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Look up int tokens [batch, length] -> embeddings [batch, length, embed]."""
        if inputs.ndim != 2:
            raise ValueError(f"Embed expects tokens shaped [batch, length], got {inputs.shape}")
        return nn.with_logical_constraint(super().__call__(inputs), EMBED_ACTIVATION_AXES)

    def attend(self, query: jax.Array) -> jax.Array:
        """Project [batch, length, embed] onto the table: logits [batch, length, vocab]."""
        if query.ndim != 3:
            raise ValueError(f"Embed.attend expects [batch, length, embed], got {query.shape}")
        if dimension_is_sharded(tuple(self.table_axes), 0):
            logits = super().attend(query)
        else:
            query, table = self.promote_dtype(query, self.embedding, dtype=self.dtype)
            logits = tied_projection(query, table)
        return unpadded_logits(logits, self.num_embeddings)


def dimension_is_sharded(logical_axes: tuple[str, ...], dim: int) -> bool:
    """Whether the logical axis rules in force put dimension ``dim`` of an array named
    ``logical_axes`` on mesh axes of more than one device, in the mesh ``jax.set_mesh`` set (no
    mesh: not sharded)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    spec = tuple(nn.logical_to_mesh_axes(logical_axes) or ())
    entry = spec[dim] if dim < len(spec) else None
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return int(np.prod([mesh.shape[name] for name in names])) > 1


@jax.custom_vjp
def tied_projection(query: jax.Array, table: jax.Array) -> jax.Array:
    """``query [B, T, E] . table [V, E]^T`` -> logits [B, T, V], as ``nn.Embed.attend``, with
    the table's gradient computed as ``(query^T . grad)^T``.

    Autodiff takes it as ``grad^T . query``, for which XLA:CPU first writes the whole
    [B*T, V] logits gradient a second time, transposed (81 ms of a 1.2 s LM step at B*T=2048,
    V=8192; benchmarks/README.md, issue 15). Used only where the vocabulary is not sharded: with
    a vocabulary-sharded table the partitioner all-gathers the logits gradient for this form.
    """
    return jnp.dot(query, table.T)


def _tied_projection_fwd(query, table):
    return tied_projection(query, table), (query, table)


def _tied_projection_bwd(residuals, grad):
    query, table = residuals
    query_grad = jnp.dot(grad, table)
    table_grad_t = jnp.einsum("btd,btv->dv", query, grad)
    return query_grad.astype(query.dtype), table_grad_t.T.astype(table.dtype)


tied_projection.defvjp(_tied_projection_fwd, _tied_projection_bwd)


def padded_size(size: int, divisible_by: int) -> int:
    """``size`` rounded up to a multiple of ``divisible_by``."""
    return -(-size // divisible_by) * divisible_by


def unpadded_logits(logits: jax.Array, vocab_size: int) -> jax.Array:
    """The first ``vocab_size`` logits of a padded vocabulary, constrained ('batch', 'length',
    'vocab'). The slice is taken after the vocabulary-sharded projection, so each device keeps its
    shard (XLA moves only the boundary columns)."""
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    if logits.shape[-1] == vocab_size:
        return logits
    return nn.with_logical_constraint(logits[..., :vocab_size], ("batch", "length", "vocab"))


def _check_sequence(x: jax.Array, max_len: int | None, name: str) -> None:
    """Raise unless ``x`` is [batch, length, embed] with length <= ``max_len``."""
    if x.ndim != 3:
        raise ValueError(f"{name} expects [batch, length, embed], got {x.shape}")
    if max_len is not None and x.shape[1] > max_len:
        raise ValueError(f"{name}: sequence length {x.shape[1]} exceeds max_len={max_len}")


def _check_positions(x: jax.Array, positions: jax.Array, name: str) -> None:
    """Raise unless ``positions`` is an int [batch, length] array matching ``x``."""
    if positions.shape != x.shape[:2] or not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(
            f"{name} positions must be int {x.shape[:2]}, got {positions.dtype} {positions.shape}"
        )


class LearnedPositionEmbedding(nn.Module):
    """Adds a learned table [max_len, embed] (named ('pos','embed')) to the first ``length``
    positions, or to explicit per-token ``positions`` (packed sequences restart at 0):
    [batch, length, embed] -> same shape, in ``x.dtype``."""

    max_len: int
    param_dtype: Any = jnp.float32
    embedding_init: nn.initializers.Initializer = embedding_normal_init

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Return ``x + table[:length]``, or ``x + table[positions]`` for int ``positions``
        [batch, length] in [0, max_len)."""
        _check_sequence(x, self.max_len, "LearnedPositionEmbedding")
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, POSITION_TABLE_AXES),
            (self.max_len, x.shape[-1]),
            self.param_dtype,
        )
        if positions is None:
            out = x + table[None, : x.shape[1]].astype(x.dtype)
        else:
            _check_positions(x, positions, "LearnedPositionEmbedding")
            out = x + table[positions].astype(x.dtype)
        return nn.with_logical_constraint(out, EMBED_ACTIVATION_AXES)


def sinusoidal_positions(length: int, features: int, max_timescale: float = 1e4) -> np.ndarray:
    """Fixed sin/cos position encodings [length, features] (Vaswani et al. 2017, section 3.5).

    Written out because Flax/Optax ship none. Frequencies ``max_timescale ** (-2i / features)``
    as in the paper; sines fill the first half of the features and cosines the second
    (tensor2tensor's layout rather than interleaved).
    Computed with NumPy so they are compile-time constants.
    """
    if features % 2:
        raise ValueError(f"sinusoidal positions need an even feature size, got {features}")
    half = features // 2
    inv_freq = max_timescale ** (-np.arange(half, dtype=np.float64) / half)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


class SinusoidalPositionEmbedding(nn.Module):
    """Adds fixed sinusoidal encodings (no parameters): [batch, length, embed] -> same shape.

    ``max_len`` only bounds the accepted length, so it is interchangeable with
    ``LearnedPositionEmbedding``.
    """

    max_len: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Return ``x + sinusoidal_positions(length, embed)``, or the encodings at int
        ``positions`` [batch, length] in [0, max_len) (in [0, length) without ``max_len``).

        Explicit positions index the same NumPy table, so positions 0..length-1 give exactly
        the default result.
        """
        _check_sequence(x, self.max_len, "SinusoidalPositionEmbedding")
        if positions is None:
            table = sinusoidal_positions(x.shape[1], x.shape[2])
            out = x + jnp.asarray(table, x.dtype)[None]
        else:
            _check_positions(x, positions, "SinusoidalPositionEmbedding")
            table = sinusoidal_positions(self.max_len or x.shape[1], x.shape[2])
            out = x + jnp.asarray(table, x.dtype)[positions]
        return nn.with_logical_constraint(out, EMBED_ACTIVATION_AXES)


def apply_rotary(x: jax.Array, positions: jax.Array, max_timescale: float = 1e4) -> jax.Array:
    """Rotary position embedding (RoPE, Su et al. 2021) of per-head queries or keys.

    ``x`` [batch, length, heads, head_dim] (even head_dim); ``positions`` int [batch or 1,
    length]. Feature pairs (i, i + head_dim/2) rotate by ``position * max_timescale ** (-2i /
    head_dim)`` (the half-split layout of GPT-NeoX and Hugging Face Llama), so a query-key
    product depends on positions only through their difference. Computed in float32; returns
    ``x.dtype``. No parameters: the position information lives in the attention itself.
    """
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(
            f"apply_rotary expects [batch, length, heads, even head_dim], got {x.shape}"
        )
    half = x.shape[-1] // 2
    inv_freq = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None, None].astype(jnp.float32) * inv_freq  # [B, T, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)
