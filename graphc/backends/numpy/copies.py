"""Chains of two copies run as one: a reshape and the transpose after it, or back.

The transformer's heads are `transpose(reshape(n1 @ Wq))` and `reshape(transpose(heads))`
(and the same two in reverse in the backward pass): each op copies (nn.b_reshape,
nn.b_transpose), so every head value is copied twice. Where the middle value is read
only by the second copy and dies there, the generated step code (both `generated` and
`fused`) copies the first copy's input straight into the second copy's output, through a
view made once at bind time. The same bytes land in the same place, so the numbers are
bit for bit; the middle value's buffer is then never written, which nothing can see (it
has no other reader and is not kept). The planner is unchanged.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .bind import source

COPIES = ("reshape", "transpose")


def fold_copies(runs, values, buffers) -> list:
    """`runs` ((steps, call) pairs in order) with each reshape-then-transpose or
    transpose-then-reshape pair that `_folded` accepts run as one copy."""
    readers = reader_counts(runs)
    return merged_pairs(runs, lambda pair: _folded(pair, values, buffers, readers))


def merged_pairs(runs, merge) -> list:
    """`runs` with each two runs in a row that `merge(pair)` makes one run (else None)
    replaced by it, left to right."""
    out, i = [], 0
    while i < len(runs):
        pair = runs[i:i + 2]
        run = merge(pair) if len(pair) == 2 else None
        out.append(run or runs[i])
        i += 2 if run else 1
    return out


def reader_counts(runs) -> Counter:
    """value -> how many steps of `runs` ((steps, call) pairs) read it."""
    return Counter(name for steps, _ in runs for step in steps for name in step.inputs)


def _folded(pair, values, buffers, readers):
    """The one-copy run of two single-step runs, a reshape and a transpose in either order,
    the second reading the first's output alone as it dies; else None."""
    if len(pair[0][0]) != 1 or len(pair[1][0]) != 1:
        return None
    (first,), (second,) = pair[0][0], pair[1][0]
    if {first.op, second.op} != set(COPIES) or second.inputs != first.outputs:
        return None
    middle = first.outputs[0]
    buffer = buffers.get(middle)
    if buffer is None or readers.get(middle) != 1 or buffer.last_step != second.index:
        return None
    x, mid, out = values[first.inputs[0]], values[middle], values[second.outputs[0]]
    if not (x.flags.c_contiguous and out.flags.c_contiguous) or np.shares_memory(x, out):
        return None
    if first.op == "reshape":
        view, into = np.transpose(x.reshape(mid.shape), _axes(second)), out
    else:
        view, into = np.transpose(x, _axes(first)), out.reshape(mid.shape)
    return (first, second), source("np.copyto(into, view)", into=into, view=view)


def _axes(step):
    axes = step.attrs.get("axes")
    return tuple(axes) if axes is not None else None
