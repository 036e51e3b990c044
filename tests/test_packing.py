"""Packed language-model rows (several sequences per row, with segment ids and positions): each
packed sequence scores exactly as it does alone, attention never crosses sequences, and the
segment mask agrees with torch's scaled_dot_product_attention given the same boolean mask."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from jaxdl.layers import MultiHeadAttention, einsum_attention, segment_mask
from jaxdl.models import TransformerLM
from jaxdl.tasks import EXAMPLE_MASK, LanguageModeling

KEY = jax.random.key(0, impl="rbg")
SEQ_LEN = 15  # rows of SEQ_LEN + 1 tokens
VOCAB = 32
TINY = dict(vocab_size=VOCAB, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=16)
# Sequences of different lengths, packed by hand: row 0 is full, row 1 ends in padding.
LENGTHS = (5, 7, 4, 9, 3)
ROWS = ((0, 1, 2), (3, 4))


def _sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(1, VOCAB, size=n).astype(np.int32) for n in LENGTHS]


def _pack(sequences, rows) -> dict[str, np.ndarray]:
    """Rows [len(rows), SEQ_LEN + 1] of tokens, segment_ids (1, 2, ... per row), positions
    (restarting at 0) and loss_mask; everything 0 in the padding."""
    fields = {
        name: np.zeros((len(rows), SEQ_LEN + 1), dtype)
        for name, dtype in (
            ("tokens", np.int32),
            ("segment_ids", np.int32),
            ("positions", np.int32),
            ("loss_mask", np.float32),
        )
    }
    for r, members in enumerate(rows):
        start = 0
        for segment, index in enumerate(members, start=1):
            seq = sequences[index]
            span = slice(start, start + len(seq))
            fields["tokens"][r, span] = seq
            fields["segment_ids"][r, span] = segment
            fields["positions"][r, span] = np.arange(len(seq))
            fields["loss_mask"][r, span] = 1.0
            start += len(seq)
        assert start <= SEQ_LEN + 1
    return fields


def _alone(seq) -> dict[str, np.ndarray]:
    """One sequence in an unpacked row of its own, padded with 0 (and a mask column)."""
    tokens = np.zeros((1, SEQ_LEN + 1), np.int32)
    tokens[0, : len(seq)] = seq
    loss_mask = (np.arange(SEQ_LEN + 1) < len(seq)).astype(np.float32)[None]
    return {"tokens": tokens, "loss_mask": loss_mask, EXAMPLE_MASK: np.ones(1, np.float32)}


def _forward(model, params):
    return lambda *args, **kwargs: model.apply(params, *args, train=False, **kwargs)


@pytest.mark.parametrize(
    # CI time: learned positions run with `make test-slow`; sinusoidal ones stay.
    "position_embedding",
    [pytest.param("learned", marks=pytest.mark.slow), "sinusoidal"],
)
def test_packed_rows_score_every_sequence_exactly_as_it_scores_alone(position_embedding):
    # Dropout configured but off (train=False): evaluation is deterministic.
    model = TransformerLM(**TINY, dropout_rate=0.1, position_embedding=position_embedding)
    packed_task, alone_task = LanguageModeling(SEQ_LEN, packed=True), LanguageModeling(SEQ_LEN)
    args, kwargs = packed_task.init_inputs(2)
    params = jax.jit(lambda: model.init(KEY, *args, train=False, **kwargs))()
    sequences = _sequences()
    packed = {k: jnp.asarray(v) for k, v in _pack(sequences, ROWS).items()}

    @jax.jit
    def packed_nll(params, batch):
        args, kwargs = packed_task.model_inputs(batch)
        logits = _forward(model, params)(*args, **kwargs)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:])
        return nll * packed_task.target_weights(batch)

    alone_sums = jax.jit(lambda p, b: alone_task.eval_sums(_forward(model, p), b))
    packed_loss = jax.jit(lambda p, b: packed_task.loss(_forward(model, p), b)[0])

    nll = np.asarray(packed_nll(params, packed))
    segments = np.asarray(packed["segment_ids"])[:, :-1]
    alone_nll, alone_tokens = [], []
    for r, members in enumerate(ROWS):
        for segment, index in enumerate(members, start=1):
            sums = alone_sums(
                params, {k: jnp.asarray(v) for k, v in _alone(sequences[index]).items()}
            )
            assert int(sums["tokens"]) == LENGTHS[index] - 1
            alone_nll.append(float(sums["nll_sum"]))
            alone_tokens.append(float(sums["tokens"]))
            packed_sum = nll[r][segments[r] == segment].sum()
            np.testing.assert_allclose(packed_sum, alone_nll[-1], rtol=2e-5, atol=1e-5)

    # The batch loss is the token-weighted mean of the sequences' losses.
    expected = sum(alone_nll) / sum(alone_tokens)
    np.testing.assert_allclose(float(packed_loss(params, packed)), expected, rtol=2e-5)
    # The control: the same rows read as unpacked (no segments, positions 0..T-1) score otherwise.
    unpacked = {"tokens": packed["tokens"], "loss_mask": packed["loss_mask"]}
    unpacked_loss = alone_task.loss(_forward(model, params), unpacked)[0]
    assert abs(float(unpacked_loss) - expected) > 1e-3


def test_packed_targets_never_cross_into_the_next_sequence_or_padding():
    batch = _pack(_sequences(), ROWS)
    weights = np.asarray(LanguageModeling(SEQ_LEN, packed=True).target_weights(batch))
    # Row 0 holds lengths 5, 7, 4 (full); row 1 lengths 9, 3 then 4 padding positions. Input t
    # counts when tokens t and t+1 belong to the same sequence.
    expected = np.zeros((2, SEQ_LEN), np.float32)
    expected[0, [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 12, 13, 14]] = 1
    expected[1, [0, 1, 2, 3, 4, 5, 6, 7, 9, 10]] = 1
    np.testing.assert_array_equal(weights, expected)
    assert weights.sum() == sum(n - 1 for n in LENGTHS)


@pytest.fixture(scope="module")
def lm_and_params():
    model = TransformerLM(**TINY)
    tokens = jnp.zeros((2, SEQ_LEN), jnp.int32)
    return model, jax.jit(lambda: model.init(KEY, tokens, train=False))()


def test_segment_ids_stop_attention_between_sequences_of_one_row(lm_and_params):
    model, params = lm_and_params
    batch = _pack(_sequences(), ROWS)
    tokens = jnp.asarray(batch["tokens"][:, :-1])
    segments = jnp.asarray(batch["segment_ids"][:, :-1])
    positions = jnp.asarray(batch["positions"][:, :-1])

    @jax.jit
    def logits(tokens, segment_ids):
        return model.apply(
            params, tokens, segment_ids=segment_ids, positions=positions, train=False
        )

    # Change every token of sequence A (row 0, segment 1): the later sequences B and C in the
    # same row keep their logits, and the other row is untouched.
    a = np.asarray(segments[0]) == 1
    changed = tokens.at[0].set(jnp.where(a, (tokens[0] + 1) % VOCAB, tokens[0]))
    base, after = np.asarray(logits(tokens, segments)), np.asarray(logits(changed, segments))
    np.testing.assert_array_equal(after[0, ~a], base[0, ~a])
    np.testing.assert_array_equal(after[1], base[1])
    assert not np.allclose(after[0, a], base[0, a])
    # The control: one segment for the whole row lets the change reach B and C.
    one = jnp.where(segments > 0, 1, 0)
    leaked = np.asarray(logits(changed, one)) - np.asarray(logits(tokens, one))
    assert np.abs(leaked[0, ~a & (np.asarray(one[0]) > 0)]).max() > 1e-4
    # Padding queries (segment 0) see no key at all and still give finite logits.
    assert np.isfinite(base).all()


def test_default_call_equals_one_segment_per_row_at_positions_zero_to_t(lm_and_params):
    model, params = lm_and_params
    tokens = jax.random.randint(jax.random.key(2), (2, SEQ_LEN), 1, VOCAB)
    positions = jnp.broadcast_to(jnp.arange(SEQ_LEN), tokens.shape)
    explicit = model.apply(
        params, tokens, segment_ids=jnp.ones_like(tokens), positions=positions, train=False
    )
    np.testing.assert_allclose(
        explicit, model.apply(params, tokens, train=False), rtol=1e-6, atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# The segment mask against torch


def _torch(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array))


def _torch_attention(q, k, v, segments, causal):
    """torch SDPA with a boolean mask built in torch; q/k/v [B, T, N, H] NumPy -> [B, T, N, H]."""
    seg = _torch(segments)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
    if causal:
        length = seg.shape[1]
        allowed = allowed & torch.tril(torch.ones(length, length, dtype=torch.bool))
    q, k, v = (_torch(t).double().transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    return out.transpose(1, 2).numpy()


SEGMENTS = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0], [1, 1, 1, 1, 1, 1, 2, 2, 0, 0]], np.int32)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_segment_masked_attention_equals_torch_sdpa_with_the_same_boolean_mask(causal):
    q, k, v = np.random.default_rng(3).normal(size=(3, 2, 10, 4, 8)).astype(np.float32)
    mask = segment_mask(jnp.asarray(SEGMENTS))
    assert mask.shape == (2, 1, 10, 10) and mask.dtype == jnp.bool_
    expected = _torch_attention(q, k, v, SEGMENTS, causal)
    real = SEGMENTS > 0  # torch gives NaN on fully masked (padding) rows; jax stays finite
    fused = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    einsum = einsum_attention(q, k, v, mask, causal=causal, dropout=lambda p: p)
    for out in (fused, einsum):
        assert np.isfinite(np.asarray(out)).all()
        np.testing.assert_allclose(np.asarray(out)[real], expected[real], rtol=1e-5, atol=1e-5)


def test_multi_head_attention_with_segment_ids_equals_torch_on_its_projections():
    x = jax.random.normal(KEY, (2, 10, 16))
    segments = jnp.asarray(SEGMENTS)
    layer = MultiHeadAttention(num_heads=2, head_dim=8, causal=True)
    params = nn.unbox(layer.init(KEY, x, segment_ids=segments, train=False)["params"])
    out = np.asarray(layer.apply({"params": params}, x, segment_ids=segments, train=False))

    def project(name):
        p = params[name]
        return np.einsum("bte,end->btnd", np.asarray(x), p["kernel"]) + np.asarray(p["bias"])

    heads = _torch_attention(*(project(n) for n in ("query", "key", "value")), SEGMENTS, True)
    expected = np.einsum("btnd,nde->bte", heads, params["out"]["kernel"]) + params["out"]["bias"]
    real = SEGMENTS > 0
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[real], expected[real], rtol=1e-4, atol=1e-5)
