"""Image data: in-memory datasets, splits, jnp image ops, augmentations and grain pipelines."""

from jaxdl.data.augment import (
    AUGMENT_DEFAULTS,
    color_jitter,
    elastic_deformation,
    gaussian_noise,
    make_augmenter,
    random_crop_with_padding,
    random_flip_left_right,
    random_flip_up_down,
    random_rotation,
)
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
from jaxdl.data.pipeline import iterate_eval_batches, make_train_loader, steps_per_epoch
from jaxdl.data.sources import (
    ArrayDataset,
    get_dataset,
    load_digits_dataset,
    load_hf_image_dataset,
    load_image_folder,
)
from jaxdl.data.split import class_weights, oversample_indices, stratified_kfold, stratified_split

__all__ = [
    "AUGMENT_DEFAULTS",
    "ArrayDataset",
    "class_weights",
    "color_jitter",
    "elastic_deformation",
    "gaussian_noise",
    "get_dataset",
    "grayscale_to_rgb",
    "hsv_to_rgb",
    "iterate_eval_batches",
    "load_digits_dataset",
    "load_hf_image_dataset",
    "load_image_folder",
    "make_augmenter",
    "make_train_loader",
    "oversample_indices",
    "per_channel_stats",
    "random_crop_with_padding",
    "random_flip_left_right",
    "random_flip_up_down",
    "random_rotation",
    "resize",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "standardize",
    "steps_per_epoch",
    "stratified_kfold",
    "stratified_split",
    "to_unit_range",
]
