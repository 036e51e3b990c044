"""Offline batch inference over a split (``jaxdl predict``) and the error analysis it enables.

Predictions go through the same ``InferenceFunction`` that export and serving use, one row per
record in the split's order; a record that cannot be read gets a row with its error instead of
disappearing. With labels at hand, ``analyze_classification`` writes the per-example analyses a
sums-based evaluation cannot give: calibration (ECE, reliability diagram, the temperature that
would fix it), one-vs-rest ROC / precision-recall curves, the most-confused class pairs and the
per-class metrics chart.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from jaxdl.data.records import RecordError
from jaxdl.errors import UserError
from jaxdl.export.inference import InferenceFunction, stack_inputs
from jaxdl.metrics import (
    classification_report,
    expected_calibration_error,
    fit_temperature,
    most_confused_pairs,
    one_vs_rest_curves,
    plot_per_class_metrics,
    plot_pr_curves,
    plot_reliability_diagram,
    plot_roc_curves,
    reliability_bins,
)
from jaxdl.metrics.gallery import write_misclassified

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def infer_records(
    inference: InferenceFunction, source: Any, batch_size: int = 64
) -> Iterator[dict[str, Any]]:
    """One row per record of ``source``, in order: ``index``, the ``record`` and its ``outputs``
    (that row of each of ``inference``'s outputs), or ``index`` and ``error`` (the first line of
    the ``RecordError``) for an unreadable record. Batches are padded to ``batch_size`` so one
    compiled program serves every batch."""
    pending: list[tuple[int, dict[str, Any]]] = []

    def flush() -> Iterator[dict[str, Any]]:
        records = [record for _, record in pending]
        records += [records[-1]] * (batch_size - len(records))
        outputs = inference(stack_inputs(records, inference.input_spec))
        for row, (index, record) in enumerate(pending):
            yield {
                "index": index,
                "record": record,
                "outputs": {name: value[row] for name, value in outputs.items()},
            }
        pending.clear()

    for index in range(len(source)):
        try:
            pending.append((index, source[index]))
        except RecordError as error:
            yield from flush() if pending else ()
            yield {"index": index, "error": str(error).splitlines()[0]}
            continue
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def classify_records(
    inference: InferenceFunction, source: Any, batch_size: int = 64
) -> Iterator[dict[str, Any]]:
    """One row per record of ``source`` (``infer_records``): ``index``, ``label`` (when the
    record has one), ``logits`` and ``probabilities`` (float32 arrays), or ``error`` for an
    unreadable record."""
    if "probabilities" not in inference.output_names:
        raise UserError("predict needs a classification model (outputs 'probabilities')")
    for row in infer_records(inference, source, batch_size):
        if "error" in row:
            yield row
            continue
        out = {"index": row["index"]}
        if "labels" in row["record"]:
            out["label"] = int(np.asarray(row["record"]["labels"]))
        out["logits"] = row["outputs"]["logits"]
        out["probabilities"] = row["outputs"]["probabilities"]
        yield out


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    return list(class_names) if class_names else [str(c) for c in range(num_classes)]


def write_predictions(
    rows: Sequence[dict[str, Any]], path: str, class_names: Sequence[str] | None
) -> None:
    """Writes rows as CSV or JSON lines (by ``path``'s suffix): index, label, ``prediction``
    (class id), ``predicted_class``, ``confidence`` and one probability column per class."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"--out must end in one of {OUTPUT_SUFFIXES}, got {path!r}")
    num_classes = next((len(r["probabilities"]) for r in rows if "probabilities" in r), 0)
    names = _class_names(class_names, num_classes)
    table = []
    for row in rows:
        line: dict[str, Any] = {"index": row["index"], "label": row.get("label", "")}
        if "error" in row:
            line |= {"prediction": "", "predicted_class": "", "confidence": ""}
            line |= {f"p_{name}": "" for name in names} | {"error": row["error"]}
        else:
            probs = np.asarray(row["probabilities"], np.float64)
            top = int(np.argmax(probs))
            line |= {"prediction": top, "predicted_class": names[top]}
            line |= {"confidence": float(probs[top])}
            line |= {f"p_{name}": float(p) for name, p in zip(names, probs, strict=True)}
            line["error"] = ""
        table.append(line)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"  # a kill mid-write leaves no truncated file under ``path``
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        if suffix == ".jsonl":
            for line in table:
                handle.write(json.dumps(line) + "\n")
        else:
            columns = list(table[0]) if table else ["index", "label", "prediction", "error"]
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
    os.replace(partial, path)


def analyze_classification(
    rows: Sequence[dict[str, Any]],
    class_names: Sequence[str] | None,
    out_dir: str,
    split: str,
    source: Any = None,
    texts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Calibration, ROC/PR curves, most-confused pairs and per-class metrics of the readable
    labelled rows, as ``analysis_<split>.json`` plus PNG plots in ``out_dir``; the mistakes as
    ``misclassified_<split>.json`` with the split's ``texts`` if given, and a gallery PNG of
    ``source``'s images (``write_misclassified``)."""
    scored = [r for r in rows if "error" not in r and "label" in r]
    if not scored:
        return {}
    probs = np.stack([np.asarray(r["probabilities"], np.float64) for r in scored])
    logits = np.stack([np.asarray(r["logits"], np.float64) for r in scored])
    labels = np.asarray([r["label"] for r in scored])
    names = _class_names(class_names, probs.shape[1])
    confusion = confusion_matrix(labels, probs.argmax(-1), labels=range(probs.shape[1]))
    report = classification_report(confusion, names)
    temperature = fit_temperature(logits, labels)
    scaled = np.exp(logits / temperature - (logits / temperature).max(-1, keepdims=True))
    scaled /= scaled.sum(-1, keepdims=True)
    os.makedirs(out_dir, exist_ok=True)
    curves = one_vs_rest_curves(probs, labels, names)
    analysis = {
        "split": split,
        "examples": int(len(labels)),
        "unreadable": int(sum("error" in r for r in rows)),
        "accuracy": report["accuracy"],
        "ece": expected_calibration_error(probs, labels),
        "temperature": temperature,
        "ece_after_temperature": expected_calibration_error(scaled, labels),
        "reliability": reliability_bins(probs, labels).to_dict(),
        "most_confused": most_confused_pairs(confusion, names),
        "macro_roc_auc": curves["macro_roc_auc"],
        "macro_average_precision": curves["macro_average_precision"],
        "curves": curves,
    }
    plot_reliability_diagram(probs, labels, os.path.join(out_dir, f"reliability_{split}.png"))
    plot_roc_curves(curves, os.path.join(out_dir, f"roc_{split}.png"))
    plot_pr_curves(curves, os.path.join(out_dir, f"precision_recall_{split}.png"))
    plot_per_class_metrics(report, os.path.join(out_dir, f"per_class_{split}.png"))
    indices = [r["index"] for r in scored]
    write_misclassified(probs, labels, indices, names, out_dir, split, source=source, texts=texts)
    with open(os.path.join(out_dir, f"analysis_{split}.json"), "w") as handle:
        json.dump(analysis, handle, indent=2)
    return analysis
