"""Train/eval step semantics: gradient accumulation, masking, label smoothing, batch sizing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdl.experiment import global_batch_size
from jaxdl.models import get_model
from jaxdl.parallel import batch_sharding, make_mesh, shard_batch
from jaxdl.tasks import ImageClassification
from jaxdl.train import (
    ShardedStep,
    classification_loss,
    create_sharded_train_state,
    make_eval_step,
    make_train_step,
)


def _setup(microbatches, mesh_sizes=None, skip_nonfinite=False):
    mesh = make_mesh(mesh_sizes or {"data": 8})
    model = get_model("lenet5", num_classes=10)  # no BatchNorm: microbatching is exact
    sample = jax.ShapeDtypeStruct((32, 8, 8, 1), np.float32)
    state, shardings = create_sharded_train_state(
        model, optax.sgd(0.1), jax.random.PRNGKey(0), sample, mesh
    )
    sharding = batch_sharding(mesh)
    step = ShardedStep(
        make_train_step(microbatches=microbatches, skip_nonfinite=skip_nonfinite),
        mesh,
        shardings,
        sharding,
        returns_state=True,
    )
    return state, step, sharding, shardings, mesh


def _batch(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.normal(size=(size, 8, 8, 1)).astype(np.float32),
        "labels": rng.integers(0, 10, size=(size,)).astype(np.int32),
    }


def test_gradient_accumulation_equals_one_big_batch():
    batch = _batch()
    results = []
    for microbatches in (1, 4):
        state, step, sharding, _, _ = _setup(microbatches)
        state, metrics = step(state, shard_batch(batch, sharding))
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    (params_full, loss_full), (params_micro, loss_micro) = results
    assert loss_micro == pytest.approx(loss_full, rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        params_micro,
        params_full,
    )


def test_microbatches_must_divide_the_batch():
    state, step, sharding, _, _ = _setup(microbatches=3)
    with pytest.raises(ValueError, match="not divisible by microbatches=3"):
        step(state, shard_batch(_batch(), sharding))


def test_eval_step_ignores_padded_examples():
    state, _, sharding, shardings, mesh = _setup(1)
    eval_step = ShardedStep(
        make_eval_step(ImageClassification(num_classes=10)),
        mesh,
        shardings,
        sharding,
        returns_state=False,
    )
    batch = _batch()
    mask = np.zeros(32, np.float32)
    mask[:20] = 1.0
    full = jax.device_get(eval_step(state, shard_batch({**batch, "mask": mask}, sharding)))
    # Scrambling the padded rows must not change anything.
    scrambled = dict(batch)
    scrambled["labels"] = batch["labels"].copy()
    scrambled["labels"][20:] = (batch["labels"][20:] + 1) % 10
    other = jax.device_get(eval_step(state, shard_batch({**scrambled, "mask": mask}, sharding)))
    assert full["count"] == 20
    assert int(full["confusion"].sum()) == 20
    np.testing.assert_array_equal(full["confusion"], other["confusion"])
    assert float(full["loss_sum"]) == pytest.approx(float(other["loss_sum"]))


def test_label_smoothing_matches_the_closed_form():
    logits = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))
    loss = float(classification_loss(logits, np.array([0]), label_smoothing=0.3)[0])
    targets = np.array([0.7 + 0.1, 0.1, 0.1])
    assert loss == pytest.approx(-(targets * logits[0]).sum(), rel=1e-6)


def test_global_batch_from_per_device_batch_scales_with_data_parallel_degree():
    train = ml_collections.ConfigDict({"batch_size": 64, "per_device_batch_size": None})
    assert global_batch_size(train, 8) == 64
    train.per_device_batch_size = 16
    assert global_batch_size(train, 8) == 128
    assert global_batch_size(train, 2) == 32


def test_a_non_finite_step_keeps_the_state_and_lr_scale_scales_the_update():
    state, step, sharding, _, _ = _setup(1, skip_nonfinite=True)
    before = jax.device_get((state.params, state.opt_state))
    poisoned = _batch()
    poisoned["inputs"][0, 0, 0, 0] = np.nan
    state, metrics = step(state, shard_batch(poisoned, sharding))
    assert bool(metrics["nonfinite"]) and int(state.step) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before[0])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), before[1])

    # SGD: the update with lr_scale 0.5 is half the full one (same gradients from the same state).
    start = jax.device_get(state.params)
    copy = lambda: jax.tree.map(jnp.copy, state)  # noqa: E731 - the step donates its input
    batch = shard_batch(_batch(seed=1), sharding)
    full, _ = step(copy(), batch)
    half, metrics = step(copy(), batch, lr_scale=0.5)
    assert not bool(metrics["nonfinite"])
    jax.tree.map(
        lambda s, f, h: np.testing.assert_allclose(h - s, (f - s) / 2, rtol=1e-4, atol=1e-7),
        start,
        jax.device_get(full.params),
        jax.device_get(half.params),
    )


def test_without_skip_a_non_finite_step_is_applied_as_computed():
    # train.on_nonfinite='stop': no select in the step (the loop stops; nothing is saved).
    state, step, sharding, _, _ = _setup(1)
    poisoned = _batch()
    poisoned["inputs"][0, 0, 0, 0] = np.nan
    state, metrics = step(state, shard_batch(poisoned, sharding))
    assert bool(metrics["nonfinite"])
    leaves = jax.tree.leaves(jax.device_get(state.params))
    assert any(not np.isfinite(leaf).all() for leaf in leaves)


def test_a_step_compiled_ahead_of_time_is_the_one_called():
    """``lower(...).compile()`` (the trainer's AOT compile) and the calls that follow share one
    trace: a call never compiles the step a second time, whatever the learning-rate scale."""
    traces = []
    train_step = make_train_step()

    def counted(*args):
        traces.append(1)
        return train_step(*args)

    mesh = make_mesh({"data": 8})
    model = get_model("lenet5", num_classes=10)
    sample = jax.ShapeDtypeStruct((32, 8, 8, 1), np.float32)
    state, shardings = create_sharded_train_state(
        model, optax.sgd(0.1), jax.random.PRNGKey(0), sample, mesh
    )
    sharding = batch_sharding(mesh)
    step = ShardedStep(counted, mesh, shardings, sharding, returns_state=True)
    batch = shard_batch(_batch(), sharding)
    step.lower(state, batch).compile()
    for scale in (1.0, 0.5):
        state, _ = step(state, batch, scale)
    assert len(traces) == 1
