"""Generated step code: a bound plan written out as one straight-line Python function.

The reference executor calls one bound closure per step. Here every step whose call was
written with `bind.source` is inlined as its NumPy lines, over module-level names bound
to the very arrays the closures use (arena views, params, workspace scratch,
constants), so the function computes the same calls in the same order: bit for bit the
reference's numbers. A step without source text (an op whose kernel is a plain closure,
such as one another module adds) is a call of its bound kernel, `k12()`, so every op
runs. `fuse` (fusion.py) may first replace runs of steps with fused kernels.

The source is compiled with a filename of its own, registered in `linecache`, so a
traceback shows the generated line, and `step_at` maps that line back to its step.
"""
from __future__ import annotations

import ast
import itertools
import keyword
import linecache
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from .bind import PRELUDE

_SERIAL = itertools.count(1)


@dataclass
class Program:
    """A compiled step function, its source, and which step each line of it runs."""
    run: Callable[[], None]
    source: str
    filename: str
    step_of_line: Mapping[int, int]
    kernel_calls: int                 # Python-level kernel calls per run (inlined lines)
    fused: int = 0                    # steps folded into fused kernels
    namespace: dict = field(default_factory=dict, repr=False)

    def step_at(self, tb) -> Optional[int]:
        """The index of the plan step whose generated line the traceback `tb` passed
        through last, or None when it never reached the generated function."""
        index = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.filename:
                index = self.step_of_line.get(tb.tb_lineno, index)
            tb = tb.tb_next
        return index


class Names:
    """Readable, unique module-level names for the objects a step function reads."""

    def __init__(self, values: Mapping[str, np.ndarray]):
        self.namespace: dict = {**PRELUDE, "step": None}     # `step`: the function itself
        self.by_id: dict = {}
        for value, arr in values.items():
            self.bind(arr, value)

    def bind(self, obj, hint: str) -> str:
        """The name of `obj` (an existing one if it has one), made from `hint`."""
        if id(obj) in self.by_id:
            return self.by_id[id(obj)]
        base = re.sub(r"\W", "_", hint).strip("_") or "v"
        if base[0].isdigit() or keyword.iskeyword(base):
            base = "v_" + base
        name, n = base, 1
        while name in self.namespace:
            n += 1
            name = f"{base}_{n}"
        self.namespace[name] = obj
        self.by_id[id(obj)] = name
        return name

    def local(self, hint: str) -> str:
        """A fresh name for a local the generated code assigns: reserved, so no bound
        name can be shadowed by it."""
        return self.bind(object(), hint)


_SLOT = re.compile(r"__slot(\d+)__")


@lru_cache(maxsize=None)
def _template(text: str, names: tuple) -> tuple:
    """(statements, slots) of a kernel's text, parsed once per text: each bound name and
    each local the text assigns replaced by a marker `__slotN__` for slots[N]."""
    tree = ast.parse(text)
    stored = {n.id for n in ast.walk(tree)
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    slots = tuple(sorted(set(names) | stored))
    index = {k: i for i, k in enumerate(slots)}

    class Mark(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id not in index:
                return node
            return ast.copy_location(ast.Name(f"__slot{index[node.id]}__", node.ctx), node)

    return tuple(ast.unparse(stmt) for stmt in Mark().visit(tree).body), slots


def inline_lines(call, index: int, names: Names) -> list:
    """The statements of `call.text` with each bound name replaced by its module-level
    name, and each local the text assigns made unique to step `index`."""
    statements, slots = _template(call.text, tuple(call.names))
    bound = [names.bind(call.names[k], k if callable(call.names[k]) else f"{k}_{index}")
             if k in call.names else names.local(f"{k}_{index}") for k in slots]
    return [_SLOT.sub(lambda m: bound[int(m[1])], stmt) for stmt in statements]


def step_comment(step) -> str:
    line = f", spec line {step.mark.line}" if step.mark else ""
    return f"# [{step.index}] {step.outputs[0]} = {step.op}({', '.join(step.inputs)}){line}"


def statements(call) -> int:
    """The kernel calls (statements) one bound call makes: its lines, or 1 without text."""
    return len(_template(call.text, tuple(call.names))[0]) if hasattr(call, "text") else 1


def generate(runs: Sequence, values: Mapping[str, np.ndarray], title: str) -> Program:
    """The straight-line function of `runs`, each (steps, call): a step and its bound call,
    or a run of steps fused into one call (fusion.py), over the plan's `values`."""
    names = Names(values)
    filename = f"<graphc step code #{next(_SERIAL)}: {title}>"
    body, step_of_line, kernel_calls, fused = [], {}, 0, 0
    for steps, call in runs:
        start = len(body)
        if len(steps) > 1:
            fused += len(steps)
            body.append(f"# fused: {' + '.join(s.op for s in steps)}")
        body.extend(step_comment(s) for s in steps)
        first = steps[0].index
        if hasattr(call, "text"):      # a step deferred to a later one runs `pass`: no line
            lines = [line for line in inline_lines(call, first, names) if line != "pass"]
        else:
            lines = [f"{names.bind(call, f'k{first}')}()    # bound kernel: no source text"]
        kernel_calls += len(lines)
        body.extend(part for line in lines for part in line.splitlines())
        for b in range(start, len(body)):
            step_of_line[b + 2] = first         # body line b is file line b + 2 (after `def`)
    source = "\n".join(["def step():"] + ["    " + b for b in body or ["pass"]]) + "\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), names.namespace)
    return Program(names.namespace["step"], source, filename, step_of_line, kernel_calls,
                   fused, names.namespace)
