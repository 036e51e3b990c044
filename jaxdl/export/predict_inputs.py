"""Offline batch inference over files (``jaxdl predict --workdir W INPUTS...``).

Each input is read by the server's upload decoders (``jaxdl.serving.uploads``), so a file gets
the prediction ``POST /predict`` gives its body, and batched through ``infer_records``, the loop
``jaxdl predict --split`` runs. INPUTS expand in the order given:

* a file: itself (image models: ``.png``, ``.jpg``, ``.jpeg``; speech models: ``.wav``,
  ``.flac``, ``.ogg``);
* a folder: its files of those extensions, recursively, in sorted path order (hidden ones
  skipped);
* text models: a ``.csv`` file gives one text per row from its ``--text-column``, a ``.txt``
  file one text per line, blank lines skipped; a folder gives its ``.csv`` and ``.txt`` files.

Rows are named ``path`` (files) or ``path:N`` (the Nth data row of a CSV, header not counted;
line N of a ``.txt``). An input that cannot be decoded (a corrupt image, an empty text, audio
that is unreadable or too long) or whose inputs or outputs are not finite keeps its row with
the reason in ``error``, or stops the run under ``on_error="stop"``; paths, folders and CSV
columns that do not exist are a one-line ``UserError``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxdl.data.records import RecordError
from jaxdl.errors import DataError, UserError
from jaxdl.export.inference import InferenceFunction
from jaxdl.export.predictions import OUTPUT_SUFFIXES, infer_records
from jaxdl.serving.uploads import AudioUploads, Decoded, ImageUploads, TextUploads, Uploads
from jaxdl.serving.validation import RequestError

# The media type each file extension is decoded as, per model family.
IMAGE_FILES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
AUDIO_FILES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg"}
TEXT_FILES = (".csv", ".txt")
ON_ERROR = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class Input:
    """One row of the output: its name, and the file to decode or the text itself."""

    name: str
    path: str | None = None
    text: str | None = None


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a run wrote: inputs, skipped ones and texts cut to the model's length."""

    inputs: int
    skipped: int
    truncated: int
    out: str

    def line(self) -> str:
        """The one-line report ``jaxdl predict`` prints."""
        text = f"{self.inputs:,} inputs, {self.skipped:,} skipped"
        if self.skipped:
            text += " (see error column)"
        if self.truncated:
            text += f", {self.truncated:,} texts cut to the model's length (truncated column)"
        return f"{text}; predictions in {self.out}"


def file_types(uploads: Uploads) -> tuple[str, ...]:
    """The file extensions ``uploads``'s model family takes."""
    if isinstance(uploads, TextUploads):
        return TEXT_FILES
    table = IMAGE_FILES if isinstance(uploads, ImageUploads) else AUDIO_FILES
    return tuple(ext for ext, media in table.items() if media in uploads.media_types)


def _folder_files(folder: str, types: tuple[str, ...]) -> list[str]:
    """``folder``'s files of ``types`` at any depth, sorted by path components."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in types:
                found.append(os.path.join(root, name))
    return sorted(found, key=lambda p: os.path.relpath(p, folder).split(os.sep))


def _csv_texts(path: str, column: str) -> list[Input]:
    try:
        # Undecodable bytes survive as surrogates: only their own row fails (not valid Unicode).
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                found = ", ".join(repr(c) for c in reader.fieldnames or []) or "none"
                raise UserError(
                    f"{path}: no column {column!r} (columns: {found}); choose with --text-column"
                )
            return [Input(f"{path}:{n}", text=row[column] or "") for n, row in enumerate(reader, 1)]
    except (OSError, csv.Error) as error:
        raise UserError(f"cannot read {path} as CSV: {error}") from None


def _txt_texts(path: str) -> list[Input]:
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error}") from None
    return [Input(f"{path}:{n}", text=line) for n, line in enumerate(lines, 1) if line.strip()]


def _file_inputs(path: str, uploads: Uploads, text_column: str) -> list[Input]:
    ext = os.path.splitext(path)[1].lower()
    types = file_types(uploads)
    if ext not in types:
        raise UserError(f"{path}: this model takes {', '.join(types)} files")
    if not isinstance(uploads, TextUploads):
        return [Input(path, path=path)]
    texts = _csv_texts(path, text_column) if ext == ".csv" else _txt_texts(path)
    if not texts:
        raise UserError(f"{path}: no texts in this file")
    return texts


def expand_inputs(paths: Sequence[str], uploads: Uploads, text_column: str = "text") -> list[Input]:
    """``paths`` as the rows to predict, in order (see the module docstring); a one-line
    ``UserError`` for a missing path, a folder without usable files or a CSV without
    ``text_column``."""
    inputs: list[Input] = []
    for path in paths:
        if os.path.isdir(path):
            files = _folder_files(path, file_types(uploads))
            if not files:
                raise UserError(f"{path}: no {', '.join(file_types(uploads))} files in this folder")
            for file in files:
                inputs += _file_inputs(file, uploads, text_column)
        elif os.path.isfile(path):
            inputs += _file_inputs(path, uploads, text_column)
        else:
            raise UserError(f"input not found: {path}")
    return inputs


class DecodedInputs:
    """``inputs`` as model records, decoded when read (a batch at a time, as a split's records
    are): an undecodable input or one with NaN/inf values is a ``RecordError``."""

    def __init__(self, inputs: Sequence[Input], uploads: Uploads):
        self.inputs, self.uploads = inputs, uploads
        self.truncated: set[int] = set()  # indices of the texts cut to the model's length

    def __len__(self) -> int:
        return len(self.inputs)

    def _decode(self, item: Input) -> Decoded:
        """The server's decoding of the text, or of the file's bytes as its extension's type;
        its messages speak of one text and of files, not of request bodies."""
        if item.text is not None:
            try:
                return self.uploads.decode_json({"text": item.text}, 1)
            except RequestError as error:  # texts go one at a time: "text 0" is this one
                raise RecordError(error.message.replace("text 0 ", "text ", 1)) from None
        media = {**IMAGE_FILES, **AUDIO_FILES}[os.path.splitext(item.path)[1].lower()]
        try:
            with open(item.path, "rb") as handle:
                body = handle.read()
        except OSError as error:
            raise RecordError(f"cannot read the file: {error}") from None
        if not body:
            raise RecordError("empty file")
        try:
            return self.uploads.decode(body, media, 1)
        except RequestError as error:
            raise RecordError(error.message.replace(" the body ", " the file ")) from None

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        decoded = self._decode(self.inputs[index])
        record = {name: value[0] for name, value in decoded.inputs.items()}
        for name, value in record.items():
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                raise RecordError(f"NaN or infinite values in the model's {name!r}")
        if decoded.notes.get("truncated"):
            self.truncated.add(index)
        return record


def _columns(uploads: Uploads, class_names: Sequence[str]) -> list[str]:
    if isinstance(uploads, AudioUploads):
        beam = ["beam_transcript"] if uploads.task.beam_width > 0 else []
        return ["input", "prediction", *beam, "error"]
    columns = ["input", "prediction", "predicted_class", "confidence"]
    columns += [f"p_{name}" for name in class_names]
    return columns + (["truncated"] if isinstance(uploads, TextUploads) else []) + ["error"]


def _table_row(row: dict[str, Any], inputs: DecodedInputs, names: Sequence[str]) -> dict[str, Any]:
    """One output line of an ``infer_records`` row: the prediction, or the reason there is
    none (also when the model's outputs are not finite)."""
    line: dict[str, Any] = {"input": inputs.inputs[row["index"]].name}
    outputs = row.get("outputs", {})
    if "error" not in row and not all(np.all(np.isfinite(v)) for v in outputs.values()):
        row = {**row, "error": "the model's outputs are NaN or infinite"}
    if "error" in row:
        return line | {"error": row["error"]}
    if isinstance(inputs.uploads, AudioUploads):
        texts = inputs.uploads.respond({name: value[None] for name, value in outputs.items()})
        line["prediction"] = texts["transcripts"][0]
        if "beam_transcripts" in texts:
            line["beam_transcript"] = texts["beam_transcripts"][0]
    else:
        probs = np.asarray(outputs["probabilities"], np.float64)
        top = int(np.argmax(probs))
        line |= {"prediction": top, "predicted_class": names[top], "confidence": float(probs[top])}
        line |= {f"p_{name}": float(p) for name, p in zip(names, probs, strict=True)}
        if isinstance(inputs.uploads, TextUploads):
            line["truncated"] = row["index"] in inputs.truncated
    return line | {"error": ""}


def _write_atomically(lines: Iterable[dict[str, Any]], path: str, columns: list[str]) -> None:
    """Streams ``lines`` to ``path`` (CSV or JSON lines, by its suffix) through ``path.partial``,
    renamed when complete: a failed or killed run never leaves a truncated ``path``."""
    suffix = os.path.splitext(path)[1].lower()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    try:
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            if suffix == ".csv":
                writer = csv.DictWriter(handle, columns, restval="")
                writer.writeheader()
                writer.writerows(lines)
            else:
                for line in lines:
                    handle.write(json.dumps({c: line.get(c, "") for c in columns}) + "\n")
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def predict_inputs(
    inference: InferenceFunction,
    uploads: Uploads,
    inputs: Sequence[Input],
    out: str,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    on_error: str = "skip",
) -> Summary:
    """Writes one row per input to ``out`` (``.csv`` or ``.jsonl``), in order: ``input``,
    ``prediction`` (class id, or a CTC model's greedy transcript), ``predicted_class``,
    ``confidence`` and a ``p_<class>`` column per class (classifiers), ``truncated`` (text),
    ``beam_transcript`` (CTC with beam search), ``error``. ``on_error="stop"``: the first
    undecodable input is a one-line ``DataError`` and nothing is written."""
    if os.path.splitext(out)[1].lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out must end in one of {OUTPUT_SUFFIXES}, got {out!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not inputs:
        raise UserError("no inputs to predict")
    classifier = not isinstance(uploads, AudioUploads)
    if classifier and "probabilities" not in inference.output_names:
        raise UserError("predict needs a classification model (outputs 'probabilities')")
    names: list[str] = []
    if classifier:
        count = inference.task.num_classes
        names = list(class_names) if class_names else [str(c) for c in range(count)]
    source = DecodedInputs(inputs, uploads)
    skipped = 0

    def lines() -> Iterator[dict[str, Any]]:
        nonlocal skipped
        for row in infer_records(inference, source, batch_size):
            line = _table_row(row, source, names)
            if line["error"]:
                if on_error == "stop":
                    raise DataError(f"{line['input']}: {line['error']} (--on-error stop)")
                skipped += 1
            yield line

    _write_atomically(lines(), out, _columns(uploads, names))
    return Summary(len(inputs), skipped, len(source.truncated), out)
