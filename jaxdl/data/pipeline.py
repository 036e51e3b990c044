"""grain input pipelines over record sources: an infinite sharded checkpointable train loader and
padded, masked evaluation batches.

Both read any random-access record source (``jaxdl.data.records``) one record at a time and keep
the fields the task's batch spec names, cast to the spec's dtypes (token ids stay integers), so
the same loaders feed images, token sequences and language-model windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np
from absl import flags

from jaxdl.data.packing import is_packed, pack_documents
from jaxdl.data.records import ArraySource, Record, RecordSource
from jaxdl.data.sources import ArrayDataset

Batch = dict[str, np.ndarray]

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
    """
    _check_positive(batch_size=batch_size, shard_count=shard_count, read_threads=read_threads)
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    source = as_source(data)
    if len(source) < shard_count:
        raise ValueError(f"cannot shard {len(source)} examples over {shard_count} processes")
    if spec is None and isinstance(data, ArrayDataset):
        spec = IMAGE_FIELDS
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
    batches = examples.batch(batch_size, drop_remainder=True)
    if worker_count > 0:
        # grain worker processes read absl flags, which fail if never parsed.
        flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2)
        batches = batches.mp_prefetch(options)
    return batches


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
