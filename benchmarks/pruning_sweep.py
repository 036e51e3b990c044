"""Sparsity vs test accuracy of magnitude pruning on the default experiment (ResNet-20, digits).

For each seed (0..N-1, through ``--config.seed``):

- **dense**: trains the experiment as configured in a temporary workdir and restores its best-val
  checkpoint, as ``jaxdl train`` reports it;
- **one-shot** (``layer`` and ``global`` scope): prunes that checkpoint's kernels once to each
  sparsity with ``jaxdl.optim.prune_checkpoint.one_shot_prune`` and evaluates it on the test split,
  no fine-tuning (BatchNorm statistics as trained);
- **gradual** (each ``--gradual-scopes`` scope): trains from scratch with an ``optimizer.pruning``
  section per sparsity: Zhu & Gupta's cubic schedule from ``--begin-fraction`` to ``--end-fraction``
  of the run, masks recomputed every half epoch, then training at the final sparsity to the end.
  ``early_stopping.start_from_step`` is set to the schedule's end, so the best-val checkpoint that
  is tested is one at the final sparsity.

Every row records the sparsity measured on the tested weights (zeros over all kernel entries). The
table gives the mean test accuracy over seeds per method; the PNG plots it (min–max bars when
there are several seeds).

    python benchmarks/pruning_sweep.py                       # 1 seed, 30 epochs
    python benchmarks/pruning_sweep.py --seeds 3 --config.train.num_epochs=20
    python benchmarks/pruning_sweep.py --quick               # smoke test: 1 epoch, 2 sparsities
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from common import (
    BENCHMARKS_DIR,
    REPO_ROOT,
    add_common_args,
    apply_xla_flags,
    format_table,
    run_program,
    write_report,
)

NAME = "pruning_sweep"
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments", "digits_resnet.py")
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
QUICK_SPARSITIES = (0.0, 0.9)
SCOPES = ("layer", "global")
FULL_SEEDS = 3


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Sweep flags plus the ``--config.a.b=value`` overrides passed through to the config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file (path[:arg])")
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"seeds 0..N-1 (default 1; --full: {FULL_SEEDS})"
    )
    parser.add_argument(
        "--sparsities",
        type=float,
        nargs="+",
        default=None,
        help=f"fractions of kernel weights pruned (default {list(SPARSITIES)})",
    )
    parser.add_argument(
        "--gradual-scopes",
        nargs="*",
        choices=SCOPES,
        default=list(SCOPES),
        help="scopes of the gradual runs (none: one-shot only)",
    )
    parser.add_argument("--begin-fraction", type=float, default=0.1, help="gradual: first prune")
    parser.add_argument(
        "--end-fraction", type=float, default=0.6, help="gradual: final sparsity reached"
    )
    parser.add_argument(
        "--plot", default=None, help="PNG path (default: benchmarks/out/pruning_sweep.png)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"1 epoch, sparsities {list(QUICK_SPARSITIES)}"
    )
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's progress")
    args, overrides = parser.parse_known_args(argv)
    bad = [arg for arg in overrides if not arg.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized argument {bad[0]!r} (config overrides look like --config.x=y)")
    if any(arg.startswith("--config.seed=") for arg in overrides):
        parser.error("the seed is set per repeat (0..N-1); use --seeds instead of --config.seed")
    if args.seeds is None:
        args.seeds = FULL_SEEDS if args.full else 1
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.sparsities is None:
        args.sparsities = list(QUICK_SPARSITIES if args.quick else SPARSITIES)
    if not all(0 <= s < 1 for s in args.sparsities):
        parser.error("--sparsities must be in [0, 1)")
    args.sparsities = sorted({0.0, *args.sparsities})
    if not 0 <= args.begin_fraction <= args.end_fraction <= 1:
        parser.error("need 0 <= --begin-fraction <= --end-fraction <= 1")
    if args.quick:
        overrides = [*overrides, "--config.train.num_epochs=1", "--config.schedule.warmup_epochs=0"]
    return args, overrides


def build(config_arg: str, overrides: Sequence[str], seed: int, pruning: dict | None = None):
    """The experiment of ``config_arg`` + overrides for ``seed``, with ``pruning`` (a dict of
    ``optimizer.pruning`` fields plus ``start_from_step`` for early stopping) if given."""
    import ml_collections

    from jaxdl.config import load_config
    from jaxdl.errors import UserError
    from jaxdl.experiment import build_experiment

    try:  # a bad config file, override or value ends the script with one line, as the CLI does
        config = load_config(config_arg, [*overrides, f"--config.seed={seed}"])
        if pruning is not None:
            pruning = dict(pruning)
            with config.unlocked():
                config.early_stopping.start_from_epoch = 0
                config.early_stopping.start_from_step = pruning.pop("start_from_step")
                config.optimizer.pruning = ml_collections.ConfigDict(pruning)
        return build_experiment(config)
    except UserError as error:
        raise SystemExit(f"{NAME}: error: {error}") from None


def train_and_restore(
    experiment: Any, workdir: str, verbose: bool
) -> tuple[Any, Any, dict[str, Any]]:
    """Trains ``experiment`` in ``workdir``; returns the trainer (for evaluation), the restored
    best (else latest) state and ``fit``'s results."""
    from jaxdl.train import Trainer
    from jaxdl.train.restore import restore_trained_state

    trainer = Trainer(experiment, workdir, quiet=not verbose)
    results = trainer.fit()
    return trainer, restore_trained_state(experiment, workdir), results


def row(method: str, seed: int, target: float, state: Any, accuracy: float) -> dict[str, Any]:
    """One result: method, seed, target sparsity, measured kernel sparsity (overall and of the
    sparsest kernel), test accuracy."""
    from jaxdl.optim.pruning import sparsity_report

    report = sparsity_report(state.params)
    return {
        "method": method,
        "seed": seed,
        "target_sparsity": target,
        "sparsity": report["overall"],
        "max_kernel_sparsity": max(report["per_kernel"].values()),
        "test_accuracy": accuracy,
    }


def run_seed(args: argparse.Namespace, overrides: Sequence[str], seed: int) -> list[dict]:
    """Dense + one-shot rows, then the gradual runs, for one seed."""
    from jaxdl.optim.prune_checkpoint import one_shot_prune

    dense = build(args.config, overrides, seed)
    with tempfile.TemporaryDirectory(prefix="jaxdl_prune_") as workdir:
        trainer, state, results = train_and_restore(dense, workdir, args.verbose)
        rows = [row("dense", seed, 0.0, state, results["accuracy"])]
        print(f"seed {seed}: dense test accuracy {results['accuracy']:.4f}", flush=True)
        for scope in SCOPES:
            for sparsity in args.sparsities:
                pruned = one_shot_prune(state, sparsity, scope)
                accuracy = trainer.evaluate(trainer.splits.test, pruned)["accuracy"]
                rows.append(row(f"one-shot {scope}", seed, sparsity, pruned, accuracy))
    total, per_epoch = dense.total_steps, dense.steps_per_epoch
    begin, end = round(args.begin_fraction * total), round(args.end_fraction * total)
    for scope in args.gradual_scopes:
        rows.append({**rows[0], "method": f"gradual {scope}"})  # sparsity 0: the dense run
        for sparsity in [s for s in args.sparsities if s > 0]:
            pruning = {
                "sparsity": sparsity,
                "scope": scope,
                "begin_step": begin,
                "end_step": end,
                "frequency": max(1, per_epoch // 2),
                "start_from_step": end,
            }
            experiment = build(args.config, overrides, seed, pruning)
            with tempfile.TemporaryDirectory(prefix="jaxdl_prune_") as workdir:
                _, state, results = train_and_restore(experiment, workdir, args.verbose)
            rows.append(row(f"gradual {scope}", seed, sparsity, state, results["accuracy"]))
            print(
                f"seed {seed}: gradual {scope} {sparsity:g}: "
                f"test accuracy {results['accuracy']:.4f}",
                flush=True,
            )
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean / min / max test accuracy and mean measured sparsity per (method, target)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        if r["method"] != "dense":
            groups.setdefault((r["method"], r["target_sparsity"]), []).append(r)
    return [
        {
            "method": method,
            "target_sparsity": target,
            "sparsity_mean": statistics.fmean(r["sparsity"] for r in group),
            "seeds": len(group),
            "test_accuracy_mean": statistics.fmean(r["test_accuracy"] for r in group),
            "test_accuracy_min": min(r["test_accuracy"] for r in group),
            "test_accuracy_max": max(r["test_accuracy"] for r in group),
        }
        for (method, target), group in groups.items()
    ]


def pivot(summary: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows by sparsity, one column of mean test accuracy per method."""
    methods = list(dict.fromkeys(s["method"] for s in summary))
    table: dict[float, dict[str, Any]] = {}
    for s in summary:
        entry = table.setdefault(s["target_sparsity"], {"sparsity": s["target_sparsity"]})
        entry[s["method"]] = s["test_accuracy_mean"]
    return [table[key] for key in sorted(table)], ["sparsity", *methods]


def plot(summary: Sequence[dict[str, Any]], seeds: int, title: str, path: str) -> None:
    """Test accuracy vs sparsity, one line per method, min–max bars over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for method in dict.fromkeys(s["method"] for s in summary):
        points = [s for s in summary if s["method"] == method]
        points.sort(key=lambda s: s["target_sparsity"])
        x = [p["target_sparsity"] for p in points]
        y = [p["test_accuracy_mean"] for p in points]
        low = [p["test_accuracy_mean"] - p["test_accuracy_min"] for p in points]
        high = [p["test_accuracy_max"] - p["test_accuracy_mean"] for p in points]
        style = "--" if method.startswith("one-shot") else "-"
        yerr = [low, high] if seeds > 1 else None
        axes.errorbar(x, y, yerr=yerr, marker="o", linestyle=style, capsize=3, label=method)
    axes.set_xlabel("sparsity (fraction of kernel weights that are zero)")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    axes.set_title(f"{title} ({seeds} seed{'s' if seeds > 1 else ''})")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        figure.savefig(path, format="png", dpi=100)
    finally:
        figure.clear()


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        apply_xla_flags(args.xla_flags)
    except ValueError as error:
        sys.exit(f"{NAME}: error: {error}")
    rows = [r for seed in range(args.seeds) for r in run_seed(args, overrides, seed)]
    summary = summarize(rows)
    table, columns = pivot(summary)
    print(format_table(table, columns))
    plot_path = args.plot or os.path.join(BENCHMARKS_DIR, "out", f"{NAME}.png")
    title = f"magnitude pruning, {os.path.basename(args.config.partition(':')[0])}"
    plot(summary, args.seeds, title, plot_path)
    report = {
        "config": args.config,
        "overrides": overrides,
        "seeds": args.seeds,
        "gradual": {
            "begin_fraction": args.begin_fraction,
            "end_fraction": args.end_fraction,
            "frequency": "steps_per_epoch // 2",
            "power": 3,
        },
        "rows": rows,
        "summary": summary,
        "plot": plot_path,
    }
    print(f"wrote {write_report(NAME, report, args.out)} and {plot_path}")
    return 0


if __name__ == "__main__":
    run_program(main)
