"""Tests for jaxdl.data.image: resize, scaling, standardization and colour conversions."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdl.data.image import (
    grayscale_to_rgb,
    hsv_to_rgb,
    per_channel_stats,
    resize,
    rgb_to_grayscale,
    rgb_to_hsv,
    standardize,
    to_unit_range,
)

RNG = np.random.default_rng(0)


def test_resize_single_and_batched_shapes():
    image = jnp.ones((8, 8, 3))
    assert resize(image, (4, 6)).shape == (4, 6, 3)
    assert resize(jnp.ones((2, 8, 8, 1)), (16, 16), method="nearest").shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="resize expects"):
        resize(jnp.ones((8, 8)), (4, 4))


def test_resize_keeps_constant_image_constant_and_jits():
    image = jnp.full((5, 7, 2), 0.25)
    out = jax.jit(resize, static_argnums=(1, 2))(image, (9, 3), "bilinear")
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_to_unit_range_maps_uint8_to_float_unit_interval():
    out = to_unit_range(np.array([0, 51, 255], np.uint8))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [0.0, 0.2, 1.0], atol=1e-7)


def test_per_channel_stats_then_standardize_gives_zero_mean_unit_std():
    images = RNG.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(64, 4, 4, 3)).astype(np.float32)
    mean, std = per_channel_stats(images)
    assert mean.shape == std.shape == (3,) and mean.dtype == np.float32
    out = np.asarray(standardize(jnp.asarray(images), mean, std))
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_per_channel_stats_constant_channel_gets_unit_std():
    _, std = per_channel_stats(np.zeros((3, 2, 2, 1)))
    np.testing.assert_array_equal(std, [1.0])


def test_rgb_to_grayscale_matches_pil_luma():
    pixels = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).convert("L"), np.float32)
    gray = rgb_to_grayscale(to_unit_range(pixels))
    assert gray.shape == (6, 5, 1)
    # PIL rounds to uint8, so allow half a grey level plus float error.
    np.testing.assert_allclose(np.asarray(gray[..., 0]) * 255, expected, atol=0.51)


def test_grayscale_to_rgb_repeats_channel_and_checks_channels():
    gray = jnp.arange(4.0).reshape(2, 2, 1)
    rgb = grayscale_to_rgb(gray)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[..., 2], gray[..., 0])
    np.testing.assert_allclose(rgb_to_grayscale(rgb), gray, rtol=1e-6)
    with pytest.raises(ValueError, match="1 channels"):
        grayscale_to_rgb(rgb)


def _colour_samples() -> np.ndarray:
    """Random colours plus edge cases: greys, black, white, primaries and ties."""
    special = [
        [0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1],
        [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.2, 0.2, 0.9], [0.9, 0.2, 0.9], [1, 0, 0.0001],
    ]  # fmt: skip
    return np.concatenate([RNG.uniform(size=(200, 3)), special]).astype(np.float32)


def test_rgb_to_hsv_matches_colorsys():
    colours = _colour_samples()
    expected = np.array([colorsys.rgb_to_hsv(*c) for c in colours.astype(np.float64)])
    np.testing.assert_allclose(rgb_to_hsv(jnp.asarray(colours)), expected, atol=1e-5)


def test_hsv_to_rgb_matches_colorsys_and_inverts_rgb_to_hsv():
    hsv = RNG.uniform(size=(200, 3)).astype(np.float32)
    expected = np.array([colorsys.hsv_to_rgb(*c) for c in hsv.astype(np.float64)])
    np.testing.assert_allclose(hsv_to_rgb(jnp.asarray(hsv)), expected, atol=1e-5)
    colours = jnp.asarray(_colour_samples())
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(colours)), colours, atol=1e-5)


def test_colour_conversions_work_on_image_batches_under_jit():
    images = jnp.asarray(RNG.uniform(size=(2, 4, 4, 3)), jnp.float32)
    roundtrip = jax.jit(lambda x: hsv_to_rgb(rgb_to_hsv(x)))(images)
    assert roundtrip.shape == images.shape
    np.testing.assert_allclose(roundtrip, images, atol=1e-5)
