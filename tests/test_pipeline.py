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
