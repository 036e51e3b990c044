"""Views over record sources: index subsets (splits) and per-record image standardisation.

Both wrap a source without reading it, so a split of a folder or an ArrayRecord file stays a
lazy, per-record view that grain workers decode; statistics come from a bounded, seeded sample.
"""

from __future__ import annotations

import numpy as np

from jaxdl.data.records import Record, RecordError, RecordSource


def source_labels(source: RecordSource) -> np.ndarray | None:
    """The int32 [N] class labels of ``source`` when it knows them without decoding records."""
    labels = getattr(source, "labels", None)
    return None if labels is None else np.asarray(labels)


def describe_record(source: RecordSource, index: int) -> str:
    """Where record ``index`` comes from (a file path, a shard and offset, ...)."""
    describe = getattr(source, "describe", None)
    return describe(index) if describe is not None else f"record {index} of {source!r}"


class SubsetSource:
    """Records ``indices`` of ``source``: ``view[i] = source[indices[i]]`` (a split)."""

    def __init__(self, source: RecordSource, indices: np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise IndexError(f"subset indices out of range for {len(source)} records")
        labels = source_labels(source)
        self.labels = None if labels is None else labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        return self.source[int(self.indices[index])]

    def describe(self, index: int) -> str:
        return describe_record(self.source, int(self.indices[index]))

    def __repr__(self) -> str:
        digest = int(np.bitwise_xor.reduce(self.indices * 2654435761 % 2**31)) if len(self) else 0
        return f"SubsetSource({self.source!r}, n={len(self)}, digest={digest})"


class ConcatenatedSource:
    """The records of several sources one after another (cross-validation pools train + val)."""

    def __init__(self, sources: list[RecordSource]):
        self.sources = list(sources)
        self.offsets = np.cumsum([0, *(len(s) for s in self.sources)])
        labels = [source_labels(s) for s in self.sources]
        self.labels = None if any(x is None for x in labels) else np.concatenate(labels)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[RecordSource, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[part], index - int(self.offsets[part])

    def __getitem__(self, index: int) -> Record:
        source, local = self._locate(int(index))
        return source[local]

    def describe(self, index: int) -> str:
        source, local = self._locate(int(index))
        return describe_record(source, local)

    def __repr__(self) -> str:
        return f"ConcatenatedSource({self.sources!r})"


def pixel_scale(dtype: np.dtype) -> float:
    """The factor that maps stored pixels into [0, 1]: 1/255 for uint8, 1 for floats."""
    return 1.0 / 255.0 if np.dtype(dtype) == np.uint8 else 1.0


class StandardizedImages:
    """``inputs`` as float32 ``(pixels * scale - mean) / std`` per channel, other fields as stored.

    Runs per record, so in grain's worker processes when the loader has workers.
    """

    def __init__(self, source: RecordSource, mean: np.ndarray, std: np.ndarray):
        self.source = source
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.labels = source_labels(source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Record:
        record = dict(self.source[index])
        pixels = np.asarray(record["inputs"])
        scaled = pixels.astype(np.float32) * np.float32(pixel_scale(pixels.dtype))
        record["inputs"] = ((scaled - self.mean) / self.std).astype(np.float32)
        return record

    def describe(self, index: int) -> str:
        return describe_record(self.source, index)

    def __repr__(self) -> str:
        return (
            f"StandardizedImages({self.source!r}, mean={self.mean.round(6).tolist()}, "
            f"std={self.std.round(6).tolist()})"
        )


def sample_channel_stats(
    source: RecordSource, max_records: int, seed: int, skip_errors: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std float32 [C] of ``inputs`` (scaled to [0, 1]) over at most
    ``max_records`` records drawn without replacement with ``seed`` (all records, in order, when
    the source is no larger). Memory stays bounded by the sample, never by the dataset."""
    count = len(source)
    if count <= max_records:
        indices = np.arange(count)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(count, max_records, replace=False))
    total = total_sq = None
    pixels_seen = 0
    for index in indices:
        try:
            pixels = np.asarray(source[int(index)]["inputs"])
        except RecordError:
            if not skip_errors:
                raise
            continue
        values = pixels.astype(np.float64) * pixel_scale(pixels.dtype)
        values = values.reshape(-1, values.shape[-1])
        total = values.sum(0) if total is None else total + values.sum(0)
        squares = (values**2).sum(0)
        total_sq = squares if total_sq is None else total_sq + squares
        pixels_seen += len(values)
    if not pixels_seen:
        raise RecordError(f"no readable record among the {len(indices)} sampled for statistics")
    mean = total / pixels_seen
    std = np.sqrt(np.maximum(total_sq / pixels_seen - mean**2, 0.0))
    # A constant channel keeps std 1 (as ``per_channel_stats``), so standardising stays finite.
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)
