"""Checkpointer: exact round trips, restoring onto other meshes, keep-N plus best, data position."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jaxdl.checkpoint import Checkpointer, abstract_like
from jaxdl.data import ArrayDataset, make_train_loader
from jaxdl.layers import Conv, Dense, make_norm
from jaxdl.parallel import batch_sharding, make_mesh, shard_batch
from jaxdl.train import ShardedStep, TrainState, create_sharded_train_state, make_train_step
from jaxdl.train.state import abstract_state

BATCH = 16


class TinyConvNet(nn.Module):
    """Two convs with BatchNorm and a dense head: a model with batch statistics whose 16-wide
    kernels FSDP can shard 8 ways, small enough to compile in about a second.

    [B, 8, 8, 1] -> logits [B, 10].
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv(16, (3, 3), use_bias=False)(x)
        x = nn.relu(make_norm("batch", axis_name="conv_out", train=train)(x))
        x = Conv(16, (3, 3))(x)
        x = nn.with_logical_constraint(x, ("batch", "height", "width", "channels"))
        return Dense(10, ("embed", "classes"))(x.mean(axis=(1, 2)))


def _batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32),
        "labels": rng.integers(0, 10, size=(BATCH,)).astype(np.int32),
    }


def _init(mesh) -> tuple[TrainState, TrainState]:
    sample = jax.ShapeDtypeStruct((BATCH, 8, 8, 1), np.float32)
    return create_sharded_train_state(
        TinyConvNet(), optax.adam(1e-2), jax.random.PRNGKey(0), sample, mesh
    )


def _host(tree) -> dict[str, np.ndarray]:
    """{leaf path: numpy value}; paths, unlike tree structures, ignore the optimiser object."""
    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _assert_same_values(got: TrainState, want: TrainState | dict[str, np.ndarray]) -> None:
    got, want = _host(got), want if isinstance(want, dict) else _host(want)
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _assert_shardings(state: TrainState, shardings: TrainState) -> None:
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.sharding, sharding)


@pytest.fixture(scope="module")
def trained():
    """An FSDP-8 state after two Adam steps: non-trivial moments and BatchNorm statistics."""
    mesh = make_mesh({"fsdp": 8})
    state, shardings = _init(mesh)
    step = ShardedStep(make_train_step(), mesh, shardings, batch_sharding(mesh), returns_state=True)
    for seed in range(2):
        state, _ = step(state, shard_batch(_batch(seed), batch_sharding(mesh)))
    return mesh, state, shardings, step


def test_round_trip_restores_params_opt_state_batch_stats_and_loop_state(trained, tmp_path):
    mesh, state, shardings, _ = trained
    # The state is really sharded (FSDP splits 16-wide kernels 8 ways) and really trained.
    assert any(
        len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
        for leaf in jax.tree.leaves(state.params)
    )
    assert not np.allclose(jax.device_get(state.batch_stats["BatchNorm_0"]["mean"]), 0.0)
    assert int(state.opt_state[0].count) == 2

    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(2, state, loop_state={"epoch": 1, "history": [{"loss": 0.5}]})
    checkpointer.wait()
    restored, loop = Checkpointer(str(tmp_path)).restore_latest(abstract_like(state))

    _assert_same_values(restored, state)
    _assert_shardings(restored, shardings)
    assert loop == {"epoch": 1, "history": [{"loss": 0.5}]}
    checkpointer.close()


def test_restores_onto_other_meshes_fsdp8_to_dp2_to_one_device(trained, tmp_path):
    _, state, _, _ = trained
    first = Checkpointer(str(tmp_path / "fsdp8"))
    first.save(2, state)
    first.close()

    dp2_template, dp2_shardings = _init(make_mesh({"data": 2}, jax.devices()[:2]))
    on_dp2, _ = first.restore_latest(abstract_state(dp2_shardings, dp2_template))
    _assert_same_values(on_dp2, state)
    _assert_shardings(on_dp2, dp2_shardings)
    assert {d for leaf in jax.tree.leaves(on_dp2) for d in leaf.sharding.device_set} == set(
        jax.devices()[:2]
    )

    second = Checkpointer(str(tmp_path / "dp2"))
    second.save(2, on_dp2)
    second.close()
    one_template, one_shardings = _init(make_mesh({"data": 1}, jax.devices()[:1]))
    on_one, _ = second.restore_latest(abstract_state(one_shardings, one_template))
    _assert_same_values(on_one, state)
    _assert_shardings(on_one, one_shardings)


def test_keeps_the_newest_max_to_keep_steps_and_separately_the_best(trained, tmp_path):
    _, state, _, _ = trained
    checkpointer = Checkpointer(str(tmp_path), max_to_keep=2)
    for step in range(1, 5):
        checkpointer.save(step, state, loop_state={"step": step}, is_best=step == 2)
    checkpointer.wait()

    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3, 4]
    assert sorted(int(p.name) for p in (tmp_path / "best").iterdir()) == [2]
    assert (checkpointer.latest_step(), checkpointer.best_step()) == (4, 2)
    assert checkpointer.restore_latest(abstract_like(state))[1] == {"step": 4}
    best, loop = checkpointer.restore_best(abstract_like(state))
    assert loop == {"step": 2}
    _assert_same_values(best, state)
    checkpointer.close()


def test_restores_the_data_iterator_position(trained, tmp_path):
    _, state, _, _ = trained
    rng = np.random.default_rng(0)
    dataset = ArrayDataset(
        rng.normal(size=(50, 8, 8, 1)).astype(np.float32),
        rng.integers(0, 10, size=50).astype(np.int32),
        [str(i) for i in range(10)],
    )

    def loader():
        return make_train_loader(dataset, batch_size=8, seed=3)

    iterator = iter(loader())
    for _ in range(7):  # crosses an epoch boundary (6 batches per epoch)
        next(iterator)
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(7, state, data_iterator=iterator)
    checkpointer.wait()
    expected = [next(iterator) for _ in range(2)]

    resumed = iter(loader())
    checkpointer.restore_latest(abstract_like(state), resumed)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["inputs"], want["inputs"])
        np.testing.assert_array_equal(got["labels"], want["labels"])
    checkpointer.close()


def test_async_save_snapshots_the_state_before_a_donating_step_reuses_it(trained, tmp_path):
    mesh, state, shardings, step = trained
    state = jax.tree.map(lambda x: x.copy(), state)  # the fixture's state must survive donation
    saved = _host(state)
    checkpointer = Checkpointer(str(tmp_path), async_save=True)
    checkpointer.save(2, state)
    # The trainer's next step donates the very buffers being saved (JAX skips those the save is
    # still reading and reuses the rest), so the checkpoint must hold the pre-step values.
    next_state, _ = step(state, shard_batch(_batch(9), batch_sharding(mesh)))
    jax.block_until_ready(next_state)
    checkpointer.wait()

    assert not list(tmp_path.glob("checkpoints/*tmp*"))
    fresh = Checkpointer(str(tmp_path))  # what a new process would see
    assert fresh.latest_step() == 2
    restored, _ = fresh.restore_latest(abstract_like(next_state))
    _assert_same_values(restored, saved)
    _assert_shardings(restored, shardings)
    checkpointer.close()


def test_missing_checkpoints_raise_file_not_found_naming_the_directory(trained, tmp_path):
    _, state, _, _ = trained
    checkpointer = Checkpointer(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*empty/checkpoints"):
        checkpointer.restore_latest(abstract_like(state))
    with pytest.raises(FileNotFoundError, match=r"no best checkpoint in .*empty/best"):
        checkpointer.restore_best(abstract_like(state))
