"""Max pooling equal to ``nn.max_pool`` whose gradient avoids XLA:CPU's select-and-scatter.

Gradient rule on ties (both formulations): within each window the gradient goes to the *first*
maximal element in row-major window order (top-to-bottom, then left-to-right); tied elements
later in the window get nothing from that window. Elements shared by overlapping windows sum the
gradients of every window that selects them.
"""

import functools
import itertools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdl.layers.conv import Padding, portable_ops_active, resolve_padding, use_fast_paths


def _window_taps(
    x: jax.Array,
    window_shape: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
) -> list[jax.Array]:
    """The ``prod(window_shape)`` strided slices of ``x`` padded with -inf, one per window
    position in row-major order; each has the pooled output's shape."""
    padded = lax.pad(
        x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
    )
    batch, *sizes, channels = padded.shape
    outs = [(n - w) // s + 1 for n, w, s in zip(sizes, window_shape, strides, strict=True)]
    taps = []
    for tap in itertools.product(*(range(w) for w in window_shape)):
        limits = [t + (o - 1) * s + 1 for t, o, s in zip(tap, outs, strides, strict=True)]
        taps.append(lax.slice(padded, (0, *tap, 0), (batch, *limits, channels), (1, *strides, 1)))
    return taps


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_taps(
    x: jax.Array,
    window_shape: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
) -> jax.Array:
    """Max pool of ``x`` [batch, *spatial, C] as an elementwise max of window slices, with a
    gradient that masks the first maximum of each window instead of select-and-scatter."""
    return functools.reduce(jnp.maximum, _window_taps(x, window_shape, strides, pads))


def _max_pool_taps_fwd(x, window_shape, strides, pads):
    y = max_pool_taps(x, window_shape, strides, pads)
    return y, (x, y)


def _max_pool_taps_bwd(window_shape, strides, pads, residuals, g):
    x, y = residuals
    taps, slices_vjp = jax.vjp(lambda v: _window_taps(v, window_shape, strides, pads), x)
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for tap in taps:
        first = (tap == y) & ~taken
        taken = taken | first
        grads.append(jnp.where(first, g, jnp.zeros((), g.dtype)))
    return slices_vjp(grads)


max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def _pad_with_column_minima(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """``x`` [batch, *spatial, C] padded around each spatial axis with copies of its minimum
    along that axis: finite (an int8 converter can calibrate it) and never above a real value
    sharing a window with it, so max-pooling windows that also hold real values are unchanged
    (every window does when padding < window, as 'SAME' and torch-style padding give)."""
    for axis, (low, high) in enumerate(pads, start=1):
        if low or high:
            edge = jnp.min(x, axis=axis, keepdims=True)
            x = jnp.concatenate([edge] * low + [x] + [edge] * high, axis=axis)
    return x


def max_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: Padding = "VALID",
    impl: str = "auto",
) -> jax.Array:
    """``nn.max_pool(x, window_shape, strides, padding)`` for ``x`` [batch, *spatial, C].

    Off CPU (or with ``impl='plain'`` / ``$JAXDL_CONV_IMPL=plain``) it is ``nn.max_pool``; on
    CPU it is ``max_pool_taps``, whose gradient is ~10x faster there than XLA:CPU's
    select-and-scatter (a ``custom_vjp``: forward-mode autodiff needs ``impl='plain'``). Both
    give the gradient of tied maxima to the first one (module doc).
    """
    window_shape = tuple(window_shape)
    strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
    if x.ndim != len(window_shape) + 2:
        raise ValueError(
            f"max_pool expects [batch, *spatial, C] with {len(window_shape)} spatial dims, "
            f"got shape {x.shape}"
        )
    pads = tuple(resolve_padding(padding, x.shape[1:-1], window_shape, strides))
    if portable_ops_active():
        # jax2onnx 0.17.1's nn.max_pool drops explicit padding and takes no positional
        # window_shape, and its lax.pad cannot take a symbolic batch: pad by concatenation.
        padded = _pad_with_column_minima(x, pads)
        return nn.max_pool(padded, window_shape=window_shape, strides=strides, padding="VALID")
    if not use_fast_paths(impl):
        return nn.max_pool(x, window_shape=window_shape, strides=strides, padding=pads)
    return max_pool_taps(x, window_shape, strides, pads)
