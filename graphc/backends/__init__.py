"""Backends: each runs a Plan on one array library, behind the same small interface.

A backend is a folder with a kernel table `KERNELS` (op name -> `bind(out, *ins,
**attrs) -> call`), a `Backend(plan, store)` owning the plan's memory (`bind(steps)`,
`feed`, `feeder(names)`, `feed_rows`, `running(run)`, `host(name)`, `scratch_bytes`,
and for the generated step code `program(steps, calls, fuse)` and `kernel_calls(calls)`)
and `run_kernel`.
The executor above them is backend-neutral; tests run per backend over `BACKENDS`.
"""
from __future__ import annotations

from contextlib import contextmanager

from . import numpy

BACKENDS = {"numpy": numpy}
_chosen = ["numpy"]     # the backend an executor uses unless told otherwise


def current() -> str:
    return _chosen[-1]


@contextmanager
def using(name: str):
    """Within: executors run on backend `name` (tests run the same checks per backend)."""
    _chosen.append(name)
    try:
        yield BACKENDS[name]
    finally:
        _chosen.pop()
