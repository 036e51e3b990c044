"""Copy torchvision AlexNet / MobileNetV2 / MobileNetV3 weights into jaxdl variables.

Each importer maps a torchvision ``state_dict`` (names -> arrays) onto the variables of the
matching jaxdl model (``{'params': ..., 'batch_stats': ...}``, boxed or not, e.g. from
``model.init``): conv weights OIHW -> HWIO, Linear weights (out, in) -> (in, out), BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var. Every torch tensor (except
``num_batches_tracked``) and every jaxdl variable must be matched, with equal shapes.
"""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util
from flax.core import meta

from jaxdl.models.alexnet import POOLED_SIZE

Path = tuple[str, ...]
# (torch name, jaxdl collection, path inside it, transform of the torch array)
Entry = tuple[str, str, Path, Callable[[np.ndarray], np.ndarray]]


def _same(a: np.ndarray) -> np.ndarray:
    """Unchanged (norm vectors, biases)."""
    return a


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [out, in / groups, kh, kw] -> HWIO."""
    return w.transpose(2, 3, 1, 0)


def _linear_kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> [in, out]."""
    return w.T


def _conv_norm(torch_prefix: str, path: Path) -> list[Entry]:
    """``Conv2dNormActivation`` (``.0`` conv, ``.1`` BatchNorm2d) -> ``ConvNormAct``."""
    return [
        (f"{torch_prefix}.0.weight", "params", (*path, "conv", "kernel"), _conv_kernel),
        *_norm(f"{torch_prefix}.1", (*path, "norm")),
    ]


def _norm(torch_prefix: str, path: Path) -> list[Entry]:
    """BatchNorm2d -> ``nn.BatchNorm`` params and batch_stats."""
    return [
        (f"{torch_prefix}.weight", "params", (*path, "scale"), _same),
        (f"{torch_prefix}.bias", "params", (*path, "bias"), _same),
        (f"{torch_prefix}.running_mean", "batch_stats", (*path, "mean"), _same),
        (f"{torch_prefix}.running_var", "batch_stats", (*path, "var"), _same),
    ]


def _dense(torch_prefix: str, path: Path, kernel=_linear_kernel) -> list[Entry]:
    """Linear (or, with ``kernel=_conv_kernel``, a biased conv) -> ``kernel``/``bias``."""
    return [
        (f"{torch_prefix}.weight", "params", (*path, "kernel"), kernel),
        (f"{torch_prefix}.bias", "params", (*path, "bias"), _same),
    ]


def _conv(torch_prefix: str, path: Path) -> list[Entry]:
    """Conv2d with bias -> ``Conv`` ``kernel``/``bias``."""
    return _dense(torch_prefix, path, _conv_kernel)


def _num_blocks(variables: Mapping[str, Any]) -> int:
    """Number of ``block{i}`` modules in the params."""
    return sum(1 for name in variables["params"] if name.startswith("block"))


def _copy(
    state_dict: Mapping[str, Any], variables: Mapping[str, Any], entries: list[Entry], model: str
) -> dict[str, Any]:
    """New variables with every entry's torch tensor copied in (after its transform)."""
    torch_keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    mapped = {name for name, *_ in entries}
    if torch_keys != mapped:
        missing, unexpected = sorted(mapped - torch_keys), sorted(torch_keys - mapped)
        raise ValueError(
            f"{model} state_dict: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    flat = {
        collection: traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for collection in ("params", "batch_stats")
    }
    targets = {(c, p) for c, tree in flat.items() for p in tree}
    unmatched = sorted(targets - {(c, p) for _, c, p, _ in entries})
    if unmatched:
        raise ValueError(f"{model}: jaxdl variables with no torch tensor: {unmatched[:5]}")
    for name, collection, path, transform in entries:
        if (collection, path) not in targets:
            raise ValueError(f"{model}: {name} maps to missing variable {collection}/{path}")
        leaf = flat[collection][path]
        value = np.asarray(transform(np.asarray(state_dict[name], dtype=np.float32)))
        target = meta.unbox(leaf)
        if value.shape != target.shape:
            raise ValueError(
                f"{model}: {name} has shape {value.shape} after conversion, "
                f"jaxdl {'/'.join(path)} needs {target.shape}"
            )
        value = value.astype(target.dtype)
        flat[collection][path] = (
            leaf.replace_boxed(value) if isinstance(leaf, meta.AxisMetadata) else value
        )
    out = dict(variables)
    for collection, tree in flat.items():
        if tree:
            out[collection] = traverse_util.unflatten_dict(tree)
    return out


def import_alexnet(state_dict: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision ``alexnet`` -> ``AlexNet`` variables (fc1's input permuted C,H,W -> H,W,C)."""

    def fc1_kernel(w: np.ndarray) -> np.ndarray:
        out, flat_in = w.shape
        grid = w.reshape(out, -1, POOLED_SIZE, POOLED_SIZE)
        return grid.transpose(2, 3, 1, 0).reshape(flat_in, out)

    entries = [
        entry
        for index, torch_index in enumerate((0, 3, 6, 8, 10), start=1)
        for entry in _conv(f"features.{torch_index}", (f"conv{index}",))
    ]
    entries += _dense("classifier.1", ("fc1",), fc1_kernel)
    entries += _dense("classifier.4", ("fc2",))
    entries += _dense("classifier.6", ("head",))
    return _copy(state_dict, variables, entries, "alexnet")


def import_mobilenet_v2(
    state_dict: Mapping[str, Any], variables: Mapping[str, Any]
) -> dict[str, Any]:
    """torchvision ``mobilenet_v2`` -> ``MobileNetV2`` variables."""
    params = variables["params"]
    blocks = _num_blocks(variables)
    entries = _conv_norm("features.0", ("stem",))
    for index in range(1, blocks + 1):
        block, prefix = f"block{index}", f"features.{index}.conv"
        parts = ["expand"] if "expand" in params[block] else []
        parts.append("depthwise")
        for i, part in enumerate(parts):
            entries += _conv_norm(f"{prefix}.{i}", (block, part))
        project = len(parts)
        entries.append(
            (
                f"{prefix}.{project}.weight",
                "params",
                (block, "project", "conv", "kernel"),
                _conv_kernel,
            )
        )
        entries += _norm(f"{prefix}.{project + 1}", (block, "project", "norm"))
    entries += _conv_norm(f"features.{blocks + 1}", ("last",))
    entries += _dense("classifier.1", ("head",))
    return _copy(state_dict, variables, entries, "mobilenet_v2")


def _import_mobilenet_v3(
    state_dict: Mapping[str, Any], variables: Mapping[str, Any], model: str
) -> dict[str, Any]:
    """torchvision ``mobilenet_v3_*`` -> ``MobileNetV3`` variables."""
    params = variables["params"]
    blocks = _num_blocks(variables)
    entries = _conv_norm("features.0", ("stem",))
    for index in range(1, blocks + 1):
        block = f"block{index}"
        parts = [p for p in ("expand", "depthwise", "se", "project") if p in params[block]]
        for i, part in enumerate(parts):
            prefix = f"features.{index}.block.{i}"
            if part == "se":
                entries += _conv(f"{prefix}.fc1", (block, "se", "fc1"))
                entries += _conv(f"{prefix}.fc2", (block, "se", "fc2"))
            else:
                entries += _conv_norm(prefix, (block, part))
    entries += _conv_norm(f"features.{blocks + 1}", ("last",))
    entries += _dense("classifier.0", ("fc",))
    entries += _dense("classifier.3", ("head",))
    return _copy(state_dict, variables, entries, model)


def import_mobilenet_v3_small(
    state_dict: Mapping[str, Any], variables: Mapping[str, Any]
) -> dict[str, Any]:
    """torchvision ``mobilenet_v3_small`` -> ``MobileNetV3(variant='small')`` variables."""
    return _import_mobilenet_v3(state_dict, variables, "mobilenet_v3_small")


def import_mobilenet_v3_large(
    state_dict: Mapping[str, Any], variables: Mapping[str, Any]
) -> dict[str, Any]:
    """torchvision ``mobilenet_v3_large`` -> ``MobileNetV3(variant='large')`` variables."""
    return _import_mobilenet_v3(state_dict, variables, "mobilenet_v3_large")


MOBILE_IMPORTERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]] = {
    "alexnet": import_alexnet,
    "mobilenet_v2": import_mobilenet_v2,
    "mobilenet_v3_small": import_mobilenet_v3_small,
    "mobilenet_v3_large": import_mobilenet_v3_large,
}
