"""Causal language modelling: next-token cross-entropy under a loss mask, perplexity, tokens/s.

Records hold ``tokens`` int32 [T+1] and ``loss_mask`` float32 [T+1] (1 = real token). The model
reads
``tokens[:, :-1]`` and is scored on predicting ``tokens[:, 1:]`` wherever ``loss_mask[:, 1:]`` is 1,
so padding at the end of a document or of the last window never counts. Evaluation also scores a
unigram model fitted on the training split (add-one smoothed) on exactly the same targets: the
baseline a language model must beat.

Packed records (``packed=True``: several sequences per row) also hold ``segment_ids`` int32 [T+1]
(equal nonzero ids = one sequence, 0 = padding) and ``positions`` int32 [T+1] (restarting at 0 for
each sequence); the model receives both (without the last position), and a target counts only
inside its own sequence, so each packed sequence scores as it would alone. A packed dataset's
records may also be whole documents (``tokens`` int [any length] only) that the loader packs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import DataError
from jaxdl.tasks.base import EXAMPLE_MASK, Batch, BatchSpec, Field, Forward, Task, masked_mean
from jaxdl.tasks.cross_entropy import token_cross_entropy


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed unigram log-probabilities float32 [vocab] from token counts [vocab]."""
    counts = np.asarray(counts, dtype=np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def _safe_exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


class LanguageModeling(Task):
    """Next-token prediction with a decoder LM: ``model(tokens[:, :-1])`` → logits [B, T, V].

    With ``packed`` the model is called as ``model(tokens[:, :-1], segment_ids=...,
    positions=...)`` and the target at input position t counts only when ``segment_ids[t+1] ==
    segment_ids[t] != 0``: the first token of a sequence is never predicted from the previous one.
    """

    name = "language_modeling"
    throughput_unit = "tokens"
    default_monitor = ("val_loss", "min")

    def __init__(
        self,
        seq_len: int,
        unigram_counts: np.ndarray | None = None,
        pad_id: int = 0,
        packed: bool = False,
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = int(seq_len)
        self.pad_id = int(pad_id)
        self.packed = bool(packed)
        self.unigram = None if unigram_counts is None else unigram_log_probs(unigram_counts)

    def batch_spec(self) -> BatchSpec:
        length = (self.seq_len + 1,)
        spec = {
            "tokens": Field(np.int32, length, pad_value=self.pad_id),
            "loss_mask": Field(np.float32, length, pad_value=0.0),
        }
        if self.packed:
            spec["segment_ids"] = Field(np.int32, length, pad_value=0)
            spec["positions"] = Field(np.int32, length, pad_value=0)
        return spec

    def model_inputs(self, batch: Batch) -> tuple[tuple, dict]:
        args = (batch["tokens"][:, :-1],)
        if not self.packed:
            return args, {}
        return args, {
            "segment_ids": batch["segment_ids"][:, :-1],
            "positions": batch["positions"][:, :-1],
        }

    def check_record(self, record: Mapping[str, Any], where: str) -> None:
        """Packed tasks also accept documents: records with only 1-D integer ``tokens`` of any
        length, which the loader packs into rows; everything else is checked against the spec."""
        if not self.packed or "segment_ids" in record:
            super().check_record(record, where)
            return
        tokens = np.asarray(record.get("tokens"))
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise DataError(
                f"{where}: packed task {self.name!r} needs packed rows or documents with 1-D "
                f"integer 'tokens'; records have {sorted(record)}"
            )

    def target_weights(self, batch: Batch) -> jax.Array:
        """Float32 [B, T]: 1 where predicting ``tokens[:, 1:]`` counts (see the class doc)."""
        weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
        if self.packed:
            segments = batch["segment_ids"]
            same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] != 0)
            weights = weights * same.astype(jnp.float32)
        return weights

    def _token_losses(self, forward: Forward, batch: Batch):
        """Per-position float32 NLL [B, T], targets [B, T], weights [B, T] and the logits (in the
        model's dtype: the loss upcasts inside its reductions)."""
        args, kwargs = self.model_inputs(batch)
        logits = forward(*args, **kwargs)
        targets = batch["tokens"][:, 1:]
        weights = self.target_weights(batch)
        nll = token_cross_entropy(logits, targets)
        return nll, targets, weights, logits

    def loss_weight(self, batch: Batch) -> jax.Array:
        """Target tokens: the loss is their mean."""
        return jnp.sum(self.target_weights(batch))

    def loss(self, forward: Forward, batch: Batch):
        nll, targets, weights, logits = self._token_losses(forward, batch)
        accuracy = masked_mean(jnp.argmax(logits, -1) == targets, weights)
        return masked_mean(nll, weights), {"accuracy": accuracy}

    def eval_sums(self, forward: Forward, batch: Batch) -> dict[str, jax.Array]:
        nll, targets, weights, logits = self._token_losses(forward, batch)
        weights = weights * batch[EXAMPLE_MASK].astype(jnp.float32)[:, None]
        sums = {
            "nll_sum": jnp.sum(nll * weights),
            "correct": jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
            "tokens": jnp.sum(weights),
        }
        if self.unigram is not None:
            log_probs = jnp.asarray(self.unigram)[targets]
            sums["unigram_nll_sum"] = -jnp.sum(log_probs * weights)
        return sums

    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
        tokens = max(float(sums["tokens"]), 1.0)
        loss = float(sums["nll_sum"]) / tokens
        results = {
            "loss": loss,
            "perplexity": _safe_exp(loss),
            "bits_per_token": loss / math.log(2),
            "accuracy": float(sums["correct"]) / tokens,
            "tokens": int(round(float(sums["tokens"]))),
        }
        if "unigram_nll_sum" in sums:
            unigram_loss = float(sums["unigram_nll_sum"]) / tokens
            results["unigram_loss"] = unigram_loss
            results["unigram_perplexity"] = _safe_exp(unigram_loss)
            results["perplexity_ratio_to_unigram"] = results["perplexity"] / _safe_exp(unigram_loss)
        return results

    def predict(self, forward: Forward, inputs: Batch) -> jax.Array:
        """The most likely next token at every position: int32 [B, T]."""
        args, kwargs = self.model_inputs(inputs)
        return jnp.argmax(forward(*args, **kwargs), -1).astype(jnp.int32)

    def throughput(self, global_batch_size: int) -> int:
        return global_batch_size * self.seq_len

    def summary_rows(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        rows = [
            ("loss (nats/token)", f"{results['loss']:.4f}"),
            ("perplexity", f"{results['perplexity']:.3f}"),
            ("next-token accuracy", f"{results['accuracy']:.4f}"),
        ]
        if "unigram_perplexity" in results:
            rows.append(("unigram perplexity", f"{results['unigram_perplexity']:.3f}"))
        return rows
