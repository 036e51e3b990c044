"""Plain (non-residual) CNNs: LeNet-5 and VGG-11/16."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import (
    CONV_IMPLS,
    Conv,
    Dense,
    check_image_batch,
    classifier_head,
    he_normal_fan_out,
    make_norm,
    max_pool,
)
from jaxdl.layers.dropout import Dropout
from jaxdl.models.registry import register_model

FEATURE_MAP_AXES = ("batch", "height", "width", "channels")

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh}
LENET_PADDINGS = ("VALID", "SAME")
# With VALID padding the two 5x5 convs and 2x2 pools need at least 16x16 inputs.
_LENET_MIN_VALID_SIZE = 16

# Conv output channels per layer, 'M' = 2x2 max-pool (Simonyan & Zisserman configs A and D).
# fmt: off
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
         512, 512, 512, "M", 512, 512, 512, "M"),
}
# fmt: on


@register_model("lenet5")
class LeNet5(nn.Module):
    """LeNet-5: conv5x5x6 -> pool -> conv5x5x16 -> pool -> fc120 -> fc84 -> classes.

    Pools are 2x2 average pools (the original subsampling). ``padding='VALID'`` is the classic
    1998 network (32x32 input -> 400 features, 61,706 params for 10 classes); the default
    ``'SAME'`` keeps conv sizes so small inputs such as 8x8 digits work. The flattened size
    depends on the input size, so the fc1 params are tied to it. ``conv_impl``: 'auto' or
    'plain' convolutions (see ``jaxdl.layers.conv``).
    [batch, H, W, C] float -> float32 logits [batch, num_classes].
    """

    num_classes: int
    activation: str = "relu"
    padding: str = "SAME"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"LeNet5 activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.padding not in LENET_PADDINGS:
            raise ValueError(
                f"LeNet5 padding must be one of {LENET_PADDINGS}, got {self.padding!r}"
            )
        if self.num_classes < 1:
            raise ValueError(f"LeNet5 num_classes must be >= 1, got {self.num_classes}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"LeNet5 conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; ``train`` is unused (no dropout/norm)."""
        check_image_batch(x, "LeNet5")
        if self.padding == "VALID" and min(x.shape[1:3]) < _LENET_MIN_VALID_SIZE:
            raise ValueError(
                f"LeNet5 with padding='VALID' needs inputs of at least {_LENET_MIN_VALID_SIZE}"
                f"x{_LENET_MIN_VALID_SIZE}, got {x.shape[1:3]}; use padding='SAME'"
            )
        act = ACTIVATIONS[self.activation]
        dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)

        x = x.astype(self.dtype)
        for i, features in enumerate((6, 16), start=1):
            x = Conv(
                features,
                kernel_size=(5, 5),
                padding=self.padding,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                impl=self.conv_impl,
                name=f"conv{i}",
            )(x)
            x = nn.avg_pool(act(x), (2, 2), strides=(2, 2))
            x = nn.with_logical_constraint(x, FEATURE_MAP_AXES)

        x = nn.with_logical_constraint(x.reshape(x.shape[0], -1), ("batch", "embed"))
        x = act(dense(120, kernel_axes=("embed", "mlp"), name="fc1")(x))
        x = nn.with_logical_constraint(x, ("batch", "mlp"))
        x = act(dense(84, kernel_axes=("mlp", "embed"), name="fc2")(x))
        x = nn.with_logical_constraint(x, ("batch", "embed"))
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)


@register_model("vgg")
class VGG(nn.Module):
    """VGG-11 (config A) / VGG-16 (config D) with a global-average-pooled classifier.

    Unlike torchvision's 7x7 adaptive pool + 25088-wide fc, features are averaged over
    space, so any input size works and the classifier is small: GAP -> fc ``hidden`` ->
    fc ``hidden`` -> classes, with ReLU + dropout after each hidden fc. Max-pools use 'SAME'
    padding so feature maps never shrink below 1x1 on tiny inputs. ``width_multiplier``
    scales every conv width. ``conv_impl``: 'auto' routes convs and max-pools around XLA:CPU's
    slow paths, 'plain' forces the plain ops (see ``jaxdl.layers.conv``).
    [batch, H, W, C] float -> float32 logits [batch, num_classes].
    """

    depth: int
    num_classes: int
    batch_norm: bool = False
    width_multiplier: float = 1.0
    hidden: int = 4096
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {self.depth}")
        if self.num_classes < 1:
            raise ValueError(f"VGG num_classes must be >= 1, got {self.num_classes}")
        if self.width_multiplier <= 0:
            raise ValueError(f"VGG width_multiplier must be > 0, got {self.width_multiplier}")
        if self.hidden < 1:
            raise ValueError(f"VGG hidden must be >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"VGG dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"VGG conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; ``train`` drives dropout and batch norm."""
        check_image_batch(x, "VGG")
        dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        conv_index = 0
        for item in VGG_CONFIGS[self.depth]:
            if item == "M":
                x = max_pool(x, (2, 2), (2, 2), "SAME", impl=self.conv_impl)
                continue
            conv_index += 1
            x = Conv(
                max(1, round(item * self.width_multiplier)),
                kernel_size=(3, 3),
                padding=((1, 1), (1, 1)),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=he_normal_fan_out,
                impl=self.conv_impl,
                name=f"conv{conv_index}",
            )(x)
            x = make_norm(
                "batch" if self.batch_norm else "none",
                axis_name="conv_out",
                train=train,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"norm{conv_index}",
            )(x)
            x = nn.with_logical_constraint(nn.relu(x), FEATURE_MAP_AXES)

        x = nn.with_logical_constraint(jnp.mean(x, axis=(1, 2)), ("batch", "embed"))
        x = nn.relu(dense(self.hidden, kernel_axes=("embed", "mlp"), name="fc1")(x))
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.with_logical_constraint(x, ("batch", "mlp"))
        x = nn.relu(dense(self.hidden, kernel_axes=("mlp", "embed"), name="fc2")(x))
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.with_logical_constraint(x, ("batch", "embed"))
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)


for _alias_depth in VGG_CONFIGS:
    register_model(f"vgg{_alias_depth}")(functools.partial(VGG, depth=_alias_depth))
