"""A trained model as one pure inference function over the task's deployment inputs.

Export formats, the server and ``jaxdl predict`` all start here, so they compute the same thing:
``task.serving_outputs`` of the model in inference mode, with the variables gathered to the host
(a deployed graph runs on one device, whatever mesh trained it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdl.errors import DataError
from jaxdl.tasks.base import BatchSpec, Task


@dataclasses.dataclass(frozen=True)
class InferenceFunction:
    """``fn(*inputs) -> outputs``: positional inputs in ``input_spec`` order (each with a leading
    batch axis), a tuple of outputs in ``output_names`` order."""

    fn: Callable[..., tuple[jax.Array, ...]]
    input_spec: BatchSpec
    output_names: tuple[str, ...]
    task: Task
    model: nn.Module
    variables: Any

    def unrolled(self) -> InferenceFunction:
        """The same function with ``nn.scan``-ned layer stacks unrolled (same values): for
        converters that cannot trace flax's scan (jax2onnx 0.17.1 makes the shapes it reads
        dynamic)."""
        model, variables = unroll_scanned_layers(self.model, self.variables)
        if model is self.model:
            return self
        return inference_function(self.task, model, variables)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.input_spec)

    def abstract_inputs(self, batch: Any) -> list[jax.ShapeDtypeStruct]:
        """The inputs for a batch dimension ``batch`` (an int or a symbolic dimension)."""
        return [
            jax.ShapeDtypeStruct((batch, *field.shape), np.dtype(field.dtype))
            for field in self.input_spec.values()
        ]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the function on a dict of inputs; a dict of host arrays back."""
        outputs = jax.jit(self.fn)(*(inputs[name] for name in self.input_names))
        return {name: np.asarray(out) for name, out in zip(self.output_names, outputs, strict=True)}


def inference_function(task: Task, model: nn.Module, variables: Any) -> InferenceFunction:
    """The deployment function of ``model`` with ``variables`` (params plus non-trainable
    collections) for ``task``; ``NotImplementedError`` for tasks without deployment inputs."""
    spec = task.input_spec()
    names = tuple(spec)
    host_variables = jax.device_get(nn.meta.unbox(variables))

    def forward(*args, **kwargs):
        return model.apply(host_variables, *args, train=False, **kwargs)

    def outputs(*arrays):
        return task.serving_outputs(forward, dict(zip(names, arrays, strict=True)))

    one = [jax.ShapeDtypeStruct((1, *f.shape), np.dtype(f.dtype)) for f in spec.values()]
    output_names = tuple(jax.eval_shape(outputs, *one))

    def fn(*arrays):
        named = outputs(*arrays)
        return tuple(named[name] for name in output_names)

    return InferenceFunction(fn, spec, output_names, task, model, host_variables)


def unroll_scanned_layers(model: nn.Module, variables: Any) -> tuple[nn.Module, Any]:
    """``model`` with ``scan_layers=False`` and ``variables`` restructured to match: the stacked
    ``layers`` subtree of a scanned ``TransformerStack`` becomes ``layers_0``, ``layers_1``, ...
    (the names the unrolled stack uses). Models without ``scan_layers=True`` come back as is."""
    if not getattr(model, "scan_layers", False):
        return model, variables

    def unroll(tree: Any) -> Any:
        if not isinstance(tree, Mapping):
            return tree
        out = {}
        for key, value in tree.items():
            if key == "layers" and isinstance(value, Mapping):
                count = jax.tree.leaves(value)[0].shape[0]
                for index in range(count):
                    out[f"layers_{index}"] = jax.tree.map(lambda a, i=index: a[i], value)
            else:
                out[key] = unroll(value)
        return out

    return model.clone(scan_layers=False), {name: unroll(t) for name, t in variables.items()}


def stack_inputs(records: Sequence[Mapping[str, Any]], spec: BatchSpec) -> dict[str, np.ndarray]:
    """A batch of ``spec``'s fields from records, each padded along its first axis to the field's
    shape with the field's pad value (variable-length audio and text arrive shorter)."""
    if not records:
        raise DataError("no records to build a batch from")
    batch = {}
    for name, field in spec.items():
        rows = []
        for record in records:
            value = np.asarray(record[name], dtype=np.dtype(field.dtype))
            if field.shape and value.shape[0] < field.shape[0]:
                pad = [(0, field.shape[0] - value.shape[0])] + [(0, 0)] * (value.ndim - 1)
                value = np.pad(value, pad, constant_values=field.pad_value)
            if tuple(value.shape) != tuple(field.shape):
                raise DataError(
                    f"input {name!r} has shape {value.shape}, the model takes {field.shape}"
                )
            rows.append(value)
        batch[name] = np.stack(rows)
    return batch
