"""Masked-LM pre-training: BERT's masking rule, a loss over the selected tokens only, an encoder
that fine-tunes a classifier, and logits equal to 🤗 BertForMaskedLM's."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdl.data.records import ArraySource, DataSplits
from jaxdl.data.subword import SubwordTokenizer
from jaxdl.errors import ConfigError
from jaxdl.models import TransformerClassifier, TransformerMaskedLM
from jaxdl.tasks import MaskedLanguageModeling, build_task
from jaxdl.train.warm_start import flatten_paths

VOCAB, MASK_ID, PAD_ID, CLS_ID = 50, 3, 0, 2
DIMS = dict(num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=16)


def _task(**overrides) -> MaskedLanguageModeling:
    options = dict(
        max_len=16,
        vocab_size=VOCAB,
        mask_id=MASK_ID,
        pad_id=PAD_ID,
        special_ids=(CLS_ID,),
        first_regular_id=4,
    )
    return MaskedLanguageModeling(**{**options, **overrides})


def _tokens(rows=4000, length=16, seed=0) -> np.ndarray:
    """CLS, then regular tokens, then padding after a random length per row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, rows)
    real = np.arange(length)[None, :] < lengths[:, None]
    tokens = np.where(real, rng.integers(4, VOCAB, (rows, length)), PAD_ID)
    tokens[:, 0] = CLS_ID
    return tokens.astype(np.int32)


def test_masking_follows_berts_rule_and_never_touches_special_tokens():
    task, tokens = _task(), _tokens()
    batch = task.prepare_train_batch(jax.random.PRNGKey(0), {"tokens": jnp.asarray(tokens)})
    masked, selected = np.asarray(batch["mlm_inputs"]), np.asarray(batch["mlm_weights"]) > 0
    regular = tokens >= 4
    assert not selected[~regular].any()  # padding and CLS are never selected
    assert (masked[~selected] == tokens[~selected]).all()  # unselected tokens are kept
    assert abs(selected.sum() / regular.sum() - 0.15) < 0.01
    chosen, original = masked[selected], tokens[selected]
    to_mask = chosen == MASK_ID
    kept = chosen == original
    randomised = ~to_mask & ~kept
    # 80% mask, 10% random, 10% kept (a random draw equal to the original counts as kept:
    # 1 in 46 of the random 10%).
    assert abs(to_mask.mean() - 0.8) < 0.02
    assert abs(randomised.mean() - 0.1 * 45 / 46) < 0.015
    assert abs(kept.mean() - (0.1 + 0.1 / 46)) < 0.015
    assert (chosen[randomised] >= 4).all() and (chosen[randomised] < VOCAB).all()
    # A new step key draws new masks.
    again = task.prepare_train_batch(jax.random.PRNGKey(1), {"tokens": jnp.asarray(tokens)})
    assert (np.asarray(again["mlm_weights"]) != selected).any()


def _fake_forward(logits):
    return lambda tokens, padding_mask: logits


def test_loss_counts_the_selected_tokens_only():
    task, tokens = _task(), _tokens(rows=8)
    batch = task.prepare_train_batch(jax.random.PRNGKey(0), {"tokens": jnp.asarray(tokens)})
    selected = np.asarray(batch["mlm_weights"]) > 0
    logits = np.random.default_rng(0).normal(size=(8, 16, VOCAB)).astype(np.float32)
    loss, _ = task.loss(_fake_forward(jnp.asarray(logits)), batch)
    # Reference: mean cross-entropy of the original token over the selected positions.
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), nll[selected].mean(), rtol=1e-5)
    assert float(task.loss_weight(batch)) == selected.sum()
    # Changing the logits of unselected positions changes nothing.
    other = np.where(
        selected[..., None], logits, logits + 5 * np.random.default_rng(1).normal(size=logits.shape)
    )
    again, _ = task.loss(_fake_forward(jnp.asarray(other, jnp.float32)), batch)
    np.testing.assert_allclose(float(again), float(loss), rtol=1e-6)


def test_evaluation_masks_each_example_by_its_content():
    """The same example scores the same wherever it sits: batch order and size do not matter."""
    task, tokens = _task(), _tokens(rows=6)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 16, VOCAB)), jnp.float32)

    def per_example(rows):
        forward = _fake_forward(logits[rows])
        batch = {"tokens": jnp.asarray(tokens[rows]), "mask": jnp.ones(len(rows))}
        return task.eval_sums(forward, batch)

    whole = per_example(np.arange(6))
    halves = [per_example(np.array([5, 3, 1])), per_example(np.array([4, 2, 0]))]
    for key in ("nll_sum", "tokens", "correct"):
        np.testing.assert_allclose(float(whole[key]), sum(float(h[key]) for h in halves), rtol=1e-5)
    assert float(whole["tokens"]) > 0
    # Padding examples (mask 0) count for nothing.
    batch = {"tokens": jnp.asarray(tokens), "mask": jnp.zeros(6)}
    assert float(task.eval_sums(_fake_forward(logits), batch)["tokens"]) == 0


def test_the_masked_lm_encoder_is_the_classifiers():
    """Every parameter a classifier shares with the MLM model has the same path and shape, so
    ``init.take`` of the encoder subtrees fine-tunes it; only heads differ."""
    shared = dict(vocab_size=VOCAB, **DIMS, embedding_norm=True, token_type_vocab=2)
    tokens = jnp.asarray(_tokens(rows=2))

    def shapes(model):
        variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, train=False))
        return {p: v.shape for p, v in flatten_paths(variables["params"]).items()}

    mlm = shapes(TransformerMaskedLM(**shared))
    classifier = shapes(TransformerClassifier(num_classes=2, **shared))
    common = set(mlm) & set(classifier)
    assert {p.split("/")[0] for p in common} == {
        "token_embed",
        "pos_embed",
        "type_embed",
        "embed_norm",
        "encoder",
    }
    assert all(mlm[p] == classifier[p] for p in common)
    assert {p.split("/")[0] for p in set(mlm) - common} == {"mlm_transform", "mlm_norm", "mlm_bias"}


def test_masked_lm_logits_ignore_padding():
    model = TransformerMaskedLM(vocab_size=VOCAB, **DIMS)
    tokens = jnp.asarray(_tokens(rows=3))
    params = model.init(jax.random.PRNGKey(0), tokens, train=False)
    logits = model.apply(params, tokens, train=False)
    assert logits.shape == (3, 16, VOCAB) and logits.dtype == jnp.float32
    # Changing what sits in padded positions (while still marking them padding) changes no
    # real position's logits.
    real = tokens != PAD_ID
    noise = jnp.where(real, tokens, 7)
    again = model.apply(params, noise, padding_mask=real, train=False)
    np.testing.assert_allclose(
        np.asarray(again)[np.asarray(real)], np.asarray(logits)[np.asarray(real)], atol=1e-5
    )


def _splits(tokenizer) -> DataSplits:
    tokens = _tokens(rows=8)
    source = ArraySource(tokens=tokens, labels=np.zeros(8, np.int32))
    info = {"tokenizer": tokenizer, "vocab_size": VOCAB, "pad_id": PAD_ID}
    return DataSplits(train=source, val=source, test=source, info=info)


def test_the_task_takes_the_mask_token_from_the_tokenizer():
    tokenizer = SubwordTokenizer.train(["好 的 东西", "不 好 的 东西"] * 5, model="wordpiece")
    config = ml_collections.ConfigDict({"task": {"name": "masked_lm", "mask_rate": 0.2}})
    task = build_task(config, _splits(tokenizer))
    assert task.mask_id == tokenizer.mask_id == 3 and task.mask_rate == 0.2
    assert task.special_ids == (0, 2, 3) and task.first_regular_id == 4

    class NoMask:
        vocab_size, pad_id, cls_id = VOCAB, 0, 2

    with pytest.raises(ConfigError, match="needs a tokenizer with a mask token"):
        build_task(config, _splits(NoMask()))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mask_id": VOCAB}, "outside the vocabulary"),
        ({"mask_rate": 0.0}, "mask_rate"),
        ({"replace_with_mask": 0.95, "replace_with_random": 0.1}, "sum to <= 1"),
    ],
)
def test_bad_masking_settings_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        _task(**overrides)


def test_bert_masked_lm_import_reproduces_the_transformers_logits(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxdl.models.hf_import import import_bert_mlm

    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=16,
    )
    model = transformers.BertForMaskedLM(config)
    with torch.no_grad():  # zero biases and unit scales must not hide a wrong mapping
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.eval().save_pretrained(tmp_path)
    tokens = _tokens(rows=3)
    mask = tokens != PAD_ID
    types = (np.arange(16)[None, :] >= 5).astype(np.int32) * mask
    with torch.no_grad():
        want = model(
            torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
        ).logits.numpy()
    kwargs, params = import_bert_mlm(tmp_path)
    got = TransformerMaskedLM(**kwargs).apply(
        {"params": params},
        jnp.asarray(tokens),
        jnp.asarray(mask),
        token_type_ids=jnp.asarray(types),
        train=False,
    )
    real = mask  # BERT's outputs at padded positions are not defined by the mask
    np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=1e-4, atol=1e-4)
