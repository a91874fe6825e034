"""Feeding a batch: copied into the plan's input buffers, or read where it lies.

The generated step code reads an input through module-level names: its buffer and the
views of it made at bind time (a transpose for a weight gradient, a flat view of the
labels). Those names can point at the caller's array instead, each view rebuilt at the
same offset and strides, so the step reads the batch in place: a medium MLP's step
(256 x 784 floats) saves a 0.8 MB copy, about 2.5% of it, and the cache lines the copy
evicts. An array is read in place when it has its input's dtype, shape and C layout, is
aligned, and overlaps no memory the step writes (the arena, the persistent values, the
scratch); the same numbers either way (the copy was exact). It stays bound while the
same array is fed again (a loader refilling one array costs nothing); another array
rebinds the names (a microsecond per view); any other array is copied into the input's
own buffer, the names pointed back first, as is every write of the buffers
(`release`: `feed`, `feed_rows`). The rebuilt views are read-only. While bound, the backend's value of the input is the
caller's array (`host` returns it) and the step code holds a reference to it.

Only for an input whose every reader is written as source text over named arrays
(`by_arguments`): a bound kernel without source text (`k12()`) may hold the buffer
itself, and the reference step code, a loop over such kernels, always copies.
"""
from __future__ import annotations

import types
from typing import Mapping, Optional, Sequence

import numpy as np


def by_arguments(call) -> bool:
    """Whether a bound call reads its arrays through names of the step code: it has
    source text, and every name that is not an array is a number, a module, or a kernel
    taking arrays as arguments (a NumPy function, a numba kernel, an object that says
    `reads_arguments`: blas.GemmUpdate), never a closure, a container of views, or an
    array's bound method (`buffer.dot`), which would hold the buffer itself."""
    return hasattr(call, "text") and all(
        isinstance(obj, _PLAIN) or (type(obj).__module__.startswith("numba")
                                    and not isinstance(getattr(obj, "__self__", None), np.ndarray))
        or (isinstance(obj, types.BuiltinFunctionType)
            and not isinstance(obj.__self__, np.ndarray))
        or getattr(type(obj), "reads_arguments", False)
        for obj in call.names.values())


_PLAIN = (np.ndarray, np.generic, int, float, complex, types.ModuleType, np.ufunc)


def _allocation(arr: np.ndarray) -> np.ndarray:
    """The array that owns the memory `arr` views."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


class Binding:
    """The names of input `name`'s buffer and its views in the step code's namespace, and
    its entry in the backend's `values`: both point at the buffer, or at a bound array."""

    def __init__(self, name: str, values: dict, namespace: dict):
        self.name, self.values, self.namespace = name, values, namespace
        self.buffer = buffer = values[name]
        start = buffer.ctypes.data
        self.own = {k: v for k, v in namespace.items()
                    if isinstance(v, np.ndarray) and np.may_share_memory(v, buffer)}
        self.views = [(k, v.shape, v.dtype, v.ctypes.data - start, v.strides)
                      for k, v in self.own.items()]
        self.bound: Optional[np.ndarray] = None     # the caller's array, or None: the buffer

    def readable(self, arr, written: Sequence[np.ndarray]) -> bool:
        """Whether the step can read `arr` in place of the buffer."""
        b = self.buffer
        return (type(arr) is np.ndarray and arr.dtype == b.dtype and arr.shape == b.shape
                and arr.flags.c_contiguous and arr.flags.aligned and b.size > 0
                and not any(np.may_share_memory(arr, w) for w in written))

    def bind(self, arr: np.ndarray) -> None:
        """Point the names at `arr`, each view read-only: a kernel that wrote an input
        would raise (a located kernel error), never change the caller's array."""
        ns = self.namespace
        for k, shape, dtype, offset, strides in self.views:
            view = np.ndarray(shape, dtype, buffer=arr, offset=offset, strides=strides)
            view.flags.writeable = False
            ns[k] = view
        self.bound = self.values[self.name] = arr

    def release(self) -> None:
        """Point the names and the value back at the buffer (nothing when they are)."""
        if self.bound is not None:
            self.namespace.update(self.own)
            self.values[self.name], self.bound = self.buffer, None


class Feeding:
    """The fed inputs of one plan: `values` is the backend's name -> array, `own` the
    inputs whose buffers the backend made (not the store's)."""

    def __init__(self, values: dict, own: Sequence[str]):
        self.values, self.own = values, tuple(own)
        self.written: tuple = ()          # the memory a step writes
        self.bindings: dict = {}          # input -> Binding, once the step code reads names

    def read_in_place(self, namespace: dict, readers: Mapping[str, Sequence]) -> None:
        """Let the step code whose names are `namespace` read in place the fed arrays of
        the inputs whose `readers` (the bound calls of the steps reading each) all read
        them by name (`by_arguments`), where they overlap no memory it may write: any
        array it or the backend holds but the input buffers (each allocation checked
        once, by its base array)."""
        self.bindings = {n: Binding(n, self.values, namespace) for n in self.own
                         if all(map(by_arguments, readers.get(n, ())))}
        fed = {id(v) for b in self.bindings.values() for v in b.own.values()}
        arrays = [v for v in [*namespace.values(), *self.values.values()]
                  if isinstance(v, np.ndarray) and id(v) not in fed]
        self.written = tuple({id(r): r for r in map(_allocation, arrays)}.values())

    def release(self, names) -> None:
        """Point the step code back at the buffers of `names` (before writing them)."""
        for name in names:
            if name in self.bindings:
                self.bindings[name].release()

    def feed(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Copy each fed array into its input's buffer."""
        self.release(feeds)
        for name, arr in feeds.items():
            np.copyto(self.values[name], arr, casting="same_kind")

    def feeder(self, names):
        """`feed` for feeds of exactly `names`, reading in place what it can (the step
        path: Model.step, every command's forward)."""
        self.release(names)
        entries = tuple((name, self.values[name], self.bindings.get(name)) for name in names)
        copyto, written = np.copyto, self.written

        def feed(feeds: Mapping[str, np.ndarray]) -> None:
            for name, buffer, binding in entries:
                arr = feeds[name]
                if binding is not None:
                    if arr is binding.bound:
                        continue
                    if binding.readable(arr, written):
                        binding.bind(arr)
                        continue
                    binding.release()
                copyto(buffer, arr, casting="same_kind")
        return feed
