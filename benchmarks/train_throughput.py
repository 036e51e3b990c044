"""Train-step throughput of jaxdl's own sharded step on synthetic images, optionally vs PyTorch.

Uses the library path the Trainer uses: ``create_sharded_train_state`` + ``make_train_step`` +
``ShardedStep`` on a ``data`` mesh over all local devices, SGD with momentum from
``build_optimizer``. Reports the AOT compile time (``ShardedStep.lower(...).compile()``), the
first step, and the per-step time after warm-up (each step blocks on its results).

    python benchmarks/train_throughput.py                 # CPU: ResNet-18, B=32, 64x64, f32
    python benchmarks/train_throughput.py --peer          # ... plus torch eager, 5 rounds
    python benchmarks/train_throughput.py --xla-flags=--xla_cpu_use_onednn=true
    python benchmarks/train_throughput.py --full --peer   # GPU: ResNet-50, B=256, 224x224, bf16

The CPU default is the ResNet-18 case of ../shared/peers/cpu_peers.py. ``--peer`` on CPU runs
``--rounds`` (default 5) rounds, each timing the jax step and then torch in a fresh subprocess (so
the two thread pools never compete; torch with ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP threads
sleep), and reports the median per-round ratio with the load average of each round. With
``--full`` it runs ``shared/peers/torch_peers.py resnet`` (torchvision ResNet-50, GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    REPO_ROOT,
    add_common_args,
    apply_xla_flags,
    format_table,
    run_program,
    time_steps,
    write_report,
)

NAME = "train_throughput"
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# The peers' CPU ResNet-18 case, and the GPU target (torch_peers.py resnet: B=256, bf16, wd 1e-4).
CPU_WORKLOAD = {
    "model": "resnet18",
    "batch_size": 32,
    "image_size": 64,
    "num_classes": 10,
    "dtype": "float32",
    "weight_decay": 0.0,
    "warmup": 3,
    "steps": 10,
}
FULL_WORKLOAD = {
    "model": "resnet50",
    "batch_size": 256,
    "image_size": 224,
    "num_classes": 1000,
    "dtype": "bfloat16",
    "weight_decay": 1e-4,
    "warmup": 5,
    "steps": 20,
}
PEER_SCRIPT_CANDIDATES = (
    os.path.join(REPO_ROOT, "shared", "peers", "torch_peers.py"),
    os.path.join(REPO_ROOT, "..", "shared", "peers", "torch_peers.py"),
)
TABLE_COLUMNS = (
    "framework",
    "model",
    "batch",
    "image",
    "dtype",
    "init_s",
    "compile_s",
    "first_step_s",
    "step_ms_mean",
    "step_ms_median",
    "cpu_ms_per_step",
    "images_per_s",
)
ROUND_COLUMNS = (
    "round",
    "load_1min",
    "jax_step_ms",
    "jax_cpu_ms",
    "torch_step_ms",
    "torch_cpu_ms",
    "ratio",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line; unset workload fields come from the CPU or ``--full`` preset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_common_args(parser)
    parser.add_argument("--model", choices=MODELS, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compile")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--peer", action="store_true", help="also time PyTorch on the same work")
    parser.add_argument(
        "--peer-compile", action="store_true", help="with --peer on CPU: also torch.compile"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved jax/torch rounds (default: 5 with --peer on CPU, else 1)",
    )
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = FULL_WORKLOAD if args.full else CPU_WORKLOAD
    for field, default in preset.items():
        if getattr(args, field) is None:
            setattr(args, field, default)
    for field in ("batch_size", "image_size", "num_classes", "steps"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step is reported separately)")
    if args.rounds is None:
        args.rounds = 5 if args.peer and not args.full else 1
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def workload_of(args: argparse.Namespace) -> dict[str, Any]:
    """The workload fields of ``args`` as a plain dict (recorded in the report)."""
    return {field: getattr(args, field) for field in CPU_WORKLOAD}


def measure_steps(
    run_step: Callable[[], None], warmup: int, steps: int, batch_size: int
) -> dict[str, Any]:
    """``common.time_steps`` plus images/s (from the mean step)."""
    timed = time_steps(run_step, warmup, steps)
    return {**timed, "images_per_s": batch_size / (timed["step_ms_mean"] / 1e3)}


# ------------------------------------------------------------------------------------------------
# jaxdl side


def measure_jaxdl(
    workload: dict[str, Any],
) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
    """Compiles and times jaxdl's sharded train step on one synthetic batch (NHWC).

    Returns the first measurement and a function that times the steps again (for later rounds).
    """
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
    mesh = make_mesh({"data": -1}, devices)
    if batch % len(devices):
        raise ValueError(f"batch size {batch} is not divisible by {len(devices)} local devices")
    model = get_model(
        workload["model"],
        num_classes=workload["num_classes"],
        stem="imagenet",
        dtype=jnp.dtype(workload["dtype"]),
    )
    optimizer_config = ml_collections.ConfigDict(
        {"name": "sgd", "momentum": 0.9, "weight_decay": workload["weight_decay"]}
    )
    tx = build_optimizer(optimizer_config, optax.constant_schedule(0.1))
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    state, state_shardings = create_sharded_train_state(
        model, tx, key, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32), mesh
    )
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    data_sharding = batch_sharding(mesh)
    inputs_key, labels_key = jax.random.split(key)
    synthetic = {
        "inputs": jax.random.normal(inputs_key, (batch, size, size, 3), jnp.float32),
        "labels": jax.random.randint(labels_key, (batch,), 0, workload["num_classes"]),
    }
    synthetic = jax.device_put(synthetic, data_sharding)
    step = ShardedStep(make_train_step(), mesh, state_shardings, data_sharding, returns_state=True)

    start = time.perf_counter()
    step.lower(state, synthetic).compile()  # fills the jit cache the calls below use
    compile_seconds = time.perf_counter() - start

    def run_step() -> None:
        nonlocal state
        state, metrics = step(state, synthetic)
        jax.block_until_ready((state, metrics))

    def remeasure() -> dict[str, Any]:
        return measure_steps(run_step, workload["warmup"], workload["steps"], batch)

    first = {
        "framework": f"jaxdl (jax {jax.__version__})",
        "params": count_params(state.params),
        "devices": len(devices),
        "init_s": init_seconds,
        "compile_s": compile_seconds,
        **remeasure(),
    }
    return first, remeasure


# ------------------------------------------------------------------------------------------------
# PyTorch side (CPU): runs in its own process via --torch-worker


def torch_resnet(depth: int, num_classes: int):
    """torchvision's ``resnet<depth>`` when torchvision is importable, else an equivalent
    hand-written ResNet v1.5 (torchvision is not a dependency of this project)."""
    try:
        import torchvision

        return getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    except ImportError:
        pass
    from torch import nn

    stage_sizes = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    stage_sizes[152] = (3, 8, 36, 3)
    expansion = 1 if depth < 50 else 4

    def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
        conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        return [conv, nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            cout = width * expansion
            if expansion == 1:
                layers = [*conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True)]
                layers += conv_bn(width, cout, 3, 1)
            else:
                layers = [*conv_bn(cin, width, 1, 1), nn.ReLU(inplace=True)]
                layers += [*conv_bn(width, width, 3, stride), nn.ReLU(inplace=True)]
                layers += conv_bn(width, cout, 1, 1)
            self.branch = nn.Sequential(*layers)
            projection = stride != 1 or cin != cout
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if projection else None

        def forward(self, x):
            shortcut = x if self.shortcut is None else self.shortcut(x)
            return (self.branch(x) + shortcut).relu_()

    layers: list[nn.Module] = [
        *conv_bn(3, 64, 7, 2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for stage, blocks in enumerate(stage_sizes[depth]):
        for index in range(blocks):
            layers.append(Block(cin, 64 * 2**stage, 2 if stage > 0 and index == 0 else 1))
            cin = 64 * 2**stage * expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def measure_torch(workload: dict[str, Any], compiled: bool) -> dict[str, Any]:
    """Times torch's train step (SGD momentum) on the same synthetic workload (NCHW, CPU)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    # XLA flushes denormals on CPU; without this torch slows down once gradients get small.
    torch.set_flush_denormal(True)
    batch, size = workload["batch_size"], workload["image_size"]
    model = torch_resnet(int(workload["model"].removeprefix("resnet")), workload["num_classes"])
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=workload["weight_decay"]
    )
    forward = torch.compile(model) if compiled else model
    inputs = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, workload["num_classes"], (batch,))
    autocast = workload["dtype"] == "bfloat16"

    def run_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(forward(inputs), labels)
        loss.backward()
        optimizer.step()

    return {
        "framework": f"torch {torch.__version__} {'compile' if compiled else 'eager'}",
        "torch_threads": torch.get_num_threads(),
        **measure_steps(run_step, workload["warmup"], workload["steps"], batch),
    }


def run_torch_cpu_peer(args: argparse.Namespace, compiled: bool) -> dict[str, Any]:
    """Runs ``measure_torch`` in a fresh process (no shared thread pools) and returns its result."""
    command = [sys.executable, os.path.abspath(__file__), "--torch-worker"]
    command += [
        f"--{field.replace('_', '-')}={value}" for field, value in workload_of(args).items()
    ]
    if compiled:
        command.append("--peer-compile")
    # Passive: OpenMP threads sleep between parallel regions instead of spinning on the cores.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"torch peer failed (exit {completed.returncode}): {tail}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_torch_gpu_peer(timeout_s: float = 1800) -> list[dict[str, Any]]:
    """Runs ``torch_peers.py resnet`` (ResNet-50, B=256, bf16, GPU) and parses its img/s lines."""
    script = next((path for path in PEER_SCRIPT_CANDIDATES if os.path.isfile(path)), None)
    if script is None:
        raise FileNotFoundError(f"torch_peers.py not found in {list(PEER_SCRIPT_CANDIDATES)}")
    completed = subprocess.run(
        [sys.executable, script, "resnet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )
    pattern = re.compile(r"compiled=(\w+) B=(\d+) .*?: (\d+) img/s\s+first_step=([\d.]+)s")
    results = []
    for line in completed.stdout.splitlines():
        match = pattern.search(line)
        if match:
            compiled, batch, images, first = match.groups()
            results.append(
                {
                    "framework": f"torch {'compile' if compiled == 'True' else 'eager'} (peer)",
                    "batch": int(batch),
                    "first_step_s": float(first),
                    "images_per_s": float(images),
                    "step_ms_mean": int(batch) / float(images) * 1e3,
                }
            )
    if not results:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(
            f"{script} printed no resnet results (exit {completed.returncode}): {tail}"
        )
    return results


# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workload = workload_of(args)
    if args.torch_worker:
        print(json.dumps(measure_torch(workload, compiled=args.peer_compile)))
        return 0
    try:
        apply_xla_flags(args.xla_flags)
    except ValueError as error:
        sys.exit(f"{NAME}: error: {error}")

    jax_row, remeasure_jax = measure_jaxdl(workload)
    rows, rounds = [jax_row], []
    if args.peer and args.full:
        rows += run_torch_gpu_peer()
    elif args.peer:
        # Interleaved rounds (jax, then torch in a fresh process): load on a shared machine drifts,
        # so each round's ratio compares the two sides under about the same load.
        for index in range(args.rounds):
            jax_times = jax_row if index == 0 else remeasure_jax()
            torch_row = run_torch_cpu_peer(args, compiled=False)
            rounds.append(
                {
                    "round": index + 1,
                    "load_1min": os.getloadavg()[0],
                    "jax_step_ms": jax_times["step_ms_median"],
                    "jax_cpu_ms": jax_times["cpu_ms_per_step"],
                    "torch_step_ms": torch_row["step_ms_median"],
                    "torch_cpu_ms": torch_row["cpu_ms_per_step"],
                    "ratio": torch_row["step_ms_median"] / jax_times["step_ms_median"],
                }
            )
            print(format_table(rounds[-1:], ROUND_COLUMNS).splitlines()[-1], flush=True)
            if index == 0:
                rows.append(torch_row)
        if args.peer_compile:
            rows.append(run_torch_cpu_peer(args, compiled=True))
    for row in rows:
        row.setdefault("batch", workload["batch_size"])
        row |= {"model": workload["model"], "image": workload["image_size"]}
        row["dtype"] = workload["dtype"]

    # > 1 means jaxdl trains faster than that peer on this machine, in this run.
    speedups = {row["framework"]: rows[0]["images_per_s"] / row["images_per_s"] for row in rows[1:]}
    print(format_table(rows, TABLE_COLUMNS))
    for framework, speedup in speedups.items():
        print(f"jaxdl images/s / {framework} images/s = {speedup:.3f}")
    summary = {}
    if rounds:
        print(format_table(rounds, ROUND_COLUMNS))
        summary = {
            "median_ratio": statistics.median(r["ratio"] for r in rounds),
            "load_1min_range": [
                min(r["load_1min"] for r in rounds),
                max(r["load_1min"] for r in rounds),
            ],
        }
        print(
            f"median over {len(rounds)} rounds of torch eager step ms / jaxdl step ms = "
            f"{summary['median_ratio']:.3f} (>= 1: jaxdl is at least as fast); 1-min load "
            f"average {summary['load_1min_range'][0]:.2f}-{summary['load_1min_range'][1]:.2f}"
        )
    report = {
        "workload": workload,
        "xla_flags_arg": args.xla_flags,
        "results": rows,
        "jaxdl_speedup_vs": speedups,
        "rounds": rounds,
        **summary,
    }
    path = write_report(NAME, report, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_program(main)
