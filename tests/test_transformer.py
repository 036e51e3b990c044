"""Tests for the Transformer layers and models: masking, scan/remat equivalence, logical names,
GPT-2 sizes, the NNX bridge and sharded training."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from jaxdl.layers import (
    Embed,
    LearnedPositionEmbedding,
    MlpBlock,
    MultiHeadAttention,
    TransformerStack,
    einsum_attention,
    sinusoidal_positions,
)
from jaxdl.layers.embeddings import dimension_is_sharded, tied_projection
from jaxdl.models import TransformerClassifier, TransformerLM, get_model
from jaxdl.parallel import (
    DEFAULT_RULES,
    batch_sharding,
    logical_to_shardings,
    make_mesh,
    shard_batch,
)
from jaxdl.train import ShardedStep, create_sharded_train_state, make_train_step

# 'rbg' keys compile far faster than the default threefry on CPU, keeping these tests quick.
KEY = jax.random.key(0, impl="rbg")
TINY = dict(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=16)
TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 1, 64)
PARAM_AXES = {"layers", "embed", "heads", "kv", "mlp", "vocab", "pos", "classes"}


def _lm(**overrides) -> TransformerLM:
    return TransformerLM(**{**TINY, **overrides})


def _classifier(**overrides) -> TransformerClassifier:
    return TransformerClassifier(**{**TINY, "num_classes": 3, **overrides})


def _boxed_leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _num_params(params) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(params)))


def _init(model, tokens=TOKENS):
    return jax.jit(lambda t: model.init(KEY, t, train=False))(tokens)


# Jitted with the model static, so tests that share a model and input shape share one compile.
@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(model, variables, tokens):
    return model.apply(variables, tokens, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _train_logits(model, variables, tokens, dropout_key):
    return model.apply(variables, tokens, train=True, rngs={"dropout": dropout_key})


@pytest.fixture(scope="module")
def lm_variables():
    return _init(_lm())


@pytest.fixture(scope="module")
def classifier_variables():
    return _init(_classifier())


def test_bf16_lm_keeps_float32_params_and_logits_close_to_float32_run(lm_variables):
    model = _lm(dtype=jnp.bfloat16)
    logits = _eval_logits(model, lm_variables, TOKENS)
    reference = _eval_logits(_lm(), lm_variables, TOKENS)
    assert logits.shape == (2, 8, 64)
    assert logits.dtype == jnp.float32
    abstract = jax.eval_shape(lambda: model.init(KEY, TOKENS, train=False))
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
    # bf16 compute really happens (results differ) yet stays close to the f32 run.
    assert not np.array_equal(logits, reference)
    np.testing.assert_allclose(logits, reference, atol=0.1)


def test_causal_lm_logits_at_t_ignore_tokens_after_t(lm_variables):
    t = 3
    changed = TOKENS.at[:, t + 1 :].set((TOKENS[:, t + 1 :] + 7) % 64)
    before = _eval_logits(_lm(), lm_variables, TOKENS)
    after = _eval_logits(_lm(), lm_variables, changed)
    np.testing.assert_allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-5)
    assert not np.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-3)


SHORT = TOKENS[:, :5]
PADDED = jnp.pad(SHORT, ((0, 0), (0, 3)))  # pad_id 0 after the real tokens, same shape as TOKENS


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_output_ignores_trailing_padding(pooling, classifier_variables):
    model = _classifier(pooling=pooling)  # both poolings share the parameter layout
    logits = _eval_logits(model, classifier_variables, PADDED)
    assert logits.shape == (2, 3)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, _eval_logits(model, classifier_variables, SHORT), atol=1e-5)
    # Control: a real (non-pad) token does change the output.
    other = PADDED.at[:, 1].set((PADDED[:, 1] + 5) % 63 + 1)
    assert not np.allclose(_eval_logits(model, classifier_variables, other), logits, atol=1e-4)


@functools.partial(jax.jit, static_argnums=0)
def _masked_eval_logits(model, variables, tokens, padding_mask):
    return model.apply(variables, tokens, padding_mask, train=False)


def test_classifier_explicit_padding_mask_matches_the_derived_one(classifier_variables):
    model = _classifier()
    derived = _eval_logits(model, classifier_variables, PADDED)
    mask = PADDED != 0  # pad_id
    for explicit in (mask, mask.astype(jnp.int32)):  # bool or int, nonzero = real token
        np.testing.assert_allclose(
            _masked_eval_logits(model, classifier_variables, PADDED, explicit), derived, atol=1e-6
        )
    # Masking out a real token changes the output ...
    masked = mask.at[:, 1].set(False)
    masked_logits = _masked_eval_logits(model, classifier_variables, PADDED, masked)
    assert not np.allclose(masked_logits, derived, atol=1e-4)
    # ... as does marking the pad_id positions as real: the explicit mask, not pad_id, decides.
    all_real = jnp.ones_like(PADDED)
    assert not np.allclose(
        _masked_eval_logits(model, classifier_variables, PADDED, all_real), derived, atol=1e-4
    )
    with pytest.raises(ValueError, match="padding_mask must be shaped like tokens"):
        model.apply(classifier_variables, PADDED, mask[:, :4], train=False)
    with pytest.raises(TypeError, match="padding_mask must be bool or int"):
        model.apply(classifier_variables, PADDED, mask.astype(jnp.float32), train=False)


def _unstack_layers(params, num_layers: int):
    """Scanned params (leading 'layers' axis under <stack>/layers) -> unrolled layers_i."""
    params = nn.unbox(params)
    stack_name = "decoder" if "decoder" in params else "encoder"
    stack = dict(params[stack_name])
    scanned = stack.pop("layers")
    for i in range(num_layers):
        stack[f"layers_{i}"] = jax.tree.map(lambda leaf, i=i: leaf[i], scanned)
    return {**params, stack_name: stack}


@pytest.mark.parametrize(
    ("make", "variables_fixture", "tokens"),
    [(_lm, "lm_variables", TOKENS), (_classifier, "classifier_variables", PADDED)],
    ids=["lm", "classifier"],
)
def test_scanned_and_unrolled_stacks_agree_given_the_same_params(
    make, variables_fixture, tokens, request
):
    params = request.getfixturevalue(variables_fixture)["params"]
    scanned_model, unrolled_model = make(scan_layers=True), make(scan_layers=False)
    unrolled_shapes = jax.eval_shape(lambda: unrolled_model.init(KEY, tokens, train=False))
    assert _num_params(unrolled_shapes) == _num_params(params)
    unrolled = _unstack_layers(params, TINY["num_layers"])
    assert jax.tree.structure(unrolled) == jax.tree.structure(nn.unbox(unrolled_shapes["params"]))
    np.testing.assert_allclose(
        _eval_logits(unrolled_model, {"params": unrolled}, tokens),
        _eval_logits(scanned_model, {"params": params}, tokens),
        atol=1e-5,
    )


# Two packed sequences per row (lengths 3+5 and 6 then 2 padding positions).
SEGMENT_IDS = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0]], jnp.int32)
POSITIONS = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 0]], jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _packed_logits(model, variables, tokens):
    return model.apply(variables, tokens, segment_ids=SEGMENT_IDS, positions=POSITIONS, train=False)


def test_packed_inputs_reach_every_layer_with_scan_unrolled_and_remat(lm_variables):
    params = lm_variables["params"]
    packed = _packed_logits(_lm(), lm_variables, TOKENS)
    # Packing changes the result (the control), and padding positions stay finite.
    assert not np.allclose(packed, _eval_logits(_lm(), lm_variables, TOKENS), atol=1e-4)
    assert np.isfinite(packed).all()
    unrolled = {"params": _unstack_layers(params, TINY["num_layers"])}
    for model, variables in [
        (_lm(scan_layers=False), unrolled),
        (_lm(remat_policy="full"), lm_variables),
        (_lm(scan_layers=False, remat_policy="dots_saveable"), unrolled),
    ]:
        np.testing.assert_allclose(_packed_logits(model, variables, TOKENS), packed, atol=1e-5)


@pytest.mark.parametrize(
    "model",
    [
        _lm(),
        _lm(scan_layers=False, tie_embeddings=False),
        _lm(position_embedding="sinusoidal"),
        _classifier(),
        _classifier(scan_layers=False, remat_policy="full"),
    ],
    ids=["lm", "lm-unrolled-untied", "lm-sinusoidal", "classifier", "classifier-unrolled-remat"],
)
def test_every_param_is_boxed_with_rank_matching_names_the_rules_map(model):
    variables = jax.eval_shape(lambda: model.init(KEY, TOKENS, train=False))
    leaves = _boxed_leaves(variables["params"])
    assert leaves
    rule_names = {name for name, _ in DEFAULT_RULES}
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= PARAM_AXES & rule_names, leaf.names


def test_lm_layouts_have_the_expected_parameters():
    def params_of(model):
        return nn.unbox(jax.eval_shape(lambda: model.init(KEY, TOKENS, train=False))["params"])

    tied, untied = params_of(_lm()), params_of(_lm(tie_embeddings=False))
    assert "lm_head" not in tied
    assert untied["lm_head"]["kernel"].shape == (32, 64)
    assert _num_params(untied) - _num_params(tied) == 32 * 64
    assert "pos_embed" not in params_of(_lm(position_embedding="sinusoidal"))
    assert tied["decoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)


def _lm_loss(model, params, tokens):
    logits = model.apply({"params": params}, tokens, train=True, rngs={"dropout": KEY})
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


def _loss_and_grads(model, params):
    return jax.jit(jax.value_and_grad(lambda p: _lm_loss(model, p, TOKENS)))(params)


@functools.cache
def _no_remat_loss_and_grads():
    """(params, loss, grads) of a scanned dropout LM without remat, shared by the remat cases."""
    params = nn.unbox(_init(_lm())["params"])
    return params, *_loss_and_grads(_lm(dropout_rate=0.1), params)


# make test runs one policy; make test-slow all three.
@pytest.mark.parametrize(
    "policy",
    [
        "dots_saveable",
        pytest.param("full", marks=pytest.mark.slow),
        pytest.param("dots_with_no_batch_dims_saveable", marks=pytest.mark.slow),
    ],
)
def test_remat_policies_give_the_same_loss_and_grads_as_no_remat(policy):
    params, loss, grads = _no_remat_loss_and_grads()
    model = _lm(dropout_rate=0.1, remat_policy=policy)
    jaxpr = str(jax.make_jaxpr(lambda p: jax.grad(_lm_loss, argnums=1)(model, p, TOKENS))(params))
    assert "remat" in jaxpr  # the block really is rematerialised
    remat_loss, remat_grads = _loss_and_grads(model, params)
    # Dropout masks included: remat must replay exactly the same randomness.
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, grads
    )


# CI time (17 s each): `make test-slow`; remat policies and scan-vs-unrolled stay in make test.
@pytest.mark.slow
@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_stack_remat_gives_the_same_loss_and_grads_with_and_without_scan(scan_layers):
    x = jax.random.normal(KEY, (2, 6, 16))
    mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
    stack = TransformerStack(
        num_layers=2,
        num_heads=2,
        mlp_dim=32,
        causal=False,
        dropout_rate=0.1,
        scan_layers=scan_layers,
    )
    params = nn.unbox(jax.jit(lambda: stack.init(KEY, x, mask, train=False))()["params"])

    def loss(model, p):
        out = model.apply({"params": p}, x, mask, train=True, rngs={"dropout": KEY})
        return jnp.mean(out**2)

    base_loss, base_grads = jax.jit(jax.value_and_grad(functools.partial(loss, stack)))(params)
    remat = stack.clone(remat_policy="dots_saveable")
    assert "remat" in str(jax.make_jaxpr(jax.grad(functools.partial(loss, remat)))(params))
    remat_loss, remat_grads = jax.jit(jax.value_and_grad(functools.partial(loss, remat)))(params)
    np.testing.assert_allclose(remat_loss, base_loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, base_grads
    )


def test_dropout_is_active_in_train_mode_only(lm_variables):
    model = _lm(dropout_rate=0.3)
    np.testing.assert_array_equal(
        _eval_logits(model, lm_variables, TOKENS), _eval_logits(_lm(), lm_variables, TOKENS)
    )
    first, second = (
        _train_logits(model, lm_variables, TOKENS, jax.random.key(seed, impl="rbg"))
        for seed in (1, 2)
    )
    assert not np.allclose(first, second)


@pytest.mark.parametrize(
    ("name", "expected", "embed"),
    # Equal to Hugging Face's GPT2LMHeadModel counts (tied head, learned positions, biases).
    [("gpt2_small", 124_439_808, 768), ("gpt2_medium", 354_823_168, 1024)],
)
def test_gpt2_presets_have_the_published_param_counts(name, expected, embed):
    tokens = jnp.zeros((1, 8), jnp.int32)

    def count(model):
        return _num_params(jax.eval_shape(lambda: model.init(KEY, tokens, train=False))["params"])

    model = get_model(name, dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16
    assert count(get_model(name, vocab_divisible_by=1)) == expected
    # The preset pads the 50,257-row table to 50,304 (128 x 393) for tensor parallelism.
    assert count(model) == expected + (50_304 - 50_257) * embed
    logits = jax.eval_shape(
        lambda: model.apply(model.init(KEY, tokens, train=False), tokens, train=False)
    )
    assert logits.shape == (1, 8, 50_257)
    with pytest.raises(TypeError, match="num_layers"):
        get_model(name, num_layers=2)


def _naive_attention(params, x, mask):
    """Reference multi-head attention written directly from the definition."""
    p = nn.unbox(params)
    q, k, v = (
        jnp.einsum("bte,ehd->bthd", x, p[n]["kernel"]) + p[n]["bias"]
        for n in ("query", "key", "value")
    )
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, -jnp.inf)
    out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)
    return jnp.einsum("bthd,hde->bte", out, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_attention_matches_a_naive_einsum_reference(causal):
    x = jax.random.normal(KEY, (2, 6, 16))
    padding = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
    layer = MultiHeadAttention(num_heads=2, head_dim=4, causal=causal)
    params = layer.init(KEY, x, padding, train=False)["params"]
    mask = padding[:, None, None, :]
    if causal:
        mask = mask & jnp.tril(jnp.ones((6, 6), bool))
    expected = _naive_attention(params, x, mask)
    out = layer.apply({"params": params}, x, padding, train=False)
    np.testing.assert_allclose(out, expected, atol=1e-5)

    # The einsum path (CPU, and attention dropout everywhere) computes the same attention.
    q, k, v = (
        jnp.einsum("bte,ehd->bthd", x, nn.unbox(params[n]["kernel"])) + nn.unbox(params[n]["bias"])
        for n in ("query", "key", "value")
    )
    direct = einsum_attention(
        q, k, v, padding[:, None, None, :], causal=causal, dropout=lambda p: p
    )
    reference = jax.nn.dot_product_attention(
        q, k, v, mask=padding[:, None, None, :], is_causal=causal
    )
    np.testing.assert_allclose(direct, reference, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_cpu_einsum_path_equals_the_other_backends_dot_product_attention_path(causal, monkeypatch):
    """On CPU attention runs through ``einsum_attention`` (never ``jax.nn.dot_product_attention``);
    traced for another platform it takes jax's path. Outputs and gradients agree."""
    import jaxdl.layers.attention as attention_module

    x = jax.random.normal(KEY, (2, 7, 16))
    padding = jnp.array([[True] * 7, [True] * 3 + [False] * 4])
    layer = MultiHeadAttention(num_heads=4, head_dim=4, num_kv_heads=2, causal=causal)
    params = layer.init(KEY, x, padding, train=False)["params"]

    def loss(p):
        out = layer.apply({"params": p}, x, padding, train=False)
        return jnp.sum(out * jnp.cos(out)), out

    def refuse(*args, **kwargs):
        raise AssertionError("the CPU path called jax.nn.dot_product_attention")

    with monkeypatch.context() as patch:
        patch.setattr(jax.nn, "dot_product_attention", refuse)
        (_, cpu_out), cpu_grads = jax.value_and_grad(loss, has_aux=True)(params)
    monkeypatch.setattr(attention_module, "trace_platform", lambda: "gpu")
    (_, jax_out), jax_grads = jax.value_and_grad(loss, has_aux=True)(params)
    np.testing.assert_allclose(cpu_out, jax_out, atol=1e-5)
    for got, want in zip(jax.tree.leaves(cpu_grads), jax.tree.leaves(jax_grads), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_fused_qkv_attention_matches_separate_projections_with_the_same_weights():
    x = jax.random.normal(KEY, (2, 5, 16))
    separate = MultiHeadAttention(num_heads=2, head_dim=4, causal=True)
    fused = separate.clone(qkv_fused=True)
    params = nn.unbox(separate.init(KEY, x, train=False)["params"])
    fused_boxed = fused.init(KEY, x, train=False)["params"]
    assert fused_boxed["qkv"]["kernel"].names == ("embed", "qkv", "heads", "kv")
    stacked = {
        leaf: jnp.stack([params[n][leaf] for n in ("query", "key", "value")], axis=-3)
        for leaf in ("kernel", "bias")
    }
    fused_params = {"qkv": stacked, "out": params["out"]}
    np.testing.assert_allclose(
        fused.apply({"params": fused_params}, x, train=False),
        separate.apply({"params": params}, x, train=False),
        atol=1e-6,
    )


def test_attention_probability_dropout_needs_train_and_changes_the_output():
    x = jax.random.normal(KEY, (2, 5, 16))
    layer = MultiHeadAttention(num_heads=2, head_dim=4, dropout_rate=0.5)
    variables = layer.init(KEY, x, train=False)
    plain = layer.clone(dropout_rate=0.0).apply(variables, x, train=False)
    np.testing.assert_array_equal(layer.apply(variables, x, train=False), plain)
    dropped = layer.apply(variables, x, train=True, rngs={"dropout": KEY})
    assert not np.allclose(dropped, plain, atol=1e-3)


def test_layer_param_names_and_shapes():
    x = jnp.ones((2, 5, 16))
    mlp = MlpBlock(32).init(KEY, x, train=False)["params"]
    assert mlp["wi"]["kernel"].names == ("embed", "mlp")
    assert mlp["wo"]["kernel"].names == ("mlp", "embed")
    attention = MultiHeadAttention(num_heads=2, head_dim=8).init(KEY, x, train=False)["params"]
    assert attention["query"]["kernel"].names == ("embed", "heads", "kv")
    assert attention["out"]["kernel"].names == ("heads", "kv", "embed")
    assert attention["out"]["kernel"].value.shape == (2, 8, 16)
    embed = Embed(10, 16)
    table = embed.init(KEY, jnp.zeros((2, 5), jnp.int32))["params"]["embedding"]
    assert table.names == ("vocab", "embed")
    logits = embed.apply({"params": {"embedding": table}}, x, method=Embed.attend)
    np.testing.assert_allclose(logits, x @ nn.unbox(table).T, rtol=1e-6)
    positions = LearnedPositionEmbedding(8).init(KEY, x)["params"]["embedding"]
    assert positions.names == ("pos", "embed")
    assert positions.value.shape == (8, 16)


def test_a_padded_table_looks_up_and_attends_like_the_unpadded_one():
    tokens = jnp.array([[0, 9, 3], [9, 1, 2]], jnp.int32)
    padded = Embed(10, 16, rows_divisible_by=8)
    table = padded.init(KEY, tokens)["params"]["embedding"]
    assert table.value.shape == (16, 16)
    real = {"params": {"embedding": nn.unbox(table)[:10]}}
    x = jax.random.normal(KEY, (2, 3, 16))
    for method, inputs in ((None, tokens), (Embed.attend, x)):
        np.testing.assert_array_equal(
            padded.apply({"params": {"embedding": table}}, inputs, method=method),
            Embed(10, 16).apply(real, inputs, method=method),
        )


def test_tied_projection_equals_the_autodiff_of_the_plain_product():
    query = jax.random.normal(KEY, (3, 5, 16))
    table = jax.random.normal(jax.random.key(1), (40, 16))
    weights = jax.random.normal(jax.random.key(2), (3, 5, 40))
    np.testing.assert_array_equal(tied_projection(query, table), jnp.dot(query, table.T))

    def loss(project):
        return lambda q, t: jnp.sum(jnp.sin(project(q, t)) * weights)

    custom = jax.grad(loss(tied_projection), (0, 1))(query, table)
    plain = jax.grad(loss(lambda q, t: jnp.dot(q, t.T)), (0, 1))(query, table)
    for got, want in zip(custom, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_tied_projection_is_used_only_where_the_vocabulary_is_not_sharded():
    """Embed.attend's custom VJP is for an unsharded table: under tensor parallelism the
    partitioner would all-gather the vocabulary-sharded logits gradient for it."""
    assert not dimension_is_sharded(("vocab", "embed"), 0)  # no mesh
    for shape, sharded in (({"data": 8}, False), ({"data": 2, "tensor": 4}, True)):
        with jax.set_mesh(make_mesh(shape)), nn.logical_axis_rules(DEFAULT_RULES):
            assert dimension_is_sharded(("vocab", "embed"), 0) is sharded
            assert dimension_is_sharded(("vocab", "embed"), 1) is False
    with jax.set_mesh(make_mesh({"fsdp": 8})), nn.logical_axis_rules(DEFAULT_RULES):
        assert dimension_is_sharded(("vocab", "embed"), 1)


@pytest.mark.parametrize("kwargs", [{"tie_embeddings": True}, {"tie_embeddings": False}])
def test_vocab_divisible_by_pads_the_parameters_but_not_the_logits(kwargs):
    config = dict(vocab_size=21, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=16, max_len=6)
    tokens = jnp.array([[1, 20, 5, 7]], jnp.int32)
    padded = TransformerLM(**config, **kwargs, vocab_divisible_by=16)
    params = nn.unbox(padded.init(KEY, tokens, train=False)["params"])
    assert params["token_embed"]["embedding"].shape == (32, 8)
    if not kwargs["tie_embeddings"]:
        assert params["lm_head"]["kernel"].shape == (8, 32)
    # The same model without padding, on the real rows/columns, gives the same logits.
    unpadded = jax.tree_util.tree_map_with_path(
        lambda path, p: (
            p[:21]
            if "embedding" in str(path[-2:]) and p.shape[0] == 32
            else p[:, :21]
            if "lm_head" in str(path)
            else p
        ),
        params,
    )
    logits = padded.apply({"params": params}, tokens, train=False)
    assert logits.shape == (1, 4, 21)
    np.testing.assert_array_equal(
        logits, TransformerLM(**config, **kwargs).apply({"params": unpadded}, tokens, train=False)
    )
    with pytest.raises(ValueError, match="vocab_divisible_by must be >= 1"):
        TransformerLM(**config, vocab_divisible_by=0)


def test_sinusoidal_positions_follow_the_sin_cos_formula():
    table = sinusoidal_positions(5, 8)
    assert table.shape == (5, 8)
    np.testing.assert_allclose(table[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    # Position 3, frequency index 1 of 4: 10000 ** (-1 / 4).
    np.testing.assert_allclose(table[3, 1], np.sin(3 * 1e4**-0.25), rtol=1e-6)
    np.testing.assert_allclose(table[3, 5], np.cos(3 * 1e4**-0.25), rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: _lm(num_heads=5), ValueError, "not divisible by num_heads"),
        (lambda: _lm(remat_policy="some"), ValueError, "remat_policy"),
        (lambda: _lm(position_embedding="rope"), ValueError, "position_embedding"),
        (lambda: _lm(dropout_rate=1.0), ValueError, "dropout_rate"),
        (lambda: _classifier(pooling="max"), ValueError, "pooling"),
        (lambda: _classifier(num_classes=0), ValueError, "num_classes"),
        (lambda: MlpBlock(8, activation="swish"), ValueError, "activation"),
        (lambda: MultiHeadAttention(num_heads=0, head_dim=4), ValueError, "num_heads"),
        (
            lambda: TransformerStack(
                num_layers=2, num_heads=2, mlp_dim=8, causal=True, remat_policy="some"
            ),
            ValueError,
            "remat_policy",
        ),
        (
            lambda: TransformerStack(num_layers=0, num_heads=2, mlp_dim=8, causal=True),
            ValueError,
            "num_layers",
        ),
    ],
)
def test_bad_hyperparameters_fail_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_inputs_get_clear_errors():
    model = _lm()
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        model.init(KEY, jnp.zeros((1, 17), jnp.int32), train=False)
    with pytest.raises(TypeError, match="integer tokens"):
        model.init(KEY, jnp.zeros((1, 4)), train=False)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model.init(KEY, jnp.zeros((4,), jnp.int32), train=False)
    with pytest.raises(ValueError, match="padding_mask must be bool"):
        MultiHeadAttention(num_heads=2, head_dim=4).init(
            KEY, jnp.ones((2, 5, 8)), jnp.ones((2, 5), jnp.int32), train=False
        )
    with pytest.raises(ValueError, match="segment_ids must be int"):
        MultiHeadAttention(num_heads=2, head_dim=4).init(
            KEY, jnp.ones((2, 5, 8)), segment_ids=jnp.ones((2, 5)), train=False
        )
    with pytest.raises(ValueError, match="segment_ids must be shaped like tokens"):
        model.init(KEY, TOKENS, segment_ids=jnp.ones((2, 7), jnp.int32), train=False)
    with pytest.raises(TypeError, match="integer positions"):
        model.init(KEY, TOKENS, positions=jnp.zeros(TOKENS.shape), train=False)


def test_nnx_bridge_matches_linen_apply_with_the_same_variables():
    model = _classifier()
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rules = [("batch", "data"), *((name, None) for name in ("length", *sorted(PARAM_AXES)))]

    # Jitted creation: an eager lazy_init would compile every initialiser op separately.
    @nnx.jit
    def create(tokens):
        nnx_model = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(KEY))
        nnx.bridge.lazy_init(nnx_model, tokens, train=False)
        return nnx_model

    # flax 0.12 shards NNX variables eagerly from their logical names, which needs a mesh and
    # rules mapping every name.
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        nnx_model = create(TOKENS)
        nnx_logits = nnx_model(TOKENS, train=False)
    variables = {"params": nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))}
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(
        nn.unbox(jax.eval_shape(lambda: model.init(KEY, TOKENS, train=False))["params"])
    )
    assert nnx_logits.shape == (2, 3)
    np.testing.assert_allclose(
        nnx_logits, _eval_logits(model, variables, TOKENS), rtol=1e-5, atol=1e-6
    )


def test_unrolled_attention_query_kernel_is_split_over_fsdp_and_tensor():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model = _classifier(scan_layers=False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        abstract = jax.eval_shape(lambda: model.init(KEY, TOKENS, train=False))
    shardings = logical_to_shardings(abstract, mesh)
    query = shardings["params"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert query.spec == PartitionSpec("fsdp", "tensor", None)


def _train_classifier(mesh, batches):
    # One scanned layer and no dropout keep the two compiles (1 and 8 devices) affordable on CPU.
    model = _classifier(num_layers=1)
    sample = jax.ShapeDtypeStruct(batches[0]["inputs"].shape, jnp.int32)
    state, shardings = create_sharded_train_state(
        model, optax.adam(1e-2), jax.random.PRNGKey(0), sample, mesh
    )
    sharding = batch_sharding(mesh)
    step = ShardedStep(make_train_step(), mesh, shardings, sharding, returns_state=True)
    losses = []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, sharding))
        losses.append(float(metrics["loss"]))
    return shardings, losses


@pytest.mark.slow  # CI: test_train_sharding trains this classifier under DP, FSDP and FSDPxTP
def test_sharded_classifier_training_matches_single_device():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 16, size=(2, 8))
    batches = [
        {
            "inputs": np.where(np.arange(16) < n[:, None], rng.integers(1, 64, (8, 16)), 0).astype(
                np.int32
            ),
            "labels": rng.integers(0, 3, size=(8,)).astype(np.int32),
        }
        for n in lengths
    ]
    _, reference = _train_classifier(make_mesh({"data": 1}, jax.devices()[:1]), batches)
    shardings, losses = _train_classifier(make_mesh({"fsdp": 2, "tensor": 4}), batches)
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    query = shardings.params["encoder"]["layers"]["attention"]["query"]["kernel"]
    assert query.spec == PartitionSpec(None, "fsdp", "tensor", None)
