"""Tests for jaxdl.models: registry, shapes/dtypes, param counts, logical names, BN, bridges."""

import inspect
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdl.layers
import jaxdl.models
from jaxdl.models import (
    VGG,
    BasicBlock,
    Bottleneck,
    LeNet5,
    ResNet,
    available_models,
    get_model,
    register_model,
    registry,
)

# 'rbg' keys compile far faster than the default threefry on CPU, keeping these tests quick.
KEY = jax.random.key(0, impl="rbg")
DIGITS = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))  # sklearn-digits-sized batch

PARAM_AXES = {"conv_height", "conv_width", "conv_in", "conv_out", "embed", "mlp", "classes"}
LOGICAL_RULES = [
    ("batch", "data"),
    *((name, None) for name in ("height", "width", "channels", *sorted(PARAM_AXES))),
]

# Small configurations of every registered model that accept an 8x8x1 input.
SMALL_KWARGS = {
    "lenet5": dict(num_classes=10),
    "resnet": dict(depth=20, num_classes=10, width=4),
    "vgg": dict(depth=11, num_classes=10, width_multiplier=1 / 16, hidden=16),
    "vgg11": dict(num_classes=10, width_multiplier=1 / 16, hidden=16),
    "vgg16": dict(num_classes=10, width_multiplier=1 / 16, hidden=16),
    **{
        f"resnet{depth}": dict(num_classes=10, width=4)
        for depth in (18, 34, 50, 101, 152, 20, 32, 56)
    },
}


def _shapes(model: nn.Module, x: jax.Array, train: bool = False):
    """(output, variables) as ShapeDtypeStructs, without running the model."""
    return jax.eval_shape(
        lambda: model.init_with_output({"params": KEY, "dropout": KEY}, x, train=train)
    )


def _num_params(params) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _boxed_leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


@pytest.fixture(scope="module")
def resnet20():
    """A narrow CIFAR ResNet-20 and its initialised variables, shared to save compile time."""
    model = ResNet(depth=20, num_classes=10, width=4)
    return model, jax.jit(lambda x: model.init(KEY, x, train=False))(DIGITS)


def test_every_registered_image_model_has_a_small_test_config():
    # Other packages may register their own models; every one defined here must be covered.
    ours = {
        name
        for name in available_models()
        if getattr(registry._REGISTRY[name], "func", registry._REGISTRY[name]).__module__
        in ("jaxdl.models.resnet", "jaxdl.models.cnn")
    }
    assert ours == set(SMALL_KWARGS)


@pytest.mark.parametrize("name", sorted(SMALL_KWARGS))
def test_registered_model_gives_float32_logits_with_named_params(name):
    model = get_model(name, **SMALL_KWARGS[name])
    logits, variables = _shapes(model, DIGITS, train=True)
    assert logits.shape == (2, 10)
    assert logits.dtype == jnp.float32
    leaves = _boxed_leaves(variables["params"])
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= PARAM_AXES


IMAGENET = {"num_classes": 1000}


@pytest.mark.parametrize(
    ("name", "kwargs", "input_shape", "expected"),
    [
        ("resnet18", IMAGENET, (1, 32, 32, 3), 11_689_512),  # torchvision
        ("resnet34", IMAGENET, (1, 32, 32, 3), 21_797_672),  # torchvision
        ("resnet50", IMAGENET, (1, 32, 32, 3), 25_557_032),  # torchvision
        ("resnet101", IMAGENET, (1, 32, 32, 3), 44_549_160),  # torchvision
        ("resnet152", IMAGENET, (1, 32, 32, 3), 60_192_808),  # torchvision
        # He et al. CIFAR ResNet-20 with 1x1-conv projection shortcuts.
        ("resnet20", {"num_classes": 10}, (1, 32, 32, 3), 272_474),
        # LeCun et al. 1998 (VALID padding on 32x32).
        ("lenet5", {"num_classes": 10, "padding": "VALID"}, (1, 32, 32, 1), 61_706),
    ],
)
def test_param_counts_match_reference_implementations(name, kwargs, input_shape, expected):
    _, variables = _shapes(get_model(name, **kwargs), jnp.zeros(input_shape))
    assert _num_params(variables["params"]) == expected


def test_resnet50_imagenet_stem_on_224_images_has_torchvision_feature_sizes():
    model = get_model("resnet50", num_classes=1000)
    x = jnp.zeros((1, 224, 224, 3))
    (logits, state) = jax.eval_shape(
        lambda: model.init_with_output(KEY, x, train=False, capture_intermediates=True)
    )
    inter = state["intermediates"]
    assert logits.shape == (1, 1000)
    assert inter["stem_conv"]["__call__"][0].shape == (1, 112, 112, 64)
    assert inter["stage1_block3"]["__call__"][0].shape == (1, 56, 56, 256)
    assert inter["stage4_block3"]["__call__"][0].shape == (1, 7, 7, 2048)


def test_auto_stem_follows_layout_and_can_be_overridden():
    def stem_out(model):
        _, state = jax.eval_shape(
            lambda: model.init_with_output(
                KEY, jnp.zeros((1, 32, 32, 3)), train=False, capture_intermediates=True
            )
        )
        return state["intermediates"]["stage1_block1"]["__call__"][0].shape

    assert stem_out(ResNet(depth=18, num_classes=2, width=4)) == (1, 8, 8, 4)
    assert stem_out(ResNet(depth=18, num_classes=2, width=4, stem="cifar")) == (1, 32, 32, 4)
    assert stem_out(ResNet(depth=20, num_classes=2)) == (1, 32, 32, 16)
    assert stem_out(ResNet(depth=20, num_classes=2, stem="imagenet")) == (1, 8, 8, 16)


@pytest.mark.parametrize(
    "model",
    [
        LeNet5(num_classes=10, padding="SAME", activation="tanh"),
        # CI time: VGG-11 runs with `make test-slow` (11 s).
        pytest.param(
            VGG(depth=11, num_classes=10, batch_norm=True, width_multiplier=1 / 16, hidden=16),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["lenet5-tanh", "vgg11-bn"],
)
def test_small_cnns_run_on_digits_in_train_and_eval(model):
    variables = jax.jit(lambda x: model.init(KEY, x, train=False))(DIGITS)
    eval_logits = model.apply(variables, DIGITS, train=False)
    train_logits, _ = model.apply(
        variables, DIGITS, train=True, rngs={"dropout": KEY}, mutable=["batch_stats"]
    )
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, 10)
        assert logits.dtype == jnp.float32
        assert np.isfinite(logits).all()


def test_resnet_dropout_is_active_in_train_mode_only(resnet20):
    model, variables = resnet20
    dropout_model = model.clone(dropout_rate=0.5)
    np.testing.assert_array_equal(
        dropout_model.apply(variables, DIGITS, train=False),
        model.apply(variables, DIGITS, train=False),
    )

    def train_logits(seed: int) -> jax.Array:
        rngs = {"dropout": jax.random.key(seed, impl="rbg")}
        logits, _ = dropout_model.apply(
            variables, DIGITS, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        return logits

    first, second = train_logits(1), train_logits(2)
    assert np.isfinite(first).all()
    assert not np.allclose(first, second)


def test_resnet_group_norm_runs_without_batch_stats(resnet20):
    model, variables = resnet20
    # GroupNorm's scale/bias have the same names and shapes as BatchNorm's, so reuse them.
    logits = model.clone(norm="group").apply({"params": variables["params"]}, DIGITS, train=True)
    assert logits.shape == (2, 10)
    assert np.isfinite(logits).all()


def test_resnet_group_and_layer_norm_params_are_named_and_have_no_batch_stats():
    for norm in ("group", "layer", "none"):
        model = ResNet(depth=20, num_classes=3, width=4, norm=norm)
        _, variables = _shapes(model, DIGITS, train=True)
        assert "batch_stats" not in variables
        assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in _boxed_leaves(variables))


@pytest.mark.parametrize(
    "model",
    [
        ResNet(depth=20, num_classes=10, width=4, dtype=jnp.bfloat16),
        VGG(
            depth=11,
            num_classes=10,
            batch_norm=True,
            width_multiplier=1 / 16,
            hidden=16,
            dtype=jnp.bfloat16,
        ),
        LeNet5(num_classes=10, padding="SAME", dtype=jnp.bfloat16),
    ],
    ids=["resnet20", "vgg11", "lenet5"],
)
def test_bf16_compute_keeps_float32_params_and_logits(model):
    # Dtypes are static, so eval_shape checks them without running the model.
    logits, variables = jax.eval_shape(
        lambda: model.init_with_output(KEY, DIGITS, train=False, capture_intermediates=True)
    )
    intermediates = variables.pop("intermediates")
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32
    feature_maps = [
        out
        for name, sub in intermediates.items()
        if name.startswith(("conv", "stage", "stem"))
        for out in sub["__call__"]
    ]
    assert feature_maps
    assert {out.dtype for out in feature_maps} == {jnp.dtype(jnp.bfloat16)}


def test_bf16_resnet_runs_with_float32_variables(resnet20):
    model, variables = resnet20
    logits = model.clone(dtype=jnp.bfloat16).apply(variables, DIGITS, train=False)
    reference = model.apply(variables, DIGITS, train=False)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.1)


def test_batch_stats_update_in_train_mode_only(resnet20):
    model, variables = resnet20
    _, train_updates = model.apply(variables, DIGITS, train=True, mutable=["batch_stats"])
    _, eval_updates = model.apply(variables, DIGITS, train=False, mutable=["batch_stats"])
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(train_updates["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    for a, b in zip(old, jax.tree.leaves(eval_updates["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("block", "channels"),
    [
        (BasicBlock(features=4), 4),  # identity shortcut
        (BasicBlock(features=8, strides=2), 4),  # projection shortcut
        (Bottleneck(features=2), 8),  # identity shortcut (2 * 4 = 8)
        (Bottleneck(features=4, strides=2), 8),  # projection shortcut
    ],
)
def test_zero_init_residual_makes_initial_branch_contribute_nothing(block, channels):
    x = jax.random.uniform(KEY, (2, 6, 6, channels))
    variables = block.init(KEY, x, train=False)
    params = nn.unbox(variables["params"])
    last_norm = f"norm{len(block.branch_convs())}"
    np.testing.assert_array_equal(params[last_norm]["scale"], 0.0)

    def output(conv1_shift: float, last_scale: float) -> jax.Array:
        changed = {
            **params,
            "conv1": jax.tree.map(lambda p: p + conv1_shift, params["conv1"]),
            last_norm: {**params[last_norm], "scale": params[last_norm]["scale"] * 0 + last_scale},
        }
        return block.apply({**variables, "params": changed}, x, train=False)

    out = block.apply(variables, x, train=False)
    # With a zero last scale the branch outputs zero, so its first conv cannot matter ...
    np.testing.assert_allclose(output(0.5, 0.0), out, atol=1e-6)
    # ... whereas with a unit scale it does (the control that this test can fail).
    assert not np.allclose(output(0.5, 1.0), output(0.0, 1.0), atol=1e-3)
    if "proj_conv" not in params:
        np.testing.assert_allclose(out, x, atol=1e-6)  # relu(x + 0) == x for x >= 0
    plain_params = nn.unbox(block.clone(zero_init_residual=False).init(KEY, x, train=False))
    np.testing.assert_array_equal(plain_params["params"][last_norm]["scale"], 1.0)


def _train_argument(module_class: type[nn.Module]) -> inspect.Parameter:
    return inspect.signature(module_class.__call__).parameters["train"]


def test_every_model_and_block_takes_train_as_a_required_keyword_only_argument():
    classes = {
        getattr(factory, "func", factory)
        for name, factory in registry._REGISTRY.items()
        if getattr(factory, "func", factory).__module__.startswith("jaxdl.models.")
    }
    classes |= {
        obj
        for name in jaxdl.models.__all__
        if isinstance(obj := getattr(jaxdl.models, name), type) and issubclass(obj, nn.Module)
    }
    assert {cls.__name__ for cls in classes} >= {
        "BasicBlock",
        "Bottleneck",
        "LeNet5",
        "ResNet",
        "TransformerBlock",
        "TransformerClassifier",
        "TransformerLM",
        "TransformerStack",
        "VGG",
    }
    for cls in classes:
        assert _train_argument(cls).kind is inspect.Parameter.KEYWORD_ONLY, cls
        assert _train_argument(cls).default is inspect.Parameter.empty, cls


def test_blocks_are_defined_in_layers_and_re_exported_by_models():
    for name in ("BasicBlock", "Bottleneck", "TransformerBlock", "TransformerStack"):
        assert getattr(jaxdl.models, name) is getattr(jaxdl.layers, name)
        assert getattr(jaxdl.layers, name).__module__.startswith("jaxdl.layers.")


def test_registry_rejects_unknown_names_and_kwargs():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet7'.*resnet18"):
        get_model("resnet7", num_classes=10)
    with pytest.raises(TypeError, match=r"'resnet18'.*\['colour'\]"):
        get_model("resnet18", num_classes=10, colour="red")
    with pytest.raises(TypeError, match=r"'resnet50'.*\['depth'\]"):
        get_model("resnet50", num_classes=10, depth=18)
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet")(ResNet)


def test_register_model_makes_a_new_model_available(monkeypatch):
    # Register into a copy so the test model does not leak into other tests.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DEFAULTS", dict(registry._DEFAULTS))

    @register_model("test_tiny_lenet", defaults={"num_classes": 4, "padding": "SAME"})
    class TinyLeNet(LeNet5):
        pass

    assert "test_tiny_lenet" in available_models()
    model = get_model("test_tiny_lenet", num_classes=3)
    assert isinstance(model, TinyLeNet)
    # A default applies unless the caller passes its own.
    assert (model.num_classes, model.padding) == (3, "SAME")
    assert get_model("test_tiny_lenet").num_classes == 4


def test_get_model_passes_kwargs_and_aliases_fix_depth():
    model = get_model("resnet", depth=56, num_classes=7, width=8)
    assert (model.depth, model.num_classes, model.width) == (56, 7, 8)
    assert get_model("resnet32", num_classes=2).depth == 32
    assert get_model("vgg16", num_classes=2).depth == 16
    # The GPT-2 presets' layout is a default (overridable), their sizes are fixed.
    gpt2 = get_model("gpt2_small")
    assert (gpt2.qkv_fused, gpt2.vocab_divisible_by, gpt2.vocab_size) == (True, 128, 50257)
    assert not get_model("gpt2_small", qkv_fused=False).qkv_fused


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: ResNet(depth=21, num_classes=10), ValueError, "Unsupported ResNet depth 21"),
        (lambda: ResNet(depth=20, num_classes=10, stem="tiny"), ValueError, "stem"),
        (lambda: ResNet(depth=20, num_classes=0), ValueError, "num_classes"),
        (lambda: VGG(depth=13, num_classes=10), ValueError, "VGG depth"),
        (lambda: LeNet5(num_classes=10, activation="gelu"), ValueError, "activation"),
        (lambda: LeNet5(num_classes=10, padding="same"), ValueError, "padding"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_inputs_get_clear_errors():
    model = ResNet(depth=20, num_classes=10, width=4)
    with pytest.raises(ValueError, match=r"\[batch, H, W, C\]"):
        model.init(KEY, jnp.zeros((8, 8, 1)), train=False)
    with pytest.raises(TypeError, match="floating-point"):
        model.init(KEY, jnp.zeros((1, 8, 8, 1), jnp.uint8), train=False)
    with pytest.raises(ValueError, match="padding='SAME'"):
        LeNet5(num_classes=10, padding="VALID").init(KEY, DIGITS, train=False)


def test_models_run_jitted_under_a_mesh_with_logical_rules(resnet20):
    model, variables = resnet20
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        specs = nn.logical_to_mesh(nn.get_partition_spec(variables))
        assert specs["params"]["stem_conv"]["kernel"] == jax.sharding.PartitionSpec(
            None, None, None, None
        )
        apply = jax.jit(model.apply, static_argnames="train")
        logits = apply(variables, DIGITS, train=False)
    np.testing.assert_allclose(logits, model.apply(variables, DIGITS, train=False), atol=1e-5)


@pytest.mark.slow  # CI's time budget: test_transformer's bridge test covers the path
def test_nnx_bridge_matches_linen_apply_with_the_same_variables():
    model = get_model("resnet20", num_classes=10, width=4)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    # flax 0.12 shards NNX variables eagerly from their logical names, which needs a mesh and
    # rules mapping every name (or `nnx.use_eager_sharding(False)`).
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        nnx_model = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(KEY))
        nnx.bridge.lazy_init(nnx_model, DIGITS, train=False)
        nnx_logits = nnx_model(DIGITS, train=False)
    variables = {
        "params": nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(nnx_model, nnx.BatchStat)),
    }
    linen_logits = model.apply(variables, DIGITS, train=False)
    assert nnx_logits.shape == (2, 10)
    np.testing.assert_allclose(nnx_logits, linen_logits, rtol=1e-6, atol=1e-6)


# make test-slow: the Transformer's remat policies are tested in make test.
@pytest.mark.slow
def test_resnet_remat_gives_the_same_loss_and_gradients():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)

    def loss_and_grads(policy):
        model = ResNet(depth=8, num_classes=10, stem="cifar", width=8, remat_policy=policy)
        variables = nn.meta.unbox(model.init(jax.random.key(0), x, train=False))

        def loss(params):
            logits, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return jnp.mean(logits**2)

        return jax.value_and_grad(loss)(variables["params"]), jax.make_jaxpr(loss)(
            variables["params"]
        )

    (base_loss, base_grads), base_jaxpr = loss_and_grads("none")
    (loss, grads), jaxpr = loss_and_grads("dots_saveable")
    assert "remat" in str(jaxpr) and "remat" not in str(base_jaxpr)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, base_grads
    )
