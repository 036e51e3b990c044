"""torchvision DenseNet / EfficientNet state_dicts -> jaxdl ``DenseNet`` / ``EfficientNet``
variables.

Each importer is ``fn(state_dict, variables) -> variables``: ``state_dict`` maps torch names to
numpy arrays, ``variables`` is jaxdl's ``{'params', 'batch_stats'}`` tree of the same model
(arrays, or shape/dtype structs as from ``jax.eval_shape(model.init, ...)``, optionally in
``nn.Partitioned`` boxes) and the result is a new tree of that structure holding the torch
values: convs OIHW -> HWIO, Linear (out, in) -> (in, out), BN
weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var. A missing or unexpected key
or a shape mismatch raises a one-line ``ValueError``; ``num_batches_tracked`` counters are ignored.
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

DenseImporter = Callable[[Mapping[str, np.ndarray], Any], Any]
_SHOWN = 3  # names shown in an error message
# Old DenseNet checkpoints name dense-layer modules 'norm.1' instead of 'norm1' (torchvision's
# ``_load_state_dict`` rewrites them the same way).
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# ConvNormAct children -> torchvision's Conv2dNormActivation indices.
_CNA = {"conv": "0", "norm": "1"}


def _densenet_module(path: tuple[str, ...]) -> str:
    """torchvision module name of the jaxdl DenseNet module at ``path``."""
    top = {"stem_conv": "features.conv0", "stem_norm": "features.norm0"}
    top |= {"final_norm": "features.norm5", "head": "classifier"}
    if path[0] in top:
        return top[path[0]]
    if path[0].startswith("block"):
        _, layer, child = path
        return f"features.denseblock{path[0][5:]}.denselayer{layer[5:]}.{child}"
    return f"features.{'.'.join(path)}"  # transition{i}.norm / transition{i}.conv


def _efficientnet_module(path: tuple[str, ...], expands: bool) -> str:
    """torchvision module name of the jaxdl EfficientNet module at ``path``; ``expands``: the
    block at ``path`` has an expansion conv (shifting torchvision's indices by one)."""
    head, child = path[0], path[1:]
    if head == "head":
        return "classifier.1"
    if head == "top":
        return f"features.8.{_CNA[child[0]]}"
    if head == "stem":
        return f"features.0.{_CNA[child[0]]}"
    stage, block = head[len("stage") :].split("_block")
    prefix = f"features.{stage}.{int(block) - 1}.block"
    offset = int(expands)
    if child[0] == "se":
        return f"{prefix}.{offset + 1}.{child[1]}"
    index = {"expand": 0, "depthwise": offset, "project": offset + 2}[child[0]]
    return f"{prefix}.{index}.{_CNA[child[1]]}"


def _torch_leaf(collection: str, leaf: str) -> str:
    """torch parameter/buffer name of a jaxdl leaf."""
    if collection == "batch_stats":
        return {"mean": "running_mean", "var": "running_var"}[leaf]
    return {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]


def _to_jax(value: np.ndarray, leaf: str, ndim: int) -> np.ndarray:
    """torch layout -> jaxdl layout (conv OIHW -> HWIO, Linear transposed)."""
    if leaf == "kernel" and ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "kernel":
        return np.transpose(value)
    return value


def _copy(
    state_dict: Mapping[str, np.ndarray],
    variables: Any,
    module_name: Callable[[tuple[str, ...]], str],
    model: str,
) -> Any:
    """Fill ``variables`` from ``state_dict``, the torch module of each jaxdl module path given
    by ``module_name``."""
    state = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSE_KEY.match(key)
        state[match.group(1) + match.group(2) if match else key] = np.asarray(value)
    boxed = traverse_util.flatten_dict(unfreeze(variables))
    flat = {path: nn.unbox(box) for path, box in boxed.items()}
    targets = {}
    for path in flat:
        collection, *modules, leaf = path
        try:
            targets[f"{module_name(tuple(modules))}.{_torch_leaf(collection, leaf)}"] = path
        except (KeyError, ValueError, IndexError):
            raise ValueError(f"variables are not a jaxdl {model}: {'/'.join(path)}") from None
    names = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = sorted(set(targets) - names)
    unexpected = sorted(names - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"state_dict is not a torchvision {model}: missing {len(missing)} key(s) "
            f"{missing[:_SHOWN]}, unexpected {len(unexpected)} key(s) {unexpected[:_SHOWN]}"
        )
    out = {}
    for name, path in targets.items():
        target = flat[path]
        value = _to_jax(state[name], path[-1], target.ndim)
        if value.shape != target.shape:
            raise ValueError(
                f"state_dict is not a torchvision {model}: {name} has shape "
                f"{tuple(state[name].shape)}, expected one giving {tuple(target.shape)}"
            )
        value = value.astype(target.dtype)
        box = boxed[path]
        out[path] = box.replace_boxed(value) if isinstance(box, nn.meta.AxisMetadata) else value
    return traverse_util.unflatten_dict(out)


def import_densenet(state_dict: Mapping[str, np.ndarray], variables: Any) -> Any:
    """torchvision DenseNet -> jaxdl DenseNet: ``features.conv0/norm0`` -> ``stem_conv/norm``,
    ``denseblockI.denselayerJ.*`` -> ``blockI/layerJ/*``, ``transitionI.*`` -> same,
    ``features.norm5`` -> ``final_norm``, ``classifier`` -> ``head``."""
    return _copy(state_dict, variables, _densenet_module, "DenseNet of this depth")


def import_efficientnet(state_dict: Mapping[str, np.ndarray], variables: Any) -> Any:
    """torchvision EfficientNet -> jaxdl EfficientNet: ``features.0`` -> ``stem``,
    ``features.S.B.block.*`` -> ``stageS_block{B+1}/{expand,depthwise,se,project}``,
    ``features.8`` -> ``top``, ``classifier.1`` -> ``head``."""
    params = nn.unbox(variables["params"])

    def module_name(path: tuple[str, ...]) -> str:
        return _efficientnet_module(path, "expand" in params[path[0]])

    return _copy(state_dict, variables, module_name, "EfficientNet of this variant")


DENSE_IMPORTERS: dict[str, DenseImporter] = {
    "densenet121": import_densenet,
    "densenet169": import_densenet,
    **{f"efficientnet_b{i}": import_efficientnet for i in range(4)},
}
