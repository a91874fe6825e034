"""A spec's leaf entries (under `inputs:`, `params:` and `state:`) -> `LeafSpec`: form, shape,
dtype, value.

A leaf is a shape list (`[batch, 2]`), a number (a scalar with that value), or a
mapping with `shape`, `dtype`, `init` and `value`. A leaf of fixed shape is
refused before allocation when it exceeds the memory limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import shapes as S
from .errors import Mark, SpecError, clip, did_you_mean, short, yaml_text
from .limits import check_memory, memory_limit
from .yamlload import check_keys

LEAF_KEYS = ("shape", "dtype", "init", "value")
MAX_DIM = 2**31 - 1
FLOAT_DTYPES = ("float32", "float64")
INPUT_DTYPES = FLOAT_DTYPES + ("int32", "int64")
KIND_WORDS = {"input": "input", "param": "parameter", "state": "state"}


@dataclass(frozen=True)
class LeafSpec:
    """An `input` (fed per batch), `param` (trained) or `state` (updated by ops, such as
    batch_norm's running statistics; never by the optimizer) leaf."""
    name: str
    kind: str
    shape: tuple
    dtype: str
    init: object = None
    value: Optional[np.ndarray] = field(default=None, compare=False)
    mark: Optional[Mark] = field(default=None, compare=False)


def parse_leaf(name: str, raw, kind: str, dtype: str, mark: Mark) -> LeafSpec:
    """The leaf `name: raw` of `kind` ('input', 'param' or 'state'); `dtype` is the spec's
    default."""
    if isinstance(raw, bool):
        raise SpecError(f"leaf '{name}' is a boolean", mark=mark, node=name,
                        hint="give a shape list, a number, or {shape:, dtype:, init:, value:}")
    if isinstance(raw, (int, float)):
        value = _value(raw, name, mark)
        check_fits(value, dtype, f"leaf '{name}'", mark, name)
        return LeafSpec(name, kind, (), dtype, None, value, mark)
    if isinstance(raw, list):
        return LeafSpec(name, kind, _shape(raw, name, mark, kind), dtype, None, None, mark)
    if not isinstance(raw, dict):
        raise SpecError(f"leaf '{name}' must be a shape list, a number or a mapping, "
                        f"got {short(raw)}", mark=mark, node=name)
    check_keys(raw, LEAF_KEYS, f"leaf '{name}'", node=name)
    allowed = INPUT_DTYPES if kind == "input" else FLOAT_DTYPES
    leaf_dtype = parse_dtype(raw.get("dtype", dtype), allowed, name, raw.mark_of("dtype"))
    value = _value(raw["value"], name, raw.mark_of("value")) if "value" in raw else None
    if "shape" in raw:
        shape = _shape(raw["shape"], name, raw.mark_of("shape"), kind)
        if value is not None and value.shape != shape:
            raise SpecError(f"value has shape {list(value.shape)} but shape says {list(shape)}",
                            mark=raw.mark_of("value"), node=name)
    elif value is not None:
        shape = value.shape
    else:
        raise SpecError(f"leaf '{name}' needs a shape or a value", mark=raw.mark, node=name,
                        hint="e.g. {shape: [2, 3]}")
    if value is not None:
        check_fits(value, leaf_dtype, f"leaf '{name}'", raw.mark_of("value"), name)
    return LeafSpec(name, kind, shape, leaf_dtype, raw.get("init"), value, mark)


def parse_dtype(value, allowed, name: Optional[str], mark: Mark) -> str:
    """`value` if it is one of the `allowed` dtype names, else SpecError with the closest."""
    if not isinstance(value, str) or value not in allowed:
        raise SpecError(f"dtype {short(value)} is not supported (expected one of "
                        f"{', '.join(allowed)})", mark=mark, node=name,
                        hint=did_you_mean(str(value), allowed))
    return value


def check_fits(value: np.ndarray, dtype: str, what: str, mark: Mark, node: str):
    """SpecError unless every number of `value` is one that `dtype` holds: in range, and
    whole for an integer dtype (a cast would give inf, or wrap or truncate)."""
    index = misfit(value, dtype)
    if index is not None:
        raise SpecError(f"{what} {misfit_message(value[index], dtype)}", mark=mark, node=node)


def misfit(value: np.ndarray, dtype) -> Optional[tuple]:
    """The index of the first number of `value` that `dtype` cannot hold, or None."""
    dtype, value = np.dtype(dtype), np.asarray(value)
    if np.can_cast(value.dtype, dtype, "safe"):     # only NaN and inf can be wrong
        found = np.argwhere(~np.isfinite(value)) if value.dtype.kind == "f" else ()
        return tuple(int(i) for i in found[0]) if len(found) else None
    real = dtype.kind == "f"
    info = np.finfo(dtype) if real else np.iinfo(dtype)
    value = value.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~((value >= info.min) & (value <= info.max))
        if not real:
            bad |= value != np.round(value)
    found = np.argwhere(bad)
    return tuple(int(i) for i in found[0]) if len(found) else None


def misfit_message(number, dtype) -> str:
    """'holds 1e+39, but float32 needs a number from ... to ...': why `dtype` cannot hold it."""
    dtype = np.dtype(dtype)
    real = dtype.kind == "f"
    info = np.finfo(dtype) if real else np.iinfo(dtype)
    kind, lo, hi = (("a number", f"{info.min:.6g}", f"{info.max:.6g}") if real else
                    ("a whole number", info.min, info.max))
    return f"holds {short(float(number))}, but {dtype} needs {kind} from {lo} to {hi}"


def check_size(leaf: LeafSpec):
    """A leaf of fixed shape is allocated whole: refuse one above the memory limit first."""
    if not S.symbols(leaf.shape):
        nbytes = S.size(leaf.shape) * np.dtype(leaf.dtype).itemsize
        if nbytes > memory_limit():        # the message only where it is shown
            check_memory(nbytes, f"{KIND_WORDS[leaf.kind]} '{leaf.name}' of shape "
                                 f"{S.fmt(leaf.shape)} ({leaf.dtype})", mark=leaf.mark,
                         node=leaf.name)


def _shape(value, name: str, mark: Mark, kind: str) -> tuple:
    """A shape list: sizes 1..MAX_DIM, or dim names (inputs only)."""
    if not isinstance(value, list):
        raise SpecError(f"shape is {short(value)}, expected a list such as [batch, 2]",
                        mark=mark, node=name)
    for i, d in enumerate(value):
        at = value.mark_of(i) if hasattr(value, "mark_of") else mark
        ok = (S.is_int(d) and 1 <= d <= MAX_DIM) or (isinstance(d, str) and d.isidentifier())
        if not ok:
            raise SpecError(f"dimension {i} of shape {_fmt(value)} is {short(d)}, expected a "
                            f"size from 1 to {MAX_DIM} or a dim name such as batch",
                            mark=at, node=name)
        if kind != "input" and isinstance(d, str):
            raise SpecError(f"{KIND_WORDS[kind]} shape {_fmt(value)} has the symbolic dim '{d}', "
                            "expected fixed sizes", mark=at, node=name,
                            hint="symbolic dims such as batch are for inputs")
    return tuple(value)


def _fmt(shape) -> str:
    """[batch, 2] as written in YAML, shortened when long."""
    text = yaml_text(shape)
    return text if len(text) <= 40 else text[:36] + "...]"


def _value(value, name: str, mark: Mark) -> np.ndarray:
    """A number or nested lists of numbers, as float64, finite and with no empty dimension."""
    try:
        arr = np.asarray(value, dtype=np.float64) if _numbers(value) else None
    except ValueError:                  # ragged lists
        arr = None
    except OverflowError:               # an integer beyond float64, such as 10**400
        raise SpecError(f"value holds an integer too large for any float dtype: "
                        f"{_huge(value)}", mark=mark, node=name,
                        hint="write it as a float, and within the dtype's range") from None
    if arr is None:
        raise SpecError(f"value must be a number or a nested list of numbers, got {short(value)}",
                        mark=mark, node=name)
    if not np.all(np.isfinite(arr)):
        raise SpecError("value contains NaN or infinity", mark=mark, node=name)
    if arr.size == 0:
        raise SpecError(f"value has shape {list(arr.shape)}, which holds no numbers",
                        mark=mark, node=name, hint="a leaf's dims are sizes from 1 up")
    return arr


def _huge(value) -> str:
    """The first integer of `value` (nested lists) that float64 cannot hold, clipped."""
    if isinstance(value, list):
        return next(h for h in map(_huge, value) if h)
    try:
        float(value)
        return ""
    except OverflowError:
        return clip(str(value))


def _numbers(value) -> bool:
    """Whether `value` is a number or nested lists of numbers (not booleans, not text)."""
    if isinstance(value, list):
        return all(_numbers(v) for v in value)
    return S.is_int(value) or isinstance(value, float)
