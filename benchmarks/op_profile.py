"""Where a jitted step spends its time: trace a few steps with ``jax.profiler`` and sum the XLA
ops' durations per op, read back from the trace with ``jax.profiler.ProfileData`` (no
TensorBoard or xprof needed, so it runs on the lent GPU machine and prints a table there).

On GPU (and TPU) the ops are the device plane's kernels; on CPU the XLA thunks the host threads
ran. Each row is one HLO instruction: milliseconds per step, launches per step, share of the
op time, and the jax source op (``tf_op``: the traced function path, e.g.
``.../ConformerBlock/conv/depthwise/conv_general_dilated``).

    python benchmarks/op_profile.py TRACE_DIR [--steps N] [--top K]   # a trace already taken

Benchmarks take ``--profile-dir DIR`` and call ``profile_steps`` after their timed steps.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

PROFILED_STEPS = 3
COLUMNS = ("op", "ms_per_step", "launches_per_step", "share_pct", "source")


def newest_xplane(directory: str) -> str:
    """The most recent ``*.xplane.pb`` under ``directory`` (``jax.profiler.trace`` nests it)."""
    paths = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {directory!r}: was it traced?")
    return max(paths, key=os.path.getmtime)


def _op_events(path: str) -> list[tuple[str, float, str]]:
    """(HLO op, duration ns, source) of every XLA op event in the trace: the device planes'
    when there are any (GPU/TPU), else the host's (CPU)."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(path)
    device, host = [], []
    for plane in data.planes:
        on_device = plane.name.startswith("/device:")
        lines = list(plane.lines)
        if on_device:
            # Kernels sit on per-stream lines; a derived "XLA Ops" line, when the trace has
            # one, repeats them once per HLO op, so only one of the two is read.
            derived = [line for line in lines if line.name == "XLA Ops"]
            lines = derived or [line for line in lines if line.name.startswith("Stream")]
        for line in lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" not in stats and not on_device:
                    continue
                op = str(stats.get("hlo_op") or event.name)
                source = str(stats.get("tf_op") or stats.get("long_name") or event.name)
                (device if on_device else host).append((op, event.duration_ns, source))
    return device or host


def op_kind(name: str) -> str:
    """An HLO op's name without its instance number: 'loop_add_fusion.24' -> 'loop_add_fusion'."""
    return re.sub(r"\.\d+$", "", name)


def op_totals(directory: str, by_kind: bool = False) -> dict[str, tuple[float, int, str]]:
    """HLO op (or, ``by_kind``, its ``op_kind``) -> (total ns, launches, source) over the
    newest trace under ``directory``."""
    totals: dict[str, tuple[float, int, str]] = {}
    for name, duration, source in _op_events(newest_xplane(directory)):
        name = op_kind(name) if by_kind else name
        total, count, first_source = totals.get(name, (0.0, 0, source))
        totals[name] = (total + duration, count + 1, first_source)
    return totals


def op_table(
    directory: str, steps: int, top: int = 25, by_kind: bool = False
) -> list[dict[str, Any]]:
    """The ``top`` ops (or op kinds) by total time in the newest trace under ``directory``, per
    step, after a row summing every op."""
    totals = op_totals(directory, by_kind)
    grand = sum(total for total, _, _ in totals.values()) or 1.0
    rows = [
        {
            "op": name,
            "ms_per_step": total / steps / 1e6,
            "launches_per_step": count / steps,
            "share_pct": 100 * total / grand,
            "source": source[:110],
        }
        for name, (total, count, source) in sorted(totals.items(), key=lambda item: -item[1][0])
    ]
    total_row = {
        "op": "(all ops)",
        "ms_per_step": grand / steps / 1e6,
        "launches_per_step": sum(count for _, count, _ in totals.values()) / steps,
        "share_pct": 100.0,
        "source": "",
    }
    return [total_row, *rows[:top]]


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of ``op_table`` rows."""
    lines = [" | ".join(COLUMNS)]
    for row in rows:
        lines.append(
            f"{row['op'][:40]} | {row['ms_per_step']:.3f} | {row['launches_per_step']:.1f} | "
            f"{row['share_pct']:.1f} | {row['source']}"
        )
    return "\n".join(lines)


def profile_steps(
    run_step: Callable[[], None], directory: str, label: str, steps: int = PROFILED_STEPS
) -> list[dict[str, Any]]:
    """Traces ``steps`` more calls of ``run_step`` (which blocks on its results) into
    ``directory/label``, prints the op table and writes it beside the trace as JSON."""
    import jax

    target = os.path.join(directory, label)
    with jax.profiler.trace(target):
        for _ in range(steps):
            run_step()
    rows = op_table(target, steps)
    kinds = op_table(target, steps, by_kind=True)
    print(f"--- op profile: {label} ({steps} steps, {target})\n{format_rows(rows)}", flush=True)
    print(f"--- op kinds: {label}\n{format_rows(kinds)}", flush=True)
    with open(os.path.join(directory, f"{label}_ops.json"), "w") as handle:
        json.dump({"ops": rows, "kinds": kinds}, handle, indent=1)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace_dir")
    parser.add_argument("--steps", type=int, default=PROFILED_STEPS, help="steps in the trace")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        parser.error("--steps and --top must be >= 1")
    try:
        print(format_rows(op_table(args.trace_dir, args.steps, args.top)))
    except FileNotFoundError as error:
        parser.exit(2, f"op_profile: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
