"""Length bucketing: batches of similar-length token sequences, padded to their bucket's bound.

Padding every review to ``max_len`` spends most of the compute on padding (the median review is
a fraction of the longest). Bucketing keeps the shapes to a few bounds (one compilation each
under ``jit``) and the padding small. Written here because grain has no bucketing transform
(0.2.18), and the logic is a sort and a split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxdl.errors import DataError


def bucket_bounds(lengths: Sequence[int], num_buckets: int, max_len: int) -> tuple[int, ...]:
    """Increasing bounds at evenly spaced quantiles of ``lengths`` (the training split's), the
    last one ``max_len``; longer sequences are truncated to ``max_len``."""
    if num_buckets < 1 or max_len < 1:
        raise DataError(f"num_buckets and max_len must be >= 1, got {num_buckets}, {max_len}")
    quantiles = np.quantile(np.asarray(lengths), np.arange(1, num_buckets) / num_buckets)
    inner = np.clip(np.ceil(quantiles).astype(int), 1, max_len - 1) if len(lengths) else []
    return tuple(sorted({*(int(q) for q in inner), int(max_len)}))


def bucket_of(length: int, bounds: Sequence[int]) -> int:
    """Index of the smallest bound that holds ``length`` (the last bucket for longer ones)."""
    return min(int(np.searchsorted(bounds, length)), len(bounds) - 1)


def pad_batch(sequences: Sequence[np.ndarray], bounds: Sequence[int], pad_id: int) -> np.ndarray:
    """int32 [batch, bound]: each sequence truncated to the last bound and right-padded with
    ``pad_id`` to the smallest bound that holds the longest one."""
    width = bounds[bucket_of(max(len(s) for s in sequences), bounds)]
    batch = np.full((len(sequences), width), pad_id, np.int32)
    for row, sequence in zip(batch, sequences, strict=True):
        row[: min(len(sequence), width)] = sequence[:width]
    return batch


def bucketed_batches(
    lengths: Sequence[int], bounds: Sequence[int], batch_size: int, seed: int
) -> list[np.ndarray]:
    """Index batches of at most ``batch_size`` from one bucket each, shuffled within buckets and
    in batch order by ``seed``; every index appears once."""
    rng = np.random.default_rng(seed)
    buckets = np.asarray([bucket_of(n, bounds) for n in lengths], np.int64)
    batches = []
    for bucket in range(len(bounds)):
        members = rng.permutation(np.flatnonzero(buckets == bucket))
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
