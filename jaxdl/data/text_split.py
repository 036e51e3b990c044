"""A frozen test split of labelled texts, decided per text by a seeded hash, and its hash list.

The test split is fixed before anything tunable runs: texts are normalised (NFKC, whitespace
collapsed), empty texts, exact duplicates and texts carrying two labels are dropped (the fixed
rules of ``clean_texts``), and a text is a test text when a seeded hash of it falls in the first
``test_fraction`` of the hash range. A text's split therefore depends on that text alone: no
cleaning option, vocabulary or model choice can move texts in or out of test. The sorted SHA-1s
of the test texts are committed (``write_hash_list``) and checked on load (``check_hash_list``),
so every model and baseline is scored on exactly the same texts.

The rest is cleaned with the tunable rules — near duplicates of test texts always go — and split
into train and validation by the same hash (the next ``val_fraction`` of its range).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxdl.data.text_cleaning import CleaningRules, clean_texts
from jaxdl.errors import DataError

# Tunable rules applied to train and val by default: near duplicates (Jaccard >= 0.8) go.
TRAIN_RULES = CleaningRules(near_duplicate_threshold=0.8)


def text_hash(text: str) -> str:
    """SHA-1 hex digest of a (normalised) text's UTF-8: its identity in hash lists."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def hash_position(text: str, seed: int) -> float:
    """Where a seeded hash of ``text`` falls in [0, 1): uniform, and fixed per (text, seed)."""
    digest = hashlib.sha1(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclasses.dataclass
class TextSplits:
    """Texts (normalised) and labels per split, and the cleaning report of both stages."""

    texts: dict[str, list[str]]
    labels: dict[str, list[Any]]
    report: dict[str, Any]

    def test_hashes(self) -> list[str]:
        """Sorted ``text_hash`` of the test texts: what the committed hash list holds."""
        return sorted(text_hash(t) for t in self.texts["test"])


def split_texts(
    texts: Sequence[str],
    labels: Sequence[Hashable],
    rules: CleaningRules = TRAIN_RULES,
    seed: int = 0,
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
) -> TextSplits:
    """Frozen test split, then train/val from the cleaned rest (see the module docstring).

    ``rules`` are the tunable cleaning rules for train and val; its near-duplicate threshold
    (when set) also decides which training texts are too near a test text. Raises
    ``DataError`` when a split would be empty.
    """
    if not (test_fraction > 0 and val_fraction > 0 and test_fraction + val_fraction < 1):
        raise DataError(
            f"test_fraction {test_fraction} and val_fraction {val_fraction} must be positive and "
            "leave room for training"
        )
    if rules.lowercase:
        raise DataError(
            "lower-casing would change train texts but not the frozen test texts: lower-case "
            "in the tokenizer or before splitting instead"
        )
    fixed = clean_texts(texts, labels)
    position = np.asarray([hash_position(t, seed) for t in fixed.texts])
    is_test = position < test_fraction
    test = [k for k in range(len(fixed.texts)) if is_test[k]]
    rest = [k for k in range(len(fixed.texts)) if not is_test[k]]
    test_texts = [fixed.texts[k] for k in test]
    pool = clean_texts(
        [fixed.texts[k] for k in rest],
        [fixed.labels[k] for k in rest],
        rules,
        held_out=test_texts,
    )
    kept = [rest[k] for k in pool.indices]
    is_val = position[kept] < test_fraction + val_fraction
    parts = {
        "train": [k for k, v in zip(kept, is_val, strict=True) if not v],
        "val": [k for k, v in zip(kept, is_val, strict=True) if v],
        "test": test,
    }
    sizes = {split: len(part) for split, part in parts.items()}
    if not all(sizes.values()):
        raise DataError(f"{len(texts)} texts give an empty split: {sizes}")
    report = {
        "seed": seed,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "sizes": sizes,
        "fixed": fixed.report,
        "train_val": pool.report,
    }
    return TextSplits(
        texts={split: [fixed.texts[k] for k in part] for split, part in parts.items()},
        labels={split: [fixed.labels[k] for k in part] for split, part in parts.items()},
        report=report,
    )


def write_hash_list(hashes: Sequence[str], path: str | Path) -> None:
    """Writes sorted hashes, one a line (the file committed beside the code)."""
    Path(path).write_text("".join(f"{h}\n" for h in sorted(hashes)), encoding="ascii")


def read_hash_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"hash list {str(path)!r} does not exist")
    return path.read_text(encoding="ascii").split()


def check_hash_list(splits: TextSplits, path: str | Path) -> None:
    """Raises ``DataError`` unless the test split is exactly the texts listed in ``path``."""
    expected, actual = set(read_hash_list(path)), set(splits.test_hashes())
    if expected != actual:
        raise DataError(
            f"the test split differs from the frozen list {str(path)!r}: "
            f"{len(expected - actual)} listed texts missing, {len(actual - expected)} not listed "
            "(has the corpus or its normalisation changed?)"
        )
