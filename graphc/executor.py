"""Run a Plan: the steps' bound calls in order, on a backend that owns the memory.

Backend-neutral: the backend (graphc/backends/) holds the arena, the persistent
values (shared with the model's store), the workspace and the kernel table; this
module checks the memory limit, binds every step once, and runs the calls. After
binding, `run` copies the batch in and calls the bound kernels, allocating nothing.
"""
from __future__ import annotations

from typing import Mapping, Optional

from .backends import BACKENDS, current
from .errors import GraphcError
from .limits import check_memory
from .plan import Plan, Step


class KernelError(GraphcError):
    """A kernel raised while a plan ran: the step's node, op and spec line, then the cause."""
    exit_code = 2


def kernel_error(step: Step, exc: Exception) -> KernelError:
    line = f" from spec line {step.mark.line}" if step.mark else ""
    return KernelError(f"while executing node '{step.node}' (op {step.op}){line}: "
                       f"{type(exc).__name__}: {exc}", mark=step.mark, node=step.origin)


class Executor:
    def __init__(self, plan: Plan, store: Mapping, backend: Optional[str] = None):
        self.plan = plan
        dims = ", ".join(f"{k}={v}" for k, v in sorted(plan.dims.items()))
        check_memory(plan.arena_bytes, f"the plan's arena ({dims or 'no symbolic dims'})")
        self.backend = BACKENDS[backend or current()].Backend(plan, store)
        self.calls = self.backend.bind(plan.steps)

    def feed(self, feeds: Mapping) -> None:
        self.backend.feed(feeds)

    def feed_rows(self, arrays: Mapping, rows) -> None:
        """Gather the batch `rows` of each array straight into its input buffer."""
        self.backend.feed_rows(arrays, rows)

    def run(self, feeds: Mapping = {}) -> None:
        """Feed, then call every bound step in order; a failing kernel names its step."""
        self.backend.feed(feeds)
        index = 0
        try:
            with self.backend.running():
                for index, call in enumerate(self.calls):
                    call()
        except GraphcError:
            raise
        except Exception as exc:      # a kernel's own error: say where it ran
            raise kernel_error(self.plan.steps[index], exc) from exc

    def __getitem__(self, name: str):
        return self.backend.host(name)
