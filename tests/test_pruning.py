"""Tests for jaxdl.optim.pruning: masks against torch.nn.utils.prune, the polynomial schedule, the
optax transform (pruned weights stay zero under momentum/Adam, jit, sharding) and the config."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdl.optim import build_optimizer, constant
from jaxdl.optim.pruning import (
    MagnitudePruningState,
    magnitude_masks,
    magnitude_pruning,
    polynomial_schedule,
    sparsity_report,
)


@pytest.fixture(name="prune")
def torch_prune():
    """torch.nn.utils.prune, the reference; its tests are skipped where torch is missing."""
    return pytest.importorskip("torch.nn.utils.prune")


def random_params(seed: int = 0) -> dict:
    """Kernels of sizes where round() matters (5, 7, 25 entries), plus biases never pruned."""
    rng = np.random.default_rng(seed)
    shapes = {"a": (5, 1), "b": (7, 1), "c": (5, 5), "d": (3, 4, 2)}
    params = {name: {"kernel": rng.normal(size=shape)} for name, shape in shapes.items()}
    for name in ("a", "c"):
        params[name]["bias"] = rng.normal(size=(shapes[name][-1],))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def torch_module(weight: jax.Array) -> Any:
    """A torch module whose ``weight`` parameter holds ``weight``."""
    import torch

    module = torch.nn.Module()
    module.register_parameter("weight", torch.nn.Parameter(torch.tensor(np.asarray(weight))))
    return module


def kernels(tree: dict) -> list[jax.Array]:
    """Kernel leaves in jax.tree order (the order the global ranking concatenates them in)."""
    return [
        leaf for name, leaf in jax.tree_util.tree_leaves_with_path(tree) if "kernel" in str(name)
    ]


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_layer_masks_equal_torch_l1_unstructured(prune, sparsity):
    params = random_params()
    masks = magnitude_masks(params, sparsity, scope="layer")
    for weight, mask in zip(kernels(params), kernels(masks), strict=True):
        module = torch_module(weight)
        prune.l1_unstructured(module, "weight", amount=sparsity)
        np.testing.assert_array_equal(np.asarray(mask), module.weight_mask.numpy().astype(bool))
    assert all(bool(jnp.all(masks[name]["bias"])) for name in ("a", "c"))


def test_prune_count_is_round_half_to_even_as_torch():
    params = random_params()

    def pruned(sparsity: float) -> list[int]:
        return [int((~m).sum()) for m in kernels(magnitude_masks(params, sparsity))]

    # Sizes 5, 7, 25, 24: 0.5 * 5 = 2.5 -> 2, 0.5 * 7 = 3.5 -> 4, 0.3 * 5 = 1.5 -> 2, 0.1 * 25 -> 2.
    assert pruned(0.5) == [2, 4, 12, 12]
    assert pruned(0.3) == [2, 2, 8, 7]
    assert pruned(0.1) == [0, 1, 2, 2]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_global_masks_equal_torch_global_unstructured(prune, sparsity):
    params = random_params(seed=1)
    masks = magnitude_masks(params, sparsity, scope="global")
    modules = [torch_module(weight) for weight in kernels(params)]
    prune.global_unstructured(
        [(module, "weight") for module in modules],
        pruning_method=prune.L1Unstructured,
        amount=sparsity,
    )
    for mask, module in zip(kernels(masks), modules, strict=True):
        np.testing.assert_array_equal(np.asarray(mask), module.weight_mask.numpy().astype(bool))


def test_traced_sparsity_gives_the_same_masks_under_jit():
    params = random_params(seed=2)
    jitted = jax.jit(lambda p, s: [magnitude_masks(p, s, scope) for scope in ("layer", "global")])
    for sparsity in (0.3, 0.5, 0.75):
        expected = [magnitude_masks(params, sparsity, scope) for scope in ("layer", "global")]
        actual = jitted(params, jnp.float32(sparsity))
        jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_ties_prune_the_earlier_entry_first():
    params = {"x": {"kernel": jnp.ones((5, 1))}, "y": {"kernel": jnp.ones((7, 1))}}
    layer = jax.device_get(magnitude_masks(params, 0.5, "layer"))
    np.testing.assert_array_equal(layer["x"]["kernel"].ravel(), np.arange(5) >= 2)  # 2.5 -> 2
    np.testing.assert_array_equal(layer["y"]["kernel"].ravel(), np.arange(7) >= 4)  # 3.5 -> 4
    # Global: 12 entries, 6 pruned: all of x first (leaf order), then the first entry of y.
    glob = jax.device_get(magnitude_masks(params, 0.5, "global"))
    assert not glob["x"]["kernel"].any()
    np.testing.assert_array_equal(glob["y"]["kernel"].ravel(), np.arange(7) >= 1)
    # Only y prunable: global ranks y alone (round(3.5) = 4 pruned), x is kept whole.
    prunable = {"x": {"kernel": False}, "y": {"kernel": True}}
    only_y = jax.device_get(magnitude_masks(params, 0.5, "global", prunable=prunable))
    assert only_y["x"]["kernel"].all()
    np.testing.assert_array_equal(only_y["y"]["kernel"].ravel(), np.arange(7) >= 4)


def test_previous_masks_rank_below_live_entries():
    kernel = jnp.array([[0.0, 0.0, 3.0, 4.0]])  # entry 1 is pruned; entry 0 is a live zero
    previous = {"kernel": jnp.array([[True, False, True, True]])}
    masks = magnitude_masks({"kernel": kernel}, 0.25, previous=previous)
    np.testing.assert_array_equal(masks["kernel"], previous["kernel"])


def closed_form(step, final, begin, end, initial=0.0, frequency=1, power=3):
    """Zhu & Gupta's formula at the last pruning step <= step (end always prunes)."""
    if step < begin:
        return 0.0
    last = end if step >= end else begin + (step - begin) // frequency * frequency
    progress = 1.0 if end == begin else (last - begin) / (end - begin)
    return final + (initial - final) * (1 - progress) ** power


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(final=0.8, begin=10, end=50),
        dict(final=0.9, begin=0, end=40, initial=0.2, frequency=7, power=2),
        dict(final=0.5, begin=5, end=5),  # one-shot
    ],
)
def test_polynomial_sparsity_matches_closed_form(kwargs):
    steps = np.array([0, 4, 5, 9, 10, 11, 17, 30, 39, 40, 49, 50, 51, 100])
    names = dict(final="final_sparsity", begin="begin_step", end="end_step")
    names.update(initial="initial_sparsity", frequency="frequency", power="power")
    schedule = polynomial_schedule(**{names[k]: v for k, v in kwargs.items()})
    values = jax.jit(schedule)(steps)
    expected = [closed_form(int(step), **kwargs) for step in steps]
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)
    assert float(values[-1]) == np.float32(kwargs["final"])


def run(tx, params, steps: int, seed: int = 0) -> list[tuple[dict, MagnitudePruningState]]:
    """Apply ``steps`` jitted updates with random gradients; per step: numpy params, pruning
    state (numpy masks)."""
    rng = np.random.default_rng(seed)
    state, update = tx.init(params), jax.jit(tx.update)
    history = []
    for _ in range(steps):
        grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(jax.device_get((params, pruning_state(state))))
    return history


def pruning_state(state) -> MagnitudePruningState:
    return next(s for s in state if isinstance(s, MagnitudePruningState))


def pruned_counts(masks: dict) -> list[int]:
    return [int((~np.asarray(m)).sum()) for m in kernels(masks)]


@pytest.mark.parametrize(
    ("inner", "scope"),
    [(optax.adam(0.05), "layer"), (optax.sgd(0.05, momentum=0.9), "global")],
    ids=["adam-layer", "sgd_momentum-global"],
)
def test_pruned_weights_stay_exactly_zero_under_momentum(inner, scope):
    params, sparsity = random_params(), 0.6
    tx = optax.chain(inner, magnitude_pruning(sparsity, scope=scope))
    history = run(tx, params, steps=5)
    # One-shot: the masks are computed at the first update and never change.
    masks = jax.device_get(magnitude_masks(params, sparsity, scope))
    for step_params, state in history:
        jax.tree.map(np.testing.assert_array_equal, state.masks, masks)
        for weight, mask in zip(kernels(step_params), kernels(masks), strict=True):
            assert np.all(weight[~mask] == 0) and np.all(weight[mask] != 0)
    sizes = [m.size for m in kernels(masks)]
    if scope == "layer":
        assert pruned_counts(masks) == [round(sparsity * size) for size in sizes]
    else:
        assert sum(pruned_counts(masks)) == round(sparsity * sum(sizes))


def test_kept_entries_get_the_inner_optimizers_update():
    params = {"kernel": jnp.arange(-6.0, 6.0).reshape(3, 4), "bias": jnp.ones(4)}
    grads = jax.tree.map(jnp.ones_like, params)
    inner = optax.adam(0.1)
    tx = optax.chain(inner, magnitude_pruning(0.5))

    @jax.jit
    def both():
        plain, _ = inner.update(grads, inner.init(params), params)
        pruned, state = tx.update(grads, tx.init(params), params)
        return plain, pruned, pruning_state(state).masks

    plain, pruned, masks = jax.device_get(both())
    # |kernel| = 6 5 4 3 2 1 0 1 2 3 4 5: the six smallest, the tied 3s resolved by position.
    np.testing.assert_array_equal(
        masks["kernel"].ravel(), (np.arange(12) < 3) | (np.arange(12) > 8)
    )
    for name in params:
        # XLA may fuse Adam differently in the two programs: equal to float32 rounding.
        expected = np.where(masks[name], plain[name], -np.asarray(params[name]))
        np.testing.assert_allclose(pruned[name], expected, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(params[name] + pruned[name] == 0, ~masks[name])


def test_gradual_schedule_reaches_final_sparsity_at_end_step():
    params, final, begin, end, frequency = random_params(), 0.75, 1, 8, 3
    schedule = polynomial_schedule(final, begin, end, frequency=frequency)
    tx = optax.chain(optax.sgd(0.05, momentum=0.9), magnitude_pruning(schedule, scope="global"))
    history = run(tx, params, steps=end + 2)
    total = sum(k.size for k in kernels(params))
    previous = None
    for step, (step_params, state) in enumerate(history):
        pruned = sum(pruned_counts(state.masks))
        assert pruned == round(closed_form(step, final, begin, end, frequency=frequency) * total)
        assert sum(int((w == 0).sum()) for w in kernels(step_params)) == pruned
        if previous is not None:  # pruning only grows
            jax.tree.map(
                lambda m, p: np.testing.assert_array_equal(m & p, m), state.masks, previous
            )
        previous = state.masks
    assert pruned == round(final * total)
    assert history[end][1].sparsity == np.float32(final)


def test_update_on_sharded_params():
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    kernel = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
    params = {"kernel": jax.device_put(kernel, sharding), "bias": jnp.ones(4)}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = optax.chain(optax.adam(0.1), magnitude_pruning(polynomial_schedule(0.5, 0, 0), "global"))
    updates, state = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    masks = pruning_state(state).masks
    assert masks["kernel"].sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_array_equal(masks["kernel"], np.abs(kernel) >= np.median(np.abs(kernel)))
    # Adam's first step with unit gradients is -lr (to float32 rounding) where kept.
    expected = np.where(masks["kernel"], -0.1, -kernel)
    np.testing.assert_allclose(updates["kernel"], expected, rtol=1e-5)
    np.testing.assert_array_equal(kernel + np.asarray(updates["kernel"]) == 0, ~masks["kernel"])


def test_sparsity_report_counts_kernels_only():
    params = {"dense": {"kernel": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "bias": jnp.zeros(2)}}
    params["conv"] = {"kernel": jnp.ones((1, 1, 2, 2))}
    report = sparsity_report(params)
    assert report == {"overall": 3 / 8, "per_kernel": {"conv/kernel": 0.0, "dense/kernel": 0.75}}


def test_pruning_arguments_are_checked():
    params = random_params()
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(params, 0.5, scope="row")
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_masks(params, 1.5)
    with pytest.raises(ValueError, match="end_step 3 must be >= begin_step 5"):
        polynomial_schedule(0.5, 5, 3)
    with pytest.raises(ValueError, match="frequency"):
        polynomial_schedule(0.5, 0, 10, frequency=0)
    tx = magnitude_pruning(0.5)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


def optimizer_config(**pruning) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": "adam", "pruning": pruning})


@pytest.mark.parametrize(
    ("pruning", "message"),
    [
        (dict(sparsity=1.0), r"'sparsity' must be in \[0, 1\), got 1.0"),
        (dict(sparsity="half"), "'sparsity' must be a number"),
        (dict(sparsity=0.5, scope="row"), "'scope' must be one of"),
        (dict(sparsity=0.5, begin_step=-1), "'begin_step' must be an int >= 0"),
        (dict(sparsity=0.5, begin_step=10, end_step=5), "'end_step' must be an int >= 10"),
        (dict(sparsity=0.5, end_step=2.5), "'end_step' must be an int"),
        (dict(sparsity=0.5, frequency=0), "'frequency' must be an int >= 1"),
        (dict(sparsity=0.5, power=0), "'power' must be > 0"),
        (dict(sparsity=0.5, sparsty=0.5), r"unknown optimizer.pruning field\(s\) \['sparsty'\]"),
        (dict(sparsity=0.0, frequency=0), "'frequency'"),  # checked even when off
    ],
)
def test_bad_pruning_config_is_one_clear_error(pruning, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(optimizer_config(**pruning), constant(0.1))


@pytest.mark.parametrize("pruning", [None, {}, {"sparsity": 0.0}, {"sparsity": None}])
def test_absent_or_zero_pruning_adds_nothing(pruning):
    config = ml_collections.ConfigDict({"name": "adam"})
    if pruning is not None:
        config.pruning = pruning
    state = build_optimizer(config, constant(0.1)).init(random_params())
    assert not any(isinstance(s, MagnitudePruningState) for s in state)


def mlp(params: dict, x: jax.Array) -> jax.Array:
    """A tiny two-layer MLP, laid out as flax's Dense_0 / Dense_1."""
    hidden = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    return hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def test_training_through_build_optimizer_reaches_target_sparsity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True))
    shapes = {"Dense_0": (8, 16), "Dense_1": (16, 1)}
    params = {
        name: {"kernel": rng.normal(size=shape) / np.sqrt(shape[0]), "bias": np.full(shape[1], 0.1)}
        for name, shape in shapes.items()
    }
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    config = optimizer_config(sparsity=0.5, scope="layer", begin_step=2, end_step=12, frequency=2)
    config.weight_decay = 1e-4
    tx = build_optimizer(config, constant(0.01))

    def loss_fn(p: dict) -> jax.Array:
        return jnp.mean((mlp(p, x) - y) ** 2)

    @jax.jit
    def train_step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state, losses = jax.jit(tx.init)(params), []
    for _ in range(20):
        params, state, loss = train_step(params, state)
        losses.append(float(loss))
    report = sparsity_report(params)
    assert report["per_kernel"] == {"Dense_0/kernel": 0.5, "Dense_1/kernel": 0.5}
    assert report["overall"] == 0.5
    assert bool(jnp.all(params["Dense_0"]["bias"] != 0))
    assert losses[-1] < losses[0]
