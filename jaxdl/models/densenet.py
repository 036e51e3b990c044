"""DenseNet-BC (121, 169), layer for layer as torchvision's."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import CONV_IMPLS, Conv, check_image_batch, classifier_head, make_norm, max_pool
from jaxdl.layers.dense_blocks import DenseBlock, Transition, he_normal_fan_in
from jaxdl.layers.resnet_blocks import FEATURE_MAP_AXES
from jaxdl.models.registry import register_model

# Dense layers per block, torchvision's ``block_config``.
DENSENET_BLOCKS: dict[int, tuple[int, ...]] = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32)}


@register_model("densenet")
class DenseNet(nn.Module):
    """DenseNet-BC classifier: [batch, H, W, C] float images -> float32 logits [batch, num_classes].

    7x7/2 conv + BN + relu + 3x3/2 max-pool stem (``stem_conv``/``stem_norm``, ``num_init_features``
    channels), dense blocks ``block1``... (``DENSENET_BLOCKS[depth]`` layers of ``growth_rate``
    new channels each) separated by ``transition1``... (halve channels and resolution), then
    ``final_norm`` + relu, global average pool and ``head``. ``drop_rate`` is the dropout after
    every dense layer; ``memory_efficient`` rematerialises the dense layers (same results).
    """

    depth: int
    num_classes: int
    growth_rate: int = 32
    bn_size: int = 4
    num_init_features: int = 64
    drop_rate: float = 0.0
    memory_efficient: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.depth not in DENSENET_BLOCKS:
            raise ValueError(
                f"DenseNet depth must be one of {sorted(DENSENET_BLOCKS)}, got {self.depth}"
            )
        if self.num_classes < 1:
            raise ValueError(f"DenseNet num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"DenseNet drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"DenseNet conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; returns float32 logits [batch, num_classes]."""
        check_image_batch(x, "DenseNet")
        norm = functools.partial(
            make_norm,
            "batch",
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = Conv(
            self.num_init_features,
            kernel_size=7,
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=he_normal_fan_in,
            impl=self.conv_impl,
            name="stem_conv",
        )(x.astype(self.dtype))
        x = nn.relu(norm(name="stem_norm")(x))
        x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), impl=self.conv_impl)
        x = nn.with_logical_constraint(x, FEATURE_MAP_AXES)

        blocks = DENSENET_BLOCKS[self.depth]
        for index, num_layers in enumerate(blocks, start=1):
            x = DenseBlock(
                num_layers,
                self.growth_rate,
                self.bn_size,
                self.drop_rate,
                self.memory_efficient,
                self.dtype,
                self.param_dtype,
                self.conv_impl,
                name=f"block{index}",
            )(x, train=train)
            if index < len(blocks):
                x = Transition(
                    x.shape[-1] // 2,
                    self.dtype,
                    self.param_dtype,
                    self.conv_impl,
                    name=f"transition{index}",
                )(x, train=train)

        x = nn.relu(norm(name="final_norm")(x))
        x = nn.with_logical_constraint(jnp.mean(x, axis=(1, 2)), ("batch", "embed"))
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)


for _alias_depth in DENSENET_BLOCKS:
    register_model(f"densenet{_alias_depth}")(functools.partial(DenseNet, depth=_alias_depth))
