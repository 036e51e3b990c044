"""The sweep's results: a table sorted by the metric, JSON, and metric-vs-parameter plots."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxdl.sweeps.spec import SweepSpec


def ranked(spec: SweepSpec, trials: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Trials as rows, the best first (trials without a value last)."""
    rows = [{"trial": int(n), **record} for n, record in trials.items()]
    sign = -1.0 if spec.goal == "maximize" else 1.0
    return sorted(
        rows,
        key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["trial"]),
    )


def format_table(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    names = [p.name for p in spec.parameters if len(p.values) != 1]
    header = ["trial", *(n.removeprefix("config.") for n in names), spec.metric, "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        cells = [str(row["trial"]), *(str(row["params"].get(n)) for n in names), value]
        lines.append("| " + " | ".join([*cells, row["status"]]) + " |")
    return "\n".join(lines)


def plot_parameters(spec: SweepSpec, rows: list[dict[str, Any]], path: str) -> None:
    """One panel per swept parameter: the metric of each trial against its value (log axis for
    log-uniform ranges), pruned trials hollow, the best trial marked."""
    swept = [p for p in spec.parameters if len(p.values) != 1]
    scored = [r for r in rows if r["value"] is not None]
    fig = Figure(figsize=(4 * max(len(swept), 1), 3.4))
    FigureCanvasAgg(fig)  # pyplot-free, like jaxdl.metrics.plots
    axes = np.atleast_1d(fig.subplots(1, max(len(swept), 1)))
    for axis, parameter in zip(axes, swept, strict=False):
        for row in scored:
            value = row["params"].get(parameter.name)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            x = value if numeric else str(value)
            face = "none" if row["status"] == "pruned" else "tab:blue"
            axis.scatter([x], [row["value"]], facecolors=face, edgecolors="tab:blue")
        if scored:
            best = scored[0]
            value = best["params"].get(parameter.name)
            x = value if isinstance(value, int | float) else str(value)
            axis.scatter([x], [best["value"]], marker="*", s=200, color="tab:red", zorder=3)
        if parameter.distribution == "log_uniform_values":
            axis.set_xscale("log")
        axis.set_xlabel(parameter.name.removeprefix("config."))
        axis.set_ylabel(spec.metric)
    fig.suptitle(f"{len(scored)} trials ({spec.method}); * = best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(spec: SweepSpec, trials: Mapping[str, Any], root: str) -> list[dict[str, Any]]:
    """``ROOT/sweep_results.json`` and ``ROOT/sweep_parameters.png``; returns the ranked rows."""
    rows = ranked(spec, trials)
    with open(os.path.join(root, "sweep_results.json"), "w") as handle:
        json.dump({"metric": spec.metric, "goal": spec.goal, "trials": rows}, handle, indent=2)
    plot_parameters(spec, rows, os.path.join(root, "sweep_parameters.png"))
    return rows
