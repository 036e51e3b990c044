"""torchvision ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` state_dicts -> jaxdl
``DeepLabV3`` variables.

``backbone.*`` maps as the ResNet importer (``layerS.B`` -> ``backbone/stageS_block{B+1}``,
``conv1``/``bn1`` -> ``stem_conv``/``stem_norm``, ``downsample.0/1`` -> ``proj_conv/proj_norm``);
``classifier.0`` (ASPP) -> ``head/aspp`` (``convs.0`` -> ``branch0``, ``convs.i`` (ASPPConv) ->
``branch{i}``, the last ``convs`` entry (ASPPPooling) -> ``pool``, ``project`` -> ``project``),
``classifier.1/2/4`` -> ``head/conv``, ``head/norm``, ``head/classifier``. The auxiliary
classifier (``aux_classifier.*``, in torchvision's pretrained files) has no jaxdl counterpart
(``aux_loss`` only adds a training loss): its tensors are skipped with a logged note.
"""

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from jaxdl.models.torchvision_mobile_import import Entry, _conv_kernel, _copy, _same

AUX_PREFIX = "aux_classifier."
# The class-dependent layer: left out (and re-initialised) when --num-classes differs.
SEG_HEAD_PATH = ("head", "classifier")
SEG_HEAD_KEY = "classifier.4.weight"  # its torch weight [num_classes, 256, 1, 1]
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_TORCH_STAT = {"mean": "running_mean", "var": "running_var"}


def _backbone_module(path: tuple[str, ...]) -> str:
    """torchvision name of the ResNet module at ``path`` (below ``backbone``)."""
    top = {"stem_conv": "conv1", "stem_norm": "bn1"}
    if path[0] in top:
        return top[path[0]]
    stage, block = re.fullmatch(r"stage(\d+)_block(\d+)", path[0]).groups()
    child = {"proj_conv": "downsample.0", "proj_norm": "downsample.1"}.get(path[1])
    child = child or path[1].replace("norm", "bn")
    return f"layer{stage}.{int(block) - 1}.{child}"


def _aspp_module(path: tuple[str, ...], pool_index: int) -> str:
    """torchvision name (below ``classifier.0``) of the ASPP module ``path[0]``."""
    branch, kind = path[0].rsplit("_", 1)
    if branch == "project":
        return f"project.{0 if kind == 'conv' else 1}"
    if branch == "pool":  # ASPPPooling: AdaptiveAvgPool2d, conv, bn, relu
        return f"convs.{pool_index}.{1 if kind == 'conv' else 2}"
    return f"convs.{branch[len('branch') :]}.{0 if kind == 'conv' else 1}"


def _module(path: tuple[str, ...], pool_index: int) -> str:
    """torchvision module name of the jaxdl ``DeepLabV3`` module at ``path``."""
    if path[0] == "backbone":
        return f"backbone.{_backbone_module(path[1:])}"
    if path[1] == "aspp":
        return f"classifier.0.{_aspp_module(path[2:], pool_index)}"
    return {"conv": "classifier.1", "norm": "classifier.2", "classifier": "classifier.4"}[path[1]]


def import_deeplabv3(state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any]) -> dict:
    """torchvision ``deeplabv3_resnet*`` -> ``DeepLabV3``: ``backbone.layerS.B`` ->
    ``backbone/stageS_block{B+1}``, ``classifier.0.convs.i`` -> ``head/aspp/branch{i}`` (the last,
    image pooling, -> ``pool``), ``classifier.0.project`` -> ``head/aspp/project``,
    ``classifier.1/2/4`` -> ``head/conv``/``norm``/``classifier``; convs OIHW -> HWIO, BN
    weight/bias/running_mean/running_var -> scale/bias/mean/var; ``aux_classifier.*`` skipped."""
    aux = [name for name in state_dict if name.startswith(AUX_PREFIX)]
    if aux:
        logging.getLogger("jaxdl").warning(
            "skipping %d aux_classifier tensor(s): jaxdl's DeepLabV3 has no auxiliary head",
            len(aux),
        )
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(AUX_PREFIX)}
    aspp = variables["params"]["head"]["aspp"]
    pool_index = sum(1 for name in aspp if re.fullmatch(r"branch\d+_conv", name))
    entries: list[Entry] = []
    for collection in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        leaves = _TORCH_LEAF if collection == "params" else _TORCH_STAT
        for path in flat:
            transform: Callable[[np.ndarray], np.ndarray] = (
                _conv_kernel if path[-1] == "kernel" else _same
            )
            name = f"{_module(path[:-1], pool_index)}.{leaves[path[-1]]}"
            entries.append((name, collection, path, transform))
    return _copy(state_dict, variables, entries, "deeplabv3")


SEG_IMPORTERS: dict[str, Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], dict]] = {
    "deeplabv3_resnet50": import_deeplabv3,
    "deeplabv3_resnet101": import_deeplabv3,
}
