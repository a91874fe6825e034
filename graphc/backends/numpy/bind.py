"""The one kernel contract of the NumPy backend: `bind(out, *inputs, **attrs) -> call`.

A bind function runs once, when a plan is compiled: it takes its scratch and constants
from the workspace (workspace.py) and returns a no-argument `call` that computes the
op into `out` with NumPy `out=` forms, so a training step allocates nothing. Update
kernels receive the parameter itself as `out`. Kernels of elementwise ops (the op
record says so) stay correct when `out` is one of their inputs: the planner may then
write the output in place.
"""
from __future__ import annotations

from functools import partial


def plain(kernel):
    """The bind function of a kernel that needs nothing bound: `kernel(out, *ins, **attrs)`."""
    def bind(out, *ins, **attrs):
        return partial(kernel, out, *ins, **attrs)
    bind.kernel = kernel
    return bind


def plain_table(kernels: dict) -> dict:
    """op -> bind function, for a table of plain kernels."""
    return {op: plain(k) for op, k in kernels.items()}
