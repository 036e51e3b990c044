"""Segmentation record sources that decode one image + mask pair at a time.

* ``data.name='mask_folder'``: ``root/images/<stem>.<ext>`` with ``root/masks/<stem>.png`` (the
  same stem); a mask is a single-channel PNG (mode L, P or I) whose pixel values are class ids
  (for a palette PNG, the palette indices, as in Pascal VOC). An optional ``root/classes.txt``
  names the classes, one per line (class id = line number, from 0).
* ``data.name='hf_segmentation'``: a 🤗 ``datasets`` table (``save_to_disk`` directory, or a
  builder/hub name that ``datasets.load_dataset`` opens) with an image column and a mask column
  (an Image feature or a 2-D array of class ids).

Classes come from ``classes.txt`` / ``class_names`` / ``num_classes`` (in that order); with none
of them every mask is read once up front and the classes are 0..max label. ``ignore_index``
(``data.options.ignore_index``, e.g. 255 for Pascal VOC's object borders; None: no such label)
is a mask value outside the classes that masks may hold: it is kept in the labels for the task to
leave out (``task.ignore_index``, which defaults to it) and never counts as a class.
``source[i]`` gives uint8 ``inputs`` [H, W, C] and int32 ``labels`` [H, W] (``image_size``
resizes images bilinearly and masks by the nearest pixel, so labels stay class ids). A record
whose mask is missing, undecodable, of another size than its image, not single-channel or holding
a value outside ``0..num_classes - 1`` other than ``ignore_index`` is a ``RecordError`` naming
the file and the value (stops the run, or is skipped and counted with ``data.on_error='skip'``);
an image without a mask file, or a mask without an image, stops the listing with a
``ValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxdl.data.image_sources import _image_files, check_columns, decode_image
from jaxdl.data.records import Record, RecordError
from jaxdl.data.sources import ImageSize, _check_color_mode, open_hf_dataset
from jaxdl.data.sources import _normalize_size as normalize_size

_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, TypeError)  # what PIL's decoders raise


def decode_mask(image: Image.Image, size: tuple[int, int] | None, name: str) -> np.ndarray:
    """A single-channel PIL mask as int32 class ids [H, W], resized to (h, w) by the nearest
    pixel if given; a multi-channel mask is a ``RecordError`` naming ``name``."""
    if image.mode not in _MASK_MODES:
        raise RecordError(
            f"mask {name} has mode {image.mode!r}; masks must be single-channel (L, P or I) PNGs "
            "whose values are class ids"
        )
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(image).astype(np.int32)


def _array_image(array: np.ndarray) -> Image.Image:
    """An array as a PIL image; 2-D integer arrays (class ids) as mode L (0..255) or I."""
    if array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
        small = array.size and array.min() >= 0 and array.max() < 256
        return Image.fromarray(array.astype(np.uint8 if small else np.int32))
    return Image.fromarray(array)


class _SegmentationSource:
    """What both sources share: class bookkeeping and the per-record checks."""

    size: tuple[int, int] | None
    resizes: bool
    color_mode: str
    num_classes: int
    class_names: list[str]
    ignore_index: int | None = None

    def _image_and_mask(self, index: int) -> tuple[Image.Image, Image.Image]:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        raise NotImplementedError

    def _mask_name(self, index: int) -> str:
        return self.describe(index)

    def _set_ignore_index(self, ignore_index: Any) -> None:
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int | np.integer)
        ):
            raise ValueError(f"ignore_index must be a whole number or None, got {ignore_index!r}")
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def _set_classes(self, class_names: Sequence[str] | None, num_classes: int | None) -> None:
        if class_names is not None:
            self.class_names = [str(c) for c in class_names]
        elif num_classes is not None:
            if int(num_classes) < 2:
                raise ValueError(f"num_classes must be >= 2, got {num_classes}")
            self.class_names = [str(c) for c in range(int(num_classes))]
        else:  # read every mask once: the classes are 0..the largest label
            largest = 0
            for index in range(len(self)):
                labels = self._decoded(index, check_range=False)[1]
                if self.ignore_index is not None:
                    labels = labels[labels != self.ignore_index]
                if labels.size:
                    largest = max(largest, int(labels.max()))
            self.class_names = [str(c) for c in range(max(largest + 1, 2))]
        if len(self.class_names) < 2:
            raise ValueError(f"a segmentation dataset needs >= 2 classes, got {self.class_names}")
        self.num_classes = len(self.class_names)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index {self.ignore_index} is a class id (classes are "
                f"0..{self.num_classes - 1}); pick a label outside them, e.g. 255"
            )

    def _decoded(self, index: int, check_range: bool = True) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self._image_and_mask(index)
        if image.size != mask.size:
            raise RecordError(
                f"mask {self._mask_name(index)} is {mask.size[1]}x{mask.size[0]} but its image "
                f"{self.describe(index)} is {image.size[1]}x{image.size[0]}"
            )
        if not self.resizes and image.size != (self.size[1], self.size[0]):
            raise RecordError(
                f"image {self.describe(index)} is {image.size[1]}x{image.size[0]} but the first "
                f"is {self.size[0]}x{self.size[1]}; set data.options.image_size"
            )
        try:
            pixels = decode_image(image, self.size, self.color_mode)
        except _DECODE_ERRORS as error:
            raise RecordError(f"cannot decode image {self.describe(index)}: {error}") from None
        try:
            labels = decode_mask(mask, self.size, self._mask_name(index))
        except RecordError:
            raise
        except _DECODE_ERRORS as error:
            raise RecordError(f"cannot decode mask {self._mask_name(index)}: {error}") from None
        if check_range:
            outside = (labels < 0) | (labels >= self.num_classes)
            if self.ignore_index is not None:
                outside &= labels != self.ignore_index
            if outside.any():
                bad = int(labels[outside].flat[0])
                hint = (
                    f"; if {bad} marks pixels to ignore, set data.options.ignore_index={bad}"
                    if self.ignore_index is None
                    else f", ignore label {self.ignore_index}"
                )
                raise RecordError(
                    f"mask {self._mask_name(index)} holds class id {bad} outside "
                    f"0..{self.num_classes - 1} ({self.num_classes} classes{hint})"
                )
        return pixels, labels

    def __getitem__(self, index: int) -> Record:
        pixels, labels = self._decoded(index)
        return {"inputs": pixels, "labels": labels}


class MaskFolderSource(_SegmentationSource):
    """``root/images/*`` and ``root/masks/<same stem>.png``, decoded per record (see module)."""

    def __init__(
        self,
        root: str | Path,
        image_size: ImageSize | None = None,
        color_mode: str = "rgb",
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
    ):
        _check_color_mode(color_mode)
        self._set_ignore_index(ignore_index)
        self.root = Path(root)
        self.color_mode = color_mode
        self.size = normalize_size(image_size)
        self.resizes = self.size is not None
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        for directory in (image_dir, mask_dir):
            if not directory.is_dir():
                raise FileNotFoundError(f"mask folder needs {directory}/ (images/ and masks/)")
        extensions = set(Image.registered_extensions())
        images = _image_files(image_dir, extensions)
        if not images:
            raise ValueError(f"{image_dir} contains no image files")
        masks = {p.stem: p for p in _image_files(mask_dir, extensions)}
        stems = [p.stem for p in images]
        if len(set(stems)) != len(stems):
            duplicate = next(s for s in stems if stems.count(s) > 1)
            raise ValueError(f"{image_dir} holds several images named {duplicate!r}.*")
        for path in images:
            if path.stem not in masks:
                raise ValueError(f"image {path} has no mask {mask_dir / path.stem}.png")
        orphans = sorted(set(masks) - set(stems))
        if orphans:
            raise ValueError(f"mask {masks[orphans[0]]} has no image in {image_dir}")
        # NumPy string arrays, not Path lists: cheap to pickle into grain workers.
        self.image_paths = np.asarray([str(p.relative_to(self.root)) for p in images])
        self.mask_paths = np.asarray([str(masks[s].relative_to(self.root)) for s in stems])
        if self.size is None:
            self.size = self._first_size()
        classes_file = self.root / "classes.txt"
        if class_names is None and classes_file.is_file():
            class_names = [
                line.strip() for line in classes_file.read_text().splitlines() if line.strip()
            ]
        self._set_classes(class_names, num_classes)

    def _first_size(self) -> tuple[int, int]:
        try:
            with Image.open(self.root / self.image_paths[0]) as image:
                return image.size[1], image.size[0]
        except _DECODE_ERRORS as error:
            raise RecordError(f"cannot decode image file {self.describe(0)}: {error}") from None

    def _image_and_mask(self, index: int) -> tuple[Image.Image, Image.Image]:
        opened = []
        for path in (self.root / self.image_paths[index], self.root / self.mask_paths[index]):
            try:
                with Image.open(path) as image:
                    image.load()
                    opened.append(image)
            except _DECODE_ERRORS as error:
                raise RecordError(f"cannot decode file {path}: {error}") from None
        return opened[0], opened[1]

    def __len__(self) -> int:
        return len(self.image_paths)

    def describe(self, index: int) -> str:
        return str(self.root / self.image_paths[index])

    def _mask_name(self, index: int) -> str:
        return str(self.root / self.mask_paths[index])

    def __repr__(self) -> str:
        return (
            f"MaskFolderSource(root={str(self.root)!r}, n={len(self)}, size={self.size}, "
            f"classes={self.num_classes}, color_mode={self.color_mode!r})"
        )


class HFSegmentationSource(_SegmentationSource):
    """A 🤗 ``datasets`` table with ``image_column`` and ``mask_column``, decoded per record;
    the Arrow table stays memory-mapped. ``color_mode`` None picks grayscale or RGB from the
    first image."""

    def __init__(
        self,
        name_or_path: str,
        split: str = "train",
        image_column: str = "image",
        mask_column: str = "mask",
        *,
        image_size: ImageSize | None = None,
        color_mode: str | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ):
        self._set_ignore_index(ignore_index)
        if color_mode is not None:
            _check_color_mode(color_mode)
        self.name = f"{name_or_path}[{split}]"
        dataset = open_hf_dataset(name_or_path, split, **kwargs)
        check_columns(dataset, [image_column, mask_column], self.name)
        self.dataset = dataset.select_columns([image_column, mask_column])
        self.image_column, self.mask_column = image_column, mask_column
        self.size = normalize_size(image_size)
        first, _ = self._image_and_mask(0)
        if color_mode is None:
            color_mode = "grayscale" if first.mode in ("1", "L", "LA") else "rgb"
        self.color_mode = color_mode
        self.resizes = self.size is not None
        if self.size is None:
            self.size = first.size[1], first.size[0]
        self._set_classes(class_names, num_classes)

    def _image_and_mask(self, index: int) -> tuple[Image.Image, Image.Image]:
        try:
            row = self.dataset[int(index)]
        except _DECODE_ERRORS as error:
            raise RecordError(f"cannot decode {self.describe(index)}: {error}") from None
        pair = []
        for column in (self.image_column, self.mask_column):
            value = row[column]
            if value is None:
                raise RecordError(f"{self.describe(index)} has no {column!r}")
            if not isinstance(value, Image.Image):
                try:
                    value = _array_image(np.asarray(value))
                except _DECODE_ERRORS as error:
                    raise RecordError(
                        f"cannot read {column!r} of {self.describe(index)}: {error}"
                    ) from None
            pair.append(value)
        return pair[0], pair[1]

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        return f"{self.name} row {index}"

    def _mask_name(self, index: int) -> str:
        return f"{self.mask_column!r} of {self.name} row {index}"

    def __repr__(self) -> str:
        return (
            f"HFSegmentationSource({self.name!r}, n={len(self)}, size={self.size}, "
            f"classes={self.num_classes}, color_mode={self.color_mode!r}, "
            f"fingerprint={self.dataset._fingerprint!r})"
        )
