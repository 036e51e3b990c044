"""Reusable Flax Linen building blocks whose parameters carry logical axis names.

Convention: every layer or block that behaves differently in training takes ``train`` as a
keyword-only call argument, ``__call__(x, ..., *, train: bool)`` (``make_norm``, a factory,
takes it when building the norm). Nothing here imports from models/train/data/cli.
"""

from jaxdl.layers.aspp import ASPP, DeepLabHead
from jaxdl.layers.attention import (
    CrossAttention,
    MultiHeadAttention,
    einsum_attention,
    segment_mask,
)
from jaxdl.layers.conformer import (
    ConformerBlock,
    ConformerConvModule,
    ConformerFeedForward,
    ConvSubsampling,
    MaskedBatchNorm,
    RelativePositionAttention,
    conv_output_lengths,
    lengths_to_mask,
    rel_shift,
    relative_sinusoids,
)
from jaxdl.layers.conv import (
    CONV_BIAS_AXES,
    CONV_IMPLS,
    CONV_KERNEL_AXES,
    Conv,
    DepthwiseConv1D,
    conv2d,
    depthwise_conv1d,
    depthwise_conv2d_taps,
    he_normal_fan_out,
)
from jaxdl.layers.dense import Dense, classifier_head
from jaxdl.layers.dense_blocks import DenseBlock, DenseLayer, Transition
from jaxdl.layers.dropout import Dropout, dropout_keep_mask, realised_drop_rate
from jaxdl.layers.efficient import MBConv, StochasticDepth
from jaxdl.layers.embeddings import (
    Embed,
    LearnedPositionEmbedding,
    SinusoidalPositionEmbedding,
    apply_rotary,
    sinusoidal_positions,
)
from jaxdl.layers.mlp import MlpBlock
from jaxdl.layers.mobile import (
    ConvNormAct,
    InvertedResidual,
    SqueezeExcite,
    hard_sigmoid,
    hard_swish,
    make_divisible,
)
from jaxdl.layers.normalization import NORM_KINDS, GroupNorm, Identity, make_norm
from jaxdl.layers.pooling import max_pool
from jaxdl.layers.resnet_blocks import BasicBlock, Bottleneck
from jaxdl.layers.rnn import RNN_CELLS, RecurrentEncoder, RecurrentState
from jaxdl.layers.transformer import TransformerBlock, TransformerStack
from jaxdl.layers.unet_blocks import DoubleConv, UpConv
from jaxdl.layers.validation import check_image_batch

__all__ = [
    "ASPP",
    "CONV_BIAS_AXES",
    "CONV_IMPLS",
    "CONV_KERNEL_AXES",
    "NORM_KINDS",
    "RNN_CELLS",
    "BasicBlock",
    "Bottleneck",
    "ConformerBlock",
    "ConformerConvModule",
    "ConformerFeedForward",
    "Conv",
    "ConvNormAct",
    "DeepLabHead",
    "ConvSubsampling",
    "CrossAttention",
    "DepthwiseConv1D",
    "Dense",
    "DenseBlock",
    "DenseLayer",
    "Dropout",
    "dropout_keep_mask",
    "realised_drop_rate",
    "MBConv",
    "StochasticDepth",
    "Transition",
    "DoubleConv",
    "classifier_head",
    "conv2d",
    "conv_output_lengths",
    "depthwise_conv1d",
    "depthwise_conv2d_taps",
    "Embed",
    "GroupNorm",
    "Identity",
    "InvertedResidual",
    "LearnedPositionEmbedding",
    "MaskedBatchNorm",
    "MlpBlock",
    "MultiHeadAttention",
    "RecurrentEncoder",
    "RecurrentState",
    "RelativePositionAttention",
    "SinusoidalPositionEmbedding",
    "SqueezeExcite",
    "apply_rotary",
    "TransformerBlock",
    "TransformerStack",
    "UpConv",
    "check_image_batch",
    "einsum_attention",
    "hard_sigmoid",
    "hard_swish",
    "he_normal_fan_out",
    "lengths_to_mask",
    "make_divisible",
    "make_norm",
    "max_pool",
    "rel_shift",
    "relative_sinusoids",
    "segment_mask",
    "sinusoidal_positions",
]
