"""Cleaning labelled texts: normalisation, then rules that each remove items and say how many.

``clean_texts`` returns the kept (normalised) texts and labels with a JSON-serialisable report —
per rule, the number of items removed and a few examples — that ``save_report`` writes into the
workdir, so what a model was trained on can be audited. The rules, in order:

* ``empty``: nothing left after normalisation;
* ``garbage``: too few letters or digits (tunable; off by default);
* ``conflicting_labels``: every copy of a text that occurs with two or more labels;
* ``exact_duplicates``: later copies of a text;
* ``held_out_duplicates``: exact or near duplicates of held-out (test) texts;
* ``near_duplicates``: a text whose character-shingle Jaccard similarity with an earlier kept text
  reaches ``near_duplicate_threshold`` (tunable; off by default).

The defaults are the fixed rules that define the frozen test split (``jaxdl.data.text_split``);
the tunable ones apply to the training pool only.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import unicodedata
import zlib
from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

from jaxdl.errors import DataError

RULES = (
    "empty",
    "garbage",
    "conflicting_labels",
    "exact_duplicates",
    "held_out_duplicates",
    "near_duplicates",
)
NUM_EXAMPLES = 3
_EXAMPLE_CHARS = 80
REPORT_FILENAME = "cleaning_report.json"


def normalize_text(text: str, lowercase: bool = False) -> str:
    """NFKC (full-width letters, digits and punctuation become half-width; compatibility forms
    fold), whitespace runs become one space, ends stripped; optionally lower-cased."""
    text = " ".join(unicodedata.normalize("NFKC", text).split())
    return text.lower() if lowercase else text


@dataclasses.dataclass(frozen=True)
class CleaningRules:
    """Options of ``clean_texts``; the defaults are the fixed rules only.

    ``min_chars`` / ``min_alnum_fraction``: a text with fewer letters and digits (any script),
    or a smaller share of them among its characters, is garbage. ``near_duplicate_threshold``:
    Jaccard similarity of ``shingle_size``-character shingles (letters and digits only) at or
    above which a text is a near duplicate; ``None`` turns the rule off. MinHash LSH
    (``num_perm`` permutations, ``seed``) finds candidate pairs; the exact Jaccard decides.
    """

    lowercase: bool = False
    min_chars: int = 0
    min_alnum_fraction: float = 0.0
    near_duplicate_threshold: float | None = None
    shingle_size: int = 3
    num_perm: int = 128
    seed: int = 1

    def __post_init__(self):
        threshold = self.near_duplicate_threshold
        if threshold is not None and not 0 < threshold <= 1:
            raise DataError(f"near_duplicate_threshold must be in (0, 1], got {threshold}")
        if self.shingle_size < 1 or self.num_perm < 16:
            raise DataError("shingle_size must be >= 1 and num_perm >= 16")


FIXED_RULES = CleaningRules()


@dataclasses.dataclass
class Cleaned:
    """Kept texts (normalised) and labels, ``indices`` into the input, and the report."""

    texts: list[str]
    labels: list[Any]
    indices: np.ndarray
    report: dict[str, Any]


def shingles(text: str, size: int) -> frozenset[str]:
    """Character ``size``-grams of the letters and digits of ``text`` (the whole of a shorter
    text); punctuation and spacing do not make two texts different."""
    core = "".join(filter(str.isalnum, text)) or text
    return frozenset(core[i : i + size] for i in range(max(1, len(core) - size + 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


Signature = tuple[frozenset[str], MinHash]


class _NearDuplicateIndex:
    """Shingle sets behind a MinHash LSH index: ``match`` returns the first indexed key whose
    exact Jaccard similarity reaches the threshold, or None."""

    def __init__(self, rules: CleaningRules):
        self.threshold = rules.near_duplicate_threshold
        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=rules.num_perm)
        self.sets: dict[int, frozenset[str]] = {}

    def add(self, key: int, signature: Signature) -> None:
        self.lsh.insert(key, signature[1])
        self.sets[key] = signature[0]

    def match(self, signature: Signature) -> int | None:
        shingle_set, minhash = signature
        candidates = sorted(self.lsh.query(minhash))
        return next(
            (k for k in candidates if jaccard(shingle_set, self.sets[k]) >= self.threshold), None
        )


def signatures(texts: Sequence[str], rules: CleaningRules) -> list[Signature]:
    """Shingle set and MinHash of each text. Shingles are hashed with CRC-32 (C code, stable
    across processes) rather than datasketch's default SHA-1, which is five times slower here."""
    sets = [shingles(t, rules.shingle_size) for t in texts]
    minhashes = MinHash.bulk(
        [[s.encode("utf-8") for s in shingle_set] for shingle_set in sets],
        num_perm=rules.num_perm,
        seed=rules.seed,
        hashfunc=zlib.crc32,
    )
    return list(zip(sets, minhashes, strict=True))


def _example(text: str) -> str:
    return text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 1] + "…"


def _check_inputs(texts: Sequence[str], labels: Sequence[Hashable] | None) -> None:
    if labels is None:
        raise DataError(f"{len(texts)} texts came without labels (is the label column missing?)")
    if len(labels) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels: a label column is short")
    for index, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if not isinstance(text, str):
            raise DataError(f"item {index} is {type(text).__name__}, not text")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"item {index} has no label")


def clean_texts(
    texts: Sequence[str],
    labels: Sequence[Hashable] | None,
    rules: CleaningRules = FIXED_RULES,
    held_out: Sequence[str] = (),
) -> Cleaned:
    """Normalises ``texts`` and removes items by the rules above, in that order.

    ``held_out`` texts (normalised here) are never removed: items equal to one, or near one when
    the near-duplicate rule is on, are. Returns kept items in input order; ``report`` holds
    ``input``, ``kept``, the ``rules`` used and ``removed``: rule -> ``{"count", "examples"}``
    (for duplicates of held-out texts and near duplicates, ``[removed text, the text it
    resembles]`` pairs).
    """
    _check_inputs(texts, labels)
    normalised = [normalize_text(t, rules.lowercase) for t in texts]
    removed: dict[str, list[int]] = {rule: [] for rule in RULES}
    alive = _split_off(range(len(texts)), removed["empty"], lambda i: not normalised[i])
    if rules.min_chars or rules.min_alnum_fraction:
        alive = _split_off(alive, removed["garbage"], lambda i: _is_garbage(normalised[i], rules))
    labels_of: dict[str, set] = collections.defaultdict(set)
    first: dict[str, int] = {}
    for i in alive:
        labels_of[normalised[i]].add(labels[i])
        first.setdefault(normalised[i], i)
    alive = _split_off(
        alive, removed["conflicting_labels"], lambda i: len(labels_of[normalised[i]]) > 1
    )
    alive = _split_off(alive, removed["exact_duplicates"], lambda i: first[normalised[i]] != i)
    near_on = rules.near_duplicate_threshold is not None
    candidates = [normalised[i] for i in alive]
    pool = signatures(candidates, rules) if near_on else []
    held = _held_out_matches(candidates, pool, held_out, rules)
    near = _near_duplicate_matches(pool, held, rules) if near_on else {}
    matches = {alive[k]: text for k, text in held.items()}
    matches |= {alive[k]: candidates[j] for k, j in near.items()}
    held_items = {alive[k] for k in held}
    alive = _split_off(alive, removed["held_out_duplicates"], lambda i: i in held_items)
    alive = _split_off(alive, removed["near_duplicates"], lambda i: i in matches)

    def examples(rule: str) -> list:
        return [
            [_example(normalised[i]), _example(matches[i])] if i in matches else _example(texts[i])
            for i in removed[rule][:NUM_EXAMPLES]
        ]

    report = {
        "input": len(texts),
        "kept": len(alive),
        "rules": dataclasses.asdict(rules),
        "removed": {r: {"count": len(removed[r]), "examples": examples(r)} for r in RULES},
    }
    return Cleaned(
        texts=[normalised[i] for i in alive],
        labels=[labels[i] for i in alive],
        indices=np.asarray(alive, np.int64),
        report=report,
    )


def _split_off(items: Iterable[int], removed: list[int], drop: Callable[[int], bool]) -> list[int]:
    """Appends the items ``drop`` selects to ``removed``; returns the others."""
    kept = []
    for i in items:
        (removed if drop(i) else kept).append(i)
    return kept


def _is_garbage(text: str, rules: CleaningRules) -> bool:
    alnum = sum(map(str.isalnum, text))
    return alnum < rules.min_chars or alnum < rules.min_alnum_fraction * len(text)


def _held_out_matches(
    texts: list[str], pool: list[Signature], held_out: Sequence[str], rules: CleaningRules
) -> dict[int, str]:
    """Position -> the held-out text that ``texts[position]`` equals, or is near when ``pool``
    holds the signatures of ``texts`` (the near-duplicate rule is on)."""
    held = list(dict.fromkeys(normalize_text(t, rules.lowercase) for t in held_out))
    exact = set(held)
    matches = {k: text for k, text in enumerate(texts) if text in exact}
    if not held or not pool:
        return matches
    index = _NearDuplicateIndex(rules)
    for key, signature in enumerate(signatures(held, rules)):
        index.add(key, signature)
    for k, signature in enumerate(pool):
        key = index.match(signature) if k not in matches else None
        if key is not None:
            matches[k] = held[key]
    return matches


def _near_duplicate_matches(
    pool: list[Signature], skip: Container[int], rules: CleaningRules
) -> dict[int, int]:
    """Position -> the earlier kept position it nearly duplicates (the first of each group of
    near duplicates is kept, in order); positions in ``skip`` are already removed."""
    index = _NearDuplicateIndex(rules)
    matches = {}
    for k, signature in enumerate(pool):
        if k in skip:
            continue
        key = index.match(signature)
        if key is None:
            index.add(k, signature)
        else:
            matches[k] = key
    return matches


def save_report(report: dict[str, Any], workdir: str | Path) -> Path:
    """Writes ``report`` as ``cleaning_report.json`` in ``workdir``; returns the path."""
    path = Path(workdir) / REPORT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # written whole or not at all
    tmp.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
