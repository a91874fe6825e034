"""Shape algebra over symbolic dims: a shape is a tuple of ints and dim names ('batch').

Broadcasting and matmul follow NumPy's rules; a symbolic dim equals only itself
(or broadcasts against 1). `ShapeError` carries the message; the caller adds
where it happened.
"""
from __future__ import annotations

from math import isfinite, prod
from numbers import Integral
from typing import Mapping, Sequence, Union

from .errors import short

Dim = Union[int, str]
Shape = tuple


class ShapeError(ValueError):
    """Shapes that do not fit; the message names both shapes."""


def is_int(v) -> bool:
    """An integer that is not a bool (YAML and Python read `true` as 1 otherwise)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_whole(v) -> bool:
    """An integer of Python or NumPy (numbers.Integral) that is not a bool: a count an API
    caller may pass as np.int64."""
    return type(v) is int or (isinstance(v, Integral) and not isinstance(v, bool))


def is_number(v) -> bool:
    """A finite int or float that is not a bool: what a numeric setting may be (YAML reads
    1e400 as inf, and `yes` would otherwise be 1)."""
    return (is_int(v) or isinstance(v, float)) and isfinite(v)


def is_dim(d, minus_one: bool = False) -> bool:
    """A size >= 1 or a dim name such as batch; with `minus_one`, also -1 (reshape's rest)."""
    return (is_int(d) and (d >= 1 or (minus_one and d == -1))) or \
        (isinstance(d, str) and d.isidentifier())


def fmt(shape: Sequence[Dim]) -> str:
    """[batch, 2] style, as the user wrote it in YAML."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fmt_all(shapes) -> list:
    """`fmt` of each shape, written out once per distinct shape (a table of a large graph
    repeats a few shapes many times)."""
    text: dict = {}
    return [text[s] if s in text else text.setdefault(s, fmt(s)) for s in shapes]


def aligned(rows) -> list:
    """Rows of text cells as lines: each column padded to its widest cell, two spaces
    between columns, no trailing spaces (the tables of check, plan and gradcheck)."""
    rows = list(rows)
    line = "  ".join(f"{{:<{max(map(len, column))}}}" for column in zip(*rows))
    return [line.format(*r).rstrip() for r in rows]


def broadcast(*shapes: Shape) -> Shape:
    """NumPy broadcasting of symbolic shapes: align right, 1 stretches, else dims must be equal."""
    first = shapes[0]
    if all(s == first for s in shapes):     # the common case: nothing to stretch
        return tuple(first)
    out = []
    for i in range(-max(map(len, shapes)), 0):
        dim = 1
        for s in shapes:
            d = s[i] if len(s) >= -i else 1
            if d != 1:
                if dim != 1 and d != dim:
                    raise ShapeError("cannot broadcast " + " and ".join(map(fmt, shapes)))
                dim = d
        out.append(dim)
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


def one_axis(axis, ndim: int) -> int:
    """A single integer `axis` (negatives allowed) as a non-negative axis of rank `ndim`."""
    if not is_int(axis):
        raise ShapeError(f"axis must be one integer, got {short(axis)}")
    return normalize_axis(axis, ndim)[0]


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


def permutation(axes, ndim: int) -> tuple:
    """`axes` (negatives allowed) as non-negative axes, checked to be a permutation of range(ndim)."""
    ok = isinstance(axes, (list, tuple)) and len(axes) == ndim and all(
        is_int(a) and -ndim <= a < ndim for a in axes)
    perm = tuple(a % ndim for a in axes) if ok else ()
    if not ok or sorted(perm) != list(range(ndim)):
        raise ShapeError(f"axes {short(axes)} are not a permutation of the {ndim} axes "
                         f"(expected an order of 0..{ndim - 1})")
    return perm


def transpose(shape: Shape, axes) -> Shape:
    """Shape after numpy.transpose(x, axes); `axes` None reverses the axes."""
    if axes is None:
        return tuple(reversed(shape))
    return tuple(shape[a] for a in permutation(axes, len(shape)))


def reshape(shape: Shape, target) -> Shape:
    """Shape after numpy.reshape(x, target): sizes, dim names and at most one -1.

    The dim names of `target` must be those of `shape` (each as often); -1 takes what
    is left of the fixed size: reshape([batch, 4, 5], [batch, -1]) = [batch, 20].
    """
    ok = isinstance(target, (list, tuple)) and all(is_dim(d, minus_one=True) for d in target)
    if not ok or list(target).count(-1) > 1:
        raise ShapeError(f"reshape's shape must be a list of sizes, dim names and at most "
                         f"one -1, such as [batch, -1]; got {short(target)}")
    names_in = sorted(d for d in shape if isinstance(d, str))
    names_out = sorted(d for d in target if isinstance(d, str))
    if names_in != names_out:
        raise ShapeError(f"cannot reshape {fmt(shape)} to {fmt(target)}: the dim names must "
                         f"stay the same ({', '.join(names_in) or 'none'} in the input)")
    fixed_in = prod(d for d in shape if isinstance(d, int))
    fixed_out = prod(d for d in target if isinstance(d, int) and d != -1)
    if -1 in target and fixed_in % fixed_out == 0:
        return tuple(fixed_in // fixed_out if d == -1 else d for d in target)
    if -1 not in target and fixed_in == fixed_out:
        return tuple(target)
    raise ShapeError(f"cannot reshape {fmt(shape)} to {fmt(target)}: the fixed sizes "
                     f"{fixed_in} and {fixed_out} do not fit")


def concat(shapes, axis) -> Shape:
    """Shape after numpy.concatenate(xs, axis): same rank, same dims off `axis`, sizes on it add."""
    if not shapes:
        raise ShapeError("concat needs at least one input")
    first = tuple(shapes[0])
    if not first and is_int(axis):
        raise ShapeError("concat cannot join scalars (rank 0); reshape them to [1] first")
    ax = one_axis(axis, len(first))
    off_axis = [tuple(s[:ax]) + tuple(s[ax + 1:]) for s in shapes]
    if any(len(s) != len(first) or o != off_axis[0] for s, o in zip(shapes, off_axis)):
        raise ShapeError(f"concat along axis {axis} needs the same rank and the same dims "
                         "on the other axes, got " + ", ".join(fmt(s) for s in shapes))
    if len(shapes) == 1:
        return first
    along = [s[ax] for s in shapes]
    if symbols(along):
        raise ShapeError(f"concat along axis {axis} joins named dims "
                         f"({', '.join(map(str, along))}) whose total is unknown until run time")
    return first[:ax] + (sum(along),) + first[ax + 1:]
