"""``jaxdl import-weights --from torchvision``: name/shape mapping, the checkpoint `init` reads,
one-line errors that write nothing, and (slow, with torchvision) logits parity."""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdl.checkpoint import read_tree_metadata
from jaxdl.cli import main
from jaxdl.models import registry
from jaxdl.models.registry import get_model
from jaxdl.models.resnet import ResNet
from jaxdl.models.torchvision_import import METADATA_FILENAME
from jaxdl.train.warm_start import flatten_paths, resolve_source

torch = pytest.importorskip("torch")
# The fast tests import a resnet18 of width 4 (same names and layout, 1/256 of the weights).
NARROW = functools.partial(ResNet, depth=18, width=4)


def _jaxdl_shapes(model: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """``{'params/stem_conv/kernel': shape, ...}`` of jaxdl's model, from ``jax.eval_shape``."""
    import flax.linen as nn

    module = get_model(model, num_classes=num_classes)
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    return {path: leaf.shape for path, leaf in flatten_paths(nn.meta.unbox(shapes)).items()}


def _torch_name(path: str) -> tuple[str, str]:
    """jaxdl leaf path -> (torchvision module name, torch leaf), written from torchvision's
    naming independently of the importer."""
    _, *modules, leaf = path.split("/")
    module = "/".join(modules)
    module = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc"}.get(module, module)
    stage = re.match(r"stage(\d+)_block(\d+)/(\w+)", module)
    if stage:
        child = {"proj_conv": "downsample.0", "proj_norm": "downsample.1"}.get(stage[3], stage[3])
        child = child.replace("norm", "bn")
        module = f"layer{stage[1]}.{int(stage[2]) - 1}.{child}"
    torch_leaf = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }
    return module, torch_leaf[leaf]


def _to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    return value.T if leaf == "kernel" else value


@pytest.fixture
def narrow(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "resnet18", NARROW)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A narrow resnet18 state_dict of random tensors with torchvision's names, and the jaxdl
    values it must import as."""
    rng = np.random.default_rng(0)
    expected, state_dict = {}, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._REGISTRY, "resnet18", NARROW)
        shapes = _jaxdl_shapes("resnet18")
    for path, shape in shapes.items():
        value = rng.standard_normal(shape).astype(np.float32)
        expected[path] = value
        module, leaf = _torch_name(path)
        state_dict[f"{module}.{leaf}"] = torch.from_numpy(_to_torch(value, path.split("/")[-1]))
        if leaf == "running_var":
            state_dict[f"{module}.num_batches_tracked"] = torch.tensor(7)
    directory = tmp_path_factory.mktemp("weights")
    path = directory / "resnet18.pth"
    torch.save(state_dict, path)
    return str(path), state_dict, expected


def _cli(*argv: str) -> int:
    try:
        return main(["import-weights", "--from", "torchvision", *argv])
    except SystemExit as exit_:
        return exit_.code


def test_a_resnet_state_dict_round_trips_into_the_checkpoint_init_reads(
    resnet18_file, narrow, tmp_path
):
    weights, _, expected = resnet18_file
    out = tmp_path / "imported"
    assert _cli("--model", "resnet18", "--weights", weights, "--out", str(out)) == 0
    source = resolve_source({"from_workdir": str(out)})
    assert source == str(out / "best" / "0" / "state")
    restored = flatten_paths(ocp.PyTreeCheckpointer().restore(source))
    assert sorted(restored) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(restored[path]), value, err_msg=path)
    metadata = json.loads((out / METADATA_FILENAME).read_text())
    assert metadata["model"] == "resnet18" and metadata["num_classes"] == 1000
    assert len(metadata["sha256"]) == 64 and not metadata["head_omitted"]
    assert "layerS.B" in metadata["mapping"]["rule"]


def test_another_num_classes_leaves_the_head_out(resnet18_file, narrow, tmp_path, capsys):
    weights, _, _ = resnet18_file
    out = tmp_path / "imported"
    argv = ("--model", "resnet18", "--weights", weights, "--out", str(out), "--num-classes", "5")
    assert _cli(*argv) == 0
    assert "init.reinit=('params/head/*',)" in capsys.readouterr().out
    metadata = json.loads((out / METADATA_FILENAME).read_text())
    assert metadata["head_omitted"] and metadata["reinit"] == ["params/head/*"]
    assert metadata["file_num_classes"] == 1000 and metadata["num_classes"] == 5
    paths = flatten_paths(read_tree_metadata(str(out / "best" / "0" / "state")))
    assert not [path for path in paths if path.startswith("params/head")]


def _bad(tmp_path, name: str, state_dict: dict) -> str:
    path = tmp_path / name
    torch.save(state_dict, path)
    return str(path)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", r"unknown torchvision model 'vgg99'"),
        ("missing", r"weights file not found"),
        ("other_arch", r"not a torchvision .*missing \d+ key\(s\) \['layer4.*unexpected 1"),
        (
            "shape",
            r"1 shape mismatch\(es\): layer1.0.conv1.weight \(4, 4, 1, 1\) != \(4, 4, 3, 3\)",
        ),
        ("not_a_state_dict", r"does not hold a state_dict"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(
    resnet18_file, narrow, tmp_path, capsys, case, message
):
    weights, state_dict, _ = resnet18_file
    model = "resnet18"
    if case == "unknown":
        model = "vgg99"
    elif case == "missing":
        weights = str(tmp_path / "absent.pth")
    elif case == "other_arch":
        kept = {k: v for k, v in state_dict.items() if not k.startswith("layer4")}
        weights = _bad(tmp_path, "x.pth", {**kept, "features.0.weight": torch.zeros(3)})
    elif case == "shape":
        weights = _bad(
            tmp_path, "x.pth", {**state_dict, "layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1)}
        )
    else:
        weights = _bad(tmp_path, "x.pth", {"a": [1, 2]})
    out = tmp_path / "out"
    assert _cli("--model", model, "--weights", weights, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".import-")]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_imported_logits_equal_torchvisions(model, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, model)(weights=None)
    with torch.no_grad():
        for layer in reference.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
    reference.eval()
    weights = tmp_path / f"{model}.pth"
    torch.save(reference.state_dict(), weights)
    out = tmp_path / "imported"
    assert _cli("--model", model, "--weights", str(weights), "--out", str(out)) == 0

    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    variables = ocp.PyTreeCheckpointer().restore(str(out / "best" / "0" / "state"))
    got = get_model(model, num_classes=1000).apply(variables, jnp.asarray(images), train=False)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
