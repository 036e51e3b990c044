"""DenseNet-BC blocks (dense layer, dense block, transition) as torchvision's, with logically
named parameters. Convolutions are ``jaxdl.layers.conv.Conv`` (per-shape CPU formulations)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.conv import Conv
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.normalization import make_norm
from jaxdl.layers.remat import remat_call
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES

# torchvision's DenseNet init: nn.init.kaiming_normal_ (fan_in, gain sqrt(2), untruncated).
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features: int, kernel: int, dtype: Any, param_dtype: Any, impl: str, name: str) -> Conv:
    """Bias-free stride-1 conv with (k - 1) // 2 padding."""
    pad = (kernel - 1) // 2
    return Conv(
        features,
        kernel_size=kernel,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=he_normal_fan_in,
        impl=impl,
        name=name,
    )


class DenseLayer(nn.Module):
    """BN -> relu -> 1x1 conv to ``bn_size * growth_rate`` -> BN -> relu -> 3x3 conv to
    ``growth_rate`` -> dropout (``drop_rate``). Parameters ``norm1``/``conv1``/``norm2``/``conv2``.

    Input [batch, H, W, C] (the concatenated earlier features) -> new features
    [batch, H, W, growth_rate].
    """

    growth_rate: int = 32
    bn_size: int = 4
    drop_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """New features of ``x``; ``train`` uses batch statistics and enables dropout."""
        norm = functools.partial(
            make_norm,
            "batch",
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        conv = functools.partial(
            _conv, dtype=self.dtype, param_dtype=self.param_dtype, impl=self.conv_impl
        )
        y = nn.relu(norm(name="norm1")(x))
        y = conv(self.bn_size * self.growth_rate, 1, name="conv1")(y)
        y = nn.relu(norm(name="norm2")(y))
        y = conv(self.growth_rate, 3, name="conv2")(y)
        y = Dropout(self.drop_rate, deterministic=not train)(y)
        return nn.with_logical_constraint(y, FEATURE_MAP_AXES)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers (``layer1``...), each fed the concatenation of the block input
    and all earlier layers' outputs; returns that concatenation
    [batch, H, W, C + num_layers * growth_rate].

    ``memory_efficient`` recomputes each layer's activations in the backward pass (``nn.remat``),
    torchvision's checkpointed variant; results and parameters are unchanged.
    """

    num_layers: int
    growth_rate: int = 32
    bn_size: int = 4
    drop_rate: float = 0.0
    memory_efficient: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Grow ``x`` by ``num_layers * growth_rate`` channels."""
        for index in range(self.num_layers):
            layer = DenseLayer(
                self.growth_rate,
                self.bn_size,
                self.drop_rate,
                self.dtype,
                self.param_dtype,
                self.conv_impl,
                name=f"layer{index + 1}",
            )
            if self.memory_efficient:
                new = remat_call(layer, x, train=train, policy="full")
            else:
                new = layer(x, train=train)
            x = jnp.concatenate([x, new], axis=-1)
        return nn.with_logical_constraint(x, FEATURE_MAP_AXES)


class Transition(nn.Module):
    """BN -> relu -> 1x1 conv to ``features`` -> 2x2/2 average pool (floor), as torchvision's
    ``_Transition``. Parameters ``norm``/``conv``. [batch, H, W, C] -> [batch, H/2, W/2, features].
    """

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Compress and downsample ``x``; ``train`` uses batch statistics."""
        x = make_norm(
            "batch",
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="norm",
        )(x)
        x = _conv(self.features, 1, self.dtype, self.param_dtype, self.conv_impl, name="conv")(
            nn.relu(x)
        )
        x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        return nn.with_logical_constraint(x, FEATURE_MAP_AXES)
