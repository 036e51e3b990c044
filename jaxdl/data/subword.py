"""Trained tokenizers behind the ``Tokenizer`` interface: subword (BPE, WordPiece, Unigram) and
word-level vocabularies from 🤗 ``tokenizers``, optionally over Chinese word segmentation.

Train on the training split only (``SubwordTokenizer.train`` takes any iterator of texts), save
with ``to_json`` (``jaxdl.data.tokenizer_store`` writes it into the workdir) and rebuild with
``tokenizer_from_json`` for evaluation, export and serving. Special tokens have fixed ids —
``<pad>`` 0, ``<unk>`` 1, ``<cls>`` 2 (as in ``CharVocabulary``) and ``<mask>`` 3 — whatever the
training texts. Spaces survive as ``▁`` pieces, punctuation and digits are pieces of their own,
and otherwise text (a Chinese clause, an English word) is split by the model alone, as
SentencePiece does; ``segmenter="jieba"`` splits Chinese into words first (``rjieba``), and
``stopwords`` then removes words. Text is NFKC-normalised first. ``decode`` restores the
(normalised) text, less unknown pieces and stop words.

Unigram training on unsegmented Chinese is slow (~40 s for 13k reviews on 2 cores: every clause
is one long word); with ``segmenter="jieba"`` it takes about a second, as the other models do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from jaxdl.errors import DataError

SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>", "<mask>")  # Index = id.
MODELS = ("bpe", "wordpiece", "unigram", "word")
SEGMENTERS = ("jieba",)
_FORMAT = "jaxdl.SubwordTokenizer/1"
_SPACE = "▁"  # What Metaspace makes of a space
_CONTINUATION = "##"  # WordPiece's prefix of a piece inside a word


def segment_words(text: str) -> list[str]:
    """Chinese word segmentation by ``rjieba`` (jieba's dictionary, in Rust); other scripts come
    back as words and spaces as one-space items."""
    import rjieba  # Imported on use: only segmenting tokenizers and augmentation need it.

    return rjieba.cut(text)


def _check_options(model: str, segmenter: str | None, stopwords: frozenset[str]) -> None:
    if model not in MODELS:
        raise DataError(f"unknown subword model {model!r}; expected one of {MODELS}")
    if segmenter is not None and segmenter not in SEGMENTERS:
        raise DataError(f"unknown segmenter {segmenter!r}; expected None or one of {SEGMENTERS}")
    if stopwords and segmenter is None:
        raise DataError("stop-word removal needs words: set segmenter='jieba'")


def _pieces(text: str, segmenter: str | None, stopwords: frozenset[str]) -> str | list[str]:
    """What the 🤗 tokenizer sees: the text, or its words less stop words."""
    if segmenter is None:
        return text
    return [word for word in segment_words(text) if word not in stopwords]


def _hf_tokenizer(model: str) -> tuple[HFTokenizer, Any]:
    """An untrained 🤗 tokenizer of ``model`` and its trainer class."""
    unk = SPECIAL_TOKENS[1]
    built = {
        "bpe": (models.BPE(unk_token=unk), trainers.BpeTrainer),
        "wordpiece": (models.WordPiece(unk_token=unk), trainers.WordPieceTrainer),
        "unigram": (models.Unigram(), trainers.UnigramTrainer),
        "word": (models.WordLevel(unk_token=unk), trainers.WordLevelTrainer),
    }
    hf_model, trainer = built[model]
    tokenizer = HFTokenizer(hf_model)
    tokenizer.normalizer = normalizers.NFKC()  # As the cleaning rules normalise texts.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(_SPACE, prepend_scheme="never"),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    steps = [decoders.Metaspace(_SPACE, prepend_scheme="never")]
    if model == "wordpiece":
        steps.insert(0, decoders.Replace(_CONTINUATION, ""))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer, trainer


def _with_canonical_ids(tokenizer: HFTokenizer) -> HFTokenizer:
    """The trained ``tokenizer`` with its pieces renumbered in a fixed order: special tokens
    first, then the others sorted by piece.

    🤗 tokenizers' WordPiece, WordLevel and Unigram trainers learn the same pieces from the same
    texts in every process but number them in hash-map order, which Rust seeds per process: the
    same run twice would get different ids, and a classifier fine-tuned from a pre-trained
    encoder would need that run's exact file. Encoding depends on the pieces (and Unigram's
    scores, BPE's merges), never on the ids, so renumbering changes nothing else. (Unigram's
    scores themselves vary in the last digits between processes — its EM sums in hash order —
    which may move a rare segmentation; the ids no longer do.)
    """
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    specials = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    if model["type"] == "Unigram":
        model["vocab"] = sorted(model["vocab"], key=lambda p: (specials.get(p[0], 99), p[0]))
        model["unk_id"] = specials[SPECIAL_TOKENS[1]]
    else:
        others = sorted(token for token in model["vocab"] if token not in specials)
        model["vocab"] = {**specials, **{t: len(specials) + i for i, t in enumerate(others)}}
    return HFTokenizer.from_str(json.dumps(data))


class SubwordTokenizer:
    """A trained 🤗 ``tokenizers`` vocabulary as a jaxdl ``Tokenizer`` (see the module docs)."""

    pad_id, unk_id, cls_id, mask_id = range(len(SPECIAL_TOKENS))

    def __init__(
        self,
        tokenizer: HFTokenizer,
        model: str,
        segmenter: str | None = None,
        stopwords: Iterable[str] = (),
    ):
        self.stopwords = frozenset(stopwords)
        _check_options(model, segmenter, self.stopwords)
        ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise DataError(f"special tokens {SPECIAL_TOKENS} must have ids 0-3, got {ids}")
        tokenizer.encode_special_tokens = True  # "<cls>" typed in a text is text, not CLS.
        self.tokenizer, self.model, self.segmenter = tokenizer, model, segmenter
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        model: str = "bpe",
        vocab_size: int = 8000,
        min_frequency: int = 2,
        segmenter: str | None = None,
        stopwords: Iterable[str] = (),
    ) -> SubwordTokenizer:
        """Learns a vocabulary of at most ``vocab_size`` entries (WordPiece keeps every
        character seen, and may exceed it) from ``texts``: pass the training split only."""
        stopwords = frozenset(stopwords)
        _check_options(model, segmenter, stopwords)
        tokenizer, trainer_class = _hf_tokenizer(model)
        options: dict[str, Any] = {
            "vocab_size": vocab_size,
            "special_tokens": list(SPECIAL_TOKENS),
            "show_progress": False,
        }
        if model != "word":  # The space piece is never unknown.
            options["initial_alphabet"] = [_SPACE]
        if model == "unigram":
            options["unk_token"] = SPECIAL_TOKENS[1]
        else:
            options["min_frequency"] = min_frequency
        pieces = (_pieces(text, segmenter, stopwords) for text in texts)
        try:
            tokenizer.train_from_iterator(pieces, trainer_class(**options))
        except Exception as error:  # 🤗 tokenizers raises bare Exceptions from Rust
            raise DataError(f"cannot train a {model} tokenizer: {error}") from None
        if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
            raise DataError("the tokenizer's training texts hold no text")
        return cls(_with_canonical_ids(tokenizer), model, segmenter, stopwords)

    def encode(self, text: str) -> np.ndarray:
        pieces = _pieces(text, self.segmenter, self.stopwords)
        encoding = self.tokenizer.encode(pieces, is_pretokenized=self.segmenter is not None)
        return np.asarray(encoding.ids, np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise DataError(f"token ids must be in [0, {self.vocab_size}), got {ids.tolist()}")
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    @property
    def fingerprint(self) -> str:
        """SHA-1 of what decides the ids — model, segmenter, stop words and (piece, id) pairs —
        so a file from another vocabulary is told apart however it was serialised."""
        content = {
            "model": self.model,
            "segmenter": self.segmenter,
            "stopwords": sorted(self.stopwords),
            "vocab": sorted(self.tokenizer.get_vocab().items(), key=lambda item: item[1]),
        }
        return hashlib.sha1(json.dumps(content, ensure_ascii=False).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "subword",
                "format": _FORMAT,
                "model": self.model,
                "segmenter": self.segmenter,
                "stopwords": sorted(self.stopwords),
                "fingerprint": self.fingerprint,
                "tokenizer": json.loads(self.tokenizer.to_str()),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> SubwordTokenizer:
        """Rebuilds a tokenizer written by ``to_json``; a file whose vocabulary does not match
        its recorded fingerprint (edited, or mixed up) raises ``DataError``."""
        data = json.loads(text)
        if data.get("format") != _FORMAT:
            raise DataError(f"not a {_FORMAT} tokenizer (format {data.get('format')!r})")
        tokenizer = HFTokenizer.from_str(json.dumps(data["tokenizer"]))
        loaded = cls(tokenizer, data["model"], data["segmenter"], data["stopwords"])
        if loaded.fingerprint != data["fingerprint"]:
            raise DataError(
                f"tokenizer vocabulary fingerprint {loaded.fingerprint[:12]} does not match the "
                f"recorded {data['fingerprint'][:12]}: the file was altered"
            )
        return loaded

    def __repr__(self) -> str:
        return (
            f"SubwordTokenizer(model={self.model!r}, size={self.vocab_size}, "
            f"segmenter={self.segmenter!r}, fingerprint={self.fingerprint[:12]})"
        )
