"""Run a Plan with NumPy: every step's kernel bound once to views of one arena.

Persistent values (params, optimizer state, the learning rate) live in a
`store` shared by all executors of a model; fed inputs get buffers of the
plan's batch size. Binding happens twice: once to measure the largest step's
scratch, once with a workspace of exactly that size. After that, `run`
copies the batch in and calls the bound kernels in order, allocating nothing.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping

import numpy as np

from .errors import check_memory
from .kernels import BINDERS, KERNELS
from .plan import ALIGN, Plan
from .workspace import Workspace

DROP_ATTRS = {"shape"}    # shape attributes are for inference; kernels see real arrays


def bind_kernel(op: str, out: np.ndarray, ins, attrs):
    """The no-argument call computing `op` into `out`: its binder's, else its plain kernel's."""
    call = BINDERS[op](out, *ins, **attrs) if op in BINDERS else None
    return call if call is not None else partial(KERNELS[op], out, *ins, **attrs)


def run_kernel(op: str, out: np.ndarray, *ins, **attrs) -> np.ndarray:
    """One call of `op` exactly as a plan runs it, with a workspace of its own (tests, tools)."""
    with Workspace().binding():
        call = bind_kernel(op, out, ins, attrs)
    call()
    return out


class Executor:
    def __init__(self, plan: Plan, store: Mapping[str, np.ndarray]):
        self.plan = plan
        dims = ", ".join(f"{k}={v}" for k, v in sorted(plan.dims.items()))
        check_memory(plan.arena_bytes, f"the plan's arena ({dims or 'no symbolic dims'})")
        self.arena = np.zeros(plan.arena_bytes + ALIGN, dtype=np.uint8)
        base = (-self.arena.ctypes.data) % ALIGN
        self.values: dict = {}
        for name, (op, shape, dtype, value) in plan.persistent.items():
            if op == "const":
                self.values[name] = np.full(shape, value, dtype=dtype)
            elif op == "input" and (name not in store or store[name].shape != shape):
                self.values[name] = np.zeros(shape, dtype=dtype)     # fed per batch
            else:
                self.values[name] = store[name]
        for b in plan.buffers.values():
            self.values[b.value] = np.ndarray(b.shape, dtype=b.dtype, buffer=self.arena,
                                              offset=base + b.offset)
        measuring = Workspace(0)
        self._bind_all(measuring)
        self.workspace = Workspace(measuring.high, measuring.consts, measuring.carry)
        self.calls = self._bind_all(self.workspace)

    @property
    def scratch_bytes(self) -> int:
        return self.workspace.capacity + self.workspace.const_bytes

    def _bind_all(self, ws: Workspace) -> list:
        with ws.binding():
            return [self._bind(ws, s) for s in self.plan.steps]

    def _bind(self, ws: Workspace, step):
        attrs = {k: v for k, v in step.attrs.items() if k not in DROP_ATTRS}
        ins = [self.values[i] for i in step.inputs]
        out = self.values[step.outputs[0]]
        ws.begin_step()
        return bind_kernel(step.op, out, ins, attrs)

    def feed(self, feeds: Mapping[str, np.ndarray]) -> None:
        for name, arr in feeds.items():
            np.copyto(self.values[name], arr, casting="same_kind")

    def feed_rows(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> None:
        """Gather the batch `rows` of each array straight into its input buffer."""
        for name, arr in arrays.items():
            np.take(arr, rows, axis=0, out=self.values[name])

    def run(self, feeds: Mapping[str, np.ndarray] = {}) -> None:
        self.feed(feeds)
        with np.errstate(all="ignore"):   # non-finite values are reported by the guard
            for call in self.calls:
                call()

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]
