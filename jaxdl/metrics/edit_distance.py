"""Exact edit distances and WER/CER error counts on device, for jitted speech-recognition eval.

An eval step returns per-example integer counts (`error_counts`): edits and reference lengths,
in characters and in words. Summing them over batches and hosts and dividing gives the corpus
WER/CER exactly, without moving decoded text to the host.

The counts equal `jiwer` 4's on the decoded strings (token `space_id` decoded as " "), with its
default transforms:
- `jiwer.process_characters` (`cer_default`): strip leading/trailing whitespace, then compare
  characters; interior spaces, repeated ones included, are characters. Here: strip `space_id`
  at both ends, keep the rest.
- `jiwer.process_words` (`wer_default`): collapse runs of whitespace, strip, split at " ". Here:
  words are the maximal runs of non-space tokens, as `str.split()` gives.
The only difference: jiwer strips and splits at any whitespace, here only `space_id` is one, so
the counts differ from jiwer's only if another token decodes to whitespace (a tab, say). Empty
references are fine (all hypothesis words or characters count as insertions, as in jiwer 4).

Words are compared exactly, character by character (`_word_matches`), not by hashed ids.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Primes for `words_from_chars`' two polynomial hashes; `_P1 * _P2 < 2**31`, so the combined id
# fits int32, and each hash's products of two residues fit uint32.
_P1, _P2 = 32749, 65521
_BASE1, _BASE2 = 20011, 40009


def _distance(matches: jax.Array, hyp_length: jax.Array, ref_length: jax.Array) -> jax.Array:
    """Levenshtein distance of one pair from its `[H, R]` token-equality matrix.

    Scans hypothesis positions; each DP row comes from the previous one without an inner loop:
    with `cand[j] = min(prev[j] + 1, prev[j - 1] + cost[j])` (deletion, substitution/match), the
    row is `row[j] = min_{k <= j} cand[k] + (j - k) = j + cummin(cand - k)[j]` (insertions).
    Row `i` and column `j` depend only on the first `i` hypothesis and `j` reference tokens, so
    freezing the row after `hyp_length` steps and reading column `ref_length` ignores padding.
    """
    columns = jnp.arange(matches.shape[1] + 1, dtype=jnp.int32)

    def step(row: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        i, match_row = inputs
        substitute = row[:-1] + jnp.where(match_row, 0, 1)
        candidates = jnp.concatenate([i[None], jnp.minimum(row[1:] + 1, substitute)])
        new_row = columns + lax.cummin(candidates - columns)
        return jnp.where(i <= hyp_length, new_row, row), None

    steps = jnp.arange(1, matches.shape[0] + 1, dtype=jnp.int32)
    row, _ = lax.scan(step, columns, (steps, matches))
    return row[ref_length]


def levenshtein(
    hyp: jax.Array, hyp_lengths: jax.Array, ref: jax.Array, ref_lengths: jax.Array
) -> jax.Array:
    """Exact edit distances (unit substitution, insertion, deletion costs); jit-able.

    Args:
      hyp: int `[B, H]` hypothesis token ids, right-padded with anything.
      hyp_lengths: int `[B]` real hypothesis lengths, in `[0, H]`.
      ref: int `[B, R]` reference token ids, right-padded with anything.
      ref_lengths: int `[B]` real reference lengths, in `[0, R]`.

    Returns:
      int32 `[B]` distances between `hyp[b, :hyp_lengths[b]]` and `ref[b, :ref_lengths[b]]`.
      Work is O(H * R) per row in H sequential steps.
    """
    matches = hyp[:, :, None] == ref[:, None, :]
    return jax.vmap(_distance)(
        matches, jnp.asarray(hyp_lengths, jnp.int32), jnp.asarray(ref_lengths, jnp.int32)
    )


def _word_spans(
    tokens: jax.Array, length: jax.Array, space_id: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Words of one sequence: the maximal runs of non-space tokens within `length`.

    Returns `(starts [W], word_lengths [W], num_words, word_index [L])` with `W = ceil(L / 2)`
    (words need a separating space); `word_index` is each token's word, `W` for non-word tokens.
    Slots past `num_words` hold zeros.
    """
    size = tokens.shape[0]
    max_words = (size + 1) // 2
    positions = jnp.arange(size, dtype=jnp.int32)
    in_word = (tokens != space_id) & (positions < length)
    word_start = in_word & ~jnp.concatenate([jnp.zeros(1, bool), in_word[:-1]])
    word_index = jnp.where(in_word, jnp.cumsum(word_start, dtype=jnp.int32) - 1, max_words)
    empty = jnp.zeros(max_words, jnp.int32)
    starts = empty.at[jnp.where(word_start, word_index, max_words)].set(positions, mode="drop")
    word_lengths = empty.at[word_index].add(1, mode="drop")
    return starts, word_lengths, word_start.sum(dtype=jnp.int32), word_index


def _strip(tokens: jax.Array, length: jax.Array, space_id: int) -> tuple[jax.Array, jax.Array]:
    """Drop leading and trailing `space_id` tokens (as `str.strip()`); returns `(tokens, length)`
    with the kept tokens shifted to the left."""
    size = tokens.shape[0]
    positions = jnp.arange(size, dtype=jnp.int32)
    is_text = (tokens != space_id) & (positions < length)
    first = jnp.min(jnp.where(is_text, positions, size), initial=size)
    end = jnp.max(jnp.where(is_text, positions + 1, 0), initial=0)
    return tokens[jnp.minimum(positions + first, size - 1)], jnp.maximum(end - first, 0)


def _match_runs(matches: jax.Array) -> jax.Array:
    """`runs[p, q]`: how many consecutive `matches[p + k, q + k]` (k = 0, 1, ...) hold.

    Computed in parallel by skewing diagonals into columns (`d = q - p + H`) and taking a reverse
    running minimum of the first mismatch row along each.
    """
    size_h, size_r = matches.shape
    rows = jnp.arange(size_h, dtype=jnp.int32)[:, None]
    columns = jnp.arange(size_h + size_r, dtype=jnp.int32)[None, :] + rows - size_h
    inside = (columns >= 0) & (columns < size_r)
    skewed = inside & matches[rows, jnp.clip(columns, 0, size_r - 1)]
    stop = lax.cummin(jnp.where(skewed, size_h, rows), axis=0, reverse=True)
    diagonal = jnp.arange(size_r, dtype=jnp.int32)[None, :] - rows + size_h
    return jnp.take_along_axis(stop, diagonal, axis=1) - rows


def _word_matches(
    matches: jax.Array,
    hyp_words: tuple[jax.Array, jax.Array],
    ref_words: tuple[jax.Array, jax.Array],
) -> jax.Array:
    """Exact `[Wh, Wr]` word equality from the character equality matrix and `(starts, lengths)`:
    equal lengths and a run of matching characters from the two starts at least that long."""
    (hyp_starts, hyp_lengths), (ref_starts, ref_lengths) = hyp_words, ref_words
    if matches.size == 0:
        return jnp.zeros((hyp_starts.size, ref_starts.size), bool)
    runs = _match_runs(matches)
    same_length = hyp_lengths[:, None] == ref_lengths[None, :]
    return same_length & (runs[hyp_starts[:, None], ref_starts[None, :]] >= hyp_lengths[:, None])


def _counts(
    hyp: jax.Array, hyp_length: jax.Array, ref: jax.Array, ref_length: jax.Array, space_id: int
) -> dict[str, jax.Array]:
    hyp, hyp_length = _strip(hyp, hyp_length, space_id)
    ref, ref_length = _strip(ref, ref_length, space_id)
    matches = hyp[:, None] == ref[None, :]
    # Stripping keeps the words, so the words' spans index the stripped tokens and `matches`.
    hyp_starts, hyp_word_lengths, hyp_words, _ = _word_spans(hyp, hyp_length, space_id)
    ref_starts, ref_word_lengths, ref_words, _ = _word_spans(ref, ref_length, space_id)
    word_matches = _word_matches(
        matches, (hyp_starts, hyp_word_lengths), (ref_starts, ref_word_lengths)
    )
    return {
        "char_errors": _distance(matches, hyp_length, ref_length),
        "ref_chars": ref_length,
        "word_errors": _distance(word_matches, hyp_words, ref_words),
        "ref_words": ref_words,
    }


def error_counts(
    hyp: jax.Array,
    hyp_lengths: jax.Array,
    ref: jax.Array,
    ref_lengths: jax.Array,
    space_id: int,
) -> dict[str, jax.Array]:
    """Per-example character and word error counts, equal to jiwer's; jit-able.

    Args:
      hyp: int `[B, H]` hypothesis character ids (e.g. from `ctc_greedy_decode`), right-padded.
      hyp_lengths: int `[B]` real hypothesis lengths.
      ref: int `[B, R]` reference character ids, right-padded.
      ref_lengths: int `[B]` real reference lengths.
      space_id: the id of the space character, which separates words.

    Returns:
      int32 `[B]` arrays: `char_errors` (character edit distance after stripping spaces at both
      ends), `ref_chars` (stripped reference length), `word_errors` (word edit distance) and
      `ref_words` (reference word count). Sum each over the eval set; then
      CER = sum(char_errors) / sum(ref_chars) and WER = sum(word_errors) / sum(ref_words), as
      `jiwer.cer` / `jiwer.wer` on the decoded strings (see the module docstring).
    """
    counts = functools.partial(_counts, space_id=space_id)
    return jax.vmap(counts)(
        hyp, jnp.asarray(hyp_lengths, jnp.int32), ref, jnp.asarray(ref_lengths, jnp.int32)
    )


def _powers(base: int, prime: int, size: int) -> np.ndarray:
    return np.array([pow(base, k, prime) for k in range(size)], np.uint32)


def _word_hash(
    tokens: jax.Array,
    starts: jax.Array,
    word_index: jax.Array,
    base: int,
    prime: int,
) -> jax.Array:
    """`sum_k (token_k + 1) * base**k mod prime` over each word's tokens, in uint32 (each
    product is below `prime**2 < 2**32`; the sum of at most L residues below `L * prime`)."""
    size = tokens.shape[0]
    offsets = jnp.arange(size, dtype=jnp.int32) - starts[jnp.minimum(word_index, starts.size - 1)]
    digits = (tokens.astype(jnp.uint32) + 1) % prime
    powers = jnp.asarray(_powers(base, prime, size))[jnp.clip(offsets, 0, size - 1)]
    terms = digits * powers % prime
    sums = jnp.zeros(starts.shape, jnp.uint32).at[word_index].add(terms, mode="drop")
    return sums % prime


def _word_ids(tokens: jax.Array, length: jax.Array, space_id: int) -> tuple[jax.Array, jax.Array]:
    starts, _, num_words, word_index = _word_spans(tokens, length, space_id)
    first = _word_hash(tokens, starts, word_index, _BASE1, _P1)
    second = _word_hash(tokens, starts, word_index, _BASE2, _P2)
    ids = (first * _P2 + second).astype(jnp.int32)
    return jnp.where(jnp.arange(starts.size) < num_words, ids, -1), num_words


def words_from_chars(
    tokens: jax.Array, lengths: jax.Array, space_id: int
) -> tuple[jax.Array, jax.Array]:
    """Split character sequences into words and give each word a hashed integer id; jit-able.

    Words are the maximal runs of non-`space_id` tokens (leading, trailing and repeated spaces
    make no empty words, like `str.split()`). A word's id combines two polynomial hashes of its
    characters, `sum_k (c_k + 1) * b**k mod p` for primes p = 32749 and 65521: equal words always
    get equal ids. Distinct words collide only if both hashes do. For a base drawn at random, two
    fixed distinct words of at most n characters (ids below 32748) collide with probability at
    most (n - 1)**2 / (32749 * 65521), about (n - 1)**2 * 4.7e-10; the bases here are fixed, so
    that is the heuristic rate for non-adversarial text. `error_counts` does not use these ids:
    it compares words exactly.

    Args:
      tokens: int `[B, L]` character ids, right-padded.
      lengths: int `[B]` real lengths.
      space_id: the id that separates words.

    Returns:
      `(word_ids, word_lengths)`: int32 `[B, W]` ids, `W = ceil(L / 2)` (the most words L
      characters hold), padded with -1, and int32 `[B]` word counts.
    """
    word_ids = functools.partial(_word_ids, space_id=space_id)
    return jax.vmap(word_ids)(tokens, jnp.asarray(lengths, jnp.int32))
