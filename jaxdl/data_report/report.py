"""Assembles the data report: ``data_report.json`` and its PNGs in one output directory."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import numpy as np

from jaxdl.data.imbalance import apply_train_options
from jaxdl.data.records import DataSplits
from jaxdl.data.views import source_labels
from jaxdl.data_report.duplicates import Catalogue, exact_duplicates, near_duplicates
from jaxdl.data_report.examples import IMAGE, load_report_splits, read_splits
from jaxdl.data_report.label_issues import (
    RestoreState,
    label_issue_section,
    out_of_fold_probabilities,
)
from jaxdl.data_report.plots import plot_class_counts, plot_gallery
from jaxdl.errors import UserError

REPORT_FILENAME = "data_report.json"
_GALLERY_SIZE = 24


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """Near-duplicate thresholds (text: character 3-gram Jaccard; image: thumbnail cosine),
    how many suspected label errors to list (``top``) and how many groups, pairs and
    unreadable records to list at most (``max_listed``; the counts are always complete)."""

    text_threshold: float = 0.8
    image_threshold: float = 0.98
    top: int = 50
    max_listed: int = 100


def class_counts(catalogue: Catalogue) -> dict[str, Any]:
    """Examples per class and split, the imbalance ratio (largest / smallest class; None when a
    class is absent, listed under ``missing_classes``) and labels unknown (unreadable)."""
    names = catalogue.class_names
    section: dict[str, Any] = {"class_names": list(names), "per_split": {}, "imbalance_ratio": {}}
    section["missing_classes"], section["unknown_label"] = {}, {}
    for split in catalogue.splits:
        known = split.labels[split.labels >= 0]
        counts = np.bincount(known, minlength=len(names))
        section["per_split"][split.name] = counts.tolist()
        smallest = int(counts.min()) if len(counts) else 0
        ratio = round(float(counts.max()) / smallest, 4) if smallest else None
        section["imbalance_ratio"][split.name] = ratio
        section["missing_classes"][split.name] = [
            catalogue.label_name(int(c)) for c in np.flatnonzero(counts == 0)
        ]
        section["unknown_label"][split.name] = int((split.labels < 0).sum())
    return section


def _unreadable(catalogue: Catalogue, max_listed: int) -> dict[str, Any]:
    records = [dict(split=s.name, **entry) for s in catalogue.splits for entry in s.unreadable]
    return {
        "counts": {split.name: len(split.unreadable) for split in catalogue.splits},
        "records": records[:max_listed],
    }


def _loader_notes(info: dict[str, Any]) -> dict[str, Any]:
    """What the loader itself removed or changed (text cleaning, truncation), when it says."""
    keys = ("cleaning_report", "num_removed_empty", "num_removed_duplicates")
    keys += ("num_removed_conflicting", "num_truncated")
    return {key: info[key] for key in keys if key in info}


def analyse(
    data: DataSplits,
    options: ReportOptions = ReportOptions(),
    probabilities: np.ndarray | None = None,
    label_source: str = "",
    no_labels_reason: str = "no out-of-fold probabilities given",
) -> tuple[dict[str, Any], Catalogue]:
    """The report of ``data``'s splits (without plots) and the catalogue it was built from.

    ``probabilities``: out-of-fold rows for the train-then-val examples (see
    ``label_issues``); without them the label-issue section says ``no_labels_reason``.
    """
    catalogue = Catalogue.build(read_splits(data), list(data.info.get("class_names") or []))
    if catalogue.labels is not None and not catalogue.class_names:
        count = int(data.info.get("num_classes") or catalogue.labels.max() + 1)
        catalogue.class_names = [str(c) for c in range(count)]
    kinds = {split.name: split.kind for split in catalogue.splits}
    report: dict[str, Any] = {
        "kinds": kinds,
        "sizes": {split.name: len(split) for split in catalogue.splits},
        "class_counts": None,
        "exact_duplicates": exact_duplicates(catalogue, options.max_listed),
        "unreadable_records": _unreadable(catalogue, options.max_listed),
        "loader_notes": _loader_notes(data.info),
    }
    if len(set(kinds.values())) == 1:
        kind = next(iter(kinds.values()))
        threshold = options.image_threshold if kind == IMAGE else options.text_threshold
        near = near_duplicates(catalogue, kind, threshold, options.max_listed)
    else:
        near = {"computed": False, "reason": f"the splits hold different kinds of data: {kinds}"}
    report["near_duplicates"] = near
    if catalogue.labels is None:
        report["label_issues"] = {"computed": False, "reason": "the data has no class labels"}
        return report, catalogue
    report["class_counts"] = class_counts(catalogue)
    if probabilities is None:
        report["label_issues"] = {"computed": False, "reason": no_labels_reason}
    else:
        report["label_issues"] = label_issue_section(
            catalogue, probabilities, options.top, label_source
        )
    return report, catalogue


def _pixels(catalogue: Catalogue, entry: dict[str, Any]) -> np.ndarray:
    split = next(s for s in catalogue.splits if s.name == entry["split"])
    return split.source[entry["index"]]["inputs"]


def write_plots(report: dict[str, Any], catalogue: Catalogue, out: str) -> list[str]:
    """``class_counts.png``; for images, ``label_issues.png`` (the most suspect examples,
    given -> suggested label) and ``near_duplicates.png`` (the most similar pairs side by
    side). Returns the file names written."""
    written = []
    if report["class_counts"] is not None:
        counts = report["class_counts"]
        plot_class_counts(
            counts["per_split"], counts["class_names"], os.path.join(out, "class_counts.png")
        )
        written.append("class_counts.png")
    if set(report["kinds"].values()) != {IMAGE}:
        return written
    suspects = report["label_issues"].get("top", [])[:_GALLERY_SIZE]
    if suspects:
        plot_gallery(
            [_pixels(catalogue, e) for e in suspects],
            [f"{e['split']} #{e['index']}: {e['label']}→{e['suggested']}" for e in suspects],
            os.path.join(out, "label_issues.png"),
            "suspected label errors: given → suggested (out-of-fold confident learning)",
        )
        written.append("label_issues.png")
    pairs = report["near_duplicates"].get("listed", [])[: _GALLERY_SIZE // 2]
    if pairs:
        images, captions = [], []
        for pair in pairs:
            for side in ("a", "b"):
                images.append(_pixels(catalogue, pair[side]))
                label = f" ({pair[side]['label']})" if "label" in pair[side] else ""
                captions.append(f"{pair[side]['split']} #{pair[side]['index']}{label}")
            captions[-1] += f" cos {pair['similarity']:.3f}"
        plot_gallery(
            images,
            captions,
            os.path.join(out, "near_duplicates.png"),
            f"near-duplicate pairs (cosine >= {report['near_duplicates']['threshold']})",
        )
        written.append("near_duplicates.png")
    return written


def _check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable")


def write_data_report(
    config: ml_collections.ConfigDict,
    out: str,
    *,
    oof_root: str | None = None,
    restore: RestoreState | None = None,
    options: ReportOptions = ReportOptions(),
) -> dict[str, Any]:
    """Loads ``config``'s splits, analyses them (with out-of-fold label issues from the
    ``jaxdl cv`` root ``oof_root`` when given; ``restore`` loads a fold's best state), writes
    ``out/data_report.json`` and the plots, and returns the report."""
    _check_out(out)
    data, ignored = load_report_splits(config)
    probabilities, source = None, ""
    reason = (
        "not computed: no --oof ROOT given; confident learning needs out-of-fold "
        "probabilities from `jaxdl cv --config ... --folds K --workdir ROOT`"
    )
    if oof_root is not None:
        if restore is None:
            raise ValueError("oof_root needs restore(experiment, workdir) -> train state")
        if not (data.info.get("class_names") or data.info.get("num_classes")):
            raise UserError("--oof needs class-labelled data; this config's data has no labels")
        probabilities, folds = out_of_fold_probabilities(config, data, oof_root, restore)
        source = f"{folds} folds of {oof_root} (train and val; test is not scored)"
    report, catalogue = analyse(data, options, probabilities, source, reason)
    report = {
        "data": {"name": config.data.get("name"), "options": _options(config)},
        "options": dataclasses.asdict(options),
        "training_options_not_applied": ignored,
        **report,
    }
    if report["class_counts"] is not None and {"imbalance", "oversample"} & set(ignored):
        trained = apply_train_options(data, config.data)
        labels = source_labels(trained.train)
        if labels is not None:
            report["class_counts"]["train_as_trained"] = np.bincount(
                labels, minlength=len(catalogue.class_names)
            ).tolist()
    report["plots"] = write_plots(report, catalogue, out)
    path = os.path.join(out, REPORT_FILENAME)
    with open(path + ".partial", "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False, default=_jsonable)
    os.replace(path + ".partial", path)
    return report


def _options(config: ml_collections.ConfigDict) -> Any:
    options = config.data.get("options")
    return options.to_dict() if isinstance(options, ml_collections.ConfigDict) else options


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: sizes, imbalance, duplicates and leaks, unreadable
    records, label issues."""
    sizes = ", ".join(f"{name} {size:,}" for name, size in report["sizes"].items())
    lines = [
        f"{report['data']['name']}: {sizes} ({'/'.join(sorted(set(report['kinds'].values())))})"
    ]
    counts = report["class_counts"]
    if counts is not None:
        ratios = ", ".join(f"{k} {v}" for k, v in counts["imbalance_ratio"].items())
        lines.append(f"imbalance ratio (largest/smallest class): {ratios}")
    for key, unit in (("exact_duplicates", "groups"), ("near_duplicates", "pairs")):
        section = report[key]
        if not section.get("computed", True):
            lines.append(f"{key.replace('_', ' ')}: not computed ({section['reason']})")
            continue
        within = ", ".join(f"{k} {v[unit]}" for k, v in section["within_split"].items())
        across = ", ".join(f"{k} {v[unit]}" for k, v in section["across_splits"].items())
        conflicts = section.get("label_conflict_groups", section.get("label_conflict_pairs"))
        lines.append(
            f"{key.replace('_', ' ')} ({unit}): within {within}; across {across}; "
            f"with conflicting labels {conflicts}"
        )
    unreadable = ", ".join(f"{k} {v}" for k, v in report["unreadable_records"]["counts"].items())
    lines.append(f"unreadable records: {unreadable}")
    issues = report["label_issues"]
    if issues["computed"]:
        lines.append(
            f"label issues: estimated noise rate {issues['estimated_noise_rate']:.4f} "
            f"(~{issues['estimated_label_errors']} of {issues['examples_scored']}), "
            f"{issues['flagged']} flagged"
        )
    else:
        lines.append(f"label issues: {issues['reason']}")
    return "\n".join(lines)
