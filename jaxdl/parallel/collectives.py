"""Collective communication of a compiled XLA program: count and bytes per device, per kind.

``collective_report(compiled.as_text())`` reads the optimised, SPMD-partitioned HLO that XLA will
run on each device and adds up, per collective kind, how often it executes in one step and how
many bytes each device sends under the ring model (S = the full, unsharded-over-the-group size):

* all-reduce: 2·(n−1)/n·S            * all-gather, reduce-scatter: (n−1)/n·S
* all-to-all: (n−1)/n·S              * collective-permute: S

with n the replica-group size. Async pairs (``all-gather-start``/``-done``) count once, at the
start. Collectives inside called computations (fusions, async wrappers, ``nn.scan``'s while loop)
are multiplied by how often their computation runs: a while body by its trip count, read from
``known_trip_count`` in the loop's backend_config (XLA:CPU/GPU annotate it) or, failing that,
inferred from a ``counter < constant`` loop condition (XLA:TPU's form; assumes the counter starts
at 0, as jax's scan and ``fori_loop(0, n)`` do). Limits: a loop whose trip count is neither is
counted once (reported in ``unknown_trip_count_loops``); every branch of a ``conditional`` counts
as executed; bytes are the ring model's, not the interconnect's actual routing.
``collective_ops`` lists the same per instruction (operand types, group size), to tell e.g. a
tensor-parallel activation all-reduce from an FSDP gradient one.

XLA's HLO text is parsed here by hand because neither jax nor XLA exposes a per-collective
summary of a compiled executable to Python.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping

COLLECTIVE_KINDS: tuple[str, ...] = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s*\(.*->.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*(?P<type>.+?)\s+(?P<opcode>[a-z][a-z0-9\-]*)\("
)
_ARRAY = re.compile(r"\b(pred|token|[a-z]+\d+[a-z0-9]*)\[([\d,<=]*)\]")
_OPERAND_NAME = re.compile(r"%([^\s,()]+)")
_METADATA = re.compile(r"metadata=\{[^}]*\}")
_CALLEE = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([^\s,{}]+)"
)
_CALLEE_LIST = re.compile(r"\b(?:calls|branch_computations|called_computations)=\{([^}]*)\}")
_KNOWN_TRIP_COUNT = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_HEADER_COUNT = re.compile(r"\b(num_partitions|replica_count)=(\d+)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One HLO instruction: ``name = type opcode(operands), attributes``."""

    name: str
    type: str
    opcode: str
    operands: str
    attributes: str
    is_root: bool


@dataclasses.dataclass
class HloModule:
    """Computations (name -> instructions) of an HLO module, its entry and device count."""

    computations: dict[str, list[Instruction]]
    entry: str
    num_devices: int | None

    @functools.cached_property
    def types(self) -> dict[str, str]:
        """Result type of every instruction (names are unique module-wide in HLO)."""
        return {i.name: i.type for body in self.computations.values() for i in body}

    def operand_names(self, instruction: Instruction) -> list[str]:
        return _OPERAND_NAME.findall(instruction.operands)

    def operand_types(self, instruction: Instruction) -> list[str]:
        """Result types of ``instruction``'s operands, looked up by name."""
        names = self.operand_names(instruction)
        missing = [name for name in names if name not in self.types]
        if missing:
            raise ValueError(f"HLO operand %{missing[0]} of {instruction.name} is never defined")
        return [self.types[name] for name in names]


def _split_call(rest: str) -> tuple[str, str]:
    """Splits ``a, b), attrs`` (the text after ``opcode(``) into operands and attributes."""
    depth = 1
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[:i], rest[i + 1 :]
    return rest, ""


def parse_hlo_module(hlo_text: str) -> HloModule:
    """Parses HLO text (``compiled.as_text()``) into computations and instructions."""
    computations: dict[str, list[Instruction]] = {}
    entry = None
    current: list[Instruction] | None = None
    header = hlo_text.split("\n", 1)[0]
    counts = dict(_HEADER_COUNT.findall(header)) if header.startswith("HloModule") else {}
    for line in hlo_text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match and not line[:1].isspace():
                current = computations.setdefault(match["name"], [])
                if line.startswith("ENTRY"):
                    entry = match["name"]
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            operands, attributes = _split_call(line[match.end() :])
            current.append(
                Instruction(
                    name=match["name"],
                    type=match["type"],
                    opcode=match["opcode"],
                    operands=operands,
                    attributes=attributes,
                    is_root=line.lstrip().startswith("ROOT"),
                )
            )
    if entry is None:
        raise ValueError("no ENTRY computation found: is this HLO text (compiled.as_text())?")
    num_devices = None
    if counts:
        num_devices = int(counts.get("num_partitions", 1)) * int(counts.get("replica_count", 1))
    return HloModule(computations, entry, num_devices)


def type_dims(hlo_type: str) -> tuple[int, ...]:
    """Dimensions of the first array in an HLO type string (``f32[8,128]{1,0}`` -> (8, 128))."""
    match = _ARRAY.search(hlo_type)
    if match is None:
        raise ValueError(f"no array type in {hlo_type!r}")
    return tuple(int(d.replace("<=", "")) for d in match.group(2).split(",") if d)


def type_bytes(hlo_type: str) -> float:
    """Bytes of an HLO type string, e.g. ``f32[8,128]{1,0}`` or a tuple of arrays."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(hlo_type):
        if dtype == "token":
            continue
        bits = 8 if dtype == "pred" else int(re.search(r"\d+", dtype).group())
        sizes = [int(d.replace("<=", "")) for d in dims.split(",") if d]
        total += math.prod(sizes) * bits / 8
    return total


def _is_async_tail(opcode: str) -> bool:
    """The ``-done``/``-update`` half of an async pair: its work is counted at ``-start``."""
    return opcode.endswith(("-done", "-update"))


def _trip_count(module: HloModule, loop: Instruction, condition: str | None) -> int | None:
    """A while loop's static trip count: XLA's annotation, else ``counter < constant``."""
    known = _KNOWN_TRIP_COUNT.search(loop.attributes)
    if known:
        return int(known.group(1))
    body = module.computations.get(condition or "", [])
    root = next((i for i in body if i.is_root), None)
    if root is None or root.opcode != "compare" or "direction=LT" not in root.attributes:
        return None
    by_name = {i.name: i for i in body}
    for name in module.operand_names(root):
        operand = by_name.get(name)
        if operand is not None and operand.opcode == "constant":
            literal = operand.operands.strip()
            if re.fullmatch(r"-?\d+", literal):
                return int(literal)
    return None


def execution_counts(module: HloModule) -> tuple[dict[str, float], int]:
    """How many times each computation runs per execution of the entry computation.

    Returns ``(counts, unknown_trip_count_loops)``; unreachable computations get 0.
    """
    callers: dict[str, list[tuple[str, float]]] = {}
    unknown = 0
    for caller, body in module.computations.items():
        for instruction in body:
            if _is_async_tail(instruction.opcode):
                continue
            attributes = _METADATA.sub("", instruction.attributes)
            edges = list(_CALLEE.findall(attributes))
            for names in _CALLEE_LIST.findall(attributes):
                edges += [("calls", n.strip().lstrip("%")) for n in names.split(",") if n.strip()]
            factor = 1.0
            if instruction.opcode == "while":
                condition = next((n for role, n in edges if role == "condition"), None)
                trips = _trip_count(module, instruction, condition)
                unknown += trips is None
                factor = float(trips if trips is not None else 1)
            for role, name in edges:
                callers.setdefault(name, []).append((caller, factor if role == "body" else 1.0))

    @functools.cache
    def count(name: str) -> float:
        if name == module.entry:
            return 1.0
        return sum(count(caller) * factor for caller, factor in callers.get(name, []))

    return {name: count(name) for name in module.computations}, unknown


def _group_size(attributes: str, default: int) -> int:
    """Replica-group size from any of XLA's spellings of ``replica_groups``."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
    if mesh:
        sizes = {name: int(size) for name, size in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
        size = 1
        for name, sub_size in re.findall(r"'([^']+)'(?::\(\d+\)(\d+))?", mesh.group(2)):
            size *= int(sub_size) if sub_size else sizes.get(name, 1)
        return size
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=", attributes)
    if iota:
        return int(iota.group(1).split(",")[-1])
    explicit = re.search(r"replica_groups=\{\{([^}]*)\}", attributes)
    if explicit:
        return len([d for d in explicit.group(1).split(",") if d.strip()])
    return default


def _bytes_sent(kind: str, operand_bytes: float, n: int) -> float:
    """Ring-model bytes one device sends; ``operand_bytes`` is its input buffer(s)."""
    if kind == "collective-permute":
        return operand_bytes
    if n <= 1:
        return 0.0
    if kind == "all-reduce":
        return 2 * (n - 1) / n * operand_bytes
    if kind == "all-gather":  # the operand is one shard of the gathered n·operand
        return (n - 1) * operand_bytes
    return (n - 1) / n * operand_bytes  # reduce-scatter (operand = full size), all-to-all


@dataclasses.dataclass(frozen=True)
class CollectiveStats:
    """Executions per step and ring-model bytes sent per device per step, for one kind."""

    count: float = 0.0
    bytes: float = 0.0


@dataclasses.dataclass(frozen=True)
class CollectiveOp:
    """One collective instruction of a compiled program: its kind, operand types (one per
    buffer of a combined collective), replica-group size, executions per step and ring-model
    bytes sent per device per step (all executions)."""

    kind: str
    operand_types: tuple[str, ...]
    group_size: int
    runs: float
    bytes: float


@dataclasses.dataclass
class CollectiveReport:
    """Per-kind ``CollectiveStats`` (all of ``COLLECTIVE_KINDS``) of one compiled program, and
    its collectives one by one (``ops``, see ``collective_ops``)."""

    by_kind: dict[str, CollectiveStats]
    unknown_trip_count_loops: int = 0
    ops: tuple[CollectiveOp, ...] = ()

    @property
    def total_bytes(self) -> float:
        return sum(stats.bytes for stats in self.by_kind.values())

    @property
    def total_count(self) -> float:
        return sum(stats.count for stats in self.by_kind.values())

    def to_dict(self) -> dict:
        return {
            "by_kind": {k: dataclasses.asdict(v) for k, v in self.by_kind.items()},
            "total_bytes": self.total_bytes,
            "unknown_trip_count_loops": self.unknown_trip_count_loops,
        }


def _collective_kind(instruction: Instruction) -> str | None:
    """The collective kind an instruction performs (its ``-start`` half included), else None."""
    kind = instruction.opcode.removesuffix("-start")
    if kind not in COLLECTIVE_KINDS or _is_async_tail(instruction.opcode):
        return None
    return kind


def _instruction_bytes(module: HloModule, instruction: Instruction, default_group: int) -> float:
    """Ring-model bytes one execution of a collective instruction sends per device."""
    kind = instruction.opcode.removesuffix("-start")
    operand_types = module.operand_types(instruction)
    if kind == "collective-permute":
        operand_types = operand_types[:1]  # the in-place form adds buffers/offsets
    operand_bytes = sum(type_bytes(operand) for operand in operand_types)
    n = _group_size(instruction.attributes, default_group)
    return _bytes_sent(kind, operand_bytes, n)


def collective_ops(hlo_text: str, num_devices: int | None = None) -> list[CollectiveOp]:
    """Every collective instruction in ``hlo_text`` that runs, in program order.

    ``num_devices`` is the group size of collectives with empty ``replica_groups``; by default
    the module header's ``num_partitions × replica_count``.
    """
    module = parse_hlo_module(hlo_text)
    return _module_ops(module, execution_counts(module)[0], num_devices)


def _module_ops(
    module: HloModule, counts: Mapping[str, float], num_devices: int | None
) -> list[CollectiveOp]:
    default_group = num_devices or module.num_devices or 1
    ops = []
    for computation, body in module.computations.items():
        runs = counts[computation]
        if not runs:
            continue
        for instruction in body:
            kind = _collective_kind(instruction)
            if kind is None:
                continue
            ops.append(
                CollectiveOp(
                    kind,
                    tuple(module.operand_types(instruction)),
                    _group_size(instruction.attributes, default_group),
                    runs,
                    runs * _instruction_bytes(module, instruction, default_group),
                )
            )
    return ops


def collective_report(hlo_text: str, num_devices: int | None = None) -> CollectiveReport:
    """Counts and per-device bytes of every collective in ``hlo_text`` (see the module doc),
    per kind; ``num_devices`` as for ``collective_ops``."""
    module = parse_hlo_module(hlo_text)
    counts, unknown = execution_counts(module)
    ops = tuple(_module_ops(module, counts, num_devices))
    totals = {kind: [0.0, 0.0] for kind in COLLECTIVE_KINDS}
    for op in ops:
        totals[op.kind][0] += op.runs
        totals[op.kind][1] += op.bytes
    by_kind = {kind: CollectiveStats(count, sent) for kind, (count, sent) in totals.items()}
    return CollectiveReport(by_kind, unknown, ops)


# Instructions that move or rename data without computing: they do not hide a collective.
_NOT_COMPUTE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "after-all",
    "partition-id",
    "replica-id",
}


@dataclasses.dataclass(frozen=True)
class OverlapStats:
    """How much collective traffic the schedule overlaps with compute, per device per step.

    A collective is *overlapped* when it runs as an async pair (``*-start``/``*-done``, or
    ``async-start`` wrapping a collective) and the schedule places at least one compute
    instruction (a fusion, dot, convolution, loop, ...) between its start and its done; or when
    it is fused with compute (XLA:TPU's async collective fusions: the collective sits in a
    fusion body beside the computation it overlaps).
    """

    total_bytes: float
    async_bytes: float
    overlapped_bytes: float
    async_pairs: float
    overlapped_pairs: float

    @property
    def overlapped_share(self) -> float:
        return self.overlapped_bytes / self.total_bytes if self.total_bytes else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "overlapped_share": self.overlapped_share}


def collective_overlap(hlo_text: str, num_devices: int | None = None) -> OverlapStats:
    """Async collectives of a scheduled HLO module and the share overlapped with compute.

    The instruction order of a computation in ``compiled.as_text()`` is XLA's schedule
    (``is_scheduled=true``). Synchronous collectives (XLA:CPU's) are never overlapped.
    """
    module = parse_hlo_module(hlo_text)
    default_group = num_devices or module.num_devices or 1
    counts, _ = execution_counts(module)
    total = async_bytes = overlapped = pairs = overlapped_pairs = 0.0
    fused_with_compute = _fusions_with_compute(module)
    for computation, body in module.computations.items():
        runs = counts[computation]
        if not runs:
            continue
        started: dict[str, tuple[int, float]] = {}
        for position, instruction in enumerate(body):
            kind = _collective_kind(instruction)
            if kind is not None:
                sent = runs * _instruction_bytes(module, instruction, default_group)
                total += sent
                if instruction.opcode.endswith("-start"):
                    started[instruction.name] = (position, sent)
                elif computation in fused_with_compute:
                    async_bytes, overlapped = async_bytes + sent, overlapped + sent
                    pairs, overlapped_pairs = pairs + runs, overlapped_pairs + runs
            elif instruction.opcode == "async-start":
                sent = runs * _wrapped_bytes(module, instruction, default_group)
                if sent:
                    started[instruction.name] = (position, sent)
            elif _is_async_tail(instruction.opcode):
                for name in module.operand_names(instruction):
                    if name not in started:
                        continue
                    start, sent = started.pop(name)
                    between = body[start + 1 : position]
                    hidden = any(_is_compute(other) for other in between)
                    async_bytes += sent
                    pairs += runs
                    overlapped += sent if hidden else 0.0
                    overlapped_pairs += runs if hidden else 0.0
    return OverlapStats(total, async_bytes, overlapped, pairs, overlapped_pairs)


def _fusions_with_compute(module: HloModule) -> set[str]:
    """Fusion bodies that hold compute besides their collectives."""
    bodies = set()
    for body in module.computations.values():
        for instruction in body:
            if instruction.opcode == "fusion":
                bodies.update(n for role, n in _CALLEE.findall(instruction.attributes))
    return {
        name
        for name in bodies
        if any(_is_compute(i) for i in module.computations.get(name, []))
        and any(_collective_kind(i) is not None for i in module.computations.get(name, []))
    }


def _wrapped_bytes(module: HloModule, instruction: Instruction, default_group: int) -> float:
    """Bytes of the collectives an ``async-start`` wraps (its called computation)."""
    sent = 0.0
    for names in _CALLEE_LIST.findall(_METADATA.sub("", instruction.attributes)):
        for name in (n.strip().lstrip("%") for n in names.split(",") if n.strip()):
            for inner in module.computations.get(name, []):
                if _collective_kind(inner) is not None:
                    sent += _instruction_bytes(module, inner, default_group)
    for role, name in _CALLEE.findall(_METADATA.sub("", instruction.attributes)):
        if role == "calls":
            for inner in module.computations.get(name, []):
                if _collective_kind(inner) is not None:
                    sent += _instruction_bytes(module, inner, default_group)
    return sent


def _is_compute(instruction: Instruction) -> bool:
    opcode = instruction.opcode
    return not (
        opcode in _NOT_COMPUTE
        or opcode.endswith(("-start", "-done", "-update"))
        or _collective_kind(instruction) is not None
    )


def data_parallel_minimum_bytes(gradient_bytes: float, n: int) -> float:
    """Ring all-reduce of the gradients over ``n`` replicas: 2·(n−1)/n × gradient bytes."""
    return 2 * (n - 1) / n * gradient_bytes


def fsdp_minimum_bytes(param_bytes: float, n: int) -> float:
    """ZeRO-3 over ``n`` shards: all-gather params forward and backward, reduce-scatter grads:
    3·(n−1)/n × parameter bytes."""
    return 3 * (n - 1) / n * param_bytes


def minimum_bytes(param_bytes: float, mesh_sizes: Mapping[str, int]) -> float:
    """Per-device lower bound on one step's parameter/gradient traffic on a jaxdl mesh.

    Parameters are split over ``tensor`` and gathered/reduce-scattered over ``fsdp``; each
    device's ``1/(fsdp·tensor)`` gradient shard is then all-reduced over the replica axes
    (``data``, ``sequence``). Tensor-parallel activation all-reduces depend on activation sizes
    and are not included, so ratios of TP strategies exceed 1 by that traffic.
    """
    fsdp = mesh_sizes.get("fsdp", 1)
    tensor = mesh_sizes.get("tensor", 1)
    replicas = mesh_sizes.get("data", 1) * mesh_sizes.get("sequence", 1)
    per_tensor_shard = param_bytes / tensor
    return fsdp_minimum_bytes(per_tensor_shard, fsdp) + data_parallel_minimum_bytes(
        per_tensor_shard / fsdp, replicas
    )


def megatron_activation_bytes(
    num_layers: int, local_batch: int, seq_len: int, embed_dim: int, tensor: int, itemsize: int = 4
) -> float:
    """Tensor-parallel activation traffic per device per step of a Megatron Transformer: per
    block two ring all-reduces of [local_batch, seq_len, embed_dim] forward (after attention
    and after the MLP) and two backward (their inputs' gradients), over ``tensor`` devices."""
    activation = local_batch * seq_len * embed_dim * itemsize
    return num_layers * 4 * 2 * (tensor - 1) / tensor * activation
