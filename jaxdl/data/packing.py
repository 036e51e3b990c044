"""Packing variable-length documents into fixed-length language-model rows.

Training packs on the fly in the grain pipeline (``pack_documents``); evaluation packs each
split once, in order, into ``PackedRows`` so every process reads the same rows by index.
Rows hold ``tokens`` [L], ``segment_ids`` [L] (1, 2, ... per packed sequence, 0 on padding),
``positions`` [L] (restarting at 0 for each sequence) and ``loss_mask`` [L].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grain
import numpy as np

from jaxdl.data.records import Record, RecordError, RecordSource

PACKED_FIELDS = ("segment_ids", "positions")


def is_packed(spec: Mapping[str, Any] | None) -> bool:
    """True when the spec asks for packed sequences (``tokens`` with segment ids/positions)."""
    return spec is not None and all(name in spec for name in PACKED_FIELDS)


class _PackedFields(grain.transforms.Map):
    """Names grain's packing outputs as the task expects: ``segment_ids`` and ``positions``
    (0 on padding) and ``loss_mask`` (1 on real tokens)."""

    def map(self, row: Record) -> Record:
        segment_ids = row["tokens_segment_ids"].astype(np.int32)
        return {
            "tokens": row["tokens"].astype(np.int32),
            "segment_ids": segment_ids,
            "positions": row["tokens_positions"].astype(np.int32),
            "loss_mask": (segment_ids > 0).astype(np.float32),
        }


def pack_documents(documents: grain.IterDataset, row_length: int) -> grain.IterDataset:
    """Packs variable-length ``{"tokens": int32 [L]}`` documents into rows of ``row_length``.

    grain's concat-then-split packer fills every row: a document longer than the room left
    continues in the next row as a new segment (positions restart at 0). Each segment is one
    sequence to the model: attention stays inside it and no target crosses into the next one.
    """
    packed = grain.experimental.ConcatThenSplitIterDataset(
        documents, length_struct={"tokens": int(row_length)}
    )
    return packed.map(_PackedFields())


def _readable_documents(documents: RecordSource, skip_errors: bool) -> Iterator[Record]:
    for index in range(len(documents)):
        try:
            yield {"tokens": np.asarray(documents[index]["tokens"], np.int32)}
        except RecordError:
            if not skip_errors:
                raise


class PackedRows:
    """All documents of a (validation or test) split, in order, packed once into rows of
    ``row_length``: a random-access source every process reads alike."""

    def __init__(self, documents: RecordSource, row_length: int, skip_errors: bool = False):
        stream = grain.MapDataset.source(
            list(_readable_documents(documents, skip_errors))
        ).to_iter_dataset()
        rows = list(pack_documents(stream, row_length))
        if not rows:
            raise RecordError(f"no readable document in {documents!r}")
        self.arrays = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
        self.row_length, self.source_repr = int(row_length), repr(documents)

    def __len__(self) -> int:
        return len(self.arrays["tokens"])

    def __getitem__(self, index: int) -> Record:
        return {name: array[index] for name, array in self.arrays.items()}

    def __repr__(self) -> str:
        return f"PackedRows({self.source_repr}, rows={len(self)}, row_length={self.row_length})"


def sample_unigram_counts(
    documents: RecordSource,
    sample: Callable[[RecordSource], Iterator[Record]],
    vocab_size: int,
) -> tuple[np.ndarray, float]:
    """Token counts int64 [vocab_size] over the sampled documents (the LM task's unigram
    baseline) and their mean length in tokens."""
    counts = np.zeros(vocab_size, np.int64)
    lengths = []
    for record in sample(documents):
        tokens = np.asarray(record["tokens"])
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
        lengths.append(len(tokens))
    if not lengths:
        raise RecordError(f"no readable document sampled from {documents!r}")
    return counts, float(np.mean(lengths))


def estimate_rows(num_documents: int, mean_length: float, row_length: int) -> int:
    """Packed rows one pass over ``num_documents`` of ``mean_length`` tokens fills."""
    return max(1, math.ceil(num_documents * mean_length / row_length))
