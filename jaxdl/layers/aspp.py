"""DeepLabv3 blocks (Chen et al. 2017): atrous spatial pyramid pooling and the segmentation head.

``ASPP`` and ``DeepLabHead`` compute what torchvision's ``ASPP``/``DeepLabHead``
(``torchvision.models.segmentation.deeplabv3``) compute, with logically named parameters: a 1x1
conv branch, one dilated 3x3 conv branch per atrous rate and an image-pooling branch (global
mean -> 1x1 conv, spread back over the map), concatenated and projected by a 1x1 conv.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.conv import Conv, he_normal_fan_out
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.normalization import make_norm
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES

DEEPLAB_ATROUS_RATES = (12, 24, 36)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: [B, H, W, C] -> [B, H, W, features].

    Branches (each conv -> norm -> ReLU, ``features`` channels): ``branch0`` a 1x1 conv,
    ``branch{i}`` a 3x3 conv dilated by ``atrous_rates[i - 1]`` (padding = rate, so H, W are
    kept), ``pool`` a 1x1 conv on the global mean, broadcast back to H x W (what torch's bilinear
    upsampling of a 1x1 map gives). Their concatenation goes through ``project`` (1x1 conv ->
    norm -> ReLU) and dropout (``dropout_rate``, active with ``train``). Parameters:
    ``{branch*,pool,project}_conv``/``_norm``; convs carry a bias only with ``norm='none'``.
    """

    features: int = 256
    atrous_rates: tuple[int, ...] = DEEPLAB_ATROUS_RATES
    dropout_rate: float = 0.5
    norm: str = "batch"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Pool ``x`` [B, H, W, C] at several rates; returns [B, H, W, features]."""
        norm = functools.partial(
            make_norm,
            self.norm,
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

        def conv_norm_relu(y: jax.Array, kernel: int, rate: int, name: str) -> jax.Array:
            pad = rate * (kernel // 2)
            y = Conv(
                self.features,
                kernel_size=(kernel, kernel),
                padding=((pad, pad), (pad, pad)),
                kernel_dilation=rate,
                use_bias=self.norm == "none",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=he_normal_fan_out,
                impl=self.conv_impl,
                name=f"{name}_conv",
            )(y)
            y = nn.relu(norm(name=f"{name}_norm")(y))
            return nn.with_logical_constraint(y, FEATURE_MAP_AXES)

        x = nn.with_logical_constraint(jnp.asarray(x, self.dtype), FEATURE_MAP_AXES)
        branches = [conv_norm_relu(x, 1, 1, "branch0")]
        for index, rate in enumerate(self.atrous_rates, start=1):
            branches.append(conv_norm_relu(x, 3, rate, f"branch{index}"))
        pooled = conv_norm_relu(jnp.mean(x, axis=(1, 2), keepdims=True), 1, 1, "pool")
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.features)))
        y = conv_norm_relu(jnp.concatenate(branches, axis=-1), 1, 1, "project")
        return Dropout(self.dropout_rate, deterministic=not train)(y)


class DeepLabHead(nn.Module):
    """DeepLabv3 head: [B, H, W, C] -> class logits [B, H, W, num_classes] (in ``dtype``).

    ``aspp`` (``ASPP``) -> ``conv`` 3x3 (``features`` channels) -> ``norm`` -> ReLU ->
    ``classifier`` 1x1 conv with bias, as torchvision's ``DeepLabHead``.
    """

    num_classes: int
    features: int = 256
    atrous_rates: tuple[int, ...] = DEEPLAB_ATROUS_RATES
    dropout_rate: float = 0.5
    norm: str = "batch"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Per-pixel logits [B, H, W, num_classes] of the feature map ``x`` [B, H, W, C]."""
        x = ASPP(
            features=self.features,
            atrous_rates=tuple(self.atrous_rates),
            dropout_rate=self.dropout_rate,
            norm=self.norm,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            conv_impl=self.conv_impl,
            name="aspp",
        )(x, train=train)
        x = Conv(
            self.features,
            kernel_size=(3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=self.norm == "none",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=he_normal_fan_out,
            impl=self.conv_impl,
            name="conv",
        )(x)
        x = make_norm(
            self.norm,
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="norm",
        )(x)
        x = nn.with_logical_constraint(nn.relu(x), FEATURE_MAP_AXES)
        logits = Conv(
            self.num_classes,
            kernel_size=(1, 1),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            impl=self.conv_impl,
            name="classifier",
        )(x)
        return nn.with_logical_constraint(logits, FEATURE_MAP_AXES)
