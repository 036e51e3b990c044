"""An export directory: the graph, ``metadata.json`` and what a client needs beside it.

``export_model`` writes the graph, reloads it, runs it on real examples of the experiment's data
and compares it with the model in JAX: an export whose outputs differ by more than the tolerance is
removed and reported, never left behind as a silently wrong model. ``load_exported`` gives a
runner over the directory that checks the inputs it is given against the recorded spec.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata as package_metadata
from typing import Any

import numpy as np

from jaxdl.errors import JaxdlExit, UserError
from jaxdl.export.formats import FILENAMES, LOADERS, PLATFORM_FORMATS, WRITERS, Runner
from jaxdl.export.inference import InferenceFunction

METADATA_FILENAME = "metadata.json"
# Largest |exported - JAX| accepted for float outputs (float32 graphs; integer outputs must match).
TOLERANCE = 1e-4


class ExportMismatchError(JaxdlExit):
    """The exported graph's outputs differ from the model's in JAX beyond the tolerance."""

    exit_code = 1


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return found


def input_spec_json(inference: InferenceFunction) -> dict[str, Any]:
    """The inputs as metadata records them: ``{name: {"shape": ["batch", ...], "dtype"}}``."""
    return {
        name: {"shape": ["batch", *field.shape], "dtype": np.dtype(field.dtype).name}
        for name, field in inference.input_spec.items()
    }


def max_abs_errors(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Largest absolute difference per output (shapes must agree: a mismatch is infinite)."""
    errors = {}
    for name, want in expected.items():
        got = np.asarray(actual[name])
        if got.shape != want.shape:
            errors[name] = float("inf")
            continue
        errors[name] = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    return errors


def export_model(
    inference: InferenceFunction,
    fmt: str,
    out_dir: str,
    sample: Mapping[str, np.ndarray],
    info: Mapping[str, Any],
    platforms: Sequence[str] | None = None,
    write_extras: Callable[[str], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Writes ``inference`` in format ``fmt`` into the new directory ``out_dir`` with its
    metadata (``info``: task, model, class names, checkpoint step, ...), verified on ``sample``
    (an input batch). Returns the metadata. Raises ``ExportMismatchError`` (and removes the
    directory) when the reloaded graph disagrees with JAX. ``write_extras(out_dir)`` writes
    files beside the graph (tokenizer, drift reference) before ``metadata.json``, which is
    written last and so marks a complete export; it returns entries for the metadata."""
    if fmt not in WRITERS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {sorted(WRITERS)}")
    with staged_directory(out_dir, "export directory") as staging:
        return _write_export(inference, fmt, staging, sample, info, platforms, write_extras)


@contextlib.contextmanager
def staged_directory(out_dir: str, what: str) -> Iterator[str]:
    """Yields a staging directory (``OUT_DIR.partial``) that becomes ``out_dir`` only when the
    block finishes, so a kill never leaves a half-written ``out_dir``. ``out_dir`` must be new or
    empty (else a one-line ``UserError`` naming ``what``); the leftovers of a killed earlier run
    (a stale ``.partial``) are removed first; on any error the staging directory is removed."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UserError(f"{what} {out_dir} exists and is not empty")
    staging = out_dir.rstrip(os.sep) + ".partial"
    if os.path.exists(staging):
        print(f"removing {staging}, left by an interrupted run", flush=True)
        shutil.rmtree(staging)
    os.makedirs(staging)
    try:
        yield staging
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); rename does not replace a directory
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_export(
    inference: InferenceFunction,
    fmt: str,
    out_dir: str,
    sample: Mapping[str, np.ndarray],
    info: Mapping[str, Any],
    platforms: Sequence[str] | None,
    write_extras: Callable[[str], Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """``export_model``'s body, writing into the (staging) directory ``out_dir``."""
    graph_path = os.path.join(out_dir, FILENAMES[fmt])
    if fmt in PLATFORM_FORMATS:
        WRITERS[fmt](inference, graph_path, platforms)
    else:
        WRITERS[fmt](inference, graph_path)
    runner = LOADERS[fmt](graph_path, inference.input_names, inference.output_names)
    errors = max_abs_errors(inference(sample), runner(sample))
    worst = max(errors.values(), default=0.0)
    if not worst <= TOLERANCE:
        raise ExportMismatchError(
            f"{fmt} export differs from the JAX model by {worst:.3g} (> {TOLERANCE}) on "
            f"{len(next(iter(sample.values())))} examples: {errors}; nothing was written"
        )
    meta = {
        "format": fmt,
        "graph": FILENAMES[fmt],
        "inputs": input_spec_json(inference),
        "outputs": list(inference.output_names),
        **info,
        "verified": {
            "examples": int(len(next(iter(sample.values())))),
            "max_abs_error": errors,
            "tolerance": TOLERANCE,
        },
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(
            ["jaxdl", "jax", "jaxlib", "flax", "jax2onnx", "onnx", "onnxruntime"]
            + ["tensorflow", "tensorflow-cpu"]
        ),
    }
    if fmt in PLATFORM_FORMATS:
        meta["platforms"] = list(platforms or [])
    if write_extras is not None:
        meta.update(write_extras(out_dir))
    with open(os.path.join(out_dir, METADATA_FILENAME), "w") as handle:
        json.dump(meta, handle, indent=2)
    return meta


def read_metadata(export_dir: str) -> dict[str, Any]:
    """The metadata of an export directory (a clear error when it is not one)."""
    path = os.path.join(export_dir, METADATA_FILENAME)
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{export_dir} is not a jaxdl export: no {METADATA_FILENAME}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None


def check_inputs(meta: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``inputs`` as arrays of the recorded dtypes; ``UserError`` naming the first field that is
    missing, has the wrong shape, or does not convert safely."""
    checked, batch = {}, None
    for name, spec in meta["inputs"].items():
        if name not in inputs:
            raise UserError(f"missing input {name!r}; the model takes {sorted(meta['inputs'])}")
        dtype = np.dtype(spec["dtype"])
        try:
            value = np.asarray(inputs[name])
        except (ValueError, TypeError) as error:
            raise UserError(f"input {name!r} is not a rectangular array: {error}") from None
        integer_target = np.issubdtype(dtype, np.integer)
        if value.dtype.kind not in "biuf" or (integer_target and value.dtype.kind == "f"):
            raise UserError(f"input {name!r} must hold {dtype.name} values, got {value.dtype}")
        expected = tuple(spec["shape"][1:])
        if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected:
            raise UserError(
                f"input {name!r} has shape {list(value.shape)}, the model takes "
                f"[batch, {', '.join(map(str, expected))}]"
            )
        if batch is not None and value.shape[0] != batch:
            raise UserError(f"input {name!r} has batch {value.shape[0]}, other inputs {batch}")
        batch = value.shape[0]
        checked[name] = value.astype(dtype)
    return checked


def load_exported(export_dir: str) -> Runner:
    """A runner over an export directory: ``runner(inputs) -> outputs`` (dicts of arrays),
    inputs checked against the recorded spec first."""
    meta = read_metadata(export_dir)
    path = os.path.join(export_dir, meta["graph"])
    run = LOADERS[meta["format"]](path, list(meta["inputs"]), meta["outputs"])
    return lambda inputs: run(check_inputs(meta, inputs))
