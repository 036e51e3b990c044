"""A ``/predict`` body checked into model inputs, or one line saying what is wrong with it.

The body is JSON: ``{"inputs": {name: nested list}}``, each value a batch (leading axis = the
examples, 1 to ``max_batch`` of them) of the shape and dtype ``/metadata`` lists. Refused:

* 400: not JSON (NaN/Infinity literals parse, and are then refused as below), not an object, keys
  other than ``inputs``, ``inputs`` not an object;
* 413: more than ``max_batch`` examples (split the request); the body size limit is the app's;
* 422: a missing or unknown input name, a ragged or non-numeric array, floats for an integer
  input, integers outside the input's range, a wrong shape, an empty batch, inputs of different
  batch sizes, NaN or infinite values in a float input (also finite numbers too large for it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxdl.errors import UserError
from jaxdl.export.artifact import check_inputs

MAX_MESSAGE_CHARS = 300


class RequestError(Exception):
    """A client mistake: the HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        line = (str(message).splitlines() or [""])[0]
        if len(line) > MAX_MESSAGE_CHARS:
            line = line[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(line)
        self.status = status
        self.message = line


def parse_json(body: bytes) -> Any:
    """The decoded body; 400 when it is empty or not JSON (or nested too deeply to decode)."""
    if not body.strip():
        raise RequestError(400, 'empty body; send JSON {"inputs": {name: batch}}')
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"body is not valid JSON: {error}") from None
    except (ValueError, RecursionError) as error:  # bad UTF-8, 4300+ digit ints, deep nesting
        reason = f"{type(error).__name__}: {error}"
        raise RequestError(400, f"body is not valid JSON: {reason}") from None


def _check_range(name: str, value: np.ndarray, dtype: np.dtype) -> None:
    if np.issubdtype(dtype, np.integer) and value.dtype.kind in "iu" and value.size:
        info = np.iinfo(dtype)
        low, high = value.min(), value.max()
        if low < info.min or high > info.max:
            raise RequestError(
                422,
                f"input {name!r} has values outside the {dtype.name} range [{info.min}, "
                f"{info.max}]",
            )


def check_request(
    payload: Any, meta_inputs: Mapping[str, Mapping[str, Any]], max_batch: int
) -> dict[str, np.ndarray]:
    """The inputs of a decoded body as arrays of the model's dtypes (see the module doc)."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"body must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"inputs"})
    if unknown:
        raise RequestError(400, f'unknown key(s) {unknown}; the body is {{"inputs": {{...}}}}')
    if "inputs" not in payload:
        raise RequestError(400, "missing key 'inputs'; the body is {\"inputs\": {name: batch}}")
    inputs = payload["inputs"]
    if not isinstance(inputs, dict):
        raise RequestError(400, f"'inputs' must be an object, got {type(inputs).__name__}")
    extra = sorted(set(inputs) - set(meta_inputs))
    if extra:
        raise RequestError(422, f"unknown input(s) {extra}; the model takes {sorted(meta_inputs)}")
    for name, value in inputs.items():
        if isinstance(value, list) and not value:
            raise RequestError(422, f"input {name!r} is an empty batch; send 1 to {max_batch}")
    arrays = {}
    for name, value in inputs.items():
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError) as error:
            raise RequestError(422, f"input {name!r} is not a rectangular array: {error}") from None
        _check_range(name, array, np.dtype(meta_inputs[name]["dtype"]))
        arrays[name] = array  # check_inputs names any other problem
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            checked = check_inputs({"inputs": meta_inputs}, arrays)
    except UserError as error:
        raise RequestError(422, str(error)) from None
    batch = next(iter(checked.values())).shape[0]
    if batch == 0:
        raise RequestError(422, f"empty batch; send 1 to {max_batch} examples")
    if batch > max_batch:
        raise RequestError(
            413, f"{batch} examples exceed the server's max_batch of {max_batch}; split the request"
        )
    for name, array in checked.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RequestError(
                422,
                f"input {name!r} holds NaN or infinite values (or numbers too large for "
                f"{array.dtype.name}); they are refused",
            )
    return checked
