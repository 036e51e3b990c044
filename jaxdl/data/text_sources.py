"""Streaming text: line files and 🤗 dataset columns read per record, behind a tokenizer interface.

``TextLineSource`` indexes the byte offset of every non-blank line once (8 bytes per line) and
reads one line per record; ``HFTextSource`` reads one row of a memory-mapped Arrow table.
``TokenizedText`` turns ``text`` into ``tokens`` with any ``Tokenizer`` (byte- or character-level
here, trained subword or word vocabularies in ``jaxdl.data.subword``): variable-length
documents for packed language modelling, or truncated, padded sequences for classification. An
empty text or invalid UTF-8 is a ``RecordError`` naming the line or row (``data.on_error``
decides: stop, or skip and count). Problems found when a source is opened raise a ``ValueError``
naming the file (the loader makes it a one-line ``DataError``): a table without rows or that
cannot be parsed, a missing column, label cells that are empty, NaN, fractional or a
``ClassLabel``'s -1 ("no label"). Files without text are skipped with one warning; texts longer
than ``max_len`` are truncated with one warning per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jaxdl.data.image_sources import check_columns, open_hf_dataset
from jaxdl.data.records import Record, RecordError, RecordSource
from jaxdl.data.sources import _hf_labels
from jaxdl.data.subword import SubwordTokenizer
from jaxdl.data.text import (
    BYTE_VOCAB_SIZE,
    CLS_ID,
    PAD_ID,
    CharVocabulary,
    byte_decode,
    byte_encode,
)
from jaxdl.data.views import describe_record, source_labels

logger = logging.getLogger("jaxdl")


class Tokenizer(Protocol):
    """Text ↔ int32 token ids. ``encode`` never pads; ``pad_id`` is what padding uses.

    Implementations also carry ``cls_id`` (None without a CLS token); trained ones a
    ``fingerprint`` of their vocabulary (``jaxdl.data.tokenizer_store`` checks it on load).
    """

    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_json(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids [0, 256); id 0 (NUL) doubles as padding, as in the byte LM corpora."""

    vocab_size = BYTE_VOCAB_SIZE
    pad_id = PAD_ID
    cls_id = None

    def encode(self, text: str) -> np.ndarray:
        return byte_encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return byte_decode(ids)

    def to_json(self) -> str:
        return json.dumps({"kind": "byte"})

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class CharTokenizer:
    """Characters of a ``CharVocabulary`` (0 = pad, 1 = unk, 2 = cls, then characters)."""

    pad_id = PAD_ID
    cls_id = CLS_ID

    def __init__(self, vocabulary: CharVocabulary):
        self.vocabulary = vocabulary
        self.vocab_size = len(vocabulary)

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1) -> CharTokenizer:
        return cls(CharVocabulary.build(texts, min_freq=min_freq))

    def encode(self, text: str) -> np.ndarray:
        return self.vocabulary.encode(text, max(1, len(text)))[: len(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.vocabulary.decode(ids)

    def to_json(self) -> str:
        return json.dumps({"kind": "char", "vocabulary": json.loads(self.vocabulary.to_json())})

    def __repr__(self) -> str:
        digest = hashlib.sha1("".join(self.vocabulary.chars).encode()).hexdigest()[:12]
        return f"CharTokenizer(size={self.vocab_size}, digest={digest})"


TOKENIZERS = ("byte", "char")


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuilds a tokenizer written by ``to_json`` (for evaluation, export and serving)."""
    data = json.loads(text)
    if data.get("kind") == "byte":
        return ByteTokenizer()
    if data.get("kind") == "char":
        return CharTokenizer(CharVocabulary.from_json(json.dumps(data["vocabulary"])))
    if data.get("kind") == "subword":
        return SubwordTokenizer.from_json(text)
    raise ValueError(
        f"unknown tokenizer kind {data.get('kind')!r}; expected one of {(*TOKENIZERS, 'subword')}"
    )


_WHITESPACE = np.frombuffer(b" \t\r\x0b\x0c", np.uint8)


def _line_offsets(path: Path, chunk_bytes: int = 1 << 24) -> np.ndarray:
    """Start and end byte offsets int64 [N, 2] of the lines of ``path`` that hold text, read in
    chunks so indexing a large file needs memory for the offsets only. Empty and
    whitespace-only lines separate paragraphs; they are not records."""
    ends, text_before_end = [], []  # per newline: its offset, text bytes up to it
    size = text_bytes = 0
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            data = np.frombuffer(chunk, np.uint8)
            cumulative = np.cumsum(~np.isin(data, _WHITESPACE) & (data != ord("\n")))
            newlines = np.flatnonzero(data == ord("\n"))
            ends.append(newlines + size)
            text_before_end.append(cumulative[newlines] + text_bytes)
            size += len(data)
            text_bytes += int(cumulative[-1])
    ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    text_before_end = np.concatenate(text_before_end) if text_before_end else ends
    if not len(ends) or ends[-1] != size - 1:  # a last line without a newline
        ends = np.append(ends, size)
        text_before_end = np.append(text_before_end, text_bytes)
    starts = np.concatenate([[0], ends[:-1] + 1])
    has_text = np.diff(np.concatenate([[0], text_before_end])) > 0
    return np.stack([starts, ends], axis=1).astype(np.int64)[has_text]


class TextLineSource:
    """Each non-blank line of UTF-8 text files is one ``{"text": str}`` record, read per record."""

    def __init__(self, paths: str | Path | Sequence[str | Path]):
        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        files = []
        for path in map(Path, paths):
            if path.is_dir():
                found = sorted(path.rglob("*.txt"))
                if not found:
                    raise FileNotFoundError(f"directory {path} contains no .txt files")
                files += found
            elif path.is_file():
                files.append(path)
            else:
                raise FileNotFoundError(f"text file not found: {path}")
        self.files = [str(f) for f in files]
        offsets = [_line_offsets(Path(f)) for f in self.files]
        self.file_index = np.concatenate(
            [np.full(len(o), k, np.int32) for k, o in enumerate(offsets)]
        )
        self.offsets = np.concatenate(offsets) if offsets else np.zeros((0, 2), np.int64)
        if not len(self.offsets):
            raise ValueError(f"no non-blank lines in {self.files}")
        empty = [f for f, o in zip(self.files, offsets, strict=True) if not len(o)]
        if empty:
            logger.warning(
                "text_lines: skipped %d of %d files without text: %s",
                len(empty),
                len(self.files),
                ", ".join(empty),
            )
        self.labels = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Record:
        start, end = self.offsets[index]
        with open(self.files[self.file_index[index]], "rb") as handle:
            handle.seek(int(start))
            raw = handle.read(int(end - start))
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as error:
            raise RecordError(f"{self.describe(index)} is not valid UTF-8: {error}") from None
        return {"text": text}

    def describe(self, index: int) -> str:
        """``file:line`` of record ``index`` (the line number is counted only when asked)."""
        file = self.files[self.file_index[index]]
        start = int(self.offsets[index][0])
        with open(file, "rb") as handle:
            line = handle.read(start).count(b"\n") + 1
        return f"{file}:{line}"

    def __repr__(self) -> str:
        return f"TextLineSource(files={self.files}, n={len(self)})"


class HFTextSource:
    """A text column (and optionally a label column) of a 🤗 ``datasets`` table, per row."""

    def __init__(
        self,
        name_or_path: str,
        split: str = "train",
        text_column: str = "text",
        label_column: str | None = None,
        **kwargs: Any,
    ):
        self.name = f"{name_or_path}[{split}]"
        files = kwargs.get("data_files")
        where = self.name + (f" ({files})" if files else "")  # errors name the user's files
        dataset = _open_text_table(name_or_path, split, where, **kwargs)
        columns = [text_column] + ([label_column] if label_column else [])
        check_columns(dataset, columns, where)
        self.labels, self.class_names = None, None
        if label_column:
            _check_label_cells(dataset, label_column, where)
            try:
                self.labels, self.class_names = _hf_labels(dataset, label_column)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        self.dataset = dataset.select_columns([text_column])
        self.text_column = text_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Record:
        text = self.dataset[int(index)][self.text_column]
        if not isinstance(text, str):
            raise RecordError(f"{self.describe(index)} is {type(text).__name__}, not text")
        record: Record = {"text": text}
        if self.labels is not None:
            record["labels"] = self.labels[index]
        return record

    def describe(self, index: int) -> str:
        return f"{self.name} row {index}"

    def __repr__(self) -> str:
        return (
            f"HFTextSource({self.name!r}, n={len(self)}, fingerprint={self.dataset._fingerprint!r})"
        )


def _open_text_table(name_or_path: str, split: str, where: str, **kwargs: Any) -> Any:
    """``open_hf_dataset`` with the builders' failures as one ``ValueError`` naming ``where``:
    the json builder raises a bare ``StopIteration`` for a file without rows, the builders a
    ``DatasetGenerationError`` (its cause several exceptions down) for bytes they cannot parse,
    pyarrow an ``ArrowInvalid`` without the file's name."""
    import datasets

    try:
        return open_hf_dataset(name_or_path, split, **kwargs)
    except StopIteration:
        raise ValueError(f"{where} has no rows (is the file empty?)") from None
    except datasets.exceptions.DatasetGenerationError as error:
        chain, cause = [], error
        while cause is not None and len(chain) < 16:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        bad_utf8 = [e for e in chain if isinstance(e, UnicodeDecodeError)]
        if bad_utf8:
            raise ValueError(f"{where} is not valid UTF-8: {bad_utf8[0]}") from None
        raise ValueError(f"cannot read {where}: {chain[-1]}") from None
    except ValueError as error:  # pyarrow's ArrowInvalid (e.g. an empty parquet file), no split
        raise ValueError(f"cannot read {where}: {error}") from None


def _check_label_cells(dataset: Any, column: str, where: str) -> None:
    """Raises a ``ValueError`` naming the first row whose label is missing (null, NaN, blank, or
    -1, a ``ClassLabel``'s "no label") or a fractional number: unchecked, each would become a
    class of its own."""
    import datasets

    no_label = -1 if isinstance(dataset.features[column], datasets.ClassLabel) else None
    missing, fractional = [], []
    for row, value in enumerate(dataset[column]):
        if (
            value is None
            or value == no_label
            or (isinstance(value, str) and not value.strip())
            or (isinstance(value, float) and math.isnan(value))
        ):
            missing.append(row)
        elif isinstance(value, float) and not value.is_integer():
            fractional.append((row, value))
    if missing:
        raise ValueError(
            f"{where}: label column {column!r} is empty in {len(missing)} row(s) (first: row "
            f"{missing[0]}); label them or drop them"
        )
    if fractional:
        row, value = fractional[0]
        raise ValueError(
            f"{where}: label column {column!r} holds non-integer numbers ({value!r} in row {row},"
            f" {len(fractional)} row(s)); class labels must be integers or strings"
        )


def record_text(record: Record) -> str:
    """The ``text`` field of a record; ArrayRecord stores may hold it as UTF-8 bytes."""
    text = record["text"]
    if isinstance(text, bytes | np.ndarray):
        text = bytes(np.asarray(text, np.uint8)).decode("utf-8")
    return str(text)


# The max_len values this process has warned about truncating to (records are read one at a
# time, in grain workers too, so the number of long texts is not known up front).
_TRUNCATION_WARNED: set[int] = set()


class TokenizedText:
    """``{"text"}`` records as ``{"tokens": int32}`` (plus ``labels`` when present).

    ``max_len`` None keeps whole documents (variable length, for packing); otherwise tokens are
    truncated to ``max_len`` (after an optional CLS token) and right-padded with ``pad_id``; the
    first truncated text is named in one warning per process.
    """

    def __init__(
        self,
        source: RecordSource,
        tokenizer: Tokenizer,
        max_len: int | None = None,
        add_cls: bool = False,
    ):
        if add_cls and getattr(tokenizer, "cls_id", None) is None:
            raise ValueError(f"{tokenizer!r} has no CLS token; set add_cls=False")
        self.source, self.tokenizer = source, tokenizer
        self.max_len, self.add_cls = max_len, add_cls
        self.labels = source_labels(source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Record:
        record = self.source[index]
        text = record_text(record).strip()
        if not text:
            raise RecordError(f"{self.describe(index)} is empty text")
        tokens = self.tokenizer.encode(text).astype(np.int32)
        if self.add_cls:
            tokens = np.concatenate([[self.tokenizer.cls_id], tokens]).astype(np.int32)
        if self.max_len is not None:
            if len(tokens) > self.max_len and self.max_len not in _TRUNCATION_WARNED:
                _TRUNCATION_WARNED.add(self.max_len)
                logger.warning(
                    "texts longer than max_len=%d tokens are truncated to it (first: %s, %d "
                    "tokens); this is said once",
                    self.max_len,
                    self.describe(index),
                    len(tokens),
                )
            padded = np.full(self.max_len, self.tokenizer.pad_id, np.int32)
            tokens = tokens[: self.max_len]
            padded[: len(tokens)] = tokens
            tokens = padded
        out: Record = {"tokens": tokens}
        if "labels" in record:
            out["labels"] = np.asarray(record["labels"], np.int32)
        return out

    def describe(self, index: int) -> str:
        return describe_record(self.source, index)

    def __repr__(self) -> str:
        return (
            f"TokenizedText({self.source!r}, {self.tokenizer!r}, max_len={self.max_len}, "
            f"add_cls={self.add_cls})"
        )
