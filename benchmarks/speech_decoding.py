"""Decoders of a trained CTC speech workdir side by side: greedy, prefix beam search alone, with
the character n-gram LM and with the lexicon-constrained word n-gram LM (both of the training
transcripts), each LM's weight and word bonus chosen on the validation split and then scored once
on the test split.

The model's log-probabilities of each split are computed once; every decoder re-reads them, so
the table compares decoders on identical acoustic scores. The test split never feeds a choice.

    python benchmarks/speech_decoding.py --workdir runs/speech [--beam-width 8]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import time
from typing import Any

import numpy as np
from common import apply_xla_flags, environment_info, format_table, run_program, write_report

NAME = "speech_decoding"
# (unit, order) of each LM and the grid its weight and word bonus are chosen from on validation.
LMS = (("char", 6), ("word", 2), ("word", 3))
LM_WEIGHTS = (0.3, 0.6, 1.0, 1.5)
WORD_BONUSES = (0.0, 1.0, 2.0, 3.0)


def split_log_probs(workdir: str, splits: tuple[str, ...]):
    """``(experiment, {split: [(log_probs [T, V], reference, metadata)]})`` of ``workdir``'s
    best checkpoint."""
    import flax.linen as nn
    import jax

    from jaxdl.cli import trained_workdir_config
    from jaxdl.errors import UserError
    from jaxdl.experiment import build_experiment
    from jaxdl.tasks.ctc import CTCSpeechRecognition, transcribe_records
    from jaxdl.train.restore import restore_trained_state
    from jaxdl.train.steps import eval_forward

    experiment = build_experiment(trained_workdir_config(workdir))
    task = experiment.task
    if not isinstance(task, CTCSpeechRecognition):
        raise UserError(f"{workdir} is not a speech-recognition (ctc) workdir")
    state = restore_trained_state(experiment, workdir)
    rules = (("batch", None), *experiment.rules)
    jitted = jax.jit(lambda state, batch: task.report_outputs(eval_forward(state), batch))

    def outputs(batch):
        with jax.set_mesh(experiment.mesh), nn.logical_axis_rules(rules):
            return jax.device_get(jitted(state, batch))

    result = {}
    for split in splits:
        records = experiment.data.get(split)
        kept: list[np.ndarray] = []

        def keep(log_probs, lengths, kept=kept):
            kept.extend(row[: int(n)] for row, n in zip(log_probs, lengths, strict=True))
            return {}

        rows = transcribe_records(outputs, records, keep, experiment.eval_batch_size)
        metadata = getattr(getattr(records, "source", None), "metadata", {})
        result[split] = [
            (log_probs, row["reference"], {k: v[row["index"]] for k, v in metadata.items()})
            for log_probs, row in zip(kept, rows, strict=True)
        ]
    return experiment, result


def decode_all(utterances, tokenizer, **beam) -> list[str]:
    """Best transcript of each utterance: greedy when ``beam`` is empty, else prefix beam
    search with ``beam``'s settings."""
    from jaxdl.models.ctc_decoding import ctc_greedy_decode, ctc_prefix_beam_search

    texts = []
    for log_probs, _, _ in utterances:
        if beam:
            labels = ctc_prefix_beam_search(log_probs, **beam)[0][0]
        else:
            tokens, count = ctc_greedy_decode(log_probs[None], np.asarray([len(log_probs)]))
            labels = np.asarray(tokens)[0, : int(count[0])]
        texts.append(tokenizer.decode(list(labels)))
    return texts


def wer(utterances, texts) -> float:
    import jiwer

    return float(jiwer.wer([u[1] for u in utterances], texts))


def voice_group(metadata: dict[str, Any], train_ranges: dict[str, tuple[float, float]]) -> str:
    """Where a test voice's rate and pitch fall against the training ranges."""
    for key in ("rate", "pitch"):
        low, high = train_ranges[key]
        value = float(metadata.get(key, low))
        if value < low:
            return f"{key} below training"
        if value > high:
            return f"{key} above training"
    return "inside training ranges"


def wer_by_group(utterances, texts: list[str], train) -> dict[str, dict[str, Any]]:
    """WER of ``texts`` per accent and, when the manifests have rate and pitch, per voice group
    against the training split's ranges."""
    import jiwer

    train_metadata = getattr(train.source, "metadata", {})
    train_ranges = {
        key: (min(map(float, train_metadata[key])), max(map(float, train_metadata[key])))
        for key in ("rate", "pitch")
        if key in train_metadata
    }
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for (_, reference, metadata), text in zip(utterances, texts, strict=True):
        names = [f"accent {metadata.get('accent', 'all')}"]
        if len(train_ranges) == 2:
            names.append(voice_group(metadata, train_ranges))
        for name in names:
            references, hypotheses = groups.setdefault(name, ([], []))
            references.append(reference)
            hypotheses.append(text)
    return {
        name: {
            "utterances": len(references),
            "wer": round(float(jiwer.wer(references, hypotheses)), 4),
        }
        for name, (references, hypotheses) in sorted(groups.items())
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--beam-width", type=int, default=8)
    parser.add_argument(
        "--token-min-log-prob",
        type=float,
        default=-8.0,
        help="labels less likely than this in a frame are not tried (except its likeliest)",
    )
    parser.add_argument(
        "--lms",
        default=",".join(f"{unit}{order}" for unit, order in LMS),
        help="LMs to compare, e.g. char6,word3 (unit and order)",
    )
    parser.add_argument("--lm-weights", default=",".join(map(str, LM_WEIGHTS)))
    parser.add_argument("--word-bonuses", default=",".join(map(str, WORD_BONUSES)))
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/out/)")
    args = parser.parse_args(argv)
    lms = []
    for name in args.lms.split(","):
        match = re.fullmatch(r"(char|word)([1-9][0-9]*)", name.strip())
        if match is None:
            parser.error(f"--lms: {name!r} is not char<order> or word<order>")
        lms.append((match.group(1), int(match.group(2))))
    try:
        weights = [float(value) for value in args.lm_weights.split(",")]
        bonuses = [float(value) for value in args.word_bonuses.split(",")]
    except ValueError as error:
        parser.error(f"--lm-weights / --word-bonuses: {error}")
    apply_xla_flags("")

    from jaxdl.tasks.registry import training_transcript_lm

    experiment, splits = split_log_probs(args.workdir, ("val", "test"))
    data, info = experiment.data, experiment.data.info
    tokenizer, space_id = info["tokenizer"], int(info.get("space_id", -1))
    beam = {
        "beam_width": args.beam_width,
        "space_id": space_id if space_id >= 0 else None,
        "token_min_log_prob": args.token_min_log_prob,
    }
    rows: list[dict[str, Any]] = []

    def add_row(decoder: str, settings: dict[str, Any], val_wer: float, texts: list[str]) -> None:
        rows.append(
            {
                "decoder": decoder,
                "lm_weight": settings.get("lm_weight", ""),
                "word_bonus": settings.get("word_bonus", ""),
                "val_wer": round(val_wer, 4),
                "test_wer": round(wer(splits["test"], texts), 4),
                "test_texts": texts,
            }
        )
        print(f"{decoder}: val {val_wer:.4f} test {rows[-1]['test_wer']:.4f}", flush=True)

    started = time.perf_counter()
    add_row(
        "greedy",
        {},
        wer(splits["val"], decode_all(splits["val"], tokenizer)),
        decode_all(splits["test"], tokenizer),
    )
    add_row(
        "beam",
        {},
        wer(splits["val"], decode_all(splits["val"], tokenizer, **beam)),
        decode_all(splits["test"], tokenizer, **beam),
    )
    for unit, order in lms:
        lm = training_transcript_lm(data, order, unit)
        tried = []
        for lm_weight, word_bonus in itertools.product(weights, bonuses):
            settings = {"lm": lm, "lm_weight": lm_weight, "word_bonus": word_bonus}
            tried.append(
                (
                    wer(splits["val"], decode_all(splits["val"], tokenizer, **beam, **settings)),
                    settings,
                )
            )
        val_wer, settings = min(tried, key=lambda item: item[0])
        add_row(
            f"beam + {unit} {order}-gram LM",
            settings,
            val_wer,
            decode_all(splits["test"], tokenizer, **beam, **settings),
        )

    best = min(rows, key=lambda row: row["val_wer"])
    by_group = wer_by_group(splits["test"], best["test_texts"], data.train)
    columns = ("decoder", "lm_weight", "word_bonus", "val_wer", "test_wer")
    print(format_table(rows, columns))
    print(f"\nbest on validation: {best['decoder']}; test WER by group:")
    print(
        format_table(
            [{"group": k, **v} for k, v in by_group.items()], ("group", "utterances", "wer")
        )
    )
    payload = {
        "environment": environment_info(),
        "workdir": os.path.abspath(args.workdir),
        "beam_width": args.beam_width,
        "token_min_log_prob": args.token_min_log_prob,
        "lm_weights": weights,
        "word_bonuses": bonuses,
        "rows": [{k: v for k, v in row.items() if k != "test_texts"} for row in rows],
        "best_on_val": best["decoder"],
        "test_wer_by_group": by_group,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"wrote {write_report(NAME, payload, args.out)}")
    return 0


if __name__ == "__main__":
    run_program(main)
