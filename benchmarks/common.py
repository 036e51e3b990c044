"""Helpers shared by the benchmark scripts: flags, environment info, tables and JSON reports.

jax is imported lazily here so that a script can still set ``XLA_FLAGS`` (read when the first
backend is created) after importing this module.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCHMARKS_DIR)
_VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Adds ``--full``, ``--out``, ``--xla-flags`` and ``--profile-dir``, which every benchmark
    understands (``--profile-dir``: benchmarks that time a jaxdl step trace a few more steps
    there and print the ops they spent their time in, ``op_profile.profile_steps``)."""
    parser.add_argument(
        "--full",
        action="store_true",
        help="full-size workload (meant for a GPU); default: CPU size",
    )
    parser.add_argument(
        "--out", default=None, help="JSON report path (default: benchmarks/out/<benchmark>.json)"
    )
    parser.add_argument(
        "--xla-flags",
        default="",
        help="extra XLA flags appended to $XLA_FLAGS, e.g. '--xla_cpu_use_onednn=true'",
    )
    parser.add_argument(
        "--profile-dir",
        default=None,
        help="trace a few jaxdl steps after timing them and print the op time table",
    )


def run_program(main: Callable[[], int | None]) -> None:
    """Runs a benchmark's ``main`` as its program. It first restarts as the ``jaxdl`` command
    does, with glibc asking for transparent huge pages where that helps
    (``jaxdl.host_memory.restart_with_huge_pages``), so that the library's figures are what its
    command gets; peers started in subprocesses inherit the same environment. Only for the
    ``__main__`` entry: called from a test, the restart would re-run the test process."""
    from jaxdl.host_memory import restart_with_huge_pages  # lazy: as jax below

    restart_with_huge_pages()
    sys.exit(main())


def apply_xla_flags(flags: str) -> str:
    """Appends jaxdl's default flags (``jaxdl.xla_flags``, as the ``jaxdl`` command does) and
    ``flags`` to ``$XLA_FLAGS``, after checking XLA accepts ``flags``; returns the result. Also
    applies ``jaxdl.host_memory``'s opt-in heap setting (``JAXDL_RETAIN_HOST_MEMORY=1``), as the
    command does.

    Must run before the first jax backend is created (XLA reads the variable then). XLA aborts the
    whole process on an unknown flag, so the flags are first tried in a throwaway subprocess to turn
    that into a one-line ``ValueError``.
    """
    from jaxdl.host_memory import retain_host_memory  # lazy: as jax below
    from jaxdl.xla_flags import OPT_OUT_ENV, apply_default_xla_flags

    retain_host_memory()

    combined = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), flags.strip()]))
    # The library's defaults (what the ``jaxdl`` command sets), unless ``flags`` or the
    # environment set the same flag.
    defaults = {"XLA_FLAGS": combined, OPT_OUT_ENV: os.environ.get(OPT_OUT_ENV, "1")}
    apply_default_xla_flags(defaults)
    combined = defaults["XLA_FLAGS"]
    if not flags.strip():
        os.environ["XLA_FLAGS"] = combined
        return combined
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": combined},
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        reason = next(
            (line for line in probe.stderr.splitlines() if "flag" in line.lower()),
            f"exit status {probe.returncode}",
        )
        reason = reason.split("] ", 1)[-1].strip()  # drop the glog "F1123 12:00:00 ... ]" prefix
        raise ValueError(f"XLA rejected --xla-flags {flags!r}: {reason}")
    os.environ["XLA_FLAGS"] = combined
    return combined


def environment_info() -> dict[str, Any]:
    """Date, host, package versions and the jax devices: recorded in every JSON report."""
    import jax

    devices = jax.devices()
    versions = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host_cpu_count": os.cpu_count(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions,
    }


def time_steps(run_step: Callable[[], None], warmup: int, steps: int) -> dict[str, Any]:
    """Times the first call, ``warmup - 1`` more untimed calls, then ``steps`` timed calls.

    ``run_step`` must block until its results exist. Besides wall time per step it records the
    process CPU time per step, which time-slicing by other processes on a shared machine inflates
    much less than wall time (useful for A/B comparisons of one framework's settings).
    """
    start = time.perf_counter()
    run_step()
    first_step_seconds = time.perf_counter() - start
    for _ in range(warmup - 1):
        run_step()
    seconds = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        run_step()
        seconds.append(time.perf_counter() - start)
    cpu_seconds = time.process_time() - cpu_start
    return {
        "first_step_s": first_step_seconds,
        "step_ms_mean": statistics.fmean(seconds) * 1e3,
        "step_ms_median": statistics.median(seconds) * 1e3,
        "step_ms_min": min(seconds) * 1e3,
        "cpu_ms_per_step": cpu_seconds / steps * 1e3,
        "step_seconds": seconds,
    }


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (dicts) restricted to ``columns``; floats get 4 significant
    digits. Hand-written because a dozen lines beat adding ``tabulate`` as a dependency."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        return "" if value is None else str(value)

    body = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body
    ]
    return "\n".join(lines)


def write_report(name: str, payload: Mapping[str, Any], out: str | None = None) -> str:
    """Writes ``payload`` plus ``benchmark`` and ``environment`` keys as JSON; returns the path.

    ``out`` defaults to ``benchmarks/out/<name>.json``.
    """
    path = out or os.path.join(BENCHMARKS_DIR, "out", f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    report = {"benchmark": name, "environment": environment_info(), **payload}
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    return path


def children_cpu_seconds() -> float:
    """User + system CPU seconds of the waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_torch_worker(script: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Runs ``script --torch-worker SPEC_JSON`` in a fresh process (no thread pool shared with
    jax) and returns the JSON row it prints last, plus ``run_cpu_s`` (its CPU seconds)."""
    command = [sys.executable, os.path.abspath(script), "--torch-worker", json.dumps(dict(spec))]
    # Passive: OpenMP threads sleep between parallel regions instead of spinning on the cores.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    cpu_before = children_cpu_seconds()
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"torch peer failed (exit {completed.returncode}): {tail}")
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    row["run_cpu_s"] = children_cpu_seconds() - cpu_before
    return row
