"""Multi-head dot-product attention with logically named projections (MaxText style)."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Per-projection kernels [embed, heads, head_dim] and the output kernel [heads, head_dim, embed].
QKV_KERNEL_AXES = ("embed", "heads", "kv")
FUSED_QKV_KERNEL_AXES = ("embed", "qkv", "heads", "kv")
OUT_KERNEL_AXES = ("heads", "kv", "embed")
HEADS_ACTIVATION_AXES = ("batch", "length", "heads", "kv")
EMBED_ACTIVATION_AXES = ("batch", "length", "embed")


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


def dropout_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    *,
    causal: bool,
    dropout: Callable[[jax.Array], jax.Array],
) -> jax.Array:
    """Softmax attention with dropout on the attention probabilities (an einsum formulation).

    ``jax.nn.dot_product_attention`` has no probability dropout, so training with attention
    dropout uses this path; logits and softmax are float32 whatever the input dtype.
    q/k/v: [batch, length, heads, head_dim]; mask: boolean, broadcastable to
    [batch, heads, q_length, kv_length] (True = attend); ``dropout``: applied to the
    probabilities, typically an active ``nn.Dropout``.
    Returns [batch, q_length, heads, head_dim] in ``value.dtype``.
    """
    scale = query.shape[-1] ** -0.5
    logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32) * scale
    q_len, kv_len = query.shape[1], key.shape[1]
    allowed = jnp.ones((1, 1, q_len, kv_len), bool)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((q_len, kv_len), bool))
    if mask is not None:
        allowed = allowed & mask
    # A finite fill keeps fully masked rows (all-padding sequences) NaN-free, as in jax.nn.
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1)).astype(value.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, value)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: [batch, length, embed] -> [batch, length, embed].

    Parameters: ``query``/``key``/``value`` kernels [embed, heads, head_dim] named
    ('embed','heads','kv') with biases ('heads','kv') — or, with ``qkv_fused``, one ``qkv``
    kernel [embed, 3, heads, head_dim] named ('embed','qkv','heads','kv') — and an ``out``
    kernel [heads, head_dim, embed] named ('heads','kv','embed') with bias ('embed',).
    Under the default rules heads are split over 'tensor' (Megatron) and embed over 'fsdp'.

    Attention runs through ``jax.nn.dot_product_attention`` (float32 logits and softmax even
    for bf16 inputs; cuDNN-capable); when training with ``dropout_rate > 0`` the einsum path
    ``dropout_attention`` applies dropout to the attention probabilities.
    """

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    causal: bool = False
    qkv_fused: bool = False
    use_bias: bool = True

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.num_heads < 1 or self.head_dim < 1:
            raise ValueError(
                f"MultiHeadAttention needs num_heads >= 1 and head_dim >= 1, "
                f"got {self.num_heads} and {self.head_dim}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"attention dropout_rate must be in [0, 1), got {self.dropout_rate}")
        super().__post_init__()

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

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        padding_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        train: bool,
    ) -> jax.Array:
        """Attend over ``x`` [batch, length, embed].

        ``padding_mask`` [batch, length] bool (True = real token) hides padded keys;
        ``segment_ids`` [batch, length] int (packed sequences, see ``segment_mask``) limits
        each query to keys of its own sequence; with ``causal`` each position sees only itself
        and earlier positions. ``train`` enables attention-probability dropout (needs a
        'dropout' rng).
        """
        if x.ndim != 3:
            raise ValueError(f"MultiHeadAttention expects [batch, length, embed], got {x.shape}")
        if padding_mask is not None and (
            padding_mask.shape != x.shape[:2] or padding_mask.dtype != jnp.bool_
        ):
            raise ValueError(
                f"padding_mask must be bool {x.shape[:2]}, "
                f"got {padding_mask.dtype} {padding_mask.shape}"
            )
        if segment_ids is not None and (
            segment_ids.shape != x.shape[:2] or not jnp.issubdtype(segment_ids.dtype, jnp.integer)
        ):
            raise ValueError(
                f"segment_ids must be int {x.shape[:2]}, "
                f"got {segment_ids.dtype} {segment_ids.shape}"
            )
        embed, heads = x.shape[-1], (self.num_heads, self.head_dim)
        if self.qkv_fused:
            qkv = self._projection(
                "bte,ecnd->btcnd", (embed, 3, *heads), FUSED_QKV_KERNEL_AXES, (0,), "qkv"
            )(x)
            query, key, value = (qkv[:, :, i] for i in range(3))
        else:
            query, key, value = (
                self._projection("bte,end->btnd", (embed, *heads), QKV_KERNEL_AXES, (0,), name)(x)
                for name in ("query", "key", "value")
            )
        query, key, value = (
            nn.with_logical_constraint(t, HEADS_ACTIVATION_AXES) for t in (query, key, value)
        )

        mask = None if padding_mask is None else padding_mask[:, None, None, :]
        if segment_ids is not None:
            same_segment = segment_mask(segment_ids)
            mask = same_segment if mask is None else mask & same_segment
        if train and self.dropout_rate > 0:
            dropout = nn.Dropout(self.dropout_rate, deterministic=False)
            out = dropout_attention(query, key, value, mask, causal=self.causal, dropout=dropout)
        else:
            out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=self.causal)
        out = nn.with_logical_constraint(out, HEADS_ACTIVATION_AXES)

        out = self._projection("btnd,nde->bte", (*heads, embed), OUT_KERNEL_AXES, (0, 1), "out")(
            out
        )
        return nn.with_logical_constraint(out, EMBED_ACTIVATION_AXES)
