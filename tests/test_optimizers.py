"""Tests for jaxdl.optim.build_optimizer: update rules, regularisation, clipping, errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdl.optim import build_optimizer, constant

LR = 0.1


def make_config(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def make_params() -> dict:
    """A dense layer: kernel (ndim 2, decayed by default) and bias (ndim 1, not decayed)."""
    return {
        "kernel": jnp.array([[1.0, -2.0, 3.0], [-0.5, 0.25, 4.0]]),
        "bias": jnp.array([1.0, -1.0, 2.0]),
    }


def zeros_like(params: dict) -> dict:
    return jax.tree.map(jnp.zeros_like, params)


def apply_steps(config, grads_per_step, params=None, schedule=None) -> list[dict]:
    """Run ``update`` (under jit) for each gradient tree; return the list of updates."""
    params = make_params() if params is None else params
    optimizer = build_optimizer(config, constant(LR) if schedule is None else schedule)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    updates_per_step = []
    for grads in grads_per_step:
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        updates_per_step.append(updates)
    return updates_per_step


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_updates_match_hand_computation(nesterov):
    g1 = {"kernel": jnp.full((2, 3), 1.0), "bias": jnp.array([1.0, 2.0, 3.0])}
    g2 = {"kernel": jnp.full((2, 3), -2.0), "bias": jnp.array([0.5, 0.5, 0.5])}
    momentum = 0.9
    config = make_config(name="sgd", momentum=momentum, nesterov=nesterov)
    first, second = apply_steps(config, [g1, g2])
    for key in g1:
        buffer1 = g1[key]
        buffer2 = momentum * buffer1 + g2[key]
        direction1 = g1[key] + momentum * buffer1 if nesterov else buffer1
        direction2 = g2[key] + momentum * buffer2 if nesterov else buffer2
        np.testing.assert_allclose(first[key], -LR * direction1, rtol=1e-6)
        np.testing.assert_allclose(second[key], -LR * direction2, rtol=1e-6)


def test_rmsprop_update_matches_torch_formula():
    grads = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.array([1.0, -4.0, 0.5])}
    (updates,) = apply_steps(make_config(name="rmsprop", decay=0.9, eps=1e-8), [grads])
    for key, g in grads.items():
        square_avg = 0.1 * g**2
        np.testing.assert_allclose(updates[key], -LR * g / (jnp.sqrt(square_avg) + 1e-8), rtol=1e-5)


def test_coupled_decay_goes_through_adam_while_decoupled_is_added_after():
    params, weight_decay = make_params(), 0.01
    zero_grads = zeros_like(params)
    (coupled,) = apply_steps(
        make_config(name="adam", weight_decay=weight_decay, weight_decay_mode="coupled"),
        [zero_grads],
    )
    (decoupled,) = apply_steps(
        make_config(name="adam", weight_decay=weight_decay, weight_decay_mode="decoupled"),
        [zero_grads],
    )
    kernel = params["kernel"]
    # Adam normalises the L2 gradient wd*p: its first step is -lr*sign(p) whatever wd is.
    np.testing.assert_allclose(coupled["kernel"], -LR * jnp.sign(kernel), rtol=1e-4)
    # Decoupled decay bypasses Adam: -lr*wd*p.
    np.testing.assert_allclose(decoupled["kernel"], -LR * weight_decay * kernel, rtol=1e-6)


def test_sgd_coupled_weight_decay_adds_l2_gradient_before_momentum():
    params, weight_decay, momentum = make_params(), 0.1, 0.5
    config = make_config(name="sgd", momentum=momentum, weight_decay=weight_decay)
    first, second = apply_steps(config, [zeros_like(params)] * 2)
    kernel = params["kernel"]
    np.testing.assert_allclose(first["kernel"], -LR * weight_decay * kernel, rtol=1e-6)
    kernel_after = kernel + first["kernel"]
    buffer = momentum * weight_decay * kernel + weight_decay * kernel_after
    np.testing.assert_allclose(second["kernel"], -LR * buffer, rtol=1e-6)


def test_adamw_defaults_to_decoupled_decay():
    params = make_params()
    (updates,) = apply_steps(make_config(name="adamw", weight_decay=0.05), [zeros_like(params)])
    np.testing.assert_allclose(updates["kernel"], -LR * 0.05 * params["kernel"], rtol=1e-6)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_weight_decay_skips_biases_unless_asked(mode):
    params = make_params()
    config = make_config(name="sgd", weight_decay=0.1, weight_decay_mode=mode)
    (default,) = apply_steps(config, [zeros_like(params)])
    np.testing.assert_array_equal(default["bias"], 0.0)
    np.testing.assert_allclose(default["kernel"], -LR * 0.1 * params["kernel"], rtol=1e-6)
    config.decay_bias_and_norm = True
    (everything,) = apply_steps(config, [zeros_like(params)])
    np.testing.assert_allclose(everything["bias"], -LR * 0.1 * params["bias"], rtol=1e-6)


def test_l1_adds_sign_gradient_to_kernels_only():
    params = make_params()
    (updates,) = apply_steps(make_config(name="sgd", l1=0.2), [zeros_like(params)])
    np.testing.assert_allclose(updates["kernel"], -LR * 0.2 * jnp.sign(params["kernel"]), rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0.0)


def test_clip_global_norm_bounds_update_norm():
    grads = {"kernel": jnp.full((2, 3), 30.0), "bias": jnp.array([40.0, 0.0, 0.0])}
    (updates,) = apply_steps(make_config(name="sgd", clip_global_norm=1.0), [grads])
    assert float(optax.tree.norm(updates)) == pytest.approx(LR * 1.0, rel=1e-5)
    small = {"kernel": jnp.full((2, 3), 0.01), "bias": jnp.zeros(3)}
    (unclipped,) = apply_steps(make_config(name="sgd", clip_global_norm=1.0), [small])
    np.testing.assert_allclose(unclipped["kernel"], -LR * 0.01, rtol=1e-6)


def test_clip_value_bounds_each_update_entry():
    grads = {"kernel": jnp.array([[5.0, -7.0, 0.1], [0.0, 2.0, -0.2]]), "bias": jnp.zeros(3)}
    (updates,) = apply_steps(make_config(name="sgd", clip_value=0.5), [grads])
    expected = -LR * jnp.clip(grads["kernel"], -0.5, 0.5)
    np.testing.assert_allclose(updates["kernel"], expected, rtol=1e-6)


def test_learning_rate_follows_schedule_at_update_count():
    grads = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}

    def schedule(count):
        return 0.1 * (count + 1)

    updates = apply_steps(make_config(name="sgd"), [grads] * 3, schedule=schedule)
    for count, step_updates in enumerate(updates):
        np.testing.assert_allclose(step_updates["bias"], -schedule(count), rtol=1e-6)


def test_optimizers_match_torch_over_several_steps():
    torch = pytest.importorskip("torch")
    cases = [
        (
            make_config(name="sgd", momentum=0.9, nesterov=True, weight_decay=0.01),
            lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, nesterov=True, weight_decay=0.01),
        ),
        (
            make_config(name="adam", b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.01),
            lambda p: torch.optim.Adam(p, lr=LR, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
        ),
        (
            make_config(name="adamw", weight_decay=0.1),
            lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=0.1),
        ),
        (
            make_config(name="rmsprop", momentum=0.5, decay=0.9),
            lambda p: torch.optim.RMSprop(p, lr=LR, alpha=0.9, momentum=0.5),
        ),
    ]
    kernel0 = np.array([[1.0, -2.0, 3.0], [-0.5, 0.25, 4.0]], dtype=np.float32)
    grad_steps = [np.sin(np.arange(6, dtype=np.float32) + s).reshape(2, 3) for s in range(5)]
    for config, make_torch_optimizer in cases:
        weight = torch.nn.Parameter(torch.tensor(kernel0))
        torch_optimizer = make_torch_optimizer([weight])
        for grad in grad_steps:
            weight.grad = torch.tensor(grad)
            torch_optimizer.step()
        params = {"kernel": jnp.asarray(kernel0)}
        updates = apply_steps(config, [{"kernel": jnp.asarray(g)} for g in grad_steps], params)
        final = params["kernel"] + sum(u["kernel"] for u in updates)
        np.testing.assert_allclose(final, weight.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "lamb"}, "lamb"),
        ({}, "None"),
        ({"name": "sgd", "weight_decay": -0.1}, "weight_decay"),
        ({"name": "sgd", "weight_decay_mode": "l2"}, "weight_decay_mode"),
        ({"name": "adamw", "weight_decay_mode": "coupled"}, "adamw"),
        ({"name": "sgd", "nesterov": True}, "nesterov"),
        ({"name": "sgd", "momentum": -0.5}, "momentum"),
        ({"name": "adam", "b1": 1.0}, "b1"),
        ({"name": "rmsprop", "decay": 1.5}, "decay"),
        ({"name": "sgd", "l1": -1.0}, "l1"),
        ({"name": "sgd", "clip_global_norm": 0.0}, "clip_global_norm"),
        ({"name": "sgd", "clip_value": "big"}, "clip_value"),
    ],
)
def test_build_optimizer_rejects_invalid_config(fields, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(make_config(**fields), constant(LR))


def test_misspelt_optimizer_field_is_an_error_not_ignored():
    with pytest.raises(ValueError, match=r"unknown optimizer field\(s\) \['momentm'\]"):
        build_optimizer(make_config(name="sgd", momentm=0.9), constant(0.1))
