"""Tests for jaxdl.models.ctc_decoding: greedy decoding, prefix beam search (against brute-force
enumeration of alignments), the character n-gram LM and the lexicon word n-gram LM (against a
word-level Witten-Bell reference written here)."""

import itertools
import math

import jax
import numpy as np
import pytest

from jaxdl.models.ctc_decoding import (
    CharNgramLM,
    LexiconWordLM,
    beam_search_batch,
    ctc_greedy_decode,
    ctc_prefix_beam_search,
)

BLANK = 0


def _collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(label for label, _ in itertools.groupby(path) if label != BLANK)


def _labelling_log_probs(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """log P(labelling) by summing over every alignment (V**T paths)."""
    probs: dict[tuple[int, ...], float] = {}
    frames, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=frames):
        labelling = _collapse(path)
        path_prob = math.exp(sum(log_probs[t, label] for t, label in enumerate(path)))
        probs[labelling] = probs.get(labelling, 0.0) + path_prob
    return {labelling: math.log(prob) for labelling, prob in probs.items()}


def _random_log_probs(rng: np.random.Generator, frames: int, vocab: int) -> np.ndarray:
    return np.log(rng.dirichlet(np.full(vocab, 0.7), size=frames))


def test_greedy_merges_repeats_keeps_repeats_split_by_blanks_and_ignores_padding() -> None:
    best_paths = [
        [1, 1, 0, 1, 2, 2, 0, 0, 3, 3, 3],  # 9 real frames, then padding
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],  # no real frames
        [3, 0, 3, 3, 1, 0, 0, 1, 2, 1, 3],
    ]
    logits = np.eye(4, dtype=np.float32)[np.array(best_paths)] * 5.0
    tokens, lengths = jax.jit(ctc_greedy_decode)(logits, np.array([9, 11, 0, 11]))
    np.testing.assert_array_equal(lengths, [4, 0, 0, 7])
    assert tokens.shape == (4, 11) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[0, :5], [1, 1, 2, 3, 0])
    np.testing.assert_array_equal(tokens[1:3], 0)
    np.testing.assert_array_equal(tokens[3], [3, 3, 1, 1, 2, 1, 3, 0, 0, 0, 0])


def test_greedy_equals_python_reference_on_random_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 13, 5)).astype(np.float32)
    logits[..., BLANK] += 0.5  # some blanks, some repeats
    lengths = np.array([13, 0, 1, 7, 12, 5])
    tokens, out_lengths = jax.jit(ctc_greedy_decode)(logits, lengths)
    for row, length in enumerate(lengths):
        expected = _collapse(tuple(np.argmax(logits[row, :length], axis=-1).tolist()))
        assert out_lengths[row] == len(expected)
        assert tuple(np.asarray(tokens[row, : len(expected)]).tolist()) == expected
        np.testing.assert_array_equal(tokens[row, len(expected) :], 0)


def test_beam_search_finds_the_labelling_greedy_misses() -> None:
    # Best path: blank, blank (0.36) -> "". But "a" sums aa, a-, -a: 0.16 + 0.24 + 0.24 = 0.64.
    log_probs = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    _, lengths = ctc_greedy_decode(log_probs[None], np.array([2]))
    assert int(lengths[0]) == 0
    (best, score), *_ = ctc_prefix_beam_search(log_probs, beam_width=2)
    assert best == (1,)
    assert score == pytest.approx(math.log(0.64))


@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_scores_are_exact_labelling_probabilities(seed: int) -> None:
    rng = np.random.default_rng(seed)
    log_probs = _random_log_probs(rng, frames=4, vocab=3)
    exact = _labelling_log_probs(log_probs)
    # 31 prefixes of at most 4 labels over 2 labels: a beam of 32 never prunes.
    results = ctc_prefix_beam_search(log_probs, beam_width=32)
    assert len(results) == len(exact)
    for labelling, score in results:
        assert score == pytest.approx(exact[labelling], abs=1e-9)
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0][0] == max(exact, key=exact.get)
    greedy = _collapse(tuple(np.argmax(log_probs, axis=-1).tolist()))
    assert exact[results[0][0]] >= exact[greedy]


def test_lm_and_word_bonus_add_to_the_score_as_documented() -> None:
    space = 3
    rng = np.random.default_rng(1)
    log_probs = _random_log_probs(rng, frames=4, vocab=4)
    lm = CharNgramLM(order=2, vocab_size=4).fit([(1, 3, 2), (2, 2, 3, 1)])
    results = ctc_prefix_beam_search(
        log_probs, beam_width=200, lm=lm, lm_weight=0.7, word_bonus=0.3, space_id=space
    )
    exact = _labelling_log_probs(log_probs)
    assert len(results) == len(exact)
    for labelling, score in results:
        lm_score = sum(lm.log_prob(labelling[:i], label) for i, label in enumerate(labelling))
        words = sum(
            1
            for i, label in enumerate(labelling)
            if label != space and (i == 0 or labelling[i - 1] == space)
        )
        assert score == pytest.approx(exact[labelling] + 0.7 * lm_score + 0.3 * words)


def test_character_lm_resolves_an_acoustically_ambiguous_frame() -> None:
    # Frame 1 says "a" clearly; frame 2 is torn between "b" (0.48) and "c" (0.49).
    log_probs = np.log(np.array([[0.01, 0.97, 0.01, 0.01], [0.02, 0.01, 0.48, 0.49]]))
    assert ctc_prefix_beam_search(log_probs)[0][0] == (1, 3)
    lm = CharNgramLM(order=2, vocab_size=4).fit([(1, 2), (1, 2, 1, 2)])
    assert ctc_prefix_beam_search(log_probs, lm=lm)[0][0] == (1, 2)


def test_char_ngram_lm_is_normalised_and_order_one_is_add_alpha() -> None:
    lm = CharNgramLM(order=3, vocab_size=5, alpha=0.5).fit([(1, 2, 3, 4, 1, 2), (2, 2)])
    for context in [(), (1,), (1, 2), (4, 4), (3, 3, 3), (9, 9)]:
        total = sum(math.exp(lm.log_prob(context, token)) for token in range(1, 5))
        assert total == pytest.approx(1.0)
    assert lm.log_prob((1,), 2) > lm.log_prob((1,), 3)  # "1 2" seen, "1 3" not
    unigram = CharNgramLM(order=1, vocab_size=5, alpha=0.5).fit([(1, 1, 2)])
    assert math.exp(unigram.log_prob((2,), 1)) == pytest.approx((2 + 0.5) / (3 + 0.5 * 4))


def test_beam_search_batch_honours_lengths_and_pads_like_greedy() -> None:
    rng = np.random.default_rng(3)
    log_probs = _random_log_probs(rng, frames=6 * 3, vocab=4).reshape(3, 6, 4)
    lengths = np.array([6, 2, 0])
    tokens, out_lengths = beam_search_batch(log_probs, lengths, beam_width=4)
    assert tokens.shape == (3, 6) and tokens.dtype == np.int32
    for row, length in enumerate(lengths):
        best, _ = ctc_prefix_beam_search(log_probs[row, :length], beam_width=4)[0]
        assert out_lengths[row] == len(best)
        assert tuple(tokens[row, : len(best)].tolist()) == best
        np.testing.assert_array_equal(tokens[row, len(best) :], 0)
    assert out_lengths[2] == 0


def test_beam_holds_only_reachable_prefixes() -> None:
    with np.errstate(divide="ignore"):
        one_hot_log_probs = np.log(np.eye(3)[[1, 0, 1, 2]])  # a single path, probability 1
    assert ctc_prefix_beam_search(one_hot_log_probs, beam_width=4) == [((1, 1, 2), 0.0)]


# Word LM tests: ids 1 = space, 2.. = letters a, b, c, d.
SPACE = 1
LETTERS = "abcd"
LEXICON_TRAIN = ("ab cd", "ab ab", "cd", "a ab cd", "dab a")


def _spell(text: str) -> tuple[int, ...]:
    return tuple(SPACE if ch == " " else 2 + LETTERS.index(ch) for ch in text)


def _witten_bell_log_prob(sentences: list[list[str]], order: int, words: list[str]) -> float:
    """log P(words + </s>) under interpolated Witten-Bell over word histories, computed at the
    word level (no spelling), as a reference for `LexiconWordLM`."""
    counts: dict[tuple, dict] = {}
    for sentence in sentences:
        padded = ["<s>"] * (order - 1) + sentence + ["</s>"]
        for end in range(order - 1, len(padded)):
            for size in range(order):
                followers = counts.setdefault(tuple(padded[end - size : end]), {})
                followers[padded[end]] = followers.get(padded[end], 0) + 1
    lexicon = {w for sentence in sentences for w in sentence}

    def prob(history: tuple, word: str) -> float:
        p = 1.0 / (len(lexicon) + 1)
        for size in range(order):
            followers = counts.get(history[len(history) - size :])
            if followers:
                total, types = sum(followers.values()), len(followers)
                p = (followers.get(word, 0) + types * p) / (total + types)
        return p

    padded = ["<s>"] * (order - 1) + words + ["</s>"]
    return sum(
        math.log(prob(tuple(padded[end - order + 1 : end]), padded[end]))
        for end in range(order - 1, len(padded))
    )


def _spelled_log_prob(lm: LexiconWordLM, text: str) -> float:
    tokens = _spell(text)
    chars = sum(lm.log_prob(tokens[:i], token) for i, token in enumerate(tokens))
    return chars + lm.end_log_prob(tokens)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lexicon_word_lm_spells_out_the_witten_bell_word_lm_exactly(order: int) -> None:
    lm = LexiconWordLM(order, SPACE).fit(_spell(t) for t in LEXICON_TRAIN)
    sentences = [t.split() for t in LEXICON_TRAIN]
    for text in ("ab cd", "cd ab a", "dab", "a a a", "cd dab ab cd"):
        expected = _witten_bell_log_prob(sentences, order, text.split())
        assert _spelled_log_prob(lm, text) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lexicon_word_lm_is_normalised_per_character(order: int) -> None:
    lm = LexiconWordLM(order, SPACE).fit(_spell(t) for t in LEXICON_TRAIN)
    tokens = range(1, 2 + len(LETTERS))
    for text in ("", "ab ", "a ab ", "cd dab "):  # word boundaries: next letter or the end
        context = _spell(text)
        total = sum(math.exp(lm.log_prob(context, t)) for t in tokens)
        assert total + math.exp(lm.end_log_prob(context)) == pytest.approx(1.0)
    for text in ("a", "ab", "ab c", "d", "da"):  # inside a word: next letter or the space
        context = _spell(text)
        assert sum(math.exp(lm.log_prob(context, t)) for t in tokens) == pytest.approx(1.0)


def test_lexicon_word_lm_forbids_what_spells_no_training_word() -> None:
    lm = LexiconWordLM(2, SPACE).fit(_spell(t) for t in LEXICON_TRAIN)
    assert lm.log_prob(_spell("a"), _spell("c")[0]) == -math.inf  # no word starts "ac"
    assert lm.log_prob(_spell("da"), SPACE) == -math.inf  # "da" is only a prefix of "dab"
    assert lm.log_prob((), SPACE) == -math.inf and lm.log_prob(_spell("ab "), SPACE) == -math.inf
    assert lm.end_log_prob(_spell("ab d")) == -math.inf
    assert lm.log_prob(_spell("bb "), _spell("a")[0]) == -math.inf  # after an unknown word


def _frames(*rows: dict[str, float]) -> np.ndarray:
    """Per-frame log-probabilities from {symbol: prob} rows (symbol '-' is the blank); the rest
    of each frame's mass is spread evenly."""
    symbols = "-" + " " + LETTERS
    out = np.zeros((len(rows), len(symbols)))
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (len(symbols) - len(row))
        out[t] = [row.get(symbol, rest) for symbol in symbols]
    return np.log(out)


def test_lexicon_decoding_turns_a_misspelling_into_the_training_word() -> None:
    # The acoustics prefer "ac" (0.5 against 0.4 on the second frame); "ac" is no word, "ab" is.
    log_probs = _frames({"a": 0.9}, {"c": 0.5, "b": 0.4}, {"-": 0.9})
    assert ctc_prefix_beam_search(log_probs, space_id=SPACE)[0][0] == _spell("ac")
    lm = LexiconWordLM(2, SPACE).fit(_spell(t) for t in LEXICON_TRAIN)
    best = ctc_prefix_beam_search(log_probs, lm=lm, lm_weight=0.5, space_id=SPACE)[0][0]
    assert best == _spell("ab")


def test_a_beam_that_stops_inside_a_word_drops_the_unfinished_word() -> None:
    # The frames spell "a da" and stop: "da" only begins "dab", so no surviving beam can end.
    log_probs = _frames({"a": 0.9}, {" ": 0.9}, {"d": 0.9}, {"a": 0.9}, {"-": 0.9})
    lm = LexiconWordLM(2, SPACE).fit(_spell(t) for t in LEXICON_TRAIN)
    unended = ctc_prefix_beam_search(log_probs, beam_width=1, lm=lm, space_id=None)
    assert unended[0][0] == _spell("a da")  # no word boundaries: nothing to cut back to
    results = ctc_prefix_beam_search(log_probs, beam_width=1, lm=lm, lm_weight=0.5, space_id=SPACE)
    assert results[0][0] == _spell("a") and results[0][1] > -math.inf
    assert all(lm.end_log_prob(labelling) > -math.inf for labelling, _ in results)


def test_word_lm_scores_with_the_end_of_sentence_in_a_wide_beam() -> None:
    rng = np.random.default_rng(5)
    log_probs = _random_log_probs(rng, frames=4, vocab=2 + len(LETTERS))
    lm = LexiconWordLM(2, SPACE).fit(_spell(t) for t in LEXICON_TRAIN)
    results = ctc_prefix_beam_search(
        log_probs, beam_width=10_000, lm=lm, lm_weight=0.6, word_bonus=0.2, space_id=SPACE
    )
    exact = _labelling_log_probs(log_probs)
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    ended = [(labelling, score) for labelling, score in results if score > -math.inf]
    assert ended  # e.g. "a", "ab", "cd" fit in 4 frames
    for labelling, score in ended:
        text = "".join(" " if t == SPACE else LETTERS[t - 2] for t in labelling)
        words = len(text.split())
        expected = exact[labelling] + 0.6 * _spelled_log_prob(lm, text) + 0.2 * words
        assert score == pytest.approx(expected)


def test_token_pruning_skips_unlikely_labels_but_keeps_each_frames_best() -> None:
    rng = np.random.default_rng(7)
    log_probs = _random_log_probs(rng, frames=5, vocab=4)
    # A threshold below every log-probability prunes nothing.
    assert ctc_prefix_beam_search(log_probs, token_min_log_prob=-1e9) == ctc_prefix_beam_search(
        log_probs
    )
    # Above every log-probability: only each frame's likeliest label extends, so with a wide
    # beam the labellings are exactly the collapsed subsequences of the per-frame argmax path.
    results = ctc_prefix_beam_search(log_probs, beam_width=1000, token_min_log_prob=0.5)
    best_labels = log_probs[:, 1:].argmax(axis=1) + 1
    for labelling, _ in results:
        assert set(labelling) <= set(best_labels.tolist())
    greedy = _collapse(tuple(log_probs.argmax(axis=1).tolist()))
    assert greedy in {labelling for labelling, _ in results}
