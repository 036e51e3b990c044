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


def joint_shift_flip(
    key: jax.Array,
    images: jax.Array,
    masks: jax.Array,
    max_shift: int = 0,
    flip_left_right: bool = False,
    fill: float | Sequence[float] = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """On-device augmentation applied alike to images [B, H, W, C] and masks [B, H, W]: a random
    crop of the batch padded by ``max_shift`` (images padded with ``fill``, one value or one per
    channel; masks with class 0, the background) and, with ``flip_left_right``, a random
    horizontal flip; jit-able."""
    batch, height, width = masks.shape
    shift_key, flip_key = jax.random.split(key)
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift))
    fill = jnp.asarray(fill, images.dtype)
    images = jnp.pad(images - fill, (*pad, (0, 0))) + fill
    masks = jnp.pad(masks, pad)
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
