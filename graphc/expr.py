"""Expression strings -> node specs, parsed with `ast` against a whitelist, never evaluated.

Allowed: names, numbers, `+ - * / @ **`, unary `-`/`+`, parentheses, and calls
of forward ops with positional inputs and constant keyword attributes. Each
sub-expression becomes an anonymous node named `<node>/<op>`.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

from . import shapes as S
from .errors import Mark, SpecError, clip, did_you_mean, short
from .exprforms import FORMS, MAX_FORMS, Form, form_of
from .ops import OPS, REQUIRED, attrs_with_defaults, ops_in

MAX_LENGTH = 10_000
MAX_DEPTH = 100

BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div",
          ast.MatMult: "matmul"}
ALIASES = {"max": "maximum", "min": "minimum"}


@dataclass(frozen=True)
class NodeSpec:
    """One node as written: `op` applied to named `inputs` with constant `attrs`."""
    name: str
    op: str
    inputs: tuple
    attrs: Mapping = field(default_factory=dict, hash=False)
    mark: Optional[Mark] = field(default=None, compare=False)
    input_marks: tuple = field(default=(), compare=False)    # where each input is named
    origin: Optional[str] = field(default=None, compare=False)  # the user's node, when the
                                                                # name does not say (blocks)

    @property
    def user_node(self) -> str:
        """The user's node it comes from, for errors: `origin` (a block instance's node),
        else the name before the first `/` (`h/matmul` is part of `h`)."""
        return self.origin or self.name.split("/")[0]


def check_attrs(op: str, attrs: Mapping, node: str, mark: Mark,
                marks: Optional[Mapping] = None, written: Optional[str] = None) -> dict:
    """Reject unknown, missing and ill-typed attributes; return attrs with defaults filled.

    `marks` may point at each attribute's own value (else `mark` is used); errors name the
    op as `written` (batch_norm, not the batch_norm_layer it stands for), else `op`.
    """
    known, shown = OPS[op].attrs, written or op
    for key in attrs:
        if key not in known:
            expected = ", ".join(known) or "none"
            raise SpecError(f"op '{shown}' has no attribute '{key}' (its attributes: "
                            f"{expected})", mark=(marks or {}).get(key, mark), node=node,
                            hint=did_you_mean(key, known))
    missing = [k for k, v in known.items() if v is REQUIRED and k not in attrs]
    if missing:
        raise SpecError(f"op '{shown}' needs attribute '{missing[0]}'", mark=mark, node=node,
                        hint=f"write {shown}(..., {missing[0]}=VALUE)")
    for key, value in attrs.items():
        problem = attr_problem(key, known[key], value)
        if problem:
            raise SpecError(f"attribute '{key}' of {shown} is {short(value)}, expected "
                            f"{problem}", mark=(marks or {}).get(key, mark), node=node)
    return attrs_with_defaults(OPS[op], attrs)


def _is_plain(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    return v is None or isinstance(v, (bool, str)) or S.is_number(v)


# attribute name -> (test, what the user should write); other attributes are checked
# against their default's type, or must at least be plain constants
ATTR_KINDS = {
    "axis": (lambda v: v is None or S.is_int(v) or
             (isinstance(v, (list, tuple)) and all(map(S.is_int, v))),
             "an integer, a list of integers, or null (None in an expression)"),
    "axes": (lambda v: v is None or (isinstance(v, (list, tuple)) and all(map(S.is_int, v))),
             "a list of integers or null (None in an expression)"),
    "shape": (lambda v: isinstance(v, (list, tuple)) and all(
        S.is_dim(d, minus_one=True) for d in v),
        "a list of sizes, dim names and -1, such as [batch, -1]"),
    "init": (lambda v: v is None or isinstance(v, (str, dict)),
             "an initializer name or {name: {argument: value}}"),
    "exponent": (S.is_number, "a finite number"),
    "units": (lambda v: S.is_int(v) and v >= 1, "a positive integer"),
    "p": (lambda v: S.is_number(v) and 0 <= v <= 1, "a probability from 0 to 1"),
    "momentum": (lambda v: S.is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "eps": (lambda v: S.is_number(v) and v > 0, "a number > 0"),
}
# convolution and pooling geometry: an int or one per spatial axis (ranges: the shape rule)
_PER_AXIS = (lambda v: v is None or S.is_int(v) or
             (isinstance(v, (list, tuple)) and all(map(S.is_int, v))),
             "an integer or a list of integers, one per spatial axis")
ATTR_KINDS.update(dict.fromkeys(("kernel", "stride", "padding", "dilation"), _PER_AXIS))
ATTR_KINDS["out_channels"] = ATTR_KINDS["units"]
ATTR_KINDS["heads"] = ATTR_KINDS["units"]
ATTR_KINDS["mlp"] = (lambda v: v is None or (S.is_int(v) and v >= 1),
                     "a positive integer (the MLP's hidden width)")


def attr_problem(key: str, default, value) -> Optional[str]:
    """What `value` should have been for attribute `key`, or None when it is fine."""
    if key in ATTR_KINDS:
        test, want = ATTR_KINDS[key]
    elif isinstance(default, bool):
        test, want = (lambda v: isinstance(v, bool)), "true or false (True or False in an " \
            "expression)"
    elif S.is_int(default):
        test, want = S.is_int, "an integer"
    elif isinstance(default, float):
        test, want = S.is_number, "a finite number"
    else:
        test, want = _is_plain, "a number, a name or a list of numbers"
    return None if test(value) else want


def layer_form(op: str, n_inputs: int, given, node: str, mark: Mark) -> str:
    """The layer an op called with its input alone stands for (conv2d(x, out_channels=8,
    kernel=3) creates its W and b; batch_norm(h) its gamma, beta and running statistics),
    else the op itself; `given` are the attribute names."""
    layer = OPS[op].layer_form
    if not layer or n_inputs != 1 or OPS[op].arity == 1:
        return op
    missing = [k for k, v in OPS[layer].attrs.items() if v is REQUIRED and k not in given]
    if missing:
        raise SpecError(f"{op} with its input alone is a layer that creates its weights, and "
                        f"needs {' and '.join(missing)}", mark=mark, node=node,
                        hint=f"write {op}(x, out_channels=16, kernel=3), or pass the weights: "
                             f"{op}(x, W, b)")
    return layer


def lookup_op(name: str, node: str, mark: Mark) -> str:
    """A user-callable op name (aliases resolved), or SpecError with the closest name."""
    op = ALIASES.get(name, name)
    if op not in OPS or OPS[op].group not in ("forward", "layer"):
        choices = ops_in("forward") + ops_in("layer") + list(ALIASES)
        raise SpecError(f"unknown op '{name}'", mark=mark, node=node,
                        hint=did_you_mean(name, choices) or "run `graphc ops` for the list")
    return op


# what a user wrote, in their words, for constructs the whitelist rejects
FORBIDDEN = {
    ast.Attribute: "attribute access", ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension", ast.GeneratorExp: "a comprehension",
    ast.Subscript: "indexing", ast.Compare: "a comparison", ast.BoolOp: "'and'/'or'",
    ast.IfExp: "a conditional expression", ast.NamedExpr: "an assignment",
    ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set",
    ast.JoinedStr: "an f-string", ast.Starred: "unpacking", ast.Await: "await",
}
OPERATORS = {ast.Mod: "%", ast.FloorDiv: "//", ast.LShift: "<<", ast.RShift: ">>",
             ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&", ast.Not: "not",
             ast.Invert: "~"}
ALLOWED = "use names, numbers, + - * / @ **, and op calls such as relu(x)"


class _Parser:
    def __init__(self, name: str, mark: Mark, col0: int, text: str):
        self.name, self.mark, self.col0, self.text = name, mark, col0, text
        self.nodes: list[NodeSpec] = []
        self.used: set = set()
        self.marks: dict = {}     # name -> where it first appears in the expression

    def at(self, tree: ast.AST) -> Mark:
        if getattr(tree, "lineno", 1) != 1:     # a multi-line block scalar: its first line
            return self.mark
        return Mark(self.mark.file, self.mark.line, self.col0 + getattr(tree, "col_offset", 0))

    def fail(self, msg: str, tree: ast.AST, hint: Optional[str] = None):
        raise SpecError(msg, mark=self.at(tree), node=self.name, hint=hint)

    def source(self, tree: ast.AST) -> str:
        return clip(ast.get_source_segment(self.text, tree) or type(tree).__name__, 30)

    def emit(self, op: str, inputs: tuple, attrs: Mapping, tree: ast.AST, top: bool) -> str:
        if top:
            out = self.name
        else:
            out, k = f"{self.name}/{op}", 2
            while out in self.used:
                out, k = f"{self.name}/{op}_{k}", k + 1
        self.used.add(out)
        mark = self.marks[out] = self.at(tree)
        self.nodes.append(NodeSpec(out, op, inputs, attrs, mark,
                                   tuple(self.marks.get(i) for i in inputs)))
        return out

    def visit(self, tree: ast.AST, depth: int = 0, top: bool = False) -> str:
        if depth > MAX_DEPTH:
            self.fail(f"expression nested deeper than {MAX_DEPTH} levels", tree,
                      "split it into several named nodes")
        if isinstance(tree, ast.Name):
            self.check_name(tree.id, tree)
            if tree.id not in self.marks:
                self.marks[tree.id] = self.at(tree)
            return self.emit("identity", (tree.id,), {}, tree, top) if top else tree.id
        if isinstance(tree, ast.Constant):
            return self.emit("const", (), {"shape": (), "value": self.number(tree)}, tree, top)
        if isinstance(tree, ast.UnaryOp) and isinstance(tree.op, (ast.USub, ast.UAdd)):
            return self.unary(tree, depth, top)
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
        self.fail(f"{self.describe(tree)} '{self.source(tree)}' is not allowed in an "
                  "expression", tree, ALLOWED)

    def describe(self, tree: ast.AST) -> str:
        if isinstance(tree, (ast.BinOp, ast.UnaryOp)):
            return f"the operator {OPERATORS.get(type(tree.op), type(tree.op).__name__)} in"
        return FORBIDDEN.get(type(tree), type(tree).__name__)

    def check_name(self, name: str, tree: ast.AST):
        if name.startswith("__"):
            self.fail(f"name '{name}' is not allowed", tree, "names starting with __ are "
                      "reserved; specs refer to their own inputs, params and nodes only")

    def unary(self, tree: ast.UnaryOp, depth: int, top: bool) -> str:
        if isinstance(tree.operand, ast.Constant):
            value = self.number(tree.operand)
            value = -value if isinstance(tree.op, ast.USub) else value
            return self.emit("const", (), {"shape": (), "value": value}, tree, top)
        x = self.visit(tree.operand, depth + 1)
        if isinstance(tree.op, ast.UAdd):
            return self.emit("identity", (x,), {}, tree, top) if top else x
        return self.emit("neg", (x,), {}, tree, top)

    def number(self, tree: ast.Constant) -> float:
        """A numeric literal as a finite float: 1e400 (read as inf) and 10**400 are errors."""
        if isinstance(tree.value, bool) or not isinstance(tree.value, (int, float)):
            self.fail(f"constant {short(tree.value)} is not a number", tree, ALLOWED)
        try:
            value = float(tree.value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            self.fail(f"constant {self.source(tree)} is too large for a float", tree)
        return value

    def literal(self, tree: ast.AST):
        """The constant `tree` spells (numbers, strings, lists, ...), or _NOT_CONSTANT.

        A bare name spells its string, so dim names and op names read as written:
        reshape(x, shape=[batch, -1]), dense(x, units=10, activation=relu).
        """
        if isinstance(tree, ast.Name):
            return tree.id
        if isinstance(tree, (ast.List, ast.Tuple)):
            items = [self.literal(t) for t in tree.elts]
            if any(i is _NOT_CONSTANT for i in items):
                return _NOT_CONSTANT
            return items if isinstance(tree, ast.List) else tuple(items)
        try:
            return ast.literal_eval(tree)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return _NOT_CONSTANT

    def constant_exponent(self, tree: ast.AST) -> float:
        value = self.literal(tree)
        if not S.is_number(value):
            self.fail(f"the exponent of ** is '{self.source(tree)}', expected a constant "
                      "number", tree, "write x ** 2, or exp(y * log(x)) for a variable "
                                      "exponent")
        return float(value)

    def call(self, tree: ast.Call, depth: int, top: bool) -> str:
        if not isinstance(tree.func, ast.Name):
            self.visit(tree.func, depth + 1)      # says what is wrong with it
            self.fail(f"'{self.source(tree.func)}' cannot be called; only op names can",
                      tree.func, ALLOWED)
        self.check_name(tree.func.id, tree.func)
        mark = self.at(tree)
        op = layer_form(lookup_op(tree.func.id, self.name, mark), len(tree.args),
                        {k.arg for k in tree.keywords}, self.name, mark)
        arity = OPS[op].arity
        if any(isinstance(a, ast.Starred) for a in tree.args) or \
                any(k.arg is None for k in tree.keywords):
            self.fail("* and ** unpacking are not allowed", tree)
        if arity is not None and len(tree.args) != arity:
            self.fail(f"{tree.func.id} takes {arity} input(s), got {len(tree.args)}", tree,
                      "attributes are passed by keyword, e.g. sum(x, axis=1)")
        inputs = tuple(self.visit(a, depth + 1) for a in tree.args)
        attrs, marks = {}, {}
        for kw in tree.keywords:
            attrs[kw.arg], marks[kw.arg] = self.literal(kw.value), self.at(kw.value)
            if attrs[kw.arg] is _NOT_CONSTANT:
                self.fail(f"attribute '{kw.arg}' of {tree.func.id} is "
                          f"'{self.source(kw.value)}', expected a constant", kw.value,
                          f"write {kw.arg}=1 or {kw.arg}=[0, 1]; inputs go by position")
        attrs = check_attrs(op, attrs, self.name, mark, marks, tree.func.id)
        return self.emit(op, inputs, attrs, tree, top)


_NOT_CONSTANT = object()


def parse_expression(text: str, name: str, mark: Mark, quoted: bool = False) -> list:
    """Node specs for `name: text`, the named node last; anonymous nodes before it."""
    if len(text) > MAX_LENGTH:
        raise SpecError(f"expression is {len(text)} characters long (limit {MAX_LENGTH})",
                        mark=mark, node=name, hint="split it into several named nodes")
    body = text.strip()
    col0 = mark.col + (1 if quoted else 0) + len(text) - len(text.lstrip())
    key, names = form_of(body, name)
    if key in FORMS:
        return FORMS[key].nodes(name, names, mark, col0)
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        col = col0 + max((exc.offset or 1) - 1, 0) if (exc.lineno or 1) == 1 else mark.col
        raise SpecError(f"syntax error in expression '{clip(body)}': {exc.msg}",
                        mark=Mark(mark.file, mark.line, col), node=name,
                        hint="expressions use Python syntax, e.g. relu(x @ W + b)") from None
    except ValueError as exc:           # e.g. a NUL character from a "\0" escape
        raise SpecError(f"expression cannot be read: {exc}", mark=mark, node=name) from None
    except (RecursionError, MemoryError):
        raise SpecError("expression is too deeply nested", mark=mark, node=name,
                        hint="split it into several named nodes") from None
    parser = _Parser(name, mark, col0, body)
    parser.visit(tree.body, top=True)
    if key is not None and len(FORMS) < MAX_FORMS and \
            set(names) <= {i for n in parser.nodes for i in n.inputs}:
        FORMS[key] = Form.of(parser.nodes, name, names, col0)
    return parser.nodes


def parse_stack(items: list, name: str, mark: Mark) -> list:
    """Node specs of a layer stack, Keras's Sequential in one YAML list (one item per line:
    `- x`, `- conv2d(out_channels=8, kernel=3)`, `- max_pool2d(kernel=2)`, `- flatten`):
    each item after the first is an op call (or a bare op name) whose first input is the
    item before it. The items become nodes `<name>/<op>` (`_2`, `_3`, ... when an op
    repeats); the last is `name`."""
    marks = [getattr(items, "mark_of", lambda i: mark)(i) for i in range(len(items))]
    if len(items) < 2 or not all(isinstance(i, str) for i in items) or \
            not items[0].strip().isidentifier():
        raise SpecError("a layer stack is a list of strings: the input's name, then op calls "
                        "each taking the item before as its first input", mark=mark, node=name,
                        hint="one item per line: - x, - conv2d(out_channels=8, kernel=3), "
                             "- max_pool2d(kernel=2), - flatten")
    nodes, prev, used = [], items[0].strip(), set()
    for i, (text, at) in enumerate(zip(items[1:], marks[1:]), start=1):
        tree = _stack_call(text, name, at)
        node = name if i == len(items) - 1 else _fresh(f"{name}/{tree.func.id}", used)
        tree.args.insert(0, ast.copy_location(ast.Name(id=prev, ctx=ast.Load()), tree))
        parser = _Parser(node, at, at.col, text.strip())
        parser.visit(tree, top=True)
        nodes += parser.nodes
        prev = node
    return nodes


STACK_SPLIT = ("in YAML's inline list [x, f(a=1, b=2)] the commas inside a call split the "
               "items: write the list one item per line (- x, - f(a=1, b=2)), or quote each "
               "item")


def _stack_call(text: str, name: str, mark: Mark) -> ast.Call:
    """One stack item as a call: `flatten` is `flatten()`."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        split = text.count("(") > text.count(")")      # YAML's [a, f(b=1, c=2)] splits at c
        raise SpecError(f"syntax error in layer stack item '{clip(text)}': {exc}", mark=mark,
                        node=name, hint=STACK_SPLIT if split else
                        "write an op call such as max_pool2d(kernel=2)") from None
    if isinstance(tree, ast.Name):
        tree = ast.copy_location(ast.Call(func=tree, args=[], keywords=[]), tree)
    if not isinstance(tree, ast.Call) or not isinstance(tree.func, ast.Name) or tree.args:
        raise SpecError(f"layer stack item '{clip(text)}' must be an op call with keyword "
                        "attributes only (its input is the item before it)", mark=mark,
                        node=name, hint="e.g. conv2d(out_channels=16, kernel=3) or flatten")
    return tree


def _fresh(base: str, used: set) -> str:
    out, k = base, 2
    while out in used:
        out, k = f"{base}_{k}", k + 1
    used.add(out)
    return out
