"""grain input pipelines over record sources: an infinite sharded checkpointable train loader and
padded, masked evaluation batches.

Both read any random-access record source (``jaxdl.data.records``) one record at a time and keep
the fields the task's batch spec names, cast to the spec's dtypes (token ids stay integers), so
the same loaders feed images, token sequences and language-model windows.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np
from absl import flags

from jaxdl.data.length_buckets import BucketPlan, bucket_bounds
from jaxdl.data.packing import is_packed, pack_documents
from jaxdl.data.records import ArraySource, Record, RecordSource
from jaxdl.data.sources import ArrayDataset

Batch = dict[str, np.ndarray]
logger = logging.getLogger("jaxdl")

# The batch of an ``ArrayDataset`` (images and class labels) when no spec is given.
IMAGE_FIELDS = {"inputs": np.float32, "labels": np.int32}


def _field_dtype(field: Any) -> np.dtype:
    """A spec entry is a dtype or a ``jaxdl.tasks.Field`` (anything with ``.dtype``)."""
    if isinstance(field, type | str | np.dtype):
        return np.dtype(field)
    return np.dtype(field.dtype)


def _field_shape(field: Any) -> tuple[int, ...] | None:
    """A ``Field``'s per-example shape; None for a bare dtype."""
    return None if isinstance(field, type | str | np.dtype) else tuple(field.shape)


def _pad_value(field: Any) -> Any:
    return getattr(field, "pad_value", 0)


def as_source(data: ArrayDataset | RecordSource) -> RecordSource:
    """An ``ArrayDataset`` as a record source of ``{'inputs', 'labels'}``; sources pass through."""
    if isinstance(data, ArrayDataset):
        return ArraySource(inputs=data.inputs, labels=data.labels)
    return data


class _SelectFields(grain.transforms.Map):
    """Keeps the spec's fields of a record, cast to the spec's dtypes (``None``, a skipped
    record, passes through for grain to drop)."""

    def __init__(self, spec: Mapping[str, Any]):
        self._dtypes = {name: _field_dtype(field) for name, field in spec.items()}

    def map(self, record: Record | None) -> Record | None:
        if record is None:
            return None
        return {name: np.asarray(record[name], dtype) for name, dtype in self._dtypes.items()}


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def make_train_loader(
    data: ArrayDataset | RecordSource,
    *,
    batch_size: int,
    seed: int,
    spec: Mapping[str, Any] | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    read_threads: int = 8,
    length_buckets: int = 0,
) -> grain.IterDataset:
    """Infinite training pipeline yielding batches of the ``spec`` fields ([B, ...] each).

    Process ``shard_index`` of ``shard_count`` (normally jax.process_index/process_count) reads
    records ``shard_index::shard_count``, so processes read disjoint records and no process
    reads the whole dataset. Each epoch reshuffles that shard (``seed``, equal on all
    processes). Records are read and decoded per record by ``read_threads`` threads, or in
    ``worker_count`` grain worker processes when positive. When the spec is packed
    (``is_packed``), records are variable-length documents packed into rows. Batches hold
    ``batch_size`` records (the per-process batch) and run across epoch boundaries. Iterators
    support ``get_state()``/``set_state()`` for exact resumption (the trainer checkpoints them).
    ``spec`` defaults to ``IMAGE_FIELDS`` for an ``ArrayDataset``.

    ``length_buckets`` > 0 groups examples of similar length (see ``_bucketed_batches``): the
    spec's variable-length field (a ``Field`` with ``length_field``) is cut to the smallest of
    that many bounds holding the batch's longest example.
    """
    _check_positive(batch_size=batch_size, shard_count=shard_count, read_threads=read_threads)
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    source = as_source(data)
    if len(source) < shard_count:
        raise ValueError(f"cannot shard {len(source)} examples over {shard_count} processes")
    if spec is None and isinstance(data, ArrayDataset):
        spec = IMAGE_FIELDS
    if length_buckets > 0:
        batches = _bucketed_batches(
            source, spec, length_buckets, batch_size, seed, shard_index, shard_count, read_threads
        )
        return _with_workers(batches, worker_count)
    records = grain.MapDataset.source(source)[shard_index::shard_count]
    records = records.shuffle(seed=seed).repeat(None)
    packed = is_packed(spec)
    if packed:
        records = records.map(_SelectFields({"tokens": np.int32}))
    elif spec is not None:
        records = records.map(_SelectFields(spec))
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * batch_size)
    examples = records.to_iter_dataset(read)
    if packed:
        examples = pack_documents(examples, spec["tokens"].shape[0])
    return _with_workers(examples.batch(batch_size, drop_remainder=True), worker_count)


def _with_workers(batches: grain.IterDataset, worker_count: int) -> grain.IterDataset:
    """``batches`` produced in ``worker_count`` grain worker processes (0: in this one)."""
    if worker_count > 0:
        # grain worker processes read absl flags, which fail if never parsed.
        flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2)
        batches = batches.mp_prefetch(options)
    return batches


def _bucketed_batches(
    source: RecordSource,
    spec: Mapping[str, Any] | None,
    num_buckets: int,
    batch_size: int,
    seed: int,
    shard_index: int,
    shard_count: int,
    read_threads: int,
) -> grain.IterDataset:
    """Batches whose examples come from one length bucket (a ``BucketPlan`` over the whole
    source, from ``source.example_lengths()``): each global batch is split across processes, so
    every process's part has the same bucket, and hence the same shape."""
    varlen = {
        name: field.length_field
        for name, field in (spec or {}).items()
        if getattr(field, "length_field", None)
    }
    if len(varlen) != 1:
        raise ValueError(
            "data.length_buckets needs a batch spec with exactly one variable-length field "
            f"(a Field with length_field); got {sorted(varlen) or 'none'}"
        )
    lengths_of = getattr(source, "example_lengths", None)
    if lengths_of is None:
        raise ValueError(
            f"data.length_buckets: {type(source).__name__} does not know its examples' lengths "
            "(example_lengths)"
        )
    ((field_name, length_name),) = varlen.items()
    lengths = np.asarray(lengths_of())
    size = _field_shape(spec[field_name])[0]
    # The last bound is the longest example, not the field's size (often set by the longest of
    # every split); an example read longer than its header said gets the full size.
    bounds = bucket_bounds(lengths, num_buckets, int(min(size, max(lengths.max(), 1))))
    plan = BucketPlan(lengths, bounds, batch_size * shard_count, seed)
    read = _ReadBucketedBatch(
        source, plan, spec, field_name, length_name, batch_size, shard_index, shard_count
    )
    batches = grain.MapDataset.range(0, sys.maxsize).map(read)  # an index per global batch
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads)
    return batches.to_iter_dataset(options)


class _ReadBucketedBatch(grain.transforms.Map):
    """Global batch index -> this process's part of it: its records read, the spec's fields
    kept, the variable-length field cut to the global batch's bound (so every process's part
    has one shape). An unreadable record (``None``) is replaced by the next spare of its bucket.
    A record longer than its reported length allows is never cut: alone, the batch takes the
    field's full size; with several processes (whose shapes must agree) it is replaced by a
    spare, with one warning."""

    def __init__(self, source, plan, spec, field_name, length_name, batch_size, index, count):
        self.source, self.plan, self.select = source, plan, _SelectFields(spec)
        self.field_name, self.length_name = field_name, length_name
        self.part = slice(index * batch_size, (index + 1) * batch_size)
        self.index, self.count = index, count

    def map(self, batch_index: int) -> Batch:
        indices, spares, width = self.plan.batch(batch_index)
        spare_indices = iter(spares[self.index :: self.count])
        records = []
        for index in indices[self.part]:
            record = self._read(int(index), width)
            while record is None:
                spare = next(spare_indices, None)
                if spare is None:
                    raise ValueError(
                        f"train batch {batch_index}: its records and every spare of their "
                        "length bucket are unreadable"
                    )
                record = self._read(int(spare), width)
            records.append(record)
        if max(int(r[self.length_name]) for r in records) > width:
            width = None  # one process only: the full size
        batch = {name: np.stack([r[name] for r in records]) for name in records[0]}
        batch[self.field_name] = batch[self.field_name][:, :width]
        return batch

    def _read(self, index: int, width: int) -> Record | None:
        record = self.source[index]
        if record is None:
            return None
        record = self.select.map(record)
        if self.count > 1 and int(record[self.length_name]) > width:
            if not _LONGER_THAN_REPORTED:
                _LONGER_THAN_REPORTED.add(index)
                logger.warning(
                    "length bucketing: record %d is longer (%d) than its reported length "
                    "allows (%d); such records are replaced in multi-process runs (said once)",
                    index,
                    int(record[self.length_name]),
                    width,
                )
            return None
        return record


# The first record read longer than reported in this process (the warning is said once).
_LONGER_THAN_REPORTED: set[int] = set()


def iterate_eval_batches(
    data: ArrayDataset | RecordSource,
    *,
    batch_size: int,
    spec: Mapping[str, Any] | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    read_threads: int = 8,
) -> Iterator[Batch]:
    """Yields the spec's fields [B, ...] plus ``mask`` float32 [B], covering this shard once.

    Example i belongs to shard i % shard_count; ``read_threads`` threads read and decode
    records. Records a guarded source skips (``None``) are left out. Short batches are padded
    to ``batch_size`` with each field's pad value (mask 0 on padding) so jit sees one shape, and
    every shard yields the same number of batches so multi-process collectives stay in step.
    """
    _check_positive(batch_size=batch_size, shard_count=shard_count)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    source = as_source(data)
    if spec is None:
        spec = IMAGE_FIELDS if isinstance(data, ArrayDataset) else _spec_of(source[0])
    select = _SelectFields(spec)
    shard = grain.MapDataset.source(source)[shard_index::shard_count].map(select)
    largest_shard = math.ceil(len(source) / shard_count)
    num_batches = math.ceil(largest_shard / batch_size)
    # When this shard runs out before the largest one (or skipped unreadable records), it
    # pads with all-padding batches.
    empty = _empty_batch(spec, source, select)
    pad_values = {name: _pad_value(field) for name, field in spec.items()}
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size)
    batches = iter(shard.to_iter_dataset(read).batch(batch_size, drop_remainder=False))
    for _ in range(num_batches):
        yield _pad_batch(next(batches, empty), batch_size, pad_values)


def _empty_batch(spec: Mapping[str, Any], source: RecordSource, select: _SelectFields) -> Batch:
    """Zero-length arrays of each field: shapes from the spec's ``Field``s, else a record."""
    shapes = {name: _field_shape(field) for name, field in spec.items()}
    if any(shape is None for shape in shapes.values()):
        example = next(r for r in map(select.map, _readable(source)) if r is not None)
        shapes = {name: value.shape for name, value in example.items()}
    return {name: np.zeros((0, *shapes[name]), _field_dtype(field)) for name, field in spec.items()}


def _readable(source: RecordSource) -> Iterator[Record | None]:
    for index in range(len(source)):
        yield source[index]


def _spec_of(record: Record) -> dict[str, np.dtype]:
    return {name: np.asarray(value).dtype for name, value in record.items()}


def _pad_batch(batch: Batch, batch_size: int, pad_values: Mapping[str, Any]) -> Batch:
    """Pads every field [n, ...] to [batch_size, ...] with its pad value; adds ``mask`` [B]."""
    num_real = len(next(iter(batch.values())))
    padding = batch_size - num_real
    padded = {
        key: np.concatenate(
            [value, np.full((padding, *value.shape[1:]), pad_values.get(key, 0), value.dtype)]
        )
        for key, value in batch.items()
    }
    padded["mask"] = (np.arange(batch_size) < num_real).astype(np.float32)
    return padded


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Number of full global batches in one pass over ``num_examples`` (floor, at least 1)."""
    _check_positive(num_examples=num_examples, global_batch_size=global_batch_size)
    return max(1, num_examples // global_batch_size)
