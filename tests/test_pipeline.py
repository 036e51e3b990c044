"""Tests for jaxdl.data.pipeline: grain train loader (sharding, resume) and padded eval batches."""

import itertools

import numpy as np
import pytest

from jaxdl.data.pipeline import iterate_eval_batches, make_train_loader, steps_per_epoch
from jaxdl.data.sources import ArrayDataset


def _dataset(n: int) -> ArrayDataset:
    """Example i has inputs filled with i and label i % 3, so batches reveal their indices."""
    inputs = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1))
    return ArrayDataset(np.ascontiguousarray(inputs), np.arange(n) % 3, ["a", "b", "c"])


def _ids(batch: dict) -> list[int]:
    return [int(v) for v in batch["inputs"][:, 0, 0, 0]]


def test_train_loader_yields_typed_fixed_size_batches_forever():
    iterator = iter(make_train_loader(_dataset(10), batch_size=4, seed=0))
    batches = list(itertools.islice(iterator, 12))  # 48 records: almost five epochs of 10.
    for batch in batches:
        assert batch["inputs"].shape == (4, 2, 2, 1) and batch["inputs"].dtype == np.float32
        assert batch["labels"].shape == (4,) and batch["labels"].dtype == np.int32
        np.testing.assert_array_equal(batch["labels"], np.array(_ids(batch)) % 3)


def test_train_loader_epochs_cover_everything_and_reshuffle():
    iterator = iter(make_train_loader(_dataset(10), batch_size=5, seed=3))
    epochs = [_ids(next(iterator)) + _ids(next(iterator)) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    other_seed = iter(make_train_loader(_dataset(10), batch_size=5, seed=4))
    assert _ids(next(other_seed)) != epochs[0][:5]


def test_train_loader_shards_are_disjoint_per_epoch_and_cover_dataset():
    loaders = [
        iter(make_train_loader(_dataset(12), batch_size=3, seed=1, shard_index=i, shard_count=2))
        for i in range(2)
    ]
    for _ in range(3):  # each epoch: 2 batches of 3 per process
        shards = [_ids(next(it)) + _ids(next(it)) for it in loaders]
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(12))


def test_train_loader_state_restores_identical_batches():
    dataset = _dataset(13)
    iterator = iter(make_train_loader(dataset, batch_size=4, seed=5, shard_index=1, shard_count=2))
    for _ in range(5):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(4)]
    resumed = iter(make_train_loader(dataset, batch_size=4, seed=5, shard_index=1, shard_count=2))
    resumed.set_state(state)
    for want, got in zip(expected, (next(resumed) for _ in range(4)), strict=True):
        np.testing.assert_array_equal(got["inputs"], want["inputs"])
        np.testing.assert_array_equal(got["labels"], want["labels"])


@pytest.mark.slow  # CI time (16 s): test_streaming's worker-process loader test stays
def test_train_loader_with_worker_process_matches_in_process_loading():
    in_process = iter(make_train_loader(_dataset(10), batch_size=4, seed=2))
    with_worker = iter(make_train_loader(_dataset(10), batch_size=4, seed=2, worker_count=1))
    for _ in range(3):
        np.testing.assert_array_equal(next(with_worker)["inputs"], next(in_process)["inputs"])


def test_train_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        make_train_loader(_dataset(4), batch_size=0, seed=0)
    with pytest.raises(ValueError, match="cannot shard 1 examples"):
        make_train_loader(_dataset(1), batch_size=1, seed=0, shard_count=2)


@pytest.mark.parametrize(("n", "batch_size", "shard_count"), [(10, 4, 1), (11, 4, 2), (9, 2, 4)])
def test_eval_batches_cover_each_example_once_across_shards(n, batch_size, shard_count):
    seen = []
    batch_counts = set()
    for shard_index in range(shard_count):
        batches = list(
            iterate_eval_batches(
                _dataset(n), batch_size=batch_size, shard_index=shard_index, shard_count=shard_count
            )
        )
        batch_counts.add(len(batches))
        for batch in batches:
            assert batch["inputs"].shape == (batch_size, 2, 2, 1)
            assert batch["labels"].dtype == np.int32 and batch["mask"].dtype == np.float32
            real = batch["mask"] == 1.0
            assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
            assert not batch["inputs"][~real].any() and not batch["labels"][~real].any()
            seen.extend(np.array(_ids(batch))[real].tolist())
    assert sorted(seen) == list(range(n))
    assert len(batch_counts) == 1, "all shards must yield the same number of batches"


def test_eval_batches_pad_the_last_batch():
    batches = list(iterate_eval_batches(_dataset(5), batch_size=4))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1]["mask"], [1, 0, 0, 0])
    assert _ids(batches[1])[0] == 4


def test_steps_per_epoch_floors_but_is_at_least_one():
    assert steps_per_epoch(1797, 128) == 14
    assert steps_per_epoch(10, 64) == 1
    with pytest.raises(ValueError, match="global_batch_size"):
        steps_per_epoch(10, 0)


# --- Length bucketing ---


class _VarLenSource:
    """Record i: ``seq`` holds i+1 in its first ``lengths[i]`` slots (zeros after, up to 16);
    records in ``broken`` read as None (skipped by ``data.on_error``)."""

    def __init__(self, lengths, broken=()):
        self.lengths, self.broken = list(lengths), set(broken)

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, index):
        if index in self.broken:
            return None
        seq = np.zeros(16, np.float32)
        seq[: self.lengths[index]] = index + 1
        return {"seq": seq, "seq_length": self.lengths[index], "label": index % 2}

    def example_lengths(self):
        return np.asarray(self.lengths)


def _varlen_spec():
    from jaxdl.tasks import Field

    return {
        "seq": Field(np.float32, (16,), length_field="seq_length"),
        "seq_length": Field(np.int32),
        "label": Field(np.int32),
    }


LENGTHS = [1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 16, 16] * 2


def _bucketed(source, batch_size=4, **kwargs):
    return make_train_loader(
        source, batch_size=batch_size, seed=7, spec=_varlen_spec(), length_buckets=3, **kwargs
    )


def test_bucketed_batches_hold_similar_lengths_cut_to_their_bound_and_each_record_once():
    from jaxdl.data.length_buckets import BucketPlan, bucket_bounds, bucket_of

    bounds = bucket_bounds(LENGTHS, 3, 16)
    plan = BucketPlan(LENGTHS, bounds, 4, seed=7)
    assert plan.batches_per_epoch == len(LENGTHS) // 4
    iterator = iter(_bucketed(_VarLenSource(LENGTHS)))
    seen, widths, epoch_batches, mixed = [], set(), [], 0
    for _ in range(plan.batches_per_epoch):
        batch = next(iterator)
        ids = [int(row[0]) - 1 for row in batch["seq"]]
        buckets = {bucket_of(LENGTHS[i], bounds) for i in ids}
        mixed += len(buckets) > 1  # only the buckets' remainders share batches
        width = batch["seq"].shape[1]
        widths.add(width)
        assert width == bounds[bucket_of(max(LENGTHS[i] for i in ids), bounds)]
        for row, i in zip(batch["seq"], ids, strict=True):  # content intact up to the bound
            np.testing.assert_array_equal(row, np.where(np.arange(width) < LENGTHS[i], i + 1, 0))
        seen += ids
        epoch_batches.append(ids)
    assert sorted(seen) == list(range(len(LENGTHS)))  # 40 = 10 batches of 4: every record
    assert mixed <= len(bounds) - 1
    assert widths == set(bounds) and max(widths) == 16 and min(widths) < 8
    next_epoch = [
        [int(v) - 1 for v in next(iterator)["seq"][:, 0]] for _ in range(plan.batches_per_epoch)
    ]
    assert next_epoch != epoch_batches  # reshuffled
    assert sorted(sum(next_epoch, [])) == list(range(len(LENGTHS)))


def test_buckets_smaller_than_a_batch_still_train():
    """Few examples per bucket (a small corpus, many buckets): the remainders fill batches."""
    from jaxdl.data.length_buckets import BucketPlan, bucket_bounds

    lengths = list(range(1, 31))
    plan = BucketPlan(lengths, bucket_bounds(lengths, 8, 30), 8, seed=0)
    covered = np.concatenate([plan.batch(i)[0] for i in range(plan.batches_per_epoch)])
    assert len(covered) == 24 and len(set(covered.tolist())) == 24


def test_bucketed_loader_resumes_exactly_and_splits_each_global_batch_across_processes():
    source = _VarLenSource(LENGTHS)
    iterator = iter(_bucketed(source))
    for _ in range(5):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(6)]
    resumed = iter(_bucketed(source))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    # Two processes of batch 2 read the two halves of one process's batch of 4 (same shapes).
    halves = [iter(_bucketed(source, 2, shard_index=i, shard_count=2)) for i in range(2)]
    whole = iter(_bucketed(source))
    for _ in range(8):
        parts = [next(h)["seq"] for h in halves]
        np.testing.assert_array_equal(np.concatenate(parts), next(whole)["seq"])


def test_bucketed_loader_replaces_unreadable_records_from_the_same_bucket():
    from jaxdl.data.length_buckets import bucket_bounds, bucket_of

    bounds = bucket_bounds(LENGTHS, 3, 16)
    broken = {0, 5, 17}
    iterator = iter(_bucketed(_VarLenSource(LENGTHS, broken)))
    for _ in range(20):
        batch = next(iterator)
        ids = [int(row[0]) - 1 for row in batch["seq"]]
        assert len(ids) == 4 and not broken & set(ids)
        width = batch["seq"].shape[1]  # a stand-in comes from the bucket: never wider
        assert width == bounds[bucket_of(max(LENGTHS[i] for i in ids), bounds)]


def test_bucketing_without_lengths_or_a_variable_length_field_is_a_clear_error():
    with pytest.raises(ValueError, match="exactly one variable-length field"):
        make_train_loader(
            _VarLenSource(LENGTHS), batch_size=4, seed=0, spec={"label": np.int32},
            length_buckets=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="does not know its examples' lengths"):
        make_train_loader(_dataset(8), batch_size=4, seed=0, spec=_varlen_spec(), length_buckets=2)


def test_an_example_longer_than_its_reported_length_is_never_cut():
    class Understated(_VarLenSource):
        def example_lengths(self):  # headers said at most 12; records 17 and 18 hold 16
            return np.minimum(np.asarray(self.lengths), 12)

    source = Understated(LENGTHS)
    iterator = iter(_bucketed(source))
    widths = set()
    for _ in range(30):
        batch = next(iterator)
        assert (batch["seq"].shape[1] >= batch["seq_length"]).all()
        widths.add(batch["seq"].shape[1])
    assert 16 in widths and widths <= {16, *_bounds_below(source)}  # 16: the full size


def test_with_several_processes_a_longer_than_reported_example_is_replaced_not_cut():
    class Understated(_VarLenSource):
        def example_lengths(self):  # the six records of 16 said 14
            return np.where(np.asarray(self.lengths) == 16, 14, self.lengths)

    source = Understated(LENGTHS)
    halves = [iter(_bucketed(source, 2, shard_index=i, shard_count=2)) for i in range(2)]
    for _ in range(30):
        parts = [next(h) for h in halves]
        assert parts[0]["seq"].shape == parts[1]["seq"].shape  # one global array's parts
        for part in parts:
            assert (part["seq_length"] <= part["seq"].shape[1]).all()
            assert (part["seq_length"] < 16).all()  # replaced, never cut


def _bounds_below(source):
    from jaxdl.data.length_buckets import bucket_bounds

    return bucket_bounds(source.example_lengths(), 3, 12)
