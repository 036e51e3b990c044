"""Model outputs as a JSON-ready ``/predict`` response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def to_json_list(array: np.ndarray) -> list:
    """Nested lists; float32 values stay exact (a JSON double holds any float32), and NaN or
    infinite values, which JSON cannot hold, become ``null``."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        values = array.astype(object)
        values[~np.isfinite(array)] = None
        return values.tolist()
    return array.tolist()


def predict_response(
    outputs: Mapping[str, np.ndarray], class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """``{"outputs": {name: lists}}``; classifiers (a ``logits`` output) also get
    ``predictions`` (argmax class ids) and, given class names, ``predicted_classes``."""
    response: dict[str, Any] = {"outputs": {k: to_json_list(v) for k, v in outputs.items()}}
    if "logits" in outputs:
        ids = np.argmax(outputs["logits"], axis=-1)
        response["predictions"] = ids.tolist()
        if class_names:
            response["predicted_classes"] = [str(class_names[i]) for i in ids.ravel()]
    return response
