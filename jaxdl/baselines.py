"""Classic text-classification baselines for the results table: bag-of-words and TF-IDF
features with logistic regression (scikit-learn), on characters and on segmented words.

Fitted on the train split with each regularisation strength ``C``, the one with the best
validation accuracy is scored on the frozen test split — the texts every model is scored on
(``jaxdl.data.text_split``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from jaxdl.data.subword import segment_words
from jaxdl.data.text_split import TextSplits

FEATURES = {
    "char 1-2-grams": {"analyzer": "char", "ngram_range": (1, 2)},
    "word 1-2-grams": {
        "tokenizer": lambda text: [w for w in segment_words(text) if w.strip()],
        "token_pattern": None,
        "ngram_range": (1, 2),
    },
}
VECTORIZERS = {"bag-of-words": CountVectorizer, "tf-idf": TfidfVectorizer}


def text_baselines(
    splits: TextSplits,
    vectorizers: Sequence[str] = tuple(VECTORIZERS),
    features: Sequence[str] = tuple(FEATURES),
    regularization: Sequence[float] = (0.1, 1.0, 10.0),
) -> list[dict[str, Any]]:
    """One row per (vectorizer, features): the chosen ``C``, val and test accuracy, vocabulary
    size and the fit time of the chosen model."""
    rows = []
    for vectorizer_name in vectorizers:
        for feature_name in features:
            best: dict[str, Any] = {"val_accuracy": -1.0}
            for c in regularization:
                start = time.perf_counter()
                model = make_pipeline(
                    VECTORIZERS[vectorizer_name](lowercase=False, **FEATURES[feature_name]),
                    LogisticRegression(C=c, solver="liblinear"),
                )
                model.fit(splits.texts["train"], splits.labels["train"])
                seconds = time.perf_counter() - start
                val = _accuracy(model, splits, "val")
                if val > best["val_accuracy"]:
                    best = {"C": c, "val_accuracy": val, "model": model, "fit_seconds": seconds}
            rows.append(
                {
                    "model": f"{vectorizer_name} + logistic regression",
                    "features": feature_name,
                    "C": best["C"],
                    "val_accuracy": best["val_accuracy"],
                    "test_accuracy": _accuracy(best["model"], splits, "test"),
                    "vocabulary": len(best["model"][0].vocabulary_),
                    "fit_seconds": round(best["fit_seconds"], 2),
                }
            )
    return rows


def _accuracy(model, splits: TextSplits, split: str) -> float:
    predicted = model.predict(splits.texts[split])
    return float(np.mean(predicted == np.asarray(splits.labels[split])))
