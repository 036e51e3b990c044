"""Conformer encoder layers (Gulati et al. 2020, arXiv:2005.08100) over padded speech frames.

Structure as in torchaudio's ``Conformer`` and the MLCommons AlgoPerf JAX Conformer: a
convolutional front end (``ConvSubsampling``) then blocks of half-step feed-forward,
self-attention, convolution module and half-step feed-forward (``ConformerBlock``).

Every layer takes a padding mask [batch, length] (True = real frame) and keeps padded frames
from reaching real ones: attention hides padded keys, frames are zeroed before every
convolution (so a real frame reads the same zeros an unpadded utterance's convolution padding
gives), and ``MaskedBatchNorm`` computes its statistics over real frames only. So the real
outputs of an utterance do not depend on how far, or with what, its batch is padded.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdl.layers.attention import (
    EMBED_ACTIVATION_AXES,
    HEADS_ACTIVATION_AXES,
    OUT_KERNEL_AXES,
    QKV_KERNEL_AXES,
    MultiHeadAttention,
    _Attention,
)
from jaxdl.layers.conv import Conv, DepthwiseConv1D
from jaxdl.layers.dense import Dense
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.mlp import MlpBlock
from jaxdl.layers.normalization import make_norm
from jaxdl.parallel.gradients import batch_axes

CONFORMER_POSITIONS = ("relative", "absolute")
CONFORMER_CONV_NORMS = ("batch", "layer")
# Time-frequency feature maps [batch, time, freq, channels]: time is the sequence ('length'),
# frequency rides on 'width' (replicated).
SPECTROGRAM_AXES = ("batch", "length", "width", "channels")
# Relative position encodings projected per head [2T - 1, heads, head_dim]: a position table.
RELATIVE_POSITION_AXES = ("pos", "heads", "kv")
# Subsampling convolutions: 3x3, stride 2 over time and frequency, one frame of zeros each side.
SUBSAMPLING_KERNEL, SUBSAMPLING_STRIDE, SUBSAMPLING_PAD = 3, 2, 1


def lengths_to_mask(lengths: jax.Array, length: int) -> jax.Array:
    """Padding mask [batch, length] (True = real frame) of right-padded rows of ``lengths``."""
    return jnp.arange(length)[None, :] < lengths[:, None]


def conv_output_lengths(
    lengths: jax.Array, kernel_size: int, stride: int, padding: tuple[int, int]
) -> jax.Array:
    """Frames a convolution gives an unpadded utterance of each length:
    ``floor((L + pad_low + pad_high - kernel_size) / stride) + 1``, at least 0 (int32)."""
    window = lengths + padding[0] + padding[1] - kernel_size
    # Truncating ``lax.div`` on the non-negative windows equals floor division there, and unlike
    # ``//`` (which lowers with ``rem``) it converts to ONNX with a symbolic batch dimension.
    return jnp.where(window >= 0, lax.div(window, stride) + 1, 0).astype(jnp.int32)


class MaskedBatchNorm(nn.Module):
    """Batch normalisation over the last axis whose statistics count real positions only.

    ``nn.BatchNorm(mask=...)`` averages per-device masked means in a data-parallel region,
    which is not the global masked mean when devices hold different numbers of real frames
    (and is NaN on a device holding none); here the sums and counts are added over the
    ``batch_axes()`` devices first, so the statistics are exactly the global batch's real
    frames'. Parameters and state are ``nn.BatchNorm``'s: ``scale``/``bias`` [C] named
    ``(axis_name,)``, ``batch_stats`` ``mean``/``var`` [C]; momentum and epsilon are
    ``make_norm``'s (0.9, 1e-5). The variance is the biased (population) one.
    """

    axis_name: str
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """Normalise ``x`` [..., C]; ``mask`` (True = real) has ``x``'s shape without the
        feature axis, or broadcasts to it (e.g. [B, T, 1] for [B, T, F, C] maps). ``train``
        uses (and updates the running averages with) the batch statistics of the real
        positions; otherwise the running averages normalise."""
        if mask.ndim != x.ndim - 1:
            raise ValueError(
                f"MaskedBatchNorm mask must have rank {x.ndim - 1} for input {x.shape}, "
                f"got {mask.shape}"
            )
        features = x.shape[-1]
        mean_stat = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        var_stat = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (features,),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
            (features,),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        if train:
            real = jnp.broadcast_to(mask[..., None], (*x.shape[:-1], 1))
            axes = tuple(range(x.ndim - 1))
            devices = batch_axes()

            def total(value: jax.Array) -> jax.Array:
                return value if devices is None else jax.lax.psum(value, devices)

            count = jnp.maximum(total(jnp.sum(real, dtype=jnp.float32)), 1.0)
            mean = total(jnp.sum(jnp.where(real, x32, 0.0), axes)) / count
            squares = jnp.where(real, jnp.square(x32 - mean), 0.0)
            var = total(jnp.sum(squares, axes)) / count
            if not self.is_initializing():
                mean_stat.value = self.momentum * mean_stat.value + (1 - self.momentum) * mean
                var_stat.value = self.momentum * var_stat.value + (1 - self.momentum) * var
        else:
            mean, var = mean_stat.value, var_stat.value
        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype or x.dtype)


class ConvSubsampling(nn.Module):
    """Conformer's front end: two 3x3 stride-2 convolutions + ReLU over (time, frequency), then
    a Dense to ``features``: [B, T, F] -> [B, ceil(ceil(T/2)/2), features], 4x fewer frames.

    Each convolution pads one zero frame on every side (torch's ``Conv2d(padding=1)``); 'SAME'
    would split its padding by the parity of the padded length T and so shift an utterance's
    frames when its batch is padded further. Frames past each utterance's length are zeroed
    before each convolution, so the returned lengths, ``ceil(L / 2)`` twice (the frames the
    convolutions give the unpadded utterance), are exactly the frames computed from real ones.

    Parameters: ``conv1``/``conv2`` (``channels``, default ``features``; kernels named
    ('conv_height','conv_width','conv_in','conv_out')), ``out`` [F' * channels, features]
    named ('mlp','embed'), F' = ceil(ceil(F/2)/2).
    """

    features: int
    channels: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Subsample ``x`` [B, T, F] with real frames ``lengths`` [B] (int); returns
        ([B, T', features] with padded frames zeroed, int32 lengths [B])."""
        if x.ndim != 3:
            raise ValueError(f"ConvSubsampling expects [batch, time, freq], got {x.shape}")
        y = x.astype(self.dtype)[..., None]
        pad = (SUBSAMPLING_PAD, SUBSAMPLING_PAD)
        for index in (1, 2):
            y = jnp.where(lengths_to_mask(lengths, y.shape[1])[:, :, None, None], y, 0)
            y = Conv(
                self.channels or self.features,
                kernel_size=(SUBSAMPLING_KERNEL,) * 2,
                strides=SUBSAMPLING_STRIDE,
                padding=(pad, pad),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                impl=self.conv_impl,
                name=f"conv{index}",
            )(y)
            y = nn.with_logical_constraint(nn.relu(y), SPECTROGRAM_AXES)
            lengths = conv_output_lengths(lengths, SUBSAMPLING_KERNEL, SUBSAMPLING_STRIDE, pad)
        y = nn.with_logical_constraint(y.reshape(*y.shape[:2], -1), ("batch", "length", "mlp"))
        y = Dense(
            self.features,
            kernel_axes=("mlp", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(y)
        y = jnp.where(lengths_to_mask(lengths, y.shape[1])[..., None], y, 0)
        return nn.with_logical_constraint(y, EMBED_ACTIVATION_AXES), lengths


class ConformerFeedForward(nn.Module):
    """Conformer's feed-forward module: LayerNorm -> Dense ``ffn_dim`` -> Swish -> dropout ->
    Dense -> dropout, [B, T, E] -> [B, T, E]. ``ConformerBlock`` adds half of it (the
    macaron half-steps). Parameters: ``norm`` and ``mlp`` (an ``MlpBlock``: ``wi``
    ('embed','mlp'), ``wo`` ('mlp','embed'))."""

    ffn_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Apply the module to ``x`` [B, T, E]; ``train`` enables dropout."""
        y = make_norm(
            "layer",
            axis_name="embed",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="norm",
        )(x)
        y = MlpBlock(
            self.ffn_dim,
            activation="silu",
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )(y, train=train)
        return Dropout(self.dropout_rate, deterministic=not train)(y)


class ConformerConvModule(nn.Module):
    """Conformer's convolution module, [B, T, E] -> [B, T, E]: LayerNorm -> pointwise conv to
    2E -> GLU -> depthwise conv (``kernel_size``, 'SAME') -> BatchNorm or LayerNorm (``norm``)
    -> Swish -> pointwise conv -> dropout.

    Padded frames are zeroed before the depthwise convolution, and the batch norm
    (``MaskedBatchNorm``) counts real frames only, so padding never reaches real frames.
    Parameters: ``norm_in``, ``pointwise_in`` [E, 2E] ('embed','mlp'), ``depthwise`` (a
    ``DepthwiseConv1D``), ``conv_norm`` (scale/bias named ('embed',)), ``pointwise_out``
    [E, E] ('mlp','embed'). Torch's ``Conv1d`` 1x1 weights [out, in, 1] are the pointwise
    kernels transposed.
    """

    kernel_size: int = 31
    norm: str = "batch"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.norm not in CONFORMER_CONV_NORMS:
            raise ValueError(
                f"ConformerConvModule norm must be one of {CONFORMER_CONV_NORMS}, got {self.norm!r}"
            )
        if self.kernel_size < 1:
            raise ValueError(
                f"ConformerConvModule kernel_size must be >= 1, got {self.kernel_size}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, padding_mask: jax.Array, *, train: bool) -> jax.Array:
        """Apply the module to ``x`` [B, T, E] whose real frames are ``padding_mask`` [B, T];
        ``train`` enables dropout and batch statistics."""
        dense = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        channels = x.shape[-1]
        y = make_norm("layer", axis_name="embed", train=train, name="norm_in", **dense)(x)
        y = Dense(2 * channels, kernel_axes=("embed", "mlp"), name="pointwise_in", **dense)(y)
        y = nn.glu(y, axis=-1)
        y = jnp.where(padding_mask[..., None], y, 0)
        y = DepthwiseConv1D(self.kernel_size, impl=self.conv_impl, name="depthwise", **dense)(y)
        if self.norm == "batch":
            y = MaskedBatchNorm("embed", name="conv_norm", **dense)(y, padding_mask, train=train)
        else:
            y = make_norm("layer", axis_name="embed", train=train, name="conv_norm", **dense)(y)
        y = nn.with_logical_constraint(nn.silu(y), EMBED_ACTIVATION_AXES)
        y = Dense(channels, kernel_axes=("mlp", "embed"), name="pointwise_out", **dense)(y)
        y = Dropout(self.dropout_rate, deterministic=not train)(y)
        return nn.with_logical_constraint(y, EMBED_ACTIVATION_AXES)


def relative_sinusoids(length: int, features: int, max_timescale: float = 1e4) -> np.ndarray:
    """Sinusoidal encodings [2 * length - 1, features] of the relative positions
    ``length - 1, ..., 1, 0, -1, ..., -(length - 1)`` (row c is position ``length - 1 - c``).

    The layout and frequencies of ``sinusoidal_positions`` (sines then cosines), at signed
    positions; NumPy, so they are compile-time constants.
    """
    if features % 2:
        raise ValueError(f"sinusoidal positions need an even feature size, got {features}")
    half = features // 2
    inv_freq = max_timescale ** (-np.arange(half, dtype=np.float64) / half)
    positions = np.arange(length - 1, -length, -1, dtype=np.float64)
    angles = positions[:, None] * inv_freq[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def rel_shift(scores: jax.Array) -> jax.Array:
    """Transformer-XL's relative shift: [..., T, 2T - 1] scores against the relative positions
    of ``relative_sinusoids`` -> [..., T, T] with ``out[i, j] = scores[i, T - 1 - i + j]``
    (the score of query i against relative position i - j).

    Done with a pad and reshapes rather than a gather (Dai et al. 2019, appendix B; ESPnet's
    ``rel_shift``): prepending a column and reading the [T, 2T] rows as [2T, T] shifts
    row i left by T - 1 - i.
    """
    *lead, length, positions = scores.shape
    # The prepended column never reaches the output, so a copy of column 0 serves as well as
    # zeros, without a pad (which ONNX conversion with a symbolic batch cannot take).
    padded = jnp.concatenate([scores[..., :1], scores], axis=-1)
    shifted = padded.reshape(*lead, positions + 1, length)[..., 1:, :]
    return shifted.reshape(*lead, length, positions)[..., :length]


class RelativePositionAttention(_Attention):
    """Multi-head self-attention with Transformer-XL relative positions (Dai et al. 2019;
    ESPnet's ``RelPositionMultiHeadedAttention``, as Conformer uses): [B, T, E] -> [B, T, E].

    score(i, j) = ((q_i + u) . k_j + (q_i + v) . W_pos r_{i-j}) / sqrt(head_dim), per head,
    with r the sinusoidal encoding of the signed distance i - j (``relative_sinusoids``) and
    u, v learned content and position biases. The position term is computed against all
    2T - 1 distances and aligned by ``rel_shift``. Logits and softmax are float32.

    Parameters: ``MultiHeadAttention``'s ``query``/``key``/``value`` [E, heads, head_dim]
    ('embed','heads','kv') -- or, with ``qkv_fused``, one ``qkv`` [E, 3, heads, head_dim]
    ('embed','qkv','heads','kv') -- and ``out`` [heads, head_dim, E] ('heads','kv','embed'), plus
    ``pos_kernel`` [E, heads, head_dim] ('embed','heads','kv', no bias: it would add the same
    value to every key of a query) and ``pos_bias_u``/``pos_bias_v`` [heads, head_dim]
    ('heads','kv', zero-initialised). Attention is its own einsums ('auto' and 'xla'
    ``attention_impl`` alike).
    """

    qkv_fused: bool = False

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.num_kv_heads not in (None, self.num_heads):
            raise ValueError("RelativePositionAttention has no grouped-query form")
        if self.attention_impl == "cudnn":
            raise ValueError(
                "RelativePositionAttention has no cuDNN form (its scores carry a bias)"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, x: jax.Array, padding_mask: jax.Array | None = None, *, train: bool
    ) -> jax.Array:
        """Attend over ``x`` [B, T, E]; ``padding_mask`` [B, T] bool (True = real frame) hides
        padded keys; ``train`` enables attention-probability dropout (a 'dropout' rng)."""
        if x.ndim != 3:
            raise ValueError(
                f"RelativePositionAttention expects [batch, length, embed], got {x.shape}"
            )
        length, embed = x.shape[1:]
        heads = (self.num_heads, self.head_dim)
        query, key, value = self._self_attention_heads(x, fused=self.qkv_fused)
        fan_in = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        pos_kernel = self.param(
            "pos_kernel",
            nn.with_logical_partitioning(fan_in, QKV_KERNEL_AXES),
            (embed, *heads),
            self.param_dtype,
        )
        bias_u, bias_v = (
            self.param(
                name,
                nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
                heads,
                self.param_dtype,
            )
            for name in ("pos_bias_u", "pos_bias_v")
        )
        query, pos_kernel, bias_u, bias_v = nn.dtypes.promote_dtype(
            query, pos_kernel, bias_u, bias_v, dtype=self.dtype
        )
        encodings = jnp.asarray(relative_sinusoids(length, embed), query.dtype)
        positions = jnp.einsum("pe,end->pnd", encodings, pos_kernel)
        positions = nn.with_logical_constraint(positions, RELATIVE_POSITION_AXES)
        # Heads lead ([N, B, T, D]) and the scale goes on the queries, so every batched dot's
        # output is already in the scores' layout [N, B, T, S] and XLA:CPU transposes only the
        # small operands (as ``attention_weights``); the position dot's batch is the heads.
        scale = jnp.asarray(self.head_dim**-0.5, query.dtype)
        query_u, query_v = (
            jnp.transpose((query + b) * scale, (2, 0, 1, 3)) for b in (bias_u, bias_v)
        )
        key, value = (jnp.transpose(a, (2, 0, 1, 3)) for a in (key, value))
        f32 = jnp.float32
        content = jnp.einsum("nbtd,nbsd->nbts", query_u, key, preferred_element_type=f32)
        position = jnp.einsum("nbtd,pnd->nbtp", query_v, positions, preferred_element_type=f32)
        logits = content + rel_shift(position)
        if padding_mask is not None:
            # A finite fill keeps rows without real keys NaN-free (as einsum_attention).
            logits = jnp.where(padding_mask[None, :, None, :], logits, jnp.finfo(f32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = Dropout(self.dropout_rate, deterministic=not train)(probs)
        out = jnp.einsum("nbts,nbsd->btnd", probs.astype(value.dtype), value)
        out = nn.with_logical_constraint(out, HEADS_ACTIVATION_AXES)
        out = self._projection("btnd,nde->bte", (*heads, embed), OUT_KERNEL_AXES, (0, 1), "out")(
            out
        )
        return nn.with_logical_constraint(out, EMBED_ACTIVATION_AXES)


class ConformerBlock(nn.Module):
    """One Conformer block, [B, T, E] -> [B, T, E]:

        x = x + 1/2 FFN(x);  x = x + drop(MHSA(LN(x)));  x = x + Conv(x);
        x = x + 1/2 FFN(x);  y = LN(x)

    ``positions='relative'`` attends with ``RelativePositionAttention``; 'absolute' with
    ``MultiHeadAttention`` (the encoder adds sinusoidal positions to its input once).
    ``conv_norm`` ('batch' | 'layer') is the convolution module's norm. ``dropout_rate``
    applies to the feed-forward, attention-probability, attention-output and convolution
    dropouts (torchaudio's single ``dropout``). Parameters: ``ffn1``, ``attn_norm``,
    ``attention`` (queries, keys and values from one fused ``qkv`` kernel, as torch's
    ``in_proj``: one GEMM instead of three, 5 % of the CPU train step), ``conv``, ``ffn2``,
    ``final_norm``.
    """

    num_heads: int
    ffn_dim: int
    conv_kernel: int = 31
    positions: str = "relative"
    conv_norm: str = "batch"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.positions not in CONFORMER_POSITIONS:
            raise ValueError(
                f"ConformerBlock positions must be one of {CONFORMER_POSITIONS}, "
                f"got {self.positions!r}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"ConformerBlock dropout_rate must be in [0, 1), got {self.dropout_rate}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, padding_mask: jax.Array, *, train: bool) -> jax.Array:
        """Apply the block to ``x`` [B, T, E] whose real frames are ``padding_mask`` [B, T]
        (bool); ``train`` enables dropout and batch statistics."""
        if x.ndim != 3 or padding_mask.shape != x.shape[:2]:
            raise ValueError(
                f"ConformerBlock expects x [batch, length, embed] and padding_mask [batch, "
                f"length], got {x.shape} and {padding_mask.shape}"
            )
        if x.shape[-1] % self.num_heads:
            raise ValueError(
                f"embed dim {x.shape[-1]} is not divisible by num_heads={self.num_heads}"
            )
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        ffn = {"ffn_dim": self.ffn_dim, "dropout_rate": self.dropout_rate, **common}
        x = x + 0.5 * ConformerFeedForward(name="ffn1", **ffn)(x, train=train)
        x = nn.with_logical_constraint(x, EMBED_ACTIVATION_AXES)

        y = make_norm("layer", axis_name="embed", train=train, name="attn_norm", **common)(x)
        attention_cls = (
            RelativePositionAttention if self.positions == "relative" else MultiHeadAttention
        )
        y = attention_cls(
            num_heads=self.num_heads,
            head_dim=x.shape[-1] // self.num_heads,
            qkv_fused=True,
            dropout_rate=self.dropout_rate,
            name="attention",
            **common,
        )(y, padding_mask, train=train)
        x = x + Dropout(self.dropout_rate, deterministic=not train)(y)
        x = nn.with_logical_constraint(x, EMBED_ACTIVATION_AXES)

        x = x + ConformerConvModule(
            self.conv_kernel,
            norm=self.conv_norm,
            dropout_rate=self.dropout_rate,
            conv_impl=self.conv_impl,
            name="conv",
            **common,
        )(x, padding_mask, train=train)
        x = nn.with_logical_constraint(x, EMBED_ACTIVATION_AXES)

        x = x + 0.5 * ConformerFeedForward(name="ffn2", **ffn)(x, train=train)
        x = make_norm("layer", axis_name="embed", train=train, name="final_norm", **common)(x)
        return nn.with_logical_constraint(x, EMBED_ACTIVATION_AXES)
