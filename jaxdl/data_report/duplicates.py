"""Exact and near duplicates within and across splits (leaks), and those with conflicting labels.

All examples of train, val and test share one global index (train first, then val, then test).
*Exact* duplicates have equal digests (``examples.py``). *Near* duplicates are pairs of
different contents at or above a similarity threshold:

* texts: Jaccard similarity of the character 3-gram sets of their letters and digits
  (``jaxdl.data.text_cleaning.shingles``); MinHash LSH (``datasketch``) with its threshold
  ``LSH_MARGIN`` below the stated one proposes candidate pairs and the exact Jaccard decides;
* images: cosine similarity of 16x16 grayscale thumbnails, each centred and scaled to unit norm
  (the Pearson correlation of their pixels), compared exhaustively block by block: O(N^2).

Near-duplicate search runs once per distinct content; each pair is then reported for every
example holding either content.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
from datasketch import MinHashLSH

from jaxdl.data.text_cleaning import CleaningRules, jaccard, signatures
from jaxdl.data_report.examples import IMAGE, TEXT, SplitContent

LSH_MARGIN = 0.1
_BLOCK = 1024
_MAX_MEMBERS_LISTED = 20
_PREVIEW_CHARS = 80


@dataclasses.dataclass
class Catalogue:
    """Every example of the splits under one global index.

    ``split_of`` / ``index_of``: int64 [N] split number and index within it; ``content``:
    int64 [N] content id (equal iff the digests are equal; -1 unreadable); ``labels``: int64 [N]
    or None; ``members[c]``: the global indices holding content c, in order.
    """

    splits: list[SplitContent]
    class_names: list[str]
    split_of: np.ndarray
    index_of: np.ndarray
    content: np.ndarray
    labels: np.ndarray | None
    members: list[list[int]]

    @classmethod
    def build(cls, splits: list[SplitContent], class_names: list[str]) -> Catalogue:
        ids: dict[bytes, int] = {}
        members: list[list[int]] = []
        content = []
        for position, digest in enumerate(d for split in splits for d in split.digests):
            if digest is None:
                content.append(-1)
                continue
            if digest not in ids:
                ids[digest] = len(members)
                members.append([])
            members[ids[digest]].append(position)
            content.append(ids[digest])
        sizes = [len(split) for split in splits]
        labelled = all(split.labels is not None for split in splits)
        return cls(
            splits=splits,
            class_names=class_names,
            split_of=np.repeat(np.arange(len(splits)), sizes),
            index_of=np.concatenate([np.arange(n) for n in sizes]).astype(np.int64),
            content=np.asarray(content, np.int64),
            labels=np.concatenate([s.labels for s in splits]) if labelled else None,
            members=members,
        )

    def label_name(self, label: int) -> str:
        if label < 0:
            return "unknown"
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def describe(self, position: int) -> dict[str, Any]:
        """``{"split", "index"}`` of an example, plus its label, text preview and record name
        (file path, row) where known."""
        split = self.splits[int(self.split_of[position])]
        index = int(self.index_of[position])
        out: dict[str, Any] = {"split": split.name, "index": index}
        if self.labels is not None:
            out["label"] = self.label_name(int(self.labels[position]))
        if split.texts is not None:
            text = split.texts[index]
            out["text"] = text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"
        describe = getattr(split.source, "describe", None)
        if describe is not None:
            out["record"] = describe(index)
        return out

    def text(self, position: int) -> str:
        return self.splits[int(self.split_of[position])].texts[int(self.index_of[position])]

    def split_pairs(self) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(len(self.splits)), 2))


def _content_label_conflicts(catalogue: Catalogue) -> np.ndarray:
    """bool [contents]: the examples holding the content carry two or more labels."""
    count = len(catalogue.members)
    if catalogue.labels is None or not count:
        return np.zeros(count, bool)
    known = (catalogue.content >= 0) & (catalogue.labels >= 0)
    low = np.full(count, np.iinfo(np.int64).max)
    high = np.full(count, -1)
    np.minimum.at(low, catalogue.content[known], catalogue.labels[known])
    np.maximum.at(high, catalogue.content[known], catalogue.labels[known])
    return (high >= 0) & (low != high)


def exact_duplicates(catalogue: Catalogue, max_listed: int) -> dict[str, Any]:
    """Groups of equal examples: per split (``redundant_examples``: copies beyond the first),
    across each pair of splits (leaks: shared contents and the examples on each side), those
    with conflicting labels, and the first ``max_listed`` groups (conflicts, then leaks, then
    the largest)."""
    names = [split.name for split in catalogue.splits]
    readable = catalogue.content >= 0
    counts = np.zeros((len(catalogue.members), len(names)), np.int64)
    np.add.at(counts, (catalogue.content[readable], catalogue.split_of[readable]), 1)
    duplicated = counts.sum(1) >= 2
    conflicts = _content_label_conflicts(catalogue) & duplicated
    within = {
        name: {
            "groups": int((counts[:, s] >= 2).sum()),
            "redundant_examples": int(np.maximum(counts[:, s] - 1, 0).sum()),
        }
        for s, name in enumerate(names)
    }
    across = {}
    for a, b in catalogue.split_pairs():
        shared = (counts[:, a] > 0) & (counts[:, b] > 0)
        across[f"{names[a]}/{names[b]}"] = {
            "groups": int(shared.sum()),
            f"{names[a]}_examples": int(counts[shared, a].sum()),
            f"{names[b]}_examples": int(counts[shared, b].sum()),
        }
    spread = (counts > 0).sum(1)
    groups = np.flatnonzero(duplicated)
    order = np.lexsort(
        (-counts.sum(1)[groups], -spread[groups], -conflicts[groups].astype(np.int64))
    )
    listed = []
    for c in groups[order][:max_listed]:
        members = catalogue.members[c]
        listed.append(
            {
                "size": len(members),
                "splits": [names[s] for s in np.flatnonzero(counts[c])],
                "label_conflict": bool(conflicts[c]),
                "members": [catalogue.describe(m) for m in members[:_MAX_MEMBERS_LISTED]],
            }
        )
    return {
        "method": "equal BLAKE2b digests of the example's bytes (images: stored pixels; "
        "texts: NFKC-normalised text with whitespace runs collapsed)",
        "groups": int(duplicated.sum()),
        "within_split": within,
        "across_splits": across,
        "label_conflict_groups": int(conflicts.sum()),
        "listed": listed,
    }


def text_pairs(texts: list[str], threshold: float) -> list[tuple[int, int, float]]:
    """``(i, j, similarity)`` with i < j for the texts whose character 3-gram Jaccard similarity
    is at least ``threshold`` (see the module docs)."""
    rules = CleaningRules(near_duplicate_threshold=threshold)
    signed = signatures(texts, rules)
    lsh = MinHashLSH(threshold=max(threshold - LSH_MARGIN, 0.05), num_perm=rules.num_perm)
    for key, (_, minhash) in enumerate(signed):
        lsh.insert(key, minhash)
    pairs = []
    for i, (shingle_set, minhash) in enumerate(signed):
        for j in sorted(lsh.query(minhash)):
            if j > i:
                similarity = jaccard(shingle_set, signed[j][0])
                if similarity >= threshold:
                    pairs.append((i, j, similarity))
    return pairs


def image_pairs(thumbnails: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """``(i, j, cosine)`` with i < j for the unit-norm rows whose dot product is at least
    ``threshold`` (zero rows, constant images, match nothing)."""
    pairs = []
    for start in range(0, len(thumbnails), _BLOCK):
        similarity = thumbnails[start : start + _BLOCK] @ thumbnails[start:].T
        rows, cols = np.nonzero(similarity >= threshold)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            if col > row:
                pairs.append((start + row, start + col, float(similarity[row, col])))
    return pairs


def _method(kind: str, threshold: float) -> str:
    if kind == TEXT:
        return (
            f"Jaccard similarity >= {threshold} of character 3-gram sets (letters and digits); "
            f"MinHash LSH at {max(threshold - LSH_MARGIN, 0.05):.2f} proposes candidates"
        )
    return f"cosine similarity >= {threshold} of centred 16x16 grayscale thumbnails"


def near_duplicates(
    catalogue: Catalogue, kind: str, threshold: float, max_listed: int
) -> dict[str, Any]:
    """Pairs of examples with different contents at or above ``threshold`` (texts and images
    only): per split, across each pair of splits, with conflicting labels, and the most
    similar ``max_listed`` pairs."""
    if kind not in (TEXT, IMAGE):
        reason = f"near duplicates are searched in texts and images, not {kind} data"
        return {"computed": False, "reason": reason}
    representatives = [members[0] for members in catalogue.members]
    if kind == TEXT:
        texts = [catalogue.text(g) for g in representatives]
        content_pairs = text_pairs(texts, threshold)
    else:
        thumbs = np.concatenate([split.thumbnails for split in catalogue.splits])
        content_pairs = image_pairs(thumbs[representatives], threshold)
    pairs = [
        (a, b, similarity)
        for u, v, similarity in content_pairs
        for a in catalogue.members[u]
        for b in catalogue.members[v]
    ]
    names = [split.name for split in catalogue.splits]
    first = np.asarray([a for a, _, _ in pairs], np.int64)
    second = np.asarray([b for _, b, _ in pairs], np.int64)
    split_a, split_b = catalogue.split_of[first], catalogue.split_of[second]

    def involved(mask: np.ndarray, split: int) -> int:
        ends = np.concatenate([first[mask & (split_a == split)], second[mask & (split_b == split)]])
        return int(np.unique(ends).size)

    within = {}
    for s, name in enumerate(names):
        mask = (split_a == s) & (split_b == s)
        within[name] = {"pairs": int(mask.sum()), "examples": involved(mask, s)}
    across = {}
    for a, b in catalogue.split_pairs():
        mask = ((split_a == a) & (split_b == b)) | ((split_a == b) & (split_b == a))
        across[f"{names[a]}/{names[b]}"] = {
            "pairs": int(mask.sum()),
            f"{names[a]}_examples": involved(mask, a),
            f"{names[b]}_examples": involved(mask, b),
        }
    conflicts = np.zeros(len(pairs), bool)
    if catalogue.labels is not None and pairs:
        la, lb = catalogue.labels[first], catalogue.labels[second]
        conflicts = (la >= 0) & (lb >= 0) & (la != lb)
    order = sorted(range(len(pairs)), key=lambda k: (-pairs[k][2], pairs[k][0], pairs[k][1]))
    listed = [
        {
            "similarity": round(pairs[k][2], 4),
            "label_conflict": bool(conflicts[k]),
            "a": catalogue.describe(pairs[k][0]),
            "b": catalogue.describe(pairs[k][1]),
        }
        for k in order[:max_listed]
    ]
    return {
        "computed": True,
        "method": _method(kind, threshold),
        "threshold": threshold,
        "pairs": len(pairs),
        "within_split": within,
        "across_splits": across,
        "label_conflict_pairs": int(conflicts.sum()),
        "listed": listed,
    }
