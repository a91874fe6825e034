"""Spec file -> validated `Spec`: leaves, node specs (expressions expanded), loss, train config.

Checks what can be checked without the graph: known keys (with did-you-mean),
leaf forms and dtypes (leaves.py), op names and attributes (expr.py), references
to defined names. Layers are expanded into params and plain nodes (layers.py).
"""
from __future__ import annotations

import keyword
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .blockdefs import check_not_called, parse_blocks
from .blocks import expand_instances, instance
from .errors import Mark, SpecError, did_you_mean, short
from .limits import fmt_bytes, paused_gc
from .expr import NodeSpec, check_attrs, layer_form, lookup_op, parse_expression, parse_stack
from .layers import check_float_inputs, expand_layers
from .seqlayers import LAYERS
from .leaves import FLOAT_DTYPES, LeafSpec, check_fits, check_size, parse_dtype, parse_leaf
from .ops import OPS
from .yamlload import MarkedDict, check_keys, load_yaml

TOP_KEYS = ("graphc", "name", "dtype", "inputs", "params", "state", "blocks", "nodes",
            "loss", "outputs", "train")
TRAIN_KEYS = ("data", "batch_size", "epochs", "optimizer", "schedule", "metrics", "seed",
              "clip_grad_norm", "early_stopping", "memory")
NODE_KEYS = ("op", "inputs")
MAX_SPEC_BYTES = 4 * 2**20         # specs are a few KB; YAML parsing needs ~200 bytes per byte


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


def as_read(name: str) -> str:
    """A name as an expression reads it: NFKC-normalized, as Python's parser does with
    identifiers (fullwidth 'ｘ' is 'x')."""
    return unicodedata.normalize("NFKC", name)


def _declare(name: str, mark: Mark, what: str, seen: dict) -> str:
    """A leaf or node name as expressions read it (`as_read`), once it is checked: an
    identifier, not a keyword, not __reserved, and not one `seen` (as read -> (as written,
    mark)) already holds."""
    read = as_read(name)
    if not read.isidentifier() or read.startswith("__"):
        raise SpecError(f"{what} name '{name}' is not an identifier", mark=mark, node=name,
                        hint="use letters, digits and _, not starting with a digit or __")
    if keyword.iskeyword(read):
        raise SpecError(f"{what} name '{name}' is a Python keyword, which no expression can "
                        "use as a name", mark=mark, node=name, hint=f"rename it, e.g. {read}_")
    if read in seen:
        first, at = seen[read]
        what = f"'{name}' is defined twice (also at line {at.line})" if first == name else (
            f"'{name}' and '{first}' (line {at.line}) are one name: expressions read both as "
            f"'{read}' (Python applies Unicode NFKC to names)")
        raise SpecError(what, mark=mark, node=name, hint="rename one of them")
    seen[read] = (name, mark)
    return read


def _mapping(value, what: str, mark: Mark) -> MarkedDict:
    if value is None:
        value = MarkedDict()
        value.mark, value.key_marks, value.value_marks = mark, {}, {}
    if not isinstance(value, dict):
        raise SpecError(f"'{what}' must be a mapping of name: value, got {short(value)}",
                        mark=mark, hint=f"write one NAME: VALUE per line, indented under "
                                        f"{what}:")
    return value


def _explicit_node(name: str, raw: MarkedDict) -> NodeSpec:
    if "op" not in raw:
        raise SpecError("explicit node needs 'op'", mark=raw.mark, node=name,
                        hint="write {op: matmul, inputs: [x, W]}")
    if not isinstance(raw["op"], str):
        raise SpecError(f"op is {short(raw['op'])}, expected an op name such as relu",
                        mark=raw.mark_of("op"), node=name)
    given = raw.get("inputs")
    op = layer_form(lookup_op(raw["op"], name, raw.mark_of("op")),
                    len(given) if isinstance(given, list) else 0, set(raw), name, raw.mark)
    check_keys(raw, NODE_KEYS + tuple(OPS[op].attrs), f"the {raw['op']} node", node=name)
    inputs = raw.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise SpecError(f"inputs is {short(inputs)}, expected a list of names such as "
                        "[x, W]", mark=raw.mark_of("inputs"), node=name)
    arity = OPS[op].arity
    if arity is not None and len(inputs) != arity:
        raise SpecError(f"{raw['op']} takes {arity} input(s), got {len(inputs)}",
                        mark=raw.mark_of("inputs"), node=name)
    attrs = {k: v for k, v in raw.items() if k not in NODE_KEYS}
    attrs = check_attrs(op, attrs, name, raw.mark, {k: raw.mark_of(k) for k in attrs},
                        raw["op"])
    marks = tuple(inputs.mark_of(i) for i in range(len(inputs))) \
        if hasattr(inputs, "mark_of") else ()
    return NodeSpec(name, op, tuple(map(as_read, inputs)), attrs, raw.mark, marks)


def _nodes(raw: MarkedDict, parse_node, seen: dict) -> list:
    """Node specs of the `nodes:` section, and an `Instance` for each block instance;
    `parse_node(name, body, mark)` reads any other node body."""
    out = []
    for written, body in raw.items():
        name = _declare(written, raw.key_marks[written], "node", seen)
        if isinstance(body, dict) and "block" in body:
            out.append(instance(name, body, raw.key_marks[written]))
        else:
            out += parse_node(name, body, raw.mark_of(written))
    return out


def _node(name: str, body, mark: Mark, lines: list) -> list:
    """The node specs of one node body: a number is read as the expression it spells."""
    if isinstance(body, float) and not math.isfinite(body):
        raise SpecError(f"node is {short(body)}, expected a finite number", mark=mark, node=name)
    if isinstance(body, (int, float)) and not isinstance(body, bool):
        body = repr(body)
    if isinstance(body, str):
        return parse_expression(body, name, mark, _is_quoted(lines, mark))
    if isinstance(body, dict):
        return [_explicit_node(name, body)]
    if isinstance(body, list):
        return parse_stack(body, name, mark)
    raise SpecError(f"node is {short(body)}, expected an expression string, "
                    "{op:, inputs:} or a layer stack [x, op(...), ...]", mark=mark,
                    node=name, hint="e.g. relu(x @ W + b)")


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
        for k, i in enumerate(n.inputs):
            if i not in defined:
                mark = n.input_marks[k] if k < len(n.input_marks) else None
                raise SpecError(f"unknown name '{i}'", mark=mark or n.mark,
                                node=n.user_node,
                                hint=did_you_mean(i, defined) or
                                "define it under inputs, params or nodes")


NUMPY_FILES = {b"PK\x03\x04": "an .npz archive (a checkpoint or data)",
               b"\x93NUMPY": "an .npy array"}


def _read(path: Path) -> str:
    """The spec's text (newlines as Python's text mode reads them), read at most
    MAX_SPEC_BYTES: a larger file, or a device such as /dev/zero, is refused unparsed."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror or exc}",
                        mark=Mark(str(path), 1, 1)) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec is larger than {fmt_bytes(MAX_SPEC_BYTES)}",
                        mark=Mark(str(path), 1, 1),
                        hint="a spec describes a model; put data and large values in files "
                             "(train.data, --init-from)")
    for magic, what in NUMPY_FILES.items():
        if data.startswith(magic):
            raise SpecError(f"spec is {what}, not YAML text", mark=Mark(str(path), 1, 1),
                            hint="the spec comes first: graphc COMMAND SPEC.yaml --params "
                                 "CKPT.npz")
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError(f"spec is not UTF-8 text (byte {exc.object[exc.start]:#04x})",
                        mark=Mark(str(path), line, 1), hint="save the file as UTF-8") from None


def _leaves(raw: MarkedDict, dtype: str, seen: dict) -> dict:
    leaves = {}
    for kind, key in (("input", "inputs"), ("param", "params"), ("state", "state")):
        section = _mapping(raw.get(key), key, raw.mark_of(key))
        for written, body in section.items():
            mark = section.key_marks[written]
            name = _declare(written, mark, kind, seen)
            leaves[name] = parse_leaf(name, body, kind, dtype, mark)
            check_size(leaves[name])
    return leaves


def _loss(raw: MarkedDict, names: set, top: Mark) -> str:
    if "loss" not in raw and "loss" not in names:
        raise SpecError("the spec has no loss: no `loss:` key and no node named 'loss'",
                        mark=raw.key_marks.get("nodes", top),
                        hint="set loss: NODE to the scalar to minimize")
    loss = raw.get("loss", "loss")
    loss = as_read(loss) if isinstance(loss, str) else loss
    if not isinstance(loss, str) or loss not in names:
        found = f"'{loss}' is not a node" if isinstance(loss, str) else \
            f"is {short(loss)}, expected a node name"
        raise SpecError(f"loss {found}", mark=raw.mark_of("loss") if "loss" in raw else top,
                        hint=did_you_mean(str(loss), names) or
                        "name a node 'loss' or set loss: NODE")
    return loss


def _outputs(raw: MarkedDict, names: set) -> tuple:
    outputs = raw.get("outputs", [])
    outputs = [outputs] if isinstance(outputs, str) else outputs
    if not isinstance(outputs, list):
        raise SpecError(f"outputs is {short(outputs)}, expected a list of node names",
                        mark=raw.mark_of("outputs"))
    for i, o in enumerate(outputs):
        where = getattr(outputs, "mark_of", lambda i: raw.mark_of("outputs"))(i)
        if not isinstance(o, str) or as_read(o) not in names:
            raise SpecError(f"output {short(o)} is not a node", mark=where,
                            hint=did_you_mean(str(o), names))
        if as_read(o) in map(as_read, outputs[:i]):     # predict would give its rows twice
            raise SpecError(f"output {short(o)} is listed twice", mark=where,
                            hint="name each output once")
    return tuple(map(as_read, outputs))


def _name(raw: MarkedDict, path: Path) -> str:
    """The spec's name, used for file names such as <name>.ckpt.npz: no path separators."""
    name = raw.get("name", path.stem)
    if not isinstance(name, (str, int, float)) or isinstance(name, bool) or \
            not str(name) or not all(c.isalnum() or c in "_-." for c in str(name)) or \
            str(name).startswith("."):
        raise SpecError(f"name is {short(name)}, expected a plain name such as spiral_mlp",
                        mark=raw.mark_of("name"), hint="letters, digits, _ - and . only")
    return str(name)


def _expand_layers(leaves: dict, nodes: list, dtype: str) -> list:
    """Layers become plain nodes (layers.py); the params and state they create join `leaves`."""
    check_float_inputs(nodes, {k: v.dtype for k, v in leaves.items()
                               if v.dtype.startswith("int")})
    params, nodes = expand_layers({k: v.shape for k, v in leaves.items()}, nodes, LAYERS)
    for p in params:
        leaves[p.name] = LeafSpec(p.name, p.kind, p.shape, dtype, p.init, None, p.mark)
        check_size(leaves[p.name])
    return nodes


@paused_gc
def load_spec(path, text: Optional[str] = None, dtype: Optional[str] = None) -> Spec:
    """Read and validate a spec file; every error is a SpecError pointing at its line.
    `dtype` (float32 or float64) replaces the spec's own `dtype:`."""
    path = Path(path)
    text = _read(path) if text is None else text
    raw = load_yaml(text, str(path))
    top = Mark(str(path), 1, 1)
    if not isinstance(raw, dict):
        found = "empty" if raw is None else \
            "a list" if isinstance(raw, list) else f"the value {short(raw)}"
        raise SpecError(f"the spec is {found}, expected a YAML mapping with inputs, params "
                        "and nodes", mark=top, hint="start from specs/spiral_mlp.yaml")
    check_keys(raw, TOP_KEYS, "the spec")
    version = raw.get("graphc", 1)
    if isinstance(version, bool) or version != 1:
        raise SpecError(f"format version {short(raw['graphc'])} is not supported "
                        "(expected 1)", mark=raw.mark_of("graphc"))
    dtype = parse_dtype(raw.get("dtype", "float32") if dtype is None else dtype, FLOAT_DTYPES,
                        None, raw.mark_of("dtype") if dtype is None else None)
    seen: dict = {}
    leaves = _leaves(raw, dtype, seen)
    lines = text.splitlines()
    raw_blocks = _mapping(raw.get("blocks"), "blocks", raw.mark_of("blocks"))

    def parse_node(name: str, body, mark: Mark) -> list:
        try:
            return _node(name, body, mark, lines)
        except SpecError:       # looked at only then: a correct spec pays nothing for it
            check_not_called(name, body, raw_blocks, mark)
            raise
    blocks = parse_blocks(raw_blocks, dtype, parse_node)
    nodes = _nodes(_mapping(raw.get("nodes"), "nodes", raw.mark_of("nodes")), parse_node, seen)
    nodes = expand_instances(nodes, blocks, leaves)
    _check_names(leaves, nodes)
    for n in nodes:
        if n.op == "const":
            check_fits(np.float64(n.attrs["value"]), dtype, "the constant", n.mark,
                       n.user_node)
    nodes = _expand_layers(leaves, nodes, dtype)
    names = set(leaves) | {n.name for n in nodes}
    loss = _loss(raw, names, top)
    outputs = _outputs(raw, names)
    train = _mapping(raw.get("train"), "train", raw.mark_of("train"))
    check_keys(train, TRAIN_KEYS, "train")
    return Spec(path, _name(raw, path), dtype, leaves, tuple(nodes), loss, outputs, train, text)
