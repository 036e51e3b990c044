"""Input pipeline vs train step (issue 11): how fast jaxdl's grain loader makes batches, how fast
the train step consumes them, and how much of an end-to-end step is spent waiting for input.

For each case (the default experiment ``experiments/digits_resnet.py``; a generated folder of
64x64 PNGs through ``experiments/folder_resnet.py``; the same folder converted to ArrayRecord) and
each ``data.worker_count`` (0 and 2) it measures:

* ``loader``: ``make_train_loader`` alone (no training), examples/s after the first batches;
* ``step``: the jitted train step (``Experiment.train_step``) on one device-resident batch;
* ``e2e`` and ``wait``: the real ``TrainLoop`` (with the ``TrainLogger`` that syncs every 10
  steps, as in ``jaxdl train``) over the loader's iterator wrapped to time every
  ``next(iterator)``: examples/s and the share of wall time blocked in ``next``.

    python benchmarks/input_pipeline.py            # 5,000-image folder; 10 e2e image steps
    python benchmarks/input_pipeline.py --quick    # 1,000 images, 3 e2e image steps
    python benchmarks/input_pipeline.py --data-dir /tmp/dm --keep-data   # reuse generated data
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import (
    REPO_ROOT,
    add_common_args,
    apply_xla_flags,
    format_table,
    run_program,
    write_report,
)
from data_memory import IMAGE_SIZE, convert_folder, generate_folder

NAME = "input_pipeline"
PRESETS = {
    # images in the generated folder; e2e steps timed (after warm-up) for digits / 64x64 images
    "quick": {"images": 1000, "digits_steps": 20, "image_steps": 3, "loader_seconds": 2.0},
    "default": {"images": 5000, "digits_steps": 100, "image_steps": 10, "loader_seconds": 5.0},
    "full": {"images": 40000, "digits_steps": 300, "image_steps": 50, "loader_seconds": 10.0},
}
WARMUP_STEPS = 3  # e2e steps left out of the timing (worker start-up, first batches)
LOADER_WARMUP_BATCHES = 3
TABLE_COLUMNS = (
    "case",
    "workers",
    "batch",
    "loader_ex_s",
    "first_batch_s",
    "step_ex_s",
    "step_cpu_ms",
    "e2e_ex_s",
    "wait_pct",
    "wait_ms_per_step",
    "e2e_steps",
    "load",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line; ``--quick``/``--full`` pick the preset, explicit flags override it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test sizes")
    parser.add_argument("--images", type=int, help="images in the generated folder")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--cases", default="digits,folder,array_record")
    parser.add_argument("--digits-steps", type=int, help="timed e2e steps, digits")
    parser.add_argument("--image-steps", type=int, help="timed e2e steps, 64x64 images")
    parser.add_argument("--step-repeats", type=int, default=5, help="timed device-resident steps")
    parser.add_argument("--loader-seconds", type=float, help="minimum loader-alone timing")
    parser.add_argument("--data-dir", help="where the folder is (re)generated; default: temp")
    parser.add_argument("--keep-data", action="store_true", help="do not delete --data-dir")
    args = parser.parse_args(argv)
    if args.quick and args.full:
        parser.error("--quick and --full are exclusive")
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    for field, default in preset.items():
        if getattr(args, field) is None:
            setattr(args, field, default)
    args.workers = tuple(int(w) for w in args.workers.split(","))
    args.cases = tuple(c.strip() for c in args.cases.split(","))
    if not set(args.cases) <= {"digits", "folder", "array_record"}:
        parser.error("--cases takes digits, folder and/or array_record")
    if args.images < 1000:
        parser.error("--images must be >= 1000")
    return args


class TimedIterator:
    """Wraps an iterator; ``waits[k]`` is the wall time the k-th ``next`` blocked."""

    def __init__(self, iterator: Iterator):
        self.iterator = iterator
        self.waits: list[float] = []

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        item = next(self.iterator)
        self.waits.append(time.perf_counter() - start)
        return item

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


class _NullWriter:
    def write(self, record: Any) -> None:
        del record


def build(case: str, folder: Path | None, records: Path | None) -> Any:
    """The experiment of ``case`` (``build_experiment`` of its config)."""
    from jaxdl.config import load_config
    from jaxdl.experiment import build_experiment

    if case == "digits":
        arg = "experiments/digits_resnet.py"
    elif case == "folder":
        arg = f"experiments/folder_resnet.py:root={folder},image_size={IMAGE_SIZE}"
    else:
        arg = f"experiments/folder_resnet.py:array_record={records}"
    return build_experiment(load_config(os.path.join(REPO_ROOT, arg)))


def loader(exp: Any, workers: int) -> Any:
    """The trainer's train loader for ``exp`` with ``workers`` grain worker processes."""
    from jaxdl.data.pipeline import make_train_loader

    return make_train_loader(
        exp.data.train,
        batch_size=exp.per_process_batch_size,
        seed=exp.seed,
        spec=exp.task.batch_spec(),
        worker_count=workers,
    )


def measure_loader(exp: Any, workers: int, min_seconds: float) -> dict[str, float]:
    """Examples/s of the loader alone, after its first ``LOADER_WARMUP_BATCHES`` batches."""
    iterator = iter(loader(exp, workers))
    try:
        start = time.perf_counter()
        next(iterator)
        first = time.perf_counter() - start
        for _ in range(LOADER_WARMUP_BATCHES - 1):
            next(iterator)
        batches, start = 0, time.perf_counter()
        while batches < 20 or time.perf_counter() - start < min_seconds:
            next(iterator)
            batches += 1
        seconds = time.perf_counter() - start
    finally:
        iterator.close()
    return {
        "loader_ex_s": batches * exp.per_process_batch_size / seconds,
        "first_batch_s": first,
        "loader_batches": batches,
    }


def measure_step(exp: Any, state: Any, repeats: int) -> tuple[Any, dict[str, float]]:
    """Compiles and times the train step on one device-resident batch; returns the new state."""
    import jax

    from jaxdl.parallel import shard_batch

    iterator = iter(loader(exp, 0))
    try:
        batch = shard_batch(next(iterator), exp.batch_sharding)
    finally:
        iterator.close()
    start = time.perf_counter()
    state, metrics = exp.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start
    state, metrics = exp.train_step(state, batch)  # one more untimed step
    jax.block_until_ready((state, metrics))
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        state, metrics = exp.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    return state, {
        "step_ex_s": repeats * exp.global_batch_size / seconds,
        "step_ms": seconds / repeats * 1e3,
        "step_cpu_ms": (time.process_time() - cpu_start) / repeats * 1e3,
        "compile_s": compile_s,
    }


def measure_e2e(exp: Any, state: Any, workers: int, steps: int) -> tuple[Any, dict[str, Any]]:
    """``steps`` timed steps (after ``WARMUP_STEPS``) of the real ``TrainLoop`` + ``TrainLogger``
    over the loader; the share of the timed wall time spent blocked in ``next(iterator)``."""
    import jax

    from jaxdl.train.callbacks import Callback, TrainLogger
    from jaxdl.train.loop import TrainLoop

    class StepClock(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, loop: Any, step: int, metrics: Any) -> None:
            self.ends.append(time.perf_counter())

    clock = StepClock()
    logger = TrainLogger(
        _NullWriter(),
        every_steps=10,
        schedule=exp.schedule,
        units_per_step=exp.task.throughput(exp.global_batch_size),
        unit=exp.task.throughput_unit,
        period_steps=10**9,
        quiet=True,
    )
    iterator = TimedIterator(iter(loader(exp, workers)))
    total = int(state.step) + WARMUP_STEPS + steps
    try:
        loop = TrainLoop(
            state=state,
            train_step=exp.train_step,
            iterator=iterator,
            batch_sharding=exp.batch_sharding,
            total_steps=total,
            steps_per_epoch=exp.steps_per_epoch,
            callbacks=[logger, clock],
        )
        state = loop.run()  # TrainLogger's final flush waits for the last step
        jax.block_until_ready(state)
        end = time.perf_counter()
    finally:
        iterator.close()
    start = clock.ends[WARMUP_STEPS - 1]
    wall = end - start
    waited = sum(iterator.waits[WARMUP_STEPS:])
    return state, {
        "e2e_ex_s": steps * exp.global_batch_size / wall,
        "e2e_step_ms": wall / steps * 1e3,
        "wait_pct": 100.0 * waited / wall,
        "wait_ms_per_step": waited / steps * 1e3,
        "warmup_wait_s": sum(iterator.waits[:WARMUP_STEPS]),
        "e2e_steps": steps,
    }


def run_case(case: str, args: argparse.Namespace, folder: Path, records: Path) -> list[dict]:
    """All measurements of one case: one row per worker count."""
    import jax

    exp = build(case, folder, records)
    steps = args.digits_steps if case == "digits" else args.image_steps
    state = exp.initialize(jax.random.PRNGKey(exp.seed))  # as Trainer (a raw uint32 key)
    state, step = measure_step(exp, state, args.step_repeats)
    print(f"{case}: train step {step['step_ms']:.0f} ms ({step['step_ex_s']:,.0f} ex/s)")
    rows = []
    for workers in args.workers:
        row: dict[str, Any] = {"case": case, "workers": workers}
        row["batch"] = exp.global_batch_size
        row |= measure_loader(exp, workers, args.loader_seconds)
        row |= step
        state, e2e = measure_e2e(exp, state, workers, steps)
        row |= e2e
        row["load"] = os.getloadavg()[0]
        row["train_examples"] = len(exp.data.train)
        print(
            f"  workers={workers}: loader {row['loader_ex_s']:,.0f} ex/s, e2e "
            f"{row['e2e_ex_s']:,.0f} ex/s, waiting {row['wait_pct']:.1f}%, load {row['load']:.1f}",
            flush=True,
        )
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    apply_xla_flags(args.xla_flags)
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="jaxdl_input_pipeline_"))
    folder = base / f"folder_{args.images}"
    records = base / f"array_record_{args.images}"
    print(f"data in {base}; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    datasets: dict[str, Any] = {"images": args.images}
    rows: list[dict] = []
    try:
        if {"folder", "array_record"} & set(args.cases) and not (folder / "class_0").is_dir():
            datasets |= generate_folder(folder, args.images, processes=max(2, os.cpu_count() or 2))
        if "array_record" in args.cases and not records.is_dir():
            datasets |= convert_folder(folder, records)
        for case in args.cases:
            rows += run_case(case, args, folder, records)
    finally:
        if not args.keep_data:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(format_table(rows, TABLE_COLUMNS))
    payload = {
        "workload": {
            "images": args.images,
            "image_size": IMAGE_SIZE,
            "workers": list(args.workers),
            "digits_steps": args.digits_steps,
            "image_steps": args.image_steps,
            "warmup_steps": WARMUP_STEPS,
            "step_repeats": args.step_repeats,
            "loader_seconds": args.loader_seconds,
        },
        "datasets": datasets,
        "rows": rows,
    }
    print(f"wrote {write_report(NAME, payload, args.out)}")


if __name__ == "__main__":
    run_program(main)
