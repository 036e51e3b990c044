"""Text preprocessing: character vocabularies, UTF-8 byte tokens and language-model windows.

Character and byte tokens need no trained tokenizer and no download, which suits the small
corpora that ship with Python packages (Chinese review sentences, CPython's help topics).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence

import numpy as np

from jaxdl.data.records import Record
from jaxdl.errors import DataError

PAD_ID = 0
UNK_ID = 1
CLS_ID = 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>")  # Index = id.
BYTE_VOCAB_SIZE = 256

_JSON_FORMAT = "jaxdl.CharVocabulary/1"


def _check_positive_int(name: str, value: int) -> int:
    """Returns ``value`` as an int, or raises DataError unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class CharVocabulary:
    """Maps characters to ids: 0 = PAD, 1 = UNK, 2 = CLS, then characters from id 3.

    Build it from training texts only (``CharVocabulary.build``), so characters seen only in
    validation or test data map to UNK as they would for new inputs.
    """

    def __init__(self, chars: Sequence[str]):
        """Creates the vocabulary whose character ``chars[k]`` has id ``k + 3``."""
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise DataError(f"vocabulary entries must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            repeated = [c for c, n in collections.Counter(chars).items() if n > 1]
            raise DataError(f"vocabulary lists characters twice: {repeated[:5]!r}")
        self.chars = chars
        self._ids = {c: k + len(SPECIAL_TOKENS) for k, c in enumerate(chars)}

    @classmethod
    def build(
        cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None
    ) -> CharVocabulary:
        """Counts characters in ``texts`` and keeps those seen at least ``min_freq`` times.

        Order is by count (most frequent first), ties by code point, so the same texts always give
        the same ids. ``max_size`` caps ``len(vocabulary)``, special tokens included.
        """
        min_freq = _check_positive_int("min_freq", min_freq)
        if max_size is not None:
            max_size = _check_positive_int("max_size", max_size)
            if max_size <= len(SPECIAL_TOKENS):
                raise DataError(
                    f"max_size must exceed {len(SPECIAL_TOKENS)} (the special tokens), "
                    f"got {max_size}"
                )
        counts = collections.Counter()
        for text in texts:
            counts.update(text)
        ranked = sorted(
            (c for c, n in counts.items() if n >= min_freq), key=lambda c: (-counts[c], c)
        )
        if max_size is not None:
            ranked = ranked[: max_size - len(SPECIAL_TOKENS)]
        return cls(ranked)

    def __len__(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and self.chars == other.chars

    def __repr__(self) -> str:
        preview = "".join(self.chars[:10])
        return f"CharVocabulary(size={len(self)}, most_frequent={preview!r})"

    def encode(self, text: str, max_len: int, add_cls: bool = False) -> np.ndarray:
        """Returns int32 [max_len] ids: optional CLS, then ``text`` truncated, right-padded.

        Unknown characters become UNK; an empty text gives only padding (after CLS).
        """
        max_len = _check_positive_int("max_len", max_len)
        ids = np.full(max_len, PAD_ID, dtype=np.int32)
        start = 1 if add_cls else 0
        if add_cls:
            ids[0] = CLS_ID
        body = [self._ids.get(c, UNK_ID) for c in text[: max_len - start]]
        ids[start : start + len(body)] = body
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of ``ids``: PAD and CLS are dropped, UNK becomes U+FFFD."""
        pieces = []
        for token in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if token in (PAD_ID, CLS_ID):
                continue
            if token == UNK_ID:
                pieces.append("\N{REPLACEMENT CHARACTER}")
            elif len(SPECIAL_TOKENS) <= token < len(self):
                pieces.append(self.chars[token - len(SPECIAL_TOKENS)])
            else:
                raise DataError(f"token id {token} is outside the vocabulary [0, {len(self)})")
        return "".join(pieces)

    def to_json(self) -> str:
        """Serialises the vocabulary (for export and serving), readable by ``from_json``."""
        return json.dumps(
            {"format": _JSON_FORMAT, "special_tokens": list(SPECIAL_TOKENS), "chars": self.chars},
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> CharVocabulary:
        """Rebuilds a vocabulary written by ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"vocabulary JSON is not valid JSON: {error}") from error
        if not isinstance(data, dict) or data.get("format") != _JSON_FORMAT:
            raise DataError(f"vocabulary JSON must be an object with format {_JSON_FORMAT!r}")
        if data.get("special_tokens") != list(SPECIAL_TOKENS):
            raise DataError(
                f"vocabulary JSON has special tokens {data.get('special_tokens')!r}, "
                f"expected {list(SPECIAL_TOKENS)!r}"
            )
        return cls(data.get("chars", []))


def byte_encode(text: str) -> np.ndarray:
    """Returns the UTF-8 bytes of ``text`` as int32 [len(bytes)] ids in [0, 256)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def byte_decode(ids: Iterable[int]) -> str:
    """Returns the text of byte ids; invalid UTF-8 (e.g. a cut character) becomes U+FFFD."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= BYTE_VOCAB_SIZE):
        raise DataError(
            f"byte ids must lie in [0, {BYTE_VOCAB_SIZE}), got range [{ids.min()}, {ids.max()}]"
        )
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class LanguageModelWindows:
    """Next-token windows over one token stream, as a record source.

    Record ``i`` holds ``tokens`` int32 [seq_len + 1] = ``stream[i*seq_len : i*seq_len+seq_len+1]``
    (inputs ``tokens[:-1]``, targets ``tokens[1:]``) and ``loss_mask`` float32 [seq_len + 1], 1
    where ``tokens[t]`` is a real token. Consecutive windows share one boundary token, so every
    token after the first is a target exactly once. The last window is right-padded with
    ``pad_id`` (mask 0) when the stream does not fill it.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, pad_id: int = PAD_ID):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise DataError(
                f"tokens must be a 1-D integer array, got {tokens.dtype} shape {tokens.shape}"
            )
        if len(tokens) < 2:
            raise DataError(f"a language-model stream needs at least 2 tokens, got {len(tokens)}")
        self.tokens = tokens.astype(np.int32)
        self.seq_len = _check_positive_int("seq_len", seq_len)
        self.pad_id = int(pad_id)
        self._checksum = int(self.tokens.sum(dtype=np.int64) % 2**31)

    def __len__(self) -> int:
        return -(-(len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, index: int) -> Record:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = (index % len(self)) * self.seq_len
        window = self.tokens[start : start + self.seq_len + 1]
        tokens = np.full(self.seq_len + 1, self.pad_id, dtype=np.int32)
        tokens[: len(window)] = window
        loss_mask = np.zeros(self.seq_len + 1, dtype=np.float32)
        loss_mask[: len(window)] = 1.0
        return {"tokens": tokens, "loss_mask": loss_mask}

    def __repr__(self) -> str:
        return (
            f"LanguageModelWindows(num_tokens={len(self.tokens)}, seq_len={self.seq_len}, "
            f"pad_id={self.pad_id}, checksum={self._checksum})"
        )
