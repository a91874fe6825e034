"""Expression forms: one parse shared by every expression of the same form.

An expression's form is its text with each input name replaced by a slot, plus the
names' lengths and which of them are equal. Two expressions of one form parse to the
same nodes up to the names and the columns the lengths shift, so a spec of 100,000
`h_i: tanh(h_{i-1})` lines parses one `tanh(_)` and fills in the rest (no ast.parse,
no tree walk). Only plain forms are shared: ASCII names, operators, parentheses and
numbers on one line; no attribute (`=`), list, string, or name the parser could reject
or read as text (keywords, `__`, the node's own name). Errors are never cached: a form
is stored only after its first expression parsed.
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

from .errors import Mark

PLAIN = re.compile(r"[A-Za-z0-9_ ()+\-*/@.,]+", re.ASCII)
INPUT = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?!\w)(?!\s*\()", re.ASCII)
CALLED = re.compile(r"\)\s*\(")     # `(relu)(x)`: a callee that is no name before `(`
FORMS: dict = {}
MAX_FORMS = 4096
NO_PLACE = -1           # a form's place index for a node or input the parse gave no mark
KEYWORDS = frozenset(keyword.kwlist)


def form_of(body: str, name: str) -> tuple:
    """(the form's key, the input names in order of appearance), or (None, None) when
    the expression is not plain enough to share a parse."""
    if not PLAIN.fullmatch(body) or "__" in body or CALLED.search(body):
        return None, None
    names = INPUT.findall(body)
    if name in names or not KEYWORDS.isdisjoint(names):
        return None, None
    first: dict = {}
    return (INPUT.sub("\0", body), tuple(map(len, names)),
            tuple([first.setdefault(n, i) for i, n in enumerate(names)])), names


@dataclass(frozen=True)
class Form:
    """A parse with its names as slots: per node, its name after the node's own name
    (`/add`, or '' for the node itself), op, inputs (('slot', k): the k-th name of the
    text; ('node', j): the j-th node's output), attrs, and where the node and each of its
    inputs are, as indexes into `columns` (the form's distinct columns, relative to the
    expression's first column; NO_PLACE where the parse had no mark)."""
    rows: tuple
    columns: tuple
    node_type: type           # expr.NodeSpec (passed in: expr imports this module)

    @staticmethod
    def of(nodes: list, name: str, names: list, col0: int) -> "Form":
        slot = {n: ("slot", names.index(n)) for n in names}
        made = {n.name: ("node", j) for j, n in enumerate(nodes)}
        columns = sorted({m.col - col0 for n in nodes for m in (n.mark, *n.input_marks)
                          if m is not None})
        place = {c: k for k, c in enumerate(columns)}
        at = lambda m: NO_PLACE if m is None else place[m.col - col0]
        return Form(tuple((n.name[len(name):], n.op, tuple(slot.get(i) or made[i]
                                                            for i in n.inputs),
                            dict(n.attrs), at(n.mark), tuple(map(at, n.input_marks)))
                          for n in nodes), tuple(columns), type(nodes[0]))

    def nodes(self, name: str, names: list, mark: Mark, col0: int) -> list:
        """The node specs of this form for node `name` over `names`, at `mark`; one Mark
        per place, shared by the nodes there (a Mark is immutable)."""
        out, file, line = [], mark.file, mark.line
        at = [Mark(file, line, col0 + c) for c in self.columns] + [None]
        for suffix, op, inputs, attrs, k, ks in self.rows:
            ins = tuple(names[j] if kind == "slot" else out[j].name for kind, j in inputs)
            out.append(self.node_type(name + suffix, op, ins, dict(attrs), at[k],
                                      tuple(at[j] for j in ks)))
        return out
