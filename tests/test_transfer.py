"""Transfer learning: frozen stages, per-group learning rates and frozen BatchNorm statistics on a
tiny ResNet, and the config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdl import config_sections
from jaxdl.errors import ConfigError
from jaxdl.models.resnet import ResNet
from jaxdl.optim import build_optimizer
from jaxdl.optim.transfer import with_transfer
from jaxdl.train.state import init_train_state
from jaxdl.train.steps import make_train_step

LR = 0.1
IMAGES = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
BATCH = {"inputs": IMAGES, "labels": jnp.arange(4) % 3}


def _transfer(**fields) -> ml_collections.ConfigDict:
    section = config_sections.transfer()
    section.update(fields)
    return section


MODEL = ResNet(depth=8, num_classes=3, width=2, zero_init_residual=False, conv_impl="plain")


@pytest.fixture(scope="module")
def variables():
    """A CIFAR-layout ResNet-8 (stem, stage1..3, head) of width 2: its variables' shapes, filled
    with seeded noise (no init compile: what these tests check does not depend on the values)."""
    shapes = jax.eval_shape(lambda: MODEL.init(jax.random.PRNGKey(0), IMAGES, train=False))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def _tx(transfer: ml_collections.ConfigDict | None) -> optax.GradientTransformation:
    """Plain SGD at ``LR``, split by ``transfer``."""
    tx = build_optimizer(ml_collections.ConfigDict({"name": "sgd"}), optax.constant_schedule(LR))
    return with_transfer(tx, transfer)


def _update(params, transfer) -> tuple[dict, dict]:
    """(updates, new params) of one step with random gradients."""
    tx = _tx(transfer)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(2), p.shape), params)

    @jax.jit
    def step(params, grads):
        updates, _ = tx.update(grads, tx.init(params), params)
        return updates, optax.apply_updates(params, updates)

    return jax.device_get(step(params, grads))


def _modules(tree) -> dict:
    """Top-level module -> its leaves as numpy arrays."""
    tree = jax.tree.map(np.asarray, tree)
    return {name: jax.tree.leaves(sub) for name, sub in tree.items()}


def _changed(before, after) -> set[str]:
    old, new = _modules(before), _modules(after)
    return {
        name
        for name in old
        if not all(np.array_equal(a, b) for a, b in zip(old[name], new[name], strict=True))
    }


@pytest.mark.slow  # compiles train steps (CI's time budget)
def test_feature_extraction_keeps_the_backbone_bit_identical_and_trains_the_head(variables):
    params = variables["params"]
    _, new = _update(params, _transfer(trainable_stages=0))
    assert _changed(params, new) == {"head"}


@pytest.mark.slow  # compiles train steps (CI's time budget)
def test_the_last_n_stages_train_and_the_rest_stays_frozen(variables):
    params = variables["params"]
    _, new = _update(params, _transfer(trainable_stages=1))
    assert _changed(params, new) == {"stage3_block1", "head"}
    _, new = _update(params, _transfer(trainable_stages=None))
    assert _changed(params, new) == set(params)


@pytest.mark.slow  # compiles train steps (CI's time budget)
def test_the_backbone_learning_rate_is_scaled_and_the_heads_is_not(variables):
    params = variables["params"]
    got, _ = _update(params, _transfer(backbone_lr_scale=0.25))
    want, _ = _update(params, None)
    got, want = _modules(got), _modules(want)
    for name in got:
        ratio = 1.0 if name == "head" else 0.25
        for g, w in zip(got[name], want[name], strict=True):
            np.testing.assert_allclose(g, ratio * w, rtol=1e-6, err_msg=name)


@pytest.mark.slow  # compiles train steps (CI's time budget)
def test_frozen_batch_norm_keeps_the_running_statistics():
    state = init_train_state(MODEL, _tx(None), jax.random.PRNGKey(0), IMAGES)
    step = jax.jit(make_train_step(freeze_batch_stats=True))
    after, _ = step(state, BATCH)
    before, after = jax.device_get((state, after))
    assert _changed(before.batch_stats, after.batch_stats) == set()
    assert _changed(before.params, after.params) == set(before.params)  # the step trained


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"trainable_stages": -1}, r"trainable_stages must be >= 0 or None, got -1"),
        ({"backbone_lr_scale": -2.0}, r"backbone_lr_scale must be >= 0"),
        ({"trainable_stages": 4}, r"trainable_stages=4 but the model has 3 stages"),
        ({"trainable_stages": 2, "head": ("stage1_block1",)}, None),
    ],
)
def test_bad_transfer_configs_are_one_line_errors(variables, fields, message):
    params = variables["params"]
    if message is None:  # a custom head is accepted
        _tx(_transfer(**fields)).init(params)
        return
    with pytest.raises((ConfigError, ValueError), match=message) as error:
        _tx(_transfer(**fields)).init(params)
    assert "\n" not in str(error.value)


def test_an_unknown_transfer_field_is_refused():
    section = _transfer()
    section.freeze_bn = True
    with pytest.raises(ValueError, match=r"unknown transfer field\(s\) \['freeze_bn'\]"):
        with_transfer(optax.sgd(LR), section)
