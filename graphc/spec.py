"""Spec file -> validated `Spec`: leaves, node specs (expressions expanded), loss, train config.

Checks what can be checked without the graph: known keys (with did-you-mean),
leaf forms, dtypes, op names and attributes, references to defined names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .errors import Mark, SpecError, did_you_mean
from .expr import NodeSpec, check_attrs, lookup_op, parse_expression
from .ops import OPS
from .yamlload import MarkedDict, load_yaml

TOP_KEYS = ("graphc", "name", "dtype", "inputs", "params", "nodes", "loss", "outputs",
            "train")
LEAF_KEYS = ("shape", "dtype", "init", "value")
FLOAT_DTYPES = ("float32", "float64")
INPUT_DTYPES = FLOAT_DTYPES + ("int32", "int64")


@dataclass(frozen=True)
class LeafSpec:
    """An `input` (fed per batch) or `param` (trained) leaf."""
    name: str
    kind: str
    shape: tuple
    dtype: str
    init: object = None
    value: Optional[np.ndarray] = field(default=None, compare=False)
    mark: Optional[Mark] = field(default=None, compare=False)


@dataclass(frozen=True)
class Spec:
    """A validated spec; `nodes` are in file order with anonymous sub-nodes first."""
    path: Path
    name: str
    dtype: str
    leaves: Mapping[str, LeafSpec]
    nodes: tuple
    loss: str
    outputs: tuple
    train: Mapping
    text: str = field(repr=False, default="")

    def mark_of(self, name: str) -> Optional[Mark]:
        if name in self.leaves:
            return self.leaves[name].mark
        for n in self.nodes:
            if n.name == name:
                return n.mark
        return None


def check_keys(mapping: MarkedDict, allowed, where: str):
    """Unknown keys are errors with the closest allowed key, never ignored."""
    for key in mapping:
        if key not in allowed:
            raise SpecError(f"unknown key '{key}' in {where}", mark=mapping.key_marks[key],
                            hint=did_you_mean(key, allowed) or
                            "allowed keys: " + ", ".join(allowed))


def _mapping(value, what: str, mark: Mark) -> MarkedDict:
    if value is None:
        value = MarkedDict()
        value.mark, value.key_marks, value.value_marks = mark, {}, {}
    if not isinstance(value, dict):
        raise SpecError(f"'{what}' must be a mapping of name: value, got {type(value).__name__}",
                        mark=mark)
    return value


def _shape(value, name: str, mark: Mark) -> tuple:
    if not isinstance(value, list):
        raise SpecError(f"shape must be a list such as [batch, 2], got {value!r}",
                        mark=mark, node=name)
    for d in value:
        ok = (isinstance(d, int) and not isinstance(d, bool) and d >= 1) or \
             (isinstance(d, str) and d.isidentifier())
        if not ok:
            raise SpecError(f"bad dimension {d!r} in shape {value}", mark=mark, node=name,
                            hint="dims are positive integers or names such as batch")
    return tuple(value)


def _dtype(value, allowed, name: str, mark: Mark) -> str:
    if value not in allowed:
        raise SpecError(f"dtype '{value}' is not supported (expected one of "
                        f"{', '.join(allowed)})", mark=mark, node=name,
                        hint=did_you_mean(str(value), allowed))
    return value


def _value(value, name: str, mark: Mark) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecError(f"value must be a number or a nested list of numbers, got {value!r}",
                        mark=mark, node=name) from None
    if not np.all(np.isfinite(arr)):
        raise SpecError("value contains NaN or infinity", mark=mark, node=name)
    return arr


def _leaf(name: str, raw, kind: str, dtype: str, mark: Mark) -> LeafSpec:
    if isinstance(raw, bool):
        raise SpecError(f"leaf '{name}' is a boolean", mark=mark, node=name,
                        hint="give a shape list, a number, or {shape:, dtype:, init:, value:}")
    if isinstance(raw, (int, float)):
        return LeafSpec(name, kind, (), dtype, None, _value(raw, name, mark), mark)
    if isinstance(raw, list):
        return LeafSpec(name, kind, _shape(raw, name, mark), dtype, None, None, mark)
    if not isinstance(raw, dict):
        raise SpecError(f"leaf '{name}' must be a shape list, a number or a mapping, "
                        f"got {raw!r}", mark=mark, node=name)
    check_keys(raw, LEAF_KEYS, f"leaf '{name}'")
    allowed = INPUT_DTYPES if kind == "input" else FLOAT_DTYPES
    leaf_dtype = _dtype(raw.get("dtype", dtype), allowed, name, raw.mark_of("dtype"))
    value = _value(raw["value"], name, raw.mark_of("value")) if "value" in raw else None
    if "shape" in raw:
        shape = _shape(raw["shape"], name, raw.mark_of("shape"))
        if value is not None and value.shape != shape:
            raise SpecError(f"value has shape {list(value.shape)} but shape says {list(shape)}",
                            mark=raw.mark_of("value"), node=name)
    elif value is not None:
        shape = value.shape
    else:
        raise SpecError(f"leaf '{name}' needs a shape or a value", mark=raw.mark, node=name,
                        hint="e.g. {shape: [2, 3]}")
    return LeafSpec(name, kind, shape, leaf_dtype, raw.get("init"), value, mark)


def _explicit_node(name: str, raw: MarkedDict) -> NodeSpec:
    if "op" not in raw:
        raise SpecError("explicit node needs 'op'", mark=raw.mark, node=name,
                        hint="write {op: matmul, inputs: [x, W]}")
    op = lookup_op(str(raw["op"]), name, raw.mark_of("op"))
    inputs = raw.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise SpecError("'inputs' must be a list of names", mark=raw.mark_of("inputs"),
                        node=name)
    if len(inputs) != OPS[op].arity:
        raise SpecError(f"{op} takes {OPS[op].arity} input(s), got {len(inputs)}",
                        mark=raw.mark_of("inputs"), node=name)
    attrs = {k: v for k, v in raw.items() if k not in ("op", "inputs")}
    attrs = check_attrs(op, attrs, name, raw.mark)
    return NodeSpec(name, op, tuple(inputs), attrs, raw.mark)


def _nodes(raw: MarkedDict, lines: list) -> list:
    out = []
    for name, body in raw.items():
        mark = raw.mark_of(name)
        if isinstance(body, bool):
            raise SpecError("a node must be an expression or {op:, inputs:}", mark=mark,
                            node=name)
        if isinstance(body, (int, float)):
            body = repr(float(body))
        if isinstance(body, str):
            out += parse_expression(body, name, mark, _is_quoted(lines, mark))
        elif isinstance(body, dict):
            out.append(_explicit_node(name, body))
        else:
            raise SpecError("a node must be an expression string or {op:, inputs:}",
                            mark=mark, node=name)
    return out


def _is_quoted(lines: list, mark: Mark) -> bool:
    """Whether the YAML scalar at `mark` starts with a quote (columns then shift by one)."""
    line = lines[mark.line - 1] if mark.line <= len(lines) else ""
    return line[mark.col - 1:mark.col] in ("'", '"')


def _check_names(leaves, nodes):
    defined = set(leaves)
    for n in nodes:
        if n.name in defined:
            mark = leaves[n.name].mark if n.name in leaves else None
            raise SpecError(f"'{n.name}' is defined twice" +
                            (f" (also at line {mark.line})" if mark else ""),
                            mark=n.mark, node=n.name)
        defined.add(n.name)
    for n in nodes:
        for i in n.inputs:
            if i not in defined:
                raise SpecError(f"unknown name '{i}'", mark=n.mark, node=n.name.split("/")[0],
                                hint=did_you_mean(i, defined) or
                                "define it under inputs, params or nodes")


def load_spec(path, text: Optional[str] = None) -> Spec:
    """Read and validate a spec file; every error is a SpecError pointing at its line."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read spec: {exc.strerror}", mark=Mark(str(path), 1, 1)
                            ) from None
        except UnicodeDecodeError:
            raise SpecError("spec is not UTF-8 text", mark=Mark(str(path), 1, 1)) from None
    raw = load_yaml(text, str(path))
    top = Mark(str(path), 1, 1)
    if not isinstance(raw, dict):
        raise SpecError("a spec is a YAML mapping with inputs, params and nodes", mark=top)
    check_keys(raw, TOP_KEYS, "the spec")
    if raw.get("graphc", 1) != 1:
        raise SpecError(f"format version {raw['graphc']!r} is not supported (expected 1)",
                        mark=raw.mark_of("graphc"))
    dtype = _dtype(raw.get("dtype", "float32"), FLOAT_DTYPES, None, raw.mark_of("dtype"))
    leaves = {}
    for kind, key in (("input", "inputs"), ("param", "params")):
        section = _mapping(raw.get(key), key, raw.mark_of(key))
        for name, body in section.items():
            if name in leaves:
                raise SpecError(f"'{name}' is defined twice", mark=section.key_marks[name],
                                node=name)
            leaves[name] = _leaf(name, body, kind, dtype, section.key_marks[name])
    nodes = _nodes(_mapping(raw.get("nodes"), "nodes", raw.mark_of("nodes")),
                   text.splitlines())
    _check_names(leaves, nodes)
    names = set(leaves) | {n.name for n in nodes}
    loss = raw.get("loss", "loss")
    if loss not in names:
        raise SpecError(f"loss '{loss}' is not a node", mark=raw.mark_of("loss") if "loss"
                        in raw else top, hint=did_you_mean(str(loss), names) or
                        "name a node 'loss' or set loss: NODE")
    outputs = raw.get("outputs", [])
    if isinstance(outputs, str):
        outputs = [outputs]
    for o in outputs:
        if o not in names:
            raise SpecError(f"output '{o}' is not a node", mark=raw.mark_of("outputs"),
                            hint=did_you_mean(str(o), names))
    train = _mapping(raw.get("train"), "train", raw.mark_of("train"))
    name = str(raw.get("name", path.stem))
    return Spec(path, name, dtype, leaves, tuple(nodes), loss, tuple(outputs), train, text)
