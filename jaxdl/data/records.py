"""Record sources and split bundles: the data interface every task and loader works with.

A *record source* is what grain calls a random-access data source: ``len(source)`` and
``source[i]`` returning one example as a dict of NumPy arrays (``{"inputs": float32 [H, W, C],
"labels": int32 []}``, ``{"tokens": int32 [T], "labels": int32 []}``, ...). Records are read one
at a time, so a source can be an in-memory array, a memory-mapped Arrow table or a folder of files
without the loader knowing which. A source's ``repr`` must describe its data, not its object id:
grain compares source reprs when it restores an iterator's state.

``DataSplits`` bundles the train/val/test sources with ``info``: the facts models and tasks need
from the data (``num_classes``, ``class_names``, ``vocab_size``, ``pad_id``,
``unigram_counts``, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np

Record = dict[str, np.ndarray]

SPLIT_NAMES = ("train", "val", "test")


class RecordError(ValueError):
    """One record cannot be read or decoded (a corrupt image, an empty text, a truncated file).

    The message names the record (file path, shard and offset, row); ``data.on_error`` decides
    whether it stops the run or the record is skipped and reported.
    """


@runtime_checkable
class RecordSource(Protocol):
    """A random-access source of example records (grain's ``RandomAccessDataSource``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...


class ArraySource:
    """Records drawn from equal-length in-memory arrays: ``source[i] = {k: arrays[k][i]}``."""

    def __init__(self, **arrays: np.ndarray):
        if not arrays:
            raise ValueError("ArraySource needs at least one array")
        lengths = {name: len(array) for name, array in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource arrays differ in length: {lengths}")
        self.arrays = arrays
        # Class labels, readable without building records (for stratified splits).
        self.labels = arrays.get("labels")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, index: int) -> Record:
        return {name: np.asarray(array[index]) for name, array in self.arrays.items()}

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={array.dtype}{list(array.shape)}" for name, array in self.arrays.items()
        )
        return f"ArraySource({fields})"


@dataclasses.dataclass
class DataSplits:
    """Train, validation and test record sources plus what the model and task need to know.

    ``info`` keys used by jaxdl: ``num_classes`` and ``class_names`` (classification),
    ``vocab_size`` and ``pad_id`` (text), ``unigram_counts`` (int64 [vocab], train-split token
    counts: the language-modelling task's baseline).
    """

    train: RecordSource
    val: RecordSource
    test: RecordSource
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def get(self, name: str) -> RecordSource:
        """The split called ``name`` ('train', 'val' or 'test')."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; choose one of {list(SPLIT_NAMES)}")
        return getattr(self, name)


class ConstantSource:
    """``length`` copies of one record, read lazily: stands in for data that is not at hand when
    only shapes matter (AOT compilation, throughput benchmarks)."""

    def __init__(self, record: Record, length: int):
        self.record, self.length = record, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Record:
        return self.record

    def __repr__(self) -> str:
        shapes = {name: tuple(np.shape(value)) for name, value in self.record.items()}
        return f"ConstantSource(length={self.length}, shapes={shapes})"


def constant_image_splits(
    input_shape: tuple[int, ...], num_classes: int, length: int = 1_000_000
) -> DataSplits:
    """Zero images of ``input_shape`` with label 0 in every split: an image-classification
    batch layout without loading a dataset."""
    record = {"inputs": np.zeros(input_shape, np.float32), "labels": np.zeros((), np.int32)}
    source = ConstantSource(record, length)
    info = {"num_classes": int(num_classes), "input_shape": tuple(input_shape)}
    return DataSplits(source, source, source, info=info)
