"""Normalisation layers with logically named scale/bias, built by ``make_norm``."""

from typing import Any

import flax.linen as nn
import jax

from jaxdl.parallel.gradients import batch_axes

NORM_KINDS = ("batch", "group", "layer", "rms", "none")

# torch's default epsilon, so ported weights behave the same.
_EPSILON = 1e-5
_BATCH_NORM_MOMENTUM = 0.9


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest divisor of ``n`` that is <= ``limit`` (used to clip GroupNorm's group count)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class GroupNorm(nn.Module):
    """``nn.GroupNorm`` whose group count is clipped to divide the channel count.

    Uses the largest divisor of C that is <= ``num_groups``, so one config works for narrow
    and wide layers (flax would otherwise reject e.g. 32 groups over 16 channels).
    Input [..., C] -> same shape; scale/bias [C] named ``(axis_name,)``.
    """

    axis_name: str
    num_groups: int = 32
    dtype: Any = None
    param_dtype: Any = jax.numpy.float32
    scale_init: nn.initializers.Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalise ``x`` [..., C] over groups of channels (and all non-batch axes)."""
        norm = nn.GroupNorm(
            num_groups=largest_divisor_at_most(x.shape[-1], self.num_groups),
            epsilon=_EPSILON,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(self.scale_init, (self.axis_name,)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
        )
        # Reuse this module's scope so params are `<name>/scale`, not `<name>/GroupNorm_0/scale`.
        nn.share_scope(self, norm)
        return norm(x)


class Identity(nn.Module):
    """Returns its input unchanged; stands in for a norm layer when ``kind='none'``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Return ``x`` as is."""
        return x


def make_norm(
    kind: str,
    *,
    axis_name: str,
    train: bool,
    dtype: Any = None,
    param_dtype: Any = jax.numpy.float32,
    num_groups: int = 32,
    scale_init: nn.initializers.Initializer = nn.initializers.ones,
    epsilon: float = _EPSILON,
    name: str | None = None,
) -> nn.Module:
    """Build a normalisation layer over the last (feature) axis.

    Args:
      kind: 'batch' (running stats in the 'batch_stats' collection, momentum 0.9, eps 1e-5),
        'group' (``num_groups`` clipped to divide the channels), 'layer', 'rms' (RMSNorm:
        scale only, no centring, as in T5 and Llama), or 'none' (identity).
      axis_name: logical name of the normalised feature axis, given to scale and bias,
        e.g. 'conv_out' for conv feature maps or 'embed'/'mlp' for dense features.
        (This is a logical sharding name, not a pmap axis name.)
      train: BatchNorm normalises with batch statistics and updates running ones when True,
        uses the running statistics when False. Ignored by the other kinds.
      dtype / param_dtype: compute and parameter dtypes.
      num_groups: upper bound on GroupNorm's group count.
      scale_init: initialiser for the scale; ``zeros_init()`` zero-initialises a residual branch.
      epsilon: added to the variance (default 1e-5, torch's; BERT uses 1e-12). Used by
        'layer' and 'rms' only; 'batch' and 'group' keep 1e-5.
      name: submodule name.

    Returns:
      An unbound Linen module mapping [..., C] -> [..., C].
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"Unknown norm kind {kind!r}; expected one of {NORM_KINDS}")
    if kind == "none":
        return Identity(name=name)
    if kind == "group":
        return GroupNorm(
            axis_name=axis_name,
            num_groups=num_groups,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_init=scale_init,
            name=name,
        )
    named_scale = nn.with_logical_partitioning(scale_init, (axis_name,))
    named_bias = nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,))
    if kind == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=_BATCH_NORM_MOMENTUM,
            epsilon=_EPSILON,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_init=named_scale,
            bias_init=named_bias,
            # In a data-parallel manual region each device holds part of the batch: average
            # the statistics over it so they are the global batch's.
            axis_name=batch_axes() if train else None,
            name=name,
        )
    if kind == "rms":
        return nn.RMSNorm(
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_init=named_scale,
            name=name,
        )
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=named_scale,
        bias_init=named_bias,
        name=name,
    )
