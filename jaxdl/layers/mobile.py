"""Mobile-network blocks (MobileNetV2/V3): inverted residuals, squeeze-and-excite, hard
activations, with logically named parameters and torchvision's layer structure.

Convolutions are ``jaxdl.layers.conv.Conv`` (depthwise ones via ``feature_group_count``), so on
CPU each picks the formulation that routes around XLA:CPU's slow paths.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.conv import Conv, he_normal_fan_out
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES
from jaxdl.parallel.gradients import batch_axes

Activation = Callable[[jax.Array], jax.Array]


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """torch's ``Hardsigmoid``: relu6(x + 3) / 6."""
    return jax.nn.relu6(x + 3.0) / 6.0


def hard_swish(x: jax.Array) -> jax.Array:
    """torch's ``Hardswish``: x * relu6(x + 3) / 6 (MobileNetV3's cheap swish)."""
    return x * hard_sigmoid(x)


MOBILE_ACTIVATIONS: dict[str, Activation] = {
    "relu": nn.relu,
    "relu6": jax.nn.relu6,
    "hard_swish": hard_swish,
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: round channels to a multiple of ``divisor`` without
    going more than 10% below ``value``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormAct(nn.Module):
    """torchvision's ``Conv2dNormActivation``: bias-free conv with (k - 1) // 2 padding, batch
    norm, optional activation. Parameters ``conv``/``norm`` (``norm`` stats in 'batch_stats').

    BatchNorm follows torch's ``momentum`` (Flax's is 1 - it) and ``epsilon``; like Flax's, its
    running variance is updated with the biased batch variance (torch's uses n / (n - 1) times it).
    Input [batch, H, W, C] -> [batch, H / strides, W / strides, features].
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    groups: int = 1
    activation: str | None = "relu6"
    norm_epsilon: float = 1e-5
    norm_momentum: float = 0.9
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Conv -> BN (batch statistics when ``train``) -> activation."""
        pad = (self.kernel_size - 1) // 2
        x = Conv(
            self.features,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=((pad, pad), (pad, pad)),
            feature_group_count=self.groups,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=he_normal_fan_out,
            impl=self.conv_impl,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.norm_momentum,
            epsilon=self.norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
            # Average the statistics over a data-parallel manual region's shards (make_norm's).
            axis_name=batch_axes() if train else None,
            name="norm",
        )(x)
        if self.activation is not None:
            x = MOBILE_ACTIVATIONS[self.activation](x)
        return nn.with_logical_constraint(x, FEATURE_MAP_AXES)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite (torchvision's ``SqueezeExcitation``): global average pool -> 1x1 conv
    ``fc1`` to ``squeeze_features`` -> ``activation`` -> 1x1 conv ``fc2`` -> ``gate`` -> rescale
    the channels of the input. MobileNetV3 uses relu / hard sigmoid, EfficientNet silu / sigmoid.
    Input [batch, H, W, C] -> same shape.
    """

    squeeze_features: int
    activation: Activation = nn.relu
    gate: Activation = hard_sigmoid
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Reweight the channels of ``x`` [batch, H, W, C] by a gate computed from their means."""
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        for name, features, act in (
            ("fc1", self.squeeze_features, self.activation),
            ("fc2", x.shape[-1], self.gate),
        ):
            scale = Conv(
                features,
                kernel_size=1,
                padding="VALID",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=he_normal_fan_out,
                impl=self.conv_impl,
                name=name,
            )(scale)
            scale = act(scale)
        return nn.with_logical_constraint(x * scale, FEATURE_MAP_AXES)


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 inverted residual: 1x1 expand (skipped when ``expanded_features`` equals
    the input channels) -> k x k depthwise (strided) -> optional squeeze-and-excite -> 1x1
    linear projection, plus the input when the stride is 1 and the channels are unchanged.

    Submodules ``expand``, ``depthwise``, ``se`` (``squeeze_features`` > 0), ``project``.
    ``activation``: a ``MOBILE_ACTIVATIONS`` name (V2 'relu6', V3 'relu' or 'hard_swish').
    Input [batch, H, W, C] -> [batch, H / strides, W / strides, features].
    """

    features: int
    expanded_features: int
    kernel_size: int = 3
    strides: int = 1
    squeeze_features: int = 0
    activation: str = "relu6"
    norm_epsilon: float = 1e-5
    norm_momentum: float = 0.9
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Apply the block; ``train`` makes batch norm use and update batch statistics."""
        common = {
            "norm_epsilon": self.norm_epsilon,
            "norm_momentum": self.norm_momentum,
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "conv_impl": self.conv_impl,
        }
        y = x
        if self.expanded_features != x.shape[-1]:
            y = ConvNormAct(
                self.expanded_features, 1, activation=self.activation, name="expand", **common
            )(y, train=train)
        y = ConvNormAct(
            self.expanded_features,
            self.kernel_size,
            self.strides,
            groups=self.expanded_features,
            activation=self.activation,
            name="depthwise",
            **common,
        )(y, train=train)
        if self.squeeze_features:
            y = SqueezeExcite(
                self.squeeze_features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                conv_impl=self.conv_impl,
                name="se",
            )(y)
        y = ConvNormAct(self.features, 1, activation=None, name="project", **common)(y, train=train)
        if self.strides == 1 and x.shape[-1] == self.features:
            y = y + x
        return nn.with_logical_constraint(y, FEATURE_MAP_AXES)
