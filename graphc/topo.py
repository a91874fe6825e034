"""Orders over names, not graphs: a deterministic topological order (Kahn's algorithm
over a heap) and reachability, each one linear sweep. The IR's schedule, the autodiff's
paths and the planner's orders are built on them.
"""
from __future__ import annotations

import heapq
from typing import Iterable, Mapping, Optional


def topological_order(preds: Mapping[str, Iterable[str]]) -> Optional[list]:
    """The names of `preds` (name -> the names it follows) in topological order, or None
    when they hold a cycle. Among ready names the earliest in `preds` goes first, as in
    `nx.lexicographical_topological_sort` keyed by position. Kahn's algorithm over a heap,
    O((nodes + edges) log nodes); names outside `preds` are ignored."""
    names = list(preds)
    rank = {name: i for i, name in enumerate(names)}
    later = {name: [] for name in names}
    waiting = dict.fromkeys(names, 0)
    for name, before in preds.items():
        for p in set(before):
            if p in rank:
                later[p].append(name)
                waiting[name] += 1
    ready = [rank[name] for name, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for s in later[name]:
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, rank[s])
    return order if len(order) == len(names) else None


def reach(edges: Mapping[str, Iterable[str]], roots: Iterable[str]) -> set:
    """The roots and every name reachable from them along `edges` (name -> next names),
    in one iterative sweep: O(nodes + edges), no recursion."""
    seen = set(roots)
    stack = list(seen)
    while stack:
        for name in edges.get(stack.pop(), ()):
            if name not in seen:
                seen.add(name)
                stack.append(name)
    return seen
