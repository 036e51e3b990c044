"""Deployment: a trained model as one inference function, exported to StableHLO, ONNX, TF
SavedModel or TFLite and verified against JAX on the experiment's own data (``jaxdl export``)."""

from jaxdl.export.artifact import (
    TOLERANCE,
    ExportMismatchError,
    check_inputs,
    export_model,
    input_spec_json,
    load_exported,
    package_versions,
    read_metadata,
)
from jaxdl.export.formats import FORMATS
from jaxdl.export.from_experiment import (
    experiment_inference,
    experiment_metadata,
    export_experiment,
    sample_batch,
)
from jaxdl.export.inference import InferenceFunction, inference_function, stack_inputs

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "ExportMismatchError",
    "InferenceFunction",
    "check_inputs",
    "experiment_inference",
    "experiment_metadata",
    "export_experiment",
    "export_model",
    "inference_function",
    "input_spec_json",
    "load_exported",
    "package_versions",
    "read_metadata",
    "sample_batch",
    "stack_inputs",
]
