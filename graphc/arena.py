"""Memory planning algorithms over plain numbers: liveness, in-place merging, offsets, order.

Pure functions, no graph objects: a value is a name with a byte size and a
step range [first, last]; plan.py turns a Graph into these and back.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable, Mapping


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
    """max over steps of the bytes of the (first, last, bytes) intervals covering it; steps
    are non-negative ints (an interval with last < first covers none)."""
    intervals = list(intervals)
    change = [0] * (max((last for _, last, _ in intervals), default=0) + 2)
    for first, last, nbytes in intervals:
        if first <= last:
            change[first] += nbytes             # bytes come live at first, go after last
            change[last + 1] -= nbytes
    return max(accumulate(change, initial=0))


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
        if len(members) == 1:            # most values: no chain to merge
            v = members[0]
            out.append(Block((v,), sizes[v], ranges[v][0], ranges[v][1]))
            continue
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


OFFLINE_BUDGET = 250_000       # blocks x most blocks live at once: ~0.1 s in the three orders


def assign_offsets(blocks: list) -> tuple:
    """(arena bytes, {block values: offset}): the best of greedy-by-size, two other orders
    and a sweep in time order; the first of them wins a tie.

    The three offline orders compare each block with every block live beside it, so they
    run only while blocks x peak live blocks is within OFFLINE_BUDGET (a few thousand
    steps); the sweep, O(n log n), always runs.
    """
    pairs = len(blocks) * sweep_peak((b.first, b.last, 1) for b in blocks)
    keys = ORDERINGS.values() if pairs <= OFFLINE_BUDGET else ()
    placed = [_place(sorted(blocks, key=key)) for key in keys] + [sweep_offsets(blocks)]
    return min(placed, key=lambda top_offsets: top_offsets[0])


def sweep_offsets(blocks: list) -> tuple:
    """Best-fit in time order, as an allocator would: free the blocks whose last step has
    passed, then place the next block in the smallest free hole that holds it (the lowest
    such), else at the top of the live blocks. O(n log n) for n blocks."""
    free, offsets, arena = _FreeList(), {}, 0
    ending: list = []                     # heap of (last step, offset, bytes)
    for blk in sorted(blocks, key=lambda b: (b.first, -b.bytes, b.last)):
        while ending and ending[0][0] < blk.first:
            _, off, nbytes = heapq.heappop(ending)
            free.release(off, nbytes)
        off = offsets[blk.values] = free.take(blk.bytes)
        heapq.heappush(ending, (blk.last, off, blk.bytes))
        arena = max(arena, off + blk.bytes)
    return arena, offsets


class _FreeList:
    """Free bytes below `top` as holes, found by size (a sorted list, bisect) and merged
    with their neighbours by offset (dicts); everything from `top` up is free."""

    def __init__(self):
        self.by_size: list = []          # sorted (bytes, offset)
        self.start: dict = {}            # hole offset -> bytes
        self.end: dict = {}              # hole end -> offset
        self.top = 0

    def take(self, nbytes: int) -> int:
        i = bisect.bisect_left(self.by_size, (nbytes, -1))
        if i == len(self.by_size):
            off, self.top = self.top, self.top + nbytes
            return off
        size, off = self.by_size[i]
        self._remove(off)
        if size > nbytes:
            self._add(off + nbytes, size - nbytes)
        return off

    def release(self, off: int, nbytes: int) -> None:
        end = off + nbytes
        if end in self.start:                  # a hole right above: merge
            end += self._remove(end)
        if off in self.end:                    # a hole right below: merge
            below = self.end[off]
            self._remove(below)
            off = below
        if end == self.top:
            self.top = off
        elif end > off:
            self._add(off, end - off)

    def _add(self, off: int, nbytes: int) -> None:
        bisect.insort(self.by_size, (nbytes, off))
        self.start[off], self.end[off + nbytes] = nbytes, off

    def _remove(self, off: int) -> int:
        nbytes = self.start.pop(off)
        del self.end[off + nbytes]
        self.by_size.pop(bisect.bisect_left(self.by_size, (nbytes, off)))
        return nbytes


def sequential_offsets(blocks: list) -> tuple:
    """No reuse: every block at its own offset, in order (the `--no-reuse` plan)."""
    offsets, top = {}, 0
    for blk in blocks:
        offsets[blk.values] = top
        top += blk.bytes
    return top, offsets


def memory_order(preds: Mapping[str, tuple], inputs: Mapping[str, tuple],
                 sizes: Mapping[str, int], pinned: set, rank: Mapping) -> list:
    """A topological order that greedily lowers the live bytes.

    Among ready nodes, run first the one whose step frees the most bytes net of what it
    allocates (an update frees its gradient; an add frees two partial sums); ties keep
    the original order `rank` (each name's distinct position). `pinned` values (kept to
    the end) are never freed. `preds` has every node's data and ordering predecessors;
    `inputs` the data inputs alone; `sizes` the bytes of planned values.

    A node's gain only falls (more of its inputs get it as their last reader), so the
    ready nodes sit in a heap and a node is pushed again when its gain falls; stale
    entries are skipped. Each node's net bytes are kept up to date as its inputs' readers
    run, not recounted: O((nodes + edges) log nodes). Nodes are numbered in rank order
    and a heap entry is one int, net * count + number, which sorts as (net, rank).
    """
    names = sorted(preds, key=rank.__getitem__)
    count, number = len(names), {n: i for i, n in enumerate(names)}
    later, waiting, data_inputs = [[] for _ in names], [0] * count, [()] * count
    readers_of: dict = {}                       # value -> the nodes reading it
    for i, n in enumerate(names):
        ps = preds[n]             # an edge given twice is counted and released twice
        waiting[i] = len(ps)
        for p in ps:
            later[number[p]].append(i)
        ins = inputs.get(n, ())
        if len(ins) > 2 or len(ins) == 2 and ins[0] == ins[1]:
            ins = dict.fromkeys(ins)            # each input once (x * x reads x once)
        ins = data_inputs[i] = [number[p] for p in ins if p in sizes]
        for p in ins:
            readers_of.setdefault(p, []).append(i)
    size = [sizes.get(n, 0) for n in names]
    freeable = [n not in pinned for n in names]
    readers = [0] * count
    net = size[:]                               # bytes a node's step allocates, net
    for p, rs in readers_of.items():
        readers[p] = len(rs)
        if len(rs) == 1 and freeable[p]:
            net[rs[0]] -= size[p]               # of the inputs it is the last reader of
    ready = [net[i] * count + i for i in range(count) if not waiting[i]]
    heapq.heapify(ready)
    order, push, pop = [], heapq.heappush, heapq.heappop
    while ready:
        i = pop(ready)
        gain, i = divmod(i, count)
        if gain != net[i]:
            continue                        # ran already, or pushed again with a lower gain
        net[i] = None                       # ran: no gain compares equal to it again
        order.append(names[i])
        for p in data_inputs[i]:
            left = readers[p] = readers[p] - 1
            if left == 1 and freeable[p]:
                last = next(r for r in readers_of[p] if net[r] is not None)
                net[last] -= size[p]        # it frees p now: if it is ready, push it again
                if not waiting[last]:
                    push(ready, net[last] * count + last)
        for s in later[i]:
            left = waiting[s] = waiting[s] - 1
            if not left:
                push(ready, net[s] * count + s)
    return order
