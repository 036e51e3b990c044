"""Tokenizers as workdir files: fitted on the training split, saved, reloaded with a check.

``save_tokenizer`` writes ``tokenizer.json`` and returns the tokenizer's *signature* (kind,
vocabulary size, fingerprint); record it with the model (config, checkpoint metadata or
``results.json``). ``load_tokenizer`` compares a file against that record, so evaluation, export
and serving refuse a tokenizer from another vocabulary with one line instead of feeding the
model ids that mean other tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxdl.data.subword import MODELS, SubwordTokenizer
from jaxdl.data.text_sources import ByteTokenizer, CharTokenizer, Tokenizer, tokenizer_from_json
from jaxdl.errors import DataError

TOKENIZER_FILENAME = "tokenizer.json"
KINDS = ("byte", "char", *MODELS)


def fit_tokenizer(kind: str, train_texts: Iterable[str], **options: Any) -> Tokenizer:
    """A tokenizer of ``kind`` (one of ``KINDS``) built from the training texts only.

    ``options``: ``min_freq`` for ``char``; ``SubwordTokenizer.train``'s (``vocab_size``,
    ``min_frequency``, ``segmenter``, ``stopwords``) for the trained kinds.
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.build(train_texts, **options)
    if kind in MODELS:
        return SubwordTokenizer.train(train_texts, model=kind, **options)
    raise DataError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")


def tokenizer_signature(tokenizer: Tokenizer) -> dict[str, Any]:
    """Kind, vocabulary size and fingerprint: what a model must be served with. Tokenizers
    without a ``fingerprint`` are fingerprinted by their canonical JSON."""
    data = json.loads(tokenizer.to_json())
    fingerprint = getattr(tokenizer, "fingerprint", None)
    if fingerprint is None:
        canonical = json.dumps(data, sort_keys=True, ensure_ascii=False)
        fingerprint = hashlib.sha1(canonical.encode()).hexdigest()
    return {
        "kind": data.get("model", data["kind"]),
        "vocab_size": int(tokenizer.vocab_size),
        "fingerprint": fingerprint,
    }


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> dict[str, Any]:
    """Writes ``directory/tokenizer.json``; returns the signature to record with the model."""
    path = Path(directory) / TOKENIZER_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole or not at all: a kill mid-write must not leave a truncated tokenizer.json.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tokenizer.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return tokenizer_signature(tokenizer)


def load_tokenizer(path: str | Path, expected: Mapping[str, Any] | None = None) -> Tokenizer:
    """Reads a tokenizer file (or ``tokenizer.json`` in a directory). With ``expected`` (the
    signature recorded with the model), a file of another vocabulary raises ``DataError``."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILENAME
    if not path.is_file():
        raise DataError(f"tokenizer file {str(path)!r} does not exist")
    try:
        tokenizer = tokenizer_from_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, ValueError) as error:
        raise DataError(f"tokenizer file {str(path)!r} cannot be read: {error}") from None
    if expected is not None:
        found = tokenizer_signature(tokenizer)
        differ = [key for key in found if found[key] != expected.get(key)]
        if differ:
            raise DataError(
                f"tokenizer file {str(path)!r} is not the model's tokenizer: "
                + ", ".join(f"{k} {found[k]!r} != recorded {expected[k]!r}" for k in differ)
                + " (use the tokenizer.json saved with the model)"
            )
    return tokenizer
