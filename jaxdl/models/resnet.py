"""ResNet v1.5 for ImageNet (18/34/50/101/152) and CIFAR (6n+2: 20/32/56/110...) layouts."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import CONV_IMPLS, check_image_batch, classifier_head, make_norm, max_pool
from jaxdl.layers.dropout import Dropout
from jaxdl.layers.remat import REMAT_POLICIES, remat_call
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES, BasicBlock, Bottleneck, resnet_conv
from jaxdl.models.registry import register_model

# BasicBlock and Bottleneck live in jaxdl.layers; re-exported here for existing imports.
__all__ = ["IMAGENET_STAGE_SIZES", "STEMS", "BasicBlock", "Bottleneck", "ResNet"]

IMAGENET_STAGE_SIZES: dict[int, tuple[int, ...]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STEMS = ("auto", "imagenet", "cifar")


@register_model("resnet")
class ResNet(nn.Module):
    """ResNet classifier: [batch, H, W, C] float images -> float32 logits [batch, num_classes].

    Layout by ``depth``: 18/34/50/101/152 use the ImageNet layout (BasicBlock for 18/34,
    Bottleneck for 50+, four stages, widths ``width * 2**i``, default width 64); any other
    6n+2 depth (20, 32, 56, 110, ...) uses the CIFAR layout (three stages of n BasicBlocks,
    default width 16). ImageNet depths take precedence (50 and 152 are also 6n+2).

    ``stem``: 'imagenet' = 7x7/2 conv + 3x3/2 max-pool, 'cifar' = one 3x3/1 conv,
    'auto' = the layout's own stem. ``zero_init_residual`` zero-initialises the last norm
    scale of every residual branch (a no-op with ``norm='none'``). ``dtype`` is the compute
    dtype (e.g. bf16); parameters use ``param_dtype``; logits are always float32.
    ``conv_impl``: 'auto' routes convolutions and max-pooling around XLA:CPU's slow paths (same
    results and parameters), 'plain' forces ``lax.conv_general_dilated``/``nn.max_pool``.

    ``replace_stride_with_dilation`` (one flag per stage after the first, as torchvision's) keeps
    a stage's resolution and dilates its 3x3 convs instead; the stage's first block keeps the
    previous dilation, as torchvision's ``_make_layer``. ``features_only`` returns the last
    stage's feature map [batch, H / s, W / s, channels] in ``dtype`` (s = 32 for the ImageNet
    layout without dilation): no pooling, dropout or head (``num_classes`` is then unused).
    Neither changes parameter names.
    """

    depth: int
    num_classes: int
    stem: str = "auto"
    width: int | None = None
    norm: str = "batch"
    dropout_rate: float = 0.0
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"
    conv_impl: str = "auto"
    replace_stride_with_dilation: tuple[bool, ...] = ()
    features_only: bool = False

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        _, _, stage_sizes = _layout(self.depth)
        dilate = tuple(self.replace_stride_with_dilation)
        if dilate and len(dilate) != len(stage_sizes) - 1:
            raise ValueError(
                f"ResNet replace_stride_with_dilation needs {len(stage_sizes) - 1} flags (one per "
                f"stage after the first) for depth {self.depth}, got {dilate}"
            )
        if self.stem not in STEMS:
            raise ValueError(f"ResNet stem must be one of {STEMS}, got {self.stem!r}")
        if self.num_classes < 1:
            raise ValueError(f"ResNet num_classes must be >= 1, got {self.num_classes}")
        if self.width is not None and self.width < 1:
            raise ValueError(f"ResNet width must be >= 1, got {self.width}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"ResNet remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ResNet dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"ResNet conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; returns float32 logits [batch, num_classes] (the
        feature map with ``features_only``)."""
        check_image_batch(x, "ResNet")
        layout, block_cls, stage_sizes = _layout(self.depth)
        width = self.width or (64 if layout == "imagenet" else 16)
        stem = layout if self.stem == "auto" else self.stem

        x = x.astype(self.dtype)
        kernel, strides = (7, 2) if stem == "imagenet" else (3, 1)
        x = resnet_conv(
            width, kernel, strides, self.dtype, self.param_dtype, "stem_conv", self.conv_impl
        )(x)
        x = make_norm(
            self.norm,
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="stem_norm",
        )(x)
        x = nn.relu(x)
        if stem == "imagenet":
            x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), impl=self.conv_impl)
        x = nn.with_logical_constraint(x, FEATURE_MAP_AXES)

        dilate = tuple(self.replace_stride_with_dilation) or (False,) * (len(stage_sizes) - 1)
        dilation = 1
        for stage, num_blocks in enumerate(stage_sizes):
            strides, previous_dilation = (2 if stage > 0 else 1), dilation
            if stage > 0 and dilate[stage - 1]:
                dilation, strides = dilation * strides, 1
            for index in range(num_blocks):
                block = block_cls(
                    features=width * 2**stage,
                    strides=strides if index == 0 else 1,
                    dilation=previous_dilation if index == 0 else dilation,
                    norm=self.norm,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    conv_impl=self.conv_impl,
                    name=f"stage{stage + 1}_block{index + 1}",
                )
                if self.remat_policy == "none":
                    x = block(x, train=train)
                else:
                    # Recompute each block's activations in the backward pass (train is static).
                    x = remat_call(block, x, train=train, policy=self.remat_policy)
        if self.features_only:
            return x

        x = nn.with_logical_constraint(jnp.mean(x, axis=(1, 2)), ("batch", "embed"))
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)


def _layout(depth: int) -> tuple[str, type[BasicBlock] | type[Bottleneck], tuple[int, ...]]:
    """(layout name, block class, blocks per stage) for a ResNet ``depth``."""
    if depth in IMAGENET_STAGE_SIZES:
        block = BasicBlock if depth < 50 else Bottleneck
        return "imagenet", block, IMAGENET_STAGE_SIZES[depth]
    if depth >= 8 and (depth - 2) % 6 == 0:
        return "cifar", BasicBlock, ((depth - 2) // 6,) * 3
    raise ValueError(
        f"Unsupported ResNet depth {depth}: use one of {sorted(IMAGENET_STAGE_SIZES)} "
        "or 6n+2 (e.g. 20, 32, 56, 110)"
    )


for _alias_depth in (18, 34, 50, 101, 152, 20, 32, 56):
    register_model(f"resnet{_alias_depth}")(functools.partial(ResNet, depth=_alias_depth))
