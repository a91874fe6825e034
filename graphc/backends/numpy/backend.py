"""The NumPy backend: one kernel table, and a `Backend` owning every array of a plan.

`KERNELS` maps each op to its bind function (bind.py); a test checks it covers every
computed op of the vocabulary. A `Backend` holds one plan's memory: the byte arena
and the views of it that planned values are, the persistent values (params, optimizer
state, the learning rate: shared with the model's store; constants; fed inputs at the
plan's batch size), the workspace of scratch and constants, and host copies of values
for the caller. Binding happens twice: once to measure the largest step's scratch,
once with a workspace of exactly that size. After that a step allocates nothing.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ...plan import ALIGN, Plan
from . import blas, conv, fast, flat, kernels, modal, nn, sequence, softmax, updates
from .codegen import generate, statements
from .copies import fold_copies
from .feeding import Feeding
from .workspace import Workspace

# the steps whose numba kernels are bit for bit their NumPy kernels: the default step code
# runs them there where numba imports (Backend.bitwise_kernels)
BITWISE_OPS = conv.WINDOW_OPS | {"gelu_tanh", "gelu_grad"}
DROP_ATTRS = {"shape"}    # shape attributes are for inference; kernels see real arrays


def assemble(*tables: dict) -> dict:
    """op -> bind function over the kernel modules' tables; an op bound twice is a bug."""
    out: dict = {}
    for table in tables:
        twice = set(out) & set(table)
        if twice:
            raise ValueError(f"ops with two NumPy kernels: {sorted(twice)}")
        out.update(table)
    return out


KERNELS = assemble(kernels.BIND, nn.BIND, fast.BIND, softmax.BIND, updates.BIND,
                   conv.BIND, sequence.BIND, modal.BIND)


def run_kernel(op: str, out: np.ndarray, *ins, **attrs) -> np.ndarray:
    """One call of `op` exactly as a plan runs it, with a workspace of its own (tests, tools)."""
    with Workspace().binding():
        call = KERNELS[op](out, *ins, **attrs)
    call()
    return out


class Backend:
    """The arrays of one plan; `store` holds the persistent values the plan shares."""
    name = "numpy"

    def __init__(self, plan: Plan, store: Mapping[str, np.ndarray]):
        self.arena = np.zeros(plan.arena_bytes + ALIGN, dtype=np.uint8)
        base = (-self.arena.ctypes.data) % ALIGN
        self.values: dict = {}
        own = []
        for name, (op, shape, dtype, value) in plan.persistent.items():
            if op == "const":
                self.values[name] = np.full(shape, value, dtype=dtype)
            elif op == "input" and (name not in store or store[name].shape != shape):
                self.values[name] = np.zeros(shape, dtype=dtype)     # fed per batch
                own.append(name)
            else:
                self.values[name] = store[name]
        self.feeding = Feeding(self.values, own)
        for b in plan.buffers.values():
            self.values[b.value] = np.ndarray(b.shape, dtype=b.dtype, buffer=self.arena,
                                              offset=base + b.offset)
        self.stashed = flat.stash_gradients(plan.steps, self.values, plan.buffers)
        self.buffers = plan.buffers
        self.workspace = Workspace(0)
        self.runs: list = []                   # (steps, call) of the bound steps
        self.program_runs: list = []           # the runs the step code was generated from
        self.numba_steps = 0                   # steps of them in numba kernels

    def bind(self, steps) -> list:
        """The no-argument call of every step, bound to its arrays, in order."""
        measuring = Workspace(0)
        self._bind_all(measuring, steps)
        self.workspace = Workspace(measuring.high, measuring.consts)
        return self._bind_all(self.workspace, steps)

    def _bind_all(self, ws: Workspace, steps) -> list:
        with ws.binding():
            calls = [self._bind_step(ws, s) for s in steps]
            runs = flat.flat_updates(steps, calls, self.values, ws, self.stashed)
            runs = blas.gemm_updates(runs, self.values, self.buffers)
            self.runs = fold_copies(runs, self.values, self.buffers)
            return calls

    def _bind_step(self, ws: Workspace, step):
        attrs = {k: v for k, v in step.attrs.items() if k not in DROP_ATTRS}
        ins = [self.values[i] for i in step.inputs]
        ws.begin_step()
        return KERNELS[step.op](self.values[step.outputs[0]], *ins, **attrs)

    def program(self, steps, calls, fuse: bool = False, bitwise: bool = False):
        """The bound `calls` of `steps` as generated step code (codegen.py); with `fuse`,
        runs of elementwise steps first become fused kernels (fusion.py, needs numba);
        with `bitwise`, only the steps whose numba kernels are bit for bit NumPy's do
        (`bitwise_kernels`). Either way a reshape and a transpose in a row run as one copy
        (copies.py, folded in `self.runs`)."""
        runs = [((s,), c) for s, c in zip(steps, calls)]
        if [s for run, _ in self.runs for s in run] == list(steps):
            runs = self.runs        # with flat updates (flat.flat_updates), folded copies
            if fuse:    # keeps plain SGD's flat update and the folded copies; the other
                own = {id(s): c for s, c in zip(steps, calls)}    # updates fuse per param
                runs = [(run, f if len(run) > 1 or getattr(f, "flat", False)
                         else own[id(run[0])]) for run, f in runs]
        if fuse:
            from .fusion import fuse_runs      # imports numba: only when asked for
            runs = fuse_runs(runs, self.values, self.buffers)
        if bitwise:
            runs = self.bitwise_kernels(runs)
        bound = {id(c) for c in calls} | {id(c) for _, c in self.runs}
        self.program_runs = runs
        self.numba_steps = sum(len(s) for s, c in runs if id(c) not in bound)
        program = generate(runs, self.values, f"{len(steps)} steps")
        self.feeding.read_in_place(program.namespace, {
            name: [c for run, c in runs if any(name in s.inputs for s in run)]
            for name in self.feeding.own})
        return program

    def bitwise_kernels(self, runs) -> list:
        """`runs` with the steps of BITWISE_OPS on their numba kernels, bit for bit the
        NumPy ones (a CNN's window steps: im2col, col2im, max pooling, its gradient, conv
        + relu, fused_conv.py; gelu and its gradient, fused_seq.py), where numba imports
        and compiles them; else `runs` as they are, the same numbers. A plan without such
        steps never imports numba (about 0.7 s)."""
        if not any(s.op in BITWISE_OPS for steps, _ in runs for s in steps):
            return runs
        try:
            from .fusion import fuse_runs
            from .fused_conv import CONV_PATTERNS
            from .fused_seq import GELU_PATTERNS
            return fuse_runs(runs, self.values, self.buffers, CONV_PATTERNS + GELU_PATTERNS)
        except Exception:       # numba missing, or unable to cache or compile here
            return runs

    @staticmethod
    def kernel_calls(calls) -> int:
        """The NumPy-level calls one run of the bound `calls` makes (the reference path)."""
        return sum(statements(c) for c in calls)

    @property
    def scratch_bytes(self) -> int:
        return self.workspace.capacity + self.workspace.const_bytes

    def feed(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Copy the batch into the input buffers (feeding.py)."""
        self.feeding.feed(feeds)

    def feeder(self, names):
        """`feed` for feeds of exactly `names`, reading in place the arrays the step code
        can read where they lie, copying the others (feeding.py)."""
        return self.feeding.feeder(names)

    def feed_rows(self, arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> None:
        """Gather the batch `rows` of each array straight into its input buffer. The rows
        are the trainer's own indices, in range; mode 'raise' would buffer `out`, a
        batch-sized allocation on every call."""
        self.feeding.release(arrays)
        for name, arr in arrays.items():
            np.take(arr, rows, axis=0, out=self.values[name], mode="clip")

    def running(self, run):
        """`run` in the context of a run: non-finite values raise no NumPy warning (the
        trainer's guard reports them); the errstate is made once, as a decorator."""
        return np.errstate(all="ignore")(run)

    def host(self, name: str) -> np.ndarray:
        """The value as a host NumPy array (for NumPy, the array itself: copy to keep it)."""
        return self.values[name]
