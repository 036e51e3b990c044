"""Tests for jaxdl.data.augment: each random augmentation and the config-driven composer."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdl.data.augment import (
    color_jitter,
    elastic_deformation,
    gaussian_noise,
    make_augmenter,
    random_crop_with_padding,
    random_flip_left_right,
    random_flip_up_down,
    random_rotation,
)

IMAGE = jax.random.uniform(jax.random.key(0), (8, 8, 3))

# Each entry is (key, image) -> image with the augmentation clearly switched on; jitted once
# here so every test reuses the compiled function (eager map_coordinates is slow).
_SWITCHED_ON = {
    "crop": functools.partial(random_crop_with_padding, padding=2),
    "flip_lr": random_flip_left_right,
    "flip_ud": random_flip_up_down,
    "rotation": functools.partial(random_rotation, max_degrees=30.0),
    "jitter": functools.partial(color_jitter, brightness=0.4, contrast=0.4, saturation=0.4),
    "noise": functools.partial(gaussian_noise, stddev=0.1),
    "elastic": functools.partial(elastic_deformation, alpha=8.0, sigma=2.0),
}
AUGMENTATIONS = {name: jax.jit(fn) for name, fn in _SWITCHED_ON.items()}


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmentation_preserves_shape_dtype_and_is_deterministic_per_key(name):
    augment = AUGMENTATIONS[name]
    out = augment(jax.random.key(1), IMAGE)
    assert out.shape == IMAGE.shape and out.dtype == IMAGE.dtype
    np.testing.assert_array_equal(out, augment(jax.random.key(1), IMAGE))
    outs = [np.asarray(augment(jax.random.key(k), IMAGE)) for k in range(8)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:]), "keys must change the output"


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmentation_jits_and_vmaps_to_the_same_result(name):
    augment = AUGMENTATIONS[name]
    keys = jax.random.split(jax.random.key(2), 3)
    images = jnp.stack([IMAGE, IMAGE * 0.5, IMAGE[::-1]])
    batched = jax.jit(jax.vmap(augment))(keys, images)
    for i in range(3):
        np.testing.assert_allclose(batched[i], augment(keys[i], images[i]), atol=1e-5)


def test_flips_are_exact_mirrors_or_identity():
    for k in range(6):
        out = random_flip_left_right(jax.random.key(k), IMAGE)
        assert np.array_equal(out, IMAGE[:, ::-1]) or np.array_equal(out, IMAGE)
        out = random_flip_up_down(jax.random.key(k), IMAGE)
        assert np.array_equal(out, IMAGE[::-1]) or np.array_equal(out, IMAGE)
    key = jax.random.key(0)
    np.testing.assert_array_equal(random_flip_left_right(key, IMAGE, p=1.0), IMAGE[:, ::-1])
    np.testing.assert_array_equal(random_flip_up_down(key, IMAGE, p=1.0), IMAGE[::-1])
    np.testing.assert_array_equal(random_flip_up_down(key, IMAGE, p=0.0), IMAGE)


def test_crop_of_zero_padded_image_keeps_content_translated():
    # A 4x4 block of content inside an 8x8 zero border: a shift by <= 2 keeps it all in view.
    image = jnp.zeros((8, 8, 1)).at[2:6, 2:6, 0].set(jnp.arange(1.0, 17.0).reshape(4, 4))
    for k in range(10):
        out = np.asarray(AUGMENTATIONS["crop"](jax.random.key(k), image))  # padding=2
        rows, cols = np.nonzero(out[..., 0])
        top, left = rows.min(), cols.min()
        np.testing.assert_array_equal(out[top : top + 4, left : left + 4], image[2:6, 2:6])
        assert out.sum() == image.sum() and abs(top - 2) <= 2 and abs(left - 2) <= 2


def test_rotation_by_zero_degrees_is_identity():
    np.testing.assert_allclose(random_rotation(jax.random.key(3), IMAGE, 0.0), IMAGE, atol=1e-6)


def test_rotation_moves_a_bar_around_the_fixed_centre():
    bar = jnp.zeros((9, 9, 1)).at[4, :, 0].set(1.0)
    for k in range(3):
        out = np.asarray(jax.jit(random_rotation)(jax.random.key(k), bar, 90.0))
        assert out[4, 4, 0] == pytest.approx(1.0)  # the centre is a fixed point
        assert out[4].sum() < bar[4].sum() - 1.0  # mass left the bar's row
        assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6  # bilinear = convex blend


def test_rotation_leaves_a_centred_radial_blob_nearly_unchanged():
    rows, cols = np.mgrid[:15, :15]
    blob = np.exp(-((rows - 7) ** 2 + (cols - 7) ** 2) / (2 * 3.0**2)).astype(np.float32)
    for k in range(3):
        out = jax.jit(random_rotation)(jax.random.key(k), jnp.asarray(blob[..., None]), 180.0)
        np.testing.assert_allclose(out[..., 0], blob, atol=0.03)


def test_gaussian_noise_has_requested_stddev():
    zeros = jnp.zeros((64, 64, 3))
    noise = np.asarray(gaussian_noise(jax.random.key(0), zeros, stddev=0.3))
    assert noise.std() == pytest.approx(0.3, rel=0.05)
    assert abs(noise.mean()) < 0.02


def test_color_jitter_off_is_identity_and_saturation_skips_grayscale():
    np.testing.assert_array_equal(color_jitter(jax.random.key(0), IMAGE), IMAGE)
    gray = IMAGE[..., :1]
    np.testing.assert_array_equal(color_jitter(jax.random.key(0), gray, saturation=0.9), gray)


def test_color_jitter_brightness_scales_pixels_uniformly():
    out = np.asarray(color_jitter(jax.random.key(4), IMAGE, brightness=0.5))
    ratio = out / np.asarray(IMAGE)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert 0.5 <= ratio.flat[0] <= 1.5 and ratio.flat[0] != 1.0


def test_elastic_with_zero_alpha_is_identity_and_keeps_constant_interior():
    elastic = jax.jit(elastic_deformation, static_argnames=("alpha", "sigma"))
    np.testing.assert_allclose(elastic(jax.random.key(0), IMAGE, alpha=0.0), IMAGE, atol=1e-6)
    ones = jnp.ones((32, 32, 1))
    out = np.asarray(elastic(jax.random.key(0), ones, alpha=1.0, sigma=4.0))
    np.testing.assert_allclose(out[8:-8, 8:-8], 1.0, atol=1e-5)


def _config(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def test_augmenter_with_everything_off_is_identity():
    images = jnp.stack([IMAGE] * 4)
    configs = (
        _config(),
        _config(crop_padding=0, flip_left_right=False, elastic_sigma=2.0),
        _config(brightness=None, noise_stddev=None),  # unset placeholders mean "off"
    )
    for config in configs:
        np.testing.assert_array_equal(make_augmenter(config)(jax.random.key(0), images), images)


def test_augmenter_rejects_unknown_field_by_name():
    with pytest.raises(ValueError, match="'mixup'"):
        make_augmenter(_config(mixup=0.2))


def test_augmenter_uses_independent_keys_per_example_under_jit():
    config = _config(
        crop_padding=2, flip_left_right=True, flip_up_down=True, rotation_degrees=10.0,
        brightness=0.2, contrast=0.2, saturation=0.2, noise_stddev=0.05, elastic_alpha=2.0,
    )  # fmt: skip
    augment = jax.jit(make_augmenter(config))
    images = jnp.stack([IMAGE] * 4)
    out = augment(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(out, augment(jax.random.key(0), images))
    assert not np.allclose(out, augment(jax.random.key(1), images))


def test_augmenter_applies_only_the_enabled_step():
    images = jnp.stack([IMAGE] * 8)
    out = np.asarray(make_augmenter(_config(flip_left_right=True))(jax.random.key(0), images))
    flipped = [np.array_equal(o, IMAGE[:, ::-1]) for o in out]
    assert all(f or np.array_equal(o, IMAGE) for f, o in zip(flipped, out, strict=True))
    assert 0 < sum(flipped) < 8
