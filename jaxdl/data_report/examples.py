"""What the data report reads from each split: class labels, a digest of every example, the form
near-duplicate search compares (normalised text, image thumbnails), and unreadable records.

Examples are read once, through the loader's own sources: images as their stored pixels (before
standardisation), texts as the loader's cleaned texts (``info["texts"]``) or the raw ``text``
field under the tokenizer, anything else (language-model token rows, audio) as its arrays. A
record that raises ``RecordError`` is listed with the loader's own name for it (file path, shard
and offset, row) instead of stopping the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from jaxdl.data.loading import load_data
from jaxdl.data.records import SPLIT_NAMES, DataSplits, Record, RecordError, RecordSource
from jaxdl.data.text_cleaning import normalize_text
from jaxdl.data.text_sources import TokenizedText, record_text
from jaxdl.data.views import StandardizedImages, describe_record, source_labels

TEXT, IMAGE, ARRAY = "text", "image", "array"
# Images are compared as THUMBNAIL x THUMBNAIL grayscale thumbnails.
THUMBNAIL = 16
# Options that reshape the train split for training only; the report reads the splits without.
TRAINING_OPTIONS = ("cv_folds", "cv_fold", "imbalance", "oversample")


@dataclasses.dataclass
class SplitContent:
    """One split as the report sees it.

    ``digests[i]``: 16-byte BLAKE2b digest of example i (None when unreadable); ``labels``:
    int64 [N] class ids (-1 when unknown) or None without class labels; ``texts``: normalised
    texts (text data); ``thumbnails``: float32 [N, THUMBNAIL**2] zero-mean unit-norm grayscale
    thumbnails (images; zero rows for unreadable or constant images); ``unreadable``: one
    ``{"index", "record", "error"}`` per record that raised ``RecordError``; ``source``: what the
    examples were read from (raw pixels for images).
    """

    name: str
    kind: str
    source: RecordSource
    digests: list[bytes | None]
    labels: np.ndarray | None
    texts: list[str] | None = None
    thumbnails: np.ndarray | None = None
    unreadable: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.digests)


def load_report_splits(config: ml_collections.ConfigDict) -> tuple[DataSplits, dict[str, Any]]:
    """The experiment's train/val/test splits through ``load_data``, without the options that
    reshape the train split for training (``TRAINING_OPTIONS``, returned with their values) and
    with ``data.on_error='skip'`` so that statistics skip unreadable records instead of stopping
    on the first (the report lists them all)."""
    data = config.data.to_dict()
    ignored = {key: data.pop(key) for key in TRAINING_OPTIONS if data.get(key) is not None}
    data["on_error"] = "skip"
    return load_data(ml_collections.ConfigDict(data)), ignored


def digest_text(text: str) -> bytes:
    return hashlib.blake2b(b"text\0" + text.encode("utf-8"), digest_size=16).digest()


def digest_arrays(record: Record, fields: list[str]) -> bytes:
    """Digest of ``fields`` of ``record``: their names, dtypes, shapes and bytes."""
    hasher = hashlib.blake2b(b"array\0", digest_size=16)
    for name in fields:
        array = np.ascontiguousarray(np.asarray(record[name]))
        hasher.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        hasher.update(array.tobytes())
    return hasher.digest()


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """float32 [THUMBNAIL**2]: the image's channel mean, bilinearly resized, centred and scaled
    to unit norm (zeros for a constant image), so a dot product is a cosine similarity that
    ignores brightness and contrast."""
    gray = np.asarray(pixels, np.float32)
    gray = gray.mean(-1) if gray.ndim == 3 else gray
    if gray.shape != (THUMBNAIL, THUMBNAIL):
        resized = Image.fromarray(gray, mode="F").resize(
            (THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR
        )
        gray = np.asarray(resized, np.float32)
    flat = gray.reshape(-1) - gray.mean()
    norm = float(np.linalg.norm(flat))
    # Relative to the pixel scale: a constant image leaves float rounding noise, not a pattern.
    if norm <= 1e-6 * max(1.0, float(np.abs(gray).max())):
        return np.zeros_like(flat)
    return flat / norm


def _has_class_labels(info: dict[str, Any]) -> bool:
    return bool(info.get("class_names") or info.get("num_classes"))


def _kind(record: Record) -> str:
    inputs = record.get("inputs")
    return IMAGE if inputs is not None and np.ndim(inputs) == 3 else ARRAY


def read_split(name: str, split: RecordSource, info: dict[str, Any]) -> SplitContent:
    """Reads every example of ``split`` once (see the module docs)."""
    cleaned = (info.get("texts") or {}).get(name)
    cleaned = cleaned if cleaned is not None and len(cleaned) == len(split) else None
    raw_text = isinstance(split, TokenizedText)
    reader = split.source if isinstance(split, StandardizedImages) else split
    kind = TEXT if cleaned is not None or raw_text else None
    known = source_labels(split)
    labels = np.full(len(split), -1, np.int64)
    if known is not None:
        labels[:] = known
    digests: list[bytes | None] = []
    texts: list[str] = []
    thumbnails: list[np.ndarray | None] = []
    unreadable: list[dict[str, Any]] = []
    for index in range(len(split)):
        try:
            record = reader[index]
            if cleaned is not None:
                texts.append(normalize_text(cleaned[index]))
            elif raw_text:
                texts.append(normalize_text(record_text(split.source[index])))
        except RecordError as error:
            message = str(error).splitlines()[0]
            record_name = describe_record(reader, index)
            unreadable.append({"index": index, "record": record_name, "error": message})
            digests.append(None)
            texts.append("")
            thumbnails.append(None)
            continue
        if known is None and np.ndim(record.get("labels", ())) == 0:
            labels[index] = int(np.asarray(record["labels"]))
        kind = kind or _kind(record)
        if kind == TEXT:
            digests.append(digest_text(texts[-1]))
        elif kind == IMAGE:
            digests.append(digest_arrays(record, ["inputs"]))
            thumbnails.append(thumbnail(record["inputs"]))
        else:
            digests.append(digest_arrays(record, sorted(set(record) - {"labels"})))
    kind = kind or ARRAY
    has_labels = _has_class_labels(info) and (known is not None or bool((labels >= 0).any()))
    content = SplitContent(
        name, kind, reader, digests, labels if has_labels else None, unreadable=unreadable
    )
    if kind == TEXT:
        content.texts = texts
    if kind == IMAGE:
        blank = np.zeros(THUMBNAIL * THUMBNAIL, np.float32)
        content.thumbnails = np.stack([blank if t is None else t for t in thumbnails] or [blank])
        content.thumbnails = content.thumbnails[: len(digests)]
    return content


def read_splits(data: DataSplits) -> list[SplitContent]:
    """``read_split`` of train, val and test."""
    return [read_split(name, data.get(name), data.info) for name in SPLIT_NAMES]
