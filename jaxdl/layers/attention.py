"""Multi-head dot-product attention with logically named projections (MaxText style).

``MultiHeadAttention`` is self-attention (bidirectional or causal, optionally grouped-query,
rotary, and with a key/value cache for decoding); ``CrossAttention`` is the encoder-decoder
form (queries from the decoder, keys and values from an encoder's memory). Both share the
projections and the attention core of ``_Attention``.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.conv import trace_platform
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.embeddings import apply_rotary

# Per-projection kernels [embed, heads, head_dim] and the output kernel [heads, head_dim, embed].
QKV_KERNEL_AXES = ("embed", "heads", "kv")
FUSED_QKV_KERNEL_AXES = ("embed", "qkv", "heads", "kv")
OUT_KERNEL_AXES = ("heads", "kv", "embed")
HEADS_ACTIVATION_AXES = ("batch", "length", "heads", "kv")
EMBED_ACTIVATION_AXES = ("batch", "length", "embed")
# Grouped-query attention names the key/value head axis apart from the query heads, so a rule
# override can replicate few kv heads that do not divide the 'tensor' axis.
KV_HEADS = "kv_heads"


# How ``jax.nn.dot_product_attention`` computes attention: 'xla' (scores materialised; every
# backend), 'cudnn' (fused flash attention: GPU, bf16/fp16) or 'auto' (cudnn where it applies).
ATTENTION_IMPLS = ("auto", "xla", "cudnn")

# The collection attention layers sow their probabilities [B, N, T, S] into, only when an
# ``apply`` makes it mutable (``jaxdl.explain.attention_maps``; never at ``init``, which makes
# every collection mutable): nothing is computed otherwise. Unroll a scanned stack first.
ATTENTION_WEIGHTS = "attention_weights"


def attention_implementation(impl: str, query: jax.Array, mask: jax.Array | None) -> str | None:
    """``jax.nn.dot_product_attention``'s ``implementation`` for ``impl`` and ``query``
    [B, T, N, D].

    'auto' picks cuDNN's fused kernel on GPU for half-precision inputs with D a multiple of 8
    up to 128 and no explicit mask (causal or full attention: its flash path; an explicit mask
    would become a dense bias), and XLA otherwise; XLA's path materialises the [B, N, T, S]
    scores, which caps GPU MFU at long sequence lengths.
    """
    if impl == "auto":
        half = query.dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        head_dim = query.shape[-1]
        supported = half and head_dim % 8 == 0 and head_dim <= 128 and mask is None
        return "cudnn" if supported and jax.default_backend() == "gpu" else None
    return None if impl == "xla" else impl


def segment_mask(segment_ids_q: jax.Array, segment_ids_kv: jax.Array | None = None) -> jax.Array:
    """Boolean attention mask [batch, 1, q_length, kv_length] for packed sequences.

    ``segment_ids_*`` [batch, length] int: equal nonzero ids mark one packed sequence, 0 marks
    padding. A query may attend to a key only when both carry the same nonzero id, so packed
    sequences never see each other and padding sees nothing (kept NaN-free by the finite fill of
    the attention). ``segment_ids_kv`` defaults to ``segment_ids_q`` (self-attention).
    """
    if segment_ids_kv is None:
        segment_ids_kv = segment_ids_q
    q, kv = segment_ids_q[:, :, None], segment_ids_kv[:, None, :]
    return ((q == kv) & (q != 0))[:, None]


def einsum_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    *,
    causal: bool,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Softmax attention as einsums, optionally with dropout on the attention probabilities.

    The CPU path of ``MultiHeadAttention`` and ``CrossAttention``, and their training path with
    attention dropout on every backend (``jax.nn.dot_product_attention`` has no probability
    dropout); logits and softmax are float32 whatever the input dtype.
    query: [batch, q_length, heads, head_dim]; key/value: [batch, kv_length, kv_heads,
    head_dim], where fewer kv heads mean grouped-query attention (query head n reads kv head
    ``n // (heads // kv_heads)``, as in ``jax.nn.dot_product_attention``); mask: boolean,
    broadcastable to [batch, heads, q_length, kv_length] (True = attend); ``dropout``: applied
    to the probabilities, typically an active ``jaxdl.layers.Dropout``.
    Returns [batch, q_length, heads, head_dim] in ``value.dtype``.
    """
    probs = attention_weights(query, key, mask, causal=causal)
    if dropout is not None:
        probs = dropout(probs)
    value = _heads_major(jnp.repeat(value, query.shape[2] // value.shape[2], axis=2))
    out = jnp.einsum("bnts,bnsh->bnth", probs.astype(value.dtype), value)
    return jnp.transpose(out, (0, 2, 1, 3))


def _heads_major(x: jax.Array) -> jax.Array:
    """[batch, length, heads, head_dim] -> [batch, heads, length, head_dim]."""
    return jnp.transpose(x, (0, 2, 1, 3))


def attention_weights(
    query: jax.Array, key: jax.Array, mask: jax.Array | None, *, causal: bool
) -> jax.Array:
    """Softmax attention probabilities float32 [batch, heads, q_length, kv_length] of query
    [B, T, N, D] over key [B, S, K, D] (grouped-query when K < N), ``mask`` broadcastable to
    [B, N, T, S] (True = attend); masked keys get probability 0.

    The operands go head-major ([B, N, T, D]) before the batched dots and the query is scaled
    before them (as ``flax.linen.dot_product_attention_weights``): XLA:CPU then transposes the
    small [B, T, N, D] operands rather than the [B, N, T, S] scores and their gradients, and
    ``jax.nn.softmax``'s own derivative replaces the quotient rule that
    ``jax.nn.dot_product_attention``'s XLA path differentiates. Forward and backward at the
    Conformer's shape (B=8, T=200, 4 x 36) took 8.5 ms against that path's 11.8 on 2 cores
    (benchmarks/README.md, issue 16).
    """
    key = jnp.repeat(key, query.shape[2] // key.shape[2], axis=2)
    scaled = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    logits = jnp.einsum(
        "bnth,bnsh->bnts",
        _heads_major(scaled),
        _heads_major(key),
        preferred_element_type=jnp.float32,
    )
    q_len, kv_len = query.shape[1], key.shape[1]
    allowed = jnp.ones((1, 1, q_len, kv_len), bool)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((q_len, kv_len), bool))
    if mask is not None:
        allowed = allowed & mask
    # A finite fill keeps fully masked rows (all-padding sequences) NaN-free, as in jax.nn.
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def _check_per_token(
    name: str, array: jax.Array | None, shape: tuple[int, ...], kind: type
) -> None:
    """Raise unless ``array`` (if given) is shaped ``shape`` with a dtype of ``kind``."""
    if array is not None and (array.shape != shape or not jnp.issubdtype(array.dtype, kind)):
        kind_name = "bool" if kind is jnp.bool_ else "int"
        raise ValueError(f"{name} must be {kind_name} {shape}, got {array.dtype} {array.shape}")


class _Attention(nn.Module):
    """Projections and attention core shared by ``MultiHeadAttention`` and ``CrossAttention``.

    ``num_kv_heads`` (default ``num_heads``; must divide it) gives grouped-query attention:
    the key/value kernels are [embed, kv_heads, head_dim], their head axis named 'kv_heads'
    when grouped (else 'heads', the plain multi-head layout).
    """

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    use_bias: bool = True
    num_kv_heads: int | None = None
    attention_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.num_heads < 1 or self.head_dim < 1:
            raise ValueError(
                f"{type(self).__name__} needs num_heads >= 1 and head_dim >= 1, "
                f"got {self.num_heads} and {self.head_dim}"
            )
        if self.num_kv_heads is not None and (
            self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads
        ):
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must be >= 1 and divide "
                f"num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"attention dropout_rate must be in [0, 1), got {self.dropout_rate}")
        super().__post_init__()

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads."""
        return self.num_kv_heads or self.num_heads

    @property
    def kv_head_axis(self) -> str:
        """Logical name of the key/value head axis: 'heads' unless grouped ('kv_heads')."""
        return "heads" if self.kv_heads == self.num_heads else KV_HEADS

    def _projection(
        self,
        equation: str,
        shape: tuple[int, ...],
        kernel_axes: tuple[str, ...],
        fan_in_axes: tuple[int, ...],
        name: str,
    ) -> nn.Einsum:
        """A logically named ``nn.Einsum`` projection with a LeCun-normal kernel.

        ``nn.Einsum`` rather than ``nn.DenseGeneral``: DenseGeneral initialises a flattened
        kernel and applies the boxed names to it, which fails under a mesh. ``fan_in_axes``
        are the contracted kernel axes, so the init scale is 1/sqrt(contracted size).
        """
        fan_out_axes = tuple(i for i in range(len(shape)) if i not in fan_in_axes)
        kernel_init = nn.initializers.lecun_normal(in_axis=fan_in_axes, out_axis=fan_out_axes)
        bias_axes = tuple(kernel_axes[i] for i in fan_out_axes)
        return nn.Einsum(
            shape=shape,
            einsum_str=equation,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(kernel_init, kernel_axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
            name=name,
        )

    def _heads(self, name: str, x: jax.Array) -> jax.Array:
        """Project ``x`` [B, T, E] to the heads of ``name`` ('query', 'key' or 'value'):
        [B, T, heads, head_dim], or [B, T, kv_heads, head_dim] for keys and values."""
        head_axis, count = ("heads", self.num_heads)
        if name != "query":
            head_axis, count = self.kv_head_axis, self.kv_heads
        axes = ("embed", head_axis, "kv")
        shape = (x.shape[-1], count, self.head_dim)
        out = self._projection("bte,end->btnd", shape, axes, (0,), name)(x)
        return nn.with_logical_constraint(out, ("batch", "length", head_axis, "kv"))

    def _self_attention_heads(
        self, x: jax.Array, *, fused: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values [B, T, heads or kv_heads, head_dim] of ``x`` [B, T, E]:
        three projections (``_heads``), or with ``fused`` one ``qkv`` kernel [E, 3, heads,
        head_dim] named ('embed','qkv','heads','kv') (one GEMM instead of three, as torch's
        ``in_proj``; plain multi-head only)."""
        if not fused:
            return tuple(self._heads(name, x) for name in ("query", "key", "value"))
        embed, heads = x.shape[-1], (self.num_heads, self.head_dim)
        qkv = self._projection(
            "bte,ecnd->btcnd", (embed, 3, *heads), FUSED_QKV_KERNEL_AXES, (0,), "qkv"
        )(x)
        return tuple(
            nn.with_logical_constraint(qkv[:, :, i], HEADS_ACTIVATION_AXES) for i in range(3)
        )

    def _attend(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        mask: jax.Array | None,
        *,
        causal: bool,
        train: bool,
        features: int,
    ) -> jax.Array:
        """Attention of query heads [B, T, N, D] over key/value heads [B, S, K, D], then the
        ``out`` projection to [B, T, features]; ``mask`` broadcastable to [B, N, T, S]."""
        if self.is_mutable_collection(ATTENTION_WEIGHTS) and not self.is_initializing():
            weights = attention_weights(query, key, mask, causal=causal)
            self.sow(ATTENTION_WEIGHTS, "weights", weights)
        implementation = attention_implementation(self.attention_impl, query, mask)
        if train and self.dropout_rate > 0:
            dropout = Dropout(self.dropout_rate, deterministic=False)
            out = einsum_attention(query, key, value, mask, causal=causal, dropout=dropout)
        elif implementation is None and trace_platform() == "cpu":
            out = einsum_attention(query, key, value, mask, causal=causal)
        else:
            out = jax.nn.dot_product_attention(
                query, key, value, mask=mask, is_causal=causal, implementation=implementation
            )
        out = nn.with_logical_constraint(out, HEADS_ACTIVATION_AXES)
        shape = (self.num_heads, self.head_dim, features)
        out = self._projection("btnd,nde->bte", shape, OUT_KERNEL_AXES, (0, 1), "out")(out)
        return nn.with_logical_constraint(out, EMBED_ACTIVATION_AXES)


class MultiHeadAttention(_Attention):
    """Multi-head self-attention: [batch, length, embed] -> [batch, length, embed].

    Parameters: ``query``/``key``/``value`` kernels [embed, heads, head_dim] named
    ('embed','heads','kv') with biases ('heads','kv') — or, with ``qkv_fused``, one ``qkv``
    kernel [embed, 3, heads, head_dim] named ('embed','qkv','heads','kv') — and an ``out``
    kernel [heads, head_dim, embed] named ('heads','kv','embed') with bias ('embed',).
    Under the default rules heads are split over 'tensor' (Megatron) and embed over 'fsdp'.
    With ``num_kv_heads`` < ``num_heads`` (grouped-query attention) the key/value kernels are
    [embed, kv_heads, head_dim] named ('embed','kv_heads','kv'). ``rotary`` rotates queries
    and keys by their positions (``apply_rotary``, RoPE) instead of a position table.

    Attention runs through ``jax.nn.dot_product_attention`` (float32 logits and softmax even
    for bf16 inputs; ``attention_impl`` picks XLA or cuDNN's fused kernel), or on CPU through
    ``einsum_attention`` (the same XLA computation, laid out for XLA:CPU); when training with
    ``dropout_rate > 0`` ``einsum_attention`` applies dropout to the attention probabilities.

    Decoding (``decode=True``, causal only) keeps keys and values in the 'cache' collection:
    ``cached_key``/``cached_value`` [batch, cache_length, kv_heads, head_dim] named
    ('batch','length',<kv head axis>,'kv') and the next write position ``cache_index``.
    ``init`` with ``decode=True`` sizes the cache by the input's length; each later call
    (with ``mutable=['cache']``) appends its tokens and attends over everything cached so far.
    """

    causal: bool = False
    qkv_fused: bool = False
    rotary: bool = False

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.qkv_fused and self.num_kv_heads not in (None, self.num_heads):
            raise ValueError("qkv_fused needs num_kv_heads == num_heads")
        if self.rotary and self.head_dim % 2:
            raise ValueError(f"rotary attention needs an even head_dim, got {self.head_dim}")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        padding_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        train: bool,
        decode: bool = False,
    ) -> jax.Array:
        """Attend over ``x`` [batch, length, embed].

        ``padding_mask`` [batch, length] bool (True = real token) hides padded keys;
        ``segment_ids`` [batch, length] int (packed sequences, see ``segment_mask``) limits
        each query to keys of its own sequence; with ``causal`` each position sees only itself
        and earlier positions. ``positions`` [batch, length] int feed ``rotary`` (default
        0..length-1, or from the cache index when decoding; packed sequences restart at 0).
        ``train`` enables attention-probability dropout (needs a 'dropout' rng); ``decode``
        attends through the key/value cache (rows must be unpadded and unpacked).
        """
        if x.ndim != 3:
            raise ValueError(f"MultiHeadAttention expects [batch, length, embed], got {x.shape}")
        _check_per_token("padding_mask", padding_mask, x.shape[:2], jnp.bool_)
        _check_per_token("segment_ids", segment_ids, x.shape[:2], jnp.integer)
        _check_per_token("positions", positions, x.shape[:2], jnp.integer)
        if decode and (not self.causal or padding_mask is not None or segment_ids is not None):
            raise ValueError("decode needs causal attention without padding_mask/segment_ids")
        query, key, value = self._self_attention_heads(x, fused=self.qkv_fused)

        mask = None if padding_mask is None else padding_mask[:, None, None, :]
        if segment_ids is not None:
            same_segment = segment_mask(segment_ids)
            mask = same_segment if mask is None else mask & same_segment
        cache = self._cache(key) if decode else None
        if self.rotary:
            if positions is None:
                start = 0 if cache is None else cache[2].value
                positions = start + jnp.arange(x.shape[1])[None]
            query, key = apply_rotary(query, positions), apply_rotary(key, positions)
        causal = self.causal
        if cache is not None:
            key, value, mask = self._append_to_cache(cache, key, value)
            causal = False  # the cache mask is causal already
        return self._attend(
            query, key, value, mask, causal=causal, train=train, features=x.shape[-1]
        )

    def _cache(self, key: jax.Array) -> tuple[nn.Variable, nn.Variable, nn.Variable] | None:
        """The decoding cache variables (key, value, index), created shaped like ``key`` on
        the first (``init``) call, which returns None: that call attends as without a cache."""
        initialised = self.has_variable("cache", "cached_key")
        axes = ("batch", "length", self.kv_head_axis, "kv")
        zeros = nn.with_logical_partitioning(jnp.zeros, axes)
        cached_key = self.variable("cache", "cached_key", zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", zeros, key.shape, key.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        return (cached_key, cached_value, index) if initialised else None

    def _append_to_cache(
        self, cache: tuple[nn.Variable, nn.Variable, nn.Variable], key: jax.Array, value: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Write this call's keys/values [B, L, K, D] at the cache index and advance it.

        Returns the whole cached key and value [B, S, K, D] and the mask [1, 1, L, S] letting
        the query at position ``index + t`` see the cached positions up to its own.
        """
        cached_key, cached_value, index = cache
        start, length = index.value, key.shape[1]
        axes = ("batch", "length", self.kv_head_axis, "kv")
        for variable, new in ((cached_key, key), (cached_value, value)):
            updated = jax.lax.dynamic_update_slice(variable.value, new, (0, start, 0, 0))
            variable.value = nn.with_logical_constraint(updated, axes)
        index.value = start + length
        query_positions = start + jnp.arange(length)
        mask = jnp.arange(cached_key.value.shape[1])[None, :] <= query_positions[:, None]
        return cached_key.value, cached_value.value, mask[None, None]


class CrossAttention(_Attention):
    """Encoder-decoder attention: queries from ``x`` [batch, length, embed], keys and values
    from an encoder's ``memory`` [batch, memory_length, memory_embed]; returns [batch, length,
    embed].

    The same parameter layout as ``MultiHeadAttention`` (``query`` [embed, heads, head_dim],
    ``key``/``value`` [memory_embed, kv_heads, head_dim], ``out`` [heads, head_dim, embed]),
    grouped-query attention included; no causal mask (every query sees all the memory).
    """

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        memory: jax.Array,
        memory_mask: jax.Array | None = None,
        *,
        train: bool,
    ) -> jax.Array:
        """Attend from ``x`` over ``memory``; ``memory_mask`` [batch, memory_length] bool
        (True = real token) hides padded memory. ``train`` enables attention dropout."""
        if x.ndim != 3 or memory.ndim != 3 or memory.shape[0] != x.shape[0]:
            raise ValueError(
                f"CrossAttention expects x [batch, length, embed] and memory [batch, "
                f"memory_length, memory_embed], got {x.shape} and {memory.shape}"
            )
        _check_per_token("memory_mask", memory_mask, memory.shape[:2], jnp.bool_)
        query = self._heads("query", x)
        key, value = self._heads("key", memory), self._heads("value", memory)
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        return self._attend(
            query, key, value, mask, causal=False, train=train, features=x.shape[-1]
        )
