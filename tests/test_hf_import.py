"""Importing 🤗 checkpoints: small random GPT-2/BERT models built with transformers (PyTorch),
saved as safetensors, imported, and compared logit for logit; bad checkpoints fail in one line."""

import json
import shutil

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxdl.errors import ConfigError, DataError
from jaxdl.models.hf_import import (
    import_bert,
    import_gpt2,
    load_safetensors,
    save_as_jaxdl_init,
)
from jaxdl.models.transformer import TransformerClassifier, TransformerLM
from jaxdl.train.warm_start import warm_start

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GPT2_SIZE = {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 128, "n_positions": 64}
BERT_SIZE = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 128,
    "max_position_embeddings": 64,
}


def _save(model, directory) -> str:
    """Perturb every parameter (so zero biases and unit LayerNorm scales cannot hide a wrong
    mapping), then save as transformers does: model.safetensors + config.json."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.eval().save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A random GPT-2 LM head model and its saved checkpoint directory."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_SIZE))
    return model, _save(model, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A random BERT sequence classifier (3 labels) and its saved checkpoint directory."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**BERT_SIZE, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    return model, _save(model, tmp_path_factory.mktemp("bert"))


def _tokens(shape=(2, 16)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 128, shape).astype(np.int32)


def _assert_logits_match(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_gpt2_import_reproduces_the_transformers_logits(gpt2, scan_layers):
    model, directory = gpt2
    tokens = _tokens()
    with torch.no_grad():
        want = model(torch.from_numpy(tokens).long()).logits.numpy()
    kwargs, params = import_gpt2(directory, scan_layers=scan_layers)
    assert kwargs["mlp_dim"] == 256 and kwargs["tie_embeddings"]
    layers = params["decoder"]["layers" if scan_layers else "layers_1"]
    assert layers["attention"]["query"]["kernel"].shape == ((2,) if scan_layers else ()) + (
        64,
        4,
        16,
    )
    got = TransformerLM(**kwargs).apply({"params": params}, jnp.asarray(tokens), train=False)
    _assert_logits_match(got, want)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_import_into_the_presets_fused_padded_layout(gpt2, tmp_path, tied):
    """qkv_fused + vocab_divisible_by (the gpt2_small/medium layout): one qkv kernel, the
    128-token table padded to 192 rows, and still transformers' logits."""
    model, directory = gpt2
    if not tied:
        torch.manual_seed(1)
        config = transformers.GPT2Config(**GPT2_SIZE, tie_word_embeddings=False)
        model = transformers.GPT2LMHeadModel(config)
        directory = _save(model, tmp_path)
    tokens = _tokens()
    with torch.no_grad():
        want = model(torch.from_numpy(tokens).long()).logits.numpy()
    kwargs, params = import_gpt2(directory, qkv_fused=True, vocab_divisible_by=96)
    assert kwargs["qkv_fused"] and kwargs["vocab_divisible_by"] == 96
    assert params["decoder"]["layers"]["attention"]["qkv"]["kernel"].shape == (2, 64, 3, 4, 16)
    assert params["token_embed"]["embedding"].shape == (192, 64)
    if not tied:
        assert params["lm_head"]["kernel"].shape == (64, 192)
    got = TransformerLM(**kwargs).apply({"params": params}, jnp.asarray(tokens), train=False)
    assert got.shape == want.shape
    _assert_logits_match(got, want)
    with pytest.raises(ConfigError, match="vocab_divisible_by must be >= 1"):
        import_gpt2(directory, vocab_divisible_by=0)


def test_gpt2_import_with_an_untied_head_from_the_weights_file(tmp_path):
    torch.manual_seed(1)
    config = transformers.GPT2Config(**GPT2_SIZE, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(config)
    _save(model, tmp_path)
    tokens = _tokens((1, 8))
    with torch.no_grad():
        want = model(torch.from_numpy(tokens).long()).logits.numpy()
    kwargs, params = import_gpt2(tmp_path / "model.safetensors")
    assert not kwargs["tie_embeddings"] and params["lm_head"]["kernel"].shape == (64, 128)
    got = TransformerLM(**kwargs).apply({"params": params}, jnp.asarray(tokens), train=False)
    _assert_logits_match(got, want)


@flax.struct.dataclass
class _State:
    params: dict


def test_imported_gpt2_params_warm_start_a_run(gpt2, tmp_path):
    _, directory = gpt2
    kwargs, params = import_gpt2(directory)
    save_as_jaxdl_init(params, tmp_path / "init")
    model = TransformerLM(**kwargs)
    fresh = model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32), train=False)
    state, taken = warm_start(
        _State(nn.unbox(fresh["params"])), {"from_checkpoint": str(tmp_path / "init")}
    )
    assert "params/decoder/layers/attention/query/kernel" in taken
    jax.tree.map(np.testing.assert_array_equal, state.params, params)


def _one_line_error(error_type, match, call, *args, **kwargs):
    with pytest.raises(error_type, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_a_missing_or_unreadable_checkpoint_is_a_data_error(gpt2, tmp_path):
    _one_line_error(DataError, "no safetensors checkpoint", import_gpt2, tmp_path / "nothing")
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    _one_line_error(DataError, "cannot read safetensors", load_safetensors, tmp_path)
    only_weights = tmp_path / "weights"
    only_weights.mkdir()
    shutil.copy(f"{gpt2[1]}/model.safetensors", only_weights)
    _one_line_error(DataError, "no config.json", import_gpt2, only_weights)


def _gpt2_checkpoint(directory, tensors, **config_changes) -> str:
    """A GPT-2 checkpoint directory holding ``tensors`` and a small GPT-2 config.json."""
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    config = {"model_type": "gpt2", **GPT2_SIZE, **config_changes}
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


def test_another_architecture_names_the_first_missing_tensor(bert, tmp_path):
    bert_tensors = load_safetensors(bert[1])
    _one_line_error(
        DataError,
        r"no tensor wte\.weight \(and \d+ more\)",
        import_gpt2,
        _gpt2_checkpoint(tmp_path / "bert", bert_tensors),
    )


def test_unexpected_and_mis_shaped_tensors_are_named(gpt2, tmp_path):
    tensors = load_safetensors(gpt2[1])
    extra = _gpt2_checkpoint(
        tmp_path / "extra", {**tensors, "transformer.h.0.adapter": tensors["transformer.ln_f.bias"]}
    )
    _one_line_error(DataError, r"unexpected tensor h\.0\.adapter$", import_gpt2, extra)
    narrow = {**tensors, "transformer.h.1.mlp.c_fc.weight": np.zeros((64, 255), np.float32)}
    _one_line_error(
        DataError,
        r"tensor h\.1\.mlp\.c_fc\.weight \(64, 255\) does not fit decoder/layers/mlp/wi/kernel "
        r"\(64, 256\)",
        import_gpt2,
        _gpt2_checkpoint(tmp_path / "narrow", narrow),
    )
    # Not divisible into q/k/v: the transform fails, reported the same way.
    fused = {**tensors, "transformer.h.0.attn.c_attn.bias": np.zeros(190, np.float32)}
    _one_line_error(
        DataError,
        r"tensor h\.0\.attn\.c_attn\.bias \(190,\) does not fit",
        import_gpt2,
        _gpt2_checkpoint(tmp_path / "fused", fused),
    )


@pytest.mark.parametrize(
    "change",
    [{"layer_norm_epsilon": 1e-6}, {"activation_function": "relu"}, {"model_type": "bert"}],
)
def test_a_config_transformer_lm_cannot_reproduce_is_a_config_error(gpt2, tmp_path, change):
    directory = _gpt2_checkpoint(tmp_path / "ckpt", load_safetensors(gpt2[1]), **change)
    (field,) = change
    _one_line_error(ConfigError, f"{field}=.* cannot be reproduced", import_gpt2, directory)


def _bert_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens (pad id 0 after each row's length), the attention mask and token types
    (sentence A then B) of a padded batch."""
    rng = np.random.default_rng(0)
    lengths = np.array([16, 11, 5])
    mask = np.arange(16)[None, :] < lengths[:, None]
    tokens = np.where(mask, rng.integers(1, 128, (3, 16)), 0).astype(np.int32)
    types = (mask & (np.arange(16)[None, :] >= lengths[:, None] // 2)).astype(np.int32)
    return tokens, mask, types


def _torch_logits(model, tokens, mask, types) -> np.ndarray:
    with torch.no_grad():
        return model(
            torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
        ).logits.numpy()


@pytest.mark.parametrize("scan_layers", [True, False])
def test_bert_import_reproduces_the_transformers_logits(bert, scan_layers):
    model, directory = bert
    tokens, mask, types = _bert_batch()
    want = _torch_logits(model, tokens, mask, types)
    kwargs, params = import_bert(directory, scan_layers=scan_layers)
    assert kwargs["num_classes"] == 3 and kwargs["norm_epsilon"] == 1e-12
    assert kwargs["mlp_activation"] == "gelu_exact" and kwargs["token_type_vocab"] == 2
    assert params["type_embed"]["embedding"].shape == (2, 64)
    classifier = TransformerClassifier(**kwargs)
    variables = {"params": params}
    # The padding mask taken from pad_id (BERT's 0) and given explicitly.
    for padding_mask in (None, jnp.asarray(mask)):
        got = classifier.apply(
            variables,
            jnp.asarray(tokens),
            padding_mask,
            token_type_ids=jnp.asarray(types),
            train=False,
        )
        _assert_logits_match(got, want)
    # Without token types (all sentence A), as transformers defaults them.
    with torch.no_grad():
        want_a = model(
            torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask).long()
        ).logits.numpy()
    _assert_logits_match(classifier.apply(variables, jnp.asarray(tokens), train=False), want_a)


def test_bert_model_without_a_head_leaves_the_head_to_initialise(tmp_path, caplog):
    """A BertModel checkpoint: everything but the head is mapped; with an identity head the
    logits are BertModel's pooler output."""
    torch.manual_seed(2)
    model = transformers.BertModel(transformers.BertConfig(**BERT_SIZE))
    _save(model, tmp_path)
    _one_line_error(ConfigError, "no classifier head: pass num_classes", import_bert, tmp_path)
    with caplog.at_level("WARNING", logger="jaxdl"):
        kwargs, params = import_bert(tmp_path, num_classes=64)
    assert "no classifier head" in caplog.text
    assert "head" not in params and kwargs["pooler"] == "tanh"
    params = {**params, "head": {"kernel": np.eye(64, dtype=np.float32), "bias": np.zeros(64)}}
    tokens, mask, types = _bert_batch()
    with torch.no_grad():
        want = model(
            torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
        ).pooler_output.numpy()
    got = TransformerClassifier(**kwargs).apply(
        {"params": params}, jnp.asarray(tokens), token_type_ids=jnp.asarray(types), train=False
    )
    _assert_logits_match(got, want)


def _bert_checkpoint(directory, tensors, **config_changes) -> str:
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    config = {"model_type": "bert", **BERT_SIZE, **config_changes}
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory)


@pytest.mark.parametrize(
    "change",
    [
        {"position_embedding_type": "relative_key"},
        {"hidden_act": "gelu_fast"},
        {"is_decoder": True},
        {"model_type": "roberta"},
    ],
)
def test_a_config_the_classifier_cannot_reproduce_is_a_config_error(bert, tmp_path, change):
    directory = _bert_checkpoint(tmp_path / "ckpt", load_safetensors(bert[1]), **change)
    (field,) = change
    _one_line_error(ConfigError, f"{field}=.* cannot be reproduced", import_bert, directory)


def test_bad_bert_checkpoints_are_named(bert, tmp_path):
    tensors = load_safetensors(bert[1])
    narrow = {**tensors, "bert.pooler.dense.weight": np.zeros((64, 63), np.float32)}
    _one_line_error(
        DataError,
        r"tensor pooler\.dense\.weight \(64, 63\) does not fit pooler/kernel \(64, 64\)",
        import_bert,
        _bert_checkpoint(tmp_path / "narrow", narrow),
    )
    missing = {k: v for k, v in tensors.items() if "output.LayerNorm" not in k}
    _one_line_error(
        DataError,
        r"no tensor encoder\.layer\.0\.attention\.output\.LayerNorm\.weight \(and 7 more\)",
        import_bert,
        _bert_checkpoint(tmp_path / "missing", missing),
    )
    _one_line_error(
        ConfigError,
        "num_classes=2 but the checkpoint's classifier has 3",
        import_bert,
        bert[1],
        num_classes=2,
    )
    # BertForPreTraining's cls.* heads and the position-id buffer are skipped.
    extra = {
        **tensors,
        "cls.predictions.bias": np.zeros(128, np.float32),
        "bert.embeddings.position_ids": np.arange(64)[None],
    }
    kwargs, _ = import_bert(_bert_checkpoint(tmp_path / "pretraining", extra))
    assert kwargs["num_classes"] == 3
