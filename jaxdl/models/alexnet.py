"""AlexNet, layer for layer as torchvision's (the one-GPU variant of Krizhevsky et al. 2012)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers import CONV_IMPLS, Conv, Dense, check_image_batch, classifier_head, max_pool
from jaxdl.layers.dropout import Dropout
from jaxdl.models.registry import register_model

FEATURE_MAP_AXES = ("batch", "height", "width", "channels")

# (out channels, kernel, stride, padding, max-pool after) per conv, torchvision's ``features``.
ALEXNET_CONVS = (
    (64, 11, 4, 2, True),
    (192, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)
POOLED_SIZE = 6

# torch's default Conv2d/Linear weight init: uniform with variance 1 / (3 fan_in).
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch's ``adaptive_avg_pool2d`` over NHWC ``x``: output cell i of an axis of size n
    averages input rows floor(i n / out) to ceil((i + 1) n / out) (windows may overlap, and
    repeat rows when n < out). [batch, H, W, C] -> [batch, *output_size, C]."""
    for axis, out in zip((1, 2), output_size, strict=True):
        size = x.shape[axis]
        if size == out:
            continue
        cells = [
            jnp.mean(
                jax.lax.slice_in_dim(x, i * size // out, -(-(i + 1) * size // out), axis=axis),
                axis=axis,
                keepdims=True,
            )
            for i in range(out)
        ]
        x = jnp.concatenate(cells, axis=axis)
    return x


@register_model("alexnet")
class AlexNet(nn.Module):
    """AlexNet as torchvision's: five convs (11x11/4, 5x5, three 3x3; ReLU, 3x3/2 max-pools
    after the 1st, 2nd and 5th), adaptive average pool to 6x6 (so any input of at least 63x63
    works), dropout -> fc 4096 -> ReLU -> dropout -> fc 4096 -> ReLU -> head. 61,100,840
    parameters for 1000 classes. The flattened features are in H, W, C order (torch's are C, H,
    W; the weight import permutes ``fc1``). ``conv_impl``: 'auto' or 'plain' convolutions and
    max-pools (see ``jaxdl.layers.conv``).
    [batch, H, W, C] float -> float32 logits [batch, num_classes].
    """

    num_classes: int
    hidden: int = 4096
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def __post_init__(self) -> None:
        """Validate hyper-parameters at construction so bad configs fail early."""
        if self.num_classes < 1:
            raise ValueError(f"AlexNet num_classes must be >= 1, got {self.num_classes}")
        if self.hidden < 1:
            raise ValueError(f"AlexNet hidden must be >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"AlexNet dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"AlexNet conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Classify ``x`` [batch, H, W, C]; ``train`` drives dropout."""
        check_image_batch(x, "AlexNet")
        dense = functools.partial(
            Dense,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_torch_default_init,
        )
        x = x.astype(self.dtype)
        for index, (features, kernel, stride, pad, pool) in enumerate(ALEXNET_CONVS, start=1):
            x = Conv(
                features,
                kernel_size=kernel,
                strides=stride,
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=_torch_default_init,
                impl=self.conv_impl,
                name=f"conv{index}",
            )(x)
            x = nn.relu(x)
            if pool:
                x = max_pool(x, (3, 3), (2, 2), "VALID", impl=self.conv_impl)
            x = nn.with_logical_constraint(x, FEATURE_MAP_AXES)

        x = adaptive_avg_pool(x, (POOLED_SIZE, POOLED_SIZE))
        x = nn.with_logical_constraint(x.reshape(x.shape[0], -1), ("batch", "embed"))
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(dense(self.hidden, kernel_axes=("embed", "mlp"), name="fc1")(x))
        x = nn.with_logical_constraint(x, ("batch", "mlp"))
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(dense(self.hidden, kernel_axes=("mlp", "embed"), name="fc2")(x))
        x = nn.with_logical_constraint(x, ("batch", "embed"))
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)
