"""Image record sources that decode one record at a time: folders of files and 🤗 datasets tables.

Nothing is decoded when a source is built: a folder source lists file paths and labels (from the
class subfolder names), a 🤗 source keeps the memory-mapped Arrow table. ``source[i]`` decodes,
converts and resizes image ``i`` into uint8 ``inputs`` [H, W, C], so grain worker processes do the
work and host memory does not grow with the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxdl.data.records import Record, RecordError
from jaxdl.data.sources import ImageSize, _check_color_mode, _hf_labels, open_hf_dataset
from jaxdl.data.sources import _normalize_size as normalize_size

_PIL_MODES = {"rgb": "RGB", "grayscale": "L"}


def decode_image(image: Image.Image, size: tuple[int, int] | None, color_mode: str) -> np.ndarray:
    """A PIL image as uint8 [H, W, C] in ``color_mode``, bilinearly resized to (h, w) if given."""
    image = image.convert(_PIL_MODES[color_mode])
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _image_files(directory: Path, extensions: set[str]) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


class ImageFolderSource:
    """``root/<class_name>/<image files>``, decoded per record into uint8 ``inputs`` [H, W, C]
    and int32 ``labels``. Classes are the sorted subfolder names.

    Without ``image_size`` every image must already have the first image's size (checked per
    record: a mismatch is a ``RecordError`` naming the file).
    """

    def __init__(
        self, root: str | Path, image_size: ImageSize | None = None, color_mode: str = "rgb"
    ):
        _check_color_mode(color_mode)
        self.root = Path(root)
        self.color_mode = color_mode
        self.size = normalize_size(image_size)
        self.resizes = self.size is not None
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        class_dirs = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not class_dirs:
            raise ValueError(f"image folder {self.root} has no class subfolders")
        extensions = set(Image.registered_extensions())
        paths, labels = [], []
        for label, class_dir in enumerate(class_dirs):
            files = _image_files(class_dir, extensions)
            if not files:
                raise ValueError(f"class folder {class_dir} contains no image files")
            paths += [str(p.relative_to(self.root)) for p in files]
            labels += [label] * len(files)
        # One NumPy string array, not a list of Path objects: cheap to pickle into workers.
        self.paths = np.asarray(paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.class_names = [d.name for d in class_dirs]
        if self.size is None:
            self.size = self._first_image_size()

    def _first_image_size(self) -> tuple[int, int]:
        try:
            with Image.open(self.root / self.paths[0]) as image:
                return image.size[1], image.size[0]
        except OSError as error:
            raise RecordError(f"cannot decode image file {self.describe(0)}: {error}") from None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Record:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                if not self.resizes and image.size != (self.size[1], self.size[0]):
                    raise RecordError(
                        f"image file {path} is {image.size[1]}x{image.size[0]} but the folder's "
                        f"images are {self.size[0]}x{self.size[1]}; set data.options.image_size"
                    )
                pixels = decode_image(image, self.size, self.color_mode)
        except RecordError:
            raise
        except (OSError, ValueError, SyntaxError) as error:  # PIL's decoders raise all three
            raise RecordError(f"cannot decode image file {path}: {error}") from None
        return {"inputs": pixels, "labels": self.labels[index]}

    def describe(self, index: int) -> str:
        return str(self.root / self.paths[index])

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource(root={str(self.root)!r}, n={len(self)}, size={self.size}, "
            f"color_mode={self.color_mode!r})"
        )


def check_columns(dataset: Any, columns: list[str], name: str) -> None:
    """Raises a ``ValueError`` naming a missing column or an empty table."""
    for column in columns:
        if column not in dataset.column_names:
            raise ValueError(
                f"column {column!r} not found in {name}; columns are {dataset.column_names}"
            )
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty")


class HFImageSource:
    """An image-classification table of 🤗 ``datasets``, decoded per record into uint8
    ``inputs`` [H, W, C] and int32 ``labels``.

    The Arrow table stays memory-mapped (only the label column is read up front, for stratified
    splits). ``color_mode`` None picks grayscale or RGB from the first image.
    """

    def __init__(
        self,
        name_or_path: str,
        split: str = "train",
        image_column: str = "image",
        label_column: str = "label",
        *,
        image_size: ImageSize | None = None,
        color_mode: str | None = None,
        **kwargs: Any,
    ):
        if color_mode is not None:
            _check_color_mode(color_mode)
        self.name = f"{name_or_path}[{split}]"
        dataset = open_hf_dataset(name_or_path, split, **kwargs)
        check_columns(dataset, [image_column, label_column], self.name)
        self.labels, self.class_names = _hf_labels(dataset, label_column)
        self.dataset = dataset.select_columns([image_column])
        self.image_column = image_column
        self.size = normalize_size(image_size)
        first = self._pil_image(0)
        if color_mode is None:
            color_mode = "grayscale" if first.mode in ("1", "L", "LA") else "rgb"
        self.color_mode = color_mode
        if self.size is None:
            self.size = first.size[1], first.size[0]
            self.resizes = False
        else:
            self.resizes = True

    def _pil_image(self, index: int) -> Image.Image:
        try:
            image = self.dataset[int(index)][self.image_column]
            return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        except (OSError, ValueError, SyntaxError, TypeError) as error:
            raise RecordError(f"cannot decode image {self.describe(index)}: {error}") from None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Record:
        image = self._pil_image(index)
        if not self.resizes and image.size != (self.size[1], self.size[0]):
            raise RecordError(
                f"image {self.describe(index)} is {image.size[1]}x{image.size[0]} but the first "
                f"is {self.size[0]}x{self.size[1]}; set data.options.image_size"
            )
        try:
            pixels = decode_image(image, self.size, self.color_mode)
        except (OSError, ValueError) as error:
            raise RecordError(f"cannot decode image {self.describe(index)}: {error}") from None
        return {"inputs": pixels, "labels": self.labels[index]}

    def describe(self, index: int) -> str:
        return f"{self.name} row {index}"

    def __repr__(self) -> str:
        return (
            f"HFImageSource({self.name!r}, n={len(self)}, size={self.size}, "
            f"color_mode={self.color_mode!r}, fingerprint={self.dataset._fingerprint!r})"
        )
