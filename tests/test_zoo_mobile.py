"""AlexNet, MobileNetV2 and MobileNetV3 (small/large): torchvision's parameter counts, logical
axes and shapes (fast, no torchvision), and logits / train-mode BatchNorm statistics equal to
torchvision's after a weight copy (slow, skipped without torchvision)."""

import functools
import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.core import meta

from jaxdl.layers import hard_sigmoid, hard_swish, make_divisible
from jaxdl.models import get_model
from jaxdl.models.alexnet import adaptive_avg_pool
from jaxdl.models.torchvision_mobile_import import MOBILE_IMPORTERS

# torchvision 0.29's parameter counts for 1000 classes.
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
}
# Small, odd and non-square inputs per model (AlexNet's features need 63x63).
SMALL_INPUT = {
    "alexnet": (67, 99),
    "mobilenet_v2": (33, 17),
    "mobilenet_v3_large": (32, 32),
    "mobilenet_v3_small": (17, 40),
}


def _abstract_init(name: str, size: tuple[int, int]):
    """(logits shape struct, variables of shape structs) without computing anything."""
    model = get_model(name, num_classes=1000)
    x = jnp.zeros((2, *size, 3))
    return jax.eval_shape(
        lambda: model.init_with_output({"params": jax.random.key(0)}, x, train=False)
    )


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_axes_and_output_shape(name: str) -> None:
    logits, variables = _abstract_init(name, SMALL_INPUT[name])
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    leaves = jax.tree.leaves(
        variables["params"], is_leaf=lambda v: isinstance(v, meta.AxisMetadata)
    )
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and all(leaf.names)
    count = sum(int(np.prod(leaf.value.shape)) for leaf in leaves)
    assert count == TORCHVISION_PARAMS[name]
    if name != "alexnet":
        assert jax.tree.leaves(variables["batch_stats"])


def test_adaptive_avg_pool_matches_torch_windows() -> None:
    """Torch's windows, shrinking (13 -> 6, overlapping), equal (6) and growing (4 -> 6)."""
    x = np.random.default_rng(0).normal(size=(1, 13, 4, 2)).astype(np.float32)
    expected = np.zeros((1, 6, 6, 2), np.float32)
    for i in range(6):
        rows = slice(i * 13 // 6, -(-(i + 1) * 13 // 6))
        for j in range(6):
            cols = slice(j * 4 // 6, -(-(j + 1) * 4 // 6))
            expected[0, i, j] = x[0, rows, cols].mean(axis=(0, 1))
    pool = jax.jit(adaptive_avg_pool, static_argnums=1)
    np.testing.assert_allclose(pool(jnp.asarray(x), (6, 6)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pool(jnp.asarray(x[:, :6]), (6, 4)), x[:, :6])


def test_mobile_helpers_match_torchvision_definitions() -> None:
    x = jnp.linspace(-5.0, 5.0, 11)
    np.testing.assert_allclose(hard_sigmoid(x), np.clip(x / 6 + 0.5, 0, 1), atol=1e-7)
    np.testing.assert_allclose(hard_swish(x), x * np.clip(x / 6 + 0.5, 0, 1), atol=1e-6)
    assert [make_divisible(v) for v in (32 * 0.75, 1280 * 0.35, 960 // 4, 3)] == [24, 448, 240, 8]


def test_importer_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unexpected keys"):
        MOBILE_IMPORTERS["alexnet"]({"bogus.weight": np.zeros(3)}, {"params": {}})


# ---------------------------------------------------------------- parity with torchvision (slow)

INPUT_SIZE = {
    "alexnet": 224,
    "mobilenet_v2": 160,
    "mobilenet_v3_large": 128,
    "mobilenet_v3_small": 224,
}
needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="needs torchvision"
)
# torch momentum of each family's BatchNorm (Flax's is 1 - it).
TORCH_BN_MOMENTUM = {"mobilenet_v2": 0.1, "mobilenet_v3_large": 0.01, "mobilenet_v3_small": 0.01}


def _torch_model(name: str):
    """Randomly initialised torchvision model, BatchNorm affine and running stats randomised,
    Linear weights of std 1 / sqrt(fan_in) (torchvision's std 0.01 gives logits of ~0.01, too
    small for atol 1e-4 to mean much)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
                module.bias.normal_(0.0, 0.1)
    return model


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _jax_variables(name: str, state: dict[str, np.ndarray], size: int):
    model = get_model(name, num_classes=1000)
    init = jax.jit(functools.partial(model.init, train=False))  # one compile, not op by op
    variables = init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return model, MOBILE_IMPORTERS[name](state, variables)


@pytest.mark.slow
@needs_torchvision
@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_logits_equal_torchvision_after_weight_copy(name: str) -> None:
    torch = pytest.importorskip("torch")
    tv = _torch_model(name).eval()
    assert sum(p.numel() for p in tv.parameters()) == TORCHVISION_PARAMS[name]
    size = INPUT_SIZE[name]
    x = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = tv(torch.from_numpy(x)).numpy()
    model, variables = _jax_variables(name, _state(tv), size)
    apply = jax.jit(functools.partial(model.apply, train=False))
    logits = apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_torchvision
@pytest.mark.parametrize("name", sorted(TORCH_BN_MOMENTUM))
def test_train_mode_batch_stats_follow_torch_momentum(name: str) -> None:
    """One train-mode step moves the running statistics as torch's do, up to torch's Bessel
    correction of the batch variance (n / (n - 1); Flax's BatchNorm uses the biased one)."""
    torch = pytest.importorskip("torch")
    tv = _torch_model(name)
    norms = {n: m for n, m in tv.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {m.momentum for m in norms.values()} == {TORCH_BN_MOMENTUM[name]}
    sizes: dict[str, int] = {}
    for key, module in norms.items():
        module.register_forward_hook(
            lambda mod, inp, out, key=key: sizes.__setitem__(key, inp[0].numel() // inp[0].shape[1])
        )
    before = _state(tv)
    x = np.random.default_rng(2).normal(size=(4, 3, 64, 64)).astype(np.float32)
    tv.train()
    with torch.no_grad():
        tv(torch.from_numpy(x))
    after = _state(tv)
    for key, n in sizes.items():
        m, old = norms[key].momentum, before[f"{key}.running_var"]
        batch_var = (after[f"{key}.running_var"] - (1 - m) * old) / m * (n - 1) / n
        after[f"{key}.running_var"] = (1 - m) * old + m * batch_var
    model, variables = _jax_variables(name, before, 64)
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    _, updated = apply(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1)), rngs={"dropout": jax.random.key(0)}
    )
    expected = MOBILE_IMPORTERS[name](after, variables)["batch_stats"]
    got = traverse_util.flatten_dict(updated["batch_stats"])
    for path, value in traverse_util.flatten_dict(expected).items():
        np.testing.assert_allclose(got[path], value, rtol=1e-4, atol=1e-5, err_msg=str(path))
