"""DeepLabv3: dilated ResNet backbone, ASPP head, torchvision parity and weight import."""

import functools
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from jaxdl.checkpoint import read_tree_metadata
from jaxdl.cli import main
from jaxdl.layers import CONV_KERNEL_AXES, Conv, DeepLabHead
from jaxdl.models import DeepLabV3, ResNet, get_model, registry
from jaxdl.models.deeplab import upsample_bilinear
from jaxdl.models.registry import model_hyperparameters
from jaxdl.models.torchvision_import import METADATA_FILENAME
from jaxdl.tasks.segmentation import SemanticSegmentation
from jaxdl.train.warm_start import flatten_paths, resolve_source

# torchvision 0.29's deeplabv3_resnet{50,101}(num_classes=21, aux_loss=False, weights=None,
# weights_backbone=None): sum(p.numel() for p in model.parameters()), and the running-stat
# entries (running_mean + running_var) of deeplabv3_resnet50's BatchNorms.
TORCHVISION_PARAMS = {50: 39_638_869, 101: 58_630_997}
TORCHVISION_RUNNING_STATS_50 = 56_704
# A narrow deeplabv3_resnet50 (same names and layout) for the import-weights round trip.
NARROW = functools.partial(DeepLabV3, depth=50, width=2, head_features=4)


def _abstract_variables(model: nn.Module, shape=(1, 64, 64, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def _count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nn.meta.unbox(tree)))


def _conv_geometry(model: nn.Module, shape=(1, 64, 64, 3)) -> dict[str, tuple]:
    """'module/path' -> (strides, kernel_dilation, padding) of every ``Conv`` the model calls."""
    found = {}

    def record(call, args, kwargs, context):
        if isinstance(context.module, Conv) and context.method_name == "__call__":
            module = context.module
            found["/".join(module.scope.path)] = (
                module.strides,
                module.kernel_dilation,
                module.padding,
            )
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        _abstract_variables(model, shape)
    return found


def _torch_module(module: str) -> str:
    """jaxdl ``DeepLabV3`` module path -> torchvision module name, written from torchvision's
    ``deeplabv3`` source independently of the importer (4 ASPP branches + pooling)."""
    fixed = {
        "backbone/stem_conv": "backbone.conv1",
        "backbone/stem_norm": "backbone.bn1",
        "head/aspp/pool_conv": "classifier.0.convs.4.1",
        "head/aspp/pool_norm": "classifier.0.convs.4.2",
        "head/aspp/project_conv": "classifier.0.project.0",
        "head/aspp/project_norm": "classifier.0.project.1",
        "head/conv": "classifier.1",
        "head/norm": "classifier.2",
        "head/classifier": "classifier.4",
    }
    if module in fixed:
        return fixed[module]
    branch = re.fullmatch(r"head/aspp/branch(\d)_(conv|norm)", module)
    if branch:
        return f"classifier.0.convs.{branch[1]}.{0 if branch[2] == 'conv' else 1}"
    stage, block, child = re.fullmatch(r"backbone/stage(\d)_block(\d+)/(\w+)", module).groups()
    child = {"proj_conv": "downsample.0", "proj_norm": "downsample.1"}.get(child, child)
    return f"backbone.layer{stage}.{int(block) - 1}.{child.replace('norm', 'bn')}"


def _torch_key(path: str) -> str:
    """'params/head/conv/kernel' -> 'classifier.1.weight'."""
    _, *modules, leaf = path.split("/")
    torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}
    torch_leaf |= {"mean": "running_mean", "var": "running_var"}
    return f"{_torch_module('/'.join(modules))}.{torch_leaf[leaf]}"


@pytest.mark.parametrize("depth", [50, 101])
def test_parameter_count_equals_torchvision(depth):
    variables = _abstract_variables(get_model(f"deeplabv3_resnet{depth}", num_classes=21))
    assert _count(variables["params"]) == TORCHVISION_PARAMS[depth]
    if depth == 50:
        assert _count(variables["batch_stats"]) == TORCHVISION_RUNNING_STATS_50


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_logits_are_input_sized_and_the_backbone_has_the_output_stride(output_stride):
    model = DeepLabV3(5, depth=18, width=4, head_features=8, output_stride=output_stride)
    images = jnp.zeros((2, 64, 96, 3))
    variables = _abstract_variables(model, images.shape)
    logits = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
    assert logits.shape == (2, 64, 96, 5) and logits.dtype == jnp.float32
    dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    backbone = ResNet(18, 5, width=4, features_only=True)
    backbone = backbone.clone(replace_stride_with_dilation=dilate[output_stride])
    features = jax.eval_shape(
        lambda v: backbone.apply(v, images, train=False),
        {name: tree["backbone"] for name, tree in variables.items()},
    )
    assert features.shape == (2, 64 // output_stride, 96 // output_stride, 32)


def test_dilation_follows_torchvision_make_layer():
    """Output stride 8: stages 3 and 4 keep stride 1; a dilated stage's first block keeps the
    previous dilation (1 in stage 3, 2 in stage 4), its other blocks dilate by 2 and 4."""
    geometry = _conv_geometry(DeepLabV3(3, width=2, head_features=4))
    expected = {
        "stage2_block1": (2, 1),
        "stage2_block2": (1, 1),
        "stage3_block1": (1, 1),
        "stage3_block6": (1, 2),
        "stage4_block1": (1, 2),
        "stage4_block3": (1, 4),
    }
    for block, (strides, dilation) in expected.items():
        pad = ((dilation, dilation),) * 2
        assert geometry[f"backbone/{block}/conv2"] == (strides, dilation, pad), block
        assert geometry[f"backbone/{block}/conv1"][:2] == (1, 1)  # 1x1 convs never dilate
    assert geometry["backbone/stage3_block1/proj_conv"][0] == 1
    assert geometry["backbone/stage4_block1/proj_conv"][0] == 1
    for rate, branch in zip((12, 24, 36), (1, 2, 3), strict=True):
        assert geometry[f"head/aspp/branch{branch}_conv"] == (1, rate, ((rate, rate),) * 2)


def test_dilation_and_features_only_keep_resnet_parameter_names():
    def shapes(model):
        return jax.tree.map(lambda leaf: leaf.shape, nn.meta.unbox(_abstract_variables(model)))

    plain = shapes(ResNet(50, 10, width=2))
    assert shapes(ResNet(50, 10, width=2, replace_stride_with_dilation=(False, True, True))) == (
        plain
    )
    features_only = shapes(ResNet(50, 10, width=2, features_only=True))
    assert features_only["batch_stats"] == plain["batch_stats"]
    assert features_only["params"] == {k: v for k, v in plain["params"].items() if k != "head"}
    with pytest.raises(ValueError, match="replace_stride_with_dilation needs 3 flags"):
        ResNet(50, 10, replace_stride_with_dilation=(True,))


def test_parameters_carry_logical_axis_names():
    params = _abstract_variables(DeepLabV3(3, depth=18, width=2, head_features=4))["params"]
    leaves = {
        "/".join(("params", *path)): leaf
        for path, leaf in traverse_util.flatten_dict(params).items()
    }
    assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves.values())
    for path, leaf in leaves.items():
        if path.endswith("kernel"):
            assert leaf.names == CONV_KERNEL_AXES, path
        else:
            assert leaf.names == ("conv_out",), path
    assert "params/head/aspp/pool_conv/kernel" in leaves
    assert "params/head/classifier/bias" in leaves


def test_registry_builds_deeplabv3_from_config_fields():
    assert {"depth", "num_classes", "output_stride", "dtype"} <= model_hyperparameters("deeplabv3")
    assert isinstance(get_model("deeplabv3", num_classes=3, depth=18), DeepLabV3)
    assert get_model("deeplabv3_resnet101", num_classes=3).depth == 101
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3(3, output_stride=4)
    with pytest.raises(ValueError, match="depth"):
        DeepLabV3(3, depth=20)


def test_upsample_bilinear_matches_torch_align_corners_false_formula():
    """Half-pixel source coordinates clamped at 0 (torch's ``area_pixel_compute_source_index``),
    neighbours clamped at the last pixel, written out in NumPy."""
    x = np.random.default_rng(0).normal(size=(1, 3, 5, 2)).astype(np.float32)

    def interpolate(array, axis, size):
        n = array.shape[axis]
        src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
        low = np.floor(src).astype(int)
        high, weight = np.minimum(low + 1, n - 1), src - low
        shape = [1] * array.ndim
        shape[axis] = size
        weight = weight.reshape(shape)
        return np.take(array, low, axis) * (1 - weight) + np.take(array, high, axis) * weight

    for height, width in [(7, 13), (3, 5), (2, 4)]:
        expected = interpolate(interpolate(x, 1, height), 2, width)
        actual = np.asarray(upsample_bilinear(jnp.asarray(x), height, width))
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def _torchvision():
    pytest.importorskip("torchvision")
    import torch

    return torch


def _randomise_batch_norms(torch, model, seed: int = 1) -> None:
    """Random BN affine parameters and running statistics (fresh ones are 1, 0, 0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def test_conv_geometry_equals_torchvision_deeplabv3_resnet50():
    torch = _torchvision()
    from torchvision.models.segmentation import deeplabv3_resnet50

    with torch.device("meta"):  # structure only: no weights allocated or initialised
        reference = deeplabv3_resnet50(num_classes=21, weights=None, weights_backbone=None)
    geometry = _conv_geometry(get_model("deeplabv3_resnet50", num_classes=21))
    torch_convs = {
        name: module
        for name, module in reference.named_modules()
        if isinstance(module, torch.nn.Conv2d)
    }
    assert sorted(torch_convs) == sorted(_torch_module(path) for path in geometry)
    for path, (strides, dilation, padding) in geometry.items():
        conv = torch_convs[_torch_module(path)]
        pad = (0, 0) if padding == "VALID" else tuple(low for low, _ in padding)
        assert (conv.stride, conv.dilation, conv.padding) == ((strides,) * 2, (dilation,) * 2, pad)


def test_deeplab_head_matches_torchvision():
    torch = _torchvision()
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead as TorchDeepLabHead

    torch.manual_seed(0)
    reference = TorchDeepLabHead(16, 5).eval()
    _randomise_batch_norms(torch, reference)
    # As the ``classifier`` of a DeepLabV3, so that ``_torch_key`` names its tensors.
    state = {f"classifier.{name}": value.numpy() for name, value in reference.state_dict().items()}
    x = np.random.default_rng(0).normal(size=(1, 9, 11, 16)).astype(np.float32)
    head = DeepLabHead(5)
    variables = nn.meta.unbox(_abstract_variables(head, x.shape))
    copied = {}
    for path, leaf in flatten_paths(variables).items():
        value = state[_torch_key(f"{path.split('/')[0]}/head/{path.split('/', 1)[1]}")]
        copied[path] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
        assert copied[path].shape == leaf.shape, path
    restored = {collection: {} for collection in variables}
    for path, value in copied.items():
        *parents, leaf = path.split("/")
        node = restored
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    logits = head.apply(restored, x, train=False)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(logits), expected.transpose(0, 2, 3, 1), atol=1e-4)


def _import_and_compare(depth: int, sizes) -> tuple[float, float]:
    """(max |jaxdl - torchvision|, max |torchvision|) of deeplabv3_resnet{depth} logits (random
    weights and BN statistics, aux classifier in the state_dict) on images of each (H, W) in
    ``sizes``."""
    torch = _torchvision()
    from torchvision.models import segmentation

    from jaxdl.models.torchvision_seg_import import import_deeplabv3

    torch.manual_seed(0)
    builder = getattr(segmentation, f"deeplabv3_resnet{depth}")
    reference = builder(num_classes=21, aux_loss=True, weights=None, weights_backbone=None)
    reference = reference.eval()
    _randomise_batch_norms(torch, reference)
    state = {name: value.numpy() for name, value in reference.state_dict().items()}
    model = get_model(f"deeplabv3_resnet{depth}", num_classes=21)
    variables = jax.tree.map(
        lambda leaf: np.zeros(leaf.shape, np.float32), _abstract_variables(model)
    )
    variables = import_deeplabv3(state, variables)
    apply = jax.jit(functools.partial(model.apply, train=False))
    worst, scale = 0.0, 0.0
    for height, width in sizes:
        x = np.random.default_rng(height).normal(size=(1, height, width, 3)).astype(np.float32)
        logits = np.asarray(apply(variables, x))
        with torch.no_grad():
            expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)))["out"].numpy()
        expected = expected.transpose(0, 2, 3, 1)
        assert logits.shape == expected.shape == (1, height, width, 21)
        worst = max(worst, float(np.abs(logits - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    return worst, scale


@pytest.mark.slow  # a full-size ResNet-50 compile: ~10 s
def test_deeplabv3_resnet50_matches_torchvision_after_import():
    # 56x72 upsamples a 7x9 map by exactly 8; 50x67 by a fractional factor. Logits reach ~30.
    worst, _ = _import_and_compare(50, [(56, 72), (50, 67)])
    assert worst < 1e-4


@pytest.mark.slow
def test_deeplabv3_resnet101_matches_torchvision_after_import():
    # 101 layers of random BN statistics grow the logits to ~3e3: float32 rounding then differs
    # by ~1e-2 absolute, so compare relative to that scale.
    worst, scale = _import_and_compare(101, [(40, 48)])
    assert worst < 1e-5 * scale


@pytest.fixture
def narrow(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "deeplabv3_resnet50", NARROW)


@pytest.fixture
def deeplab_file(tmp_path, narrow):
    """A narrow deeplabv3_resnet50 state_dict of random tensors with torchvision's names (plus
    an aux classifier), and the jaxdl values it must import as."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    variables = nn.meta.unbox(_abstract_variables(NARROW(num_classes=21)))
    expected, state_dict = {}, {}
    for path, leaf in flatten_paths(variables).items():
        value = rng.standard_normal(leaf.shape).astype(np.float32)
        expected[path] = value
        torch_value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
        state_dict[_torch_key(path)] = torch.from_numpy(np.ascontiguousarray(torch_value))
    state_dict["aux_classifier.0.weight"] = torch.zeros(256, 1024, 3, 3)
    state_dict["aux_classifier.4.weight"] = torch.zeros(21, 256, 1, 1)
    state_dict["aux_classifier.4.bias"] = torch.zeros(21)
    path = tmp_path / "deeplab.pth"
    torch.save(state_dict, path)
    return str(path), expected


def _cli(*argv: str) -> int:
    try:
        return main(["import-weights", "--from", "torchvision", *argv])
    except SystemExit as exit_:
        return exit_.code


def test_import_weights_cli_round_trips_deeplabv3(deeplab_file, tmp_path, caplog):
    weights, expected = deeplab_file
    out = tmp_path / "imported"
    assert _cli("--model", "deeplabv3_resnet50", "--weights", weights, "--out", str(out)) == 0
    assert "skipping 3 aux_classifier tensor(s)" in caplog.text
    restored = flatten_paths(
        ocp.PyTreeCheckpointer().restore(resolve_source({"from_workdir": str(out)}))
    )
    assert sorted(restored) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(restored[path]), value, err_msg=path)
    metadata = json.loads((out / METADATA_FILENAME).read_text())
    assert metadata["file_num_classes"] == 21 and not metadata["head_omitted"]


def test_import_weights_with_other_num_classes_leaves_only_the_classifier_out(
    deeplab_file, tmp_path, capsys
):
    weights, _ = deeplab_file
    out = tmp_path / "imported"
    argv = ("--model", "deeplabv3_resnet50", "--weights", weights, "--out", str(out))
    assert _cli(*argv, "--num-classes", "4") == 0
    assert "init.reinit=('params/head/classifier/*',)" in capsys.readouterr().out
    metadata = json.loads((out / METADATA_FILENAME).read_text())
    assert metadata["head_omitted"] and metadata["reinit"] == ["params/head/classifier/*"]
    paths = flatten_paths(read_tree_metadata(str(out / "best" / "0" / "state")))
    assert not [path for path in paths if path.startswith("params/head/classifier")]
    assert "params/head/aspp/pool_conv/kernel" in paths


@pytest.mark.slow  # compiles a forward and backward pass
def test_segmentation_task_trains_deeplabv3_with_dropout_and_batch_stats():
    model = DeepLabV3(4, depth=18, width=4, head_features=8)
    task = SemanticSegmentation((32, 32, 1), 4)
    rng = np.random.default_rng(0)
    batch = {
        "inputs": jnp.asarray(rng.normal(size=(2, 32, 32, 1)), jnp.float32),
        "labels": jnp.asarray(rng.integers(0, 4, (2, 32, 32)), jnp.int32),
    }
    variables = nn.meta.unbox(model.init(jax.random.key(0), batch["inputs"], train=False))

    @jax.jit
    def loss_and_grads(params):
        def loss(params):
            def forward(x):
                logits, _ = model.apply(
                    {"params": params, "batch_stats": variables["batch_stats"]},
                    x,
                    train=True,
                    rngs={"dropout": jax.random.key(1)},
                    mutable=["batch_stats"],
                )
                return logits

            return task.loss(forward, batch)[0]

        return jax.value_and_grad(loss)(params)

    value, grads = loss_and_grads(variables["params"])
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["head"]["classifier"]["kernel"]).sum()) > 0


def test_feature_maps_are_constrained_to_the_batch_sharding_under_logical_rules():
    model = DeepLabV3(3, depth=18, width=2, head_features=4)
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    names = ("height", "width", "channels", *CONV_KERNEL_AXES)
    rules = [("batch", "data"), *((name, None) for name in names)]
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        variables = _abstract_variables(model, images.shape)
        lowered = jax.jit(functools.partial(model.apply, train=False)).lower(variables, images)
    text = lowered.as_text()
    # One constraint per stem, block, ASPP branch, head conv and the logits at least (Shardy's
    # sdy.sharding_constraint or GSPMD's @Sharding custom call).
    constraints = text.count("sharding_constraint") + text.count("@Sharding")
    assert constraints >= 1 + 8 + 6 + 2 + 1
