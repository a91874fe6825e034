"""Run a Plan: the steps' bound calls in order, on a backend that owns the memory.

Backend-neutral: the backend (graphc/backends/) holds the arena, the persistent
values (shared with the model's store), the workspace and the kernel table; this
module checks the memory limit, binds every step once, and runs the calls. After
binding, `run` feeds the batch (copied into the input buffers, or read in place by the
generated step code: backends/numpy/feeding.py) and calls the bound kernels, allocating
nothing.

Four ways to run the bound steps (the *step code*, docs/design.md): `reference` calls
each step's bound kernel in a loop; `numpy` runs the backend's straight-line function
of the same calls, bit for bit the reference's numbers; `generated` (the default) is
that function with a CNN's window steps and a transformer's gelu on numba loops that
are bit for bit NumPy's, where numba imports (else it is `numpy`); `fused` is generated code with runs of
elementwise steps fused into single loops (needs numba, the `graphc[numba]` extra).
`GRAPHC_STEP_CODE` or `using_step_code` choose.
"""
from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from typing import Callable, Mapping, Optional

from .backends import BACKENDS, current
from .errors import GraphcError, SpecError
from .limits import check_memory
from .plan import Plan, Step

STEP_CODES = ("reference", "generated", "fused", "numpy")
DEFAULT_STEP_CODE = "generated"
_STEP_CODE = contextvars.ContextVar("graphc step code", default=None)


class KernelError(GraphcError):
    """A kernel raised while a plan ran: the step's node, op and spec line, then the cause."""
    exit_code = 2


def kernel_error(step: Step, exc: Exception) -> KernelError:
    line = f" from spec line {step.mark.line}" if step.mark else ""
    return KernelError(f"while executing node '{step.node}' (op {step.op}){line}: "
                       f"{type(exc).__name__}: {exc}", mark=step.mark, node=step.origin)


def step_code() -> str:
    """The step code executors use now: `using_step_code`'s, else $GRAPHC_STEP_CODE's,
    else the default; fused only when numba imports."""
    chosen = _STEP_CODE.get() or os.environ.get("GRAPHC_STEP_CODE") or DEFAULT_STEP_CODE
    if chosen not in STEP_CODES:
        raise SpecError(f"unknown step code '{chosen}' (GRAPHC_STEP_CODE); expected one of "
                        f"{', '.join(STEP_CODES)}", hint=f"unset it for {DEFAULT_STEP_CODE}")
    if chosen == "fused":
        try:
            import numba  # noqa: F401
        except ImportError:
            raise SpecError("the fused step code needs numba, which is not installed",
                            hint="pip install 'graphc[numba]', or use --step-code "
                                 "generated") from None
    return chosen


@contextmanager
def using_step_code(name: Optional[str]):
    """Within: executors run `name` (None: as outside), checked as `step_code` checks."""
    token = _STEP_CODE.set(name)
    try:
        yield step_code()
    finally:
        _STEP_CODE.reset(token)


class Executor:
    def __init__(self, plan: Plan, store: Mapping, backend: Optional[str] = None):
        self.plan = plan
        dims = ", ".join(f"{k}={v}" for k, v in sorted(plan.dims.items()))
        check_memory(plan.arena_bytes, f"the plan's arena ({dims or 'no symbolic dims'})")
        self.step_code = step_code()
        self.backend = BACKENDS[backend or current()].Backend(plan, store)
        self.calls = self.backend.bind(plan.steps)
        self.program = None
        if self.step_code != "reference":
            self.program = self.backend.program(plan.steps, self.calls,
                                                fuse=self.step_code == "fused",
                                                bitwise=self.step_code == "generated")
        # every bound step in order, the batch already fed, in the backend's run context
        # (wrapped once here: entering it per run cost a microsecond)
        self.run_steps = self.backend.running(
            self._reference if self.program is None else self._generated)

    @property
    def kernel_calls(self) -> int:
        """How many kernel calls one run makes (a fused loop or a NumPy call is one)."""
        if self.program is not None:
            return self.program.kernel_calls
        return self.backend.kernel_calls(self.calls)

    @property
    def numba_steps(self) -> int:
        """How many plan steps one run does in numba kernels (0 on NumPy alone)."""
        return getattr(self.backend, "numba_steps", 0)

    @property
    def timed_runs(self) -> list:
        """(steps, call) pairs one run calls, for per-op timing: the runs the step code was
        generated from (a flat update or a fused run is one call for all its steps), else
        one per step."""
        runs = getattr(self.backend, "program_runs", None)
        if self.program is not None and runs:
            return runs
        return [((s,), c) for s, c in zip(self.plan.steps, self.calls)]

    def feed(self, feeds: Mapping) -> None:
        self.backend.feed(feeds)

    def feed_rows(self, arrays: Mapping, rows) -> None:
        """Gather the batch `rows` of each array straight into its input buffer."""
        self.backend.feed_rows(arrays, rows)

    def feeder(self, names) -> Callable[[Mapping], None]:
        """`feed` for feeds of exactly `names`, its buffers looked up once (the step path)."""
        return self.backend.feeder(names)

    def run(self, feeds: Mapping = {}) -> None:
        """Feed, then run every bound step in order; a failing kernel names its step."""
        if feeds:
            self.backend.feed(feeds)
        self.run_steps()

    def _reference(self) -> None:
        for step, call in zip(self.plan.steps, self.calls):
            try:
                call()
            except GraphcError:
                raise
            except Exception as exc:      # a kernel's own error: say where it ran
                raise kernel_error(step, exc) from exc

    def _generated(self) -> None:
        try:
            self.program.run()
        except GraphcError:
            raise
        except Exception as exc:      # the generated line that raised names its step
            index = self.program.step_at(exc.__traceback__)
            if index is None:
                raise
            step = next(s for s in self.plan.steps if s.index == index)
            raise kernel_error(step, exc) from exc

    def __getitem__(self, name: str):
        return self.backend.host(name)
