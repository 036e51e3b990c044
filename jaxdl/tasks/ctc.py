"""Speech recognition with CTC: waveforms in, character transcripts out.

Batches hold padded waveforms (``audio`` float32 [N], ``audio_length``) and character ids
(``labels`` int32 [L], ``label_length``; id 0 is CTC's blank and never a label). The front end
(``jaxdl.audio.compute_features``: log-mel or MFCC, per-utterance normalisation) runs on device
inside the step, and so does SpecAugment (``prepare_train_batch``, training only). The model maps
``(features [B, T, F], lengths [B])`` to ``(logits [B, T', V], out_lengths [B])``.

Loss: ``optax.ctc_loss`` per utterance, summed and divided by the number of target characters.
Two float32 traps are guarded: an utterance whose labels cannot be aligned in its frames
(``optax`` returns ~1e5 for it) is left out of the loss and counted (``infeasible``), and the
slightly negative values ``optax`` can return for near-certain alignments are clipped to 0.

Evaluation decodes greedily on device and counts edit operations exactly (characters and
words), so WER and CER are sums over batches and hosts like every other metric; ``report``
writes per-utterance transcripts with ``jiwer``'s alignment counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl.audio import FrontEndConfig, compute_features, perturb_waveforms, spec_augment
from jaxdl.data.records import RecordError
from jaxdl.metrics.edit_distance import error_counts
from jaxdl.models.ctc_decoding import beam_search_batch, ctc_greedy_decode
from jaxdl.tasks.base import EXAMPLE_MASK, Batch, BatchSpec, Field, Forward, Task

# Batch fields ``prepare_train_batch`` adds: the augmented features and their lengths.
FEATURES = "features"
FEATURE_LENGTHS = "feature_lengths"
# SpecAugment's settings (``jaxdl.audio.spec_augment`` keywords) the task accepts.
SPEC_AUGMENT_KEYS = (
    "freq_masks",
    "freq_width",
    "time_masks",
    "time_width",
    "max_time_fraction",
    "time_mask_fraction",
    "time_warp",
)
# Waveform augmentation settings (``jaxdl.audio.perturb_waveforms`` keywords).
WAVEFORM_AUGMENT_KEYS = ("speed_factors", "noise_prob", "snr_db")


def required_frames(labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """Fewest frames a CTC alignment of each label sequence needs: its length plus one blank
    between each pair of equal neighbours. [B]"""
    valid = jnp.arange(labels.shape[1])[None, :] < label_lengths[:, None]
    repeats = (labels[:, 1:] == labels[:, :-1]) & valid[:, 1:]
    return label_lengths + jnp.sum(repeats, axis=1)


def ctc_losses(
    logits: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    label_lengths: jax.Array,
    blank_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """``(losses [B], feasible [B] bool)``: per-utterance CTC negative log-likelihoods (0 where
    no alignment exists, clipped at 0 below) and whether an alignment exists."""
    frames = jnp.arange(logits.shape[1])[None, :]
    logit_paddings = (frames >= logit_lengths[:, None]).astype(jnp.float32)
    positions = jnp.arange(labels.shape[1])[None, :]
    label_paddings = (positions >= label_lengths[:, None]).astype(jnp.float32)
    losses = optax.ctc_loss(
        logits.astype(jnp.float32), logit_paddings, labels, label_paddings, blank_id=blank_id
    )
    feasible = (required_frames(labels, label_lengths) <= logit_lengths) & (label_lengths > 0)
    return jnp.where(feasible, jnp.maximum(losses, 0.0), 0.0), feasible


@dataclasses.dataclass(frozen=True)
class CTCSpeechRecognition(Task):
    """Character-level CTC speech recognition (see the module docstring).

    ``max_samples`` / ``max_label_len``: the padded waveform and transcript lengths of the
    data; ``front_end``: the feature settings; ``spec_augment`` / ``waveform_augment``:
    ``spec_augment`` / ``perturb_waveforms`` keywords (empty: off); ``space_id``: the id of ' '
    (word boundaries for WER; -1 when the vocabulary has none, and every transcript is then one
    word). ``beam_width`` > 0 adds prefix beam search to ``report`` (host side), shallow-fused
    with ``lm`` (a ``CharNgramLM`` or ``LexiconWordLM`` of the training transcripts) at
    ``lm_weight`` with ``word_bonus`` per word, trying per frame only the labels at least
    ``token_min_log_prob`` likely (and the likeliest; None: all); evaluation during training
    stays greedy.
    """

    max_samples: int
    max_label_len: int
    front_end: FrontEndConfig = FrontEndConfig()
    spec_augment: tuple[tuple[str, Any], ...] = ()
    waveform_augment: tuple[tuple[str, Any], ...] = ()
    blank_id: int = 0
    space_id: int = -1
    tokenizer: Any = dataclasses.field(default=None, compare=False)
    beam_width: int = 0
    lm: Any = dataclasses.field(default=None, compare=False)
    lm_weight: float = 0.5
    word_bonus: float = 0.0
    token_min_log_prob: float | None = None

    name = "ctc"
    throughput_unit = "utterances"
    default_monitor = ("val_wer", "min")

    def __post_init__(self) -> None:
        if self.max_samples < 1 or self.max_label_len < 1:
            raise ValueError(
                f"max_samples and max_label_len must be >= 1, got {self.max_samples} and "
                f"{self.max_label_len}"
            )
        for name, settings, known in (
            ("spec_augment", self.spec_augment, SPEC_AUGMENT_KEYS),
            ("waveform_augment", self.waveform_augment, WAVEFORM_AUGMENT_KEYS),
        ):
            unknown = sorted({key for key, _ in settings} - set(known))
            if unknown:
                raise ValueError(f"unknown {name} setting {unknown[0]!r}; known: {list(known)}")

    def batch_spec(self) -> BatchSpec:
        return {
            "audio": Field(np.float32, (self.max_samples,), length_field="audio_length"),
            "audio_length": Field(np.int32),
            "labels": Field(np.int32, (self.max_label_len,), pad_value=self.blank_id),
            "label_length": Field(np.int32),
        }

    def features(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Front-end features [B, T, F] and their valid lengths [B] of the batch's waveforms."""
        return compute_features(self.front_end, batch["audio"], batch["audio_length"])

    def prepare_train_batch(self, key: jax.Array, batch: Batch) -> Batch:
        """Features computed once per step, after waveform augmentation (speed, noise) and
        with SpecAugment, each drawn from ``key`` when on."""
        wave_key, spec_key = jax.random.split(key)
        if self.waveform_augment:
            # Room for the slowest speed first, so a slowed utterance is never cut short (a
            # length-bucketed batch is padded only to its longest utterance).
            slowest = min(dict(self.waveform_augment).get("speed_factors", (1.0, 1.0)))
            size = batch["audio"].shape[1]
            room = max(math.ceil(size / slowest) - size, 0) if slowest > 0 else 0
            audio = jnp.pad(batch["audio"], ((0, 0), (0, room)))
            audio, audio_lengths = perturb_waveforms(
                wave_key, audio, batch["audio_length"], **dict(self.waveform_augment)
            )
            batch = {**batch, "audio": audio, "audio_length": audio_lengths}
        features, lengths = self.features(batch)
        if self.spec_augment:
            features = spec_augment(spec_key, features, lengths, **dict(self.spec_augment))
        return {**batch, FEATURES: features, FEATURE_LENGTHS: lengths}

    def model_inputs(self, batch: Batch) -> tuple[tuple, dict]:
        if FEATURES in batch:
            return (batch[FEATURES], batch[FEATURE_LENGTHS]), {}
        return self.features(batch), {}

    def _outputs(self, forward: Forward, batch: Batch) -> tuple[jax.Array, jax.Array]:
        args, kwargs = self.model_inputs(batch)
        logits, out_lengths = forward(*args, **kwargs)
        return logits.astype(jnp.float32), out_lengths.astype(jnp.int32)

    def loss_weight(self, batch: Batch) -> jax.Array:
        """Target characters: the loss is the mean negative log-likelihood per character."""
        return jnp.sum(batch["label_length"]).astype(jnp.float32)

    def loss(self, forward: Forward, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits, out_lengths = self._outputs(forward, batch)
        losses, feasible = ctc_losses(
            logits, out_lengths, batch["labels"], batch["label_length"], self.blank_id
        )
        chars = jnp.sum(jnp.where(feasible, batch["label_length"], 0)).astype(jnp.float32)
        loss = jnp.sum(losses) / jnp.maximum(chars, 1.0)
        return loss, {"infeasible": jnp.mean(1.0 - feasible.astype(jnp.float32))}

    def eval_sums(self, forward: Forward, batch: Batch) -> dict[str, jax.Array]:
        logits, out_lengths = self._outputs(forward, batch)
        labels, label_lengths = batch["labels"], batch["label_length"]
        losses, feasible = ctc_losses(logits, out_lengths, labels, label_lengths, self.blank_id)
        real = batch[EXAMPLE_MASK].astype(jnp.float32)
        hyp, hyp_lengths = ctc_greedy_decode(logits, out_lengths, self.blank_id)
        counts = error_counts(hyp, hyp_lengths, labels, label_lengths, self.space_id)
        sums = {name: jnp.sum(value * real) for name, value in counts.items()}
        scored = real * feasible.astype(jnp.float32)
        return {
            **sums,
            "nll_sum": jnp.sum(losses * scored),
            "loss_chars": jnp.sum(label_lengths * scored),
            "infeasible": jnp.sum(real * (1.0 - feasible.astype(jnp.float32))),
            "utterances": jnp.sum(real),
        }

    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
        def ratio(errors: str, total: str) -> float:
            return float(sums[errors]) / max(float(sums[total]), 1.0)

        return {
            "loss": ratio("nll_sum", "loss_chars"),
            "wer": ratio("word_errors", "ref_words"),
            "cer": ratio("char_errors", "ref_chars"),
            "utterances": int(round(float(sums["utterances"]))),
            "infeasible": int(round(float(sums["infeasible"]))),
        }

    def predict(self, forward: Forward, inputs: Batch) -> jax.Array:
        """Greedy transcripts: token ids [B, T'] left-aligned, padded with the blank id."""
        logits, out_lengths = self._outputs(forward, inputs)
        tokens, _ = ctc_greedy_decode(logits, out_lengths, self.blank_id)
        return tokens

    def input_spec(self) -> BatchSpec:
        spec = self.batch_spec()
        return {name: spec[name] for name in ("audio", "audio_length")}

    def serving_outputs(self, forward: Forward, inputs: Batch) -> dict[str, jax.Array]:
        """``log_probs`` [B, T', V] (float32) and ``lengths`` [B] (valid frames of each)."""
        log_probs, lengths = self.report_outputs(forward, inputs)
        return {"log_probs": log_probs, "lengths": lengths}

    def report_outputs(self, forward: Forward, inputs: Batch) -> tuple[jax.Array, jax.Array]:
        """What ``report`` decodes on the host: log-probabilities [B, T', V] and lengths [B]."""
        logits, out_lengths = self._outputs(forward, inputs)
        return jax.nn.log_softmax(logits, axis=-1), out_lengths

    def decode(self, log_probs: np.ndarray, lengths: np.ndarray) -> dict[str, list[str]]:
        """Greedy transcripts (and beam-search ones when ``beam_width`` > 0) of a batch."""
        decoders = {"greedy": ctc_greedy_decode(log_probs, lengths, self.blank_id)}
        if self.beam_width > 0:
            decoders["beam"] = beam_search_batch(
                log_probs,
                lengths,
                beam_width=self.beam_width,
                blank_id=self.blank_id,
                lm=self.lm,
                lm_weight=self.lm_weight,
                word_bonus=self.word_bonus,
                space_id=None if self.space_id < 0 else self.space_id,
                token_min_log_prob=self.token_min_log_prob,
            )
        return {
            name: [
                self.tokenizer.decode(row[: int(n)])
                for row, n in zip(np.asarray(tokens), np.asarray(count), strict=True)
            ]
            for name, (tokens, count) in decoders.items()
        }

    def report(
        self,
        outputs: Callable[[Batch], tuple[np.ndarray, np.ndarray]],
        records: Any,
        batch_size: int,
        path: str,
    ) -> dict[str, Any]:
        """Per-utterance transcripts of ``records`` written to ``path`` (JSON lines: reference,
        each decoder's hypothesis, jiwer's substitutions/deletions/insertions of the best
        decoder, the manifest's metadata); the split's WER/CER recomputed by ``jiwer`` for each
        decoder, and the best decoder's WER per accent when the manifest has an ``accent``
        column (else one group)."""
        import jiwer

        if self.tokenizer is None:
            return {}
        rows = transcribe_records(outputs, records, self.decode, batch_size)
        if not rows:
            return {}
        references = [row["reference"] for row in rows]
        results: dict[str, Any] = {}
        for decoder in rows[0]["hypotheses"]:
            hypotheses = [row["hypotheses"][decoder] for row in rows]
            suffix = "jiwer" if decoder == "greedy" else decoder
            results[f"wer_{suffix}"] = float(jiwer.wer(references, hypotheses))
            results[f"cer_{suffix}"] = float(jiwer.cer(references, hypotheses))
        best = "beam" if "beam" in rows[0]["hypotheses"] else "greedy"
        metadata = getattr(getattr(records, "source", None), "metadata", {})
        groups: dict[str, list[dict[str, Any]]] = {}
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                words = jiwer.process_words(row["reference"], row["hypotheses"][best])
                row |= {
                    "substitutions": words.substitutions,
                    "deletions": words.deletions,
                    "insertions": words.insertions,
                    "ref_words": len(row["reference"].split()),
                }
                row |= {name: values[row["index"]] for name, values in metadata.items()}
                groups.setdefault(str(row.get("accent", "all")), []).append(row)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

        def wer(group: list[dict[str, Any]]) -> float:
            errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in group)
            return errors / max(sum(r["ref_words"] for r in group), 1)

        return results | {
            "report_decoder": best,
            "wer_by_group": {name: wer(group) for name, group in sorted(groups.items())},
            "transcripts": os.path.basename(path),
        }

    def summary_rows(self, results: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Each WER/CER row names its decoder: ``wer``/``cer`` are greedy (computed on device
        while training), ``wer_beam``/``cer_beam`` the report's beam search, and the per-group
        WERs are the report decoder's."""
        rows = [
            ("loss", f"{results['loss']:.4f}"),
            ("WER (greedy)", f"{results['wer']:.4f}"),
            ("CER (greedy)", f"{results['cer']:.4f}"),
        ]
        if "wer_beam" in results:
            rows.append(("WER (beam)", f"{results['wer_beam']:.4f}"))
            rows.append(("CER (beam)", f"{results['cer_beam']:.4f}"))
        decoder = results.get("report_decoder", "greedy")
        for group, wer in sorted((results.get("wer_by_group") or {}).items()):
            rows.append((f"WER {group} ({decoder})", f"{wer:.4f}"))
        return rows


def transcribe_records(
    outputs: Callable[[Batch], tuple[np.ndarray, np.ndarray]],
    records: Any,
    decode: Callable[[np.ndarray, np.ndarray], dict[str, list[str]]],
    batch_size: int,
) -> list[dict[str, Any]]:
    """Transcripts of every readable record of ``records`` (``CTCRecords``):
    ``[{index, reference, hypotheses: {decoder: text}}]``. ``outputs`` maps a padded batch to
    log-probabilities and lengths; ``decode`` maps those to each decoder's texts."""
    rows, pending = [], []

    def flush() -> None:
        batch = {name: np.stack([record[name] for _, record in pending]) for name in pending[0][1]}
        size = len(pending)
        if size < batch_size:  # one compiled shape: pad with copies of the last record
            batch = {
                name: np.concatenate([value, np.repeat(value[-1:], batch_size - size, 0)])
                for name, value in batch.items()
            }
        log_probs, lengths = (np.asarray(x)[:size] for x in outputs(batch))
        texts = decode(log_probs, lengths)
        for row, (index, _) in enumerate(pending):
            rows.append(
                {
                    "index": index,
                    "reference": records.transcript(index),
                    "hypotheses": {name: values[row] for name, values in texts.items()},
                }
            )
        pending.clear()

    for index in range(len(records)):
        try:
            pending.append((index, records[index]))
        except RecordError:  # skipped or fatal per data.on_error when the trainer read it
            continue
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return rows
