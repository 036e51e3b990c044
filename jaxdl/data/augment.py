"""Random image augmentations as pure functions of a PRNG key, plus a config-driven composer.

Every augmentation maps (key, image [H, W, C] float, ...) -> image [H, W, C] of the same shape and
dtype, so it runs on device inside the jitted train step and vmaps over a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.scipy.ndimage import map_coordinates

from jaxdl.data.image import rgb_to_grayscale

Augmenter = Callable[[jax.Array, jax.Array], jax.Array]

AUGMENT_DEFAULTS: dict[str, float | int | bool] = {
    "crop_padding": 0,
    "flip_left_right": False,
    "flip_up_down": False,
    "rotation_degrees": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "noise_stddev": 0.0,
    "elastic_alpha": 0.0,
    "elastic_sigma": 3.0,
}


def _check_image(image: jax.Array, name: str) -> None:
    if image.ndim != 3:
        raise ValueError(f"{name} expects one image [H, W, C], got shape {image.shape}")


def _resample(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Bilinearly samples every channel of [H, W, C] at float coordinates [H, W]; outside = 0."""

    def sample(channel: jax.Array) -> jax.Array:
        return map_coordinates(channel, [rows, cols], order=1, mode="constant", cval=0.0)

    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image).astype(image.dtype)


def random_crop_with_padding(key: jax.Array, image: jax.Array, padding: int) -> jax.Array:
    """Zero-pads H and W by `padding` (a static int) on each side, then crops a random [H, W]."""
    _check_image(image, "random_crop_with_padding")
    height, width, channels = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), (height, width, channels))


def random_flip_left_right(key: jax.Array, image: jax.Array, p: float = 0.5) -> jax.Array:
    """Mirrors the width axis of [H, W, C] with probability `p`."""
    _check_image(image, "random_flip_left_right")
    return jnp.where(jax.random.bernoulli(key, p), image[:, ::-1, :], image)


def random_flip_up_down(key: jax.Array, image: jax.Array, p: float = 0.5) -> jax.Array:
    """Mirrors the height axis of [H, W, C] with probability `p`."""
    _check_image(image, "random_flip_up_down")
    return jnp.where(jax.random.bernoulli(key, p), image[::-1, :, :], image)


def random_rotation(key: jax.Array, image: jax.Array, max_degrees: float) -> jax.Array:
    """Rotates [H, W, C] about its centre by U(-max_degrees, max_degrees); bilinear, fill 0."""
    _check_image(image, "random_rotation")
    height, width, _ = image.shape
    angle = jnp.deg2rad(jax.random.uniform(key, (), minval=-max_degrees, maxval=max_degrees))
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    center_row, center_col = (height - 1) / 2.0, (width - 1) / 2.0
    dy, dx = rows - center_row, cols - center_col
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Inverse mapping: each output pixel reads the input at the point rotated by -angle.
    source_rows = center_row + cos * dy - sin * dx
    source_cols = center_col + sin * dy + cos * dx
    return _resample(image, source_rows, source_cols)


def color_jitter(
    key: jax.Array,
    image: jax.Array,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> jax.Array:
    """Scales brightness, contrast and saturation of [H, W, C] by random factors in [1-x, 1+x].

    Brightness multiplies pixels, contrast blends with the mean grey level and saturation
    (only when C == 3) blends with the grayscale image, as in torchvision's ColorJitter. Values
    are not clipped, so it also works on standardized images. Strengths are Python floats
    (static under jit); a strength of 0 leaves that property unchanged.
    """
    _check_image(image, "color_jitter")
    brightness_key, contrast_key, saturation_key = jax.random.split(key, 3)

    def factor(k: jax.Array, strength: float) -> jax.Array:
        return jax.random.uniform(k, (), minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)

    channels = image.shape[-1]

    def gray(x: jax.Array) -> jax.Array:
        return rgb_to_grayscale(x) if channels == 3 else jnp.mean(x, axis=-1, keepdims=True)

    if brightness:
        image = image * factor(brightness_key, brightness)
    if contrast:
        mean = jnp.mean(gray(image))
        image = mean + factor(contrast_key, contrast) * (image - mean)
    if saturation and channels == 3:
        gray_image = gray(image)
        image = gray_image + factor(saturation_key, saturation) * (image - gray_image)
    return image


def gaussian_noise(key: jax.Array, image: jax.Array, stddev: float) -> jax.Array:
    """Adds i.i.d. N(0, stddev^2) noise to every element of [H, W, C]."""
    _check_image(image, "gaussian_noise")
    return image + stddev * jax.random.normal(key, image.shape, image.dtype)


def _gaussian_blur(fields: jax.Array, sigma: float) -> jax.Array:
    """Blurs each [H, W] map of fields [N, H, W] with a Gaussian of std `sigma` (zero padding).

    Separable: one [K, 1] then one [1, K] conv, with radius ceil(3 sigma) (99.7% of the mass).
    `lax.conv` is used because, unlike jax.scipy.signal.convolve, it accepts kernels larger
    than the image (sigma 3 on 8x8 digits).
    """
    radius = max(1, math.ceil(3 * sigma))
    offsets = jnp.arange(-radius, radius + 1, dtype=fields.dtype)
    kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = fields[:, None]  # [N, 1, H, W]: one input channel per field.
    for kernel_shape in ((1, 1, -1, 1), (1, 1, 1, -1)):
        blurred = jax.lax.conv_general_dilated(
            blurred, kernel.reshape(kernel_shape), window_strides=(1, 1), padding="SAME"
        )
    return blurred[:, 0]


def elastic_deformation(
    key: jax.Array, image: jax.Array, alpha: float, sigma: float = 3.0
) -> jax.Array:
    """Elastic distortion of [H, W, C] (Simard et al., 2003); `sigma` must be a static float.

    Draws a U(-1, 1) displacement per pixel and axis, smooths it with a Gaussian of std `sigma`
    (separable zero-padded conv), scales it by `alpha` pixels and resamples bilinearly (fill 0).
    """
    _check_image(image, "elastic_deformation")
    if sigma <= 0:
        raise ValueError(f"elastic_deformation needs sigma > 0, got {sigma}")
    height, width, _ = image.shape
    noise = jax.random.uniform(key, (2, height, width), minval=-1.0, maxval=1.0)
    displacement = alpha * _gaussian_blur(noise, sigma)
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    return _resample(image, rows + displacement[0], cols + displacement[1])


def _augment_settings(config: ml_collections.ConfigDict) -> dict[str, float | int | bool]:
    """Merges `config` over AUGMENT_DEFAULTS (None keeps the default), rejecting unknown fields."""
    settings = dict(AUGMENT_DEFAULTS)
    for name, value in config.items():
        if name not in settings:
            raise ValueError(f"unknown augmentation field {name!r}; known: {sorted(settings)}")
        if value is not None:
            settings[name] = value
    if settings["crop_padding"] < 0:
        raise ValueError(f"crop_padding must be >= 0, got {settings['crop_padding']}")
    return settings


def make_augmenter(config: ml_collections.ConfigDict) -> Augmenter:
    """Builds `augment(key, images [B, H, W, C]) -> [B, H, W, C]` from an augmentation config.

    Fields (see AUGMENT_DEFAULTS): crop_padding, flip_left_right, flip_up_down,
    rotation_degrees, brightness, contrast, saturation, noise_stddev, elastic_alpha,
    elastic_sigma. Enabled steps run in that order with an independent key per example; with
    everything off the augmenter is the identity. Jit-compatible (call it inside the train step).
    """
    s = _augment_settings(config)
    steps: list[Callable[[jax.Array, jax.Array], jax.Array]] = []
    if s["crop_padding"]:
        steps.append(lambda k, x: random_crop_with_padding(k, x, int(s["crop_padding"])))
    if s["flip_left_right"]:
        steps.append(random_flip_left_right)
    if s["flip_up_down"]:
        steps.append(random_flip_up_down)
    if s["rotation_degrees"]:
        steps.append(lambda k, x: random_rotation(k, x, s["rotation_degrees"]))
    if s["brightness"] or s["contrast"] or s["saturation"]:
        steps.append(
            lambda k, x: color_jitter(k, x, s["brightness"], s["contrast"], s["saturation"])
        )
    if s["noise_stddev"]:
        steps.append(lambda k, x: gaussian_noise(k, x, s["noise_stddev"]))
    if s["elastic_alpha"]:
        steps.append(lambda k, x: elastic_deformation(k, x, s["elastic_alpha"], s["elastic_sigma"]))

    def augment_one(key: jax.Array, image: jax.Array) -> jax.Array:
        for step, step_key in zip(steps, jax.random.split(key, len(steps)), strict=True):
            image = step(step_key, image)
        return image

    def augment(key: jax.Array, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"augmenter expects a batch [B, H, W, C], got shape {images.shape}")
        if not steps:
            return images
        return jax.vmap(augment_one)(jax.random.split(key, images.shape[0]), images)

    return augment
