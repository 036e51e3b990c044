"""2-D convolution with logically named parameters."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

CONV_KERNEL_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
CONV_BIAS_AXES = ("conv_out",)

# He/Kaiming normal with fan_out, as torchvision's ResNet/VGG use for conv kernels.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

Padding = str | int | Sequence[int | tuple[int, int]]


class Conv(nn.Module):
    """``nn.Conv`` over NHWC inputs whose kernel/bias carry logical axis names.

    Kernel: [kh, kw, in, out] named ('conv_height','conv_width','conv_in','conv_out');
    bias: [out] named ('conv_out',). The parameter tree is the same as a bare ``nn.Conv``
    (``kernel``/``bias`` directly under this module's name), so checkpoints stay portable.

    Input [batch, H, W, C_in] -> output [batch, H', W', features].
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jax.numpy.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolve ``x`` [batch, H, W, C_in] into [batch, H', W', features]."""
        kernel_size = (
            (self.kernel_size, self.kernel_size)
            if isinstance(self.kernel_size, int)
            else tuple(self.kernel_size)
        )
        if len(kernel_size) != 2:
            raise ValueError(f"Conv supports 2-D kernels only, got kernel_size={self.kernel_size}")
        if x.ndim != 4:
            raise ValueError(f"Conv expects [batch, H, W, C] input, got shape {x.shape}")
        conv = nn.Conv(
            features=self.features,
            kernel_size=kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(self.kernel_init, CONV_KERNEL_AXES),
            bias_init=nn.with_logical_partitioning(self.bias_init, CONV_BIAS_AXES),
        )
        # Reuse this module's scope so params are `<name>/kernel`, not `<name>/Conv_0/kernel`.
        nn.share_scope(self, conv)
        return conv(x)
