"""Speech recognition models trained with CTC: a Conformer encoder and CRNN / BiLSTM baselines.

Every model maps features (e.g. log-mel filterbanks) [B, T, F] float and the real frames of
each row ``lengths`` [B] int (right-padded) to ``(logits, out_lengths)``: float32 logits
[B, T', vocab_size] over the output vocabulary and the real output frames [B] int32 of each row.
Vocabulary id 0 is the CTC blank (``optax.ctc_loss(..., blank_id=0)``, logit paddings
``arange(T') >= out_lengths``). Logits at padded output frames are unspecified; the real ones do
not depend on how far, or with what, a batch is padded. Every parameter and activation carries
logical axis names, so the models train under any mesh the rules table describes.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import (
    CONV_IMPLS,
    ConformerBlock,
    Conv,
    ConvSubsampling,
    Dense,
    MaskedBatchNorm,
    RecurrentEncoder,
    SinusoidalPositionEmbedding,
    conv_output_lengths,
    lengths_to_mask,
)
from jaxdl.layers.conformer import CONFORMER_CONV_NORMS, CONFORMER_POSITIONS, SPECTROGRAM_AXES
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.embeddings import EMBED_ACTIVATION_AXES
from jaxdl.layers.remat import REMAT_POLICIES, remat_call
from jaxdl.models.registry import register_model

CTC_BLANK_ID = 0
LOGIT_AXES = ("batch", "length", "vocab")
# Conformer sizes of Gulati et al. 2020, Table 1: (d_model, num_layers, num_heads). The paper's
# kernel size is 32; an odd 31 keeps 'SAME' padding symmetric (torchaudio requires odd kernels).
CONFORMER_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (96, 2, 4),
    "s": (144, 16, 4),
    "m": (256, 16, 4),
    "l": (512, 17, 8),
}
CRNN_TIME_REDUCTIONS = (2, 4)


def _check_speech_inputs(features: jax.Array, lengths: jax.Array, model: str) -> None:
    """Raise unless ``features`` is float [B, T, F] and ``lengths`` int [B]."""
    if features.ndim != 3 or not jnp.issubdtype(features.dtype, jnp.floating):
        raise ValueError(
            f"{model} expects float features [batch, time, freq], got {features.dtype} "
            f"{features.shape}"
        )
    if lengths.shape != features.shape[:1] or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"{model} expects int lengths [{features.shape[0]}], got {lengths.dtype} "
            f"{lengths.shape}"
        )


def _check_positive(model: nn.Module, *names: str) -> None:
    """Raise unless each named field of ``model`` is >= 1 (and its dropout rate in [0, 1))."""
    kind = type(model).__name__
    for name in names:
        if getattr(model, name) < 1:
            raise ValueError(f"{kind} {name} must be >= 1, got {getattr(model, name)}")
    if not 0.0 <= model.dropout_rate < 1.0:
        raise ValueError(f"{kind} dropout_rate must be in [0, 1), got {model.dropout_rate}")


def _ctc_head(model: nn.Module, x: jax.Array, upsampling: int = 1) -> jax.Array:
    """The ('embed','vocab') projection of encoder outputs [B, T', E] to float32 logits
    [B, T' * upsampling, vocab_size], parameters under ``head`` (call inside a compact method).

    ``upsampling`` k > 1 splits each encoder frame into k consecutive output frames, each with
    its own slice of the projection (Libovický & Helcl 2018's state splitting): CTC emits at
    most one label per output frame, so k lifts the ceiling on labels per encoder frame
    without running the encoder at a finer frame rate."""
    logits = Dense(
        model.vocab_size * upsampling,
        kernel_axes=("embed", "vocab"),
        dtype=model.dtype,
        param_dtype=model.param_dtype,
        name="head",
    )(x)
    batch, frames = logits.shape[:2]
    logits = logits.reshape(batch, frames * upsampling, model.vocab_size)
    return nn.with_logical_constraint(logits.astype(jnp.float32), LOGIT_AXES)


@register_model("conformer_ctc")
class ConformerCTC(nn.Module):
    """Conformer encoder (Gulati et al. 2020) with a CTC head: features [B, T, F] and lengths
    [B] -> (float32 logits [B, k * ceil(ceil(T/2)/2), vocab_size], out_lengths [B] int32),
    k = ``output_upsampling``.

    ``ConvSubsampling`` (4x fewer frames, ``subsampling_channels`` defaulting to ``d_model``)
    -> sinusoidal positions added once (``positions='absolute'``) or relative-position
    attention in every block ('relative', Transformer-XL style) -> dropout -> ``num_layers``
    ``ConformerBlock``s (``conv_norm`` 'batch' | 'layer', depthwise ``conv_kernel``) -> Dense
    head ('embed','vocab'), which emits ``output_upsampling`` output frames per encoder frame
    (1: the paper's; 2 gives character CTC room for fast speech at 40 ms encoder frames). No
    LSTM decoder: the paper's Table 1 sizes (aliases
    'conformer_ctc_s'/'_m'/'_l') have fewer parameters here than its 10.3M/30.7M/118.8M.
    ``remat_policy`` (one of REMAT_POLICIES) recomputes each block in the backward pass;
    ``conv_impl``: 'auto' or 'plain' convolutions (see ``jaxdl.layers.conv``).
    """

    vocab_size: int
    d_model: int = 144
    num_layers: int = 16
    num_heads: int = 4
    ffn_dim: int | None = None
    conv_kernel: int = 31
    positions: str = "relative"
    conv_norm: str = "batch"
    dropout_rate: float = 0.1
    subsampling_channels: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"
    conv_impl: str = "auto"
    output_upsampling: int = 1

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _check_positive(
            self,
            "vocab_size",
            "d_model",
            "num_layers",
            "num_heads",
            "conv_kernel",
            "output_upsampling",
        )
        if self.d_model % self.num_heads or self.d_model % 2:
            raise ValueError(
                f"ConformerCTC d_model={self.d_model} must be even (sinusoidal positions) and "
                f"divisible by num_heads={self.num_heads}"
            )
        for name, choices in (
            ("positions", CONFORMER_POSITIONS),
            ("conv_norm", CONFORMER_CONV_NORMS),
            ("remat_policy", REMAT_POLICIES),
            ("conv_impl", CONV_IMPLS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"ConformerCTC {name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        for name in ("ffn_dim", "subsampling_channels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ConformerCTC {name} must be >= 1, got {getattr(self, name)}")
        super().__post_init__()

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Encode ``features`` [B, T, F] with real frames ``lengths`` [B]; ``train`` enables
        dropout and batch statistics (then apply with ``mutable=['batch_stats']``)."""
        _check_speech_inputs(features, lengths, "ConformerCTC")
        x, lengths = ConvSubsampling(
            self.d_model,
            channels=self.subsampling_channels,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            conv_impl=self.conv_impl,
            name="subsampling",
        )(features, lengths)
        if self.positions == "absolute":
            x = SinusoidalPositionEmbedding(name="pos_embed")(x)
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        padding_mask = lengths_to_mask(lengths, x.shape[1])
        for index in range(self.num_layers):
            block = ConformerBlock(
                num_heads=self.num_heads,
                ffn_dim=self.ffn_dim or 4 * self.d_model,
                conv_kernel=self.conv_kernel,
                positions=self.positions,
                conv_norm=self.conv_norm,
                dropout_rate=self.dropout_rate,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                conv_impl=self.conv_impl,
                name=f"block{index}",
            )
            if self.remat_policy == "none":
                x = block(x, padding_mask, train=train)
            else:
                x = remat_call(block, x, padding_mask, train=train, policy=self.remat_policy)
        logits = _ctc_head(self, x, self.output_upsampling)
        return logits, lengths * self.output_upsampling


for _size, (_d, _layers, _heads) in CONFORMER_SIZES.items():
    register_model(f"conformer_ctc_{_size}")(
        functools.partial(ConformerCTC, d_model=_d, num_layers=_layers, num_heads=_heads)
    )


def _bidirectional_lstm(model: nn.Module, x: jax.Array, lengths: jax.Array, train: bool):
    """``model.num_layers`` bidirectional LSTM layers (``RecurrentEncoder``, under ``encoder``)
    over [B, T, D] with real frames ``lengths``; returns [B, T, 2 * hidden_dim]."""
    outputs, _ = RecurrentEncoder(
        model.hidden_dim,
        cell="lstm",
        num_layers=model.num_layers,
        bidirectional=True,
        dropout_rate=model.dropout_rate,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
        name="encoder",
    )(x, lengths_to_mask(lengths, x.shape[1]), train=train)
    return outputs


@register_model("crnn_ctc")
class CRNNCTC(nn.Module):
    """CRNN with a CTC head (DeepSpeech2-like): features [B, T, F] and lengths [B] ->
    (float32 logits [B, T', vocab_size], out_lengths [B] int32), T' = T / ``time_reduction``
    (2 or 4, rounded up).

    Two conv blocks (3x3, ``conv_channels``, stride 2 over frequency and 2 or 1 over time,
    one zero frame of padding each side) each followed by a padding-aware batch norm
    (``MaskedBatchNorm``, real frames only) and ReLU; frames past each row's length are zeroed
    before each conv. The map is flattened per frame to [B, T', F' * conv_channels]
    (F' = ceil(ceil(F/2)/2)), then ``num_layers`` bidirectional LSTM layers of ``hidden_dim``
    whose backward direction starts at each row's last real frame, and a Dense head.
    Parameters: ``conv1``/``conv2``, ``norm1``/``norm2`` (('conv_out',)), ``encoder`` (a
    ``RecurrentEncoder``), ``head`` ('embed','vocab').
    """

    vocab_size: int
    conv_channels: int = 32
    time_reduction: int = 4
    hidden_dim: int = 256
    num_layers: int = 3
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _check_positive(self, "vocab_size", "conv_channels", "hidden_dim", "num_layers")
        if self.time_reduction not in CRNN_TIME_REDUCTIONS:
            raise ValueError(
                f"CRNNCTC time_reduction must be one of {CRNN_TIME_REDUCTIONS}, "
                f"got {self.time_reduction}"
            )
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"CRNNCTC conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Encode ``features`` [B, T, F] with real frames ``lengths`` [B]; ``train`` enables
        dropout and batch statistics (then apply with ``mutable=['batch_stats']``)."""
        _check_speech_inputs(features, lengths, "CRNNCTC")
        x = features.astype(self.dtype)[..., None]
        pad = ((1, 1), (1, 1))
        for index, time_stride in enumerate((2, self.time_reduction // 2), start=1):
            x = jnp.where(lengths_to_mask(lengths, x.shape[1])[:, :, None, None], x, 0)
            x = Conv(
                self.conv_channels,
                kernel_size=(3, 3),
                strides=(time_stride, 2),
                padding=pad,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                impl=self.conv_impl,
                name=f"conv{index}",
            )(x)
            lengths = conv_output_lengths(lengths, 3, time_stride, pad[0])
            mask = lengths_to_mask(lengths, x.shape[1])[:, :, None]
            x = MaskedBatchNorm(
                "conv_out", dtype=self.dtype, param_dtype=self.param_dtype, name=f"norm{index}"
            )(x, mask, train=train)
            x = nn.with_logical_constraint(nn.relu(x), SPECTROGRAM_AXES)
        x = nn.with_logical_constraint(x.reshape(*x.shape[:2], -1), EMBED_ACTIVATION_AXES)
        x = _bidirectional_lstm(self, x, lengths, train)
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        return _ctc_head(self, x), lengths


@register_model("bilstm_ctc")
class BiLSTMCTC(nn.Module):
    """Stacked bidirectional LSTM with a CTC head: features [B, T, F] and lengths [B] ->
    (float32 logits [B, ceil(T / frame_stack), vocab_size], out_lengths [B] int32).

    ``frame_stack`` k > 1 concatenates every k consecutive frames into one [k * F] frame (k x
    fewer steps; the last frame of a row is completed with zeros), a common cheap subsampling
    for recurrent acoustic models. Then ``num_layers`` bidirectional LSTM layers of
    ``hidden_dim`` (dropout between layers; each backward direction starts at its row's last
    real frame) and a Dense head. Parameters: ``encoder`` (a ``RecurrentEncoder``) and
    ``head`` ('embed','vocab').
    """

    vocab_size: int
    hidden_dim: int = 256
    num_layers: int = 3
    frame_stack: int = 1
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _check_positive(self, "vocab_size", "hidden_dim", "num_layers", "frame_stack")
        super().__post_init__()

    @nn.compact
    def __call__(
        self, features: jax.Array, lengths: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Encode ``features`` [B, T, F] with real frames ``lengths`` [B]; ``train`` enables
        dropout."""
        _check_speech_inputs(features, lengths, "BiLSTMCTC")
        x, lengths = features.astype(self.dtype), lengths.astype(jnp.int32)
        if self.frame_stack > 1:
            k = self.frame_stack
            x = jnp.where(lengths_to_mask(lengths, x.shape[1])[..., None], x, 0)
            x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % k), (0, 0)))
            x = x.reshape(x.shape[0], x.shape[1] // k, k * x.shape[2])
            lengths = (lengths + k - 1) // k
        x = nn.with_logical_constraint(x, EMBED_ACTIVATION_AXES)
        x = _bidirectional_lstm(self, x, lengths, train)
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        return _ctc_head(self, x), lengths
