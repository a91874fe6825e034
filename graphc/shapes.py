"""Shape algebra over symbolic dims: a shape is a tuple of ints and dim names ('batch').

Broadcasting and matmul follow NumPy's rules; a symbolic dim equals only itself
(or broadcasts against 1). `ShapeError` carries the message; the caller adds
where it happened.
"""
from __future__ import annotations

from math import prod
from typing import Mapping, Sequence, Union

Dim = Union[int, str]
Shape = tuple


class ShapeError(ValueError):
    """Shapes that do not fit; the message names both shapes."""


def fmt(shape: Sequence[Dim]) -> str:
    """[batch, 2] style, as the user wrote it in YAML."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def broadcast(*shapes: Shape) -> Shape:
    """NumPy broadcasting of symbolic shapes: align right, 1 stretches, else dims must be equal."""
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(-ndim, 0):
        dims = {s[i] for s in shapes if len(s) >= -i} - {1}
        if len(dims) > 1:
            raise ShapeError("cannot broadcast " + " and ".join(fmt(s) for s in shapes))
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def matmul(a: Shape, b: Shape) -> Shape:
    """Result shape of numpy.matmul(a, b), 1-D operands promoted and then dropped."""
    if not a or not b:
        raise ShapeError(f"matmul needs operands of rank >= 1, got {fmt(a)} and {fmt(b)}")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeError(f"matmul inner dims differ: {fmt(a)} @ {fmt(b)} "
                         f"({a2[-1]} != {b2[-2]})")
    batch = broadcast(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def normalize_axis(axis, ndim: int) -> tuple:
    """axis None/int/list -> sorted tuple of non-negative axes, checked against ndim."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ShapeError(f"axis {ax} is out of range for rank {ndim}")
        out.append(ax % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def reduce(shape: Shape, axis, keepdims: bool) -> Shape:
    """Shape after reducing `axis` (None = all)."""
    axes = normalize_axis(axis, len(shape))
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def bind(shape: Shape, dims: Mapping[str, int]) -> tuple:
    """Concrete shape: every symbolic dim replaced by its bound size."""
    return tuple(dims[d] if isinstance(d, str) else d for d in shape)


def symbols(shape: Shape) -> set:
    return {d for d in shape if isinstance(d, str)}


def size(shape: Sequence[int]) -> int:
    return int(prod(shape))
