"""Rematerialization: recompute forward values in the backward pass instead of keeping them.

The *saved values* of a step graph are the forward values a backward or update step
reads; without this pass each lives from the forward pass to its last backward reader.
A `MemoryPolicy` picks the saved values to keep. Every other one gets a recompute
node: a clone of its forward node (role "recompute", the original's origin and spec
line, named `re:<value>`) that its backward readers read instead. A clone reads kept
values, leaves and other clones, so a run of dropped values is recomputed from the
nearest kept one, once, when the backward pass first needs any of it (Chen et al.
2016's segments). The planner, its verifier and the executor see clones as any other
node. Nothing merges equal subexpressions after this pass (graphc has no CSE): such a
pass would fold every clone back into its original and undo the plan.

What may be recomputed is a fact of the op record: an op whose output is a pure
function of its inputs and attrs (`recomputable`, default True) that writes nothing in
place (`mutates` empty). A clone reads the same values as its original, so it computes
the same bits: each leaf it reads is ordered before any step that overwrites it (an
optimizer update, a state update), exactly as the original was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Optional

from . import shapes as S
from .errors import SpecError, did_you_mean
from .ir import Graph, Node, toposort, verify_graph
from .limits import fmt_bytes, parse_bytes
from .ops import OPS
from .plan import PERSISTENT_OPS, Plan, compile_plan, verify_plan

ROLE = "recompute"
PREFIX = "re:"
POLICIES = ("none", "sqrt")          # `policy:` values; `every`, `keep`, `budget` take one


@dataclass(frozen=True)
class MemoryPolicy:
    """Which saved values the plan keeps: all (`none`), every k-th in schedule order
    (`every`), every ⌈√n⌉-th (`sqrt`), the named ones (`keep`), or the cheapest set to
    recompute whose plan fits `budget` bytes (`budget`)."""
    kind: str = "none"
    every: int = 1
    keep: tuple = ()
    budget: Optional[int] = None

    def __str__(self) -> str:
        return {"none": "none", "sqrt": "sqrt", "every": f"every {self.every}",
                "keep": f"keep {', '.join(self.keep)}",
                "budget": f"budget {fmt_bytes(self.budget or 0)}"}[self.kind]


NONE = MemoryPolicy()


def parse_size(text, what: str, mark=None) -> int:
    """'64MiB', '512M', '1.5GiB', 1048576 -> bytes; a SpecError naming `what` otherwise."""
    try:
        return parse_bytes(text)
    except ValueError:
        raise SpecError(f"{what} is {text!r}, expected a size such as 64MiB or 1.5GiB",
                        mark=mark) from None


def parse_memory(raw, nodes, mark=None, budget: Optional[str] = None) -> MemoryPolicy:
    """`train.memory`: {budget: 64MiB} | {every: 4} | {policy: none|sqrt} | {keep: [h1, h3]},
    the kept names among `nodes`; `budget` (the --memory-budget flag) replaces it."""
    if budget is not None:
        return MemoryPolicy("budget", budget=parse_size(budget, "--memory-budget"))
    if raw is None:
        return NONE
    example = "e.g. memory: {budget: 64MiB}, {every: 4}, {policy: sqrt} or {keep: [h1]}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SpecError(f"train.memory must be one setting, got {raw!r}", mark=mark,
                        hint=example)
    (key, value), = raw.items()
    where = getattr(raw, "mark_of", lambda k: mark)(key)
    if key == "budget":
        return MemoryPolicy("budget", budget=parse_size(value, "train.memory.budget", where))
    if key == "every" and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return MemoryPolicy("every", every=value)
    if key == "policy" and value in POLICIES:
        return MemoryPolicy(value)
    if key == "keep" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        for name in value:
            if name not in nodes:
                raise SpecError(f"train.memory.keep names '{name}', which is no node of the "
                                "spec", mark=where, hint=did_you_mean(name, nodes))
        return MemoryPolicy("keep", keep=tuple(value))
    if key in ("budget", "every", "policy", "keep"):
        raise SpecError(f"train.memory.{key} is {value!r}", mark=where, hint=example)
    raise SpecError(f"train.memory has no setting '{key}'", mark=where,
                    hint=did_you_mean(str(key), ("budget", "every", "policy", "keep"))
                    or example)


def recomputable(node: Node) -> bool:
    """A pure forward (or saved) value: its record allows it and it writes nothing in place."""
    op = OPS[node.op]
    return op.group in ("forward", "saved") and not op.mutates and op.recomputable


def saved_values(graph: Graph, forward) -> list:
    """The computed forward values that a backward or update step reads, in schedule order."""
    read = {i for n in graph.nodes.values() if n.name not in forward for i in n.inputs}
    return [v for v, n in graph.nodes.items()
            if v in read and v in forward and n.op not in PERSISTENT_OPS]


def rematerialize(graph: Graph, forward, kept) -> tuple:
    """(graph with recompute nodes, {value: its clone}): every saved value outside `kept`
    that may be recomputed, with the forward values its clone needs, is cloned; backward
    readers read the clone. Each clone is ordered after the loss and the backward inputs
    of the first step that needs it (so it runs in the backward pass, not beside its
    original) and before any step that overwrites a leaf it reads."""
    forward = set(forward)

    def stays(u):
        return (u not in forward or graph[u].op in PERSISTENT_OPS or u in kept
                or not recomputable(graph[u]))
    need, stack = set(), [v for v in saved_values(graph, forward) if not stays(v)]
    while stack:
        v = stack.pop()
        if v not in need:
            need.add(v)
            stack.extend(u for u in graph[v].inputs if not stays(u))
    if not need:
        return graph, {}
    clones = {v: PREFIX + v for v in need}
    nodes = [n if n.name in forward else replace(n, inputs=tuple(clones.get(i, i)
                                                                 for i in n.inputs))
             for n in graph.nodes.values()]
    first = _first_readers(nodes, forward, graph, clones)
    by_first: dict = {}
    for v in graph.nodes:                      # forward order: a clone after its inputs
        if v in need:
            by_first.setdefault(first[v], []).append(v)
    out, after = {}, list(graph.after)
    for pos, n in enumerate(nodes):
        for v in by_first.get(pos, ()):
            c = graph[v]
            out[clones[v]] = Node(clones[v], c.op, tuple(clones.get(i, i) for i in c.inputs),
                                  c.attrs, c.shape, c.dtype, c.mark, c.origin, ROLE)
            after += [(i, clones[v]) for i in n.inputs if i not in forward
                      and not i.startswith(PREFIX) and graph[i].op not in PERSISTENT_OPS]
            after.append((graph.loss, clones[v]))     # never beside its original
        out[n.name] = n
    after += _before_overwrites(out, clones)
    result = toposort(Graph(out, graph.loss, graph.outputs, graph.dtype, tuple(after)))
    verify_graph(result)
    return result, clones


def _first_readers(nodes: list, forward: set, graph: Graph, clones: Mapping) -> dict:
    """value -> schedule position of the first backward step reading its clone, or reading
    a clone that reads it."""
    first = {v: math.inf for v in clones}
    names = {c: v for v, c in clones.items()}
    for pos, n in enumerate(nodes):
        if n.name not in forward:
            for i in n.inputs:
                if i in names:
                    first[names[i]] = min(first[names[i]], pos)
    for v in reversed(list(graph.nodes)):      # consumers before their inputs
        if v in clones:
            for u in graph[v].inputs:
                if u in clones:
                    first[u] = min(first[u], first[v])
    return first


def _before_overwrites(nodes: Mapping, clones: Mapping) -> list:
    """(clone, writer) for every step that overwrites a leaf a clone reads (an update)."""
    readers: dict = {}
    for c in clones.values():
        for i in nodes[c].inputs:
            readers.setdefault(i, []).append(c)
    edges = []
    for n in nodes.values():
        for pos in OPS[n.op].mutates:
            edges += [(c, n.name) for c in readers.get(n.inputs[pos], ())]
    return edges


def node_flops(graph: Graph, name: str, dims: Mapping[str, int]) -> int:
    """The arithmetic of one step: its record's `flops`, else one per output element."""
    n = graph[name]
    count = OPS[n.op].flops
    if count is None:
        return S.size(S.bind(n.shape, dims))
    return count([S.bind(graph[i].shape, dims) for i in n.inputs], n.attrs)


@dataclass(frozen=True)
class Remat:
    """A policy's verified plan: the graph with its recompute nodes, which saved values it
    keeps, and what the clones cost (flops per clone)."""
    policy: MemoryPolicy
    graph: Graph
    plan: Plan
    saved: tuple                  # the saved values without recomputation, schedule order
    clones: Mapping[str, str]     # value -> its recompute node
    flops: Mapping[str, int]      # recompute node -> flops

    @property
    def recompute_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def kept(self) -> tuple:
        """The saved values the backward pass reads as the forward pass left them."""
        return tuple(v for v in self.saved if v not in self.clones)


def candidates(graph: Graph, forward, keep) -> list:
    """The saved values a policy may drop: recomputable, and not kept for the caller."""
    return [v for v in saved_values(graph, forward) if v not in keep and recomputable(graph[v])]


def segment_ends(n: int, first: int, slope: float) -> set:
    """Indices kept when n values are cut into segments of first, first - slope, ... (at
    least 1) values, each ending in the one kept: slope 0 keeps every first-th."""
    ends, i, j = set(), -1, 0
    while True:
        i += max(1, first - int(j * slope))
        if i >= n:
            return ends
        ends.add(i)
        j += 1


def kept_by(policy: MemoryPolicy, cands: list) -> set:
    """The candidates `policy` keeps (not for `budget`, which searches)."""
    if policy.kind == "none":
        return set(cands)
    if policy.kind == "keep":
        return set(policy.keep)
    k = policy.every if policy.kind == "every" else max(1, math.ceil(math.sqrt(len(cands))))
    return {cands[i] for i in segment_ends(len(cands), k, 0)}


def remat_plan(graph: Graph, dims: Mapping[str, int], keep=(), forward=None,
               reuse: bool = True, policy: MemoryPolicy = NONE) -> Remat:
    """The verified plan of `graph` under `policy` (compile_plan's arguments otherwise).
    `none` returns compile_plan's very plan; a budget is proved by verify_plan."""
    forward = set(graph.nodes) if forward is None else set(forward)
    cands = candidates(graph, forward, set(keep))
    if policy.kind == "budget":
        return _fit_budget(graph, dims, keep, forward, reuse, policy, cands)
    return _verified(plan_keeping(graph, dims, keep, forward, reuse, policy,
                               kept_by(policy, cands)))


def plan_keeping(graph, dims, keep, forward, reuse, policy, kept) -> Remat:
    """The plan that keeps `kept` (plus what is never recomputed), unverified."""
    new, clones = rematerialize(graph, forward, set(kept) | set(keep))
    plan = compile_plan(new, dims, keep, forward, reuse)
    flops = {c: node_flops(new, c, dims) for c in clones.values()}
    return Remat(policy, new, plan, tuple(saved_values(graph, forward)), clones, flops)


def _verified(r: Remat) -> Remat:
    """verify_plan over the plan, which then also proves the arena fits a budget."""
    if r.policy.kind == "budget":
        r = replace(r, plan=replace(r.plan, budget_bytes=r.policy.budget))
    verify_plan(r.plan)
    return r


SLOPES = (0, 0.5, 1)    # segment lengths shrinking by this much toward the loss


def _fit_budget(graph, dims, keep, forward, reuse, policy, cands) -> Remat:
    """The least recomputation (flops) among the plans of one search that fit the budget:
    keep everything if that fits; else, for each slope of SLOPES, the shortest first segment
    whose plan fits (longer first segments keep fewer values, so recompute more), stopping
    once the arena grows again (method and its distance from optimal: docs/design.md)."""
    best = smallest = plan_keeping(graph, dims, keep, forward, reuse, policy, cands)
    if best.plan.arena_bytes > policy.budget:
        best = None
        for slope in SLOPES:
            previous = None
            for first in range(2, len(cands) + 2):
                kept = [cands[i] for i in segment_ends(len(cands), first, slope)]
                r = plan_keeping(graph, dims, keep, forward, reuse, policy, kept)
                smallest = min(smallest, r, key=lambda x: x.plan.arena_bytes)
                if r.plan.arena_bytes <= policy.budget:
                    if best is None or r.recompute_flops < best.recompute_flops:
                        best = r
                    break
                if previous is not None and r.plan.arena_bytes > previous:
                    break
                previous = r.plan.arena_bytes
    if best is None:
        raise SpecError(f"memory budget {fmt_bytes(policy.budget)} ({policy.budget} bytes) is "
                        f"below every plan graphc finds: the smallest needs "
                        f"{fmt_bytes(smallest.plan.arena_bytes)} "
                        f"({smallest.plan.arena_bytes} bytes)",
                        hint=f"give a budget of at least {smallest.plan.arena_bytes} bytes, or "
                             f"a smaller batch")
    return _verified(best)


# --- reports: `graphc plan` (per saved value), `plan --saved`, `plan --json` --------------

def chain_flops(r: Remat, value: str) -> int:
    """Recomputing `value`: its clone plus the clones of unsaved values only it leads back to
    (for h = relu(x @ W + b), the matmul and the add as well as the relu)."""
    saved, total, stack, seen = set(r.saved), 0, [r.clones[value]], set()
    while stack:
        c = stack.pop()
        if c not in seen:
            seen.add(c)
            total += r.flops[c]
            stack.extend(i for i in r.graph[c].inputs if i.startswith(PREFIX)
                         and i[len(PREFIX):] not in saved)
    return total


def forward_flops(r: Remat) -> int:
    """The forward pass's arithmetic: what the recomputation is measured against."""
    return sum(node_flops(r.graph, s.node, r.plan.dims) for s in r.plan.steps
               if s.phase == "forward")


def saved_rows(r: Remat) -> list:
    """One row per saved value: producer, bytes, kept or recomputed, recompute flops."""
    rows = []
    for v in r.saved:
        n, b = r.graph[v], r.plan.buffers[v]
        where = f" line {n.mark.line}" if n.mark else ""
        rows.append({"value": v, "producer": f"{n.op} ({n.origin or v}{where})",
                     "bytes": b.bytes, "kept": v not in r.clones,
                     "recompute_flops": chain_flops(r, v) if v in r.clones else 0})
    return rows


def memory_json(r: Remat) -> dict:
    """`plan --json`'s "memory" object: the policy, the saved values and the arithmetic."""
    return {"policy": str(r.policy), "budget_bytes": r.policy.budget,
            "recompute_flops": r.recompute_flops, "forward_flops": forward_flops(r),
            "saved": saved_rows(r)}


def saved_table(r: Remat) -> str:
    """The saved values as a table, then what is kept and what recomputing costs."""
    rows = saved_rows(r)
    head = ("saved value", "producer", "bytes", "backward reads", "recompute flops")
    lines = [head] + [(x["value"], x["producer"], str(x["bytes"]),
                       "kept" if x["kept"] else f"recomputed ({PREFIX}{x['value']})",
                       str(x["recompute_flops"]) if not x["kept"] else "-") for x in rows]
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in lines]
    kept = [x for x in rows if x["kept"]]   # rows, for their bytes
    fwd = forward_flops(r)
    share = f", {r.recompute_flops / fwd:.0%} of the forward pass" if fwd else ""
    text.append(f"memory policy {r.policy}: the backward pass keeps {len(kept)} of "
                f"{len(rows)} saved values ({fmt_bytes(sum(x['bytes'] for x in kept))}) and "
                f"recomputes {len(rows) - len(kept)} ({len(r.clones)} recompute steps, "
                f"{r.recompute_flops} flops{share})")
    return "\n".join(text)
