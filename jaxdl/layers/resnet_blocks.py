"""ResNet v1.5 residual blocks (BasicBlock, Bottleneck) with logically named parameters."""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.layers.conv import Conv, he_normal_fan_out
from jaxdl.layers.normalization import make_norm

FEATURE_MAP_AXES = ("batch", "height", "width", "channels")


def resnet_conv(
    features: int,
    kernel: int,
    strides: int,
    dtype: Any,
    param_dtype: Any,
    name: str,
    impl: str = "auto",
    dilation: int = 1,
) -> Conv:
    """Bias-free conv with torch-style symmetric padding (dilation * (k // 2)), as torchvision's
    ResNet.

    Explicit padding (not 'SAME') keeps strided convs aligned with torchvision weights.
    ``impl``: 'auto' (per-shape CPU formulations) or 'plain' (see ``jaxdl.layers.conv``).
    """
    pad = dilation * (kernel // 2)
    return Conv(
        features,
        kernel_size=(kernel, kernel),
        strides=strides,
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation,
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=he_normal_fan_out,
        impl=impl,
        name=name,
    )


class _ResidualBlock(nn.Module):
    """Residual block body shared by ``BasicBlock`` and ``Bottleneck``.

    Subclasses define ``expansion`` and ``branch_convs`` (kernel, stride) per branch conv.
    Every conv except the last is followed by norm + relu; the last by norm only, whose scale
    starts at zero with ``zero_init_residual`` so the block starts as ``relu(shortcut(x))``.
    A 1x1 conv + norm projection replaces the identity shortcut when the shape changes.
    Parameters: ``conv{i}``/``norm{i}`` per branch conv, plus ``proj_conv``/``proj_norm``.
    ``dilation`` dilates the branch's 3x3 convs (torchvision's ``replace_stride_with_dilation``).
    ``conv_impl``: 'auto' or 'plain' convolutions (see ``jaxdl.layers.conv``).
    """

    features: int
    strides: int = 1
    dilation: int = 1
    norm: str = "batch"
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    expansion: ClassVar[int] = 1

    def branch_convs(self) -> list[tuple[int, int]]:
        """(kernel size, stride) of each conv on the residual branch."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """[batch, H, W, C] -> [batch, H / strides, W / strides, features * expansion].

        ``train`` makes batch norm use (and update) batch statistics.
        """
        out_features = self.features * self.expansion
        norm = functools.partial(
            make_norm,
            self.norm,
            axis_name="conv_out",
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        convs = self.branch_convs()
        y = x
        for i, (kernel, strides) in enumerate(convs, start=1):
            is_last = i == len(convs)
            features = out_features if is_last else self.features
            y = resnet_conv(
                features,
                kernel,
                strides,
                self.dtype,
                self.param_dtype,
                f"conv{i}",
                self.conv_impl,
                self.dilation if kernel > 1 else 1,
            )(y)
            zero_scale = is_last and self.zero_init_residual
            scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
            y = norm(scale_init=scale_init, name=f"norm{i}")(y)
            if not is_last:
                y = nn.relu(y)

        shortcut = x
        if self.strides != 1 or x.shape[-1] != out_features:
            shortcut = resnet_conv(
                out_features,
                1,
                self.strides,
                self.dtype,
                self.param_dtype,
                "proj_conv",
                self.conv_impl,
            )(x)
            shortcut = norm(name="proj_norm")(shortcut)
        return nn.with_logical_constraint(nn.relu(y + shortcut), FEATURE_MAP_AXES)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (the first strided) plus shortcut; output channels = ``features``.

    With ``dilation`` > 1 both 3x3 convs are dilated (torchvision's BasicBlock refuses dilation;
    this is the natural extension, for small dilated backbones)."""

    expansion: ClassVar[int] = 1

    def branch_convs(self) -> list[tuple[int, int]]:
        """3x3/strides then 3x3/1."""
        return [(3, self.strides), (3, 1)]


class Bottleneck(_ResidualBlock):
    """1x1 reduce -> 3x3 strided (v1.5) -> 1x1 expand, plus shortcut; out = 4 * ``features``.

    ``dilation`` dilates the 3x3 conv, as torchvision's Bottleneck."""

    expansion: ClassVar[int] = 4

    def branch_convs(self) -> list[tuple[int, int]]:
        """1x1/1, 3x3/strides, 1x1/1."""
        return [(1, 1), (3, self.strides), (1, 1)]
