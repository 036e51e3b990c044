"""EfficientNet-B0...B3, layer for layer as torchvision's."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import CONV_IMPLS, check_image_batch, classifier_head
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.efficient import MBConv
from jaxdl.layers.mobile import ConvNormAct, make_divisible
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES
from jaxdl.models.registry import register_model

# (expand ratio, kernel, first stride, input channels, output channels, layers) before scaling,
# torchvision's ``_efficientnet_conf`` for B0-B7.
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# variant -> (width multiplier, depth multiplier, classifier dropout), torchvision's.
EFFICIENTNET_VARIANTS: dict[str, tuple[float, float, float]] = {
    "b0": (1.0, 1.0, 0.2),
    "b1": (1.0, 1.1, 0.2),
    "b2": (1.1, 1.2, 0.3),
    "b3": (1.2, 1.4, 0.3),
}


@register_model("efficientnet")
class EfficientNet(nn.Module):
    """EfficientNet (Tan & Le 2019) as torchvision's: [batch, H, W, C] float images -> float32
    logits [batch, num_classes].

    3x3/2 conv stem (``stem``), seven stages of MBConv blocks ``stage{s}_block{b}`` (channels
    scaled by the variant's width multiplier through ``make_divisible``, layers by its depth
    multiplier rounded up), 1x1 conv to 4x the last channels (``top``), all with silu; global
    average pool, dropout (``dropout_rate``, default the variant's) and ``head``. Stochastic depth
    grows linearly, ``stochastic_depth_rate * block_index / total_blocks``.
    """

    variant: str
    num_classes: int
    dropout_rate: float | None = None
    stochastic_depth_rate: float = 0.2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.variant not in EFFICIENTNET_VARIANTS:
            raise ValueError(
                f"EfficientNet variant must be one of {sorted(EFFICIENTNET_VARIANTS)}, "
                f"got {self.variant!r}"
            )
        if self.num_classes < 1:
            raise ValueError(f"EfficientNet num_classes must be >= 1, got {self.num_classes}")
        if self.dropout_rate is not None and not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(
                f"EfficientNet dropout_rate must be in [0, 1), got {self.dropout_rate}"
            )
        if not 0.0 <= self.stochastic_depth_rate < 1.0:
            raise ValueError(
                "EfficientNet stochastic_depth_rate must be in [0, 1), "
                f"got {self.stochastic_depth_rate}"
            )
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"EfficientNet conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; returns float32 logits [batch, num_classes]."""
        check_image_batch(x, "EfficientNet")
        width, depth, default_dropout = EFFICIENTNET_VARIANTS[self.variant]
        common = {"dtype": self.dtype, "param_dtype": self.param_dtype, "conv_impl": self.conv_impl}
        stages = [
            (ratio, kernel, stride, make_divisible(c_out * width, 8), math.ceil(n * depth))
            for ratio, kernel, stride, _, c_out, n in BASE_STAGES
        ]
        stem_features = make_divisible(BASE_STAGES[0][3] * width, 8)
        x = ConvNormAct(stem_features, 3, 2, activation=None, name="stem", **common)(
            x.astype(self.dtype), train=train
        )
        x = nn.silu(x)

        total = sum(stage[-1] for stage in stages)
        block_id = 0
        for s, (ratio, kernel, stride, features, num_layers) in enumerate(stages, start=1):
            for b in range(num_layers):
                x = MBConv(
                    features,
                    ratio,
                    kernel,
                    stride if b == 0 else 1,
                    self.stochastic_depth_rate * block_id / total,
                    name=f"stage{s}_block{b + 1}",
                    **common,
                )(x, train=train)
                block_id += 1

        x = ConvNormAct(4 * x.shape[-1], 1, activation=None, name="top", **common)(x, train=train)
        x = nn.with_logical_constraint(nn.silu(x), FEATURE_MAP_AXES)
        x = nn.with_logical_constraint(jnp.mean(x, axis=(1, 2)), ("batch", "embed"))
        rate = default_dropout if self.dropout_rate is None else self.dropout_rate
        x = Dropout(rate, deterministic=not train)(x)
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)


for _variant in EFFICIENTNET_VARIANTS:
    register_model(f"efficientnet_{_variant}")(functools.partial(EfficientNet, variant=_variant))
