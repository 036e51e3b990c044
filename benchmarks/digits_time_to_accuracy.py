"""Time to accuracy of the default experiment (ResNet-20 on sklearn digits) with the real Trainer.

Each repeat (seed 0..N-1) builds the experiment from its config file, AOT-compiles the train and
eval steps (``ShardedStep.lower(...).compile()``, timed; this fills the jit cache, so training
does not compile again), then runs ``Trainer.fit()`` in a fresh temporary workdir and reads
``metrics.jsonl`` and ``results.json`` back:

- time to target: summed ``period_seconds`` (train steps + validation pass) up to the first epoch
  whose val accuracy reaches ``--target``; compilation (done before) and checkpoint saves are not
  in it;
- steady-state step time / examples per second: median of the train ``examples_per_sec`` logging
  windows, excluding the first window of the run;
- total seconds: the whole repeat, from config loading to the test evaluation.

    python benchmarks/digits_time_to_accuracy.py
    python benchmarks/digits_time_to_accuracy.py --repeats 3 --config.train.num_epochs=20
    python benchmarks/digits_time_to_accuracy.py --full   # 5 seeds (meant for a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from common import (
    REPO_ROOT,
    add_common_args,
    apply_xla_flags,
    format_table,
    run_program,
    write_report,
)

NAME = "digits_time_to_accuracy"
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments", "digits_resnet.py")
FULL_REPEATS = 5
TABLE_COLUMNS = (
    "seed",
    "epochs",
    "target_epoch",
    "time_to_target_s",
    "compile_s",
    "eval_compile_s",
    "setup_s",
    "step_ms",
    "examples_per_s",
    "best_val_accuracy",
    "test_accuracy",
    "total_s",
)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Benchmark flags plus the ``--config.a.b=value`` overrides passed through to the config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file (path[:arg])")
    parser.add_argument("--target", type=float, default=0.98, help="val accuracy to reach")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"seeds 0..N-1 (default 1; --full: {FULL_REPEATS})",
    )
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's progress")
    args, overrides = parser.parse_known_args(argv)
    bad = [arg for arg in overrides if not arg.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized argument {bad[0]!r} (config overrides look like --config.x=y)")
    if any(arg.startswith("--config.seed=") for arg in overrides):
        parser.error("the seed is set per repeat (0..N-1); use --repeats instead of --config.seed")
    if args.repeats is None:
        args.repeats = FULL_REPEATS if args.full else 1
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not 0.0 < args.target <= 1.0:
        parser.error("--target must be in (0, 1]")
    return args, overrides


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def time_to_target(
    val_records: Sequence[dict[str, Any]], target: float
) -> tuple[int | None, float | None]:
    """(epoch, cumulative epoch seconds) at the first val record with accuracy >= ``target``;
    ``(None, None)`` when no epoch reaches it."""
    elapsed = 0.0
    for record in sorted(val_records, key=lambda r: r["epoch"]):
        elapsed += record["period_seconds"]
        if record["accuracy"] >= target:
            return record["epoch"], elapsed
    return None, None


def steady_state_examples_per_sec(train_records: Sequence[dict[str, Any]]) -> float | None:
    """Median examples/s of the train logging windows after the first (warm-up) window."""
    windows = [record["examples_per_sec"] for record in train_records[1:]]
    return statistics.median(windows) if windows else None


def aot_compile(trainer: Any) -> tuple[float, float]:
    """Lowers and compiles the trainer's train and eval steps; returns their seconds.

    The batch specs are the task's (what the loaders produce, plus the eval mask), so the compiled
    executables are the ones ``fit()`` then finds in the jit cache.
    """
    import jax

    exp = trainer.exp
    train_batch = exp.abstract_batch()
    eval_batch = {
        name: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=exp.batch_sharding)
        for name, leaf in exp.task.abstract_batch(exp.eval_batch_size).items()
    }
    eval_batch["mask"] = jax.ShapeDtypeStruct(
        (exp.eval_batch_size,), np.float32, sharding=exp.batch_sharding
    )
    start = time.perf_counter()
    trainer.train_step.lower(trainer.state, train_batch).compile()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trainer.eval_step.lower(trainer.state, eval_batch).compile()
    return train_seconds, time.perf_counter() - start


def run_once(
    config_arg: str, overrides: Sequence[str], seed: int, target: float, verbose: bool
) -> dict[str, Any]:
    """Trains one seed in a temporary workdir and summarises its logs (see the module doc)."""
    from jaxdl.config import load_config
    from jaxdl.errors import UserError
    from jaxdl.experiment import build_experiment
    from jaxdl.train import Trainer

    start = time.perf_counter()
    try:  # a bad config file, override or value ends the script with one line, as the CLI does
        config = load_config(config_arg, [*overrides, f"--config.seed={seed}"])
        experiment = build_experiment(config)
    except UserError as error:
        raise SystemExit(f"{NAME}: error: {error}") from None
    with tempfile.TemporaryDirectory(prefix="jaxdl_bench_") as workdir:
        trainer = Trainer(experiment, workdir, quiet=not verbose)
        setup_seconds = time.perf_counter() - start
        compile_seconds, eval_compile_seconds = aot_compile(trainer)
        results = trainer.fit()
        total_seconds = time.perf_counter() - start
        records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        with open(os.path.join(workdir, "results.json")) as handle:
            saved = json.load(handle)
    val = [r for r in records if r.get("split") == "val"]
    train = [r for r in records if r.get("split") == "train"]
    target_epoch, target_seconds = time_to_target(val, target)
    examples_per_sec = steady_state_examples_per_sec(train)
    batch = int(config.train.batch_size)
    return {
        "seed": seed,
        "epochs": len(val),
        "target_epoch": target_epoch,
        "time_to_target_s": target_seconds,
        "compile_s": compile_seconds,
        "eval_compile_s": eval_compile_seconds,
        "setup_s": setup_seconds,
        "step_ms": None if examples_per_sec is None else batch / examples_per_sec * 1e3,
        "examples_per_s": examples_per_sec,
        "first_window_examples_per_s": train[0]["examples_per_sec"] if train else None,
        "best_val_accuracy": max((r["accuracy"] for r in val), default=None),
        "test_accuracy": saved["accuracy"],
        "test_f1_macro": saved["f1_macro"],
        "best_step": results["best_step"],
        "fit_s": saved["train_seconds"],
        "period_seconds_sum": sum(r["period_seconds"] for r in val),
        "total_s": total_seconds,
    }


def summarize(runs: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """Across seeds: test accuracy mean/min, time to target mean/max, runs reaching the target."""
    accuracies = [run["test_accuracy"] for run in runs]
    reached = [run["time_to_target_s"] for run in runs if run["time_to_target_s"] is not None]
    throughputs = [run["examples_per_s"] for run in runs if run["examples_per_s"] is not None]
    return {
        "target": target,
        "repeats": len(runs),
        "reached_target": len(reached),
        "test_accuracy_mean": statistics.fmean(accuracies),
        "test_accuracy_min": min(accuracies),
        "time_to_target_s_mean": statistics.fmean(reached) if reached else None,
        "time_to_target_s_max": max(reached) if reached else None,
        "compile_s_mean": statistics.fmean(run["compile_s"] for run in runs),
        "examples_per_s_median": statistics.median(throughputs) if throughputs else None,
        "total_s_mean": statistics.fmean(run["total_s"] for run in runs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        apply_xla_flags(args.xla_flags)
    except ValueError as error:
        sys.exit(f"{NAME}: error: {error}")
    runs = []
    for seed in range(args.repeats):
        runs.append(run_once(args.config, overrides, seed, args.target, args.verbose))
        print(f"seed {seed}: test accuracy {runs[-1]['test_accuracy']:.4f}", flush=True)
    summary = summarize(runs, args.target)
    print(format_table(runs, TABLE_COLUMNS))
    print(format_table([summary], list(summary)))
    report = {
        "config": args.config,
        "overrides": overrides,
        "xla_flags_arg": args.xla_flags,
        "runs": runs,
        "summary": summary,
    }
    print(f"wrote {write_report(NAME, report, args.out)}")
    return 0


if __name__ == "__main__":
    run_program(main)
