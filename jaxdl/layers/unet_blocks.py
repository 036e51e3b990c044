"""U-Net building blocks (Ronneberger et al. 2015) with logically named parameters.

``DoubleConv`` is the paper's two 3x3 convs + ReLU (with an optional norm after each conv),
``UpConv`` its 2x2 stride-2 "up-convolution" (a transposed conv, as torch's ``ConvTranspose2d(k=2,
s=2)``), written as one einsum so each input pixel fills its own 2x2 output patch.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.conv import CONV_BIAS_AXES, CONV_KERNEL_AXES, Conv, he_normal_fan_out
from jaxdl.layers.normalization import make_norm

FEATURE_MAP_AXES = ("batch", "height", "width", "channels")
UNET_PADDINGS = ("same", "valid")


class DoubleConv(nn.Module):
    """[B, H, W, C] -> [B, H', W', features]: (3x3 conv -> norm -> ReLU) twice.

    ``padding`` 'same' keeps H, W; 'valid' (the paper's) trims 2 pixels per conv. Convs carry a
    bias only without a norm (a norm's shift replaces it)."""

    features: int
    padding: str = "same"
    norm: str = "batch"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.padding not in UNET_PADDINGS:
            raise ValueError(f"padding must be one of {UNET_PADDINGS}, got {self.padding!r}")
        pad = 1 if self.padding == "same" else 0
        norm = functools.partial(
            make_norm,
            self.norm,
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        for i in (1, 2):
            x = Conv(
                self.features,
                kernel_size=(3, 3),
                padding=((pad, pad), (pad, pad)),
                use_bias=self.norm == "none",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=he_normal_fan_out,
                impl=self.conv_impl,
                name=f"conv{i}",
            )(x)
            x = nn.relu(norm(name=f"norm{i}")(x))
            x = nn.with_logical_constraint(x, FEATURE_MAP_AXES)
        return x


class UpConv(nn.Module):
    """2x2 stride-2 transposed conv: [B, H, W, C] -> [B, 2H, 2W, features].

    ``kernel`` [2, 2, C, features] holds torch's ``ConvTranspose2d`` weight [C, features, 2, 2]
    transposed (2, 3, 0, 1); output pixel (2h + i, 2w + j) is ``x[h, w] @ kernel[i, j]``."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(he_normal_fan_out, CONV_KERNEL_AXES),
            (2, 2, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, CONV_BIAS_AXES),
            (self.features,),
            self.param_dtype,
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel)
        batch, height, _, width, _, _ = y.shape
        y = y.reshape(batch, 2 * height, 2 * width, self.features) + bias
        return nn.with_logical_constraint(y, FEATURE_MAP_AXES)


def center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
    """The central ``height`` x ``width`` window of [B, H, W, C] (the paper's skip cropping)."""
    top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
    return x[:, top : top + height, left : left + width]
