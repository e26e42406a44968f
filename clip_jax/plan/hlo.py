"""What a compiled step does, read from its optimised HLO text: matrix-multiply FLOPs and collectives.

XLA's own ``cost_analysis()`` counts a ``while`` loop's body once (gradient caching's micro-batch scans, FSDP
gathers inside loops), so here every computation's counts are multiplied by the trip count of the loops that
call it. The HLO is the per-device (SPMD-partitioned) program: all numbers are per device and step.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from functools import cache

#: Bytes per element of HLO element types.
DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
#: Collective op codes (an async ``-start`` counts once; its ``-done`` not at all), by the kind reported.
COLLECTIVES = {
    "all-reduce": "all-reduce",
    "all-reduce-start": "all-reduce",
    "all-gather": "all-gather",
    "all-gather-start": "all-gather",
    "reduce-scatter": "reduce-scatter",
    "collective-permute": "collective-permute",
    "collective-permute-start": "collective-permute",
    "all-to-all": "all-to-all",
    "ragged-all-to-all": "all-to-all",
}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\{$")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")


@dataclasses.dataclass
class Collective:
    """One kind of collective in a step: how many ops run, the bytes they produce on each device, and the
    bytes each device sends over the interconnect with ring algorithms (what the step-time bound uses)."""

    count: int = 0
    bytes: float = 0.0
    wire_bytes: float = 0.0


@dataclasses.dataclass
class HloSummary:
    """Per-device counts of one compiled program, loop bodies multiplied by their trip counts."""

    matmul_flops: float
    collectives: dict[str, Collective]
    loops: int
    unknown_trip_counts: int

    @property
    def wire_bytes(self) -> float:
        return sum(c.wire_bytes for c in self.collectives.values())


@dataclasses.dataclass
class _Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attributes: str


def _arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _ARRAY.findall(shape)]


def _nbytes(dtype: str, dims: tuple[int, ...]) -> int:
    return DTYPE_BYTES.get(dtype, 4) * math.prod(dims)


def _closing(text: str, start: int) -> int:
    """The index of the bracket closing the one at ``start``."""
    depth, opening, closing = 0, text[start], {"(": ")", "{": "}", "[": "]"}[text[start]]
    for i in range(start, len(text)):
        depth += (text[i] == opening) - (text[i] == closing)
        if depth == 0:
            return i
    return len(text) - 1


def _instruction(line: str) -> _Instruction | None:
    line = line.strip()
    if line.startswith("ROOT "):
        line = line[5:]
    if not line.startswith("%") or " = " not in line:
        return None
    name, rest = line[1:].split(" = ", 1)
    if rest.startswith("("):
        end = _closing(rest, 0)
        shape, rest = rest[: end + 1], rest[end + 1 :].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode, end = rest[:paren], _closing(rest, paren)
    operands = re.findall(r"%([\w.\-]+)", rest[paren : end + 1])
    return _Instruction(name, shape, opcode, operands, rest[end + 1 :])


def _parse(text: str) -> tuple[dict[str, list[_Instruction]], str]:
    computations: dict[str, list[_Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            instruction = _instruction(line)
            if instruction is not None:
                current.append(instruction)
    return computations, entry


def _group_size(attributes: str, default: int) -> int:
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", attributes)
    if iota:
        return int(iota.group(2))
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
    if listed:
        return len([x for x in listed.group(1).split(",") if x])
    pairs = re.search(r"source_target_pairs=\{(.*?)\}\}?", attributes)
    return 2 if pairs else default


def _matmul_flops(ins: _Instruction, shapes: dict[str, str]) -> float:
    out = _arrays(ins.shape)
    if not out or len(ins.operands) < 2:
        return 0.0
    outputs = math.prod(out[0][1])
    if ins.opcode == "dot":
        lhs = _arrays(shapes.get(ins.operands[0], ""))
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attributes)
        if not lhs or not dims:
            return 0.0
        contracted = math.prod(lhs[0][1][int(d)] for d in dims.group(1).split(",") if d)
        return 2.0 * outputs * contracted
    # A convolution: each output element sums input features x the window positions that hold real input
    # elements. TPU compiles batched matrix products as convolutions whose windows mostly cover padding or
    # dilation holes (size=64 lhs_dilate=64 over 64 elements, or size=4 over 1 element), so each window
    # dimension counts min(its real elements, the input's size).
    labels = re.search(r"dim_labels=(\w+)_(\w+)->", ins.attributes)
    lhs, rhs = (_arrays(shapes.get(operand, "")) for operand in ins.operands[:2])
    if not labels or not lhs or not rhs or len(labels.group(2)) != len(rhs[0][1]):
        return 0.0
    features = math.prod(d for label, d in zip(labels.group(2), rhs[0][1]) if label == "i")
    spatial = {label: d for label, d in zip(labels.group(1), lhs[0][1]) if label.isdigit()}
    window = re.search(r"window=\{([^}]*)\}", ins.attributes)
    positions = 1
    if window:
        field = lambda key: [
            int(x) for x in re.search(rf"\b{key}=([\dx]+)", window.group(1)).group(1).split("x")
        ]
        sizes = field("size") if "size=" in window.group(1) else []
        dilation = field("lhs_dilate") if "lhs_dilate=" in window.group(1) else [1] * len(sizes)
        positions = math.prod(
            min(-(-size // step), spatial.get(str(d), size))
            for d, (size, step) in enumerate(zip(sizes, dilation))
        )
    return 2.0 * outputs * features * positions


def summarize(hlo_text: str, devices: int) -> HloSummary:
    """Matrix-multiply FLOPs and collectives of one device's compiled program (``compiled.as_text()``);
    ``devices``: the mesh size, the replica-group size of collectives that do not list theirs."""
    computations, entry = _parse(hlo_text)
    constants = dict(re.findall(r"%([\w.\-]+) = s32\[\]\S* constant\((-?\d+)\)", hlo_text))
    loops, unknown = [0], [0]

    def trips(condition: str) -> int:
        body = computations.get(condition, [])
        root = body[-1] if body else None
        if root is not None and root.opcode == "fusion":  # CPU wraps the loop's compare in a fusion
            called = re.search(r"calls=%([\w.\-]+)", root.attributes)
            inner = computations.get(called.group(1), []) if called else []
            if not (inner and inner[-1].opcode == "compare" and "direction=LT" in inner[-1].attributes):
                root = None
        elif root is not None and not (root.opcode == "compare" and "direction=LT" in root.attributes):
            root = None
        if root is not None:
            for operand in root.operands[1:]:
                if operand in constants:
                    return max(int(constants[operand]), 0)
        unknown[0] += 1
        return 1

    @cache
    def total(name: str) -> tuple[float, tuple[tuple[str, int, float, float], ...]]:
        body = computations.get(name, [])
        shapes = {ins.name: ins.shape for ins in body}
        flops, collected = 0.0, defaultdict(lambda: [0, 0.0, 0.0])
        for ins in body:
            if ins.opcode in ("dot", "convolution"):
                flops += _matmul_flops(ins, shapes)
            kind = COLLECTIVES.get(ins.opcode)
            if kind:
                arrays = _arrays(ins.shape)
                if ins.opcode.endswith("-start") and len(arrays) > 1:
                    arrays = arrays[len(arrays) // 2 :] if kind == "all-gather" else arrays[:1]
                produced = sum(_nbytes(t, d) for t, d in arrays)
                n = max(_group_size(ins.attributes, devices), 1)
                wire = {
                    "all-reduce": 2 * (n - 1) / n * produced,
                    "all-gather": (n - 1) / n * produced,
                    "reduce-scatter": (n - 1) * produced,
                    "all-to-all": (n - 1) / n * produced,
                    "collective-permute": produced,
                }[kind]
                entry_ = collected[kind]
                entry_[0] += 1
                entry_[1] += produced
                entry_[2] += wire
            multiplier = 1
            callees = [c for _, c in _CALLS.findall(ins.attributes)]
            for group in _BRANCHES.findall(ins.attributes):
                callees += re.findall(r"%([\w.\-]+)", group)
            if ins.opcode == "while":
                condition = re.search(r"condition=%([\w.\-]+)", ins.attributes)
                multiplier = trips(condition.group(1)) if condition else 1
                loops[0] += 1
            for callee in callees:
                sub_flops, sub_collected = total(callee)
                flops += multiplier * sub_flops
                for kind_, count, produced, wire in sub_collected:
                    entry_ = collected[kind_]
                    entry_[0] += multiplier * count
                    entry_[1] += multiplier * produced
                    entry_[2] += multiplier * wire
        return flops, tuple((k, v[0], v[1], v[2]) for k, v in sorted(collected.items()))

    flops, collected = total(entry)
    return HloSummary(
        matmul_flops=flops,
        collectives={k: Collective(count, produced, wire) for k, count, produced, wire in collected},
        loops=loops[0],
        unknown_trip_counts=unknown[0],
    )
