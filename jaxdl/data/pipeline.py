"""grain input pipelines: an infinite sharded checkpointable train loader, padded eval batches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grain
import numpy as np
from absl import flags

from jaxdl.data.sources import ArrayDataset

Batch = dict[str, np.ndarray]


class _RecordSource:
    """grain random-access source yielding {'inputs': float32 [...], 'labels': int32 []} records.

    `__repr__` describes the data rather than the object id because grain compares source reprs
    when restoring iterator state, so a fresh loader over the same data must match.
    """

    def __init__(self, dataset: ArrayDataset):
        self._inputs = dataset.inputs
        self._labels = dataset.labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Batch:
        return {
            "inputs": np.asarray(self._inputs[index], dtype=np.float32),
            "labels": np.asarray(self._labels[index], dtype=np.int32),
        }

    def __repr__(self) -> str:
        return (
            f"_RecordSource(num_records={len(self)}, input_shape={self._inputs.shape[1:]}, "
            f"input_dtype={self._inputs.dtype})"
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def make_train_loader(
    dataset: ArrayDataset,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
) -> grain.DataLoader:
    """Infinite training loader yielding {'inputs': float32 [B, ...], 'labels': int32 [B]}.

    Every epoch the dataset is reshuffled with `seed` (which must be equal on all processes) and
    process `shard_index` of `shard_count` (normally jax.process_index/process_count) takes
    every `shard_count`-th record, so per epoch the processes see disjoint records. Batches hold
    `batch_size` records (the per-process batch) and run across epoch boundaries. Iterators
    support `get_state()`/`set_state()` for exact resumption.
    """
    _check_positive(batch_size=batch_size, shard_count=shard_count)
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    if len(dataset) < shard_count:
        raise ValueError(f"cannot shard {len(dataset)} examples over {shard_count} processes")
    if worker_count > 0:
        # grain worker processes read absl flags, which fail if never parsed.
        flags.FLAGS.mark_as_parsed()
    # The sampler shuffles the whole dataset (a new permutation each epoch) and the loader hands
    # process i every shard_count-th record of that sequence, so processes draw disjoint records
    # that mix all classes even when the data is stored sorted by class.
    sampler = grain.samplers.IndexSampler(
        num_records=len(dataset),
        shard_options=grain.sharding.NoSharding(),
        shuffle=True,
        num_epochs=None,
        seed=seed,
    )
    return grain.DataLoader(
        data_source=_RecordSource(dataset),
        sampler=sampler,
        operations=[grain.transforms.Batch(batch_size=batch_size, drop_remainder=True)],
        worker_count=worker_count,
        shard_options=grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count),
    )


def iterate_eval_batches(
    dataset: ArrayDataset, *, batch_size: int, shard_index: int = 0, shard_count: int = 1
) -> Iterator[Batch]:
    """Yields {'inputs' [B, ...], 'labels' int32 [B], 'mask' float32 [B]} covering this shard once.

    Example i belongs to shard i % shard_count. Short batches are zero-padded to `batch_size`
    (mask 0 on padding) so jit sees one shape, and every shard yields the same number of
    batches so multi-process collectives stay in step.
    """
    _check_positive(batch_size=batch_size, shard_count=shard_count)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    shard = grain.MapDataset.source(_RecordSource(dataset))[shard_index::shard_count]
    largest_shard = math.ceil(len(dataset) / shard_count)
    num_batches = math.ceil(largest_shard / batch_size)
    # When this shard runs out before the largest one, it pads with all-padding batches.
    empty = {
        "inputs": np.zeros((0, *dataset.inputs.shape[1:]), np.float32),
        "labels": np.zeros((0,), np.int32),
    }
    batches = iter(shard.batch(batch_size, drop_remainder=False))
    for _ in range(num_batches):
        yield _pad_batch(next(batches, empty), batch_size)


def _pad_batch(batch: Batch, batch_size: int) -> Batch:
    """Zero-pads 'inputs'/'labels' [n, ...] to [batch_size, ...] and adds the float32 mask [B]."""
    num_real = len(batch["labels"])
    padding = batch_size - num_real
    padded = {
        key: np.concatenate([value, np.zeros((padding, *value.shape[1:]), value.dtype)])
        for key, value in batch.items()
    }
    padded["mask"] = (np.arange(batch_size) < num_real).astype(np.float32)
    return padded


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Number of full global batches in one pass over `num_examples` (floor, at least 1)."""
    _check_positive(num_examples=num_examples, global_batch_size=global_batch_size)
    return max(1, num_examples // global_batch_size)
