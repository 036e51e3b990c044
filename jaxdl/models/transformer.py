"""Transformers: a causal language model, a sequence classifier and a masked language model.

Both embed tokens and run a ``jaxdl.layers.TransformerStack`` (see there for ``scan_layers``
and ``remat_policy``); every parameter and activation carries logical axis names. Switches
shared by both (their defaults give the GPT-2 layout): ``norm`` ('layer' | 'rms'),
``mlp_activation`` ('gelu' (tanh approximation) | 'gelu_exact' (erf) | 'swiglu' | ...),
``position_embedding`` ('learned' | 'sinusoidal' | 'rotary'), ``num_kv_heads`` (grouped-query
attention; None = num_heads), ``norm_position`` ('pre' | 'post': LN after each residual add and
no final norm), ``norm_epsilon`` (1e-5), ``embedding_norm`` (a norm ``embed_norm`` over the
summed embeddings), ``attention_impl`` ('auto' | 'xla' | 'cudnn', see
``jaxdl.layers.attention.attention_implementation``) and ``qkv_fused`` (one ``qkv`` projection
kernel instead of ``query``/``key``/``value``; needs num_kv_heads == num_heads; under tensor
parallelism XLA:CPU then all-reduces one input gradient per block instead of three) and
``vocab_divisible_by`` (token table and LM head rounded up to a multiple of that many rows, as
Megatron does, so a tensor axis shards them; outputs keep ``vocab_size`` logits). The classifier
also has ``token_type_vocab`` (a token-type table ``type_embed`` and a ``token_type_ids`` input) and
``pooler`` ('none' | 'tanh'); with
``norm_position='post'``, ``embedding_norm``, ``token_type_vocab=2``, ``pooler='tanh'``,
``norm_epsilon=1e-12``, ``mlp_activation='gelu_exact'`` and ``pooling='cls'`` it is BERT
(``jaxdl.models.hf_import.import_bert``). ``TransformerMaskedLM`` is the classifier's encoder
(same parameter names: ``token_embed``, ``pos_embed``, ``type_embed``, ``embed_norm``,
``encoder``) under BERT's masked-LM head, so a classifier fine-tunes from a pre-trained MLM
workdir by taking those subtrees (``init.take``).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import (
    Dense,
    Embed,
    LearnedPositionEmbedding,
    SinusoidalPositionEmbedding,
    TransformerBlock,
    TransformerStack,
    classifier_head,
    make_norm,
)
from jaxdl.layers.attention import ATTENTION_IMPLS
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.embeddings import TOKEN_TYPE_TABLE_AXES, padded_size, unpadded_logits
from jaxdl.layers.mlp import MLP_ACTIVATIONS
from jaxdl.layers.remat import REMAT_POLICIES
from jaxdl.layers.transformer import NORM_POSITIONS
from jaxdl.models.registry import register_model

# TransformerBlock and TransformerStack live in jaxdl.layers; re-exported here for existing imports.
__all__ = [
    "TransformerBlock",
    "TransformerClassifier",
    "TransformerLM",
    "TransformerMaskedLM",
    "TransformerStack",
]

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "rotary")
POOLINGS = ("mean", "cls")
POOLERS = ("none", "tanh")
TRANSFORMER_NORMS = ("layer", "rms")


def _check_config(model: nn.Module) -> None:
    """Shared construction-time checks of the Transformer models' hyper-parameters."""
    kind = type(model).__name__
    for name in ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "max_len"):
        if getattr(model, name) < 1:
            raise ValueError(f"{kind} {name} must be >= 1, got {getattr(model, name)}")
    if model.embed_dim % model.num_heads:
        raise ValueError(
            f"{kind} embed_dim={model.embed_dim} is not divisible by num_heads={model.num_heads}"
        )
    if not 0.0 <= model.dropout_rate < 1.0:
        raise ValueError(f"{kind} dropout_rate must be in [0, 1), got {model.dropout_rate}")
    if model.vocab_divisible_by < 1:
        raise ValueError(f"{kind} vocab_divisible_by must be >= 1, got {model.vocab_divisible_by}")
    if getattr(model, "token_type_vocab", 0) < 0:
        raise ValueError(f"{kind} token_type_vocab must be >= 0, got {model.token_type_vocab}")
    for name, choices in (
        ("remat_policy", REMAT_POLICIES),
        ("position_embedding", POSITION_EMBEDDINGS),
        ("norm", TRANSFORMER_NORMS),
        ("mlp_activation", tuple(MLP_ACTIVATIONS)),
        ("norm_position", NORM_POSITIONS),
        ("attention_impl", ATTENTION_IMPLS),
    ):
        if getattr(model, name) not in choices:
            raise ValueError(
                f"{kind} {name} must be one of {choices}, got {getattr(model, name)!r}"
            )
    kv_heads = model.num_kv_heads
    if model.qkv_fused and kv_heads not in (None, model.num_heads):
        raise ValueError(f"{kind} qkv_fused needs num_kv_heads == num_heads, got {kv_heads}")
    if kv_heads is not None and (kv_heads < 1 or model.num_heads % kv_heads):
        raise ValueError(
            f"{kind} num_kv_heads={kv_heads} must be >= 1 and divide num_heads={model.num_heads}"
        )
    if not model.norm_epsilon > 0:
        raise ValueError(f"{kind} norm_epsilon must be > 0, got {model.norm_epsilon}")
    head_dim = model.embed_dim // model.num_heads
    if model.position_embedding == "rotary" and head_dim % 2:
        raise ValueError(f"{kind} rotary positions need an even head dim, got {head_dim}")


def _check_tokens(tokens: jax.Array, max_len: int, model: str) -> None:
    """Raise unless ``tokens`` is an int [batch, length] array with length <= ``max_len``."""
    if tokens.ndim != 2:
        raise ValueError(f"{model} expects tokens shaped [batch, length], got {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{model} expects integer tokens, got dtype {tokens.dtype}")
    if tokens.shape[1] > max_len:
        raise ValueError(f"{model}: sequence length {tokens.shape[1]} exceeds max_len={max_len}")


def _check_packing(tokens: jax.Array, model: str, **arrays: jax.Array | None) -> None:
    """Raise unless each given array (segment_ids, positions) is int and shaped like tokens."""
    for name, array in arrays.items():
        if array is None:
            continue
        if array.shape != tokens.shape:
            raise ValueError(
                f"{model} {name} must be shaped like tokens {tokens.shape}, got {array.shape}"
            )
        if not jnp.issubdtype(array.dtype, jnp.integer):
            raise TypeError(f"{model} expects integer {name}, got dtype {array.dtype}")


def _embed_positions(kind: str, max_len: int, param_dtype: Any) -> nn.Module:
    """The position-embedding layer for ``kind`` ('learned' or 'sinusoidal'), named pos_embed."""
    if kind == "learned":
        return LearnedPositionEmbedding(max_len, param_dtype=param_dtype, name="pos_embed")
    return SinusoidalPositionEmbedding(max_len, name="pos_embed")


def _embed_and_encode(
    model: nn.Module,
    tokens: jax.Array,
    padding_mask: jax.Array | None,
    *,
    causal: bool,
    train: bool,
    name: str,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    decode: bool = False,
    token_type_ids: jax.Array | None = None,
) -> tuple[jax.Array, Embed]:
    """Token + position (+ token-type) embedding, the optional embedding norm, dropout and the
    block stack shared by the LM and classifier.

    Called from ``model``'s compact ``__call__`` (submodules attach to it), reading its fields.
    ``segment_ids``/``positions`` [B, T] describe packed sequences (None: one sequence per row
    at positions 0..T-1); rotary positions are applied in attention, the others added here.
    ``token_type_ids`` [B, T] index the ``type_embed`` table when the model has
    ``token_type_vocab`` > 0 (None: all type 0). ``decode`` runs the stack through its
    key/value caches. Returns the stack output [B, T, E] and the token embedding (for tied
    output projections).
    """
    embed = Embed(
        model.vocab_size,
        model.embed_dim,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
        rows_divisible_by=model.vocab_divisible_by,
        name="token_embed",
    )
    x = embed(tokens)
    type_vocab = getattr(model, "token_type_vocab", 0)
    if type_vocab:
        types = Embed(
            type_vocab,
            model.embed_dim,
            dtype=model.dtype,
            param_dtype=model.param_dtype,
            table_axes=TOKEN_TYPE_TABLE_AXES,
            name="type_embed",
        )
        x = x + types(jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids)
    rotary = model.position_embedding == "rotary"
    if not rotary:
        x = _embed_positions(model.position_embedding, model.max_len, model.param_dtype)(
            x, positions
        )
    if model.embedding_norm:
        x = make_norm(
            model.norm,
            axis_name="embed",
            train=train,
            dtype=model.dtype,
            param_dtype=model.param_dtype,
            epsilon=model.norm_epsilon,
            name="embed_norm",
        )(x)
    x = Dropout(model.dropout_rate, deterministic=not train)(x)
    x = TransformerStack(
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        mlp_dim=model.mlp_dim,
        causal=causal,
        dropout_rate=model.dropout_rate,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
        scan_layers=model.scan_layers,
        remat_policy=model.remat_policy,
        norm=model.norm,
        mlp_activation=model.mlp_activation,
        num_kv_heads=model.num_kv_heads,
        rotary=rotary,
        norm_position=model.norm_position,
        norm_epsilon=model.norm_epsilon,
        attention_impl=model.attention_impl,
        qkv_fused=model.qkv_fused,
        name=name,
    )(x, padding_mask, segment_ids, positions, train=train, decode=decode)
    return x, embed


@register_model("transformer_lm")
class TransformerLM(nn.Module):
    """Decoder-only causal LM (GPT-2 layout): int tokens [B, T] -> float32 logits [B, T, vocab].

    Token + position embeddings -> dropout -> pre-LN causal blocks -> final LN (post-LN blocks
    and no final LN with ``norm_position='post'``) -> logits via the
    tied token table (``tie_embeddings``) or an untied ``lm_head`` [embed, vocab] named
    ('embed','vocab'). ``dtype`` is the compute dtype (e.g. bf16); logits are float32 unless
    ``cast_logits_to_fp32=False`` leaves them in it (MaxText's switch of that name): the LM task's
    loss upcasts inside its reductions (``jaxdl.tasks.cross_entropy``), so a bf16 model then never
    writes a float32 copy of its [B, T, vocab] logits, with the same loss and gradients.
    Packed rows (several sequences per row) pass ``segment_ids`` and ``positions``.
    ``decode=True`` runs through key/value caches for generation (``jaxdl.models.generation``).
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_dim: int
    max_len: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    tie_embeddings: bool = True
    scan_layers: bool = True
    remat_policy: str = "none"
    position_embedding: str = "learned"
    norm: str = "layer"
    mlp_activation: str = "gelu"
    num_kv_heads: int | None = None
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    attention_impl: str = "auto"
    qkv_fused: bool = False
    vocab_divisible_by: int = 1
    embedding_norm: bool = False
    cast_logits_to_fp32: bool = True

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _check_config(self)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        train: bool,
        decode: bool = False,
    ) -> jax.Array:
        """Next-token logits [B, T, vocab] (float32 unless ``cast_logits_to_fp32=False``) for
        ``tokens`` [B, T]; position t sees tokens 0..t only.

        Packed rows: ``segment_ids`` [B, T] int (equal nonzero ids = one sequence, 0 = padding)
        confine attention to each sequence, and ``positions`` [B, T] int (restarting at 0 per
        sequence, < max_len) pick the position embeddings, so every packed sequence gets the
        logits it would get alone. None (the default) means one sequence per row at positions
        0..T-1. ``train`` enables dropout (needs a 'dropout' rng).

        ``decode``: ``init`` sizes the key/value caches ('cache' collection) by the length of
        ``tokens``; each ``apply`` with ``mutable=['cache']`` then appends ``tokens`` (unpacked,
        unpadded rows) at their explicit ``positions``, which must continue the cached ones.
        """
        _check_tokens(tokens, self.max_len, "TransformerLM")
        _check_packing(tokens, "TransformerLM", segment_ids=segment_ids, positions=positions)
        if decode and positions is None:
            raise ValueError("TransformerLM decode needs the tokens' positions")
        x, embed = _embed_and_encode(
            self,
            tokens,
            None,
            causal=True,
            train=train,
            name="decoder",
            segment_ids=segment_ids,
            positions=positions,
            decode=decode,
        )
        if self.tie_embeddings:
            logits = embed.attend(x)
        else:
            head = Dense(
                padded_size(self.vocab_size, self.vocab_divisible_by),
                kernel_axes=("embed", "vocab"),
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="lm_head",
            )
            logits = unpadded_logits(head(x), self.vocab_size)
        if self.cast_logits_to_fp32:
            logits = logits.astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


@register_model("transformer_classifier")
class TransformerClassifier(nn.Module):
    """Bidirectional encoder classifier: int tokens [B, T] -> float32 logits [B, num_classes].

    Padding positions are masked out of attention and pooling, so trailing padding does not
    change the output: by default the tokens equal to ``pad_id``, or those an explicit
    ``padding_mask`` marks (see ``__call__``). ``pooling='mean'`` averages the non-pad
    positions; ``'cls'`` takes position 0 (the tokenizer's [CLS]). ``pooler='tanh'`` passes
    the pooled vector through ``pooler`` (dense [embed, embed] named ('embed','mlp')) and tanh,
    as BERT does. ``token_type_vocab`` > 0 adds a token-type table ``type_embed``
    [token_type_vocab, embed] named ('token_types','embed') and the ``token_type_ids`` input.
    Head kernel [embed, classes] named ('embed','classes').
    """

    vocab_size: int
    num_classes: int
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_dim: int
    max_len: int
    dropout_rate: float = 0.0
    pooling: str = "mean"
    pad_id: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = True
    remat_policy: str = "none"
    position_embedding: str = "learned"
    norm: str = "layer"
    mlp_activation: str = "gelu"
    num_kv_heads: int | None = None
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    attention_impl: str = "auto"
    qkv_fused: bool = False
    vocab_divisible_by: int = 1
    embedding_norm: bool = False
    token_type_vocab: int = 0
    pooler: str = "none"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _check_config(self)
        if self.pooler not in POOLERS:
            raise ValueError(
                f"TransformerClassifier pooler must be one of {POOLERS}, got {self.pooler!r}"
            )
        if self.num_classes < 1:
            raise ValueError(
                f"TransformerClassifier num_classes must be >= 1, got {self.num_classes}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"TransformerClassifier pooling must be one of {POOLINGS}, got {self.pooling!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        token_type_ids: jax.Array | None = None,
        train: bool,
    ) -> jax.Array:
        """Classify ``tokens`` [B, T]; returns float32 logits [B, num_classes].

        ``padding_mask`` [B, T] (bool or int, nonzero = real token) marks the positions to
        attend to and pool over; when None it is ``tokens != pad_id``. ``token_type_ids``
        [B, T] int in [0, token_type_vocab) (e.g. BERT's sentence A/B) needs
        ``token_type_vocab`` > 0; None means type 0 everywhere. ``train`` enables dropout
        (needs a 'dropout' rng).
        """
        _check_tokens(tokens, self.max_len, "TransformerClassifier")
        if token_type_ids is not None:
            if not self.token_type_vocab:
                raise ValueError(
                    "TransformerClassifier got token_type_ids but has token_type_vocab=0"
                )
            token_type_ids = jnp.asarray(token_type_ids)
            _check_packing(tokens, "TransformerClassifier", token_type_ids=token_type_ids)
        if padding_mask is None:
            padding_mask = tokens != self.pad_id
        else:
            padding_mask = jnp.asarray(padding_mask)
            if padding_mask.shape != tokens.shape:
                raise ValueError(
                    f"TransformerClassifier padding_mask must be shaped like tokens "
                    f"{tokens.shape}, got {padding_mask.shape}"
                )
            if not (
                padding_mask.dtype == jnp.bool_ or jnp.issubdtype(padding_mask.dtype, jnp.integer)
            ):
                raise TypeError(
                    f"TransformerClassifier padding_mask must be bool or int, "
                    f"got dtype {padding_mask.dtype}"
                )
            padding_mask = padding_mask != 0
        x, _ = _embed_and_encode(
            self,
            tokens,
            padding_mask,
            causal=False,
            train=train,
            name="encoder",
            token_type_ids=token_type_ids,
        )

        if self.pooling == "mean":
            weights = padding_mask[..., None].astype(jnp.float32)
            # max(count, 1): an all-padding row (e.g. the zeros used at init) pools to zeros.
            count = jnp.maximum(weights.sum(axis=1), 1.0)
            pooled = (x.astype(jnp.float32) * weights).sum(axis=1) / count
        else:
            pooled = x[:, 0]
        if self.pooler == "tanh":
            pooled = jnp.tanh(
                Dense(
                    self.embed_dim,
                    kernel_axes=("embed", "mlp"),
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name="pooler",
                )(pooled.astype(self.dtype))
            )
        pooled = nn.with_logical_constraint(pooled.astype(self.dtype), ("batch", "embed"))
        return classifier_head(pooled, self.num_classes, self.dtype, self.param_dtype)


@register_model("transformer_mlm")
class TransformerMaskedLM(nn.Module):
    """Bidirectional encoder with BERT's masked-LM head: int tokens [B, T] -> float32 logits
    [B, T, vocab] predicting every position's original token.

    The embeddings and ``encoder`` are ``TransformerClassifier``'s (same fields and parameter
    names), so its weights warm-start a classifier. The head is BERT's ``cls.predictions``:
    ``mlm_transform`` (dense [embed, embed] named ('embed','mlp')), GELU (exact with
    ``mlp_activation='gelu_exact'``, else the tanh approximation), ``mlm_norm``, then the tied
    token table plus a per-token bias ``mlm_bias`` [vocab] named ('vocab',). Padding positions
    (``tokens == pad_id`` unless ``padding_mask`` says otherwise) are masked out of attention.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    embed_dim: int
    mlp_dim: int
    max_len: int
    dropout_rate: float = 0.0
    pad_id: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan_layers: bool = True
    remat_policy: str = "none"
    position_embedding: str = "learned"
    norm: str = "layer"
    mlp_activation: str = "gelu"
    num_kv_heads: int | None = None
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    attention_impl: str = "auto"
    qkv_fused: bool = False
    vocab_divisible_by: int = 1
    embedding_norm: bool = False
    token_type_vocab: int = 0

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _check_config(self)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        token_type_ids: jax.Array | None = None,
        train: bool,
    ) -> jax.Array:
        """Logits [B, T, vocab] (float32) for ``tokens`` [B, T] (with [MASK]s in place);
        ``padding_mask`` / ``token_type_ids`` as for ``TransformerClassifier``."""
        _check_tokens(tokens, self.max_len, "TransformerMaskedLM")
        if token_type_ids is not None and not self.token_type_vocab:
            raise ValueError("TransformerMaskedLM got token_type_ids but has token_type_vocab=0")
        padding_mask = tokens != self.pad_id if padding_mask is None else padding_mask != 0
        x, embed = _embed_and_encode(
            self,
            tokens,
            padding_mask,
            causal=False,
            train=train,
            name="encoder",
            token_type_ids=token_type_ids,
        )
        x = Dense(
            self.embed_dim,
            kernel_axes=("embed", "mlp"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlm_transform",
        )(x)
        x = jax.nn.gelu(x, approximate=self.mlp_activation != "gelu_exact")
        x = make_norm(
            self.norm,
            axis_name="embed",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            epsilon=self.norm_epsilon,
            name="mlm_norm",
        )(nn.with_logical_constraint(x, ("batch", "length", "embed")))
        bias = self.param(
            "mlm_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (self.vocab_size,),
            self.param_dtype,
        )
        logits = embed.attend(x).astype(jnp.float32) + bias.astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


# GPT-2 sizes (Radford et al. 2019); everything but dropout/dtypes/scan/remat and the layout below
# is fixed. The layout is Megatron-LM's for tensor parallelism: one fused q/k/v projection (GPT-2's
# own ``c_attn``) and the 50,257-token table padded to 50,304 rows (a multiple of 128, which any
# tensor axis up to 128 divides). ``jaxdl.models.hf_import`` builds 🤗's unpadded, unfused layout.
_GPT2_SHARED = {"vocab_size": 50257, "max_len": 1024}
_GPT2_LAYOUT = {"qkv_fused": True, "vocab_divisible_by": 128}
register_model("gpt2_small", defaults=_GPT2_LAYOUT)(
    functools.partial(
        TransformerLM, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072, **_GPT2_SHARED
    )
)
register_model("gpt2_medium", defaults=_GPT2_LAYOUT)(
    functools.partial(
        TransformerLM, num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096, **_GPT2_SHARED
    )
)
