"""Memory planning algorithms over plain numbers: liveness, in-place merging, offsets, order.

Pure functions, no graph objects: a value is a name with a byte size and a
step range [first, last]; plan.py turns a Graph into these and back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import networkx as nx


@dataclass(frozen=True)
class Block:
    """A piece of arena storage: one value, or an in-place chain sharing the same bytes, or
    (`side_by_side`) values laid one after another, in order, with no gap."""
    values: tuple
    bytes: int
    first: int
    last: int
    side_by_side: bool = False

    def offsets(self, offset: int, sizes: Mapping[str, int]) -> dict:
        """value -> its offset, the block placed at `offset`."""
        out, at = {}, offset
        for v in self.values:
            out[v] = at
            at += sizes[v] if self.side_by_side else 0
        return out


def peak_bytes(blocks: Iterable[Block]) -> int:
    """The liveness lower bound: the most bytes live at any one step."""
    return sweep_peak((b.first, b.last, b.bytes) for b in blocks)


def sweep_peak(intervals) -> int:
    """max over steps of the bytes of the (first, last, bytes) intervals covering it."""
    events: dict = {}
    for first, last, nbytes in intervals:
        events[first] = events.get(first, 0) + nbytes
        events[last + 1] = events.get(last + 1, 0) - nbytes
    peak = live = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


def merge_in_place(ranges: Mapping[str, tuple], sizes: Mapping[str, int],
                   in_place: Mapping[str, str]) -> list:
    """Blocks: each in-place chain out -> in becomes one block spanning all its values."""
    root = {}

    def find(v):
        while v in in_place:
            v = in_place[v]
        return v
    for v in ranges:
        root.setdefault(find(v), []).append(v)
    out = []
    for members in root.values():
        members.sort(key=lambda v: ranges[v][0])
        out.append(Block(tuple(members), max(sizes[v] for v in members),
                         min(ranges[v][0] for v in members),
                         max(ranges[v][1] for v in members)))
    return out


def side_by_side(blocks: list, values: tuple, sizes: Mapping[str, int]) -> list:
    """`blocks` with those of `values` (single values, none in an in-place chain) made one
    block laying them side by side in order, live from the first one's write to the last
    read of any: one contiguous span (data-parallel training reduces it in one call)."""
    if not values:
        return blocks
    group = [b for b in blocks if b.values[0] in values]
    joined = Block(tuple(values), sum(sizes[v] for v in values),
                   min(b.first for b in group), max(b.last for b in group), True)
    return [b for b in blocks if b.values[0] not in values] + [joined]


def _place(blocks: list) -> tuple:
    """Best-fit offsets in the given order: the smallest gap among time-overlapping blocks."""
    placed, offsets, top = [], {}, 0
    for blk in blocks:
        overlap = sorted(((offsets[p.values], p) for p in placed
                          if p.first <= blk.last and blk.first <= p.last), key=lambda t: t[0])
        best, best_gap, end = None, None, 0
        for off, p in overlap:
            gap = off - end
            if gap >= blk.bytes and (best_gap is None or gap < best_gap):
                best, best_gap = end, gap
            end = max(end, off + p.bytes)
        offsets[blk.values] = end if best is None else best
        placed.append(blk)
        top = max(top, offsets[blk.values] + blk.bytes)
    return top, offsets


ORDERINGS = {
    "size": lambda b: (-b.bytes, b.first),
    "duration": lambda b: (-(b.last - b.first), -b.bytes, b.first),
    "area": lambda b: (-b.bytes * (b.last - b.first + 1), b.first),
}


def assign_offsets(blocks: list) -> tuple:
    """(arena bytes, {block values: offset}): the best of greedy-by-size and two other orders."""
    best = None
    for key in ORDERINGS.values():
        top, offsets = _place(sorted(blocks, key=key))
        if best is None or top < best[0]:
            best = (top, offsets)
    return best or (0, {})


def sequential_offsets(blocks: list) -> tuple:
    """No reuse: every block at its own offset, in order (the `--no-reuse` plan)."""
    offsets, top = {}, 0
    for blk in blocks:
        offsets[blk.values] = top
        top += blk.bytes
    return top, offsets


def memory_order(g: nx.DiGraph, inputs: Mapping[str, tuple], sizes: Mapping[str, int],
                 pinned: set, rank: Mapping) -> list:
    """A topological order that greedily lowers the live bytes.

    Among ready nodes, run first the one whose step frees the most bytes net of what it
    allocates (an update frees its gradient; an add frees two partial sums); ties keep
    the original order `rank`. `pinned` values (kept to the end) are never freed.
    `g` has data and ordering edges; `inputs` the data inputs alone; `sizes` the bytes
    of planned values.
    """
    indeg = {n: d for n, d in g.in_degree()}
    data_inputs = {n: [p for p in set(inputs.get(n, ())) if p in sizes] for n in g}
    readers = {n: 0 for n in g}
    for n in g:
        for p in data_inputs[n]:
            readers[p] += 1
    ready = {n for n, d in indeg.items() if d == 0}
    order = []
    while ready:
        def gain(n):
            freed = sum(sizes[p] for p in data_inputs[n]
                        if readers[p] == 1 and p not in pinned)
            return (sizes.get(n, 0) - freed, rank[n])
        n = min(ready, key=gain)
        ready.remove(n)
        order.append(n)
        for p in data_inputs[n]:
            readers[p] -= 1
        for s in g.successors(n):
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.add(s)
    return order
