"""Speech record sources that decode one utterance at a time: manifests and 🤗 audio folders.

A source keeps only paths, transcripts and metadata columns; ``source[i]`` reads file ``i`` with
soundfile, averages its channels and resamples it to ``sample_rate``, giving ``{"audio": float32
[n] in [-1, 1], "text": str, <metadata columns>}``. ``duration_seconds(i)`` reads only the file's
header, so a length-bucketing sampler can group utterances without decoding them.

A manifest that cannot be used (missing, unparsable, without rows or a needed column) is a
one-line ``DataError`` naming the file. An audio file that is missing, is not audio, holds no
samples, or a transcript that is empty, is a ``RecordError`` naming the file (``data.on_error``
decides: stop, or skip and count).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from jaxdl.data.records import Record, RecordError
from jaxdl.errors import DataError

MANIFEST_FORMATS = (".csv", ".tsv", ".jsonl")
AUDIO_FOLDER_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def _soundfile(read: Callable[[str], Any], path: str) -> Any:
    """``read(path)`` with a missing or undecodable file as a ``RecordError`` naming it."""
    if not os.path.isfile(path):
        raise RecordError(f"audio file {path} does not exist")
    try:
        return read(path)
    except (sf.SoundFileError, RuntimeError) as error:
        reason = getattr(error, "error_string", None) or str(error)
        raise RecordError(f"cannot decode audio file {path}: {reason}") from None


def decode_audio(path: str, sample_rate: int) -> np.ndarray:
    """The audio file ``path`` as float32 mono samples in [-1, 1] at ``sample_rate``."""
    data, rate = _soundfile(lambda p: sf.read(p, dtype="float32", always_2d=True), path)
    return mono_at_rate(data, rate, sample_rate, f"audio file {path}")


def mono_at_rate(data: np.ndarray, rate: int, sample_rate: int, name: str) -> np.ndarray:
    """Decoded float32 frames [n, channels] at ``rate`` as mono samples in [-1, 1] at
    ``sample_rate`` (channels averaged); a ``RecordError`` naming ``name`` when there are none
    or some are not finite."""
    if not len(data):
        raise RecordError(f"{name} holds no samples")
    if not np.isfinite(data).all():
        raise RecordError(f"{name} holds NaN or infinite samples")
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        divisor = math.gcd(rate, sample_rate)
        # Imported here: scipy.signal costs ~0.6 s to import, paid only when resampling.
        from scipy.signal import resample_poly

        audio = resample_poly(audio, sample_rate // divisor, rate // divisor)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def audio_duration(path: str) -> float:
    """Seconds of audio in the file ``path``, from its header alone."""
    info = _soundfile(sf.info, path)
    return info.frames / info.samplerate


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The column names and rows of a CSV, TSV or JSONL manifest."""
    if path.suffix.lower() not in MANIFEST_FORMATS:
        raise DataError(f"audio manifest {path} must end in one of {list(MANIFEST_FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"audio manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read audio manifest {path}: {error}") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"audio manifest {path} line {number} is not JSON: {error}"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"audio manifest {path} line {number} is not a JSON object")
            rows.append(row)
        return list(dict.fromkeys(key for row in rows for key in row)), rows
    # TSV transcripts (Common Voice's, for one) hold quote characters that are not CSV quoting.
    tsv = path.suffix.lower() == ".tsv"
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), **options)
        rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as error:
        raise DataError(f"cannot parse audio manifest {path}: {error}") from None
    return list(reader.fieldnames or []), rows


def _check_columns(columns: list[str], needed: list[str], where: str) -> None:
    missing = [column for column in needed if column not in columns]
    if missing:
        raise DataError(f"{where} has no column {missing[0]!r}; its columns are {columns}")


def _record(audio: np.ndarray, text: Any, metadata: dict[str, Any], name: str) -> Record:
    if not isinstance(text, str) or not text.strip():
        raise RecordError(f"audio file {name} has an empty transcript")
    return {"audio": audio, "text": text.strip(), **metadata}


class AudioManifestSource:
    """Utterances listed in a CSV, TSV or JSONL manifest (format by extension): an audio path
    (relative to the manifest's folder, or absolute) and a transcript per row; other columns
    are passed through as metadata (strings for CSV and TSV, JSON values for JSONL)."""

    def __init__(
        self,
        path: str | Path,
        *,
        sample_rate: int = 16000,
        audio_column: str = "path",
        text_column: str = "text",
    ):
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        columns, rows = _read_manifest(self.path)
        if not rows:
            raise DataError(f"audio manifest {self.path} has no rows")
        _check_columns(columns, [audio_column, text_column], f"audio manifest {self.path}")
        self.files = [str(row.get(audio_column) or "") for row in rows]
        self.texts = [row.get(text_column) for row in rows]
        extra = [c for c in columns if c not in (audio_column, text_column, "audio", "text")]
        self.metadata = {column: [row.get(column) for row in rows] for column in extra}
        self.labels = None

    def __len__(self) -> int:
        return len(self.files)

    def audio_path(self, index: int) -> str:
        """The audio file of record ``index``, resolved against the manifest's folder."""
        file = self.files[index]
        if not file:
            raise RecordError(f"{self.path} row {index + 1} names no audio file")
        return str(self.path.parent / file)  # an absolute ``file`` replaces the folder

    def __getitem__(self, index: int) -> Record:
        path = self.audio_path(index)
        audio = decode_audio(path, self.sample_rate)
        metadata = {column: values[index] for column, values in self.metadata.items()}
        return _record(audio, self.texts[index], metadata, path)

    def duration_seconds(self, index: int) -> float:
        """Seconds of audio in record ``index``, read from the file's header."""
        return audio_duration(self.audio_path(index))

    def describe(self, index: int) -> str:
        return f"{self.path} row {index + 1} ({self.files[index]})"

    def __repr__(self) -> str:
        return (
            f"AudioManifestSource({str(self.path)!r}, n={len(self)}, "
            f"sample_rate={self.sample_rate})"
        )


class HFAudioSource:
    """Rows of a 🤗 ``datasets`` table whose ``audio_column`` holds file names relative to
    ``root``; other columns are passed through as metadata."""

    def __init__(
        self,
        dataset: Any,
        root: str | Path,
        name: str,
        *,
        sample_rate: int = 16000,
        audio_column: str = "file_name",
        text_column: str = "transcription",
    ):
        _check_columns(dataset.column_names, [audio_column, text_column], name)
        if len(dataset) == 0:
            raise DataError(f"{name} has no rows")
        self.dataset, self.root, self.name = dataset, Path(root), name
        self.sample_rate = int(sample_rate)
        self.audio_column, self.text_column = audio_column, text_column
        self.labels = None

    def __len__(self) -> int:
        return len(self.dataset)

    def audio_path(self, index: int) -> str:
        file = self.dataset[int(index)][self.audio_column]
        if not file:
            raise RecordError(f"{self.describe(index)} names no audio file")
        return str(self.root / file)

    def __getitem__(self, index: int) -> Record:
        row = dict(self.dataset[int(index)])
        path = self.audio_path(index)
        audio = decode_audio(path, self.sample_rate)
        text = row.pop(self.text_column)
        row.pop(self.audio_column)
        metadata = {k: v for k, v in row.items() if k not in ("audio", "text")}
        return _record(audio, text, metadata, path)

    def duration_seconds(self, index: int) -> float:
        return audio_duration(self.audio_path(index))

    def describe(self, index: int) -> str:
        return f"{self.name} row {index}"

    def __repr__(self) -> str:
        return (
            f"HFAudioSource({self.name!r}, n={len(self)}, sample_rate={self.sample_rate}, "
            f"fingerprint={self.dataset._fingerprint!r})"
        )


def _metadata_columns(path: str) -> list[str]:
    """The column names of an audio folder's metadata file, from its first row."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".csv"):
            return next(csv.reader(handle), [])
        first = next((line for line in handle if line.strip()), "{}")
    try:
        return list(json.loads(first))
    except (json.JSONDecodeError, TypeError) as error:
        raise DataError(f"cannot read audio folder metadata {path}: {error}") from None


def hf_audio_folder_source(
    data_dir: str | Path,
    split: str = "train",
    *,
    sample_rate: int = 16000,
    audio_column: str = "file_name",
    text_column: str = "transcription",
    **kwargs: Any,
) -> HFAudioSource:
    """One split of a 🤗 "audiofolder" (audio files plus a ``metadata.csv``/``.jsonl``/
    ``.parquet`` naming each ``file_name`` and its ``transcription``), read with
    ``datasets.load_dataset('audiofolder', ...)``; ``kwargs`` go to it (``cache_dir=``).

    Every column is read as a string and the audio column stays a file name: ``datasets``'
    ``Audio`` feature encodes through torchcodec even with ``decode=False``, and soundfile
    decodes the files here instead.
    """
    import datasets

    where = f"audio folder {data_dir} [{split}]"
    try:
        builder = datasets.load_dataset_builder("audiofolder", data_dir=str(data_dir), **kwargs)
    except FileNotFoundError as error:
        raise DataError(f"{where}: {error}") from None
    splits = {str(name): files for name, files in (builder.config.data_files or {}).items()}
    if split not in splits:
        raise DataError(f"{where}: no such split; the folder has {sorted(splits)}")
    metadata = [f for f in splits[split] if os.path.basename(f) in AUDIO_FOLDER_METADATA]
    if len(metadata) != 1:
        raise DataError(
            f"{where} needs one metadata file ({', '.join(AUDIO_FOLDER_METADATA)}), found "
            f"{len(metadata)}"
        )
    columns = _metadata_columns(metadata[0])
    _check_columns(columns, [audio_column, text_column], where)
    features = datasets.Features({column: datasets.Value("string") for column in columns})
    dataset = datasets.load_dataset(
        "audiofolder", data_dir=str(data_dir), split=split, features=features, **kwargs
    )
    root = os.path.dirname(metadata[0])
    return HFAudioSource(
        dataset,
        root,
        where,
        sample_rate=sample_rate,
        audio_column=audio_column,
        text_column=text_column,
    )
