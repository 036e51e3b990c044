"""Train-step time of jaxdl's EfficientNet / MobileNetV3 beside torchvision's, per-shape convs on
and off.

Each model is trained by the library path the Trainer uses (``create_sharded_train_state`` +
``make_train_step`` + ``ShardedStep`` on a ``data`` mesh over the local devices, SGD momentum 0.9
from ``build_optimizer``, train mode: batch statistics, dropout, stochastic depth) on one
synthetic device-resident batch, twice: ``conv_impl='auto'`` (``jaxdl.layers.conv``'s per-shape
CPU formulations; the depthwise convolutions are ``Conv(feature_group_count=C)``) and
``conv_impl='plain'`` (every convolution is ``lax.conv_general_dilated``, as with
``JAXDL_CONV_IMPL=plain``). ``--peer`` adds torchvision's same model in torch eager (NCHW, SGD
momentum, ``torch.set_flush_denormal(True)``, one thread per core) in a fresh process with
``OMP_WAIT_POLICY=PASSIVE``.

    python benchmarks/zoo_throughput.py --peer     # CPU: B=16, 96x96, f32, 5 interleaved rounds
    python benchmarks/zoo_throughput.py --models efficientnet_b0 --rounds 1
    python benchmarks/zoo_throughput.py --full --peer   # GPU: B=128, 224x224, bf16 (torch on cuda)

Rounds interleave, per model: jaxdl auto, jaxdl plain, torch (so every ratio compares the sides
under about the same load); each round records wall and process CPU ms per step and the 1-min
load average, and the summary is the median over rounds of ``torch step ms / jaxdl step ms``
(>= 1: jaxdl at least as fast). Without torchvision the jaxdl rows are still measured and the
report says the peer is missing. ``--profile`` traces a few steps of each jaxdl model (``auto``)
with ``jax.profiler`` and prints the op time per step by category (depthwise forward, input
gradient, kernel gradient, other convolutions, ...; ``op_category``) and the top ops.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    add_common_args,
    apply_xla_flags,
    format_table,
    run_program,
    run_torch_worker,
    time_steps,
    write_report,
)
from op_profile import op_totals

NAME = "zoo_throughput"
# jaxdl registry name -> torchvision.models builder name.
MODELS = {
    "efficientnet_b0": "efficientnet_b0",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "mobilenet_v3_large": "mobilenet_v3_large",
}
CPU_WORKLOAD = {
    "models": "efficientnet_b0,mobilenet_v3_small",
    "batch_size": 16,
    "image_size": 96,
    "num_classes": 10,
    "dtype": "float32",
    "warmup": 2,
    "steps": 5,
}
FULL_WORKLOAD = {
    "models": "efficientnet_b0,mobilenet_v3_small,mobilenet_v3_large",
    "batch_size": 128,
    "image_size": 224,
    "num_classes": 1000,
    "dtype": "bfloat16",
    "warmup": 5,
    "steps": 20,
}
IMPLS = ("auto", "plain")
TABLE_COLUMNS = (
    "model",
    "framework",
    "params",
    "compile_s",
    "first_step_s",
    "step_ms_median",
    "cpu_ms_per_step",
    "images_per_s",
)
ROUND_COLUMNS = (
    "model",
    "round",
    "load_1min",
    "auto_ms",
    "auto_cpu_ms",
    "plain_ms",
    "plain_cpu_ms",
    "torch_ms",
    "torch_cpu_ms",
    "ratio_auto",
    "ratio_plain",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line; unset workload fields come from the CPU or ``--full`` preset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--models", default=None, help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compile")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument(
        "--impls", default="auto,plain", help="jaxdl conv_impl rows, from 'auto,plain'"
    )
    parser.add_argument("--peer", action="store_true", help="also time torchvision (torch eager)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds (default: 5 with --peer, else 1)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="per-op time of each jaxdl model's step (auto)"
    )
    parser.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = FULL_WORKLOAD if args.full else CPU_WORKLOAD
    for field, default in preset.items():
        if getattr(args, field) is None:
            setattr(args, field, default)
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    args.impls = [i for i in args.impls.split(",") if i]
    if not args.impls or set(args.impls) - set(IMPLS):
        parser.error(f"--impls must be a comma-separated subset of {IMPLS}")
    for field in ("batch_size", "image_size", "num_classes", "steps", "warmup"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    if args.rounds is None:
        args.rounds = 5 if args.peer else 1
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def _workload(args: argparse.Namespace, model: str) -> dict[str, Any]:
    fields = ("batch_size", "image_size", "num_classes", "dtype", "warmup", "steps")
    return {"model": model, **{field: getattr(args, field) for field in fields}}


def _measure(run_step: Callable[[], None], workload: dict[str, Any]) -> dict[str, Any]:
    timed = time_steps(run_step, workload["warmup"], workload["steps"])
    timed.pop("step_seconds")
    return {**timed, "images_per_s": workload["batch_size"] / (timed["step_ms_median"] / 1e3)}


# ------------------------------------------------------------------------------------------------
# jaxdl side


def build_jaxdl_step(workload: dict[str, Any], impl: str) -> dict[str, Any]:
    """Compiles jaxdl's sharded train step for ``workload`` with ``conv_impl=impl``; returns
    init/compile seconds, the parameter count and ``run_step`` (one blocking step)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import optax

    from jaxdl.models import get_model
    from jaxdl.optim import build_optimizer
    from jaxdl.parallel import batch_sharding, make_mesh
    from jaxdl.train import ShardedStep, count_params, create_sharded_train_state, make_train_step

    batch, size = workload["batch_size"], workload["image_size"]
    devices = jax.local_devices()
    if batch % len(devices):
        raise ValueError(f"batch size {batch} is not divisible by {len(devices)} local devices")
    mesh = make_mesh({"data": -1}, devices)
    model = get_model(
        workload["model"],
        num_classes=workload["num_classes"],
        dtype=jnp.dtype(workload["dtype"]),
        conv_impl=impl,
    )
    config = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9, "weight_decay": 0.0})
    tx = build_optimizer(config, optax.constant_schedule(0.01))
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    state, shardings = create_sharded_train_state(
        model, tx, key, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32), mesh
    )
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    data_sharding = batch_sharding(mesh)
    inputs_key, labels_key = jax.random.split(key)
    synthetic = jax.device_put(
        {
            "inputs": jax.random.normal(inputs_key, (batch, size, size, 3), jnp.float32),
            "labels": jax.random.randint(labels_key, (batch,), 0, workload["num_classes"]),
        },
        data_sharding,
    )
    step = ShardedStep(make_train_step(), mesh, shardings, data_sharding, returns_state=True)
    start = time.perf_counter()
    compiled = step.lower(state, synthetic).compile()  # fills the jit cache the calls below use
    compile_seconds = time.perf_counter() - start
    holder = {"state": state}

    def run_step() -> None:
        holder["state"], metrics = step(holder["state"], synthetic)
        jax.block_until_ready((holder["state"], metrics))

    return {
        "params": count_params(state.params),
        "init_s": init_seconds,
        "compile_s": compile_seconds,
        "run_step": run_step,
        "hlo_text": compiled.as_text,
    }


def profile_step(
    run_step: Callable[[], None], hlo_text: str, steps: int = 3, top: int = 12
) -> dict[str, Any]:
    """Traces ``steps`` calls of ``run_step`` with ``jax.profiler``, sums the XLA:CPU op events
    per op name (ms per step; ops overlap on the cores, so the sum exceeds the wall time) and
    sorts every op into a category by its instruction in the compiled program ``hlo_text``
    (``op_category``). Returns the category totals and the ``top`` ops."""
    import jax

    run_step()  # warm
    with tempfile.TemporaryDirectory(prefix="zoo-trace-") as directory:
        with jax.profiler.trace(directory):
            for _ in range(steps):
                run_step()
        try:
            totals = op_totals(directory)
        except FileNotFoundError as error:
            return {"error": str(error)}
    per_op: collections.Counter[str] = collections.Counter(
        {name: total / 1e6 / steps for name, (total, _, _) in totals.items()}
    )
    instructions = _hlo_instructions(hlo_text)
    categories: collections.Counter[str] = collections.Counter()
    described = {}
    for name, ms in per_op.items():
        text = instructions.get(name, "")
        categories[op_category(name, text)] += ms
        scope = re.findall(r'op_name="([^"]+)"', text)
        described[name] = f"{op_category(name, text)}: {scope[0][-90:] if scope else ''}"
    total = sum(per_op.values())
    return {
        "steps_traced": steps,
        "total_op_ms": total,
        "category_ms": dict(categories.most_common()),
        "category_share": {k: v / total for k, v in categories.most_common()},
        "top_ops_ms": dict(per_op.most_common(top)),
        "top_ops": {name: described[name] for name, _ in per_op.most_common(top)},
    }


def _hlo_instructions(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its line in the compiled program plus, for a fusion, the body of the
    computation it calls."""
    bodies, current, lines = {}, None, []
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current, lines = header.group(1), []
        elif line.startswith("}") and current is not None:
            bodies[current], current = "\n".join(lines), None
        elif current is not None:
            lines.append(line)
    out = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if match and match.group(1) not in out:
            calls = re.search(r"calls=%?([\w.\-]+)", match.group(2))
            body = bodies.get(calls.group(1), "") if calls else ""
            out[match.group(1)] = match.group(2) + "\n" + body
    return out


def op_category(name: str, instruction: str) -> str:
    """A coarse bucket for one op of the compiled step, from its HLO (``instruction``: its line
    and fused body). Depthwise convolutions are found by their Flax scope (``.../depthwise/...``)
    and, for the kernel gradient XLA:CPU expands into a dense C x C convolution (whose fusion
    carries no scope), by its [C, k, k, C] result."""
    scope = " ".join(re.findall(r'op_name="([^"]+)"', instruction))
    conv = "convolution(" in instruction
    shape = re.match(r"\w+\[([\d,]+)\]", instruction)
    dims = [int(d) for d in shape.group(1).split(",")] if shape else []
    square_kernel = len(dims) == 4 and dims[0] == dims[3] > 1 and dims[1] == dims[2] <= 7
    if conv and square_kernel and "feature_group_count" not in instruction:
        return "depthwise kernel grad (dense CxC conv)"
    if "select" in name and len(dims) == 4 and dims[0] == dims[1] <= 7 and dims[2] == dims[3]:
        return "depthwise kernel grad (diagonal select)"
    if "/depthwise/" in scope:
        backward = "transpose(" in scope
        if "base-dilated" in name:
            return "depthwise input grad (strided: base-dilated conv)"
        if conv:
            return f"depthwise {'backward' if backward else 'forward'} conv"
        return f"depthwise {'backward' if backward else 'forward'} other (taps, copies)"
    if conv or " dot(" in instruction:
        return "other conv / matmul (1x1, stem, SE, head)"
    if "copy" in name or "transpose" in name:
        return "copies / transposes"
    return "elementwise / batch norm / other"


# ------------------------------------------------------------------------------------------------
# torch side: runs in its own process (``--torch-worker SPEC``)


def measure_torch(workload: dict[str, Any]) -> dict[str, Any]:
    """Times torchvision's model's train step (SGD momentum) on the same synthetic workload."""
    import torch
    import torch.nn.functional as F
    import torchvision

    on_gpu = workload.get("device") == "cuda"
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(os.cpu_count() or 1)
        # XLA flushes denormals on CPU; without this torch slows down once gradients get small.
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    batch, size = workload["batch_size"], workload["image_size"]
    model = getattr(torchvision.models, MODELS[workload["model"]])(
        num_classes=workload["num_classes"]
    ).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, workload["num_classes"], (batch,), device=device)
    autocast = workload["dtype"] == "bfloat16"

    def run_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        if on_gpu:
            torch.cuda.synchronize()

    return {
        "framework": f"torchvision {torchvision.__version__} (torch {torch.__version__} eager)",
        "params": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
        **_measure(run_step, workload),
    }


def torch_peer_missing() -> str | None:
    """Why the torch peer cannot run in this interpreter (None: it can)."""
    missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not importable by {sys.executable}" if missing else None


# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_worker is not None:
        print(json.dumps(measure_torch(json.loads(args.torch_worker))))
        return 0
    try:
        apply_xla_flags(args.xla_flags)
    except ValueError as error:
        sys.exit(f"{NAME}: error: {error}")
    import jax

    peer_missing = torch_peer_missing() if args.peer else None
    if peer_missing:
        print(f"torch peer missing: {peer_missing}; measuring jaxdl only", flush=True)
    run_peer = args.peer and not peer_missing
    on_gpu = jax.default_backend() == "gpu"

    steps = {}  # (model, impl) -> build_jaxdl_step's dict
    rows: list[dict[str, Any]] = []
    for model in args.models:
        workload = _workload(args, model)
        for impl in args.impls:
            print(f"compiling jaxdl {model} conv_impl={impl} ...", flush=True)
            built = build_jaxdl_step(workload, impl)
            steps[model, impl] = built
            rows.append(
                {
                    "model": model,
                    "framework": f"jaxdl (jax {jax.__version__}) conv_impl={impl}",
                    "impl": impl,
                    "params": built["params"],
                    "init_s": built["init_s"],
                    "compile_s": built["compile_s"],
                }
            )

    rounds: list[dict[str, Any]] = []
    first_torch: dict[str, dict[str, Any]] = {}
    first_jax: dict[tuple[str, str], dict[str, Any]] = {}
    for index in range(args.rounds):
        for model in args.models:
            workload = _workload(args, model)
            entry: dict[str, Any] = {"model": model, "round": index + 1}
            for impl in args.impls:
                timed = _measure(steps[model, impl]["run_step"], workload)
                first_jax.setdefault((model, impl), timed)
                entry[f"{impl}_ms"] = timed["step_ms_median"]
                entry[f"{impl}_cpu_ms"] = timed["cpu_ms_per_step"]
            if run_peer:
                spec = {**workload, "device": "cuda" if on_gpu else "cpu"}
                timed = run_torch_worker(__file__, spec)
                first_torch.setdefault(model, timed)
                entry["torch_ms"] = timed["step_ms_median"]
                entry["torch_cpu_ms"] = timed["cpu_ms_per_step"]
                for impl in args.impls:
                    entry[f"ratio_{impl}"] = timed["step_ms_median"] / entry[f"{impl}_ms"]
            entry["load_1min"] = os.getloadavg()[0]
            rounds.append(entry)
            print(format_table([entry], ROUND_COLUMNS).splitlines()[-1], flush=True)

    # The result rows carry round 1's timings (compile and first step happen there).
    for row in rows:
        row |= {
            k: v for k, v in first_jax[row["model"], row.pop("impl")].items() if k in TABLE_COLUMNS
        }
    for model, timed in first_torch.items():
        rows.append({"model": model, **{k: v for k, v in timed.items() if k != "run_cpu_s"}})
    rows.sort(key=lambda row: args.models.index(row["model"]))

    summary: dict[str, Any] = {}
    for model in args.models:
        model_rounds = [r for r in rounds if r["model"] == model]
        summary[model] = {
            f"median_{impl}_ms": statistics.median(r[f"{impl}_ms"] for r in model_rounds)
            for impl in args.impls
        }
        if run_peer:
            summary[model]["median_torch_ms"] = statistics.median(
                r["torch_ms"] for r in model_rounds
            )
            for impl in args.impls:
                summary[model][f"median_ratio_{impl}"] = statistics.median(
                    r[f"ratio_{impl}"] for r in model_rounds
                )
        if {"auto", "plain"} <= set(args.impls):
            summary[model]["median_plain_over_auto"] = statistics.median(
                r["plain_ms"] / r["auto_ms"] for r in model_rounds
            )
    loads = [r["load_1min"] for r in rounds]

    print()
    print(
        f"jax {jax.__version__} ({jax.default_backend()}, {len(jax.devices())} device(s)), "
        f"B={args.batch_size}, {args.image_size}x{args.image_size}, {args.dtype}, "
        f"{args.rounds} round(s) x ({args.warmup} warm-up + {args.steps} timed steps), "
        f"1-min load average {min(loads):.2f}-{max(loads):.2f}"
    )
    print(format_table(rows, TABLE_COLUMNS))
    print(format_table(rounds, ROUND_COLUMNS))
    for model, values in summary.items():
        parts = [f"{key} = {value:.3f}" for key, value in values.items()]
        print(f"{model}: " + ", ".join(parts))
    if run_peer:
        print("ratio = torch step ms / jaxdl step ms, per round (>= 1: jaxdl at least as fast)")
    elif args.peer:
        print(f"torch peer: not measured ({peer_missing})")

    profiles = {}
    if args.profile:
        for model in args.models:
            if (model, "auto") not in steps:
                continue
            built = steps[model, "auto"]
            profiles[model] = profile_step(built["run_step"], built["hlo_text"]())
            print(f"\nprofile of {model} (conv_impl=auto), ms per step:")
            print(json.dumps(profiles[model], indent=2))

    report = {
        "workload": {**_workload(args, ",".join(args.models)), "impls": args.impls},
        "xla_flags_arg": args.xla_flags,
        "peer": "torchvision eager" if run_peer else None,
        "peer_missing": peer_missing,
        "results": rows,
        "rounds": rounds,
        "summary": summary,
        "load_1min_range": [min(loads), max(loads)],
        "profiles": profiles,
    }
    path = write_report(NAME, report, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_program(main)
