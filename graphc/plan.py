"""Execution plan: the scheduled steps of a graph, each value's live range and arena offset.

`compile_plan` binds symbolic dims (the batch size), numbers the steps, computes
liveness and places every non-persistent value in one byte arena. `verify_plan`
is the stage-boundary checker: values whose step ranges meet never share bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from . import shapes as S
from .ir import Graph
from .ops import OPS

ALIGN = 64
PERSISTENT_OPS = ("input", "param", "const", "state", "hyper")


@dataclass(frozen=True)
class Step:
    """One kernel call: `op` reads `inputs` and writes `outputs` (an update writes the param)."""
    index: int
    node: str
    op: str
    phase: str
    inputs: tuple
    outputs: tuple
    attrs: Mapping = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Buffer:
    """A planned value at arena bytes [offset, offset + bytes), live over [first_step, last_step]."""
    value: str
    shape: tuple
    dtype: str
    offset: int
    bytes: int
    first_step: int
    last_step: int
    in_place_of: Optional[str] = None


@dataclass(frozen=True)
class Plan:
    batch_size: Optional[int]
    dims: Mapping[str, int]
    steps: tuple
    buffers: Mapping[str, Buffer]
    persistent: Mapping[str, tuple]          # value -> (op, shape, dtype, const value)
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def phase_of(graph: Graph, forward: set, name: str) -> str:
    if OPS[graph[name].op].group == "update":
        return "update"
    return "forward" if name in forward else "backward"


def _steps(graph: Graph, forward: set) -> tuple:
    steps = []
    for n in graph.nodes.values():
        if n.op in PERSISTENT_OPS:
            continue
        mutated = [n.inputs[i] for i in OPS[n.op].mutates]
        outputs = tuple(mutated[:1]) if mutated else (n.name,)
        steps.append(Step(len(steps), n.name, n.op, phase_of(graph, forward, n.name),
                          n.inputs, outputs, n.attrs))
    return tuple(steps)


def liveness(steps, planned: set, keep: set) -> dict:
    """value -> (first_step, last_step): from its writer to its last reader, inclusive.

    Values in `keep` (the loss, outputs, reported gradients) live to the last step.
    """
    last = len(steps) - 1
    ranges = {}
    for s in steps:
        for v in s.outputs:
            if v in planned:
                ranges[v] = [s.index, s.index]
        for v in s.inputs:
            if v in ranges:
                ranges[v][1] = s.index
    for v in keep:
        if v in ranges:
            ranges[v][1] = last
    return {v: tuple(r) for v, r in ranges.items()}


def lower_bound(buffers) -> int:
    """The liveness lower bound: the most bytes live at any one step."""
    events = {}
    for b in buffers:
        events[b.first_step] = events.get(b.first_step, 0) + b.bytes
        events[b.last_step + 1] = events.get(b.last_step + 1, 0) - b.bytes
    peak = live = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


def compile_plan(graph: Graph, dims: Mapping[str, int], keep=(), forward=None) -> Plan:
    """Bind dims, number the steps, plan one buffer per value (reuse: see the planner issue)."""
    forward = set(graph.nodes) if forward is None else set(forward)
    steps = _steps(graph, forward)
    persistent = {n.name: (n.op, S.bind(n.shape, dims), n.dtype, n.attrs.get("value"))
                  for n in graph.nodes.values() if n.op in PERSISTENT_OPS}
    planned = {s.node for s in steps if s.outputs == (s.node,)}
    ranges = liveness(steps, planned, set(keep))
    buffers, offset = {}, 0
    for s in steps:
        if s.node not in planned:
            continue
        n = graph[s.node]
        shape = S.bind(n.shape, dims)
        nbytes = aligned(S.size(shape) * np.dtype(n.dtype).itemsize)
        first, last = ranges[s.node]
        buffers[s.node] = Buffer(s.node, shape, n.dtype, offset, nbytes, first, last)
        offset += nbytes
    naive = sum(b.bytes for b in buffers.values())
    return Plan(dims.get("batch"), dict(dims), steps, buffers, persistent, offset, naive,
                lower_bound(buffers.values()))


def verify_plan(plan: Plan) -> None:
    """Prove that no two values whose step ranges meet share arena bytes (in-place pairs aside)."""
    bufs = sorted(plan.buffers.values(), key=lambda b: b.offset)
    for i, a in enumerate(bufs):
        assert a.offset % ALIGN == 0 and a.offset + a.bytes <= plan.arena_bytes, a
        for b in bufs[i + 1:]:
            if b.offset >= a.offset + a.bytes:
                break
            meet = a.first_step <= b.last_step and b.first_step <= a.last_step
            pair = a.in_place_of == b.value or b.in_place_of == a.value
            assert not meet or pair, f"{a.value} and {b.value} overlap while both live"
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes or not plan.buffers


def plan_json(plan: Plan) -> dict:
    """The stable JSON shape of contract §2."""
    return {
        "batch_size": plan.batch_size,
        "arena_bytes": plan.arena_bytes,
        "naive_bytes": plan.naive_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "steps": [{"index": s.index, "op": s.op, "phase": s.phase, "inputs": list(s.inputs),
                   "outputs": list(s.outputs)} for s in plan.steps],
        "buffers": [{"value": b.value, "offset": b.offset, "bytes": b.bytes,
                     "first_step": b.first_step, "last_step": b.last_step,
                     "in_place_of": b.in_place_of} for b in plan.buffers.values()],
    }


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3f} MiB"


def plan_table(plan: Plan) -> str:
    """The human-readable plan: one row per step, then the memory summary."""
    head = ("step", "phase", "op", "output", "shape", "bytes", "offset", "live", "in-place")
    rows = [head]
    for s in plan.steps:
        b = plan.buffers.get(s.outputs[0])
        if b is None:
            shape = plan.persistent[s.outputs[0]][1]
            rows.append((str(s.index), s.phase, s.op, s.outputs[0], S.fmt(shape), "-",
                         "(persistent)", "-", "-"))
            continue
        rows.append((str(s.index), s.phase, s.op, b.value, S.fmt(b.shape), str(b.bytes),
                     str(b.offset), f"{b.first_step}-{b.last_step}", b.in_place_of or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lb, arena, naive = plan.lower_bound_bytes, plan.arena_bytes, plan.naive_bytes
    ratio = arena / lb if lb else 1.0
    saved = naive / arena if arena else 1.0
    lines.append(f"naive {mib(naive)} · lower bound {mib(lb)} · arena {mib(arena)} "
                 f"({ratio:.2f}× bound, {saved:.2f}× saved)")
    return "\n".join(lines)
