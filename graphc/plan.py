"""Execution plan: the scheduled steps of a graph, each value's live range and arena offset.

`compile_plan` binds symbolic dims (the batch size), picks a memory-friendly
order, computes liveness, writes elementwise outputs in place of dying inputs
and places every non-persistent value in one byte arena (arena.py does the
arithmetic). `verify_plan` is the stage-boundary checker: values whose step
ranges meet never share bytes unless one is written in place of the other.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Mapping, Optional

import numpy as np

from . import arena as A
from . import shapes as S
from .errors import Mark, SpecError
from .limits import fmt_bytes, paused_gc
from .ir import Graph, broken, invariant
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
    origin: Optional[str] = field(default=None, compare=False)   # the spec node
    mark: Optional[Mark] = field(default=None, compare=False)    # its place in the spec


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
    plain_lower_bound_bytes: int = 0         # the bound of the plain topological order
    reuse: bool = True
    budget_bytes: Optional[int] = None       # a memory budget the arena must fit (remat.py)
    together: tuple = ()                     # values placed side by side, in this order


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _phase(op: str, name: str, forward: set) -> str:
    return "update" if OPS[op].group == "update" else (
        "forward" if name in forward else "backward")


def _steps(graph: Graph, order, forward: set) -> tuple:
    steps, nodes = [], graph.nodes
    for name in order:
        n = nodes[name]
        if n.op not in PERSISTENT_OPS:
            steps.append(Step(len(steps), name, n.op, _phase(n.op, name, forward),
                              n.inputs, _outputs(n), n.attrs, n.origin, n.mark))
    return tuple(steps)


def _outputs(n) -> tuple:
    """What a node's step writes: its own value, or the input it updates in place."""
    mutates = OPS[n.op].mutates
    return (n.inputs[mutates[0]],) if mutates else (n.name,)


def _plain_liveness(graph: Graph, planned: set, keep: set) -> dict:
    """`liveness` of the plain schedule (the graph's own order), which only the lower
    bound reads: its steps' inputs and outputs, not the steps themselves."""
    return liveness([(n.inputs, _outputs(n)) for n in graph.nodes.values()
                     if n.op not in PERSISTENT_OPS], planned, keep)


def liveness(steps: list, planned: set, keep: set) -> dict:
    """value -> (first_step, last_step): from its writer to its last reader, inclusive.
    `steps`: each step's (inputs, outputs), in order.

    Values in `keep` (the loss, outputs, reported gradients) live to the last step.
    """
    ranges = {}
    for index, (inputs, outputs) in enumerate(steps):
        for v in outputs:
            if v in planned:
                ranges[v] = [index, index]
        for v in inputs:
            if v in ranges:
                ranges[v][1] = index
    for v in keep:
        if v in ranges:
            ranges[v][1] = len(steps) - 1
    return {v: tuple(r) for v, r in ranges.items()}


def in_place_pairs(steps, ranges: Mapping, layout: Mapping, keep: set) -> dict:
    """output -> input it overwrites: elementwise steps whose same-layout input dies there
    (values kept for the caller never die)."""
    pairs, taken = {}, set(keep)
    for s in steps:
        if not OPS[s.op].elementwise or s.node not in ranges:
            continue
        for i in dict.fromkeys(s.inputs):
            if i in ranges and i not in taken and ranges[i][1] == s.index \
                    and layout[i] == layout[s.node]:
                pairs[s.node] = i
                taken.add(i)
                break
    return pairs


def _layouts(graph: Graph, names, dims) -> dict:
    """value -> (bound shape, dtype, aligned bytes): worked out once per distinct shape and
    dtype, which most values share."""
    shared: dict = {}
    out = {}
    for v in names:
        n = graph.nodes[v]
        key = (n.shape, n.dtype)
        if key not in shared:
            shape = S.bind(n.shape, dims)
            shared[key] = (shape, n.dtype, aligned(S.size(shape) * np.dtype(n.dtype).itemsize))
        out[v] = shared[key]
    return out


def _order(graph: Graph, sizes: Mapping, keep: set, reuse: bool) -> list:
    names = list(graph.nodes)
    if not reuse:
        return names
    rank = {n: i for i, n in enumerate(names)}
    inputs = {n.name: n.inputs for n in graph.nodes.values()}
    return A.memory_order(graph.predecessors(), inputs, sizes, keep, rank)


def _check_bound(graph: Graph, dims: Mapping[str, int]) -> None:
    """Every symbolic dim needs a size before anything is laid out."""
    checked = set()                     # shapes already checked: most values share one
    for n in graph.nodes.values():
        if n.shape in checked:
            continue
        checked.add(n.shape)
        for d in sorted(S.symbols(n.shape) - set(dims)):
            bound = ", ".join(sorted(dims)) or "none"
            raise SpecError(f"dim '{d}' of shape {S.fmt(n.shape)} has no size here (sized "
                            f"dims: {bound})", mark=n.mark, node=n.origin or n.name,
                            hint=f"size it with --dim {d}=SIZE")


def batch_dims(graph: Graph) -> list:
    """The inputs' leading symbolic dims, in order: what a batch of data sizes (an input
    given a value has fixed sizes)."""
    return list(dict.fromkeys(n.shape[0] for n in graph.leaves("input")
                              if n.shape and isinstance(n.shape[0], str)))


@paused_gc
def compile_plan(graph: Graph, dims: Mapping[str, int], keep=(), forward=None,
                 reuse: bool = True, together=()) -> Plan:
    """Bind dims, order the steps for memory, plan liveness, in-place writes and offsets.
    The planned values of `together` are laid side by side in that order, one contiguous
    span (never written in place of another value, nor another in theirs)."""
    _check_bound(graph, dims)
    forward = set(graph.nodes) if forward is None else set(forward)
    keep = set(keep)
    computed = [n for n in graph.nodes.values()
                if n.op not in PERSISTENT_OPS and not OPS[n.op].mutates]
    layout = _layouts(graph, [n.name for n in computed], dims)
    sizes = {v: nbytes for v, (_, _, nbytes) in layout.items()}
    plain = _plain_liveness(graph, set(sizes), keep)
    plain_bound = A.sweep_peak((first, last, sizes[v]) for v, (first, last) in plain.items())
    steps = _steps(graph, _order(graph, sizes, keep, reuse), forward)
    ranges = liveness([(s.inputs, s.outputs) for s in steps], set(sizes), keep)
    together = tuple(v for v in dict.fromkeys(together) if v in sizes)
    pairs = in_place_pairs(steps, ranges, layout, keep) if reuse else {}
    pairs = {o: i for o, i in pairs.items() if o not in together and i not in together}
    blocks = A.merge_in_place(ranges, sizes, pairs)
    placed = A.side_by_side(blocks, together, sizes)
    top, offsets = (A.assign_offsets if reuse else A.sequential_offsets)(placed)
    buffers = {}
    for blk in placed:
        for v, offset in blk.offsets(offsets[blk.values], sizes).items():
            shape, dtype, _ = layout[v]
            buffers[v] = Buffer(v, shape, dtype, offset, sizes[v],
                                ranges[v][0], ranges[v][1], pairs.get(v))
    buffers = {s.node: buffers[s.node] for s in steps if s.node in buffers}
    persistent = {n.name: (n.op, S.bind(n.shape, dims), n.dtype, n.attrs.get("value"))
                  for n in graph.nodes.values() if n.op in PERSISTENT_OPS}
    lead = batch_dims(graph)
    return Plan(dims.get(lead[0]) if lead else None, dict(dims), steps, buffers, persistent, top,
                sum(sizes.values()), A.peak_bytes(blocks), plain_bound, reuse,
                together=together)


def verify_plan(plan: Plan) -> None:
    """Prove no two values whose step ranges meet share bytes (except in-place pairs, each
    an elementwise step over its own dying input), that every read happens while its
    value is live, and recompute the lower bound."""
    for a in plan.buffers.values():
        if a.offset % ALIGN or a.offset + a.bytes > plan.arena_bytes:
            broken(f"plan verifier: {a.value} at [{a.offset}, {a.offset + a.bytes}) is "
                   f"misaligned or outside the arena of {plan.arena_bytes} bytes")
    _check_disjoint(plan)
    for s in plan.steps:
        for v in s.inputs:
            if v in plan.buffers:
                b = plan.buffers[v]
                if not b.first_step < s.index <= b.last_step:
                    broken(f"plan verifier: step {s.index} ({s.node}) reads {v} outside its "
                           f"live range {b.first_step}-{b.last_step}")
    _check_in_place(plan)
    _check_together(plan)
    bound = _bound_with_pairs(plan)
    invariant(bound == plan.lower_bound_bytes, f"plan verifier: the lower bound recomputes "
                                               f"to {bound}, not {plan.lower_bound_bytes}")
    invariant(plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes,
              f"plan verifier: the arena ({plan.arena_bytes} bytes) is not between the "
              f"lower bound and the naive sum")
    invariant(plan.budget_bytes is None or plan.arena_bytes <= plan.budget_bytes,
              f"plan verifier: the arena ({plan.arena_bytes} bytes) exceeds the memory "
              f"budget of {plan.budget_bytes} bytes")


def _check_disjoint(plan: Plan) -> None:
    """No two buffers live at one step share a byte, unless one is written in place of the
    other at the step where the other dies. A sweep in step order keeps the live buffers
    sorted by offset; they are disjoint, so a new buffer need only be checked against its
    two neighbours: O(n log n), not every pair."""
    live: list = []                                  # sorted (offset, value, end)
    ending: list = []                                # heap of (last step, offset, value)
    for b in sorted(plan.buffers.values(), key=attrgetter("first_step", "offset")):
        while ending and ending[0][0] < b.first_step:
            _drop(live, heapq.heappop(ending)[1:])
        src = plan.buffers.get(b.in_place_of)
        if src is not None and src.last_step == b.first_step:
            _drop(live, (src.offset, src.value))     # the pair shares bytes at this one step
        if b.bytes == 0:
            continue
        start, end = b.offset, b.offset + b.bytes
        i = bisect.bisect_left(live, (start, b.value))
        for j in (i - 1, i):
            if 0 <= j < len(live) and live[j][0] < end and start < live[j][2]:
                broken(f"plan verifier: {live[j][1]} and {b.value} overlap while both live")
        live.insert(i, (start, b.value, end))
        heapq.heappush(ending, (b.last_step, start, b.value))


def _drop(live: list, key: tuple) -> None:
    """Remove the entry of `key` (offset, value) from the sorted list `live`, if it is
    there."""
    i = bisect.bisect_left(live, key)
    if i < len(live) and live[i][:2] == key:
        del live[i]


def _check_in_place(plan: Plan) -> None:
    """An in-place pair is an elementwise step writing over an input of the same layout
    that it reads last (only such kernels are written to tolerate the alias)."""
    for b in plan.buffers.values():
        if b.in_place_of is not None:
            s, src = plan.steps[b.first_step], plan.buffers[b.in_place_of]
            if not (OPS[s.op].elementwise and b.in_place_of in s.inputs):
                broken(f"plan verifier: {b.value} in place of {b.in_place_of}, but step "
                       f"{s.index} ({s.op}) is not an elementwise op reading it")
            if (src.shape, src.dtype, src.last_step) != (b.shape, b.dtype, s.index):
                broken(f"plan verifier: {b.value} in place of {b.in_place_of}, which has "
                       "another layout or lives on")


def _check_together(plan: Plan) -> None:
    """The values of `together` follow each other in the arena with no gap, in order."""
    bufs = [plan.buffers[v] for v in plan.together]
    for a, b in zip(bufs, bufs[1:]):
        invariant(b.offset == a.offset + a.bytes, f"plan verifier: {b.value} is not right "
                                                  f"after {a.value}, as `together` places it")


def _bound_with_pairs(plan: Plan) -> int:
    """Lower bound recomputed from the buffers: an in-place pair counts once at its join."""
    return A.sweep_peak((b.first_step + (1 if b.in_place_of else 0), b.last_step, b.bytes)
                        for b in plan.buffers.values())


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


def plan_summary(plan: Plan) -> str:
    """naive X · lower bound Y · arena Z (Z/Y ratio, X/Z saved), and the plain order's bound."""
    lb, arena, naive = plan.lower_bound_bytes, plan.arena_bytes, plan.naive_bytes
    ratio = arena / lb if lb else 1.0
    saved = naive / arena if arena else 1.0
    return (f"naive {fmt_bytes(naive)} · lower bound {fmt_bytes(lb)} · "
            f"arena {fmt_bytes(arena)} "
            f"({ratio:.2f}× bound, {saved:.2f}× saved); "
            f"plain schedule's bound {fmt_bytes(plan.plain_lower_bound_bytes)}")


def plan_table(plan: Plan) -> str:
    """The human-readable plan: one row per step, then the memory summary."""
    head = ("step", "phase", "op", "output", "shape", "bytes", "offset", "live", "in-place")
    rows = [head]
    buffers = [plan.buffers.get(s.outputs[0]) for s in plan.steps]
    shapes = S.fmt_all(plan.persistent[s.outputs[0]][1] if b is None else b.shape
                       for s, b in zip(plan.steps, buffers))
    for s, b, shape in zip(plan.steps, buffers, shapes):
        if b is None:
            rows.append((str(s.index), s.phase, s.op, s.outputs[0], shape, "-",
                         "(persistent)", "-", "-"))
            continue
        rows.append((str(s.index), s.phase, s.op, b.value, shape, str(b.bytes),
                     str(b.offset), f"{b.first_step}-{b.last_step}", b.in_place_of or "-"))
    return "\n".join(S.aligned(rows) + [plan_summary(plan)])
