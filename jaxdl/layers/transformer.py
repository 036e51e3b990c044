"""Pre-norm (or post-norm) Transformer block and block stack with logically named parameters.

Built for scaling the MaxText way: every parameter and activation carries logical axis names;
``scan_layers`` stacks the blocks with ``nn.scan`` (one compiled block, so compile time does not
grow with depth; stacked params get a leading 'layers' axis); ``remat_policy`` trades memory for
recomputation with ``jax.checkpoint`` policies. Outside a mesh / logical-axis-rules context the
names are inert, so the blocks also work standalone.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.attention import EMBED_ACTIVATION_AXES, MultiHeadAttention
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.mlp import MlpBlock
from jaxdl.layers.normalization import make_norm
from jaxdl.layers.remat import REGATHER, REMAT_POLICIES, remat_call
from jaxdl.parallel.gradients import batch_axes

# 'pre': x + f(LN(x)) with a final norm after the stack (GPT-2); 'post': LN(x + f(x)) and no
# final norm (the original Transformer, BERT).
NORM_POSITIONS = ("pre", "post")


class TransformerBlock(nn.Module):
    """Pre-LN block: x + drop(attn(LN(x))), then x + drop(mlp(LN(x))); [B, T, E] -> [B, T, E].
    ``norm_position='post'``: LN(x + drop(attn(x))), then LN(x + drop(mlp(x))) (BERT), the
    norms keeping their names (``attn_norm`` after attention, ``mlp_norm`` after the MLP).

    Parameters: ``attn_norm``, ``attention`` (a MultiHeadAttention with head_dim E / num_heads),
    ``mlp_norm`` and ``mlp`` (an MlpBlock). Variants: ``norm`` ('layer' or 'rms', see
    ``make_norm``), ``mlp_activation`` (an ``MLP_ACTIVATIONS`` name, e.g. 'swiglu'),
    ``num_kv_heads`` (grouped-query attention), ``rotary`` (RoPE on queries and keys),
    ``norm_epsilon`` (the norms' epsilon), ``attention_impl`` and ``qkv_fused`` (one
    [embed, 3, heads, head_dim] projection instead of three; MultiHeadAttention's).
    """

    num_heads: int
    mlp_dim: int
    causal: bool
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    norm: str = "layer"
    mlp_activation: str = "gelu"
    num_kv_heads: int | None = None
    rotary: bool = False
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    attention_impl: str = "auto"
    qkv_fused: bool = False

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"TransformerBlock norm_position must be one of {NORM_POSITIONS}, "
                f"got {self.norm_position!r}"
            )
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
        """Apply the block to ``x`` [B, T, E]; ``padding_mask`` [B, T] bool (True = real token)
        hides padded keys; ``segment_ids`` [B, T] int keeps packed sequences apart (see
        ``segment_mask``); ``positions`` [B, T] int feed rotary attention; ``train`` enables
        dropout (needs a 'dropout' rng); ``decode`` attends through the key/value cache."""
        if x.shape[-1] % self.num_heads:
            raise ValueError(
                f"embed dim {x.shape[-1]} is not divisible by num_heads={self.num_heads}"
            )
        norm = functools.partial(
            make_norm,
            self.norm,
            axis_name="embed",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            epsilon=self.norm_epsilon,
        )
        residual_dropout = Dropout(self.dropout_rate, deterministic=not train)
        pre = self.norm_position == "pre"

        y = norm(name="attn_norm")(x) if pre else x
        y = MultiHeadAttention(
            num_heads=self.num_heads,
            head_dim=x.shape[-1] // self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dropout_rate=self.dropout_rate,
            causal=self.causal,
            num_kv_heads=self.num_kv_heads,
            rotary=self.rotary,
            attention_impl=self.attention_impl,
            qkv_fused=self.qkv_fused,
            name="attention",
        )(y, padding_mask, segment_ids, positions, train=train, decode=decode)
        x = x + residual_dropout(y)
        if not pre:
            x = norm(name="attn_norm")(x)
        x = nn.with_logical_constraint(x, EMBED_ACTIVATION_AXES)

        y = norm(name="mlp_norm")(x) if pre else x
        y = MlpBlock(
            self.mlp_dim,
            activation=self.mlp_activation,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )(y, train=train)
        x = x + residual_dropout(y)
        if not pre:
            x = norm(name="mlp_norm")(x)
        return nn.with_logical_constraint(x, EMBED_ACTIVATION_AXES)


def _apply_block(
    block: TransformerBlock,
    x: jax.Array,
    padding_mask: jax.Array | None,
    segment_ids: jax.Array | None,
    positions: jax.Array | None,
    train: bool,
    decode: bool,
    *,
    remat_policy: str,
    prevent_cse: bool,
) -> jax.Array:
    """``block(x, padding_mask, segment_ids, positions, train=train, decode=decode)``,
    rematerialised unless ``remat_policy='none'`` (then, in a data-parallel manual region, only
    its gathered parameters are: they are gathered again for the backward pass instead of kept)
    or decoding (inference keeps no activations for a backward pass)."""
    if decode:
        return block(x, padding_mask, segment_ids, positions, train=train, decode=True)
    if remat_policy == "none":
        if not (train and batch_axes()):
            return block(x, padding_mask, segment_ids, positions, train=train)
        remat_policy = REGATHER
    return remat_call(
        block,
        x,
        padding_mask,
        segment_ids,
        positions,
        train=train,
        policy=remat_policy,
        prevent_cse=prevent_cse,
    )


class TransformerStack(nn.Module):
    """``num_layers`` TransformerBlocks then a final norm (none when ``norm_position='post'``:
    each block already ends with one): [B, T, E] -> [B, T, E].

    With ``scan_layers`` the blocks live under ``layers`` with a leading [num_layers] axis
    named 'layers' (decoding caches too); otherwise under ``layers_0`` ... ``layers_{n-1}``.
    ``remat_policy`` (one of REMAT_POLICIES, 'none' = no remat) wraps each block in
    ``nn.remat``. ``norm``, ``mlp_activation``, ``num_kv_heads``, ``rotary``,
    ``attention_impl`` and ``qkv_fused`` configure every block, as do ``norm_position`` and
    ``norm_epsilon`` (see TransformerBlock); ``norm`` also picks the final norm.
    """

    num_layers: int
    num_heads: int
    mlp_dim: int
    causal: bool
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = True
    remat_policy: str = "none"
    norm: str = "layer"
    mlp_activation: str = "gelu"
    num_kv_heads: int | None = None
    rotary: bool = False
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    attention_impl: str = "auto"
    qkv_fused: bool = False

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(
                f"TransformerStack norm_position must be one of {NORM_POSITIONS}, "
                f"got {self.norm_position!r}"
            )
        if self.num_layers < 1:
            raise ValueError(f"TransformerStack num_layers must be >= 1, got {self.num_layers}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"TransformerStack remat_policy must be one of {REMAT_POLICIES}, "
                f"got {self.remat_policy!r}"
            )
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
        """Run the blocks over ``x`` [B, T, E]; ``padding_mask`` [B, T] bool (True = token);
        ``segment_ids`` [B, T] int (0 = padding) keeps packed sequences apart; ``positions``
        [B, T] int feed rotary attention; ``decode`` runs through the key/value caches."""
        block_kwargs = {
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "causal": self.causal,
            "dropout_rate": self.dropout_rate,
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "norm": self.norm,
            "mlp_activation": self.mlp_activation,
            "num_kv_heads": self.num_kv_heads,
            "rotary": self.rotary,
            "norm_position": self.norm_position,
            "norm_epsilon": self.norm_epsilon,
            "attention_impl": self.attention_impl,
            "qkv_fused": self.qkv_fused,
        }
        if self.scan_layers:
            # nn.scan's body maps (carry, *broadcast inputs) -> (carry, per-step output); the
            # block itself keeps its plain signature. padding_mask, segment_ids, positions and
            # the Python bools train and decode are broadcast (the same for every layer);
            # prevent_cse is only needed outside scan (MaxText does the same).
            def scan_body(block, carry, mask, segments, positions_, train_, decode_):
                out = _apply_block(
                    block,
                    carry,
                    mask,
                    segments,
                    positions_,
                    train_,
                    decode_,
                    remat_policy=self.remat_policy,
                    prevent_cse=False,
                )
                return out, None

            scanned = nn.scan(
                scan_body,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * 5,
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            block = TransformerBlock(**block_kwargs, name="layers")
            x, _ = scanned(block, x, padding_mask, segment_ids, positions, train, decode)
        else:
            for i in range(self.num_layers):
                block = TransformerBlock(**block_kwargs, name=f"layers_{i}")
                x = _apply_block(
                    block,
                    x,
                    padding_mask,
                    segment_ids,
                    positions,
                    train,
                    decode,
                    remat_policy=self.remat_policy,
                    prevent_cse=True,
                )
        if self.norm_position == "post":
            return x
        return make_norm(
            self.norm,
            axis_name="embed",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            epsilon=self.norm_epsilon,
            name="final_norm",
        )(x)
