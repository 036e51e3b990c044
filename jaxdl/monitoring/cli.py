"""``jaxdl drift``: windows of inputs against a reference, as ``drift_report.json`` and
``drift_report.png``.

``jaxdl drift --export DIR INPUTS…`` runs an export (its graph and embedding graph, no model code)
on ``.npy`` / ``.npz`` files of model inputs (what ``/predict`` takes: a ``.npy`` holds the batch
of a one-input model, an ``.npz`` one array per input name); ``jaxdl drift --workdir W`` runs the
run's best checkpoint on such files or, without files, on a split (``--split``, default test),
against the workdir's cached reference.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxdl.data.records import RecordError
from jaxdl.errors import UserError
from jaxdl.export.artifact import check_inputs, input_spec_json, load_exported, read_metadata
from jaxdl.export.formats import Runner
from jaxdl.export.inference import stack_inputs
from jaxdl.monitoring.reference import (
    DriftReference,
    embedding_runner,
    input_features,
    load_embedding_graph,
    predicted_classes,
    run_batched,
    workdir_reference,
)
from jaxdl.monitoring.report import drift_report, plot_report

REPORT_JSON = "drift_report.json"
REPORT_PLOT = "drift_report.png"


def read_input_files(paths: Sequence[str], spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The examples of ``.npy`` / ``.npz`` files, in order, checked against ``spec`` (metadata's
    ``inputs``); a one-line ``UserError`` naming the file for anything unreadable or misshapen,
    or when they hold no example."""
    names = list(spec)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for path in paths:
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in (".npy", ".npz"):
            raise UserError(
                f"{path}: inputs are .npy or .npz arrays of model inputs (what /predict takes)"
            )
        if not os.path.isfile(path):
            raise UserError(f"input file not found: {path}")
        if suffix == ".npy" and len(names) != 1:
            raise UserError(f"{path}: the model takes inputs {names}; give an .npz of them")
        try:
            if suffix == ".npy":
                arrays = {names[0]: np.load(path, allow_pickle=False)}
            else:
                with np.load(path, allow_pickle=False) as data:
                    arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            reason = (str(error).splitlines() or [""])[0]
            raise UserError(f"cannot read {path}: {type(error).__name__}: {reason}") from None
        try:
            checked = check_inputs({"inputs": spec}, arrays)
        except UserError as error:
            raise UserError(f"{path}: {error}") from None
        for name in names:
            parts[name].append(checked[name])
    inputs = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    if not len(inputs[names[0]]):
        raise UserError("the inputs hold no examples")
    return inputs


def _export_source(args: argparse.Namespace) -> tuple[DriftReference, dict, Runner, Runner | None]:
    """Reference, inputs and runners of ``--export DIR INPUTS…``."""
    if args.split:
        raise UserError("--split needs --workdir (an export holds no data); give INPUTS")
    meta = read_metadata(args.export)
    reference = DriftReference.load(args.export)
    if not args.inputs:
        raise UserError("no inputs: give .npy/.npz files of model inputs after --export DIR")
    inputs = read_input_files(args.inputs, meta["inputs"])
    graph = meta.get("drift_reference", {}).get("embedding_graph")
    embed = None
    if graph:
        embed = load_embedding_graph(os.path.join(args.export, graph), list(meta["inputs"]))
    return reference, inputs, load_exported(args.export), embed


def _workdir_source(args: argparse.Namespace) -> tuple[DriftReference, dict, Runner, Runner | None]:
    """Reference, inputs and runners of ``--workdir W [INPUTS… | --split S]``."""
    from jaxdl.cli import _restore_best_state, trained_workdir_config
    from jaxdl.experiment import build_experiment
    from jaxdl.export import experiment_inference

    if args.inputs and args.split:
        raise UserError("give INPUTS or --split, not both")
    experiment = build_experiment(trained_workdir_config(args.workdir))
    state = _restore_best_state(experiment, args.workdir)
    inference = experiment_inference(experiment, state)
    reference = workdir_reference(experiment, inference, args.workdir, int(state.step))
    if args.inputs:
        inputs = read_input_files(args.inputs, input_spec_json(inference))
    else:
        source = experiment.data.get(args.split or "test")
        if not len(source):
            raise UserError(f"the {args.split or 'test'} split is empty")
        records = []
        for index in range(len(source)):
            try:
                records.append(source[index])
            except RecordError:
                continue  # unreadable: `jaxdl predict` reports it
        inputs = stack_inputs(records, inference.input_spec)
    return reference, inputs, inference, embedding_runner(inference)


def drift_command(args: argparse.Namespace) -> int:
    """``jaxdl drift``: writes the report and plot, prints one line per window."""
    source = _export_source if args.export else _workdir_source
    reference, inputs, run, embed = source(args)
    predictions = predicted_classes(run_batched(run, inputs))
    embeddings = run_batched(embed, inputs)["embeddings"] if embed is not None else None
    report = drift_report(
        reference,
        input_features(reference.plan, inputs),
        predictions,
        embeddings,
        args.window,
        permutations=args.permutations,
        seed=args.seed,
    )
    out = args.out or (os.path.join(args.workdir, "drift") if args.workdir else "drift")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, REPORT_JSON), "w") as handle:
        json.dump(report, handle, indent=2)
    plot_report(report, os.path.join(out, REPORT_PLOT))
    for window in report["windows"]:
        print(format_window(window))
    print(
        f"{report['drifted_windows']} of {len(report['windows'])} window(s) drifted; "
        f"{REPORT_JSON} and {REPORT_PLOT} in {out}"
    )
    return 0


def format_window(window: Mapping[str, Any]) -> str:
    """One line: the window's span, status, worst feature PSI, prediction PSI, MMD."""
    worst = max(window["features"].items(), key=lambda item: item[1]["psi"])
    parts = [
        f"window {window['index']} [{window['start']}, {window['stop']}): {window['status']}",
        f"max feature PSI {worst[1]['psi']:.3f} ({worst[0]})",
        f"min KS p {min(f['ks_pvalue'] for f in window['features'].values()):.2g}",
    ]
    if "prediction_psi" in window:
        parts.append(f"prediction PSI {window['prediction_psi']:.3f}")
    if "embedding_mmd2" in window:
        parts.append(
            f"MMD² {window['embedding_mmd2']:.4f} (p {window['embedding_mmd_pvalue']:.3g})"
        )
    return ", ".join(parts)
