"""Decoding CTC outputs: greedy (best path) on device, prefix beam search with an optional
character n-gram LM or lexicon-constrained word n-gram LM on the host.

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
import dataclasses
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
    """What prefix beam search needs of an LM: `log P(token | context)` (natural log; `-inf`
    forbids the token). It may also have `end_log_prob(context)`, the log-probability of the
    transcript ending after `context`, for the final ranking."""

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


_END = -2  # the end-of-sentence word id of `LexiconWordLM`
# `LexiconWordLM`'s reading of an emitted context: (word-id history, partial word's characters).
_WordState = tuple[tuple[int, ...], tuple[int, ...]]


@dataclasses.dataclass
class _HistoryCounts:
    """Counts of the words that followed one word history (Witten-Bell needs the total and
    the number of distinct followers) and, per spelling prefix, of those starting with it."""

    followers: collections.Counter[int]
    prefix_counts: collections.Counter[tuple[int, ...]]
    total: int
    types: int


class LexiconWordLM:
    """Word n-gram LM over a closed lexicon, spelled out character by character so that prefix
    beam search can fuse it like a character LM.

    Words are the `space_id`-separated runs of the training transcripts. `P(w | h)` over the last
    `order - 1` words is interpolated Witten-Bell (Witten & Bell 1991):
    `P(w | h) = (count(h, w) + types(h) * P(w | h')) / (count(h) + types(h))`, with `types(h)`
    the distinct words seen after `h`, `h'` the shorter history, and the recursion ending in the
    uniform distribution over the lexicon and the end of sentence. It has no parameter to tune.

    Spelling: with `M_h(q)` the summed `P(w | h)` of the lexicon words starting with characters
    `q`, a word's first character `c` gets `M_h(c)`, a later one `M_h(q + c) / M_h(q)`, and the
    space that closes `q` gets `P(q | h) / M_h(q)`; so a word's characters and its space multiply
    to `P(w | h)`, and with `end_log_prob` (closing the last word, then end of sentence) a
    transcript scores exactly its word-LM log-probability. A character that spells no lexicon
    word gets probability 0: the decoder then emits only words seen in training, which is what
    a lexicon decoder (Kaldi's, flashlight's) does; use `CharNgramLM` for open vocabularies.

    Written here rather than taken from flashlight-text's lexicon decoder or pyctcdecode: both
    score with KenLM models (a C++ build and an ARPA file to train and ship), while this one is
    fitted from the training transcripts in memory and plugs into `ctc_prefix_beam_search` like
    any character LM.
    """

    def __init__(self, order: int, space_id: int) -> None:
        if order < 1:
            raise ValueError(f"need order >= 1, got {order}")
        self.order = order
        self.space_id = space_id
        self.words: list[tuple[int, ...]] = []
        self._word_ids: dict[tuple[int, ...], int] = {}
        self._prefix_words: collections.Counter[tuple[int, ...]] = collections.Counter()
        self._tables: dict[tuple[int, ...], _HistoryCounts] = {}
        self._mass_cache: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        self._state_cache: dict[tuple[int, ...], _WordState | None] = {}

    def _split_words(self, sequence: Sequence[int]) -> list[tuple[int, ...]]:
        words, current = [], []
        for token in sequence:
            if token == self.space_id:
                if current:
                    words.append(tuple(current))
                current = []
            else:
                current.append(int(token))
        return words + ([tuple(current)] if current else [])

    def fit(self, sequences: Iterable[Sequence[int]]) -> "LexiconWordLM":
        """Counts the word n-grams of token-id sequences (the lexicon is their words); returns
        self."""
        counts: dict[tuple[int, ...], collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )
        for sequence in sequences:
            ids = []
            for word in self._split_words(sequence):
                if word not in self._word_ids:
                    self._word_ids[word] = len(self.words)
                    self.words.append(word)
                    for end in range(1, len(word) + 1):
                        self._prefix_words[word[:end]] += 1
                ids.append(self._word_ids[word])
            padded = (_BOS,) * (self.order - 1) + tuple(ids) + (_END,)
            for end in range(self.order - 1, len(padded)):
                for size in range(self.order):
                    counts[padded[end - size : end]][padded[end]] += 1
        for history, followers in counts.items():
            prefix_counts: collections.Counter[tuple[int, ...]] = collections.Counter()
            for word_id, count in followers.items():
                if word_id != _END:
                    spelling = self.words[word_id]
                    for end in range(1, len(spelling) + 1):
                        prefix_counts[spelling[:end]] += count
            total = followers.total()
            self._tables[history] = _HistoryCounts(followers, prefix_counts, total, len(followers))
        self._mass_cache.clear()
        self._state_cache.clear()
        return self

    def _interpolate(self, history: tuple[int, ...], base: float, count_of) -> float:
        """Witten-Bell recursion from the uniform `base` through ever longer suffixes of
        `history`; `count_of(table)` is the count the level adds."""
        prob = base
        for size in range(self.order):
            table = self._tables.get(history[len(history) - size :])
            if table is not None:
                prob = (count_of(table) + table.types * prob) / (table.total + table.types)
        return prob

    def _word_prob(self, history: tuple[int, ...], word_id: int) -> float:
        base = 1.0 / (len(self.words) + 1)
        return self._interpolate(history, base, lambda table: table.followers[word_id])

    def _prefix_mass(self, history: tuple[int, ...], prefix: tuple[int, ...]) -> float:
        """`M_h(prefix)`: the summed probability of the lexicon words starting with `prefix`."""
        key = (history, prefix)
        if key not in self._mass_cache:
            base = self._prefix_words[prefix] / (len(self.words) + 1)
            self._mass_cache[key] = self._interpolate(
                history, base, lambda table: table.prefix_counts[prefix]
            )
        return self._mass_cache[key]

    def _state(self, context: tuple[int, ...]) -> _WordState | None:
        """`(word history, partial word)` of an emitted context; None when a finished word is
        not in the lexicon."""
        if context not in self._state_cache:
            words = self._split_words(context)
            partial = () if not context or context[-1] == self.space_id else words.pop()
            ids = [self._word_ids.get(word) for word in words]
            if any(word_id is None for word_id in ids):
                self._state_cache[context] = None
            else:
                history = ((_BOS,) * (self.order - 1) + tuple(ids))[len(ids) :]
                self._state_cache[context] = (history, partial)
        return self._state_cache[context]

    def log_prob(self, context: tuple[int, ...], token: int) -> float:
        """Natural log of `P(token | context)` (see the class docstring); `-inf` off the
        lexicon."""
        state = self._state(context)
        if state is None:
            return -math.inf
        history, partial = state
        if token == self.space_id:
            word_id = self._word_ids.get(partial)
            if word_id is None:
                return -math.inf
            return math.log(self._word_prob(history, word_id) / self._prefix_mass(history, partial))
        mass = self._prefix_mass(history, partial + (int(token),))
        if mass <= 0.0:
            return -math.inf
        return math.log(mass / (self._prefix_mass(history, partial) if partial else 1.0))

    def end_log_prob(self, context: tuple[int, ...]) -> float:
        """Natural log of ending the transcript after `context`: closing its last word (which
        must be a lexicon word), then the end of sentence."""
        state = self._state(context)
        if state is None:
            return -math.inf
        history, partial = state
        score = 0.0
        if partial:
            score = self.log_prob(context, self.space_id)
            if score == -math.inf:
                return score
            history = (history + (self._word_ids[partial],))[1:] if self.order > 1 else ()
        return score + math.log(self._word_prob(history, _END))


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
    token_min_log_prob: float | None = None,
) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search of one utterance, on the host.

    Per prefix it keeps `log p_blank` and `log p_nonblank`, the summed probability of the
    alignments so far that produce the prefix and end in a blank / in its last label. A frame
    extends a prefix by a blank (same prefix), by its last label (merged into it, unless a blank
    came between) or by a new label. With `lm`, each new label adds
    `lm_weight * lm.log_prob(prefix, label)` and each new word adds `word_bonus` (shallow fusion,
    Hannun et al. 2014): the score is `log P_ctc + lm_weight * log P_lm + word_bonus * words`.
    An LM with an `end_log_prob(prefix)` method (`LexiconWordLM`) also scores ending the
    transcript after the last frame, and the final beams are re-ranked with it; when every
    beam stops inside a word, its unfinished last word is dropped (a lexicon LM's transcripts
    hold only lexicon words).
    A word starts at a label that is not `space_id` and follows the start or a `space_id`; with
    `space_id=None` every label counts as a word. The `beam_width` best prefixes survive a frame.
    With `token_min_log_prob`, a frame extends prefixes only by the labels at least that likely
    and its most likely label (pyctcdecode's `token_min_logp`): CTC frames are mostly blank, so
    this skips most of the work; `None` tries every label.

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
        candidates = labels
        if token_min_log_prob is not None:
            top = max(labels, key=frame.__getitem__)
            candidates = [c for c in labels if frame[c] >= token_min_log_prob or c == top]
        next_beams: dict[tuple[int, ...], list[float]] = collections.defaultdict(
            lambda: [-math.inf, -math.inf]
        )
        for prefix, (blank, nonblank) in beams.items():
            total = _logaddexp(blank, nonblank)
            entry = next_beams[prefix]
            entry[0] = _logaddexp(entry[0], total + frame[blank_id])
            if prefix:
                entry[1] = _logaddexp(entry[1], nonblank + frame[prefix[-1]])
            for label in candidates:
                # A repeated label needs a blank between, so only the blank-ending mass extends.
                source = blank if prefix and label == prefix[-1] else total
                extended = next_beams[prefix + (label,)]
                score = source + frame[label] + extension_score(prefix, label)
                extended[1] = _logaddexp(extended[1], score)
        scored = [(-_logaddexp(*scores), prefix) for prefix, scores in next_beams.items()]
        # Unreachable prefixes (probability 0) never take a place in the beam.
        kept = sorted(item for item in scored if item[0] < math.inf)[:beam_width]
        beams = {prefix: tuple(next_beams[prefix]) for _, prefix in kept}
    results = [(prefix, _logaddexp(*scores)) for prefix, scores in beams.items()]
    end_log_prob = getattr(lm, "end_log_prob", None)
    if end_log_prob is None:
        return results
    ended = [(prefix, score + lm_weight * end_log_prob(prefix)) for prefix, score in results]
    ended.sort(key=lambda item: -item[1])
    if ended and ended[0][1] > -math.inf:
        return ended
    if space_id is None:  # no word boundary to cut back to: keep the unended order
        return results
    # No surviving prefix can end: each stops inside a word. Drop that unfinished word, so a
    # lexicon LM still writes only its words (the same prefix twice keeps the better score).
    trimmed: dict[tuple[int, ...], float] = {}
    for prefix, score in results:
        spaces = [index for index, label in enumerate(prefix) if label == space_id]
        cut = prefix[: spaces[-1]] if spaces else ()
        trimmed[cut] = max(trimmed.get(cut, -math.inf), score + lm_weight * end_log_prob(cut))
    return sorted(trimmed.items(), key=lambda item: -item[1])


def beam_search_batch(
    log_probs: np.ndarray | jax.Array,
    lengths: np.ndarray | jax.Array,
    beam_width: int = 8,
    blank_id: int = 0,
    lm: LanguageModel | None = None,
    lm_weight: float = 0.5,
    word_bonus: float = 0.0,
    space_id: int | None = None,
    token_min_log_prob: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`ctc_prefix_beam_search` on each row of `log_probs [B, T, V]` (its first `lengths[b]`
    frames); returns the best labellings as `(tokens [B, T] int32 padded with 0, lengths [B])`,
    like `ctc_greedy_decode`."""
    log_probs = np.asarray(log_probs)
    tokens = np.zeros(log_probs.shape[:2], np.int32)
    label_lengths = np.zeros(log_probs.shape[0], np.int32)
    for row, (row_log_probs, length) in enumerate(zip(log_probs, np.asarray(lengths), strict=True)):
        best, _ = ctc_prefix_beam_search(
            row_log_probs[: int(length)],
            beam_width,
            blank_id,
            lm,
            lm_weight,
            word_bonus,
            space_id,
            token_min_log_prob,
        )[0]
        tokens[row, : len(best)] = best
        label_lengths[row] = len(best)
    return tokens, label_lengths
