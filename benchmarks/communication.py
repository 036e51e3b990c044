"""Communication per train step under DP, FSDP and FSDP×TP, from AOT compiles (nothing runs).

For ResNet-50 (224×224×3, 1000 classes, SGD+momentum) and GPT-2 medium (355M, T=1024, AdamW), on
meshes of 8 and 64 devices, compiles jaxdl's real train step with ``jaxdl.parallel.aot`` and
reports, per device and step, the bytes each collective kind sends (ring model, loop trip counts
included), their total, the theoretical minimum, the ratio, peak memory and compile time.

    python benchmarks/communication.py                      # 64 fake CPU devices (XLA_FLAGS)
    python benchmarks/communication.py --platform tpu       # v5p:2x2x2 and v5p:4x4x4 (libtpu)
    python benchmarks/communication.py --models gpt2_medium --devices 8 --seq-len 256
    python benchmarks/communication.py --reductions auto        # only jaxdl's default

Each case is compiled with jaxdl's gradient reduction (``auto``: explicit on DP/FSDP meshes,
``jaxdl.parallel.gradients``) and with the compiler's (``compiler``: the program before that
hook, XLA's SPMD partitioner inserts every reduction), side by side.

Minimum = parameter traffic (``collectives.minimum_bytes``: DP ring all-reduce 2(n−1)/n·P, FSDP
3(n−1)/n·P) plus, for the transformer under TP, Megatron's 4 activation all-reduces per layer
(2 forward, 2 backward) of [local batch, T, embed]. ResNet's TP activation traffic is not
modelled, so its FSDP×TP ratio is not a fit to a minimum.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from common import format_table, write_report

NAME = "communication"
MAX_CPU_DEVICES = 64
TPU_TOPOLOGIES = {8: "v5p:2x2x2", 64: "v5p:4x4x4"}
STRATEGIES = {  # mesh sizes; -1 = the remaining devices
    "DP": {"data": -1},
    "FSDP": {"fsdp": -1},
    "FSDPxTP": {"fsdp": -1, "tensor": 4},
}
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
COLUMNS = (
    "model",
    "devices",
    "strategy",
    "reduction",
    "all-reduce MiB",
    "all-gather MiB",
    "reduce-scatter MiB",
    "all-to-all MiB",
    "permute MiB",
    "total MiB",
    "minimum MiB",
    "ratio",
    "peak mem MiB",
    "overlapped %",
    "compile s",
)
MIB = 2**20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--models", nargs="+", default=["resnet50", "gpt2_medium"])
    parser.add_argument("--devices", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=None)
    parser.add_argument("--platform", choices=("cpu", "tpu"), default="cpu")
    parser.add_argument(
        "--reductions",
        nargs="+",
        choices=("auto", "explicit", "compiler"),
        default=["auto", "compiler"],
        help="mesh.gradient_reduction modes to compile each case with",
    )
    parser.add_argument("--seq-len", type=int, default=1024, help="GPT-2 sequence length")
    parser.add_argument(
        "--per-device-batch", type=int, default=None, help="default: 2 (ResNet), 1 (GPT-2)"
    )
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/out/...)")
    args = parser.parse_args(argv)
    if any(n < 1 or (args.platform == "cpu" and n > MAX_CPU_DEVICES) for n in args.devices):
        parser.error(f"--devices must be in 1..{MAX_CPU_DEVICES} on cpu")
    if args.platform == "tpu" and set(args.devices) - set(TPU_TOPOLOGIES):
        parser.error(f"--platform tpu supports --devices {sorted(TPU_TOPOLOGIES)}")
    return args


def _workload(model_name: str, args: argparse.Namespace):
    """(model, optimizer, one example's ShapeDtypeStruct, per-device batch)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxdl.models import get_model

    if model_name.startswith("resnet"):
        model = get_model(model_name, num_classes=1000)
        example = jax.ShapeDtypeStruct((224, 224, 3), jnp.float32)
        return model, optax.sgd(0.1, momentum=0.9), example, args.per_device_batch or 2
    model = get_model(model_name)
    example = jax.ShapeDtypeStruct((args.seq_len,), jnp.int32)
    return model, optax.adamw(3e-4, weight_decay=0.1), example, args.per_device_batch or 1


def _tp_activation_minimum(model, mesh_sizes: dict[str, int], batch: int, seq_len: int) -> float:
    """Megatron TP: 4 ring all-reduces per layer of [batch/(data·fsdp), T, embed] float32."""
    from jaxdl.parallel.collectives import megatron_activation_bytes

    if mesh_sizes["tensor"] == 1 or not hasattr(model, "num_layers"):
        return 0.0
    local_batch = batch // (mesh_sizes["data"] * mesh_sizes["fsdp"])
    return megatron_activation_bytes(
        model.num_layers, local_batch, seq_len, model.embed_dim, mesh_sizes["tensor"]
    )


def run_case(
    model_name: str, devices: list, strategy: str, reduction: str, args: argparse.Namespace
) -> dict:
    """Compiles one (model, device count, strategy, reduction) case; returns its table row."""
    from jaxdl.parallel import make_mesh
    from jaxdl.train.compile import compile_train_step

    model, optimizer, example, per_device = _workload(model_name, args)
    mesh = make_mesh(STRATEGIES[strategy], devices)
    batch = per_device * len(devices)
    report = compile_train_step(
        model, optimizer, mesh, batch, example, gradient_reduction_mode=reduction
    )
    minimum = report.minimum_bytes + _tp_activation_minimum(
        model, report.mesh_sizes, batch, example.shape[0]
    )
    by_kind = report.collectives.by_kind
    row: dict[str, Any] = {
        "model": model_name,
        "devices": len(devices),
        "strategy": strategy,
        "reduction": reduction,
        **{f"{k} MiB": by_kind[k].bytes / MIB for k in KINDS[:-1]},
        "permute MiB": by_kind["collective-permute"].bytes / MIB,
        "total MiB": report.collectives.total_bytes / MIB,
        "minimum MiB": minimum / MIB,
        "ratio": report.collectives.total_bytes / minimum if minimum else None,
        "peak mem MiB": report.memory.peak_bytes / MIB,
        "overlapped %": 100 * report.overlap.overlapped_share,
        "compile s": report.compile_seconds,
    }
    return {"row": row, "batch": batch, "report": report.to_dict()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.platform == "cpu":
        # Fake CPU devices must be requested before jax creates its backends.
        flag = f"--xla_force_host_platform_device_count={MAX_CPU_DEVICES}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jaxdl.parallel.aot import topology_devices

    cases = []
    for model_name in args.models:
        for count in args.devices:
            topology = TPU_TOPOLOGIES[count] if args.platform == "tpu" else f"cpu:{count}"
            devices = topology_devices(topology)
            for strategy in args.strategies or STRATEGIES:
                if count % STRATEGIES[strategy].get("tensor", 1):
                    continue
                reductions = args.reductions
                if STRATEGIES[strategy].get("tensor", 1) > 1 and "auto" in reductions:
                    # auto is the compiler's reduction under tensor parallelism: compile once.
                    reductions = [r for r in reductions if r != "compiler"]
                for reduction in reductions:
                    case = run_case(model_name, devices, strategy, reduction, args)
                    case["topology"] = topology
                    cases.append(case)
                    print(format_table([case["row"]], COLUMNS).splitlines()[-1], flush=True)
    print()
    print(format_table([case["row"] for case in cases], COLUMNS))
    path = write_report(
        NAME,
        {
            "config": {
                "platform": args.platform,
                "seq_len": args.seq_len,
                "per_device_batch": args.per_device_batch,
                "strategies": STRATEGIES,
                "reductions": args.reductions,
            },
            "results": cases,
        },
        args.out,
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
