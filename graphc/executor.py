"""Run a Plan: the steps' bound calls in order, on a backend that owns the memory.

Backend-neutral: the backend (graphc/backends/) holds the arena, the persistent
values (shared with the model's store), the workspace and the kernel table; this
module checks the memory limit, binds every step once, and runs the calls. After
binding, `run` copies the batch in and calls the bound kernels, allocating nothing.
"""
from __future__ import annotations

from typing import Mapping

from .backends import BACKENDS, DEFAULT
from .errors import check_memory
from .plan import Plan


class Executor:
    def __init__(self, plan: Plan, store: Mapping, backend: str = DEFAULT):
        self.plan = plan
        dims = ", ".join(f"{k}={v}" for k, v in sorted(plan.dims.items()))
        check_memory(plan.arena_bytes, f"the plan's arena ({dims or 'no symbolic dims'})")
        self.backend = BACKENDS[backend].Backend(plan, store)
        self.calls = self.backend.bind(plan.steps)

    def feed(self, feeds: Mapping) -> None:
        self.backend.feed(feeds)

    def feed_rows(self, arrays: Mapping, rows) -> None:
        """Gather the batch `rows` of each array straight into its input buffer."""
        self.backend.feed_rows(arrays, rows)

    def run(self, feeds: Mapping = {}) -> None:
        self.backend.feed(feeds)
        with self.backend.running():
            for call in self.calls:
                call()

    def __getitem__(self, name: str):
        return self.backend.host(name)
