"""DeepLabv3 (Chen et al. 2017) for semantic segmentation: per-pixel class logits.

A dilated ResNet backbone (``output_stride`` 8: stages 3 and 4 keep their resolution and dilate
their convs instead) -> ``DeepLabHead`` (ASPP, 3x3 conv, 1x1 classifier) -> bilinear upsampling
to the input size. With the defaults this is torchvision's ``deeplabv3_resnet50`` (without the
auxiliary classifier; ``aux_loss=False``, its default): 39,638,869 parameters for 21 classes, and
equal outputs after ``jaxdl import-weights --from torchvision --model deeplabv3_resnet50``.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.aspp import DEEPLAB_ATROUS_RATES, DeepLabHead
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES
from jaxdl.layers.validation import check_image_batch
from jaxdl.models.registry import register_model
from jaxdl.models.resnet import IMAGENET_STAGE_SIZES, ResNet

# Output stride -> torchvision's ``replace_stride_with_dilation`` for ResNet stages 2-4.
OUTPUT_STRIDES: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),
    16: (False, False, True),
    32: (False, False, False),
}


def upsample_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """[B, h, w, C] -> [B, height, width, C] as torch's ``F.interpolate(mode='bilinear',
    align_corners=False)`` (half-pixel centres, edge-clamped, no antialiasing)."""
    shape = (x.shape[0], height, width, x.shape[-1])
    return jax.image.resize(x, shape, method="bilinear", antialias=False)


@register_model("deeplabv3")
class DeepLabV3(nn.Module):
    """[B, H, W, C] float images -> float32 logits [B, H, W, num_classes].

    ``depth``: the ResNet backbone (18/34/50/101/152; 50 and 101 are torchvision's; 18/34 use
    BasicBlocks with both 3x3 convs dilated, 512 backbone channels: small models for CPU runs).
    ``output_stride``: 8 (torchvision's), 16 or 32. ``width`` (backbone base width, default 64)
    and ``head_features`` (ASPP/head channels, 256) shrink the model for experiments; ``stem``
    'cifar' (one 3x3/1 conv instead of the 7x7/2 conv + max-pool: output strides are then 4x
    finer) keeps small images' feature maps large enough to segment.
    Parameters: ``backbone`` (``ResNet`` names: ``stem_conv``, ``stage3_block1``, ...) and
    ``head`` (``DeepLabHead``: ``aspp``, ``conv``, ``norm``, ``classifier``).
    """

    num_classes: int
    depth: int = 50
    output_stride: int = 8
    atrous_rates: tuple[int, ...] = DEEPLAB_ATROUS_RATES
    width: int | None = None
    stem: str = "auto"
    head_features: int = 256
    dropout_rate: float = 0.5
    norm: str = "batch"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.depth not in IMAGENET_STAGE_SIZES:
            raise ValueError(
                f"DeepLabV3 depth must be one of {sorted(IMAGENET_STAGE_SIZES)}, got {self.depth}"
            )
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"DeepLabV3 output_stride must be one of {sorted(OUTPUT_STRIDES)}, "
                f"got {self.output_stride}"
            )
        if self.num_classes < 1 or self.head_features < 1:
            raise ValueError(
                f"DeepLabV3 needs num_classes and head_features >= 1, got {self.num_classes}, "
                f"{self.head_features}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Segment ``x`` [B, H, W, C]; returns float32 logits [B, H, W, num_classes]."""
        check_image_batch(x, "DeepLabV3")
        height, width = x.shape[1:3]
        features = ResNet(
            depth=self.depth,
            num_classes=self.num_classes,
            width=self.width,
            stem=self.stem,
            norm=self.norm,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            remat_policy=self.remat_policy,
            conv_impl=self.conv_impl,
            replace_stride_with_dilation=OUTPUT_STRIDES[self.output_stride],
            features_only=True,
            name="backbone",
        )(x, train=train)
        logits = DeepLabHead(
            num_classes=self.num_classes,
            features=self.head_features,
            atrous_rates=tuple(self.atrous_rates),
            dropout_rate=self.dropout_rate,
            norm=self.norm,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            conv_impl=self.conv_impl,
            name="head",
        )(features, train=train)
        logits = upsample_bilinear(logits.astype(jnp.float32), height, width)
        return nn.with_logical_constraint(logits, FEATURE_MAP_AXES)


for _alias_depth in (50, 101):
    register_model(f"deeplabv3_resnet{_alias_depth}")(
        functools.partial(DeepLabV3, depth=_alias_depth)
    )
