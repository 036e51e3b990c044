"""MobileNetV2 and MobileNetV3 (small, large), layer for layer as torchvision's."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import CONV_IMPLS, Dense, check_image_batch, classifier_head
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.mobile import ConvNormAct, InvertedResidual, hard_swish, make_divisible
from jaxdl.models.registry import register_model

# (expand ratio t, channels c, repeats n, first stride s), torchvision's MobileNetV2 setting.
MOBILENET_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# (in, kernel, expanded, out, use SE, activation, stride) per block and the classifier's hidden
# width, torchvision's ``_mobilenet_v3_conf`` (before width scaling).
V3Block = tuple[int, int, int, int, bool, str, int]
MOBILENET_V3_SETTINGS: dict[str, tuple[tuple[V3Block, ...], int]] = {
    "large": (
        (
            (16, 3, 16, 16, False, "relu", 1),
            (16, 3, 64, 24, False, "relu", 2),
            (24, 3, 72, 24, False, "relu", 1),
            (24, 5, 72, 40, True, "relu", 2),
            (40, 5, 120, 40, True, "relu", 1),
            (40, 5, 120, 40, True, "relu", 1),
            (40, 3, 240, 80, False, "hard_swish", 2),
            (80, 3, 200, 80, False, "hard_swish", 1),
            (80, 3, 184, 80, False, "hard_swish", 1),
            (80, 3, 184, 80, False, "hard_swish", 1),
            (80, 3, 480, 112, True, "hard_swish", 1),
            (112, 3, 672, 112, True, "hard_swish", 1),
            (112, 5, 672, 160, True, "hard_swish", 2),
            (160, 5, 960, 160, True, "hard_swish", 1),
            (160, 5, 960, 160, True, "hard_swish", 1),
        ),
        1280,
    ),
    "small": (
        (
            (16, 3, 16, 16, True, "relu", 2),
            (16, 3, 72, 24, False, "relu", 2),
            (24, 3, 88, 24, False, "relu", 1),
            (24, 5, 96, 40, True, "hard_swish", 2),
            (40, 5, 240, 40, True, "hard_swish", 1),
            (40, 5, 240, 40, True, "hard_swish", 1),
            (40, 5, 120, 48, True, "hard_swish", 1),
            (48, 5, 144, 48, True, "hard_swish", 1),
            (48, 5, 288, 96, True, "hard_swish", 2),
            (96, 5, 576, 96, True, "hard_swish", 1),
            (96, 5, 576, 96, True, "hard_swish", 1),
        ),
        1024,
    ),
}

# torchvision's Linear init for both MobileNets.
_linear_init = nn.initializers.normal(0.01)


def _validate(name: str, num_classes: int, width_mult: float, dropout_rate: float, impl: str):
    """Shared hyper-parameter checks (one-line errors at construction)."""
    if num_classes < 1:
        raise ValueError(f"{name} num_classes must be >= 1, got {num_classes}")
    if width_mult <= 0:
        raise ValueError(f"{name} width_mult must be > 0, got {width_mult}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"{name} dropout_rate must be in [0, 1), got {dropout_rate}")
    if impl not in CONV_IMPLS:
        raise ValueError(f"{name} conv_impl must be one of {CONV_IMPLS}, got {impl!r}")


@register_model("mobilenet_v2")
class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) as torchvision's: 3x3/2 stem, 17 inverted residuals
    (relu6), 1x1 conv to 1280, global average pool, dropout, linear head. BatchNorm eps 1e-5,
    torch momentum 0.1 (Flax 0.9). Channels scale by ``width_mult``, rounded to multiples of
    ``round_nearest`` (``make_divisible``). 3,504,872 parameters for 1000 classes.
    ``conv_impl``: 'auto' or 'plain' convolutions (see ``jaxdl.layers.conv``).
    [batch, H, W, C] float -> float32 logits [batch, num_classes].
    """

    num_classes: int
    width_mult: float = 1.0
    round_nearest: int = 8
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _validate(
            "MobileNetV2", self.num_classes, self.width_mult, self.dropout_rate, self.conv_impl
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; ``train`` drives dropout and batch norm."""
        check_image_batch(x, "MobileNetV2")
        common = {
            "norm_epsilon": 1e-5,
            "norm_momentum": 0.9,
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "conv_impl": self.conv_impl,
        }
        features = make_divisible(32 * self.width_mult, self.round_nearest)
        last = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        x = x.astype(self.dtype)
        x = ConvNormAct(features, 3, 2, name="stem", **common)(x, train=train)
        index = 0
        for expand, channels, repeats, stride in MOBILENET_V2_SETTING:
            out = make_divisible(channels * self.width_mult, self.round_nearest)
            for i in range(repeats):
                index += 1
                x = InvertedResidual(
                    out,
                    int(round(x.shape[-1] * expand)),
                    strides=stride if i == 0 else 1,
                    name=f"block{index}",
                    **common,
                )(x, train=train)
        x = ConvNormAct(last, 1, name="last", **common)(x, train=train)
        x = nn.with_logical_constraint(jnp.mean(x, axis=(1, 2)), ("batch", "embed"))
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)


@register_model("mobilenet_v3")
class MobileNetV3(nn.Module):
    """MobileNetV3 (Howard et al. 2019) as torchvision's, ``variant`` 'large' or 'small':
    3x3/2 hard-swish stem, inverted residuals with squeeze-and-excite (squeeze channels
    ``make_divisible(expanded // 4)``, hard-sigmoid gate), 1x1 conv to 6x the last block's
    channels, global average pool, linear ``fc`` (1280 / 1024) + hard swish + dropout, head.
    BatchNorm eps 1e-3, torch momentum 0.01 (Flax 0.99). Large: 5,483,032 parameters for 1000
    classes, small: 2,542,856. ``conv_impl``: 'auto' or 'plain' (see ``jaxdl.layers.conv``).
    [batch, H, W, C] float -> float32 logits [batch, num_classes].
    """

    variant: str
    num_classes: int
    width_mult: float = 1.0
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.variant not in MOBILENET_V3_SETTINGS:
            raise ValueError(
                f"MobileNetV3 variant must be one of {sorted(MOBILENET_V3_SETTINGS)}, "
                f"got {self.variant!r}"
            )
        _validate(
            "MobileNetV3", self.num_classes, self.width_mult, self.dropout_rate, self.conv_impl
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; ``train`` drives dropout and batch norm."""
        check_image_batch(x, "MobileNetV3")
        common = {
            "norm_epsilon": 1e-3,
            "norm_momentum": 0.99,
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "conv_impl": self.conv_impl,
        }
        blocks, hidden = MOBILENET_V3_SETTINGS[self.variant]

        def scaled(channels: int) -> int:
            return make_divisible(channels * self.width_mult)

        x = x.astype(self.dtype)
        x = ConvNormAct(scaled(blocks[0][0]), 3, 2, activation="hard_swish", name="stem", **common)(
            x, train=train
        )
        for index, (_, kernel, expanded, out, use_se, act, stride) in enumerate(blocks, start=1):
            x = InvertedResidual(
                scaled(out),
                scaled(expanded),
                kernel,
                stride,
                squeeze_features=make_divisible(scaled(expanded) // 4) if use_se else 0,
                activation=act,
                name=f"block{index}",
                **common,
            )(x, train=train)
        x = ConvNormAct(6 * x.shape[-1], 1, activation="hard_swish", name="last", **common)(
            x, train=train
        )
        x = nn.with_logical_constraint(jnp.mean(x, axis=(1, 2)), ("batch", "mlp"))
        x = Dense(
            scaled(hidden),
            kernel_axes=("mlp", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_linear_init,
            name="fc",
        )(x)
        x = Dropout(self.dropout_rate, deterministic=not train)(hard_swish(x))
        x = nn.with_logical_constraint(x, ("batch", "embed"))
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)


for _variant in MOBILENET_V3_SETTINGS:
    register_model(f"mobilenet_v3_{_variant}")(functools.partial(MobileNetV3, variant=_variant))
