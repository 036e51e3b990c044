"""Tests for jaxdl.models.ctc_decoding: greedy decoding, prefix beam search (against brute-force
enumeration of alignments) and the character n-gram LM."""

import itertools
import math

import jax
import numpy as np
import pytest

from jaxdl.models.ctc_decoding import (
    CharNgramLM,
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
