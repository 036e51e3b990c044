"""Length bucketing: batches of similar-length examples, padded to their bucket's bound.

Padding every review (or utterance) to the longest spends most of the compute on padding (the
median is a fraction of the longest). Bucketing keeps the shapes to a few bounds (one compilation
each under ``jit``) and the padding small. Written here because grain has no bucketing transform
(0.2.18), and the logic is a sort and a split.
"""

from __future__ import annotations

import functools
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


class BucketPlan:
    """Global batches of ``global_batch`` examples of similar length, reshuffled every epoch: a
    pure function of (epoch, seed), so any process computes any batch and a resumed run (which
    only needs the batch index) reads the same batches.

    Each epoch shuffles every bucket's members and cuts them into full batches; the buckets'
    remainders, in bucket order, make the last few batches (each spans neighbouring buckets), so
    an epoch uses every example but the final ``len % global_batch``, as ``drop_remainder``
    does. The batch order is shuffled too. A batch's ``spares`` are the other members of the
    bucket of its longest-bucket example, to stand in for records that turn out unreadable
    (``data.on_error='skip'``) so batches stay full and no wider.
    """

    def __init__(self, lengths: Sequence[int], bounds: Sequence[int], global_batch: int, seed: int):
        if global_batch < 1 or len(lengths) < global_batch:
            raise DataError(
                f"length bucketing needs a global batch of 1 to {len(lengths)} examples, "
                f"got {global_batch}"
            )
        self.bounds, self.global_batch, self.seed = tuple(bounds), int(global_batch), int(seed)
        self.lengths = np.asarray(lengths, np.int64)
        self.buckets = np.asarray([bucket_of(int(n), self.bounds) for n in lengths], np.int64)
        self.members = [np.flatnonzero(self.buckets == b) for b in range(len(self.bounds))]
        self.batches_per_epoch = len(lengths) // self.global_batch

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a plan lives as long as its loader
    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The epoch's shuffled members per bucket and its batches (index arrays), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        shuffled = [rng.permutation(m) for m in self.members]
        size, batches, remainders = self.global_batch, [], []
        for members in shuffled:
            full = len(members) - len(members) % size
            batches += [members[i : i + size] for i in range(0, full, size)]
            remainders.append(members[full:])
        rest = np.concatenate(remainders)
        batches += [rest[i : i + size] for i in range(0, len(rest) - size + 1, size)]
        return shuffled, [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(indices [global_batch], spares, width)`` of global batch ``index``: ``width`` is
        the bound that holds its longest example (by the lengths given), the same for every
        process's part of it."""
        epoch, position = divmod(int(index), self.batches_per_epoch)
        shuffled, batches = self._epoch(epoch)
        indices = batches[position]
        bucket = int(self.buckets[indices].max())
        members = shuffled[bucket]
        return indices, members[~np.isin(members, indices)], self.bounds[bucket]
