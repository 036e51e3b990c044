"""Tests for KV-cache generation: greedy equals full recomputation, sampling filters and keys,
beam search against exhaustive search, and generation under a sharded mesh."""

import functools
import itertools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.checkpoint import abstract_like
from jaxdl.cli import main
from jaxdl.config import read_config, save_config
from jaxdl.data.text_sources import ByteTokenizer
from jaxdl.experiment import build_experiment
from jaxdl.models import TransformerLM
from jaxdl.models.generation import beam_search, generate, init_cache, top_k_filter, top_p_filter
from jaxdl.parallel import DEFAULT_RULES, logical_to_shardings, make_mesh
from jaxdl.train import Trainer
from tests.helpers import tiny_digits_config

KEY = jax.random.key(0, impl="rbg")
TINY = dict(vocab_size=16, num_layers=2, num_heads=4, embed_dim=16, mlp_dim=32, max_len=12)
MODERN = dict(norm="rms", mlp_activation="swiglu", position_embedding="rotary", num_kv_heads=2)
PROMPT = jax.random.randint(jax.random.key(1), (2, 3), 0, 16)
NEW = 6


@functools.cache
def _model_and_params(**overrides):
    model = TransformerLM(**{**TINY, **overrides})
    return model, jax.jit(lambda t: model.init(KEY, t, train=False))(PROMPT)["params"]


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(model, params, tokens):
    return model.apply({"params": params}, tokens, train=False)


def _greedy_by_recomputation(model, params, prompt, steps):
    """Greedy decoding the slow way: the full forward over everything so far at each step
    (a fixed-size buffer, so one compile; causal masking hides the unfilled tail)."""
    length = prompt.shape[1]
    buffer = jnp.zeros((prompt.shape[0], length + steps), jnp.int32).at[:, :length].set(prompt)
    for t in range(length, length + steps):
        next_token = jnp.argmax(_full_logits(model, params, buffer)[:, t - 1], axis=-1)
        buffer = buffer.at[:, t].set(next_token)
    return buffer[:, length:]


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(scan_layers=False, tie_embeddings=False), MODERN],
    ids=["gpt2", "unrolled-untied", "rotary-gqa-rms-swiglu"],
)
def test_cached_greedy_equals_greedy_by_full_recomputation(overrides):
    model, params = _model_and_params(**overrides)
    tokens = generate(model, params, PROMPT, max_new_tokens=NEW)
    assert tokens.shape == (2, NEW)
    expected = _greedy_by_recomputation(model, params, PROMPT, NEW)
    np.testing.assert_array_equal(tokens, expected)


def test_cache_is_sized_by_the_request_and_named_for_sharding():
    model, _ = _model_and_params(**MODERN)
    cache = init_cache(model, 2, 9)["decoder"]["layers"]["attention"]
    # Grouped-query attention caches only the kv heads: [layers, batch, length, kv_heads, dim].
    assert cache["cached_key"].shape == (2, 2, 9, 2, 4)
    assert cache["cache_index"].shape == (2,)


def test_sampling_is_deterministic_per_key_and_top_k_1_is_greedy():
    model, params = _model_and_params()
    sample = functools.partial(generate, model, params, PROMPT, max_new_tokens=NEW)
    first, again = sample(temperature=1.0, key=KEY), sample(temperature=1.0, key=KEY)
    np.testing.assert_array_equal(first, again)
    other = sample(temperature=1.0, key=jax.random.key(7, impl="rbg"))
    assert not np.array_equal(first, other)
    greedy = sample()
    np.testing.assert_array_equal(sample(temperature=1.0, top_k=1, key=KEY), greedy)
    # A nucleus below the top token's probability keeps only that token.
    np.testing.assert_array_equal(sample(temperature=0.7, top_p=1e-6, key=KEY), greedy)


def test_top_k_and_top_p_keep_the_expected_tokens_of_a_known_distribution():
    probs = np.array([0.15, 0.5, 0.05, 0.3])  # descending: tokens 1, 3, 0, 2
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda filtered: set(np.flatnonzero(np.isfinite(np.asarray(filtered))))  # noqa: E731
    assert kept(top_k_filter(logits, 1)) == {1}
    assert kept(top_k_filter(logits, 3)) == {0, 1, 3}
    # The smallest set of most probable tokens whose probability reaches p.
    assert kept(top_p_filter(logits, 0.4)) == {1}
    assert kept(top_p_filter(logits, 0.6)) == {1, 3}
    assert kept(top_p_filter(logits, 0.9)) == {0, 1, 3}
    assert kept(top_p_filter(logits, 0.99)) == {0, 1, 2, 3}
    # Kept logits are unchanged; rows are filtered independently.
    batch = jnp.stack([logits, logits[::-1]])
    filtered = top_p_filter(batch, 0.6)
    np.testing.assert_array_equal(np.isfinite(filtered), [[0, 1, 0, 1], [1, 0, 1, 0]])
    np.testing.assert_allclose(filtered[0, 1], logits[1])


def _sequence_log_probs(model, params, prompt, continuations):
    """Sum of the continuation tokens' log-probabilities under the full forward pass."""
    tokens = jnp.concatenate(
        [jnp.broadcast_to(prompt, (len(continuations), prompt.size)), continuations], axis=1
    )
    log_probs = jax.nn.log_softmax(_full_logits(model, params, tokens), axis=-1)
    start = prompt.size
    picked = jnp.take_along_axis(log_probs[:, start - 1 : -1], continuations[..., None], axis=-1)
    return picked[..., 0].sum(axis=1)


def test_beam_search_with_one_beam_is_greedy():
    model, params = _model_and_params(**MODERN)
    tokens, scores = beam_search(model, params, PROMPT, max_new_tokens=NEW, beams=1)
    np.testing.assert_array_equal(tokens, generate(model, params, PROMPT, max_new_tokens=NEW))
    for row in range(2):
        recomputed = _sequence_log_probs(model, params, PROMPT[row], tokens[row][None])
        np.testing.assert_allclose(scores[row], recomputed[0], rtol=1e-5)


def test_beam_search_finds_the_most_probable_continuation():
    # Vocabulary 4, 3 new tokens: 16 beams keep every prefix, so the search is exhaustive.
    model = TransformerLM(**{**TINY, "vocab_size": 4})
    prompt = jnp.array([[1, 2, 3], [3, 0, 0]])
    params = jax.jit(lambda t: model.init(KEY, t, train=False))(prompt)["params"]
    tokens, scores = beam_search(model, params, prompt, max_new_tokens=3, beams=16)
    everything = jnp.array(list(itertools.product(range(4), repeat=3)))
    for row in range(2):
        log_probs = _sequence_log_probs(model, params, prompt[row], everything)
        best = int(jnp.argmax(log_probs))
        np.testing.assert_array_equal(tokens[row], everything[best])
        np.testing.assert_allclose(scores[row], log_probs[best], rtol=1e-5)
    # Two beams need not find it, but report the true score of what they return.
    tokens, scores = beam_search(model, params, prompt, max_new_tokens=3, beams=2)
    for row in range(2):
        recomputed = _sequence_log_probs(model, params, prompt[row], tokens[row][None])
        np.testing.assert_allclose(scores[row], recomputed[0], rtol=1e-5)


def test_generation_under_a_mesh_shards_the_cache_and_matches_one_device():
    model, params = _model_and_params(**MODERN)
    expected = generate(model, params, PROMPT, max_new_tokens=NEW)
    mesh = make_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        abstract = jax.eval_shape(lambda: model.init(KEY, PROMPT, train=False))
    sharded = jax.device_put(nn.unbox(params), logical_to_shardings(abstract, mesh)["params"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        tokens = generate(model, sharded, PROMPT, max_new_tokens=NEW)
        cache = jax.jit(lambda: init_cache(model, 2, 9))()
    np.testing.assert_array_equal(tokens, expected)
    cached_key = cache["decoder"]["layers"]["attention"]["cached_key"]
    # [layers, batch, length, kv_heads, dim]: batch over 'data', kv heads over 'tensor'.
    assert cached_key.sharding.shard_shape(cached_key.shape) == (2, 1, 9, 1, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_new_tokens=10), "exceeds the model's max_len=12"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=2, temperature=1.0), "needs a PRNG key"),
        (dict(max_new_tokens=2, temperature=1.0, top_p=0.0, key=KEY), "top_p"),
        (dict(max_new_tokens=2, temperature=1.0, top_k=17, key=KEY), "top_k"),
    ],
)
def test_bad_requests_get_clear_errors(kwargs, message):
    model, params = _model_and_params()
    with pytest.raises(ValueError, match=message):
        generate(model, params, PROMPT, **kwargs)


LM_CONFIG = "experiments/lm_pydoc.py:steps=4,layers=1,width=32,seq_len=16,batch_size=8"


@pytest.fixture(scope="module")
def lm_workdir(tmp_path_factory):
    """A tiny byte-level LM trained for four steps through the CLI."""
    workdir = str(tmp_path_factory.mktemp("lm"))
    args = ["--config", LM_CONFIG, "--workdir", workdir, "--config.schedule.warmup_steps=1"]
    assert main(["train", *args]) == 0
    return workdir


def _cli_generate(capsys, workdir, *args):
    capsys.readouterr()
    assert main(["generate", "--workdir", workdir, *args]) == 0
    return capsys.readouterr().out


@pytest.mark.slow  # trains an LM through the CLI first (~35 s)
def test_cli_generate_continues_the_prompt_with_the_trained_checkpoint(lm_workdir, capsys):
    out = _cli_generate(
        capsys, lm_workdir, "--prompt", "def f(", "--max-new-tokens", "6", "--temperature", "0"
    )
    # The same greedy continuation from the checkpoint the way `jaxdl evaluate` loads it.
    experiment = build_experiment(read_config(os.path.join(lm_workdir, "config.json")))
    trainer = Trainer(experiment, lm_workdir, quiet=True)
    state, _ = trainer.checkpointer.restore_best(abstract_like(trainer.state))
    trainer.checkpointer.close()
    trainer.release()
    prompt = jnp.asarray(ByteTokenizer().encode("def f("), jnp.int32)[None]
    expected = _greedy_by_recomputation(experiment.model, state.params, prompt, 6)
    assert out == ByteTokenizer().decode(np.asarray(expected[0])) + "\n"
    assert _cli_generate(
        capsys, lm_workdir, "--prompt", "def f(", "--max-new-tokens", "6", "--beams", "2"
    ).endswith("\n")
    sampled = ["--prompt", "x", "--max-new-tokens", "5", "--top-k", "50", "--top-p", "0.9"]
    assert _cli_generate(capsys, lm_workdir, *sampled) == _cli_generate(
        capsys, lm_workdir, *sampled
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prompt", ""), "the prompt is empty"),
        (("--prompt", "x", "--top-p", "1.5"), "not in (0, 1]"),
        (("--prompt", "x" * 12, "--max-new-tokens", "8"), "room for at most 4 new tokens"),
    ],
)
def test_cli_generate_refuses_bad_requests_in_one_line(lm_workdir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--workdir", lm_workdir, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_generate_needs_a_language_model_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--workdir", str(tmp_path), "--prompt", "x"])
    assert exit_.value.code == 2
    save_config(tiny_digits_config(3), tmp_path / "config.json")
    with pytest.raises(SystemExit):
        main(["generate", "--workdir", str(tmp_path), "--prompt", "x"])
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "checkpoints" / "1").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--workdir", str(tmp_path), "--prompt", "x"])
    assert exit_.value.code == 2
    assert "not a language-model workdir" in capsys.readouterr().err
