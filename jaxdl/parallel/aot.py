"""Ahead-of-time compilation of jaxdl's train step for a device topology one does not have.

Compiles a lowered train step (``jaxdl compile`` lowers exactly the step ``jaxdl train`` runs: both
come from ``jaxdl.experiment.build_experiment``) for a list of devices — fake CPU devices, or the
TPU devices of
``jax.experimental.topologies.get_topology_desc`` (needs libtpu, the ``tpu`` extra, but no TPU) —
from abstract inputs only: the state is ``jax.eval_shape`` of the init, so no parameter is ever
materialised and a pod's model compiles on a laptop. Reports what XLA decided for each device:
memory (``compiled.memory_analysis()``), FLOPs and the collectives table of ``collectives``.

    jaxdl compile --config experiments/digits_resnet.py --topology v5p:4x4x4
    jaxdl compile --config experiments/digits_resnet.py --topology cpu:8   # XLA_FLAGS devices
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxdl.errors import UserError
from jaxdl.parallel.collectives import (
    CollectiveOp,
    CollectiveReport,
    OverlapStats,
    collective_overlap,
    collective_report,
    execution_counts,
    minimum_bytes,
    parse_hlo_module,
    type_dims,
)

TPU_EXTRA_HINT = "install the tpu extra: pip install 'jaxdl[tpu]'"
# HBM per chip (GiB), from Google Cloud's TPU system-architecture pages.
TPU_HBM_GIB: dict[str, float] = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
_TPU_GENERATION_OF_KIND = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e",
    "TPU v5e": "v5e",
    "TPU v5": "v5p",
    "TPU v5p": "v5p",
    "TPU v6 lite": "v6e",
    "TPU v6e": "v6e",
}


class TpuUnavailableError(UserError, RuntimeError):
    """A TPU topology was asked for but libtpu (the ``tpu`` extra) is not installed."""


class DoesNotFitError(RuntimeError):
    """XLA refused to compile because the step needs more device memory than exists (TPU)."""


def topology_devices(topology: str) -> list[jax.Device]:
    """Devices to compile for: ``'cpu:N'`` (the first N CPU devices) or a TPU topology name
    such as ``'v5p:4x4x4'``/``'v5e:2x2'`` (abstract devices; no TPU needed, libtpu is).

    Raises ValueError for a malformed name or too few CPU devices, TpuUnavailableError without
    libtpu.
    """
    kind, sep, shape = topology.partition(":")
    if not sep or not shape:
        raise ValueError(f"topology {topology!r} is not of the form 'cpu:8' or 'v5p:4x4x4'")
    if kind == "cpu":
        if not shape.isdigit() or int(shape) < 1:
            raise ValueError(f"topology {topology!r}: the CPU device count must be a positive int")
        devices = jax.devices("cpu")
        if len(devices) < int(shape):
            raise ValueError(
                f"topology {topology} needs {shape} CPU devices but jax has {len(devices)}; "
                f"start with XLA_FLAGS=--xla_force_host_platform_device_count={shape}"
            )
        return devices[: int(shape)]
    if importlib.util.find_spec("libtpu") is None:
        raise TpuUnavailableError(TPU_EXTRA_HINT)
    # Compiling needs libtpu but not the chips, so it may share a machine with another process
    # that holds libtpu's lock file (a TPU job, a parallel test): let both load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as error:  # noqa: BLE001 - libtpu raises bare runtime errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(f"cannot build TPU topology {topology!r}: {reason}") from None
    return list(description.devices)


def hbm_bytes_per_device(devices: Sequence[jax.Device]) -> int | None:
    """HBM available to each device for known TPU generations, else None.

    Chips whose TensorCores appear as separate devices (v4 topologies) share the chip's HBM.
    """
    generation = _TPU_GENERATION_OF_KIND.get(devices[0].device_kind)
    if generation is None:
        return None
    chips = {tuple(getattr(device, "coords", (device.id,))) for device in devices}
    return int(TPU_HBM_GIB[generation] * 2**30 * len(chips) / len(devices))


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-device bytes of a compiled program (``compiled.memory_analysis()``)."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written in place of donated arguments (the train state)
    temp_bytes: int
    generated_code_bytes: int

    @property
    def peak_bytes(self) -> int:
        """Estimate of live device memory: arguments + non-aliased outputs + temps + code."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.generated_code_bytes
        )


@dataclasses.dataclass
class CompileReport:
    """What one compiled train step costs each device (memory, FLOPs, communication)."""

    device_kind: str
    num_devices: int
    mesh_sizes: dict[str, int]
    batch_shapes: dict[str, tuple[int, ...]]
    param_count: int
    param_bytes: int
    memory: MemoryReport
    xla_flops: float | None  # compiled.cost_analysis(): counts a while-loop body once
    matmul_flops: float  # dot + convolution FLOPs, loop bodies times their trip count
    collectives: CollectiveReport
    overlap: OverlapStats  # async collectives and the share the schedule hides behind compute
    minimum_bytes: float  # collectives.minimum_bytes for this mesh
    hbm_bytes: int | None
    compile_seconds: float

    @property
    def ratio(self) -> float | None:
        """Measured collective bytes / theoretical minimum (None without parameter traffic)."""
        return self.collectives.total_bytes / self.minimum_bytes if self.minimum_bytes else None

    @property
    def fits(self) -> bool | None:
        """Whether the peak estimate fits in the device's HBM (None when HBM is unknown)."""
        return None if self.hbm_bytes is None else self.memory.peak_bytes <= self.hbm_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (memory with its peak, collectives per kind, ratio, fits)."""
        fields = dataclasses.asdict(self)
        fields["memory"]["peak_bytes"] = self.memory.peak_bytes
        fields["collectives"] = self.collectives.to_dict()
        fields["overlap"] = self.overlap.to_dict()
        return {**fields, "ratio": self.ratio, "fits": self.fits}

    def format(self) -> str:
        """A human-readable multi-line summary (what ``jaxdl compile`` prints)."""
        mesh = " ".join(f"{axis}={size}" for axis, size in self.mesh_sizes.items())
        shapes = ", ".join(f"{k} {list(v)}" for k, v in self.batch_shapes.items())
        m = self.memory
        hbm = "HBM unknown"
        if self.hbm_bytes is not None:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            hbm = f"of {format_bytes(self.hbm_bytes)} HBM: {verdict}"
        xla = "n/a" if self.xla_flops is None else f"{self.xla_flops:.3e}"
        lines = [
            f"devices: {self.num_devices} x {self.device_kind}; mesh {mesh}; batch {shapes}",
            f"parameters: {self.param_count:,} ({format_bytes(self.param_bytes)})",
            f"compile time: {self.compile_seconds:.1f} s",
            "memory per device: "
            f"arguments {format_bytes(m.argument_bytes)}, outputs {format_bytes(m.output_bytes)} "
            f"(aliased {format_bytes(m.alias_bytes)}), temporaries {format_bytes(m.temp_bytes)}, "
            f"code {format_bytes(m.generated_code_bytes)}",
            f"peak memory per device: {format_bytes(m.peak_bytes)} {hbm}",
            f"FLOPs per device per step: {self.matmul_flops:.3e} (dot/conv, loop-aware); "
            f"{xla} (XLA cost analysis, loop bodies once)",
            "collectives per device per step (ring model):",
            f"  {'kind':<20}{'count':>8}{'bytes':>12}",
        ]
        for kind, stats in self.collectives.by_kind.items():
            lines.append(f"  {kind:<20}{stats.count:>8g}{format_bytes(stats.bytes):>12}")
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}"
        lines.append(
            f"  {'total':<20}{self.collectives.total_count:>8g}"
            f"{format_bytes(self.collectives.total_bytes):>12}"
            f"   minimum {format_bytes(self.minimum_bytes)}, measured/minimum {ratio}"
        )
        lines += _largest_collectives(self.collectives.ops)
        o = self.overlap
        lines.append(
            f"  async pairs {o.async_pairs:g}, overlapped with compute {o.overlapped_pairs:g}: "
            f"{format_bytes(o.overlapped_bytes)} of {format_bytes(o.total_bytes)} "
            f"({o.overlapped_share:.0%})"
        )
        if self.collectives.unknown_trip_count_loops:
            lines.append(
                f"  note: {self.collectives.unknown_trip_count_loops} loop(s) of unknown trip "
                "count were counted once"
            )
        return "\n".join(lines)


def format_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _window(attributes: str, spatial_dims: int) -> list[dict[str, int]]:
    """Per spatial dimension: size, stride, padding_low, lhs/rhs dilation of ``window={...}``."""
    if not spatial_dims:
        return []
    found = re.search(r"window=\{([^}]*)\}", attributes)
    fields = dict(re.findall(r"(\w+)=(\S+)", found.group(1))) if found else {}

    def per_dim(key: str, default: str) -> list[str]:
        return fields.get(key, "x".join([default] * spatial_dims)).split("x")

    return [
        {
            "size": int(size),
            "stride": int(stride),
            "pad_low": int(pad.split("_")[0]),
            "lhs_dilate": int(lhs),
            "rhs_dilate": int(rhs),
        }
        for size, stride, pad, lhs, rhs in zip(
            per_dim("size", "1"),
            per_dim("stride", "1"),
            per_dim("pad", "0_0"),
            per_dim("lhs_dilate", "1"),
            per_dim("rhs_dilate", "1"),
            strict=True,
        )
    ]


def _convolution_flops(instruction, module) -> float:
    """XLA's convolution FLOP count: 2 × (input features / groups) × output features ×
    (batch / batch groups) × the number of (output, tap) pairs that land on a real input element
    in each spatial dimension (padding and dilation holes excluded)."""
    lhs, rhs = (type_dims(t) for t in module.operand_types(instruction)[:2])
    out = type_dims(instruction.type)
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instruction.attributes)
    lhs_labels, rhs_labels, out_labels = labels.groups()
    spatial = sorted(c for c in lhs_labels if c.isdigit())
    groups = re.search(r"feature_group_count=(\d+)", instruction.attributes)
    batch_groups = re.search(r"batch_group_count=(\d+)", instruction.attributes)
    valid_positions = 1
    for dim, window in zip(spatial, _window(instruction.attributes, len(spatial)), strict=True):
        outputs = np.arange(out[out_labels.index(dim)])[:, None]
        taps = np.arange(window["size"])[None, :]
        undilated = outputs * window["stride"] - window["pad_low"] + taps * window["rhs_dilate"]
        index = undilated // window["lhs_dilate"]
        real = (undilated % window["lhs_dilate"] == 0) & (index >= 0)
        valid_positions *= int(np.sum(real & (index < lhs[lhs_labels.index(dim)])))
    multiply_adds = (
        lhs[lhs_labels.index("f")]
        / (int(groups.group(1)) if groups else 1)
        * rhs[rhs_labels.index("o")]
        * lhs[lhs_labels.index("b")]
        / (int(batch_groups.group(1)) if batch_groups else 1)
        * valid_positions
    )
    return 2 * multiply_adds


def hlo_matmul_flops(hlo_text: str) -> float:
    """Per-device FLOPs of the dots and convolutions in compiled HLO, counted as XLA's cost
    analysis does but with loop bodies multiplied by their trip count (XLA counts a while body
    once, which under-reports a scanned model by its depth). Elementwise ops are ignored."""
    module = parse_hlo_module(hlo_text)
    counts, _ = execution_counts(module)
    total = 0.0
    for computation, body in module.computations.items():
        for instruction in body:
            if not counts[computation] or instruction.opcode not in ("dot", "convolution"):
                continue
            if instruction.opcode == "convolution":
                flops = _convolution_flops(instruction, module)
            else:
                lhs = type_dims(module.operand_types(instruction)[0])
                found = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.attributes)
                axes = [int(a) for a in found.group(1).split(",") if a] if found else []
                flops = 2 * math.prod(type_dims(instruction.type)) * math.prod(lhs[a] for a in axes)
            total += counts[computation] * flops
    return total


def _largest_collectives(ops: Sequence[CollectiveOp], count: int = 5) -> list[str]:
    """Report lines for the ``count`` collectives sending the most bytes: where a ratio above
    the minimum comes from (e.g. activation all-reduces over the tensor axis)."""
    largest = sorted(ops, key=lambda op: op.bytes, reverse=True)[:count]
    if not largest:
        return []
    lines = ["  largest: bytes, kind over group size x executions per step, operands"]
    for op in largest:
        operands = [re.sub(r"\{[^}]*\}", "", t) for t in op.operand_types]  # drop layouts
        more = f" +{len(operands) - 2} more" if len(operands) > 2 else ""
        where = f"{op.kind} over {op.group_size} x{op.runs:g}"
        lines.append(f"    {format_bytes(op.bytes):>10}  {where}  {', '.join(operands[:2])}{more}")
    return lines


def compile_lowered(lowered: Any, state: Any, batch: Any, mesh: Mesh) -> CompileReport:
    """Compiles a lowered train step and reports its per-device costs.

    ``state`` and ``batch`` are the (abstract) arguments it was lowered with; they give the
    parameter bytes and batch shapes. A program too large for the devices' memory raises
    ``DoesNotFitError``.
    """
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        kind = mesh.devices.flat[0].device_kind
        raise DoesNotFitError(f"does not fit on {kind}: {str(error).splitlines()[0]}") from None
    seconds = time.perf_counter() - start

    devices = list(mesh.devices.flat)
    stats = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    hlo = compiled.as_text()
    params = jax.tree.leaves(state.params)
    param_bytes = sum(p.size * np.dtype(p.dtype).itemsize for p in params)
    mesh_sizes = dict(mesh.shape)
    return CompileReport(
        device_kind=devices[0].device_kind,
        num_devices=len(devices),
        mesh_sizes=mesh_sizes,
        batch_shapes={name: tuple(leaf.shape) for name, leaf in batch.items()},
        param_count=sum(p.size for p in params),
        param_bytes=param_bytes,
        memory=MemoryReport(
            argument_bytes=stats.argument_size_in_bytes,
            output_bytes=stats.output_size_in_bytes,
            alias_bytes=stats.alias_size_in_bytes,
            temp_bytes=stats.temp_size_in_bytes,
            generated_code_bytes=stats.generated_code_size_in_bytes,
        ),
        xla_flops=float(cost["flops"]) if cost and "flops" in cost else None,
        matmul_flops=hlo_matmul_flops(hlo),
        collectives=collective_report(hlo, len(devices)),
        overlap=collective_overlap(hlo, len(devices)),
        minimum_bytes=minimum_bytes(param_bytes, mesh_sizes),
        hbm_bytes=hbm_bytes_per_device(devices),
        compile_seconds=seconds,
    )
