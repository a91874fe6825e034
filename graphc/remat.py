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
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

from . import shapes as S
from .errors import Mark, SpecError, did_you_mean, short
from .ir import Graph, Node, toposort, verify_graph
from .limits import fmt_bytes, fmt_bytes_exact, parse_bytes
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
    mark: Optional[Mark] = field(default=None, compare=False)   # train.memory's line

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
        raise SpecError(f"{what} is {short(text)}, expected a size such as 64MiB or 1.5GiB",
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
        raise SpecError(f"train.memory must be one setting, got {short(raw)}", mark=mark,
                        hint=example)
    (key, value), = raw.items()
    where = getattr(raw, "mark_of", lambda k: mark)(key)
    if key == "budget":
        return MemoryPolicy("budget", budget=parse_size(value, "train.memory.budget", where),
                            mark=where)
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
        raise SpecError(f"train.memory.{key} is {short(value)}", mark=where, hint=example)
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


def rematerialize(graph: Graph, forward, kept, saved=None) -> tuple:
    """(graph with recompute nodes, {value: its clone}): every saved value outside `kept`
    that may be recomputed, with the forward values its clone needs, is cloned; backward
    readers read the clone. Each clone is ordered after the loss and the backward inputs
    of the first step that needs it (so it runs in the backward pass, not beside its
    original) and before any step that overwrites a leaf it reads. `saved`: the graph's
    saved values where the caller has them."""
    forward = set(forward)
    saved = saved_values(graph, forward) if saved is None else saved

    def stays(u):
        return (u not in forward or graph[u].op in PERSISTENT_OPS or u in kept
                or not recomputable(graph[u]))
    need, stack = set(), [v for v in saved if not stays(v)]
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


class BudgetError(SpecError):
    """A memory budget below every plan the search finds; `smallest` is the least arena it
    reached, a budget that succeeds."""

    def __init__(self, budget: int, smallest: int, mark: Optional[Mark] = None):
        self.smallest = smallest
        super().__init__(f"memory budget {fmt_bytes_exact(budget)} is below every plan graphc "
                         f"finds: the smallest needs {fmt_bytes_exact(smallest)}",
                         mark=mark,
                         hint=f"give a budget of at least {smallest} bytes, or a smaller batch")


def smallest_arena(graph: Graph, dims: Mapping[str, int], keep=(), forward=None,
                   reuse: bool = True, together=()) -> int:
    """The least arena of the budget search's plans: the smallest budget that succeeds."""
    try:
        r = remat_plan(graph, dims, keep, forward, reuse, MemoryPolicy("budget", budget=1),
                       together)
    except BudgetError as err:
        return err.smallest
    return r.plan.arena_bytes


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

    def value_flops(self, value: str) -> int:
        """Recomputing `value`: its clone plus the clones of unsaved values only it leads
        back to (for h = relu(x @ W + b), the matmul and the add as well as the relu)."""
        saved, total, stack, seen = set(self.saved), 0, [self.clones[value]], set()
        while stack:
            c = stack.pop()
            if c not in seen:
                seen.add(c)
                total += self.flops[c]
                stack.extend(i for i in self.graph[c].inputs if i.startswith(PREFIX)
                             and i[len(PREFIX):] not in saved)
        return total

    @property
    def kept(self) -> tuple:
        """The saved values the backward pass reads as the forward pass left them."""
        return tuple(v for v in self.saved if v not in self.clones)


def candidates(graph: Graph, forward, keep, saved=None) -> list:
    """The saved values (`saved`, else the graph's) a policy may drop: recomputable, and
    not kept for the caller."""
    saved = saved_values(graph, forward) if saved is None else saved
    return [v for v in saved if v not in keep and recomputable(graph[v])]


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
               reuse: bool = True, policy: MemoryPolicy = NONE, together=()) -> Remat:
    """The verified plan of `graph` under `policy` (compile_plan's arguments otherwise).
    `none` returns compile_plan's very plan; a budget is proved by verify_plan."""
    forward = set(graph.nodes) if forward is None else set(forward)
    saved = saved_values(graph, forward)
    cands = candidates(graph, forward, set(keep), saved)
    if policy.kind == "budget":
        return _fit_budget(graph, dims, keep, forward, reuse, policy, cands, together)
    return _verified(plan_keeping(graph, dims, keep, forward, reuse, policy,
                                  kept_by(policy, cands), together, saved))


def plan_keeping(graph, dims, keep, forward, reuse, policy, kept, together=(),
                 saved=None) -> Remat:
    """The plan that keeps `kept` (plus what is never recomputed), unverified; `saved`:
    the graph's saved values where the caller has them."""
    saved = saved_values(graph, forward) if saved is None else saved
    new, clones = rematerialize(graph, forward, set(kept) | set(keep), saved)
    plan = compile_plan(new, dims, keep, forward, reuse, together)
    flops = {c: node_flops(new, c, dims) for c in clones.values()}
    return Remat(policy, new, plan, tuple(saved), clones, flops)


def _verified(r: Remat) -> Remat:
    """verify_plan over the plan, which then also proves the arena fits a budget."""
    if r.policy.kind == "budget":
        r = replace(r, plan=replace(r.plan, budget_bytes=r.policy.budget))
    verify_plan(r.plan)
    return r


SLOPES = (0, 0.5, 1)    # segment lengths shrinking by this much toward the loss
KEEP_BACK = 24          # at most this many plans try keeping one more value back


def _fit_budget(graph, dims, keep, forward, reuse, policy, cands, together) -> Remat:
    """The least recomputation (flops) among the plans of one search that fit the budget:
    keep everything if that fits; else, for each slope of SLOPES, the shortest first segment
    whose plan fits (longer first segments keep fewer values, so recompute more), stopping
    once the arena grows again; then keep values back while the plan fits (method and its
    distance from optimal: docs/design.md)."""
    best = smallest = plan_keeping(graph, dims, keep, forward, reuse, policy, cands, together)
    if best.plan.arena_bytes > policy.budget:
        best = None
        for slope in SLOPES:
            previous = None
            for first in range(2, len(cands) + 2):
                kept = [cands[i] for i in segment_ends(len(cands), first, slope)]
                r = plan_keeping(graph, dims, keep, forward, reuse, policy, kept, together)
                smallest = min(smallest, r, key=lambda x: x.plan.arena_bytes)
                if r.plan.arena_bytes <= policy.budget:
                    if best is None or r.recompute_flops < best.recompute_flops:
                        best = r
                    break
                if previous is not None and r.plan.arena_bytes > previous:
                    break
                previous = r.plan.arena_bytes
    if best is None:
        raise BudgetError(policy.budget, smallest.plan.arena_bytes, policy.mark)
    return _verified(_keep_back(graph, dims, keep, forward, reuse, policy, best, together))


def _keep_back(graph, dims, keep, forward, reuse, policy, best: Remat, together) -> Remat:
    """Spend what the budget leaves: keep dropped values back, one plan each, the dearest
    to recompute per byte first (later values first among equals), while the plan fits."""
    dropped = [v for v in reversed(best.saved) if v in best.clones]
    dropped.sort(key=lambda v: -best.value_flops(v) / best.plan.buffers[v].bytes)
    for v in dropped[:KEEP_BACK]:
        r = plan_keeping(graph, dims, keep, forward, reuse, policy, set(best.kept) | {v},
                         together)
        if r.plan.arena_bytes <= policy.budget and r.recompute_flops < best.recompute_flops:
            best = r
    return best

