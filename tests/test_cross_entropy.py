"""Tests for ``jaxdl.tasks.cross_entropy.token_cross_entropy``: values and gradients against
torch's ``F.cross_entropy``, float32 results from bf16 logits, input checks, and bf16 language
models giving the same loss and gradients with or without float32 logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxdl.models import TransformerLM
from jaxdl.models.generation import generate
from jaxdl.tasks import LanguageModeling
from jaxdl.tasks.cross_entropy import token_cross_entropy

RNG = np.random.default_rng(0)
LOGITS = (4.0 * RNG.standard_normal((3, 5, 37))).astype(np.float32)
LABELS = RNG.integers(0, 37, (3, 5)).astype(np.int32)
WEIGHTS = RNG.uniform(size=(3, 5)).astype(np.float32)


def _weighted_loss(logits):
    return jnp.sum(token_cross_entropy(logits, jnp.asarray(LABELS)) * WEIGHTS)


def test_values_and_gradients_equal_torch():
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 37), torch.tensor(LABELS).reshape(-1).long(), reduction="none"
    ).reshape(3, 5)
    (nll * torch.tensor(WEIGHTS, dtype=torch.float64)).sum().backward()

    ours = token_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS))
    grad = jax.jit(jax.grad(_weighted_loss))(jnp.asarray(LOGITS))
    np.testing.assert_allclose(ours, nll.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, logits.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_bf16_logits_give_float32_losses_and_bf16_gradients():
    low = jnp.asarray(LOGITS).astype(jnp.bfloat16)
    wide = low.astype(jnp.float32)  # the same values, exactly
    nll = token_cross_entropy(low, jnp.asarray(LABELS))
    grad = jax.grad(_weighted_loss)(low)
    assert nll.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    # The loss is computed in float32: equal to the float32 loss of the same values.
    np.testing.assert_allclose(nll, token_cross_entropy(wide, jnp.asarray(LABELS)), rtol=1e-6)
    # The gradient is the float32 one, rounded once to bf16.
    expected = jax.grad(_weighted_loss)(wide).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(expected, np.float32))


def test_large_logits_do_not_overflow():
    logits = jnp.array([[1e4, 0.0, -1e4]], jnp.float32)
    nll = token_cross_entropy(logits, jnp.array([1]))
    np.testing.assert_allclose(nll, [1e4], rtol=1e-6)
    grad = jax.grad(lambda x: token_cross_entropy(x, jnp.array([0])).sum())(logits)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (jnp.zeros((2, 5), jnp.int32), jnp.zeros((2,), jnp.int32), "float logits"),
        (jnp.zeros((2, 5)), jnp.zeros((2,)), "integer labels"),
        (jnp.zeros((2, 5)), jnp.zeros((3,), jnp.int32), "without the last"),
    ],
)
def test_bad_inputs_are_refused(logits, labels, message):
    with pytest.raises((TypeError, ValueError), match=message):
        token_cross_entropy(logits, labels)


def _bf16_lm(cast: bool) -> TransformerLM:
    return TransformerLM(
        vocab_size=97,
        num_layers=1,
        num_heads=2,
        embed_dim=32,
        mlp_dim=64,
        max_len=16,
        dtype=jnp.bfloat16,
        scan_layers=False,
        cast_logits_to_fp32=cast,
    )


@pytest.mark.slow  # CI time (18 s): the bf16 LM test of test_transformer.py stays
def test_bf16_logits_leave_the_language_model_loss_and_gradients_unchanged():
    tokens = RNG.integers(0, 97, (4, 17)).astype(np.int32)
    batch = {"tokens": tokens, "loss_mask": np.ones((4, 17), np.float32)}
    task = LanguageModeling(16)
    init = jax.jit(lambda key: _bf16_lm(True).init(key, tokens[:, :-1], train=False))
    params = init(jax.random.key(0))["params"]

    def loss_and_grad(cast):
        model = _bf16_lm(cast)

        def loss(p):
            return task.loss(
                lambda *a, **k: model.apply({"params": p}, *a, train=False, **k), batch
            )

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (fp32_loss, fp32_aux), fp32_grad = loss_and_grad(True)
    (bf16_loss, bf16_aux), bf16_grad = loss_and_grad(False)
    logits = jax.eval_shape(
        lambda p: _bf16_lm(False).apply({"params": p}, tokens[:, :-1], train=False), params
    )
    assert logits.dtype == jnp.bfloat16
    assert float(fp32_loss) == float(bf16_loss) and float(fp32_aux["accuracy"]) == float(
        bf16_aux["accuracy"]
    )
    jax.tree.map(np.testing.assert_array_equal, fp32_grad, bf16_grad)
    # Generation samples from float32 logits either way.
    prompt = jnp.asarray(tokens[:2, :4])
    np.testing.assert_array_equal(
        generate(_bf16_lm(True), params, prompt, max_new_tokens=6),
        generate(_bf16_lm(False), params, prompt, max_new_tokens=6),
    )
