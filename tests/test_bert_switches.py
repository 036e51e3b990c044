"""Tests for the BERT switches of the Transformer models: post-norm blocks, the embedding norm,
token types, the tanh pooler, the norm epsilon and exact (erf) GELU, each against a
hand-written or torch reference, plus their logical names and their reach from a config."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from jaxdl.experiment import model_kwargs
from jaxdl.layers import MlpBlock, MultiHeadAttention, TransformerBlock, make_norm
from jaxdl.models import TransformerClassifier, TransformerLM, get_model
from jaxdl.parallel import DEFAULT_RULES

KEY = jax.random.key(0)
TINY = dict(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=16)
BERT_SWITCHES = dict(
    norm_position="post",
    norm_epsilon=1e-12,
    embedding_norm=True,
    mlp_activation="gelu_exact",
    token_type_vocab=2,
    pooler="tanh",
    pooling="cls",
)
TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 1, 64)


def _layout(model, *args) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    params = jax.eval_shape(lambda: model.init(KEY, *args, train=False))["params"]
    flat, _ = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    return {"/".join(k.key for k in path): (leaf.value.shape, leaf.names) for path, leaf in flat}


def _layer_norm(x, scale, bias, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias)


def _perturbed(params, seed=3):
    """Every parameter moved off its init (so unit scales and zero biases hide nothing)."""
    leaves, tree = jax.tree.flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def test_post_norm_block_matches_a_hand_written_reference():
    x = jax.random.normal(KEY, (2, 6, 16))
    mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
    block = TransformerBlock(
        num_heads=4,
        mlp_dim=32,
        causal=False,
        norm_position="post",
        norm_epsilon=1e-12,
        mlp_activation="gelu_exact",
    )
    params = _perturbed(block.init(KEY, x, mask, train=False)["params"])
    assert set(params) == {"attn_norm", "attention", "mlp_norm", "mlp"}
    out = block.apply({"params": params}, x, mask, train=False)

    attention = MultiHeadAttention(num_heads=4, head_dim=4)
    attended = attention.apply({"params": params["attention"]}, x, mask, train=False)
    n1 = params["attn_norm"]
    h = _layer_norm(np.asarray(x) + np.asarray(attended), n1["scale"], n1["bias"], 1e-12)
    mlp = params["mlp"]
    hidden = torch.nn.functional.gelu(
        torch.from_numpy(h @ np.asarray(mlp["wi"]["kernel"]) + np.asarray(mlp["wi"]["bias"]))
    ).numpy()
    y = hidden @ np.asarray(mlp["wo"]["kernel"]) + np.asarray(mlp["wo"]["bias"])
    n2 = params["mlp_norm"]
    expected = _layer_norm(h + y, n2["scale"], n2["bias"], 1e-12)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_post_norm_stack_has_no_final_norm_and_bert_names_are_in_the_rules():
    layout = _layout(TransformerClassifier(**TINY, num_classes=3, **BERT_SWITCHES), TOKENS)
    assert not any("final_norm" in path for path in layout)
    assert layout["type_embed/embedding"] == ((2, 32), ("token_types", "embed"))
    assert layout["embed_norm/scale"] == ((32,), ("embed",))
    assert layout["pooler/kernel"] == ((32, 32), ("embed", "mlp"))
    assert layout["pooler/bias"] == ((32,), ("mlp",))
    rule_names = {name for name, _ in DEFAULT_RULES}
    assert {name for _, names in layout.values() for name in names} <= rule_names
    spec = nn.logical_to_mesh_axes(("token_types", "embed"), DEFAULT_RULES)
    assert tuple(spec) == (None, "fsdp")
    lm = _layout(TransformerLM(**TINY, norm_position="post", embedding_norm=True), TOKENS)
    assert "embed_norm/bias" in lm and "decoder/final_norm/scale" not in lm


def _encoded(model, variables, tokens, **kwargs):
    """The classifier's logits and its encoder output [B, T, E]."""
    logits, state = model.apply(
        variables,
        tokens,
        train=False,
        capture_intermediates=lambda mdl, _: mdl.name in ("encoder", "embed_norm"),
        mutable=["intermediates"],
        **kwargs,
    )
    return logits, state["intermediates"]


@pytest.mark.slow
def test_pooler_embedding_norm_and_token_types_compose_as_bert_does():
    model = TransformerClassifier(**TINY, num_classes=3, **BERT_SWITCHES)
    params = _perturbed(model.init(KEY, TOKENS, train=False)["params"])
    types = jnp.array([[0] * 4 + [1] * 4, [0] * 8])
    logits, inter = _encoded(model, {"params": params}, TOKENS, token_type_ids=types)
    # Embedding norm over token + position + type embeddings.
    summed = (
        np.asarray(params["token_embed"]["embedding"])[np.asarray(TOKENS)]
        + np.asarray(params["pos_embed"]["embedding"])[:8]
        + np.asarray(params["type_embed"]["embedding"])[np.asarray(types)]
    )
    norm = params["embed_norm"]
    np.testing.assert_allclose(
        inter["embed_norm"]["__call__"][0],
        _layer_norm(summed, norm["scale"], norm["bias"], 1e-12),
        rtol=1e-4,
        atol=1e-5,
    )
    # Pooler: tanh(dense([CLS])) before the head.
    cls = np.asarray(inter["encoder"]["__call__"][0])[:, 0]
    pooled = np.tanh(cls @ np.asarray(params["pooler"]["kernel"]) + params["pooler"]["bias"])
    expected = pooled @ np.asarray(params["head"]["kernel"]) + params["head"]["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    # No token_type_ids = all type 0; other types change the output.
    default = model.apply({"params": params}, TOKENS, train=False)
    zeros = model.apply(
        {"params": params}, TOKENS, token_type_ids=jnp.zeros_like(TOKENS), train=False
    )
    np.testing.assert_allclose(default, zeros, atol=1e-6)
    assert not np.allclose(default, logits, atol=1e-3)


# make test-slow: padding invisibility of the default blocks is tested in make test.
@pytest.mark.slow
def test_bert_switches_keep_padding_invisible():
    model = TransformerClassifier(**TINY, num_classes=3, **BERT_SWITCHES)
    tokens = TOKENS.at[:, 6:].set(0)
    types = jnp.array([[0, 0, 0, 1, 1, 1, 0, 0]] * 2)
    variables = {"params": _perturbed(model.init(KEY, tokens, train=False)["params"])}
    short = model.apply(variables, tokens[:, :6], token_type_ids=types[:, :6], train=False)
    padded = model.apply(variables, tokens, token_type_ids=types, train=False)
    np.testing.assert_allclose(short, padded, atol=1e-5)


def test_token_types_need_a_table_and_the_tokens_shape():
    with pytest.raises(ValueError, match="token_type_vocab=0"):
        TransformerClassifier(**TINY, num_classes=3).init(
            KEY, TOKENS, token_type_ids=jnp.zeros_like(TOKENS), train=False
        )
    with pytest.raises(ValueError, match="token_type_ids must be shaped like tokens"):
        TransformerClassifier(**TINY, num_classes=3, token_type_vocab=2).init(
            KEY, TOKENS, token_type_ids=jnp.zeros((2, 7), jnp.int32), train=False
        )


@pytest.mark.parametrize("epsilon", [1e-5, 1e-12])
def test_norm_epsilon_equals_torch(epsilon):
    # A small variance, where the epsilon matters.
    x = 1e-4 * jax.random.normal(KEY, (2, 5, 16))
    kwargs = {} if epsilon == 1e-5 else {"epsilon": epsilon}  # 1e-5 is the default
    norm = make_norm("layer", axis_name="embed", train=False, **kwargs)
    params = _perturbed(norm.init(KEY, x)["params"])
    out = norm.apply({"params": params}, x)
    reference = torch.nn.LayerNorm(16, eps=epsilon)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(np.array(params["scale"])))
        reference.bias.copy_(torch.from_numpy(np.array(params["bias"])))
        expected = reference(torch.from_numpy(np.array(x))).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    other = make_norm("layer", axis_name="embed", train=False, epsilon=1e-3 - epsilon)
    assert not np.allclose(other.apply({"params": params}, x), expected, atol=1e-2)


def test_exact_gelu_equals_torch_and_gelu_stays_the_tanh_approximation():
    x = 3 * jax.random.normal(KEY, (2, 5, 16))
    outputs = {}
    for activation in ("gelu_exact", "gelu"):
        block = MlpBlock(32, activation=activation)
        params = block.init(KEY, x, train=False)["params"]
        outputs[activation] = block.apply({"params": params}, x, train=False)
    params = nn.unbox(params)  # same init key: the same weights for both
    xt = torch.from_numpy(np.array(x))
    wi, bi, wo, bo = (
        torch.from_numpy(np.array(params[n][p])) for n in ("wi", "wo") for p in ("kernel", "bias")
    )
    for activation, approximate in (("gelu_exact", "none"), ("gelu", "tanh")):
        hidden = torch.nn.functional.gelu(xt @ wi + bi, approximate=approximate)
        np.testing.assert_allclose(
            outputs[activation], (hidden @ wo + bo).numpy(), rtol=1e-5, atol=1e-5
        )
    assert not np.allclose(outputs["gelu"], outputs["gelu_exact"], atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(norm_position="middle"), "norm_position"),
        (dict(norm_epsilon=0.0), "norm_epsilon"),
        (dict(pooler="relu"), "pooler"),
        (dict(token_type_vocab=-1), "token_type_vocab"),
    ],
)
def test_bad_bert_switches_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        TransformerClassifier(**TINY, num_classes=3, **overrides)


def test_a_train_config_sets_the_bert_switches():
    config = ml_collections.ConfigDict(
        {"name": "transformer_classifier", **TINY, "num_classes": 0, **BERT_SWITCHES}
    )
    model = get_model("transformer_classifier", **model_kwargs(config, {"num_classes": 5}))
    assert model.num_classes == 5
    assert {k: getattr(model, k) for k in BERT_SWITCHES} == BERT_SWITCHES
