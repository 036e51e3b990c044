"""Export of a trained experiment: its best checkpoint's model, verified on its own test data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Any

from jaxdl.data.tokenizer_store import TOKENIZER_FILENAME
from jaxdl.errors import UserError
from jaxdl.export.artifact import export_model
from jaxdl.export.inference import InferenceFunction, inference_function, stack_inputs
from jaxdl.train.steps import model_variables

# Examples of the test split the export is checked on.
VERIFY_EXAMPLES = 8


def experiment_inference(experiment, state) -> InferenceFunction:
    """The deployment function of ``experiment``'s model with ``state``'s variables."""
    try:
        return inference_function(experiment.task, experiment.model, model_variables(state))
    except NotImplementedError as error:
        raise UserError(f"cannot deploy this workdir: {error}") from None


def experiment_metadata(experiment, state, workdir: str) -> dict[str, Any]:
    """What exports and the server record about a run: task, model, classes, checkpoint step."""
    return {
        "task": experiment.task.name,
        "model": experiment.config.model.name,
        "class_names": experiment.data.info.get("class_names"),
        "checkpoint_step": int(state.step),
        "workdir": os.path.abspath(workdir),
    }


def sample_batch(experiment, inference: InferenceFunction, count: int = VERIFY_EXAMPLES):
    """The first ``count`` examples of the test split (else validation) as an input batch."""
    for split in ("test", "val", "train"):
        source = experiment.data.get(split)
        if len(source):
            records = [source[i] for i in range(min(count, len(source)))]
            return stack_inputs(records, inference.input_spec)
    raise UserError("the experiment has no data to verify the export on")


def export_experiment(
    experiment,
    state,
    workdir: str,
    fmt: str,
    out_dir: str,
    platforms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Writes ``state``'s model in ``fmt`` to ``out_dir`` (see ``export_model``), with the class
    names, the checkpoint step, the workdir's tokenizer for text models and the drift reference
    of the training split (``jaxdl.monitoring.reference``)."""
    from jaxdl.monitoring.reference import write_export_reference

    inference = experiment_inference(experiment, state)
    info = experiment_metadata(experiment, state, workdir)

    def write_extras(directory: str) -> dict[str, Any]:
        tokenizer = os.path.join(workdir, TOKENIZER_FILENAME)
        if os.path.isfile(tokenizer):
            shutil.copy2(tokenizer, os.path.join(directory, TOKENIZER_FILENAME))
        return write_export_reference(experiment, inference, directory, int(state.step))

    batch = sample_batch(experiment, inference)
    return export_model(inference, fmt, out_dir, batch, info, platforms, write_extras)
