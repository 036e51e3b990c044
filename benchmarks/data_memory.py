"""Peak host memory of streaming training (issue 11): generated image folders and their ArrayRecord
conversions, trained with 0 and 2 grain workers, at two dataset sizes.

For each size it writes random 64x64x3 PNGs (smooth colour fields with soft blobs and mild noise,
~7.8 KB each, so they compress and decode like small photos) into 10 class folders of a temporary
directory, converts the folder once with ``jaxdl data convert``, then runs ``jaxdl train`` as a
subprocess for every size x source x workers and samples the RSS of that process and all its
descendants (grain workers, multiprocessing helpers) every 50 ms. The issue's target: the summed
peak grows by less than 15% from 5,000 to 40,000 images.

    python benchmarks/data_memory.py               # 5,000 and 40,000 images, 30 steps each run
    python benchmarks/data_memory.py --quick       # 1,000 and 4,000 images, 5 steps (smoke test)
    python benchmarks/data_memory.py --data-dir /tmp/dm --keep-data   # reuse generated data

Nothing generated is committed: data and workdirs live in a temporary directory (or
``--data-dir``), deleted at the end unless ``--keep-data``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import (
    REPO_ROOT,
    add_common_args,
    apply_xla_flags,
    format_table,
    run_program,
    write_report,
)

NAME = "data_memory"
IMAGE_SIZE = 64
NUM_CLASSES = 10
CONFIG = "experiments/folder_resnet.py"
PRESETS = {
    "quick": {"sizes": (1000, 4000), "workers": (0, 2), "steps": 5},
    "default": {"sizes": (5000, 40000), "workers": (0, 2), "steps": 30},
    "full": {"sizes": (5000, 40000, 200000), "workers": (0, 2, 8), "steps": 100},
}
# Evaluation is not what is measured: almost everything goes to the train split, the periodic
# evaluation never runs, and the final val/test passes see 2% of the images each.
TRAIN_OVERRIDES = (
    "--config.data.split_fractions=(0.96,0.02,0.02)",
    "--config.train.eval_every_steps=1000000",
    "--config.train.eval_batch_size=64",
    "--config.logging.tensorboard=False",
    "--config.schedule.warmup_epochs=0.0",  # 2 epochs of warm-up would outlast the run
)
TABLE_COLUMNS = (
    "images",
    "source",
    "workers",
    "peak_rss_mib",
    "main_mib",
    "children_mib",
    "processes",
    "growth_pct",
    "train_s",
    "load",
)
MIB = 2**20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line; ``--quick``/``--full`` pick the preset, explicit flags override it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test sizes")
    parser.add_argument("--sizes", help="comma-separated image counts, e.g. 5000,40000")
    parser.add_argument("--workers", help="comma-separated data.worker_count values, e.g. 0,2")
    parser.add_argument("--steps", type=int, help="train steps per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--sources", default="folder,array_record", help="folder and/or array_record"
    )
    parser.add_argument("--data-dir", help="where to generate data (default: a temporary dir)")
    parser.add_argument("--keep-data", action="store_true", help="do not delete --data-dir")
    parser.add_argument("--interval", type=float, default=0.05, help="RSS sampling period, s")
    args = parser.parse_args(argv)
    if args.quick and args.full:
        parser.error("--quick and --full are exclusive")
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    args.sizes = _ints(args.sizes) if args.sizes else preset["sizes"]
    args.workers = _ints(args.workers) if args.workers else preset["workers"]
    args.steps = args.steps or preset["steps"]
    args.sources = tuple(s.strip() for s in args.sources.split(","))
    if not set(args.sources) <= {"folder", "array_record"}:
        parser.error("--sources takes folder and/or array_record")
    if min(args.sizes) < 1000 or args.steps < 1:
        parser.error(
            "sizes must be >= 1000 images (stratified 2% val/test splits) and --steps >= 1"
        )
    return args


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


# ------------------------------------------------------------------------------------------------
# Data generation


def _photo_like(rng: np.random.Generator) -> np.ndarray:
    """A 64x64x3 uint8 image: a bicubic-upsampled 6x6 colour field, 2-5 soft Gaussian blobs and
    sensor-like noise (sigma 4): PNG-compresses to ~7.8 KB, like a small photo."""
    from PIL import Image

    base = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    field = Image.fromarray(base).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    pixels = np.asarray(field, dtype=np.float32)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0, IMAGE_SIZE, 2)
        radius = rng.uniform(4, 16)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        pixels += blob[..., None] * rng.uniform(-120, 120, 3)
    pixels += rng.normal(0, 4, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _write_images(job: tuple[str, int, int, int]) -> int:
    """Writes images ``start..stop-1`` of a folder (class = index % 10); returns bytes written."""
    from PIL import Image

    root, start, stop, seed = job
    rng = np.random.default_rng([seed, start])
    written = 0
    for index in range(start, stop):
        path = os.path.join(root, f"class_{index % NUM_CLASSES}", f"img_{index:07d}.png")
        Image.fromarray(_photo_like(rng)).save(path, format="PNG")
        written += os.path.getsize(path)
    return written


def generate_folder(root: Path, count: int, processes: int, seed: int = 0) -> dict[str, Any]:
    """``root/class_k/img_*.png`` with ``count`` images, written by ``processes`` processes."""
    for k in range(NUM_CLASSES):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
    chunk = 1000
    jobs = [(str(root), a, min(a + chunk, count), seed) for a in range(0, count, chunk)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        total = sum(pool.imap_unordered(_write_images, jobs))
    return {"generate_s": time.perf_counter() - start, "png_mib": total / MIB}


def convert_folder(root: Path, out: Path) -> dict[str, Any]:
    """``jaxdl data convert`` of the folder into ArrayRecord shards at ``out``."""
    command = [
        *JAXDL,
        "data",
        "convert",
        "--config",
        f"{CONFIG}:root={root},image_size={IMAGE_SIZE}",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"convert_s": time.perf_counter() - start, "array_record_mib": size / MIB}


# ------------------------------------------------------------------------------------------------
# Memory sampling

JAXDL = [sys.executable, "-m", "jaxdl"]


class TreeRSSSampler(threading.Thread):
    """Samples the RSS of a process and all its descendants every ``interval`` seconds and keeps
    the peaks of the sum, of the root alone and of the descendants' sum."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_total = self.peak_main = self.peak_children = 0
        self.max_processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                main = self.root.memory_info().rss
                children = self.root.children(recursive=True)
            except psutil.Error:
                break  # the run has ended
            child_rss = 0
            for child in children:
                with contextlib.suppress(psutil.Error):  # exited between listing and reading
                    child_rss += child.memory_info().rss
            self.peak_total = max(self.peak_total, main + child_rss)
            self.peak_main = max(self.peak_main, main)
            self.peak_children = max(self.peak_children, child_rss)
            self.max_processes = max(self.max_processes, 1 + len(children))
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def train_once(
    data_arg: str, workers: int, steps: int, batch_size: int, workdir: Path, interval: float
) -> dict[str, Any]:
    """One ``jaxdl train`` subprocess for ``steps`` steps; its peak tree RSS and timings."""
    command = [
        *JAXDL,
        "train",
        "--config",
        f"{CONFIG}:{data_arg},image_size={IMAGE_SIZE},workers={workers},batch_size={batch_size}",
        "--workdir",
        str(workdir),
        f"--config.train.num_steps={steps}",
        *TRAIN_OVERRIDES,
    ]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = TreeRSSSampler(process.pid, interval)
    sampler.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    sampler.stop()
    if process.returncode != 0:
        raise RuntimeError(f"jaxdl train failed ({process.returncode}):\n{output[-3000:]}")
    results = json.loads((workdir / "results.json").read_text())
    return {
        "peak_rss_mib": sampler.peak_total / MIB,
        "main_mib": sampler.peak_main / MIB,
        "children_mib": sampler.peak_children / MIB,
        "processes": sampler.max_processes,
        "samples": sampler.samples,
        "wall_s": wall,
        "train_s": results.get("train_seconds"),
        "load": max(load_before, os.getloadavg()[0]),
        "command": " ".join(command[2:]),
    }


def add_growth(rows: list[dict[str, Any]]) -> None:
    """``growth_pct`` of each row vs the smallest size with the same source and workers."""
    smallest = min(row["images"] for row in rows)
    base = {(r["source"], r["workers"]): r["peak_rss_mib"] for r in rows if r["images"] == smallest}
    for row in rows:
        reference = base.get((row["source"], row["workers"]))
        if row["images"] != smallest and reference:
            row["growth_pct"] = 100.0 * (row["peak_rss_mib"] / reference - 1.0)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    apply_xla_flags(args.xla_flags)
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="jaxdl_data_memory_"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"data in {base}; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    datasets, rows = [], []
    try:
        for size in args.sizes:
            folder, records = base / f"folder_{size}", base / f"array_record_{size}"
            info: dict[str, Any] = {"images": size}
            if not (folder / "class_0").is_dir():
                info |= generate_folder(folder, size, processes=max(2, os.cpu_count() or 2))
                print(f"generated {size:,} PNGs in {info['generate_s']:.1f} s")
            if "array_record" in args.sources and not records.is_dir():
                info |= convert_folder(folder, records)
                print(f"converted {size:,} images in {info['convert_s']:.1f} s")
            datasets.append(info)
            for source in args.sources:
                data_arg = f"root={folder}" if source == "folder" else f"array_record={records}"
                for workers in args.workers:
                    workdir = base / f"run_{size}_{source}_{workers}"
                    shutil.rmtree(workdir, ignore_errors=True)
                    row = {"images": size, "source": source, "workers": workers}
                    row |= train_once(
                        data_arg, workers, args.steps, args.batch_size, workdir, args.interval
                    )
                    shutil.rmtree(workdir, ignore_errors=True)
                    rows.append(row)
                    print(
                        f"  {size:>7,} {source:<12} workers={workers}: "
                        f"peak {row['peak_rss_mib']:,.0f} MiB ({row['processes']} processes), "
                        f"{row['wall_s']:.0f} s, load {row['load']:.1f}",
                        flush=True,
                    )
    finally:
        if not args.keep_data:
            shutil.rmtree(base, ignore_errors=True)
    add_growth(rows)
    print()
    print(format_table(rows, TABLE_COLUMNS))
    growths = [r["growth_pct"] for r in rows if r.get("growth_pct") is not None]
    verdict = None
    if growths:
        verdict = max(growths) < 15.0
        status = "met" if verdict else "NOT met"
        print(f"\nlargest growth {max(growths):.1f}% (target < 15%): {status}")
    payload = {
        "workload": {
            "sizes": list(args.sizes),
            "workers": list(args.workers),
            "sources": list(args.sources),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "image_size": IMAGE_SIZE,
            "config": CONFIG,
            "overrides": list(TRAIN_OVERRIDES),
            "rss_interval_s": args.interval,
        },
        "datasets": datasets,
        "rows": rows,
        "max_growth_pct": max(growths) if growths else None,
        "target_met": verdict,
    }
    print(f"wrote {write_report(NAME, payload, args.out)}")


if __name__ == "__main__":
    run_program(main)
