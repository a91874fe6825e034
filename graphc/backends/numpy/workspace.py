"""Compile-time memory for kernels: step-local scratch and shared read-only constants.

Bind functions call `scratch(shape, dtype)`, `constant(value, shape, dtype)` and
`row_offsets(rows, classes)` while the backend binds a plan. Scratch is valid only
during the calling step's own call: every step's scratch starts at offset 0 of one
shared buffer, so the whole plan needs only the largest step's scratch. Constants
(zeros for relu, ones for reductions through dot) are shared by every step that asks
for the same one. Nothing here carries data from one step to another: a value a
later step reads is an IR value, placed by the planner.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager

import numpy as np

from ...plan import ALIGN

_CURRENT = contextvars.ContextVar("graphc workspace", default=None)


class Workspace:
    """A scratch buffer of `capacity` bytes (0: measuring, every request gets its own array)."""

    def __init__(self, capacity: int = 0, consts: dict = None):
        self.capacity = capacity
        self.buf = np.zeros(capacity + ALIGN, dtype=np.uint8)
        self.base = (-self.buf.ctypes.data) % ALIGN
        self.cursor = self.high = 0
        self.consts = {} if consts is None else consts

    @property
    def const_bytes(self) -> int:
        return sum(a.nbytes for a in self.consts.values())

    def begin_step(self) -> None:
        self.cursor = 0

    def scratch(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = -(-int(np.prod(shape, dtype=np.int64)) * dtype.itemsize // ALIGN) * ALIGN
        start, self.cursor = self.cursor, self.cursor + nbytes
        self.high = max(self.high, self.cursor)
        if self.cursor > self.capacity:
            return np.empty(shape, dtype=dtype)
        return np.ndarray(shape, dtype=dtype, buffer=self.buf, offset=self.base + start)

    def constant(self, value, shape, dtype) -> np.ndarray:
        key = (float(value), tuple(shape), np.dtype(dtype).str)
        return self._shared(key, lambda: np.full(shape, value, dtype=dtype))

    def row_offsets(self, rows: int, classes: int) -> np.ndarray:
        key = ("row offsets", rows, classes)
        return self._shared(key, lambda: np.arange(rows, dtype=np.intp) * classes)

    def _shared(self, key, make) -> np.ndarray:
        if key not in self.consts:
            self.consts[key] = make()
            self.consts[key].flags.writeable = False     # shared: a write would leak
        return self.consts[key]

    @contextmanager
    def binding(self):
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


def _current() -> Workspace:
    ws = _CURRENT.get()
    return ws if ws is not None else Workspace()


def scratch(shape, dtype) -> np.ndarray:
    """Step-local scratch: overwritten by the next step, never keep data in it."""
    return _current().scratch(shape, dtype)


def mark() -> int:
    """Where the current step's next scratch starts (for `rewind`)."""
    return _current().cursor


def rewind(at: int) -> None:
    """Scratch asked for next starts at `at` (a `mark`) again: parts of one step that run
    one after another (bind.in_row_blocks) share the same scratch bytes."""
    _current().cursor = at


def constant(value, shape, dtype) -> np.ndarray:
    """A read-only constant array, shared across steps."""
    return _current().constant(value, shape, dtype)


def table(key: tuple, make) -> np.ndarray:
    """An index table `make()`, built once and shared by every step asking for `key` (the
    window indices of a convolution geometry, say). Never written, but left writeable:
    `np.take` copies a read-only index array on every call."""
    ws = _current()
    if key not in ws.consts:
        ws.consts[key] = make()
    return ws.consts[key]


def row_offsets(rows: int, classes: int) -> np.ndarray:
    """[0, classes, 2 classes, ...]: the flat index of each row's first class, read-only."""
    return _current().row_offsets(rows, classes)
