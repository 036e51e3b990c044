"""Import torchvision classification or segmentation weights (a ``.pth`` state_dict) into a
jaxdl checkpoint.

``import_torchvision`` maps the state_dict onto the registered jaxdl model of the same name and
writes a directory that ``jaxdl train`` starts from with ``--config.init.from_workdir=DIR``:
``DIR/best/0/state`` (the Orbax tree ``{'params', 'batch_stats'}`` that ``init`` reads) and
``DIR/import_metadata.json`` (source model, file hash, mapping). Nothing is downloaded: a user
with network fetches the ``.pth``.

Each family's importer is ``fn(state_dict, variables) -> variables``: ``state_dict`` maps torch
names to float32 numpy arrays, ``variables`` is jaxdl's ``{'params', 'batch_stats'}`` tree (numpy
zeros of the right shapes) and the result is that tree filled in. ``check_state_dict`` gives the
one-line error for a state_dict of another architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxdl.errors import UserError

Importer = Callable[[Mapping[str, np.ndarray], dict], dict]
METADATA_FILENAME = "import_metadata.json"
_SHOWN = 3  # names shown in a mismatch message


def check_state_dict(
    state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], model: str
) -> None:
    """Raises a one-line ``UserError`` unless ``state_dict`` has exactly the ``expected`` names
    (torchvision's ``num_batches_tracked`` counters aside) with the expected shapes."""
    names = {name for name in state_dict if not name.endswith("num_batches_tracked")}
    missing = [name for name in expected if name not in names]
    unexpected = [name for name in state_dict if name in names and name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {missing[:_SHOWN]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) {unexpected[:_SHOWN]}")
        raise UserError(f"the weights are not a torchvision {model}: {'; '.join(parts)}")
    wrong = [
        f"{name} {tuple(state_dict[name].shape)} != {tuple(shape)}"
        for name, shape in expected.items()
        if tuple(state_dict[name].shape) != tuple(shape)
    ]
    if wrong:
        raise UserError(
            f"the weights are not a torchvision {model}: {len(wrong)} shape mismatch(es): "
            f"{', '.join(wrong[:_SHOWN])}"
        )


def _conv(kernel: np.ndarray) -> np.ndarray:
    """torch OIHW conv weight -> Flax HWIO kernel."""
    return np.transpose(kernel, (2, 3, 1, 0))


def _resnet_modules(variables: Mapping[str, Any]) -> dict[str, str]:
    """torchvision module name -> jaxdl module path for the ResNet in ``variables``."""
    names = {"conv1": "stem_conv", "bn1": "stem_norm", "fc": "head"}
    for module in variables["params"]:
        if not module.startswith("stage"):
            continue
        stage, block = module[len("stage") :].split("_block")
        prefix = f"layer{stage}.{int(block) - 1}"
        for child in variables["params"][module]:
            kind, index = child[:-1], child[-1]
            if child == "proj_conv":
                names[f"{prefix}.downsample.0"] = f"{module}/{child}"
            elif child == "proj_norm":
                names[f"{prefix}.downsample.1"] = f"{module}/{child}"
            else:
                torch_kind = {"conv": "conv", "norm": "bn"}[kind]
                names[f"{prefix}.{torch_kind}{index}"] = f"{module}/{child}"
    return names


def import_resnet(state_dict: Mapping[str, np.ndarray], variables: dict) -> dict:
    """torchvision ResNet -> jaxdl ResNet (ImageNet stem): convs OIHW->HWIO, ``fc`` transposed,
    BN weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var;
    ``layerS.B`` -> ``stageS_block{B+1}``, ``downsample.0/1`` -> ``proj_conv/proj_norm``."""
    params, stats = variables["params"], variables["batch_stats"]
    modules = _resnet_modules(variables)
    expected: dict[str, tuple[int, ...]] = {}
    for torch_name, path in modules.items():
        node = params
        for key in path.split("/"):
            node = node[key]
        if "kernel" in node and node["kernel"].ndim == 4:
            h, w, i, o = node["kernel"].shape
            expected[f"{torch_name}.weight"] = (o, i, h, w)
        elif "kernel" in node:
            expected[f"{torch_name}.weight"] = node["kernel"].shape[::-1]
            expected[f"{torch_name}.bias"] = node["bias"].shape
        else:
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                expected[f"{torch_name}.{suffix}"] = node["scale"].shape
    check_state_dict(state_dict, expected, "ResNet of this depth")

    def put(tree: dict, path: str, leaf: str, value: np.ndarray) -> None:
        node = tree
        for key in path.split("/"):
            node = node[key]
        node[leaf] = np.asarray(value, np.float32)

    for torch_name, path in modules.items():
        weight = state_dict[f"{torch_name}.weight"]
        if torch_name == "fc":
            put(params, path, "kernel", weight.T)
            put(params, path, "bias", state_dict["fc.bias"])
        elif weight.ndim == 4:
            put(params, path, "kernel", _conv(weight))
        else:
            put(params, path, "scale", weight)
            put(params, path, "bias", state_dict[f"{torch_name}.bias"])
            put(stats, path, "mean", state_dict[f"{torch_name}.running_mean"])
            put(stats, path, "var", state_dict[f"{torch_name}.running_var"])
    return variables


RESNET_IMPORTERS: dict[str, Importer] = {
    f"resnet{depth}": import_resnet for depth in (18, 34, 50, 101, 152)
}


def importers() -> dict[str, Importer]:
    """Every torchvision model that can be imported: name (jaxdl's registry name too) -> fn.
    The other families' modules are imported here, on use, to keep ``jaxdl`` imports light."""
    from jaxdl.models.torchvision_dense_import import DENSE_IMPORTERS
    from jaxdl.models.torchvision_mobile_import import MOBILE_IMPORTERS
    from jaxdl.models.torchvision_seg_import import SEG_IMPORTERS

    return {**RESNET_IMPORTERS, **MOBILE_IMPORTERS, **DENSE_IMPORTERS, **SEG_IMPORTERS}


def _head_path(model: str) -> tuple[str, ...]:
    """Path (below ``params``) of ``model``'s class-dependent layer: ``head`` for classifiers,
    the last 1x1 conv of a segmentation head."""
    from jaxdl.models.torchvision_seg_import import SEG_HEAD_PATH, SEG_IMPORTERS

    return SEG_HEAD_PATH if model in SEG_IMPORTERS else ("head",)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A ``.pth`` state_dict as float32 numpy arrays (``torch.load(weights_only=True)``)."""
    try:
        import torch
    except ImportError:
        raise UserError("import-weights needs PyTorch: pip install torch") from None
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not usable
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot read {path} as a torch state_dict: {message}") from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UserError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return {name: tensor.detach().float().numpy() for name, tensor in loaded.items()}


def _template(model: str, num_classes: int) -> dict:
    """jaxdl's unboxed ``{'params', 'batch_stats'}`` tree of ``model`` as numpy zeros."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxdl.models.registry import get_model

    module = get_model(model, num_classes=num_classes)
    # Abstract: the ImageNet input size costs nothing and suits every family's layout.
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    shapes = nn.meta.unbox(shapes)
    return jax.tree_util.tree_map(
        lambda leaf: np.zeros(leaf.shape, np.float32),
        {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})},
    )


def _file_num_classes(state_dict: Mapping[str, np.ndarray], model: str) -> int:
    """Classes of the file's head: torchvision's classifiers end with the head's 2-D weight;
    its segmentation models name their last 1x1 conv (``SEG_HEAD_KEY``)."""
    from jaxdl.models.torchvision_seg_import import SEG_HEAD_KEY, SEG_IMPORTERS

    if model in SEG_IMPORTERS:
        if SEG_HEAD_KEY not in state_dict:
            raise UserError(f"the weights hold no segmentation classifier ({SEG_HEAD_KEY})")
        return int(state_dict[SEG_HEAD_KEY].shape[0])
    matrices = [v for name, v in state_dict.items() if name.endswith("weight") and v.ndim == 2]
    if not matrices:
        raise UserError("the weights hold no classifier head (no 2-D weight)")
    return int(matrices[-1].shape[0])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_torchvision(
    model: str, weights: str, out: str, *, num_classes: int | None = None
) -> dict[str, Any]:
    """Writes ``out`` (see the module docstring) from torchvision ``weights`` of ``model``;
    returns the metadata. With ``num_classes`` other than the file's, the head is left out (the
    run must put ``params/head/*``, for DeepLabV3 ``params/head/classifier/*``, in
    ``init.reinit``). Errors are one-line ``UserError``s and leave no ``out`` behind."""
    import orbax.checkpoint as ocp

    table = importers()
    if model not in table:
        raise UserError(f"unknown torchvision model {model!r}; importable: {', '.join(table)}")
    if os.path.exists(out):
        raise UserError(f"--out {out} already exists")
    state_dict = load_state_dict(weights)
    file_classes = _file_num_classes(state_dict, model)
    importer = table[model]
    try:
        variables = importer(state_dict, _template(model, file_classes))
    except (KeyError, ValueError) as error:  # the families' own mismatch errors, as one line
        raise UserError(f"the weights are not a torchvision {model}: {error}") from None
    head_omitted = num_classes is not None and num_classes != file_classes
    *parents, head = _head_path(model)
    if head_omitted:
        node = variables["params"]
        for key in parents:
            node = node[key]
        node.pop(head)
    metadata = {
        "source": "torchvision",
        "model": model,
        "weights": os.path.abspath(weights),
        "sha256": _sha256(weights),
        "file_num_classes": file_classes,
        "num_classes": num_classes if num_classes is not None else file_classes,
        "head_omitted": head_omitted,
        "reinit": [f"params/{'/'.join((*parents, head))}/*"] if head_omitted else [],
        "mapping": {
            "importer": f"{importer.__module__}.{importer.__qualname__}",
            "rule": " ".join((importer.__doc__ or "").split()),
        },
    }
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".import-", dir=parent)
    try:
        ocp.PyTreeCheckpointer().save(os.path.join(staging, "best", "0", "state"), variables)
        with open(os.path.join(staging, METADATA_FILENAME), "w") as file:
            json.dump(metadata, file, indent=2)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metadata
