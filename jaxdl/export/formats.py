"""Writers and loaders of exported graphs, each with a dynamic batch dimension.

- StableHLO through ``jax.export``: the serialised module reloads and runs with JAX alone, without
  the model's Python code.
- ONNX through ``jax2onnx`` (jax2tf's graph mode, which tf2onnx needed, is gone from JAX), run with
  onnxruntime. jax2onnx is an optional install: its wheel pins an older Orbax it never imports, so
  it is installed without dependencies (see the README's deploy section).

A loaded graph is a ``Runner``: ``runner(inputs: dict) -> dict`` of host arrays, named as in the
export's metadata.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from jaxdl.errors import UserError
from jaxdl.export.inference import InferenceFunction
from jaxdl.layers.conv import plain_ops, portable_ops

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

BATCH_DIM = "batch"
FILENAMES = {"stablehlo": "model.stablehlo", "onnx": "model.onnx"}
FORMATS = tuple(FILENAMES)


def export_stablehlo(
    inference: InferenceFunction, path: str, platforms: Sequence[str] | None = None
) -> None:
    """Serialises ``inference`` as a StableHLO module for ``platforms`` (default: this backend).
    The CPU-only formulations of ``jaxdl.layers`` are kept only for a CPU-only module."""
    (batch,) = jax.export.symbolic_shape(BATCH_DIM)
    targets = tuple(platforms or (jax.default_backend(),))
    ops = contextlib.nullcontext() if targets == ("cpu",) else plain_ops()
    with ops:
        exported = jax.export.export(jax.jit(inference.fn), platforms=targets)(
            *inference.abstract_inputs(batch)
        )
    with open(path, "wb") as handle:
        handle.write(exported.serialize())


def load_stablehlo(path: str, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """A runner for a module written by ``export_stablehlo``."""
    with open(path, "rb") as handle:
        exported = jax.export.deserialize(bytearray(handle.read()))
    call = jax.jit(exported.call)

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = call(*(inputs[name] for name in input_names))
        return {name: np.asarray(out) for name, out in zip(output_names, outputs, strict=True)}

    return run


def _jax2onnx():
    try:
        import jax2onnx
    except ImportError:
        raise UserError(
            "ONNX export needs jax2onnx: pip install onnx onnxruntime onnx-ir && "
            "pip install --no-deps jax2onnx==0.17.1 (or `make export-deps`)"
        ) from None
    return jax2onnx


def export_onnx(inference: InferenceFunction, path: str) -> None:
    """Converts ``inference`` to an ONNX file with a symbolic batch dimension. Inputs are declared
    with their dtypes (integer token ids and lengths stay integers)."""
    jax2onnx = _jax2onnx()
    inference = inference.unrolled()
    # Plain ops in convertible forms: onnxruntime has its own kernels, and jax2onnx 0.17.1
    # cannot lower pads, FFTs or broadcasts with a symbolic batch dimension.
    with portable_ops(), warnings.catch_warnings():
        # jax2onnx's LayerNorm asks for float64 constants that float32 JAX truncates, harmlessly.
        warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
        jax2onnx.to_onnx(
            inference.fn,
            inputs=inference.abstract_inputs(BATCH_DIM),
            model_name="jaxdl",
            input_names=list(inference.input_names),
            output_names=list(inference.output_names),
            return_mode="file",
            output_path=path,
        )
    _drop_stale_shapes(path)


def _drop_stale_shapes(path: str) -> None:
    """Removes the intermediate shape annotations of an ONNX file. jax2onnx 0.17.1's transpose
    folding moves Conv → BatchNorm → Relu chains to NCHW but keeps their NHWC annotations, which
    onnxruntime's shape inference then rejects ("Incompatible dimensions"); without them it
    infers the shapes itself. Inputs and outputs keep their declared shapes."""
    import onnx

    model = onnx.load(path)
    del model.graph.value_info[:]
    onnx.save(model, path)


def load_onnx(path: str, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """A runner for an ONNX file on onnxruntime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.asarray(inputs[name]) for name in input_names}
        outputs = session.run(list(output_names), feed)
        return dict(zip(output_names, outputs, strict=True))

    return run


WRITERS = {"stablehlo": export_stablehlo, "onnx": export_onnx}
LOADERS = {"stablehlo": load_stablehlo, "onnx": load_onnx}
