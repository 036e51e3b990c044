"""DenseNet and EfficientNet: parameter counts, logical axes, shapes, stochastic depth, and (slow,
when torchvision imports) logits and train-mode BN statistics against torchvision's."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.layers import DenseBlock, StochasticDepth
from jaxdl.models import get_model
from jaxdl.models.torchvision_dense_import import DENSE_IMPORTERS

# torchvision's parameter counts for 1000 classes (``weights.meta['num_params']``).
TORCHVISION_PARAMS = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
}

PARAM_AXES = {"conv_height", "conv_width", "conv_in", "conv_out", "embed", "classes"}


@functools.cache
def _abstract(name: str) -> tuple[jax.ShapeDtypeStruct, dict]:
    """(logits, variables) shapes of ``name`` for 1000 classes on a [2, 32, 32, 3] batch."""
    model = get_model(name, num_classes=1000)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)


# The smallest of each family in CI; the larger variants (3 s of tracing each) in make test-slow.
FAST = ("densenet121", "efficientnet_b0")


@pytest.mark.parametrize(
    "name",
    [
        n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
        for n in sorted(TORCHVISION_PARAMS)
    ],
)
def test_counts_axes_and_shapes(name):
    logits, variables = _abstract(name)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    leaves = jax.tree.leaves(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
    )
    assert sum(int(np.prod(nn.unbox(leaf).shape)) for leaf in leaves) == TORCHVISION_PARAMS[name]
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= PARAM_AXES
    assert set(variables) == {"params", "batch_stats"}


def test_stochastic_depth_drops_whole_rows():
    rate, rows = 0.3, 4000
    x = jnp.ones((rows, 2, 2, 3))
    layer = StochasticDepth(rate)
    assert jnp.array_equal(layer.apply({}, x, train=False), x)
    # 'rbg' keys compile far faster than the default threefry on CPU.
    apply = jax.jit(lambda key: layer.apply({}, x, train=True, rngs={"dropout": key}))
    y = np.asarray(apply(jax.random.key(1, impl="rbg")))
    per_row = y.reshape(rows, -1)
    assert np.all(per_row == per_row[:, :1]), "a row was only partly dropped"
    kept = per_row[:, 0] != 0
    np.testing.assert_allclose(per_row[kept, 0], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(kept.mean() - (1.0 - rate)) < 0.03
    assert abs(y.mean() - 1.0) < 0.05
    assert jnp.array_equal(StochasticDepth(0.0).apply({}, x, train=True), x)


# --- parity with torchvision (slow; needs an importable torchvision, no download) -------------


def _torchvision():
    try:
        import torch
        import torchvision
    except Exception:  # PyPI's torchvision fails to import beside torch 2.13 (not ImportError)
        pytest.skip("torchvision does not import")
    return torch, torchvision


def _torch_model(name: str, train: bool):
    """A randomly initialised torchvision ``name`` with random BN affine and running stats;
    dropout and stochastic depth off when ``train`` (so both sides are deterministic)."""
    torch, torchvision = _torchvision()
    torch.manual_seed(0)
    kwargs = {}
    if train and name.startswith("efficientnet"):
        kwargs = {"dropout": 0.0, "stochastic_depth_prob": 0.0}
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.train(train)


def _jax_variables(name: str, model: nn.Module, state_dict: dict, shape: tuple) -> dict:
    """``state_dict`` copied into ``model``'s (abstract) variables."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return nn.unbox(DENSE_IMPORTERS[name](state_dict, abstract))


def _numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_eval_logits_match_torchvision(name):
    torch, _ = _torchvision()
    tv = _torch_model(name, train=False)
    assert sum(p.numel() for p in tv.parameters()) == TORCHVISION_PARAMS[name]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = tv(torch.from_numpy(x)).numpy()
    model = get_model(name, num_classes=1000)
    variables = _jax_variables(name, model, _numpy_state(tv), (2, 64, 64, 3))
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, x.transpose(0, 2, 3, 1)
    )
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0"])
def test_train_mode_batch_stats_match_torchvision(name):
    """One training-mode forward: logits and updated running statistics equal torch's, up to
    torch's unbiased running variance (n / (n - 1) times the biased one Flax uses)."""
    torch, _ = _torchvision()
    tv = _torch_model(name, train=True)
    before = _numpy_state(tv)
    counts: dict[str, int] = {}
    for module_name, module in tv.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(
                lambda m, inputs, out, key=module_name: counts.__setitem__(
                    key, inputs[0].numel() // inputs[0].shape[1]
                )
            )
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected_logits = tv(torch.from_numpy(x)).numpy()
    after = _numpy_state(tv)
    for key, n in counts.items():
        old, new = before[f"{key}.running_var"], after[f"{key}.running_var"]
        after[f"{key}.running_var"] = 0.9 * old + (new - 0.9 * old) * (n - 1) / n

    kwargs = {"dropout_rate": 0.0, "stochastic_depth_rate": 0.0} if "efficient" in name else {}
    model = get_model(name, num_classes=1000, **kwargs)
    variables = _jax_variables(name, model, before, (4, 64, 64, 3))
    expected = _jax_variables(name, model, after, (4, 64, 64, 3))

    def step(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])

    logits, updates = jax.jit(step)(variables, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(logits), expected_logits, rtol=1e-4, atol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5),
        updates["batch_stats"],
        expected["batch_stats"],
    )


@pytest.mark.slow
def test_memory_efficient_dense_block_same_values_and_grads():
    block = DenseBlock(num_layers=3, growth_rate=4, bn_size=2)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 5))
    variables = block.init(jax.random.key(1), x, train=False)

    def value_and_grad(module):
        def loss(params):
            y, _ = module.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(y**2)

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    plain = value_and_grad(block)
    remat = value_and_grad(block.clone(memory_efficient=True))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), plain, remat)


@pytest.mark.slow
def test_import_errors_and_legacy_keys():
    tv = _torch_model("densenet121", train=False)
    state = _numpy_state(tv)
    model = get_model("densenet121", num_classes=1000)
    reference = _jax_variables("densenet121", model, state, (1, 32, 32, 3))

    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()
    }
    renamed = _jax_variables("densenet121", model, legacy, (1, 32, 32, 3))
    jax.tree.map(np.testing.assert_array_equal, renamed, reference)

    missing = dict(state)
    del missing["features.norm5.weight"]
    with pytest.raises(ValueError, match=r"missing 1 key\(s\) \['features.norm5.weight'\]"):
        _jax_variables("densenet121", model, missing, (1, 32, 32, 3))
    with pytest.raises(ValueError, match="unexpected 1 key"):
        _jax_variables("densenet121", model, {**state, "extra.weight": np.zeros(1)}, (1, 32, 32, 3))
    wrong = {**state, "classifier.bias": np.zeros(10, np.float32)}
    with pytest.raises(ValueError, match="classifier.bias has shape"):
        _jax_variables("densenet121", model, wrong, (1, 32, 32, 3))
    efficient = get_model("efficientnet_b0", num_classes=1000)
    with pytest.raises(ValueError, match="not a torchvision EfficientNet"):
        _jax_variables("efficientnet_b0", efficient, state, (1, 32, 32, 3))
