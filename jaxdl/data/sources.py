"""In-memory image datasets and the loaders that build them (sklearn digits, folders, HF)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageSize = int | tuple[int, int]

_COLOR_MODES = {"rgb": "RGB", "grayscale": "L"}


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays would be ambiguous.
class ArrayDataset:
    """A labelled dataset held in host memory.

    Attributes:
      inputs: float32 [N, H, W, C] images (or any [N, ...] features).
      labels: integer [N] class indices into `class_names`.
      class_names: human-readable name of each class, index = label.
    """

    inputs: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.labels.ndim != 1:
            raise ValueError(f"labels must be 1-D [N], got shape {self.labels.shape}")
        if len(self.inputs) != len(self.labels):
            raise ValueError(
                f"inputs and labels differ in length: {len(self.inputs)} != {len(self.labels)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (length of `class_names`)."""
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        """Returns the examples at `indices` (e.g. one split) as a new dataset."""
        indices = np.asarray(indices)
        return ArrayDataset(self.inputs[indices], self.labels[indices], list(self.class_names))


def load_digits_dataset() -> ArrayDataset:
    """Loads scikit-learn's bundled 8x8 digits: float32 [1797, 8, 8, 1] in [0, 1], 10 classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The raw pixel values are integers in 0..16.
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    class_names = [str(name) for name in digits.target_names]
    return ArrayDataset(images, digits.target.astype(np.int32), class_names)


def _normalize_size(image_size: ImageSize | None) -> tuple[int, int] | None:
    """Turns an int or (height, width) into (height, width), validating positivity."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size}")
    return int(size[0]), int(size[1])


def _pil_to_array(image: Image.Image, size: tuple[int, int] | None, color_mode: str) -> np.ndarray:
    """Converts a PIL image to float32 [H, W, C] in [0, 1], resized to (h, w) if given."""
    image = image.convert(_COLOR_MODES[color_mode])
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def _check_color_mode(color_mode: str) -> None:
    if color_mode not in _COLOR_MODES:
        raise ValueError(f"color_mode must be one of {sorted(_COLOR_MODES)}, got {color_mode!r}")


def _stack_images(images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Stacks [H, W, C] arrays into [N, H, W, C]; a size mismatch names the offending image."""
    for image, name in zip(images, names, strict=True):
        if image.shape != images[0].shape:
            raise ValueError(
                f"image {name} has shape {image.shape} but {names[0]} has {images[0].shape}; "
                "pass image_size to resize all images"
            )
    return np.stack(images).astype(np.float32)


def load_image_folder(
    root: str | Path, image_size: ImageSize | None = None, color_mode: str = "rgb"
) -> ArrayDataset:
    """Loads `root/<class_name>/<image files>` into float32 [N, H, W, C] images in [0, 1].

    Classes are the sorted subfolder names. `color_mode` is 'rgb' (C=3) or 'grayscale' (C=1);
    `image_size` (int or (height, width)) resizes every image, otherwise all must share a size.
    """
    _check_color_mode(color_mode)
    size = _normalize_size(image_size)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class subfolders")
    extensions = set(Image.registered_extensions())
    images, labels, names = [], [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
        )
        if not files:
            raise ValueError(f"class folder {class_dir} contains no image files")
        for path in files:
            try:
                with Image.open(path) as image:
                    images.append(_pil_to_array(image, size, color_mode))
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"cannot decode image file {path}: {error}") from error
            labels.append(label)
            names.append(str(path))
    return ArrayDataset(
        _stack_images(images, names),
        np.asarray(labels, dtype=np.int32),
        [d.name for d in class_dirs],
    )


def _is_saved_to_disk(path: str) -> bool:
    """True if `path` is a directory written by `Dataset(Dict).save_to_disk`."""
    from datasets import config

    directory = Path(path)
    return (directory / config.DATASET_STATE_JSON_FILENAME).exists() or (
        directory / config.DATASETDICT_JSON_FILENAME
    ).exists()


def _hf_labels(dataset: Any, label_column: str) -> tuple[np.ndarray, list[str]]:
    """Returns int32 [N] labels and class names from a ClassLabel, int or string column."""
    import datasets

    feature = dataset.features[label_column]
    values = dataset[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return np.asarray(values, dtype=np.int32), list(feature.names)
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        if values.size and values.min() < 0:
            raise ValueError(f"label column {label_column!r} has negative labels")
        num_classes = int(values.max()) + 1 if values.size else 0
        return values.astype(np.int32), [str(i) for i in range(num_classes)]
    names, labels = np.unique(values.astype(str), return_inverse=True)
    return labels.astype(np.int32), [str(n) for n in names]


def open_hf_dataset(name_or_path: str, split: str, **kwargs: Any) -> Any:
    """One split of a 🤗 dataset, memory-mapped: a ``save_to_disk`` directory through
    ``load_from_disk``, anything else through ``load_dataset`` (a local builder such as
    'imagefolder' with ``data_dir=``, or a hub name when the network allows)."""
    import datasets

    if _is_saved_to_disk(name_or_path):
        dataset = datasets.load_from_disk(name_or_path, **kwargs)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"split {split!r} not in {name_or_path}; has {list(dataset)}")
            dataset = dataset[split]
        return dataset
    return datasets.load_dataset(name_or_path, split=split, **kwargs)


def load_hf_image_dataset(
    name_or_path: str,
    split: str,
    image_column: str = "image",
    label_column: str = "label",
    *,
    image_size: ImageSize | None = None,
    color_mode: str | None = None,
    **kwargs: Any,
) -> ArrayDataset:
    """Loads a Hugging Face image classification split into float32 [N, H, W, C] in [0, 1].

    `name_or_path` is anything `datasets.load_dataset` accepts (a hub name, or a builder such as
    'imagefolder' with `data_dir=` in kwargs), or a directory written by `save_to_disk` (then
    `datasets.load_from_disk` is used and `split` picks from a DatasetDict). `color_mode` None keeps
    grayscale datasets at C=1 (decided by the first image) and converts others to RGB.
    """

    if color_mode is not None:
        _check_color_mode(color_mode)
    size = _normalize_size(image_size)
    dataset = open_hf_dataset(name_or_path, split, **kwargs)
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} not found; columns are {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {name_or_path} is empty")
    labels, class_names = _hf_labels(dataset, label_column)
    images = []
    for row in dataset.select_columns([image_column]):
        image = row[image_column]
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        if color_mode is None:
            color_mode = "grayscale" if image.mode in ("1", "L", "LA") else "rgb"
        images.append(_pil_to_array(image, size, color_mode))
    names = [f"{name_or_path}[{split}][{i}]" for i in range(len(images))]
    return ArrayDataset(_stack_images(images, names), labels, class_names)


_REGISTRY: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits_dataset,
    "image_folder": load_image_folder,
    "hf_image": load_hf_image_dataset,
}


def image_dataset_names() -> list[str]:
    """Names ``get_dataset`` accepts."""
    return sorted(_REGISTRY)


def get_dataset(name: str, **kwargs: Any) -> ArrayDataset:
    """Builds a registered dataset by name ('digits', 'image_folder', 'hf_image')."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
