"""Fully connected layer with logically named parameters."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Dense(nn.Module):
    """``nn.Dense`` whose kernel [in, features] is named ``kernel_axes`` and bias [features]
    is named ``(kernel_axes[1],)``.

    Typical ``kernel_axes``: ('embed','mlp'), ('mlp','embed') or ('embed','classes') for a head.
    The parameter tree matches a bare ``nn.Dense`` (``kernel``/``bias`` under this module's name).
    Input [..., in] -> output [..., features].
    """

    features: int
    kernel_axes: tuple[str, str]
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jax.numpy.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Project the last axis of ``x`` [..., in] to [..., features]."""
        if len(self.kernel_axes) != 2 or not all(isinstance(a, str) for a in self.kernel_axes):
            raise ValueError(f"Dense kernel_axes must be two axis names, got {self.kernel_axes!r}")
        dense = nn.Dense(
            features=self.features,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
            bias_init=nn.with_logical_partitioning(self.bias_init, (self.kernel_axes[1],)),
        )
        # Reuse this module's scope so params are `<name>/kernel`, not `<name>/Dense_0/kernel`.
        nn.share_scope(self, dense)
        return dense(x)


def classifier_head(x: jax.Array, num_classes: int, dtype: Any, param_dtype: Any) -> jax.Array:
    """Final ('embed','classes') projection of pooled features [batch, embed] to float32 logits
    [batch, num_classes], parameters under ``head``.

    Must be called inside a compact method (the Dense attaches to the calling module).
    """
    logits = Dense(
        num_classes,
        kernel_axes=("embed", "classes"),
        dtype=dtype,
        param_dtype=param_dtype,
        name="head",
    )(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "classes"))
