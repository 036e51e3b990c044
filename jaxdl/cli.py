"""Command line: ``jaxdl train|cv|evaluate|predict|export|quantize|serve|drift|data-report|...``.

``jaxdl train --config experiments/digits_resnet.py[:arg] --workdir runs/x [--config.a.b=v ...]``
Errors in what the user supplied (unknown key, wrong type, missing file, bad data, a changed config
on resume) print one line and exit 2; a locked workdir, divergence and interrupts have their own
exit codes (``jaxdl.errors``). Anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        sys.stderr.write(f"jaxdl: error: {message}\n")
        raise SystemExit(USAGE_ERROR)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None


def _number(kind: type, low: float, high: float = float("inf"), low_open: bool = False):
    """An argparse type: a ``kind`` number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if not (low < value if low_open else low <= value) or value > high:
            side = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text} is not in {side}{low}, {high}]")
        return value

    return parse


def _epsilons(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"epsilons must be >= 0: {text!r}")
    return values


def _prompt(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the prompt is empty")
    return text


def _platforms(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(set(names) - {"cpu", "cuda", "rocm", "tpu"})
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"platforms must be among cpu,cuda,rocm,tpu: {text!r}")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxdl", description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train an experiment config", allow_abbrev=False)
    train.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    train.add_argument(
        "--workdir",
        help="output dir; an existing run resumes (under `wandb agent`, default "
        "$JAXDL_SWEEP_DIR/<sweep id>/<run id>)",
    )
    train.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even though fields that shape training changed (recorded in the workdir)",
    )
    cv = commands.add_parser(
        "cv",
        help="k-fold cross-validation: one trained workdir per fold, mean ± std of the metrics",
        allow_abbrev=False,
    )
    cv.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    cv.add_argument("--folds", required=True, type=_number(int, 2))
    cv.add_argument("--workdir", required=True, help="root: fold k trains into WORKDIR/fold_k")
    data_report = commands.add_parser(
        "data-report",
        help="class counts, duplicates and leaks, unreadable records, likely label errors "
        "(JSON + PNG)",
        allow_abbrev=False,
    )
    data_report.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    data_report.add_argument("--out", required=True, help="directory for data_report.json + plots")
    data_report.add_argument(
        "--oof", help="`jaxdl cv` root of this config: label errors from out-of-fold predictions"
    )
    data_report.add_argument(
        "--text-threshold",
        type=_number(float, 0, 1, low_open=True),
        default=0.8,
        help="near-duplicate texts: character 3-gram Jaccard similarity at least this",
    )
    data_report.add_argument(
        "--image-threshold",
        type=_number(float, 0, 1, low_open=True),
        default=0.98,
        help="near-duplicate images: cosine similarity of centred 16x16 thumbnails at least this",
    )
    data_report.add_argument("--top", type=_number(int, 1), default=50, help="label errors listed")
    data_report.add_argument(
        "--max-listed", type=_number(int, 0), default=100, help="groups and pairs listed"
    )
    sweep = commands.add_parser(
        "sweep",
        help="run a W&B sweep file locally (grid, random, bayes via optuna); re-run continues",
        allow_abbrev=False,
    )
    sweep.add_argument("file", help="sweep YAML (the same file `wandb sweep` takes)")
    sweep.add_argument("--workdir", required=True, help="root: trial n trains into trial_NNN")
    sweep.add_argument("--parallel", type=_number(int, 1), default=1, help="trials at once")
    sweep.add_argument("--seed", type=int, default=0, help="random/bayes sampling seed")
    evaluate = commands.add_parser(
        "evaluate", help="re-evaluate a run's best checkpoint", allow_abbrev=False
    )
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    export = commands.add_parser(
        "export",
        help="export a run's best checkpoint (StableHLO, ONNX, SavedModel, TFLite), verified",
        allow_abbrev=False,
    )
    export.add_argument("--workdir", required=True)
    export.add_argument(
        "--format", required=True, choices=["stablehlo", "onnx", "savedmodel", "tflite"]
    )
    export.add_argument("--out", required=True, help="new directory for the graph and metadata")
    export.add_argument(
        "--platforms",
        type=_platforms,
        help="stablehlo, savedmodel: comma-separated targets, e.g. cpu,cuda (default: backend)",
    )
    serve = commands.add_parser(
        "serve",
        help="serve a run's best checkpoint over HTTP (JSON or file uploads, micro-batched)",
        allow_abbrev=False,
    )
    serve.add_argument("--workdir", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_number(int, 1, 65535), default=8000)
    serve.add_argument("--max-batch", type=_number(int, 1), default=32)
    serve.add_argument("--max-wait-ms", type=_number(float, 0), default=5.0)
    serve.add_argument("--max-body-mb", type=_number(float, 0, low_open=True), default=16.0)
    serve.add_argument("--max-queue", type=_number(int, 1), default=256)
    serve.add_argument("--no-batching", action="store_true", help="one model call per request")
    serve.add_argument(
        "--drift-window", type=_number(int, 2), default=500, help="examples the drift gauges cover"
    )
    serve.add_argument(
        "--drift-every", type=_number(int, 0), default=100, help="requests per update (0: off)"
    )
    explain = commands.add_parser(
        "explain",
        help="explain a run's predictions on a split's first examples (PNG/HTML + JSON)",
        allow_abbrev=False,
    )
    explain.add_argument("--workdir", required=True)
    explain.add_argument("--split", default="test", choices=["train", "val", "test"])
    explain.add_argument("--count", type=_number(int, 1), default=8)
    explain.add_argument(
        "--method",
        required=True,
        choices=["saliency", "smoothgrad", "integrated_gradients", "gradcam", "attention"],
    )
    explain.add_argument("--out", help="output directory (default W/explain_METHOD)")
    explain.add_argument("--layer", help="gradcam: module path (default: the last conv stage)")
    explain.add_argument("--samples", type=_number(int, 1), default=16, help="smoothgrad copies")
    explain.add_argument("--noise", type=_number(float, 0), default=0.15, help="smoothgrad std")
    explain.add_argument("--steps", type=_number(int, 1), default=64, help="integrated gradients")
    explain.add_argument("--seed", type=int, default=0)
    explain.add_argument(
        "--inputs", help="text runs: a UTF-8 file of texts, one per line, instead of the split"
    )
    explain.add_argument(
        "--baseline",
        choices=["zero", "pad"],
        default="zero",
        help="text integrated gradients: the zero or the pad token's embedding",
    )
    robustness = commands.add_parser(
        "robustness",
        help="accuracy of a run's best checkpoint under FGSM and PGD attacks",
        allow_abbrev=False,
    )
    robustness.add_argument("--workdir", required=True)
    robustness.add_argument(
        "--epsilons",
        type=_epsilons,
        default=(0.01, 0.03, 0.1),
        help="comma-separated radii, fractions of each channel's input range",
    )
    robustness.add_argument("--split", default="test", choices=["train", "val", "test"])
    robustness.add_argument("--count", type=_number(int, 1), default=1000, help="first N")
    robustness.add_argument("--pgd-steps", type=_number(int, 1), default=10)
    robustness.add_argument("--seed", type=int, default=0)
    robustness.add_argument("--batch-size", type=_number(int, 1), default=128)
    robustness.add_argument("--out", help="JSON report (default W/robustness_SPLIT.json)")
    quantize = commands.add_parser(
        "quantize",
        help="INT8 copy of a run's ONNX export (onnxruntime), compared with float32",
        allow_abbrev=False,
    )
    quantize.add_argument("--workdir", required=True, help="the run (calibration and test data)")
    quantize.add_argument("--export", required=True, help="its ONNX export (`jaxdl export`)")
    quantize.add_argument("--mode", required=True, choices=["dynamic", "static"])
    quantize.add_argument("--out", required=True, help="new directory for the int8 export")
    quantize.add_argument("--calibration-examples", type=_number(int, 1), default=256)
    drift = commands.add_parser(
        "drift",
        help="input, prediction and embedding drift (PSI, KS, MMD) against a reference",
        allow_abbrev=False,
    )
    drift_source = drift.add_mutually_exclusive_group(required=True)
    drift_source.add_argument("--export", help="an export directory (`jaxdl export`)")
    drift_source.add_argument("--workdir", help="a trained run (reference cached in it)")
    drift.add_argument("inputs", nargs="*", help=".npy/.npz files of model inputs")
    drift.add_argument("--split", choices=["train", "val", "test"], help="--workdir: a split")
    drift.add_argument("--window", type=_number(int, 2), default=250, help="examples per window")
    drift.add_argument("--permutations", type=_number(int, 1), default=200, help="MMD test")
    drift.add_argument("--seed", type=int, default=0)
    drift.add_argument("--out", help="report directory (default W/drift, else ./drift)")
    predict = commands.add_parser(
        "predict",
        help="predictions of a run's best checkpoint for files or a split (with error analysis)",
        allow_abbrev=False,
    )
    predict.add_argument("--workdir", required=True)
    predict.add_argument(
        "inputs",
        nargs="*",
        help="image/audio files, folders (recursive, sorted) or, for text models, .csv files "
        "(one text per row of --text-column) and .txt files (one text per line, blank lines "
        "skipped); none: --split",
    )
    predict.add_argument(
        "--split", choices=["train", "val", "test"], help="without INPUTS (default test)"
    )
    predict.add_argument(
        "--out",
        help="CSV or JSONL file (default W/predictions_SPLIT.csv, W/predictions_inputs.csv); "
        "segmentation runs: a directory (default W/analysis)",
    )
    predict.add_argument("--batch-size", type=_number(int, 1), default=64)
    predict.add_argument("--text-column", help="INPUTS' .csv files: the texts (default text)")
    predict.add_argument(
        "--on-error",
        choices=["skip", "stop"],
        default="skip",
        help="INPUTS: an undecodable one gets an error row (skip) or ends the run (stop)",
    )
    uncertainty = commands.add_parser(
        "uncertainty",
        help="MC dropout (one run) or a deep ensemble (several): entropy, rejection curve",
        allow_abbrev=False,
    )
    uncertainty.add_argument(
        "--workdir", required=True, action="append", help="repeat for a deep ensemble"
    )
    uncertainty.add_argument("--mc-samples", type=_number(int, 1), help="one workdir: passes")
    uncertainty.add_argument("--split", default="test", choices=["train", "val", "test"])
    uncertainty.add_argument("--out", help="output directory (default W/uncertainty)")
    uncertainty.add_argument("--seed", type=int, default=0, help="MC dropout masks")
    uncertainty.add_argument("--batch-size", type=_number(int, 1), default=64)
    generate = commands.add_parser(
        "generate",
        help="continue a prompt with a trained language model's best checkpoint",
        allow_abbrev=False,
    )
    generate.add_argument("--workdir", required=True)
    generate.add_argument("--prompt", required=True, type=_prompt)
    generate.add_argument("--max-new-tokens", type=_number(int, 1), default=32)
    generate.add_argument(
        "--temperature", type=_number(float, 0), default=1.0, help="0 decodes greedily"
    )
    generate.add_argument("--top-k", type=_number(int, 1), help="sample from the k most likely")
    generate.add_argument(
        "--top-p", type=_number(float, 0, 1, low_open=True), help="nucleus sampling mass"
    )
    generate.add_argument("--beams", type=_number(int, 1), default=1, help="> 1: beam search")
    generate.add_argument("--seed", type=int, default=0)
    transcribe = commands.add_parser(
        "transcribe",
        help="transcribe audio files with a trained speech model's best checkpoint",
        allow_abbrev=False,
    )
    transcribe.add_argument("--workdir", required=True)
    transcribe.add_argument("files", nargs="+", help="audio files (WAV, FLAC, OGG: soundfile)")
    corpus = commands.add_parser(
        "speech-corpus",
        help="synthesise the espeak-ng speech corpus (needs Debian's espeak-ng and sox)",
        allow_abbrev=False,
    )
    corpus.add_argument("--out", default=None, help="default ~/.cache/jaxdl/speech_corpus_v1")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--train-size", type=_number(int, 1), default=None)
    corpus.add_argument("--val-size", type=_number(int, 1), default=None)
    corpus.add_argument("--test-size", type=_number(int, 1), default=None)
    corpus.add_argument("--jobs", type=_number(int, 1), default=2)
    compile_ = commands.add_parser(
        "compile",
        help="compile the train step for a device topology and report memory/FLOPs/collectives",
        allow_abbrev=False,
    )
    compile_.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    compile_.add_argument(
        "--topology", required=True, help="'cpu:N' (XLA_FLAGS devices) or a TPU one: 'v5p:4x4x4'"
    )
    compile_.add_argument(
        "--input-shape",
        type=_shape,
        help="image tasks: one example's shape, e.g. 224,224,3, instead of loading the data",
    )
    compile_.add_argument("--json", help="also write the report to this JSON file")
    shardings = commands.add_parser(
        "shardings",
        help="every parameter's logical axes, mesh spec and bytes per device",
        allow_abbrev=False,
    )
    shardings.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    shardings.add_argument("--topology", help="as for compile (default: this machine's devices)")
    shardings.add_argument("--json", help="also write the report to this JSON file")
    data = commands.add_parser("data", help="dataset tools", allow_abbrev=False)
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    convert = data_commands.add_parser(
        "convert",
        help="decode a config's dataset once into sharded ArrayRecord files",
        allow_abbrev=False,
    )
    convert.add_argument("--config", required=True, help="experiment file, optionally path:arg")
    convert.add_argument("--out", required=True, help="new directory for the shards")
    convert.add_argument("--shards", type=int, help="number of shard files (default ~50k/shard)")
    import_weights = commands.add_parser(
        "import-weights",
        help="convert a torchvision .pth state_dict into a checkpoint `train` starts from",
        allow_abbrev=False,
    )
    import_weights.add_argument("--from", dest="source", required=True, choices=["torchvision"])
    import_weights.add_argument("--model", required=True, help="e.g. resnet50")
    import_weights.add_argument("--weights", required=True, help="the .pth state_dict file")
    import_weights.add_argument("--out", required=True, help="new directory (init.from_workdir)")
    import_weights.add_argument(
        "--num-classes", type=int, help="a new head of this size (left out, reinitialised)"
    )
    launch = commands.add_parser(
        "launch",
        help="the commands that run `jaxdl train` on a TPU pod slice or with SLURM (--dry-run)",
        allow_abbrev=False,
    )
    from jaxdl.launch import add_arguments as add_launch_arguments

    add_launch_arguments(launch)
    return parser


def _workdir_tokenizer(workdir: str, info: dict):
    """The tokenizer a model was trained with: the workdir's ``tokenizer.json``, else the data
    loader's, else bytes for byte-level data (the language-model loaders record none)."""
    from jaxdl.data.text import BYTE_VOCAB_SIZE
    from jaxdl.data.text_sources import ByteTokenizer
    from jaxdl.data.tokenizer_store import TOKENIZER_FILENAME, load_tokenizer
    from jaxdl.errors import UserError

    if os.path.isfile(os.path.join(workdir, TOKENIZER_FILENAME)):
        return load_tokenizer(workdir)
    if info.get("tokenizer") is not None:
        return info["tokenizer"]
    if info.get("vocab_size") == BYTE_VOCAB_SIZE:
        return ByteTokenizer()
    raise UserError(f"no tokenizer for {workdir}: no {TOKENIZER_FILENAME} and none in the data")


def _generate(args: argparse.Namespace, experiment) -> int:
    """``jaxdl generate``: continues the prompt with the language model's best (else latest)
    checkpoint on the experiment's mesh and prints the continuation."""
    import flax.linen as nn
    import jax
    import numpy as np

    from jaxdl.errors import UserError
    from jaxdl.models import TransformerLM
    from jaxdl.models.generation import beam_search, generate

    model = experiment.model
    if not isinstance(model, TransformerLM):
        raise UserError(f"{args.workdir} is not a language-model workdir ({type(model).__name__})")
    tokenizer = _workdir_tokenizer(args.workdir, experiment.data.info)
    prompt = np.asarray(tokenizer.encode(args.prompt), np.int32).reshape(1, -1)
    if prompt.shape[1] + args.max_new_tokens > model.max_len:
        raise UserError(
            f"a prompt of {prompt.shape[1]} tokens leaves room for at most "
            f"{model.max_len - prompt.shape[1]} new tokens (max_len={model.max_len})"
        )
    state = _restore_best_state(experiment, args.workdir)
    # One prompt: the batch is replicated, the model's own axes stay sharded as in training.
    rules = (("batch", None), *experiment.rules)
    with jax.set_mesh(experiment.mesh), nn.logical_axis_rules(rules):
        if args.beams > 1:
            tokens, _ = beam_search(
                model, state.params, prompt, max_new_tokens=args.max_new_tokens, beams=args.beams
            )
        else:
            tokens = generate(
                model,
                state.params,
                prompt,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_k=None if args.top_k is None else min(args.top_k, model.vocab_size),
                top_p=args.top_p,
                key=jax.random.key(args.seed),
            )
    print(tokenizer.decode(np.asarray(tokens[0])))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """``jaxdl sweep``: runs or continues the sweep, then prints its ranked table."""
    from jaxdl.sweeps import format_table, read_sweep, run_sweep, write_report

    spec = read_sweep(args.file)
    _check_writable_workdir(args.workdir)
    trials = run_sweep(spec, args.workdir, parallel=args.parallel, seed=args.seed)
    rows = write_report(spec, trials, args.workdir)
    print(format_table(spec, rows))
    print(f"sweep_results.json, sweep_parameters.png and one workdir per trial in {args.workdir}")
    failed = [row["trial"] for row in rows if row["status"] == "failed"]
    if failed:
        sys.stderr.write(f"jaxdl: trials {failed} failed: see {args.workdir}/trial_NNN.log\n")
    return 1 if failed else 0


def _data_report(args: argparse.Namespace, config) -> int:
    """``jaxdl data-report``: writes data_report.json and its plots, prints a summary."""
    from jaxdl.data_report import ReportOptions, format_summary, write_data_report

    options = ReportOptions(
        text_threshold=args.text_threshold,
        image_threshold=args.image_threshold,
        top=args.top,
        max_listed=args.max_listed,
    )
    report = write_data_report(
        config, args.out, oof_root=args.oof, restore=_restore_best_state, options=options
    )
    print(format_summary(report))
    print(f"data_report.json and {', '.join(report['plots']) or 'no plots'} in {args.out}")
    return 0


def _cross_validate(args: argparse.Namespace, config) -> int:
    """``jaxdl cv``: trains the folds (resuming unfinished ones) and prints the summary."""
    from jaxdl.cross_validation import format_summary, run_cross_validation
    from jaxdl.parallel import initialize_distributed

    _check_writable_workdir(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    initialize_distributed(config.get("distributed"))
    summary = run_cross_validation(config, args.workdir, args.folds)
    metrics = ("accuracy", "f1_macro", "loss", "wer", "perplexity")
    print(format_summary(summary, metrics))
    print(f"per-fold workdirs and cv_results.json in {args.workdir}")
    return 0


def _export(args: argparse.Namespace, experiment) -> int:
    """``jaxdl export``: the best (else latest) checkpoint as a verified StableHLO/ONNX graph."""
    from jaxdl.export import export_experiment

    state = _restore_best_state(experiment, args.workdir)
    meta = export_experiment(
        experiment, state, args.workdir, args.format, args.out, platforms=args.platforms
    )
    errors = ", ".join(f"{k} {v:.2g}" for k, v in meta["verified"]["max_abs_error"].items())
    print(
        f"exported step {meta['checkpoint_step']} of {args.workdir} as {args.format} to "
        f"{args.out}; max |export - jax| on {meta['verified']['examples']} test examples: "
        f"{errors}"
    )
    return 0


def _predict(args: argparse.Namespace, experiment) -> int:
    """``jaxdl predict``: one row per input file/text or per example of the split (input order)
    with the prediction and class probabilities; for a split with labels, calibration/ROC/
    confusion analysis in W/analysis. Exit 1 when an input or example could not be read."""
    from jaxdl.errors import UserError
    from jaxdl.export import experiment_inference
    from jaxdl.export.predictions import (
        analyze_classification,
        classify_records,
        write_predictions,
    )

    if args.inputs:
        from jaxdl.export.predict_inputs import expand_inputs, predict_inputs
        from jaxdl.serving.uploads import TextUploads, experiment_uploads

        if args.split:
            raise UserError("give INPUTS or --split, not both")
        if experiment.task.name == "segmentation":
            raise UserError("predict on files is not supported for segmentation runs; use --split")
        uploads = experiment_uploads(experiment, args.workdir)
        if uploads is None:
            raise UserError(f"{args.workdir}'s model takes no files; use --split")
        if args.text_column and not isinstance(uploads, TextUploads):
            raise UserError("--text-column is for text models")
        inputs = expand_inputs(args.inputs, uploads, args.text_column or "text")
        inference = experiment_inference(experiment, _restore_best_state(experiment, args.workdir))
        summary = predict_inputs(
            inference,
            uploads,
            inputs,
            args.out or os.path.join(args.workdir, "predictions_inputs.csv"),
            experiment.data.info.get("class_names"),
            args.batch_size,
            args.on_error,
        )
        print(summary.line())
        return 1 if summary.skipped else 0
    if args.text_column or args.on_error != "skip":
        raise UserError("--text-column and --on-error are for INPUTS")
    args.split = args.split or "test"
    out = args.out or os.path.join(args.workdir, f"predictions_{args.split}.csv")
    state = _restore_best_state(experiment, args.workdir)
    inference = experiment_inference(experiment, state)
    source = experiment.data.get(args.split)
    if experiment.task.name == "segmentation":
        return _predict_segmentation(args, experiment, inference, source)
    rows = list(classify_records(inference, source, args.batch_size))
    names = experiment.data.info.get("class_names")
    write_predictions(rows, out, names)
    analysis_dir = os.path.join(args.workdir, "analysis")
    texts = (experiment.data.info.get("texts") or {}).get(args.split)
    analysis = analyze_classification(rows, names, analysis_dir, args.split, source, texts)
    failed = sum("error" in row for row in rows)
    print(f"wrote {len(rows):,} predictions of the {args.split} split to {out}")
    if analysis:
        print(
            f"accuracy {analysis['accuracy']:.4f}, ECE {analysis['ece']:.4f} "
            f"({analysis['ece_after_temperature']:.4f} at temperature "
            f"{analysis['temperature']:.3f}), macro ROC AUC {analysis['macro_roc_auc']:.4f}; "
            f"plots and analysis_{args.split}.json in {analysis_dir}"
        )
    if failed:
        sys.stderr.write(f"jaxdl: {failed} unreadable example(s): see the error column\n")
    return 1 if failed else 0


def _predict_segmentation(args: argparse.Namespace, experiment, inference, source) -> int:
    """``jaxdl predict`` of a segmentation run: metrics, per-class IoU and mask overlay plots
    of the split in W/analysis (or ``--out``, a directory here)."""
    from jaxdl.tasks.segmentation import predict_segmentation

    out_dir = args.out or os.path.join(args.workdir, "analysis")
    metrics = predict_segmentation(
        inference,
        source,
        out_dir,
        args.split,
        experiment.data.info.get("class_names"),
        args.batch_size,
        ignore_index=experiment.task.ignore_index,
    )
    print(
        f"mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f} on "
        f"{metrics['examples']:,} {args.split} examples; segmentation_{args.split}.json, "
        f"per_class_iou_{args.split}.png and mask_overlays_{args.split}.png in {out_dir}"
    )
    if metrics["skipped"]:
        sys.stderr.write(f"jaxdl: {metrics['skipped']} unreadable example(s) skipped\n")
    return 1 if metrics["skipped"] else 0


def _quantize(args: argparse.Namespace, experiment) -> int:
    """``jaxdl quantize``: the int8 export, and a table of size, test accuracy and CPU latency
    against the float32 export (also written as ``quantization_report.json`` beside it)."""
    import json

    import numpy as np

    from jaxdl.export import load_exported, read_metadata, stack_inputs
    from jaxdl.export.quantize import (
        graph_size_bytes,
        median_latency_ms,
        quantize_export,
    )

    meta = read_metadata(args.export)
    spec = experiment.task.input_spec()
    train = experiment.data.get("train")
    count = min(args.calibration_examples, len(train))
    picks = np.random.default_rng(experiment.seed).choice(len(train), count, replace=False)
    records = [train[int(i)] for i in np.sort(picks)]
    calibration = [stack_inputs(records[i : i + 32], spec) for i in range(0, count, 32)]
    quantized = quantize_export(args.export, args.out, args.mode, calibration)
    test = experiment.data.get("test")
    test_records = [test[i] for i in range(len(test))]
    report = {"mode": args.mode, "calibration_examples": count, "test_examples": len(test)}
    for name, directory in (("float32", args.export), ("int8", args.out)):
        run = load_exported(directory)
        correct = 0
        for start in range(0, len(test_records), 64):
            chunk = test_records[start : start + 64]
            outputs = run(stack_inputs(chunk, spec))
            predictions = next(iter(outputs.values())).argmax(-1)
            correct += int(np.sum(predictions == [int(r["labels"]) for r in chunk]))
        batch = stack_inputs(test_records[:32], spec)
        report[name] = {
            "bytes": graph_size_bytes(directory),
            "test_accuracy": correct / max(len(test_records), 1),
            "latency_ms_batch32": median_latency_ms(run, batch),
        }
    report["top1_agreement_on_calibration"] = quantized["quantization"]["top1_agreement"]
    with open(os.path.join(args.out, "quantization_report.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"{meta['model']} {args.mode} int8 quantisation ({count} calibration examples)")
    print("| model | size (KiB) | test accuracy | CPU latency, batch 32 (ms) |")
    print("|---|---|---|---|")
    for name in ("float32", "int8"):
        row = report[name]
        print(
            f"| {name} | {row['bytes'] / 1024:.1f} | {row['test_accuracy']:.4f} | "
            f"{row['latency_ms_batch32']:.2f} |"
        )
    return 0


def _explain(args: argparse.Namespace, experiment) -> int:
    """``jaxdl explain``: attributions or attention maps of the split's first examples (or, for
    a text run, of the ``--inputs`` file's lines)."""
    from jaxdl.errors import UserError
    from jaxdl.explain import explain_experiment

    state = _restore_best_state(experiment, args.workdir)
    try:
        tokenizer = _workdir_tokenizer(args.workdir, experiment.data.info)
    except UserError:
        tokenizer = None  # an image run, or token ids label the tokens
    texts = None
    if args.inputs:
        try:
            with open(args.inputs, encoding="utf-8") as handle:
                texts = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read --inputs {args.inputs!r}: {error}") from None
    out = args.out or os.path.join(args.workdir, f"explain_{args.method}")
    report = explain_experiment(
        experiment,
        state,
        method=args.method,
        out_dir=out,
        split=args.split,
        count=args.count,
        layer=args.layer,
        samples=args.samples,
        noise=args.noise,
        steps=args.steps,
        seed=args.seed,
        tokenizer=tokenizer,
        texts=texts,
        baseline=args.baseline,
    )
    source = f"texts in {args.inputs}" if texts is not None else f"{args.split} split"
    print(
        f"wrote {len(report['examples'])} {args.method} explanations of the {source} "
        f"and explanations.json to {out}"
    )
    return 0


def _robustness(args: argparse.Namespace, experiment) -> int:
    """``jaxdl robustness``: accuracy under FGSM and PGD at each epsilon."""
    from jaxdl.explain import robustness_experiment, robustness_table

    state = _restore_best_state(experiment, args.workdir)
    out = args.out or os.path.join(args.workdir, f"robustness_{args.split}.json")
    report = robustness_experiment(
        experiment,
        state,
        epsilons=args.epsilons,
        split=args.split,
        count=args.count,
        steps=args.pgd_steps,
        seed=args.seed,
        batch_size=args.batch_size,
        out=out,
    )
    print(robustness_table(report))
    print(f"report written to {out}")
    return 0


def _uncertainty(args: argparse.Namespace) -> int:
    """``jaxdl uncertainty``: MC dropout over one workdir or a deep ensemble of several."""
    from jaxdl.uncertainty import format_report, run_uncertainty

    out = args.out or os.path.join(args.workdir[0], "uncertainty")
    report = run_uncertainty(
        args.workdir,
        mc_samples=args.mc_samples,
        split=args.split,
        out_dir=out,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(format_report(report))
    print(f"{report['method']}_{args.split}.json and plots in {out}")
    return 0


def _restore_best_state(experiment, workdir: str):
    """The best (else latest) checkpoint of ``workdir`` (``restore_trained_state``)."""
    from jaxdl.train.restore import restore_trained_state

    return restore_trained_state(experiment, workdir)


def _transcribe(args: argparse.Namespace, experiment) -> int:
    """``jaxdl transcribe``: CTC transcripts of audio files, one line each
    (``FILE<TAB>transcript``), decoded as the run's final report decodes (prefix beam search with
    its LM when ``task.decoder.beam_width`` > 0, else greedy); a file that cannot be read is named
    on stderr and the exit status is 1."""
    import dataclasses

    import flax.linen as nn
    import jax
    import numpy as np

    from jaxdl.data.audio_sources import decode_audio
    from jaxdl.data.records import RecordError
    from jaxdl.errors import UserError
    from jaxdl.tasks.ctc import CTCSpeechRecognition
    from jaxdl.train.steps import eval_forward

    task = experiment.task
    if not isinstance(task, CTCSpeechRecognition):
        raise UserError(f"{args.workdir} is not a speech-recognition (ctc) workdir")
    tokenizer = _workdir_tokenizer(args.workdir, experiment.data.info)
    state = _restore_best_state(experiment, args.workdir)
    rules = (("batch", None), *experiment.rules)
    outputs = jax.jit(lambda state, batch: task.report_outputs(eval_forward(state), batch))
    decoding = dataclasses.replace(task, tokenizer=tokenizer)  # the run's own tokenizer
    decoder = "beam" if task.beam_width > 0 else "greedy"
    failed = 0
    for path in args.files:
        try:
            audio = decode_audio(path, task.front_end.sample_rate)
        except RecordError as error:
            sys.stderr.write(f"jaxdl: {error}\n")
            failed += 1
            continue
        batch = {"audio": audio[None], "audio_length": np.asarray([audio.shape[0]], np.int32)}
        with jax.set_mesh(experiment.mesh), nn.logical_axis_rules(rules):
            log_probs, lengths = jax.device_get(outputs(state, batch))
        texts = decoding.decode(np.asarray(log_probs), np.asarray(lengths))
        print(f"{path}\t{texts[decoder][0]}")
    return 1 if failed else 0


def _speech_corpus(args: argparse.Namespace) -> int:
    """``jaxdl speech-corpus``: generates (or finds complete) the synthesised corpus."""
    from jaxdl.data import speech_corpus

    sizes = {
        f"{split}_size": getattr(args, f"{split}_size")
        for split in ("train", "val", "test")
        if getattr(args, f"{split}_size") is not None
    }
    out = speech_corpus.generate_corpus(
        args.out or speech_corpus.DEFAULT_OUT, seed=args.seed, jobs=args.jobs, **sizes
    )
    print(f"speech corpus ready in {out}")
    return 0


def _compile(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """``jaxdl compile``: AOT-compiles the config's train step and prints its per-device costs."""
    import json

    from jaxdl.config import load_config
    from jaxdl.data.records import constant_image_splits
    from jaxdl.experiment import build_experiment
    from jaxdl.parallel import aot
    from jaxdl.train.compile import compile_experiment

    config = load_config(args.config, overrides)
    devices = _topology_devices(args.topology)
    data = None
    if args.input_shape:
        data = constant_image_splits(args.input_shape, config.model.get("num_classes") or 1000)
    experiment = build_experiment(config, devices=devices, data=data)
    try:
        report = compile_experiment(experiment)
    except aot.DoesNotFitError as error:
        sys.stderr.write(f"jaxdl: {error}\n")
        return 1
    print(f"jaxdl compile {args.config} --topology {args.topology}")
    print(report.format())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    return 0


def _topology_devices(topology: str) -> list:
    """``aot.topology_devices``, with a malformed or unavailable topology as a ``ConfigError``."""
    from jaxdl.errors import ConfigError
    from jaxdl.parallel import aot

    try:
        return aot.topology_devices(topology)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _shardings(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """``jaxdl shardings``: the parameter layout ``jaxdl train`` would use, without allocating it
    (the fallback warning, if any, is logged while the experiment is built)."""
    import json

    from jaxdl.config import load_config
    from jaxdl.experiment import build_experiment

    config = load_config(args.config, overrides)
    devices = _topology_devices(args.topology) if args.topology else None
    report = build_experiment(config, devices=devices).sharding_report
    topology = f" --topology {args.topology}" if args.topology else ""
    print(f"jaxdl shardings {args.config}{topology}")
    print(report.format_table())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    return 0


def _convert(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """``jaxdl data convert``: the config's unsplit dataset written as ArrayRecord shards (train
    from it with ``data.name='array_record'``, ``data.options.path=OUT``)."""
    from jaxdl.config import load_config
    from jaxdl.data.array_record import write_array_records
    from jaxdl.data.loading import open_pool
    from jaxdl.errors import DataError, UserError

    config = load_config(args.config, overrides)
    source, info = open_pool(config.data)
    skip = config.data.get("on_error", "raise") == "skip"
    try:
        metadata = write_array_records(
            source, args.out, num_shards=args.shards, info=info, skip_errors=skip
        )
    except FileExistsError as error:
        raise UserError(str(error)) from None
    except ValueError as error:  # an unreadable record (RecordError) or a bad shard count
        raise DataError(f"data convert: {error}") from None
    shards = len(metadata["shards"])
    print(f"wrote {metadata['num_records']:,} records in {shards} shard(s) to {args.out}")
    if metadata["skipped"]:
        print(f"skipped {len(metadata['skipped'])} unreadable record(s): see metadata.json")
    return 0


def _check_writable_workdir(workdir: str) -> None:
    """A workdir must be a directory we can write, or creatable; checked before any work."""
    from jaxdl.errors import UserError

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} exists and is not a directory")
    parent = workdir if os.path.isdir(workdir) else os.path.dirname(os.path.abspath(workdir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"workdir {workdir} is not writable")


SWEEP_DIR_VARIABLE = "JAXDL_SWEEP_DIR"


def agent_workdir(environ) -> str:
    """The workdir of a W&B agent's trial, which passes no ``--workdir``: one per run id under
    ``$JAXDL_SWEEP_DIR`` (default runs/sweeps) and the sweep id, so a resumed run id finds its
    own checkpoints (and the resume fingerprint check guards it)."""
    from jaxdl.errors import UserError

    run_id = environ.get("WANDB_RUN_ID")
    if not run_id:
        raise UserError("train needs --workdir (outside a W&B sweep agent, which sets it)")
    sweep = environ.get("WANDB_SWEEP_ID") or "no-sweep"
    return os.path.join(environ.get(SWEEP_DIR_VARIABLE) or "runs/sweeps", sweep, run_id)


def trained_workdir_config(workdir: str):
    """The saved config of a run that has a checkpoint (what evaluate, predict, export and serve
    start from); a one-line ``UserError`` otherwise."""
    from jaxdl.config import read_config
    from jaxdl.errors import UserError

    if not os.path.isdir(workdir):
        raise UserError(f"workdir not found: {workdir}")
    config = read_config(os.path.join(workdir, "config.json"))
    if not any(
        os.path.isdir(os.path.join(workdir, sub)) and os.listdir(os.path.join(workdir, sub))
        for sub in ("best", "checkpoints")
    ):
        raise UserError(f"no checkpoint in {workdir}")
    return config


DECODER_PREFIX = "--config.task.decoder."


def decoder_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``{KEY: value}`` of ``--config.task.decoder.KEY=VALUE`` overrides (values are Python
    literals, else strings); any other argument is a one-line ``UserError``. How a trained speech
    run decodes (beam, LM, weights) changes nothing it learned, so ``evaluate`` and
    ``transcribe`` may re-decode with other settings; the task checks the keys."""
    import ast

    from jaxdl.errors import UserError

    settings: dict[str, Any] = {}
    for override in overrides:
        key, sep, text = override.removeprefix(DECODER_PREFIX).partition("=")
        if not override.startswith(DECODER_PREFIX) or not sep or not key or "." in key:
            raise UserError(
                f"unrecognized argument {override!r}: a trained run takes only "
                f"{DECODER_PREFIX}KEY=VALUE overrides (its other settings are what it learned)"
            )
        try:
            settings[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            settings[key] = text
    return settings


def with_decoder_settings(config, settings: dict[str, Any]):
    """A copy of ``config`` whose ``task.decoder`` section has ``settings`` set."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.task.decoder = {**dict(config.task.get("decoder") or {}), **settings}
    return config


def _import_weights(args: argparse.Namespace) -> int:
    """``import-weights``: writes ``--out`` and prints how to train from it."""
    from jaxdl.models.torchvision_import import import_torchvision

    metadata = import_torchvision(args.model, args.weights, args.out, num_classes=args.num_classes)
    reinit = f" --config.init.reinit=('{metadata['reinit'][0]}',)" if metadata["reinit"] else ""
    print(f"wrote {args.out}; train with --config.init.from_workdir={args.out}{reinit}")
    return 0


def _run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from jaxdl.config import load_config
    from jaxdl.errors import UserError

    if args.command == "launch":
        from jaxdl.launch import launch_main

        return launch_main(args, extra)
    if args.command == "compile":
        return _compile(args, extra)
    if args.command == "import-weights":
        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return _import_weights(args)
    if args.command == "shardings":
        return _shardings(args, extra)
    if args.command == "data":
        return _convert(args, extra)
    if args.command == "drift":
        from jaxdl.monitoring.cli import drift_command

        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return drift_command(args)
    if args.command == "speech-corpus":
        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return _speech_corpus(args)
    if args.command == "sweep":
        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return _sweep(args)
    if args.command == "uncertainty":
        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return _uncertainty(args)
    if args.command == "data-report":
        return _data_report(args, load_config(args.config, extra))
    if args.command == "cv":
        return _cross_validate(args, load_config(args.config, extra))
    if args.command == "train":
        config = load_config(args.config, extra)
        args.workdir = args.workdir or agent_workdir(os.environ)
        _check_writable_workdir(args.workdir)
    else:
        if extra and args.command not in ("evaluate", "transcribe"):
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        decoder = decoder_overrides(extra)  # checked before the workdir is read
        config = trained_workdir_config(args.workdir)
        if decoder:
            config = with_decoder_settings(config, decoder)

    from jaxdl.experiment import build_experiment
    from jaxdl.parallel import initialize_distributed
    from jaxdl.train import Trainer

    initialize_distributed(config.get("distributed"))
    experiment = build_experiment(config)
    if args.command == "generate":
        return _generate(args, experiment)
    if args.command == "transcribe":
        return _transcribe(args, experiment)
    if args.command == "export":
        return _export(args, experiment)
    if args.command == "predict":
        return _predict(args, experiment)
    if args.command == "quantize":
        return _quantize(args, experiment)
    if args.command == "explain":
        return _explain(args, experiment)
    if args.command == "robustness":
        return _robustness(args, experiment)
    if args.command == "serve":
        from jaxdl.serving import serve_experiment

        serve_experiment(
            experiment,
            _restore_best_state(experiment, args.workdir),
            args.workdir,
            args.host,
            args.port,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_queue=args.max_queue,
            batching=not args.no_batching,
            drift_window=args.drift_window,
            drift_every=args.drift_every,
        )
        return 0
    if args.command == "train":
        trainer = Trainer(experiment, args.workdir, allow_config_change=args.allow_config_change)
        trainer.fit()
    else:
        Trainer(experiment, args.workdir).evaluate_checkpoint(args.split)
    return 0


def _skip_absent_tpu() -> None:
    """Keeps JAX from probing for a TPU where there is none but libtpu is installed (the ``tpu``
    extra, which ``make test`` installs for AOT compilation): libtpu prints a page of warnings
    there before anything else. An explicit ``JAX_PLATFORMS`` always wins."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):  # a TPU VM
        return
    cuda = any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13))
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _skip_absent_tpu()
    from jaxdl.host_memory import retain_host_memory
    from jaxdl.xla_flags import apply_default_xla_flags

    retain_host_memory()
    apply_default_xla_flags()
    args, extra = _parser().parse_known_args(argv)
    from jaxdl.errors import JaxdlExit

    try:
        return _run(args, extra)
    except JaxdlExit as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        sys.stderr.write(f"{error.prefix}{message}\n")
        raise SystemExit(error.exit_code) from None


def console_main() -> None:
    """The ``jaxdl`` program. After failed checkpoint reads (exit 5), Orbax's background reader
    threads can print asyncio tracebacks while the interpreter shuts down, burying the one-line
    message; nothing is left to save then, so that exit skips the interpreter's teardown. The
    program first restarts itself with glibc asking for transparent huge pages where that helps
    (``jaxdl.host_memory``)."""
    from jaxdl.host_memory import restart_with_huge_pages

    restart_with_huge_pages()
    from jaxdl.errors import NoGoodCheckpointError

    try:
        sys.exit(main())
    except SystemExit as exit_:
        if exit_.code == NoGoodCheckpointError.exit_code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(NoGoodCheckpointError.exit_code)
        raise


if __name__ == "__main__":
    console_main()
