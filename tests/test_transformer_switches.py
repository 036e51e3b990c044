"""Tests for the Transformer switches: RMSNorm, SwiGLU, rotary positions, grouped-query
attention and cross-attention, each against a hand-written (or torch) reference, plus masking
with every switch and the unchanged default parameter layout."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import PartitionSpec

from jaxdl.layers import (
    CrossAttention,
    MlpBlock,
    MultiHeadAttention,
    apply_rotary,
    einsum_attention,
    make_norm,
)
from jaxdl.layers.attention import attention_implementation
from jaxdl.models import TransformerClassifier, TransformerLM
from jaxdl.parallel import DEFAULT_RULES, logical_to_shardings, make_mesh

KEY = jax.random.key(0, impl="rbg")
TINY = dict(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=16)
TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 1, 64)
SWITCHES = {
    "rms": dict(norm="rms"),
    "swiglu": dict(mlp_activation="swiglu"),
    "rotary": dict(position_embedding="rotary"),
    "gqa": dict(num_kv_heads=2),
    "qkv_fused": dict(qkv_fused=True),
    "all": dict(norm="rms", mlp_activation="swiglu", position_embedding="rotary", num_kv_heads=1),
}


def _layout(model) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """'path/to/param' -> (shape, logical names) of a model's parameters."""
    params = jax.eval_shape(lambda: model.init(KEY, TOKENS, train=False))["params"]
    flat, _ = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    return {"/".join(k.key for k in path): (leaf.value.shape, leaf.names) for path, leaf in flat}


def _block_layout(prefix: str) -> dict:
    """The scanned two-layer block parameters as they were before the switches existed."""
    embed, heads, mlp = ("layers", "embed"), ("layers", "heads", "kv"), ("layers", "mlp")
    layout = {
        "final_norm/bias": ((32,), ("embed",)),
        "final_norm/scale": ((32,), ("embed",)),
        "layers/attention/out/bias": ((2, 32), embed),
        "layers/attention/out/kernel": ((2, 4, 8, 32), ("layers", "heads", "kv", "embed")),
        "layers/mlp/wi/bias": ((2, 64), mlp),
        "layers/mlp/wi/kernel": ((2, 32, 64), ("layers", "embed", "mlp")),
        "layers/mlp/wo/bias": ((2, 32), embed),
        "layers/mlp/wo/kernel": ((2, 64, 32), ("layers", "mlp", "embed")),
    }
    for name in ("query", "key", "value"):
        layout[f"layers/attention/{name}/bias"] = ((2, 4, 8), heads)
        layout[f"layers/attention/{name}/kernel"] = ((2, 32, 4, 8), ("layers", "embed", *heads[1:]))
    for norm in ("attn_norm", "mlp_norm"):
        layout[f"layers/{norm}/bias"] = ((2, 32), embed)
        layout[f"layers/{norm}/scale"] = ((2, 32), embed)
    return {f"{prefix}/{path}": value for path, value in layout.items()}


TABLES = {
    "pos_embed/embedding": ((16, 32), ("pos", "embed")),
    "token_embed/embedding": ((64, 32), ("vocab", "embed")),
}
HEAD = {"head/bias": ((3,), ("classes",)), "head/kernel": ((32, 3), ("embed", "classes"))}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda **kw: TransformerLM(**TINY, **kw), _block_layout("decoder") | TABLES),
        (
            lambda **kw: TransformerClassifier(**TINY, num_classes=3, **kw),
            _block_layout("encoder") | TABLES | HEAD,
        ),
    ],
    ids=["lm", "classifier"],
)
def test_defaults_keep_the_parameter_layout(make, expected):
    default = _layout(make())
    assert default == expected
    explicit = make(norm="layer", mlp_activation="gelu", position_embedding="learned")
    assert _layout(explicit) == default
    assert _layout(make(num_kv_heads=TINY["num_heads"])) == default


def test_switches_change_only_their_own_parameters():
    default = _layout(TransformerLM(**TINY))
    layout = _layout(TransformerLM(**TINY, **SWITCHES["all"]))
    block = "decoder/layers"
    assert not {p for p in layout if p.endswith("norm/bias")}  # RMSNorm has a scale only
    assert layout[f"{block}/attn_norm/scale"] == default[f"{block}/attn_norm/scale"]
    assert "pos_embed/embedding" not in layout  # rotary has no position table
    for name in ("wi_gate", "wi_up"):
        assert layout[f"{block}/mlp/{name}/kernel"] == default[f"{block}/mlp/wi/kernel"]
    assert layout[f"{block}/mlp/wo/kernel"] == default[f"{block}/mlp/wo/kernel"]
    for name in ("key", "value"):
        kernel = ((2, 32, 1, 8), ("layers", "embed", "kv_heads", "kv"))
        assert layout[f"{block}/attention/{name}/kernel"] == kernel
    assert layout[f"{block}/attention/query/kernel"] == default[f"{block}/attention/query/kernel"]
    rule_names = {name for name, _ in DEFAULT_RULES}
    assert {name for _, names in layout.values() for name in names} <= rule_names


def test_grouped_kv_heads_are_split_over_tensor_like_the_query_heads():
    mesh = make_mesh({"fsdp": 2, "tensor": 2}, jax.devices()[:4])
    model = TransformerLM(**TINY, num_kv_heads=2, scan_layers=False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        abstract = jax.eval_shape(lambda: model.init(KEY, TOKENS, train=False))
    attention = logical_to_shardings(abstract, mesh)["params"]["decoder"]["layers_0"]["attention"]
    for name in ("query", "key", "value"):
        assert attention[name]["kernel"].spec == PartitionSpec("fsdp", "tensor", None)


def test_rms_norm_equals_torch():
    x = jax.random.normal(KEY, (2, 5, 16))
    norm = make_norm("rms", axis_name="embed", train=False)
    params = nn.unbox(norm.init(KEY, x)["params"])
    assert set(params) == {"scale"}
    scale = jax.random.normal(jax.random.key(2), (16,))
    out = norm.apply({"params": {"scale": scale}}, x)
    reference = torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(np.array(scale)))
        expected = reference(torch.from_numpy(np.array(x))).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_swiglu_mlp_equals_torch():
    x = jax.random.normal(KEY, (2, 5, 16))
    block = MlpBlock(32, activation="swiglu", use_bias=False)
    boxed = block.init(KEY, x, train=False)["params"]
    assert set(boxed) == {"wi_gate", "wi_up", "wo"}
    assert boxed["wi_gate"]["kernel"].names == boxed["wi_up"]["kernel"].names == ("embed", "mlp")
    assert boxed["wo"]["kernel"].names == ("mlp", "embed")
    params = nn.unbox(boxed)
    out = block.apply({"params": params}, x, train=False)
    gate, up, down = (
        torch.from_numpy(np.array(params[n]["kernel"])) for n in ("wi_gate", "wi_up", "wo")
    )
    xt = torch.from_numpy(np.array(x))
    expected = (torch.nn.functional.silu(xt @ gate) * (xt @ up)) @ down
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def _rotate(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """RoPE as complex multiplication: feature pair (i, i + D/2) is the complex number
    x_i + j x_{i+D/2}, turned by the angle position * 10000 ** (-2i / D)."""
    half = x.shape[-1] // 2
    angles = positions[:, :, None, None] * 1e4 ** (-2 * np.arange(half) / x.shape[-1])
    turned = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * angles)
    return np.concatenate([turned.real, turned.imag], axis=-1)


def _naive_attention(params, x, mask, memory=None, positions=None):
    """Attention from the definition: every query head n reads kv head n // (N / K)."""
    p = jax.tree.map(np.asarray, nn.unbox(params))
    x, memory = np.asarray(x, np.float64), np.asarray(x if memory is None else memory, np.float64)
    q = np.einsum("bte,end->btnd", x, p["query"]["kernel"]) + p["query"]["bias"]
    k, v = (
        np.einsum("bse,end->bsnd", memory, p[n]["kernel"]) + p[n]["bias"] for n in ("key", "value")
    )
    if positions is not None:
        q, k = _rotate(q, positions), _rotate(k, positions)
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnd->btnd", probs, v)
    return np.einsum("btnd,nde->bte", out, p["out"]["kernel"]) + p["out"]["bias"]


X = jax.random.normal(KEY, (2, 6, 16))
PADDING = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
CAUSAL_PADDED = PADDING[:, None, None, :] & jnp.tril(jnp.ones((6, 6), bool))


def test_grouped_query_attention_matches_a_naive_reference():
    layer = MultiHeadAttention(num_heads=4, head_dim=4, num_kv_heads=2, causal=True)
    params = layer.init(KEY, X, PADDING, train=False)["params"]
    assert nn.unbox(params)["key"]["kernel"].shape == (16, 2, 4)
    out = layer.apply({"params": params}, X, PADDING, train=False)
    expected = _naive_attention(params, X, CAUSAL_PADDED)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # The einsum path used for attention dropout groups heads the same way.
    q = jax.random.normal(KEY, (2, 6, 4, 4))
    k, v = jax.random.normal(jax.random.key(3), (2, 2, 6, 2, 4))
    direct = einsum_attention(q, k, v, PADDING[:, None, None, :], causal=True, dropout=lambda p: p)
    fused = jax.nn.dot_product_attention(q, k, v, mask=PADDING[:, None, None, :], is_causal=True)
    np.testing.assert_allclose(direct, fused, atol=1e-5)


def test_rotary_attention_matches_a_naive_reference_and_respects_positions():
    layer = MultiHeadAttention(num_heads=2, head_dim=8, causal=True, rotary=True)
    params = layer.init(KEY, X, train=False)["params"]
    default = layer.apply({"params": params}, X, PADDING, train=False)
    positions = np.broadcast_to(np.arange(6), (2, 6))
    np.testing.assert_allclose(
        default, _naive_attention(params, X, CAUSAL_PADDED, None, positions), atol=1e-5
    )
    # Packed rows: positions restart and segments stay apart, so the second sequence of a row
    # gets what it gets alone at positions 0..2.
    segments = jnp.array([[1, 1, 1, 2, 2, 2]] * 2)
    packed = layer.apply(
        {"params": params},
        X,
        segment_ids=segments,
        positions=jnp.array([[0, 1, 2, 0, 1, 2]] * 2),
        train=False,
    )
    alone = layer.apply({"params": params}, X[:, 3:], train=False)
    np.testing.assert_allclose(packed[:, 3:], alone, atol=1e-5)
    # Only relative positions matter: shifting every position changes nothing.
    shifted = layer.apply({"params": params}, X, positions=jnp.asarray(positions) + 5, train=False)
    np.testing.assert_allclose(shifted, layer.apply({"params": params}, X, train=False), atol=1e-4)


def test_apply_rotary_is_a_rotation_of_feature_pairs():
    x = jax.random.normal(KEY, (2, 5, 3, 8))
    positions = jnp.array([[0, 1, 2, 7, 30]] * 2)
    out = apply_rotary(x, positions)
    np.testing.assert_allclose(out, _rotate(np.asarray(x), np.asarray(positions)), atol=1e-5)
    np.testing.assert_allclose(out[:, 0], x[:, 0])  # position 0 is the identity
    np.testing.assert_allclose(
        jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
    )


@pytest.mark.parametrize("kv_heads", [None, 1], ids=["multi-head", "multi-query"])
def test_cross_attention_matches_a_naive_reference(kv_heads):
    memory = jax.random.normal(jax.random.key(4), (2, 7, 12))
    memory_mask = jnp.array([[True] * 7, [True] * 3 + [False] * 4])
    layer = CrossAttention(num_heads=2, head_dim=4, num_kv_heads=kv_heads)
    params = layer.init(KEY, X, memory, memory_mask, train=False)["params"]
    assert nn.unbox(params)["key"]["kernel"].shape == (12, kv_heads or 2, 4)
    out = layer.apply({"params": params}, X, memory, memory_mask, train=False)
    assert out.shape == X.shape
    expected = _naive_attention(params, X, memory_mask[:, None, None, :], memory)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Masked memory is ignored: changing it changes nothing.
    noisy = memory.at[1, 3:].set(100.0)
    np.testing.assert_allclose(
        layer.apply({"params": params}, X, noisy, memory_mask, train=False), out, atol=1e-6
    )


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, variables, tokens):
    return model.apply(variables, tokens, train=False)


# 'all' combines rms, swiglu, rotary and gqa: their single-switch cases run with the slow tests.
COVERED_BY_ALL = ("rms", "swiglu", "rotary", "gqa")


@pytest.mark.parametrize(
    "switch",
    [
        pytest.param(name, marks=pytest.mark.slow) if name in COVERED_BY_ALL else name
        for name in SWITCHES
    ],
)
def test_causal_masking_and_padding_hold_with_each_switch(switch):
    lm = TransformerLM(**{**TINY, "num_layers": 1}, **SWITCHES[switch])
    variables = jax.jit(lambda t: lm.init(KEY, t, train=False))(TOKENS)
    changed = TOKENS.at[:, 5:].set(7)
    logits, changed_logits = _apply(lm, variables, TOKENS), _apply(lm, variables, changed)
    np.testing.assert_allclose(logits[:, :5], changed_logits[:, :5], atol=1e-5)
    assert not np.allclose(logits[:, 5:], changed_logits[:, 5:], atol=1e-3)

    classifier = TransformerClassifier(
        **{**TINY, "num_layers": 1}, num_classes=3, **SWITCHES[switch]
    )
    tokens = TOKENS.at[:, 6:].set(0)
    variables = jax.jit(lambda t: classifier.init(KEY, t, train=False))(tokens)
    padded = jnp.concatenate([tokens[:, :6], jnp.zeros((2, 4), jnp.int32)], axis=1)
    np.testing.assert_allclose(
        _apply(classifier, variables, tokens[:, :6]),
        _apply(classifier, variables, padded),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(norm="batch"), "norm"),
        (dict(mlp_activation="swish"), "mlp_activation"),
        (dict(position_embedding="rotary", embed_dim=20), "even head dim"),
        (dict(attention_impl="flash"), "attention_impl"),
        (dict(qkv_fused=True, num_kv_heads=1), "qkv_fused"),
    ],
)
def test_bad_switches_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        TransformerLM(**{**TINY, **overrides})


def test_decoding_needs_causal_unpadded_attention_and_model_positions():
    with pytest.raises(ValueError, match="decode needs causal"):
        MultiHeadAttention(num_heads=2, head_dim=4).init(KEY, X, train=False, decode=True)
    with pytest.raises(ValueError, match="needs the tokens' positions"):
        TransformerLM(**TINY).init(KEY, TOKENS, train=False, decode=True)
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultiHeadAttention(num_heads=4, head_dim=4, num_kv_heads=3)


def test_auto_attention_uses_cudnn_only_where_it_applies():
    half = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
    on_gpu = jax.default_backend() == "gpu"
    assert attention_implementation("auto", half, None) == ("cudnn" if on_gpu else None)
    # Full precision, an explicit mask or an unsupported head size keep XLA's path.
    assert attention_implementation("auto", half.astype(jnp.float32), None) is None
    assert attention_implementation("auto", half, jnp.ones((1, 1, 8, 8), bool)) is None
    assert attention_implementation("auto", jnp.zeros((1, 8, 2, 12), jnp.bfloat16), None) is None
    assert attention_implementation("xla", half, None) is None
    assert attention_implementation("cudnn", half, None) == "cudnn"


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_equals_xla_attention_in_bf16():
    x = jax.random.normal(KEY, (2, 128, 256), jnp.bfloat16)
    outputs, grads = {}, {}
    for impl in ("xla", "cudnn"):
        layer = MultiHeadAttention(
            num_heads=4, head_dim=64, causal=True, dtype=jnp.bfloat16, attention_impl=impl
        )
        params = layer.init(KEY, x, train=False)
        outputs[impl] = layer.apply(params, x, train=False).astype(jnp.float32)

        def loss(p, layer=layer):
            return jnp.sum(layer.apply(p, x, train=False).astype(jnp.float32))

        grads[impl] = jax.grad(loss)(params)["params"]["query"]["kernel"].value
    np.testing.assert_allclose(outputs["cudnn"], outputs["xla"], atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(grads["cudnn"], grads["xla"], atol=5e-2, rtol=5e-2)


def test_fused_qkv_projection_equals_three_projections():
    separate = TransformerLM(**TINY, scan_layers=False)
    params = nn.unbox(separate.init(KEY, TOKENS, train=False)["params"])
    fused_params = jax.tree.map(lambda x: x, params)
    for layer in range(TINY["num_layers"]):
        attention = fused_params["decoder"][f"layers_{layer}"]["attention"]
        parts = [attention.pop(name) for name in ("query", "key", "value")]
        attention["qkv"] = {
            "kernel": jnp.stack([part["kernel"] for part in parts], axis=1),
            "bias": jnp.stack([part["bias"] for part in parts], axis=0),
        }
    fused = TransformerLM(**TINY, scan_layers=False, qkv_fused=True)
    expected = separate.apply({"params": params}, TOKENS, train=False)
    actual = fused.apply({"params": fused_params}, TOKENS, train=False)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
