"""Decoding CTC outputs: greedy (best path) on device, prefix beam search with an optional
character n-gram LM on the host.

Conventions as in `jaxdl.models.speech`: id `blank_id` (0) is the CTC blank, the other ids are
output characters, and batches are right-padded with real lengths per row. Both decoders return
`(tokens [B, T] int32 padded with 0, lengths [B] int32)`, the input of
`jaxdl.metrics.edit_distance.error_counts`.

Greedy decoding collapses the most probable frame-wise path; that is not always the most
probable labelling, which sums over all its alignments. Prefix beam search (Hannun et al. 2014,
"First-Pass Large Vocabulary Continuous Speech Recognition using Bi-Directional Recurrent
DNNs") tracks, per labelling prefix, the probability of its alignments ending in a blank and in
a non-blank, so it scores labellings rather than paths, and can add an LM score (shallow
fusion).
"""

import collections
import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

_BOS = -1  # context padding before the first token of a sequence


def ctc_greedy_decode(
    logits: jax.Array, logit_lengths: jax.Array, blank_id: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Best-path decoding: per-frame argmax, merge repeats, drop blanks; jit-able.

    Args:
      logits: float `[B, T, V]` logits or log-probabilities (only the argmax matters).
      logit_lengths: int `[B]` real frames per row; later frames are ignored.
      blank_id: the CTC blank id.

    Returns:
      `(tokens, lengths)`: int32 `[B, T]` labels, left-aligned and padded with 0, and int32 `[B]`
      label counts.
    """
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    frames = jnp.arange(best.shape[1], dtype=jnp.int32)
    real = frames[None, :] < jnp.asarray(logit_lengths, jnp.int32)[:, None]
    previous = jnp.pad(best[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    keep = real & (best != blank_id) & (best != previous)
    # Each kept label goes to slot (number of kept labels before it); the rest fall off the end.
    slots = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, best.shape[1])
    rows = jnp.arange(best.shape[0])[:, None]
    tokens = jnp.zeros_like(best).at[rows, slots].set(best, mode="drop")
    return tokens, keep.sum(axis=1, dtype=jnp.int32)


class LanguageModel(Protocol):
    """What prefix beam search needs of an LM: `log P(token | context)` (natural log)."""

    def log_prob(self, context: tuple[int, ...], token: int) -> float: ...


class CharNgramLM:
    """Character n-gram LM with interpolated additive smoothing.

    `P(c | h) = (count(h, c) + alpha * N * P(c | h')) / (count(h) + alpha * N)`, where `h` is the
    last `order - 1` tokens (sequence starts padded with a begin marker), `h'` is `h` without its
    oldest token, and the recursion ends in the uniform distribution over the `N = vocab_size -
    1` non-blank ids. With `order=1` this is plain add-`alpha` smoothing; an unseen context falls
    back to the shorter one's distribution. Every level sums to one over the N ids. No
    end-of-sequence token is modelled.
    """

    def __init__(self, order: int, vocab_size: int, alpha: float = 0.1) -> None:
        if order < 1 or vocab_size < 2 or alpha <= 0:
            raise ValueError(
                f"need order >= 1, vocab_size >= 2, alpha > 0; got {order}, {vocab_size}, {alpha}"
            )
        self.order = order
        self.num_tokens = vocab_size - 1
        self.alpha = alpha
        self._counts: dict[tuple[int, ...], collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )

    def fit(self, sequences: Iterable[Sequence[int]]) -> "CharNgramLM":
        """Count the n-grams (and all shorter ones) of token-id sequences; returns self."""
        for sequence in sequences:
            padded = (_BOS,) * (self.order - 1) + tuple(int(token) for token in sequence)
            for end in range(self.order - 1, len(padded)):
                for size in range(self.order):
                    self._counts[padded[end - size : end]][padded[end]] += 1
        return self

    def log_prob(self, context: tuple[int, ...], token: int) -> float:
        """Natural log of `P(token | context)`; `context` is everything emitted so far."""
        history = ((_BOS,) * (self.order - 1) + tuple(context))[len(context) :]
        prob = 1.0 / self.num_tokens
        prior_mass = self.alpha * self.num_tokens
        for size in range(self.order):
            counts = self._counts.get(history[len(history) - size :])
            if counts is not None:
                prob = (counts[token] + prior_mass * prob) / (counts.total() + prior_mass)
        return math.log(prob)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf or b == -math.inf:
        return max(a, b)
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def ctc_prefix_beam_search(
    log_probs: np.ndarray,
    beam_width: int = 8,
    blank_id: int = 0,
    lm: LanguageModel | None = None,
    lm_weight: float = 0.5,
    word_bonus: float = 0.0,
    space_id: int | None = None,
) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search of one utterance, on the host.

    Per prefix it keeps `log p_blank` and `log p_nonblank`, the summed probability of the
    alignments so far that produce the prefix and end in a blank / in its last label. A frame
    extends a prefix by a blank (same prefix), by its last label (merged into it, unless a blank
    came between) or by a new label. With `lm`, each new label adds
    `lm_weight * lm.log_prob(prefix, label)` and each new word adds `word_bonus` (shallow fusion,
    Hannun et al. 2014): the score is `log P_ctc + lm_weight * log P_lm + word_bonus * words`.
    A word starts at a label that is not `space_id` and follows the start or a `space_id`; with
    `space_id=None` every label counts as a word. The `beam_width` best prefixes survive a frame.

    Args:
      log_probs: float `[T, V]` per-frame log-probabilities (e.g. `log_softmax` of the logits)
        of the real frames.

    Returns:
      Up to `beam_width` `(labels, score)` pairs, best first. Without an LM and with a beam wide
      enough to keep every prefix, the scores are the exact log-probabilities of the labellings.
    """
    log_probs = np.asarray(log_probs, np.float64)
    labels = [label for label in range(log_probs.shape[1]) if label != blank_id]

    def extension_score(prefix: tuple[int, ...], label: int) -> float:
        score = 0.0 if lm is None else lm_weight * lm.log_prob(prefix, label)
        new_word = space_id is None or (
            label != space_id and (not prefix or prefix[-1] == space_id)
        )
        return score + word_bonus if new_word else score

    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for frame in log_probs.tolist():
        next_beams: dict[tuple[int, ...], list[float]] = collections.defaultdict(
            lambda: [-math.inf, -math.inf]
        )
        for prefix, (blank, nonblank) in beams.items():
            total = _logaddexp(blank, nonblank)
            entry = next_beams[prefix]
            entry[0] = _logaddexp(entry[0], total + frame[blank_id])
            if prefix:
                entry[1] = _logaddexp(entry[1], nonblank + frame[prefix[-1]])
            for label in labels:
                # A repeated label needs a blank between, so only the blank-ending mass extends.
                source = blank if prefix and label == prefix[-1] else total
                extended = next_beams[prefix + (label,)]
                score = source + frame[label] + extension_score(prefix, label)
                extended[1] = _logaddexp(extended[1], score)
        scored = [(-_logaddexp(*scores), prefix) for prefix, scores in next_beams.items()]
        # Unreachable prefixes (probability 0) never take a place in the beam.
        kept = sorted(item for item in scored if item[0] < math.inf)[:beam_width]
        beams = {prefix: tuple(next_beams[prefix]) for _, prefix in kept}
    return [(prefix, _logaddexp(*scores)) for prefix, scores in beams.items()]


def beam_search_batch(
    log_probs: np.ndarray | jax.Array,
    lengths: np.ndarray | jax.Array,
    beam_width: int = 8,
    blank_id: int = 0,
    lm: LanguageModel | None = None,
    lm_weight: float = 0.5,
    word_bonus: float = 0.0,
    space_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`ctc_prefix_beam_search` on each row of `log_probs [B, T, V]` (its first `lengths[b]`
    frames); returns the best labellings as `(tokens [B, T] int32 padded with 0, lengths [B])`,
    like `ctc_greedy_decode`."""
    log_probs = np.asarray(log_probs)
    tokens = np.zeros(log_probs.shape[:2], np.int32)
    label_lengths = np.zeros(log_probs.shape[0], np.int32)
    for row, (row_log_probs, length) in enumerate(zip(log_probs, np.asarray(lengths), strict=True)):
        best, _ = ctc_prefix_beam_search(
            row_log_probs[: int(length)], beam_width, blank_id, lm, lm_weight, word_bonus, space_id
        )[0]
        tokens[row, : len(best)] = best
        label_lengths[row] = len(best)
    return tokens, label_lengths
