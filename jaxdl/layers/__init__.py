"""Reusable Flax Linen building blocks whose parameters carry logical axis names."""

from jaxdl.layers.attention import MultiHeadAttention, dropout_attention
from jaxdl.layers.conv import CONV_BIAS_AXES, CONV_KERNEL_AXES, Conv, he_normal_fan_out
from jaxdl.layers.dense import Dense, classifier_head
from jaxdl.layers.embeddings import (
    Embed,
    LearnedPositionEmbedding,
    SinusoidalPositionEmbedding,
    sinusoidal_positions,
)
from jaxdl.layers.mlp import MlpBlock
from jaxdl.layers.normalization import NORM_KINDS, GroupNorm, Identity, make_norm
from jaxdl.layers.validation import check_image_batch

__all__ = [
    "CONV_BIAS_AXES",
    "CONV_KERNEL_AXES",
    "NORM_KINDS",
    "Conv",
    "Dense",
    "classifier_head",
    "Embed",
    "GroupNorm",
    "Identity",
    "LearnedPositionEmbedding",
    "MlpBlock",
    "MultiHeadAttention",
    "SinusoidalPositionEmbedding",
    "check_image_batch",
    "dropout_attention",
    "he_normal_fan_out",
    "make_norm",
    "sinusoidal_positions",
]
