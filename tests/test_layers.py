"""Tests for jaxdl.layers: logical axis names, flat param trees, norm behaviour, bad input,
the ``train`` call convention and standalone use of the blocks."""

import ast
import dataclasses
import inspect
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdl.layers
from jaxdl.layers import (
    CONV_KERNEL_AXES,
    NORM_KINDS,
    BasicBlock,
    Bottleneck,
    Conv,
    Dense,
    DepthwiseConv1D,
    Identity,
    LearnedPositionEmbedding,
    SinusoidalPositionEmbedding,
    TransformerBlock,
    TransformerStack,
    check_image_batch,
    make_norm,
    segment_mask,
    sinusoidal_positions,
)
from jaxdl.layers.normalization import largest_divisor_at_most

# 'rbg' keys compile far faster than the default threefry on CPU, keeping tests quick.
KEY = jax.random.key(0, impl="rbg")


def _names(tree) -> dict[str, tuple[str, ...]]:
    """Map 'path/to/param' -> logical names for every boxed leaf."""
    leaves = jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    return {
        "/".join(k.key for k in path): leaf.names
        for path, leaf in leaves
        if isinstance(leaf, nn.LogicallyPartitioned)
    }


def test_conv_standalone_init_apply_names_params_without_extra_nesting():
    conv = Conv(features=5, kernel_size=3)
    x = jax.random.normal(KEY, (2, 6, 6, 3))
    variables = conv.init(KEY, x)
    assert _names(variables["params"]) == {"kernel": CONV_KERNEL_AXES, "bias": ("conv_out",)}
    y = conv.apply(variables, x)
    assert y.shape == (2, 6, 6, 5)
    reference = nn.Conv(5, (3, 3)).apply(nn.unbox(variables), x)
    np.testing.assert_allclose(y, reference, rtol=1e-6)


def test_conv_strides_and_dtypes_are_forwarded():
    conv = Conv(features=4, strides=2, use_bias=False, dtype=jnp.bfloat16)
    x = jnp.ones((1, 8, 8, 2))
    variables = conv.init(KEY, x)
    assert set(variables["params"]) == {"kernel"}
    assert variables["params"]["kernel"].value.dtype == jnp.float32
    y = conv.apply(variables, x)
    assert y.shape == (1, 4, 4, 4)
    assert y.dtype == jnp.bfloat16


def test_conv_rejects_non_2d_kernel_and_non_image_input():
    with pytest.raises(ValueError, match="2-D kernels"):
        Conv(features=2, kernel_size=(3, 3, 3)).init(KEY, jnp.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match=r"\[batch, H, W, C\]"):
        Conv(features=2).init(KEY, jnp.ones((4, 4, 1)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_dilation": 2, "feature_group_count": 2, "padding": "SAME"},
        {"kernel_size": (3, 2), "strides": (2, 1), "padding": "CIRCULAR"},
        {"padding": ((2, 0), (1, 1)), "use_bias": False},
    ],
)
def test_conv_has_nn_conv_params_and_results_for_its_options(kwargs):
    # 3x3 input: smaller than the dilated kernel, so the CPU path uses its im2col formulation.
    conv = Conv(features=4, **kwargs)
    x = jax.random.normal(KEY, (2, 3, 3, 6))
    variables = conv.init(KEY, x)
    reference = nn.Conv(4, **{"kernel_size": (3, 3), **kwargs})
    assert jax.tree.map(jnp.shape, nn.unbox(variables)) == jax.tree.map(
        jnp.shape, reference.init(KEY, x)
    )
    np.testing.assert_allclose(
        conv.apply(variables, x), reference.apply(nn.unbox(variables), x), rtol=1e-5, atol=1e-5
    )


def test_conv_rejects_groups_that_do_not_divide_channels():
    with pytest.raises(ValueError, match="feature_group_count"):
        Conv(features=4, feature_group_count=3).init(KEY, jnp.ones((1, 4, 4, 6)))


def test_depthwise_conv1d_names_params_like_a_grouped_nn_conv():
    layer = DepthwiseConv1D(kernel_size=5)
    x = jax.random.normal(KEY, (2, 9, 6))
    variables = layer.init(KEY, x)
    assert _names(variables["params"]) == {
        "kernel": ("conv_width", "conv_in", "conv_out"),
        "bias": ("conv_out",),
    }
    assert variables["params"]["kernel"].value.shape == (5, 1, 6)
    assert layer.apply(variables, x).shape == (2, 9, 6)
    with pytest.raises(ValueError, match=r"\[batch, T, C\]"):
        layer.init(KEY, jnp.ones((2, 9, 6, 1)))


def test_dense_names_kernel_and_bias_from_kernel_axes():
    dense = Dense(features=7, kernel_axes=("embed", "mlp"))
    x = jnp.ones((3, 4))
    variables = dense.init(KEY, x)
    assert _names(variables["params"]) == {"kernel": ("embed", "mlp"), "bias": ("mlp",)}
    assert dense.apply(variables, x).shape == (3, 7)
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")


def test_dense_rejects_wrong_number_of_kernel_axes():
    with pytest.raises(ValueError, match="kernel_axes"):
        Dense(features=2, kernel_axes=("embed",)).init(KEY, jnp.ones((1, 3)))


@pytest.mark.parametrize("kind", ["batch", "group", "layer"])
def test_make_norm_names_scale_and_bias_and_normalises(kind):
    norm = make_norm(kind, axis_name="conv_out", train=True)
    x = 3.0 + 2.0 * jax.random.normal(KEY, (4, 5, 5, 8))
    variables = norm.init(KEY, x)
    assert _names(variables["params"]) == {"scale": ("conv_out",), "bias": ("conv_out",)}
    y, _ = norm.apply(variables, x, mutable=["batch_stats"])
    assert abs(float(y.mean())) < 1e-3
    assert abs(float(y.std()) - 1.0) < 1e-2


def test_make_norm_none_is_identity_without_params():
    norm = make_norm("none", axis_name="embed", train=True)
    assert isinstance(norm, Identity)
    x = jnp.arange(6.0).reshape(2, 3)
    variables = norm.init(KEY, x)
    assert not variables
    np.testing.assert_array_equal(norm.apply(variables, x), x)


def test_batch_norm_uses_momentum_0_9_and_eval_uses_running_stats():
    x = 5.0 + jax.random.normal(KEY, (64, 3))
    train_norm = make_norm("batch", axis_name="embed", train=True)
    variables = train_norm.init(KEY, x)
    _, updates = train_norm.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * x.mean(0), rtol=1e-5)

    eval_norm = make_norm("batch", axis_name="embed", train=False)
    y = eval_norm.apply(variables, x)  # fresh running stats: mean 0, var 1
    np.testing.assert_allclose(y, x / np.sqrt(1.0 + 1e-5), rtol=1e-5)


def test_group_norm_clips_groups_to_divide_channels():
    assert largest_divisor_at_most(16, 32) == 16
    assert largest_divisor_at_most(48, 32) == 24
    assert largest_divisor_at_most(7, 4) == 1
    norm = make_norm("group", axis_name="conv_out", train=False, num_groups=32)
    x = jax.random.normal(KEY, (2, 3, 3, 12))  # 32 groups would not divide 12 channels
    y = norm.apply(norm.init(KEY, x), x)
    # 12 groups of one channel each: every (sample, channel) slice is standardised.
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-5)


def test_make_norm_scale_init_and_bf16_compute():
    norm = make_norm(
        "layer", axis_name="mlp", train=False, dtype=jnp.bfloat16, scale_init=nn.initializers.zeros
    )
    x = jax.random.normal(KEY, (2, 6))
    variables = norm.init(KEY, x)
    assert variables["params"]["scale"].value.dtype == jnp.float32
    y = norm.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, 0.0)


def test_make_norm_rejects_unknown_kind():
    assert "batch" in NORM_KINDS
    with pytest.raises(ValueError, match="Unknown norm kind 'instance'"):
        make_norm("instance", axis_name="embed", train=False)


def test_layers_compose_inside_a_user_linen_module():
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, *, train: bool):
            x = Conv(4, name="conv")(x)
            x = make_norm("batch", axis_name="conv_out", train=train, name="norm")(x)
            return Dense(3, kernel_axes=("embed", "classes"), name="head")(x.mean((1, 2)))

    x = jnp.ones((2, 4, 4, 1))
    variables = Tiny().init(KEY, x, train=False)
    assert set(_names(variables["params"])) == {
        "conv/kernel",
        "conv/bias",
        "norm/scale",
        "norm/bias",
        "head/kernel",
        "head/bias",
    }
    logits, updates = Tiny().apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 3)
    assert "norm" in updates["batch_stats"]


def test_check_image_batch_rejects_bad_rank_and_integer_images():
    check_image_batch(jnp.ones((1, 2, 2, 1)), "M")
    with pytest.raises(ValueError, match="M expects images"):
        check_image_batch(jnp.ones((2, 2, 1)), "M")
    with pytest.raises(TypeError, match="floating-point"):
        check_image_batch(jnp.ones((1, 2, 2, 1), jnp.int32), "M")


# The exported layers whose behaviour depends on train (dropout, batch norm).
TRAIN_AWARE_LAYERS = {
    "ASPP",
    "DeepLabHead",
    "BasicBlock",
    "ConformerBlock",
    "ConformerConvModule",
    "ConformerFeedForward",
    "MaskedBatchNorm",
    "RelativePositionAttention",
    "CrossAttention",
    "RecurrentEncoder",
    "Bottleneck",
    "MlpBlock",
    "MultiHeadAttention",
    "TransformerBlock",
    "TransformerStack",
    # The vision zoo's blocks (issue 18): BatchNorm, dropout or stochastic depth inside.
    "ConvNormAct",
    "DenseBlock",
    "DenseLayer",
    "DoubleConv",
    "InvertedResidual",
    "MBConv",
    "StochasticDepth",
    "Transition",
}


# Subclasses of a flax layer with the same fields and call (flax's `deterministic` included).
FLAX_DROP_INS = {"Dropout"}


def _exported_modules(namespace) -> dict[str, type[nn.Module]]:
    return {
        name: obj
        for name in namespace.__all__
        if isinstance(obj := getattr(namespace, name), type) and issubclass(obj, nn.Module)
    }


def test_every_layer_takes_train_as_a_required_keyword_only_call_argument():
    modules = _exported_modules(jaxdl.layers)
    takes_train = {
        name
        for name, cls in modules.items()
        if "train" in inspect.signature(cls.__call__).parameters
    }
    assert takes_train == TRAIN_AWARE_LAYERS
    for name in takes_train:
        train = inspect.signature(modules[name].__call__).parameters["train"]
        assert train.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert train.default is inspect.Parameter.empty, name
    # No module configures train-time behaviour (or nn.scan plumbing) through a field, except
    # drop-in subclasses of flax's own layers, which keep flax's interface.
    for name, cls in modules.items():
        if name in FLAX_DROP_INS:
            assert cls.__mro__[1].__module__.startswith("flax."), name
            continue
        fields = {field.name for field in dataclasses.fields(cls)}
        assert not fields & {"train", "deterministic", "scanned"}, name
    # make_norm is a factory: it takes train (keyword-only) when building the norm.
    train = inspect.signature(make_norm).parameters["train"]
    assert train.kind is inspect.Parameter.KEYWORD_ONLY


def test_layers_import_nothing_from_models_train_data_or_cli():
    forbidden = tuple(f"jaxdl.{name}" for name in ("models", "train", "data", "cli"))
    for path in Path(jaxdl.layers.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                assert not module.startswith(forbidden), f"{path.name} imports {module}"


def test_transformer_block_works_standalone_outside_a_mesh():
    assert not nn.get_logical_axis_rules()
    assert jax.sharding.get_abstract_mesh().empty
    x = jax.random.normal(KEY, (2, 5, 16))
    mask = jnp.array([[True] * 5, [True] * 3 + [False] * 2])
    block = TransformerBlock(num_heads=2, mlp_dim=32, causal=False, dropout_rate=0.5)
    variables = jax.jit(lambda: block.init(KEY, x, mask, train=False))()
    assert set(variables["params"]) == {"attn_norm", "attention", "mlp_norm", "mlp"}
    assert _names(variables["params"])["attention/query/kernel"] == ("embed", "heads", "kv")
    apply = jax.jit(lambda x: block.apply(variables, x, mask, train=False))

    out = apply(x)
    assert isinstance(out, jax.Array)  # a plain array: no (carry, None) pair for nn.scan
    assert out.shape == x.shape
    # Padded keys are hidden from the real positions ...
    noise = jax.random.normal(jax.random.key(3), (16,))  # not a constant: LayerNorm removes that
    np.testing.assert_allclose(apply(x.at[1, 4].add(noise))[1, :3], out[1, :3], atol=1e-5)
    # ... whereas real ones are not (the control).
    assert not np.allclose(apply(x.at[1, 2].add(noise))[1, :2], out[1, :2], atol=1e-4)
    dropped = block.apply(variables, x, mask, train=True, rngs={"dropout": KEY})
    assert not np.allclose(dropped, out)


def test_segment_mask_keeps_packed_sequences_apart_and_hides_padding():
    segments = jnp.array([[1, 1, 2, 0]])
    expected = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool
    )  # padding (id 0) attends to nothing, not even other padding
    np.testing.assert_array_equal(segment_mask(segments), expected[None, None])
    kv = jnp.array([[2, 2, 1]])
    np.testing.assert_array_equal(
        segment_mask(segments, kv)[0, 0], [[0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]]
    )


def test_block_with_segment_ids_gives_each_sequence_its_standalone_output():
    x = jax.random.normal(KEY, (1, 7, 16))
    block = TransformerBlock(num_heads=2, mlp_dim=32, causal=True)
    variables = block.init(KEY, x, train=False)
    packed = block.apply(variables, x, segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 2]]), train=False)
    first, second = (block.apply(variables, part, train=False) for part in (x[:, :3], x[:, 3:]))
    np.testing.assert_allclose(packed, jnp.concatenate([first, second], axis=1), atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [LearnedPositionEmbedding(max_len=8), SinusoidalPositionEmbedding(max_len=8)],
    ids=["learned", "sinusoidal"],
)
def test_position_embeddings_at_explicit_positions(layer):
    x = jax.random.normal(KEY, (2, 5, 6))
    variables = layer.init(KEY, x)
    table = (
        variables["params"]["embedding"].unbox()
        if variables
        else jnp.asarray(sinusoidal_positions(8, 6))
    )
    default = layer.apply(variables, x)
    # Positions 0..length-1 are exactly the default; restarting positions pick those rows.
    arange = jnp.broadcast_to(jnp.arange(5), (2, 5))
    np.testing.assert_array_equal(layer.apply(variables, x, arange), default)
    positions = jnp.array([[0, 1, 0, 1, 2], [0, 1, 2, 3, 7]])
    np.testing.assert_allclose(layer.apply(variables, x, positions), x + table[positions])
    with pytest.raises(ValueError, match="positions must be int"):
        layer.apply(variables, x, positions[:, :4])


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_transformer_stack_works_standalone_outside_a_mesh(scan_layers):
    x = jax.random.normal(KEY, (2, 5, 16))
    stack = TransformerStack(
        num_layers=2, num_heads=2, mlp_dim=32, causal=True, scan_layers=scan_layers
    )
    variables = jax.jit(lambda: stack.init(KEY, x, train=False))()
    params = nn.unbox(variables["params"])
    if scan_layers:
        assert set(params) == {"layers", "final_norm"}
        assert params["layers"]["mlp"]["wi"]["kernel"].shape == (2, 16, 32)
        assert _names(variables["params"])["layers/mlp/wi/kernel"] == ("layers", "embed", "mlp")
    else:
        assert set(params) == {"layers_0", "layers_1", "final_norm"}
    out = stack.apply(variables, x, train=False)
    assert out.shape == x.shape
    np.testing.assert_array_equal(
        stack.clone(remat_policy="full").apply(variables, x, train=False), out
    )


@pytest.mark.parametrize(
    ("block", "channels", "updated_norms"),
    [
        (BasicBlock(features=8, strides=2), 4, {"norm1", "norm2", "proj_norm"}),
        # Not zero-initialised: that identity block would give relu(x) in both modes.
        (Bottleneck(features=2, zero_init_residual=False), 8, {"norm1", "norm2", "norm3"}),
    ],
    ids=["basic", "bottleneck"],
)
def test_resnet_blocks_work_standalone_outside_a_mesh(block, channels, updated_norms):
    assert not nn.get_logical_axis_rules()
    x = jax.random.normal(KEY, (2, 6, 6, channels))
    variables = block.init(KEY, x, train=False)
    assert set(variables["batch_stats"]) == updated_norms
    assert _names(variables["params"])["conv1/kernel"] == CONV_KERNEL_AXES
    out = block.apply(variables, x, train=False)
    size = 6 // block.strides
    assert out.shape == (2, size, size, block.features * block.expansion)
    train_out, updates = block.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(updates["batch_stats"]) == updated_norms
    assert not np.allclose(train_out, out)  # batch statistics differ from the fresh running ones
