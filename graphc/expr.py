"""Expression strings -> node specs, parsed with `ast` against a whitelist, never evaluated.

Allowed: names, numbers, `+ - * / @ **`, unary `-`/`+`, parentheses, and calls
of forward ops with positional inputs and constant keyword attributes. Each
sub-expression becomes an anonymous node named `<node>/<op>`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Mapping, Optional

from .errors import Mark, SpecError, did_you_mean
from .ops import OPS, REQUIRED, ops_in

MAX_LENGTH = 10_000
MAX_DEPTH = 100

BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div",
          ast.MatMult: "matmul"}
ALIASES = {"max": "maximum"}


@dataclass(frozen=True)
class NodeSpec:
    """One node as written: `op` applied to named `inputs` with constant `attrs`."""
    name: str
    op: str
    inputs: tuple
    attrs: Mapping = field(default_factory=dict, hash=False)
    mark: Optional[Mark] = field(default=None, compare=False)


def check_attrs(op: str, attrs: Mapping, node: str, mark: Mark) -> dict:
    """Reject unknown and missing attributes; return attrs with defaults filled."""
    known = OPS[op].attrs
    for key in attrs:
        if key not in known:
            expected = ", ".join(known) or "none"
            raise SpecError(f"op '{op}' has no attribute '{key}' (its attributes: {expected})",
                            mark=mark, node=node, hint=did_you_mean(key, known))
    missing = [k for k, v in known.items() if v is REQUIRED and k not in attrs]
    if missing:
        raise SpecError(f"op '{op}' needs attribute '{missing[0]}'", mark=mark, node=node,
                        hint=f"write {op}(..., {missing[0]}=VALUE)")
    return {k: attrs.get(k, v) for k, v in known.items()}


def lookup_op(name: str, node: str, mark: Mark) -> str:
    """A user-callable op name (aliases resolved), or SpecError with the closest name."""
    op = ALIASES.get(name, name)
    if op not in OPS or OPS[op].group != "forward":
        choices = ops_in("forward") + list(ALIASES)
        raise SpecError(f"unknown op '{name}'", mark=mark, node=node,
                        hint=did_you_mean(name, choices) or "run `graphc ops` for the list")
    return op


class _Parser:
    def __init__(self, name: str, mark: Mark, col0: int):
        self.name, self.mark, self.col0 = name, mark, col0
        self.nodes: list[NodeSpec] = []
        self.used: set = set()

    def at(self, tree: ast.AST) -> Mark:
        col = getattr(tree, "col_offset", 0)
        return Mark(self.mark.file, self.mark.line, self.col0 + col)

    def fail(self, msg: str, tree: ast.AST, hint: Optional[str] = None):
        raise SpecError(msg, mark=self.at(tree), node=self.name, hint=hint)

    def emit(self, op: str, inputs: tuple, attrs: Mapping, tree: ast.AST, top: bool) -> str:
        if top:
            out = self.name
        else:
            out, k = f"{self.name}/{op}", 2
            while out in self.used:
                out, k = f"{self.name}/{op}_{k}", k + 1
        self.used.add(out)
        self.nodes.append(NodeSpec(out, op, inputs, attrs, self.at(tree)))
        return out

    def visit(self, tree: ast.AST, depth: int = 0, top: bool = False) -> str:
        if depth > MAX_DEPTH:
            self.fail(f"expression nested deeper than {MAX_DEPTH} levels", tree,
                      "split it into several named nodes")
        if isinstance(tree, ast.Name):
            if tree.id.startswith("__"):
                self.fail(f"name '{tree.id}' is not allowed", tree)
            if top:
                return self.emit("identity", (tree.id,), {}, tree, top)
            return tree.id
        if isinstance(tree, ast.Constant):
            return self.emit("const", (), {"shape": (), "value": self.number(tree)}, tree, top)
        if isinstance(tree, ast.UnaryOp) and isinstance(tree.op, (ast.USub, ast.UAdd)):
            if isinstance(tree.operand, ast.Constant):
                value = self.number(tree.operand)
                value = -value if isinstance(tree.op, ast.USub) else value
                return self.emit("const", (), {"shape": (), "value": value}, tree, top)
            x = self.visit(tree.operand, depth + 1)
            if isinstance(tree.op, ast.UAdd):
                return self.emit("identity", (x,), {}, tree, top) if top else x
            return self.emit("neg", (x,), {}, tree, top)
        if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Pow):
            exponent = self.constant_exponent(tree.right)
            x = self.visit(tree.left, depth + 1)
            return self.emit("pow", (x,), {"exponent": exponent}, tree, top)
        if isinstance(tree, ast.BinOp) and type(tree.op) in BINOPS:
            a = self.visit(tree.left, depth + 1)
            b = self.visit(tree.right, depth + 1)
            return self.emit(BINOPS[type(tree.op)], (a, b), {}, tree, top)
        if isinstance(tree, ast.Call):
            return self.call(tree, depth, top)
        self.fail(f"'{type(tree).__name__}' is not allowed in an expression", tree,
                  "use names, numbers, + - * / @ **, and op calls such as relu(x)")

    def number(self, tree: ast.Constant) -> float:
        if isinstance(tree.value, bool) or not isinstance(tree.value, (int, float)):
            self.fail(f"constant {tree.value!r} is not a number", tree)
        return float(tree.value)

    def constant_exponent(self, tree: ast.AST) -> float:
        try:
            value = ast.literal_eval(tree)
        except ValueError:
            value = None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail("the exponent of ** must be a constant number", tree,
                      "write x ** 2, or exp(y * log(x)) for a variable exponent")
        return float(value)

    def call(self, tree: ast.Call, depth: int, top: bool) -> str:
        if not isinstance(tree.func, ast.Name):
            self.fail("only op names can be called (no attribute access)", tree)
        op = lookup_op(tree.func.id, self.name, self.at(tree))
        arity = OPS[op].arity
        if any(isinstance(a, ast.Starred) for a in tree.args) or \
                any(k.arg is None for k in tree.keywords):
            self.fail("* and ** unpacking are not allowed", tree)
        if arity is not None and len(tree.args) != arity:
            self.fail(f"{op} takes {arity} input(s), got {len(tree.args)}", tree,
                      "attributes are passed by keyword, e.g. sum(x, axis=1)")
        inputs = tuple(self.visit(a, depth + 1) for a in tree.args)
        attrs = {}
        for kw in tree.keywords:
            try:
                attrs[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                self.fail(f"attribute '{kw.arg}' of {op} must be a constant", kw.value)
        attrs = check_attrs(op, attrs, self.name, self.at(tree))
        return self.emit(op, inputs, attrs, tree, top)


def parse_expression(text: str, name: str, mark: Mark, quoted: bool = False) -> list:
    """Node specs for `name: text`, the named node last; anonymous nodes before it."""
    if len(text) > MAX_LENGTH:
        raise SpecError(f"expression is {len(text)} characters long (limit {MAX_LENGTH})",
                        mark=mark, node=name, hint="split it into several named nodes")
    col0 = mark.col + (1 if quoted else 0)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = col0 + max((exc.offset or 1) - 1, 0)
        raise SpecError(f"syntax error in expression '{text.strip()}': {exc.msg}",
                        mark=Mark(mark.file, mark.line, col), node=name) from None
    except (RecursionError, MemoryError):
        raise SpecError("expression is too deeply nested", mark=mark, node=name,
                        hint="split it into several named nodes") from None
    parser = _Parser(name, mark, col0)
    parser.visit(tree.body, top=True)
    return parser.nodes

