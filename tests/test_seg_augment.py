"""Joint image + mask geometric augmentation (rotation, scale, crop, shift, flip) on device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.data.segmentation import warp_image_and_mask
from jaxdl.errors import ConfigError
from jaxdl.tasks.base import EXAMPLE_MASK
from jaxdl.tasks.registry import build_task
from jaxdl.tasks.segmentation import SemanticSegmentation

warp = jax.jit(warp_image_and_mask, static_argnames="interpolation")


def _batch(count=3, size=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, classes, (count, size, size)).astype(np.int32)
    images = rng.normal(size=(count, size, size, 2)).astype(np.float32)
    return images, masks


def _params(count, angle=0.0, scale=1.0, shift=(0, 0), flip=False):
    return (
        jnp.full((count,), angle, jnp.float32),
        jnp.full((count,), scale, jnp.float32),
        jnp.tile(jnp.asarray(shift, jnp.int32), (count, 1)),
        jnp.full((count,), flip),
    )


def test_identity_parameters_return_the_exact_input():
    images, masks = _batch()
    # A crop window of the whole image, no rotation, scale 1, no shift, no flip.
    box = jnp.tile(jnp.asarray([0, 0, 8]), (3, 1))
    out_images, out_masks = warp(images, masks, *_params(3), box, fill=(9.0, -9.0))
    np.testing.assert_array_equal(np.asarray(out_images), images)
    np.testing.assert_array_equal(np.asarray(out_masks), masks)


def test_quarter_turn_flip_and_shift_match_numpy():
    images, masks = _batch()
    identity = warp(images, masks, *_params(3), fill=(0.0, 0.0), mask_fill=0)
    np.testing.assert_array_equal(identity[0], images)
    np.testing.assert_array_equal(identity[1], masks)
    turned = warp(images, masks, *_params(3, angle=90.0), fill=(0.0, 0.0), mask_fill=0)
    np.testing.assert_allclose(turned[0], np.rot90(images, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_array_equal(turned[1], np.rot90(masks, 1, axes=(1, 2)))
    nearest = warp(images, masks, *_params(3, angle=90.0), fill=(0.0, 0.0), interpolation="nearest")
    np.testing.assert_array_equal(nearest[0], np.rot90(images, 1, axes=(1, 2)))
    flipped = warp(images, masks, *_params(3, flip=True), fill=(0.0, 0.0), mask_fill=0)
    np.testing.assert_array_equal(flipped[0], images[:, :, ::-1])
    np.testing.assert_array_equal(flipped[1], masks[:, :, ::-1])
    shifted = warp(images, masks, *_params(3, shift=(1, -2)), fill=(5.0, 6.0), mask_fill=3)
    expected = np.full_like(masks, 3)
    expected[:, 1:, :-2] = masks[:, :-1, 2:]
    np.testing.assert_array_equal(shifted[1], expected)
    np.testing.assert_array_equal(shifted[0][:, 0, :, 1], np.full((3, 8), 6.0))
    np.testing.assert_array_equal(shifted[0][:, 1:, :-2], images[:, :-1, 2:])


def test_random_transform_keeps_labels_and_moves_image_and_mask_together():
    """Through the task's ``prepare_train_batch``: every augmentation on at once."""
    size = 16
    masks = np.zeros((8, size, size), np.int32)
    masks[:, 5:8, 9:12] = 2  # a 3x3 marker, the same in image and mask
    masks[:, 10:13, 3:5] = 1
    images = (masks == 2).astype(np.float32)[..., None]
    task = SemanticSegmentation(
        (size, size, 1),
        3,
        rotate_degrees=30.0,
        scale_range=(0.8, 1.25),
        crop=12,
        max_shift=2,
        flip_left_right=True,
    )
    batch = {"inputs": images, "labels": masks, EXAMPLE_MASK: np.ones(8)}
    out = jax.jit(task.prepare_train_batch)(jax.random.key(0), batch)
    out_images, out_masks = np.asarray(out["inputs"]), np.asarray(out["labels"])
    assert out_images.shape == images.shape and out_masks.dtype == np.int32
    assert set(np.unique(out_masks)) <= {0, 1, 2} and not np.array_equal(out_masks, masks)
    ys, xs = np.mgrid[:size, :size]
    checked = 0
    for image, mask in zip(out_images[..., 0], out_masks, strict=True):
        marker = mask == 2
        if image.sum() < 1.0 or not marker.any():
            continue  # moved out of view
        image_center = np.array([(ys * image).sum(), (xs * image).sum()]) / image.sum()
        mask_center = np.array([ys[marker].mean(), xs[marker].mean()])
        assert np.abs(image_center - mask_center).max() < 1.0
        checked += 1
    assert checked >= 4


def _data(size=8):
    images, masks = _batch(count=2, size=size)
    source = ArraySource(inputs=images, labels=masks)
    return DataSplits(source, source, source, info={"num_classes": 4})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rotate_degrees", -5.0, r"rotate_degrees must be in \[0, 180\]"),
        ("rotate_degrees", "x", "task.rotate_degrees must be a number"),
        ("scale_range", (1.2, 0.8), "scale_range must be two numbers"),
        ("scale_range", (0.0, 1.0), "0 < low <= high"),
        ("scale_range", "big", "scale_range must be two numbers"),
        ("crop", 9, r"crop must be a whole number of pixels in \[0, 8\]"),
        ("crop", 2.5, "crop must be a whole number"),
        ("interpolation", "cubic", "interpolation must be one of"),
        ("ignore_index", 2, r"ignore_index 2 is a class id \(classes are 0..3\)"),
        ("ignore_index", 2.5, "ignore_index must be a whole number outside"),
    ],
)
def test_bad_augmentation_settings_are_one_line_config_errors(field, value, message):
    config = ml_collections.ConfigDict({"task": {"name": "segmentation", field: value}})
    with pytest.raises(ConfigError, match=message) as raised:
        build_task(config, _data())
    assert "\n" not in str(raised.value)


def test_task_config_fields_reach_the_task():
    config = ml_collections.ConfigDict(
        {
            "task": {
                "name": "segmentation",
                "rotate_degrees": 15,
                "scale_range": (0.9, 1.2),
                "crop": 6,
                "max_shift": 1,
            }
        }
    )
    task = build_task(config, _data())
    assert (task.rotate_degrees, task.scale_range, task.crop, task.max_shift) == (
        15.0,
        (0.9, 1.2),
        6,
        1,
    )


@pytest.mark.parametrize("rotate", [0.0, 30.0])
def test_augmentation_fills_masks_with_the_ignore_label(rotate):
    """Pixels brought in from outside the image: ``ignore_index`` when set (torchvision's and
    mmseg's convention), else the background; shift-only and warped paths alike."""
    images, masks = _batch(count=6, size=8)
    batch = {"inputs": images, "labels": masks, EXAMPLE_MASK: np.ones(6)}
    outs = {}
    for ignore in (None, 255):
        task = SemanticSegmentation(
            (8, 8, 2), 4, max_shift=3, rotate_degrees=rotate, ignore_index=ignore
        )
        outs[ignore] = np.asarray(
            jax.jit(task.prepare_train_batch)(jax.random.key(1), batch)["labels"]
        )
    brought_in = outs[255] == 255
    assert brought_in.any() and set(np.unique(outs[255])) <= {0, 1, 2, 3, 255}
    np.testing.assert_array_equal(outs[None][brought_in], 0)
    np.testing.assert_array_equal(outs[None][~brought_in], outs[255][~brought_in])
