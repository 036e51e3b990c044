"""Tests for jaxdl.metrics.edit_distance: exact device-side edit distances and WER/CER counts
equal to a plain DP and to jiwer on the decoded strings."""

import jax
import jiwer
import numpy as np
import pytest

from jaxdl.metrics.edit_distance import error_counts, levenshtein, words_from_chars

ALPHABET = "abc "  # ids 1..4; id 0 (the CTC blank) never appears in decoded text
SPACE_ID = ALPHABET.index(" ") + 1
WORDS = ["a", "b", "ab", "ba", "abc", "cab", "cc"]
JITTED_ERROR_COUNTS = jax.jit(error_counts, static_argnames="space_id")


def _python_levenshtein(hyp: list[int], ref: list[int]) -> int:
    row = list(range(len(ref) + 1))
    for i, token in enumerate(hyp, start=1):
        previous, row = row, [i]
        for j, ref_token in enumerate(ref, start=1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (token != ref_token)))
    return row[-1]


def _pad(rng: np.random.Generator, sequences: list[list[int]], width: int) -> np.ndarray:
    """Right-pad with random ids (spaces included), which the functions must ignore."""
    padded = rng.integers(0, SPACE_ID + 1, size=(len(sequences), width)).astype(np.int32)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    return padded


@pytest.mark.parametrize(
    ("batch", "hyp_width", "ref_width", "seed"),
    [(6, 7, 9, 0), (5, 12, 4, 1), (4, 0, 5, 2), (4, 6, 0, 3), (3, 1, 1, 4)],
)
def test_levenshtein_equals_python_dp_on_random_padded_batches(
    batch: int, hyp_width: int, ref_width: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    hyps = [list(rng.integers(1, 4, rng.integers(0, hyp_width + 1))) for _ in range(batch)]
    refs = [list(rng.integers(1, 4, rng.integers(0, ref_width + 1))) for _ in range(batch)]
    hyps[0], refs[-1] = [], []  # an empty hypothesis and an empty reference in every batch
    hyp_lengths = np.array([len(h) for h in hyps], np.int32)
    ref_lengths = np.array([len(r) for r in refs], np.int32)
    distances = jax.jit(levenshtein)(
        _pad(rng, hyps, hyp_width), hyp_lengths, _pad(rng, refs, ref_width), ref_lengths
    )
    assert distances.dtype == np.int32
    np.testing.assert_array_equal(
        distances, [_python_levenshtein(h, r) for h, r in zip(hyps, refs, strict=True)]
    )


def test_levenshtein_known_value() -> None:
    def ids(text: str) -> list[int]:
        return [ord(char) for char in text]

    distance = levenshtein(np.array([ids("kitten")]), [6], np.array([ids("sitting")]), [7])
    assert int(distance[0]) == 3


def _random_sentence(rng: np.random.Generator, words: list[str]) -> str:
    """Words joined by 1-3 spaces, with 0-2 spaces at each end."""
    text = "".join(word + " " * int(rng.integers(1, 4)) for word in words).rstrip(" ")
    return " " * int(rng.integers(0, 3)) + text + " " * int(rng.integers(0, 3))


def _perturb(rng: np.random.Generator, words: list[str]) -> list[str]:
    """A hypothesis: reference words kept, substituted, deleted, misspelled or with insertions."""
    out = []
    for word in words:
        action = rng.choice(
            ["keep", "substitute", "delete", "misspell", "insert"], p=[0.55, 0.15, 0.1, 0.1, 0.1]
        )
        if action == "keep":
            out.append(word)
        elif action == "substitute":
            out.append(str(rng.choice(WORDS)))
        elif action == "misspell":
            position = int(rng.integers(len(word)))
            out.append(word[:position] + str(rng.choice(list("abc"))) + word[position + 1 :])
        elif action == "insert":
            out.extend([word, str(rng.choice(WORDS))])
    return out


def _encode(text: str) -> list[int]:
    return [ALPHABET.index(char) + 1 for char in text]


def _sentence_batch(seed: int, batch: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    refs, hyps = [], []
    for _ in range(batch):
        words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(0, 7)))]
        refs.append(_random_sentence(rng, words))
        hyps.append(_random_sentence(rng, _perturb(rng, words)))
    refs[0], hyps[1] = "", "  "  # an empty reference (jiwer 4 accepts it) and hypothesis
    return refs, hyps


def _as_arrays(rng: np.random.Generator, texts: list[str], width: int):
    return _pad(rng, [_encode(t) for t in texts], width), np.array([len(t) for t in texts])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_counts_equal_jiwer_on_decoded_strings(seed: int) -> None:
    refs, hyps = _sentence_batch(seed, batch=24)
    rng = np.random.default_rng(100 + seed)
    hyp, hyp_lengths = _as_arrays(rng, hyps, 64)
    ref, ref_lengths = _as_arrays(rng, refs, 48)
    counts = JITTED_ERROR_COUNTS(hyp, hyp_lengths, ref, ref_lengths, space_id=SPACE_ID)
    counts = {name: np.asarray(value) for name, value in counts.items()}
    for b, (r, h) in enumerate(zip(refs, hyps, strict=True)):
        words = jiwer.process_words(r, h)
        chars = jiwer.process_characters(r, h)
        expected = {
            "word_errors": words.substitutions + words.deletions + words.insertions,
            "ref_words": words.hits + words.substitutions + words.deletions,
            "char_errors": chars.substitutions + chars.deletions + chars.insertions,
            "ref_chars": chars.hits + chars.substitutions + chars.deletions,
        }
        assert {name: int(value[b]) for name, value in counts.items()} == expected, (r, h)
    # Summed over the batch: the corpus WER/CER jiwer computes from the lists.
    assert counts["word_errors"].sum() / counts["ref_words"].sum() == pytest.approx(
        jiwer.wer(refs, hyps)
    )
    assert counts["char_errors"].sum() / counts["ref_chars"].sum() == pytest.approx(
        jiwer.cer(refs, hyps)
    )
    assert counts["word_errors"].sum() > 0 and counts["char_errors"].sum() > 0


def test_error_counts_compile_once_per_shape() -> None:
    traces = 0

    def counted(*args):
        nonlocal traces
        traces += 1
        return error_counts(*args, space_id=SPACE_ID)

    jitted = jax.jit(counted)
    rng = np.random.default_rng(0)
    for seed in range(3):
        refs, hyps = _sentence_batch(seed, batch=8)
        jitted(*_as_arrays(rng, hyps, 40), *_as_arrays(rng, refs, 40))
    assert traces == 1


def test_words_from_chars_splits_like_str_split_and_ids_follow_the_words() -> None:
    texts = ["  ab ba  ab ", "ba", "", "   ", "abc cab abc b a", "cc  a"]
    rng = np.random.default_rng(0)
    tokens, lengths = _as_arrays(rng, texts, 20)
    word_ids, word_counts = jax.jit(words_from_chars, static_argnames="space_id")(
        tokens, lengths, space_id=SPACE_ID
    )
    assert word_ids.shape == (len(texts), 10)
    np.testing.assert_array_equal(word_counts, [len(t.split()) for t in texts])
    id_of: dict[str, int] = {}
    for row, text in enumerate(texts):
        words = text.split()
        np.testing.assert_array_equal(word_ids[row, len(words) :], -1)
        for word, word_id in zip(words, np.asarray(word_ids[row]).tolist(), strict=False):
            assert id_of.setdefault(word, word_id) == word_id
    assert len(set(id_of.values())) == len(id_of)  # distinct words, distinct ids
