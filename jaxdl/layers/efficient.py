"""EfficientNet blocks: MBConv (inverted residual with squeeze-and-excite and swish) and
stochastic depth, as torchvision's, with logically named parameters.

Convolutions, batch norms and squeeze-and-excite come from ``jaxdl.layers.mobile`` (depthwise
convs via ``feature_group_count`` on ``jaxdl.layers.conv.Conv``'s per-shape CPU formulations).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.mobile import ConvNormAct, SqueezeExcite, make_divisible
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth(rate, "row")``: in training, zero each example (row) with
    probability ``rate`` and scale the survivors by 1 / (1 - rate), using the 'dropout' rng;
    the identity in evaluation or when ``rate`` is 0. Input [batch, ...] -> same shape."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Drop whole rows of ``x`` when ``train``."""
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1], got {self.rate}")
        if not train or self.rate == 0.0:
            return x
        survival = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = jax.random.bernoulli(self.make_rng("dropout"), survival, shape).astype(x.dtype)
        return x * keep / survival if survival > 0.0 else x * keep


class MBConv(nn.Module):
    """EfficientNet's MBConv: 1x1 expand to ``make_divisible(C * expand_ratio)`` (skipped when
    that equals C) -> k x k depthwise (strided) -> squeeze-and-excite to max(1, C // 4) (silu /
    sigmoid) -> 1x1 linear projection to ``features``; when the stride is 1 and the channels are
    unchanged, stochastic depth (``stochastic_depth_rate``) on the branch plus the input.
    All activations are silu. Submodules ``expand``, ``depthwise``, ``se``, ``project``.

    Input [batch, H, W, C] -> [batch, H / strides, W / strides, features].
    """

    features: int
    expand_ratio: float = 6.0
    kernel_size: int = 3
    strides: int = 1
    stochastic_depth_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Apply the block; ``train`` uses batch statistics and enables stochastic depth."""
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype, "conv_impl": self.conv_impl}
        in_features = x.shape[-1]
        expanded = make_divisible(in_features * self.expand_ratio, 8)
        y = x
        if expanded != in_features:
            y = ConvNormAct(expanded, 1, activation=None, name="expand", **common)(y, train=train)
            y = nn.silu(y)
        y = ConvNormAct(
            expanded,
            self.kernel_size,
            self.strides,
            groups=expanded,
            activation=None,
            name="depthwise",
            **common,
        )(y, train=train)
        y = SqueezeExcite(
            max(1, in_features // 4), activation=nn.silu, gate=nn.sigmoid, name="se", **common
        )(nn.silu(y))
        y = ConvNormAct(self.features, 1, activation=None, name="project", **common)(y, train=train)
        if self.strides == 1 and in_features == self.features:
            y = StochasticDepth(self.stochastic_depth_rate)(y, train=train) + x
        return nn.with_logical_constraint(y, FEATURE_MAP_AXES)
