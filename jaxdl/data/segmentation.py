"""Bundled segmentation data: scenes of scikit-learn digits on a larger canvas (M2NIST-style).

``data.name='digit_scenes'`` needs no download. Each scene is a ``canvas`` x ``canvas`` image with
1 to ``max_digits`` digits, each upscaled ``scale`` times (nearest neighbour), at seeded random
positions. The per-pixel mask holds class 0 for background and ``d + 1`` for digit ``d`` (11
classes). Overlap rule: digits are drawn in order; the image keeps the brighter pixel and a later
digit's ink (pixels >= ``ink_threshold``) takes over the mask, so a mask pixel always names the
top-most inked digit. The source digits are split (stratified, ``split_seed``) before composing,
so test scenes contain only digit images unseen in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.data.image import per_channel_stats
from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.data.sources import load_digits_dataset
from jaxdl.data.split import stratified_split

CLASS_NAMES = ["background", *(str(d) for d in range(10))]


def compose_scenes(
    digits: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int,
    canvas: int = 32,
    scale: int = 2,
    max_digits: int = 3,
    ink_threshold: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` scenes from ``digits`` float [N, 8, 8, 1] in [0, 1] with class ``labels`` [N]:
    images float32 [count, canvas, canvas, 1] and masks int32 [count, canvas, canvas]."""
    size = digits.shape[1] * scale
    if size > canvas:
        raise ValueError(f"digits upscaled x{scale} ({size} px) do not fit a {canvas} px canvas")
    if max_digits < 1:
        raise ValueError(f"max_digits must be >= 1, got {max_digits}")
    rng = np.random.default_rng(seed)
    big = digits[..., 0].repeat(scale, axis=1).repeat(scale, axis=2)
    images = np.zeros((count, canvas, canvas), np.float32)
    masks = np.zeros((count, canvas, canvas), np.int32)
    for i in range(count):
        for index in rng.choice(len(digits), rng.integers(1, max_digits + 1)):
            top, left = rng.integers(0, canvas - size + 1, size=2)
            window = (i, slice(top, top + size), slice(left, left + size))
            images[window] = np.maximum(images[window], big[index])
            masks[window] = np.where(big[index] >= ink_threshold, labels[index] + 1, masks[window])
    return images[..., None], masks


def load_digit_scenes(
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    split_seed: int = 0,
    *,
    num_train: int = 2000,
    num_val: int = 300,
    num_test: int = 300,
    canvas: int = 32,
    scale: int = 2,
    max_digits: int = 3,
    standardize: bool = True,
) -> DataSplits:
    """Train/val/test scene splits composed from disjoint source digits (deterministic in
    ``split_seed``); inputs standardised with the train split's pixel statistics."""
    digits = load_digits_dataset()
    parts = stratified_split(digits.labels, fractions=split_fractions, seed=split_seed)
    counts = (num_train, num_val, num_test)
    scenes = [
        compose_scenes(
            digits.inputs[part],
            digits.labels[part],
            int(n),
            seed=split_seed * 3 + k,
            canvas=int(canvas),
            scale=int(scale),
            max_digits=int(max_digits),
        )
        for k, (part, n) in enumerate(zip(parts, counts, strict=True))
    ]
    if standardize:
        mean, std = per_channel_stats(scenes[0][0])
    else:
        mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
    sources = [
        ArraySource(inputs=((images - mean) / std).astype(np.float32), labels=masks)
        for images, masks in scenes
    ]
    info = {
        "class_names": list(CLASS_NAMES),
        "num_classes": len(CLASS_NAMES),
        "input_shape": (int(canvas), int(canvas), 1),
        "channel_mean": mean.tolist(),
        "channel_std": std.tolist(),
    }
    return DataSplits(*sources, info=info)


SEGMENTATION_SPLIT_LOADERS = {"digit_scenes": load_digit_scenes}
INTERPOLATIONS = ("bilinear", "nearest")


def joint_shift_flip(
    key: jax.Array,
    images: jax.Array,
    masks: jax.Array,
    max_shift: int = 0,
    flip_left_right: bool = False,
    fill: float | Sequence[float] = 0.0,
    mask_fill: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """On-device augmentation applied alike to images [B, H, W, C] and masks [B, H, W]: a random
    crop of the batch padded by ``max_shift`` (images padded with ``fill``, one value or one per
    channel; masks with ``mask_fill``: class 0, the background, or an ignore label) and, with
    ``flip_left_right``, a random horizontal flip; jit-able."""
    batch, height, width = masks.shape
    shift_key, flip_key = jax.random.split(key)
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift))
    fill = jnp.asarray(fill, images.dtype)
    images = jnp.pad(images - fill, (*pad, (0, 0))) + fill
    masks = jnp.pad(masks, pad, constant_values=mask_fill)
    offsets = jax.random.randint(shift_key, (batch, 2), 0, 2 * max_shift + 1)

    def crop(image, mask, offset):
        top, left = offset[0], offset[1]
        image = jax.lax.dynamic_slice(image, (top, left, 0), (height, width, image.shape[-1]))
        return image, jax.lax.dynamic_slice(mask, (top, left), (height, width))

    images, masks = jax.vmap(crop)(images, masks, offsets)
    if flip_left_right:
        flip = jax.random.bernoulli(flip_key, 0.5, (batch,))
        images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
        masks = jnp.where(flip[:, None, None], masks[:, :, ::-1], masks)
    return images, masks


def warp_image_and_mask(
    images: jax.Array,
    masks: jax.Array,
    angles: jax.Array,
    scales: jax.Array,
    shifts: jax.Array,
    flips: jax.Array,
    crop_boxes: jax.Array | None = None,
    fill: float | Sequence[float] = 0.0,
    mask_fill: int = 0,
    interpolation: str = "bilinear",
) -> tuple[jax.Array, jax.Array]:
    """One geometric transform per example, the same for its image [H, W, C] and its mask [H, W]
    (batched: leading B on everything); jit-able.

    Output pixel ``p = (y, x)`` reads the source at ``crop(rotate_scale(p - shift))``, then the
    result is flipped left-right where ``flips``: ``angles`` [B] in degrees (counter-clockwise as
    displayed), ``scales`` [B] about the image centre (> 1 zooms in), ``shifts`` [B, 2] pixels
    (y, x: content moves down/right), ``crop_boxes`` [B, 3] (top, left, size) of a square window
    resized to the full image (None: the whole image). Images are sampled bilinearly (or, with
    ``interpolation='nearest'``, by the nearest pixel like the masks, which keeps masks that
    threshold their image exactly consistent with it), masks always by the nearest pixel, so a
    mask only ever holds labels it had (or ``mask_fill``). Source pixels
    outside the image read ``fill`` (one value or one per channel) in the image and ``mask_fill``
    in the mask. Identity parameters (0, 1, 0, False, no crop) return the input exactly: source
    coordinates are then whole numbers and bilinear weights exactly 0 or 1.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    _, height, width = masks.shape
    fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), (images.shape[-1],))
    ys, xs = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    center_y, center_x = (height - 1) / 2.0, (width - 1) / 2.0

    def one(image, mask, angle, scale, shift, flip, box):
        y = ys - shift[0].astype(jnp.float32)
        x = xs - shift[1].astype(jnp.float32)
        x = jnp.where(flip, (width - 1) - x, x)
        theta = jnp.deg2rad(angle.astype(jnp.float32))
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        dy, dx = (y - center_y) / scale, (x - center_x) / scale
        # Inverse map of a counter-clockwise rotation in (row-down, column-right) coordinates.
        source_y = center_y + sin * dx + cos * dy
        source_x = center_x + cos * dx - sin * dy
        if box is not None:  # the window [top, top + size) resized (centre-aligned) to H x W
            size = box[2].astype(jnp.float32)
            source_y = box[0] + (source_y + 0.5) * size / height - 0.5
            source_x = box[1] + (source_x + 0.5) * size / width - 0.5
        if interpolation == "nearest":
            warped = jnp.where(
                _inside(source_y, source_x, height, width)[..., None],
                _nearest(image, source_y, source_x, 0),
                fill,
            )
        else:
            warped = _bilinear(image, source_y, source_x, fill)
        return warped, _nearest(mask, source_y, source_x, mask_fill)

    if crop_boxes is None:
        return jax.vmap(lambda *a: one(*a, None))(images, masks, angles, scales, shifts, flips)
    return jax.vmap(one)(images, masks, angles, scales, shifts, flips, crop_boxes)


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array, fill: jax.Array) -> jax.Array:
    """``image`` [H, W, C] sampled at float (y, x) [H', W']; neighbours outside read ``fill``."""
    height, width = image.shape[:2]
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

    def at(yi, xi):
        inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
        value = image[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
        return jnp.where(inside[..., None], value, fill)

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return (top * (1 - wy) + bottom * wy).astype(image.dtype)


def _inside(y: jax.Array, x: jax.Array, height: int, width: int) -> jax.Array:
    """Whether the nearest pixel of float (y, x) lies inside an ``height`` x ``width`` image."""
    yi, xi = jnp.round(y), jnp.round(x)
    return (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)


def _nearest(mask: jax.Array, y: jax.Array, x: jax.Array, fill: int) -> jax.Array:
    """``mask`` [H, W, ...] read at the nearest pixel of float (y, x); outside reads ``fill``."""
    height, width = mask.shape[:2]
    yi, xi = jnp.round(y).astype(jnp.int32), jnp.round(x).astype(jnp.int32)
    value = mask[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
    inside = _inside(y, x, height, width).reshape(yi.shape + (1,) * (mask.ndim - 2))
    return jnp.where(inside, value, jnp.asarray(fill, mask.dtype))


def random_joint_transform(
    key: jax.Array,
    images: jax.Array,
    masks: jax.Array,
    *,
    rotate_degrees: float = 0.0,
    scale_range: tuple[float, float] = (1.0, 1.0),
    crop: int = 0,
    max_shift: int = 0,
    flip_left_right: bool = False,
    fill: float | Sequence[float] = 0.0,
    mask_fill: int = 0,
    interpolation: str = "bilinear",
) -> tuple[jax.Array, jax.Array]:
    """Random geometric augmentation of images [B, H, W, C] and masks [B, H, W], one draw per
    example applied alike to both (``warp_image_and_mask``): a rotation uniform in
    ±``rotate_degrees``, a scale uniform in ``scale_range`` (about the centre; < 1 zooms out and
    brings in ``fill`` / ``mask_fill`` at the borders), with ``crop`` > 0 a ``crop`` x ``crop``
    window at a uniform position resized back to H x W, an integer shift uniform in
    ±``max_shift`` and, with ``flip_left_right``, a horizontal flip with probability 1/2;
    jit-able, seeded by ``key``."""
    batch, height, width = masks.shape
    keys = jax.random.split(key, 6)
    angles = jax.random.uniform(keys[0], (batch,), minval=-rotate_degrees, maxval=rotate_degrees)
    low, high = scale_range
    scales = jax.random.uniform(keys[1], (batch,), minval=low, maxval=high)
    shifts = jax.random.randint(keys[2], (batch, 2), -max_shift, max_shift + 1)
    if flip_left_right:
        flips = jax.random.bernoulli(keys[3], 0.5, (batch,))
    else:
        flips = jnp.zeros((batch,), bool)
    boxes = None
    if crop:
        tops = jax.random.randint(keys[4], (batch,), 0, height - crop + 1)
        lefts = jax.random.randint(keys[5], (batch,), 0, width - crop + 1)
        boxes = jnp.stack([tops, lefts, jnp.full((batch,), crop)], -1)
    return warp_image_and_mask(
        images,
        masks,
        angles,
        scales,
        shifts,
        flips,
        boxes,
        fill=fill,
        mask_fill=mask_fill,
        interpolation=interpolation,
    )
