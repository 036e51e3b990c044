"""Sharded ArrayRecord datasets: write any record source once, read it back per record.

A converted dataset is a directory of ``data-XXXXX-of-YYYYY.array_record`` shards (grain's
random-access format, ``group_size:1`` so one record is one seek) plus ``metadata.json``
(features, counts per shard, class names, the source's ``info``) and, for labelled data,
``labels.npy`` so stratified splits need no decoding. Records are msgpack-serialised dicts of
NumPy arrays and strings (``flax.serialization``), so dtypes and shapes survive exactly: uint8
pixels stay uint8 and are scaled when standardised. Shards hold contiguous index ranges, so
record ``i`` of the converted dataset is record ``i`` of the source.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from flax import serialization

from jaxdl.data.records import Record, RecordError, RecordSource
from jaxdl.data.views import describe_record, source_labels

METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.npy"
FORMAT_VERSION = 1


def serialize_record(record: Record) -> bytes:
    """One record as msgpack bytes; NumPy scalars become 0-d arrays so dtypes are kept."""
    return serialization.msgpack_serialize(
        {k: v if isinstance(v, str) else np.asarray(v) for k, v in record.items()}
    )


def _feature(value: Any) -> dict:
    if isinstance(value, str):
        return {"dtype": "str", "shape": None}
    value = np.asarray(value)
    return {"dtype": str(value.dtype), "shape": list(value.shape)}


def _merge_features(features: dict | None, record: Record) -> dict:
    """Feature table of the records so far: a dimension that varies becomes ``None``."""
    new = {name: _feature(value) for name, value in record.items()}
    if features is None:
        return new
    for name, feature in new.items():
        known = features.get(name)
        if known is None or known["dtype"] != feature["dtype"]:
            raise RecordError(f"field {name!r} changed from {known} to {feature}")
        if known["shape"] is not None and (
            feature["shape"] is None or len(known["shape"]) != len(feature["shape"])
        ):
            known["shape"] = None
        elif known["shape"] is not None:
            known["shape"] = [
                a if a == b else None for a, b in zip(known["shape"], feature["shape"], strict=True)
            ]
    return features


def _serialize_or_skip(source: RecordSource, skip_errors: bool) -> Callable[[int], Any]:
    def read(index: int):
        try:
            record = source[index]
        except RecordError as error:
            if not skip_errors:
                raise
            return {"index": index, "error": str(error)}
        return index, record, serialize_record(record)

    return read


def write_array_records(
    source: RecordSource,
    out_dir: str | Path,
    *,
    num_shards: int | None = None,
    info: dict | None = None,
    skip_errors: bool = False,
    num_threads: int = 16,
) -> dict:
    """Decodes every record of ``source`` once and writes them into ``out_dir`` as sharded
    ArrayRecord files; returns the metadata written beside them.

    Records are decoded by ``num_threads`` threads in source order. An unreadable record raises
    its ``RecordError`` unless ``skip_errors`` (then it is left out and listed in the metadata's
    ``skipped``). The directory appears only when complete: a killed conversion leaves a
    ``.tmp`` folder, never a partial dataset.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; choose a new --out directory")
    if num_shards is None:
        num_shards = max(1, math.ceil(len(source) / 50_000))
    if not 1 <= num_shards <= max(1, len(source)):
        raise ValueError(f"num_shards must be in [1, {len(source)}], got {num_shards}")
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    reads = (
        grain.MapDataset.range(len(source))
        .map(_serialize_or_skip(source, skip_errors))
        .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=256))
    )
    bounds = np.linspace(0, len(source), num_shards + 1).astype(np.int64)
    names = [f"data-{k:05d}-of-{num_shards:05d}.array_record" for k in range(num_shards)]
    counts = [0] * num_shards
    features, skipped, kept_indices = None, [], []
    shard, writer, writer_shard = 0, None, -1
    for item in reads:
        if isinstance(item, dict):
            skipped.append({**item, "where": describe_record(source, item["index"])})
            continue
        index, record, data = item
        while index >= bounds[shard + 1]:
            shard += 1
        if writer_shard != shard:
            if writer is not None:
                writer.close()
            writer = ArrayRecordWriter(str(tmp_dir / names[shard]), "group_size:1")
            writer_shard = shard
        writer.write(data)
        counts[shard] += 1
        features = _merge_features(features, record)
        kept_indices.append(index)
    if writer is not None:
        writer.close()
    if not kept_indices:
        raise RecordError(f"no readable record in {source!r}")
    # Shards left empty by skipped records are dropped, so every file holds records.
    shards = [{"file": n, "records": c} for n, c in zip(names, counts, strict=True) if c]
    for name, count in zip(names, counts, strict=True):
        if not count and (tmp_dir / name).exists():
            os.remove(tmp_dir / name)
    labels = source_labels(source)
    if labels is not None:
        np.save(tmp_dir / LABELS_FILE, labels[np.asarray(kept_indices)].astype(np.int32))
    metadata = {
        "format_version": FORMAT_VERSION,
        "num_records": len(kept_indices),
        "features": features,
        "shards": shards,
        "source": repr(source),
        "info": _jsonable(info or {}),
        "skipped": skipped,
    }
    (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    os.replace(tmp_dir, out_dir)
    return metadata


def _jsonable(info: dict) -> dict:
    out = {}
    for key, value in info.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def read_metadata(path: str | Path) -> dict:
    """The ``metadata.json`` of a converted dataset; a clear error when it is not one."""
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a converted dataset (no {METADATA_FILE})")
    try:
        metadata = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: unsupported format_version {metadata.get('format_version')}")
    return metadata


class ArrayRecordSource:
    """Records of a directory written by ``write_array_records``, read one at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        shards = self.metadata["shards"]
        files = [self.path / shard["file"] for shard in shards]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"shard file missing: {file}")
        self._reader = grain.sources.ArrayRecordDataSource([str(f) for f in files])
        if len(self._reader) != self.metadata["num_records"]:
            raise ValueError(
                f"{self.path}: shards hold {len(self._reader)} records, metadata says "
                f"{self.metadata['num_records']}"
            )
        self._starts = np.cumsum([0] + [s["records"] for s in shards])
        labels_file = self.path / LABELS_FILE
        self.labels = np.load(labels_file) if labels_file.is_file() else None
        self.info = self.metadata.get("info", {})

    def __len__(self) -> int:
        return int(self.metadata["num_records"])

    def __getitem__(self, index: int) -> Record:
        try:
            return serialization.msgpack_restore(self._reader[int(index)])
        except Exception as error:  # noqa: BLE001 - any decoder failure is a corrupt record
            raise RecordError(f"cannot read {self.describe(index)}: {error}") from None

    def describe(self, index: int) -> str:
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        file = self.metadata["shards"][shard]["file"]
        return f"{self.path / file} record {index - self._starts[shard]} (index {index})"

    def __repr__(self) -> str:
        return f"ArrayRecordSource(path={str(self.path)!r}, n={len(self)})"
