"""Run a Plan with NumPy: every step's kernel bound once to views of one arena.

Persistent values (params, optimizer state, constants, the learning rate)
live in a `store` shared by all executors of a model; fed inputs get buffers
of the plan's batch size. `run(feeds)` copies the batch in and calls the
bound kernels in order.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping

import numpy as np

from .kernels import BINDERS, KERNELS
from .plan import Plan

DROP_ATTRS = {"shape"}    # shape attributes are for inference; kernels see real arrays


class Executor:
    def __init__(self, plan: Plan, store: Mapping[str, np.ndarray]):
        self.plan = plan
        self.arena = np.zeros(plan.arena_bytes + 64, dtype=np.uint8)
        base = (-self.arena.ctypes.data) % 64          # 64-byte aligned start
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
        self.calls = [self._bind(s) for s in plan.steps]

    def _bind(self, step):
        attrs = {k: v for k, v in step.attrs.items() if k not in DROP_ATTRS}
        ins = [self.values[i] for i in step.inputs]
        out = self.values[step.outputs[0]]
        if step.op in BINDERS:
            return BINDERS[step.op](out, *ins, **attrs)
        return partial(KERNELS[step.op], out, *ins, **attrs)

    def feed(self, feeds: Mapping[str, np.ndarray]) -> None:
        for name, arr in feeds.items():
            np.copyto(self.values[name], arr, casting="same_kind")

    def run(self, feeds: Mapping[str, np.ndarray] = {}) -> None:
        self.feed(feeds)
        with np.errstate(over="ignore", under="ignore"):
            for call in self.calls:
                call()

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]
