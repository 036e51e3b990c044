"""U-Net (Ronneberger et al. 2015) for semantic segmentation: per-pixel class logits.

``depth`` down stages (DoubleConv, 2x2 max-pool) double the channels from ``width``; a bottleneck
DoubleConv; ``depth`` up stages (UpConv halving channels, concatenation with the cropped skip,
DoubleConv); a 1x1 conv to ``num_classes``. The paper's network is ``width=64, depth=4,
padding='valid', norm='none'`` (572 -> 388 px, 31,030,658 parameters for 2 classes); the default
is padded ('same': output size = input size, which must divide by 2**depth) with BatchNorm.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.conv import Conv
from jaxdl.layers.pooling import max_pool
from jaxdl.layers.unet_blocks import (
    FEATURE_MAP_AXES,
    UNET_PADDINGS,
    DoubleConv,
    UpConv,
    center_crop,
)
from jaxdl.models.registry import register_model


@register_model("unet")
class UNet(nn.Module):
    """[B, H, W, C] float images -> float32 logits [B, H', W', num_classes] (H' = H when
    ``padding='same'``)."""

    num_classes: int
    width: int = 64
    depth: int = 4
    padding: str = "same"
    norm: str = "batch"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.num_classes < 1 or self.width < 1 or self.depth < 1:
            raise ValueError(
                f"UNet needs num_classes, width and depth >= 1, got {self.num_classes}, "
                f"{self.width}, {self.depth}"
            )
        if self.padding not in UNET_PADDINGS:
            raise ValueError(f"UNet padding must be one of {UNET_PADDINGS}, got {self.padding!r}")
        if self.padding == "same" and (x.shape[1] % 2**self.depth or x.shape[2] % 2**self.depth):
            raise ValueError(
                f"UNet with padding='same' and depth {self.depth} needs H and W divisible by "
                f"{2**self.depth}, got {x.shape[1:3]}"
            )
        block = {
            "padding": self.padding,
            "norm": self.norm,
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "conv_impl": self.conv_impl,
        }
        x = nn.with_logical_constraint(jnp.asarray(x, self.dtype), FEATURE_MAP_AXES)
        skips = []
        for level in range(self.depth):
            x = DoubleConv(self.width * 2**level, name=f"down{level}", **block)(x, train=train)
            skips.append(x)
            x = max_pool(x, (2, 2), (2, 2), impl=self.conv_impl)
        x = DoubleConv(self.width * 2**self.depth, name="bottleneck", **block)(x, train=train)
        for level in reversed(range(self.depth)):
            features = self.width * 2**level
            x = UpConv(features, self.dtype, self.param_dtype, name=f"upconv{level}")(x)
            skip = center_crop(skips[level], x.shape[1], x.shape[2])
            x = jnp.concatenate([skip, x], axis=-1)
            x = DoubleConv(features, name=f"up{level}", **block)(x, train=train)
        logits = Conv(
            self.num_classes,
            kernel_size=(1, 1),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            impl=self.conv_impl,
            name="head",
        )(x)
        return nn.with_logical_constraint(logits.astype(jnp.float32), FEATURE_MAP_AXES)
