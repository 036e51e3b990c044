"""Pure jnp image ops (resize, scaling, colour spaces) usable on device under jit and vmap.

Images are channels-last: one image is [H, W, C] and a batch is [B, H, W, C]; every op here
accepts either unless stated otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 601-2 luma weights, the ones PIL uses for convert('L').
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _check_rank(image: jax.Array, name: str) -> None:
    if image.ndim not in (3, 4):
        raise ValueError(f"{name} expects [H, W, C] or [B, H, W, C], got shape {image.shape}")


def _check_channels(image: jax.Array, channels: int, name: str) -> None:
    if image.shape[-1] != channels:
        raise ValueError(f"{name} expects {channels} channels, got shape {image.shape}")


def resize(image: jax.Array, size: tuple[int, int], method: str = "bilinear") -> jax.Array:
    """Resizes [H, W, C] or [B, H, W, C] to spatial (h, w) with `jax.image.resize`."""
    _check_rank(image, "resize")
    height, width = size
    shape = (*image.shape[:-3], height, width, image.shape[-1])
    return jax.image.resize(image, shape, method=method)


def to_unit_range(image: jax.Array) -> jax.Array:
    """Maps uint8 pixels 0..255 to float32 0..1 (any shape)."""
    return jnp.asarray(image, jnp.float32) / 255.0


def standardize(image: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Per-channel (image - mean) / std; mean and std are [C], image is [..., C]."""
    return (image - jnp.asarray(mean, image.dtype)) / jnp.asarray(std, image.dtype)


def per_channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns float32 per-channel (mean [C], std [C]) over a training set [N, ..., C] (NumPy).

    A zero std (a constant channel) is replaced by 1 so `standardize` stays finite.
    """
    images = np.asarray(images, dtype=np.float64)
    axes = tuple(range(images.ndim - 1))
    mean, std = images.mean(axis=axes), images.std(axis=axes)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
    """Converts [..., 3] RGB to [..., 1] luma with PIL 'L' weights (0.299, 0.587, 0.114)."""
    _check_channels(image, 3, "rgb_to_grayscale")
    weights = jnp.asarray(_LUMA_WEIGHTS, image.dtype)
    return jnp.sum(image * weights, axis=-1, keepdims=True)


def grayscale_to_rgb(image: jax.Array) -> jax.Array:
    """Repeats a [..., 1] grayscale image into [..., 3] RGB."""
    _check_channels(image, 1, "grayscale_to_rgb")
    return jnp.repeat(image, 3, axis=-1)


def rgb_to_hsv(image: jax.Array) -> jax.Array:
    """Converts [..., 3] RGB in [0, 1] to HSV in [0, 1] (same convention as `colorsys`)."""
    _check_channels(image, 3, "rgb_to_hsv")
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    value = jnp.max(image, axis=-1)
    delta = value - jnp.min(image, axis=-1)
    has_chroma = delta > 0
    safe_delta = jnp.where(has_chroma, delta, 1.0)
    saturation = jnp.where(value > 0, delta / jnp.where(value > 0, value, 1.0), 0.0)
    hue = jnp.where(
        red == value,
        (green - blue) / safe_delta,
        jnp.where(
            green == value, 2.0 + (blue - red) / safe_delta, 4.0 + (red - green) / safe_delta
        ),
    )
    hue = jnp.where(has_chroma, jnp.mod(hue / 6.0, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
    """Converts [..., 3] HSV in [0, 1] back to RGB in [0, 1] (inverse of `rgb_to_hsv`)."""
    _check_channels(image, 3, "hsv_to_rgb")
    hue, saturation, value = image[..., 0], image[..., 1], image[..., 2]
    sector = jnp.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = jnp.mod(sector, 6).astype(jnp.int32)
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    # Rows: the (r, g, b) choice for each of the six hue sectors, as in colorsys.hsv_to_rgb.
    candidates = jnp.stack(
        [
            jnp.stack([value, t, p], axis=-1),
            jnp.stack([q, value, p], axis=-1),
            jnp.stack([p, value, t], axis=-1),
            jnp.stack([p, q, value], axis=-1),
            jnp.stack([t, p, value], axis=-1),
            jnp.stack([value, p, q], axis=-1),
        ],
        axis=-2,
    )
    return jnp.take_along_axis(candidates, sector[..., None, None], axis=-2)[..., 0, :]
