"""The one kernel contract of the NumPy backend: `bind(out, *inputs, **attrs) -> call`.

A bind function runs once, when a plan is compiled: it takes its scratch and constants
from the workspace (workspace.py) and returns a no-argument `call` that computes the
op into `out` with NumPy `out=` forms, so a training step allocates nothing. Update
kernels receive the parameter itself as `out`. Kernels of elementwise ops (the op
record says so) stay correct when `out` is one of their inputs: the planner may then
write the output in place.

A kernel may write its call as source text over named arrays (`source`, `inline`,
`ufunc`): the call is compiled from that text, and the generated step code
(codegen.py) inlines the same text, so both run the same NumPy calls. Any other call
(a plain closure) works too; generated code then calls it as it is.
"""
from __future__ import annotations

import math
import textwrap
from functools import lru_cache, partial

import numpy as np

from .workspace import mark, rewind


def plain(kernel):
    """The bind function of a kernel that needs nothing bound: `kernel(out, *ins, **attrs)`."""
    def bind(out, *ins, **attrs):
        return partial(kernel, out, *ins, **attrs)
    bind.kernel = kernel
    return bind


def plain_table(kernels: dict) -> dict:
    """op -> bind function, for a table of plain kernels."""
    return {op: plain(k) for op, k in kernels.items()}


PRELUDE = {"np": np, "math": math}


@lru_cache(maxsize=None)
def _factory(text: str, names: tuple):
    """The compiled `make(*names) -> call` of a kernel's lines (one per distinct text)."""
    body = "\n".join("        " + line for line in text.splitlines())
    code = (f"def make({', '.join(names)}):\n    def call():\n{body}\n    return call\n")
    scope = dict(PRELUDE)
    exec(compile(code, f"<graphc kernel {text.splitlines()[0][:40]}>", "exec"), scope)
    return scope["make"]


def source(text: str, **names):
    """A kernel call written as Python lines over `names` (arrays, constants, callables;
    `np` and `math` are always in scope): compiled into the no-argument call a plan runs,
    carrying `text` and `names` so the generated step code (codegen.py) inlines the very
    same NumPy calls, bit for bit."""
    text = textwrap.dedent(text).strip("\n")
    call = _factory(text, tuple(names))(*names.values())
    call.text, call.names = text, names
    return call


BLOCK_BYTES = 256 * 1024     # per array: a few arrays of it stay in a core's L2 cache


def in_row_blocks(bind_one, out, *ins):
    """The call of `bind_one(out, *ins)` (an elementwise kernel; every array of out's
    shape, C-contiguous) made over blocks of rows of about BLOCK_BYTES each, one block
    after another, each block's scratch the same bytes: the same operations on every
    element, so the same numbers, but a kernel of many passes over several arrays larger
    than the cache reads them from the cache after its first pass (gelu_grad on the sort
    transformer's [64, 11, 256]: about 20% faster). Arrays that fit one block, or of
    other shapes, get the one call as it is."""
    arrays = (out, *ins)
    width = out.shape[-1] if out.ndim else 1
    rows = max(1, BLOCK_BYTES // max(1, width * out.itemsize))
    if out.size <= rows * width or not all(a.shape == out.shape and a.flags.c_contiguous
                                           for a in arrays):
        return bind_one(out, *ins)
    flat, start, blocks = [a.reshape(-1, width) for a in arrays], mark(), []
    for first in range(0, flat[0].shape[0], rows):
        rewind(start)
        blocks.append(bind_one(*(a[first:first + rows] for a in flat)))
    return source("""
        for block in blocks:
            block()
        """, blocks=tuple(blocks))


def inline(text: str, *params: str):
    """The bind function of a one-text kernel: `bind(out, *ins)` binds `out` and the
    inputs, named `params`, into `source(text)`."""
    def bind(out, *ins):
        return source(text, out=out, **dict(zip(params, ins)))
    bind.text = text
    return bind


def ufunc(name: str, arity: int):
    """The bind function of NumPy's ufunc `name` over `arity` inputs, written into out."""
    params = ("x",) if arity == 1 else ("a", "b")
    return inline(f"np.{name}({', '.join(params)}, out=out)", *params)
