"""Writers and loaders of exported graphs, each with a dynamic batch dimension.

- StableHLO through ``jax.export``: the serialised module reloads and runs with JAX alone, without
  the model's Python code.
- ONNX through ``jax2onnx`` (jax2tf's graph mode, which tf2onnx needed, is gone from JAX), run with
  onnxruntime. jax2onnx is an optional install: its wheel pins an older Orbax it never imports, so
  it is installed without dependencies (see the README's deploy section).
- TF SavedModel through ``jax2tf`` (native serialisation: the StableHLO module inside an
  ``XlaCallModule`` op), run with TensorFlow; TFLite converted from that SavedModel by TensorFlow's
  converter into builtin TFLite ops. Both need the optional ``tf`` extra (``make export-tf-deps``).

A loaded graph is a ``Runner``: ``runner(inputs: dict) -> dict`` of host arrays, named as in the
export's metadata.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType

import jax
import numpy as np

from jaxdl.errors import UserError
from jaxdl.export.inference import InferenceFunction
from jaxdl.layers.conv import plain_ops, portable_ops

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

BATCH_DIM = "batch"
FILENAMES = {
    "stablehlo": "model.stablehlo",
    "onnx": "model.onnx",
    "savedmodel": "saved_model",  # a directory
    "tflite": "model.tflite",
}
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
    infers the shapes itself. Inputs and outputs keep their declared shapes. The graph is saved
    with its weights inline (jax2onnx moves tensors of 1 MB or more to a ``.data`` file, which is
    removed here)."""
    import onnx

    stored = onnx.load(path, load_external_data=False)
    external = {
        entry.value
        for tensor in stored.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    model = onnx.load(path)
    del model.graph.value_info[:]
    onnx.save(model, path)  # inline: the external data file jax2onnx wrote is now unused
    for name in external:
        os.remove(os.path.join(os.path.dirname(path), name))


def load_onnx(path: str, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """A runner for an ONNX file on onnxruntime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.asarray(inputs[name]) for name in input_names}
        outputs = session.run(list(output_names), feed)
        return dict(zip(output_names, outputs, strict=True))

    return run


def _tensorflow(fmt: str) -> tuple[ModuleType, ModuleType]:
    """TensorFlow and ``jax2tf``, or a one-line ``UserError`` naming the extra to install."""
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError:
        raise UserError(
            f"{fmt} export needs the tf extra: make export-tf-deps (pip install -e '.[tf]')"
        ) from None
    return tf, jax2tf


def export_savedmodel(
    inference: InferenceFunction, path: str, platforms: Sequence[str] | None = None
) -> None:
    """Writes ``inference`` as a TF SavedModel directory whose ``serving_default`` signature
    takes and returns the named tensors with a ``None`` batch dimension. The graph embeds the
    StableHLO module for ``platforms`` (default: this backend); the CPU-only formulations of
    ``jaxdl.layers`` are kept only for a CPU-only module, as for ``export_stablehlo``."""
    tf, jax2tf = _tensorflow("savedmodel")
    targets = tuple(platforms or (jax.default_backend(),))
    ops = contextlib.nullcontext() if targets == ("cpu",) else plain_ops()
    converted = jax2tf.convert(
        inference.fn,
        polymorphic_shapes=[f"({BATCH_DIM}, ...)"] * len(inference.input_names),
        with_gradient=False,
        native_serialization_platforms=targets,
    )
    signature = [
        tf.TensorSpec((None, *field.shape), np.dtype(field.dtype), name=name)
        for name, field in inference.input_spec.items()
    ]
    names = inference.output_names

    @tf.function(autograph=False, input_signature=signature)
    def serve(*inputs):
        return dict(zip(names, converted(*inputs), strict=True))

    module = tf.Module()
    module.serve = serve
    with ops:  # the trace (and so the lowering) happens while saving
        tf.saved_model.save(module, path, signatures={"serving_default": serve})


def load_savedmodel(path: str, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """A runner for a SavedModel written by ``export_savedmodel`` (its serving signature)."""
    tf, _ = _tensorflow("savedmodel")
    serve = tf.saved_model.load(path).signatures["serving_default"]

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = serve(**{name: tf.constant(inputs[name]) for name in input_names})
        return {name: outputs[name].numpy() for name in output_names}

    return run


def export_tflite(inference: InferenceFunction, path: str) -> None:
    """Converts ``inference`` to a float32 TFLite flatbuffer of builtin ops with a dynamic batch
    dimension, through a CPU SavedModel of plain ops (TFLite has its own kernels)."""
    tf, _ = _tensorflow("tflite")
    with tempfile.TemporaryDirectory() as saved, plain_ops():
        export_savedmodel(inference, saved, ("cpu",))
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
    with open(path, "wb") as handle:
        handle.write(flatbuffer)


def load_tflite(path: str, input_names: Sequence[str], output_names: Sequence[str]) -> Runner:
    """A runner for a TFLite file on TensorFlow's interpreter. Its signature runner resizes the
    inputs to each call's batch."""
    tf, _ = _tensorflow("tflite")
    with warnings.catch_warnings():
        # tf.lite.Interpreter announces its move to the separate ai-edge-litert package.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = runner(**{name: np.asarray(inputs[name]) for name in input_names})
        return {name: np.asarray(outputs[name]) for name in output_names}

    return run


WRITERS = {
    "stablehlo": export_stablehlo,
    "onnx": export_onnx,
    "savedmodel": export_savedmodel,
    "tflite": export_tflite,
}
LOADERS = {
    "stablehlo": load_stablehlo,
    "onnx": load_onnx,
    "savedmodel": load_savedmodel,
    "tflite": load_tflite,
}
# Formats whose writer takes the target platforms (``jaxdl export --platforms``).
PLATFORM_FORMATS = ("stablehlo", "savedmodel")
