"""Masked language modelling (BERT's pre-training objective) over token sequences.

Records hold ``tokens`` int32 [T] (right-padded with ``pad_id``; any other fields, such as a
classification label, are ignored), so the data of a text classifier pre-trains its encoder
unchanged. Each training step masks afresh on device (``prepare_train_batch``): every real,
non-special token is selected with probability ``mask_rate``; a selected token becomes the
tokenizer's mask token with probability ``replace_with_mask``, a random regular token with
probability ``replace_with_random``, and stays itself otherwise (Devlin et al. 2019: 15%,
80/10/10). The loss is the cross-entropy of the original tokens at the selected positions only.

Evaluation masks each example by a key derived from its own tokens, so a split's score is
reproducible and independent of batch size, order and host count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.tasks.base import EXAMPLE_MASK, Batch, BatchSpec, Field, Forward, Task, masked_mean
from jaxdl.tasks.cross_entropy import token_cross_entropy

# Batch fields the masking adds next to the loader's ``tokens``.
MASKED_INPUTS = "mlm_inputs"
MASKED_WEIGHTS = "mlm_weights"
_EVAL_SEED = 0x5EED


def _example_keys(base: jax.Array, tokens: jax.Array) -> jax.Array:
    """One PRNG key per row of ``tokens`` [B, T], a function of that row's tokens only."""
    weights = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.uint32) * jnp.uint32(2654435761)
    hashes = jnp.sum(tokens.astype(jnp.uint32) * weights, axis=1)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, hashes)


class MaskedLanguageModeling(Task):
    """Predict selected tokens of ``tokens`` from the sequence with them masked.

    The model is called as ``model(masked_tokens, padding_mask=tokens != pad_id, train=...)``
    and returns logits [B, T, vocab] (``TransformerMaskedLM``). ``special_ids`` (padding, CLS,
    the mask token, ...) are never selected, and random replacements are drawn from the ids
    at or above ``first_regular_id``.
    """

    name = "masked_lm"
    throughput_unit = "tokens"
    default_monitor = ("val_loss", "min")

    def __init__(
        self,
        max_len: int,
        vocab_size: int,
        mask_id: int,
        pad_id: int = 0,
        special_ids: Sequence[int] = (),
        first_regular_id: int = 0,
        mask_rate: float = 0.15,
        replace_with_mask: float = 0.8,
        replace_with_random: float = 0.1,
    ):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if not 0 <= mask_id < vocab_size:
            raise ValueError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
        if not 0.0 < mask_rate <= 1.0:
            raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}")
        if min(replace_with_mask, replace_with_random) < 0 or (
            replace_with_mask + replace_with_random > 1.0
        ):
            raise ValueError(
                "replace_with_mask and replace_with_random must be >= 0 and sum to <= 1, got "
                f"{replace_with_mask} and {replace_with_random}"
            )
        if not 0 <= first_regular_id < vocab_size:
            raise ValueError(
                f"first_regular_id {first_regular_id} is outside the vocabulary [0, {vocab_size})"
            )
        self.max_len = int(max_len)
        self.vocab_size = int(vocab_size)
        self.mask_id = int(mask_id)
        self.pad_id = int(pad_id)
        self.special_ids = tuple(sorted({int(i) for i in (*special_ids, pad_id, mask_id)}))
        self.first_regular_id = int(first_regular_id)
        self.mask_rate = float(mask_rate)
        self.replace_with_mask = float(replace_with_mask)
        self.replace_with_random = float(replace_with_random)

    def batch_spec(self) -> BatchSpec:
        return {"tokens": Field(np.int32, (self.max_len,), pad_value=self.pad_id)}

    def mask(self, keys: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(masked_tokens int32 [B, T], selected float32 [B, T])`` for ``tokens`` [B, T],
        row ``b`` drawn with ``keys[b]``."""

        def draw(key):
            select_key, kind_key, random_key = jax.random.split(key, 3)
            shape = tokens.shape[1:]
            return (
                jax.random.uniform(select_key, shape),
                jax.random.uniform(kind_key, shape),
                jax.random.randint(random_key, shape, self.first_regular_id, self.vocab_size),
            )

        select_u, kind_u, random_ids = jax.vmap(draw)(keys)
        maskable = ~jnp.isin(tokens, jnp.asarray(self.special_ids, tokens.dtype))
        selected = maskable & (select_u < self.mask_rate)
        to_mask = selected & (kind_u < self.replace_with_mask)
        to_random = (
            selected
            & (kind_u >= self.replace_with_mask)
            & (kind_u < self.replace_with_mask + self.replace_with_random)
        )
        masked = jnp.where(to_mask, self.mask_id, tokens)
        masked = jnp.where(to_random, random_ids.astype(tokens.dtype), masked)
        return masked, selected.astype(jnp.float32)

    def _with_masks(self, keys: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        masked, selected = self.mask(keys, batch["tokens"])
        return {**batch, MASKED_INPUTS: masked, MASKED_WEIGHTS: selected}

    def prepare_train_batch(self, key: jax.Array, batch: Batch) -> Batch:
        """Fresh masks every step."""
        keys = jax.random.split(key, batch["tokens"].shape[0])
        return self._with_masks(keys, batch)

    def model_inputs(self, batch: Batch) -> tuple[tuple, dict]:
        tokens = batch["tokens"]
        return (batch.get(MASKED_INPUTS, tokens),), {"padding_mask": tokens != self.pad_id}

    def _token_losses(self, forward: Forward, batch: Batch):
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        nll = token_cross_entropy(logits, batch["tokens"])
        return nll, logits

    def loss_weight(self, batch: Batch) -> jax.Array:
        """Selected tokens: the loss is their mean."""
        return jnp.sum(batch[MASKED_WEIGHTS])

    def loss(self, forward: Forward, batch: Batch):
        nll, logits = self._token_losses(forward, batch)
        weights = batch[MASKED_WEIGHTS]
        accuracy = masked_mean(jnp.argmax(logits, -1) == batch["tokens"], weights)
        return masked_mean(nll, weights), {"accuracy": accuracy}

    def eval_sums(self, forward: Forward, batch: Batch) -> dict[str, jax.Array]:
        keys = _example_keys(jax.random.PRNGKey(_EVAL_SEED), batch["tokens"])
        batch = self._with_masks(keys, batch)
        nll, logits = self._token_losses(forward, batch)
        weights = batch[MASKED_WEIGHTS] * batch[EXAMPLE_MASK].astype(jnp.float32)[:, None]
        return {
            "nll_sum": jnp.sum(nll * weights),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["tokens"]) * weights),
            "tokens": jnp.sum(weights),
        }

    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
        tokens = max(float(sums["tokens"]), 1.0)
        loss = float(sums["nll_sum"]) / tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "accuracy": float(sums["correct"]) / tokens,
            "tokens": int(round(float(sums["tokens"]))),
        }

    def predict(self, forward: Forward, inputs: Batch) -> jax.Array:
        """The most likely token at every position of ``inputs['tokens']`` (masks in place):
        int32 [B, T]."""
        tokens = inputs["tokens"]
        logits = forward(tokens, padding_mask=tokens != self.pad_id)
        return jnp.argmax(logits, -1).astype(jnp.int32)

    def throughput(self, global_batch_size: int) -> int:
        return global_batch_size * self.max_len

    def summary_rows(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [
            ("masked-token loss (nats)", f"{results['loss']:.4f}"),
            ("masked-token perplexity", f"{results['perplexity']:.3f}"),
            ("masked-token accuracy", f"{results['accuracy']:.4f}"),
        ]
