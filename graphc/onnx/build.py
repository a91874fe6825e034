"""The builder export mappings write through (graphc/ops/record.py): ONNX nodes,
constants and runtime shapes, in the form of the opset asked for."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import SpecError
from ..shapes import ShapeError
from ..ir import Graph, invariant

REDUCE_AXES_INPUT = 18   # ReduceMean and ReduceMax read their axes from an input from here
DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
          "int64": TensorProto.INT64, "int32": TensorProto.INT32}


class Builder:
    """ONNX nodes and initializers for one graph; `values` maps each graphc value to the
    ONNX value holding it (None: no value, its readers recompute it)."""

    def __init__(self, graph: Graph, opset: int, dim_sources: Mapping[str, tuple]):
        self.graph, self.opset = graph, opset
        self.dtype = DTYPES[graph.dtype]
        self.np_dtype = np.dtype(graph.dtype)
        self.dim_sources = dict(dim_sources)    # symbolic dim -> (ONNX input, axis)
        self.nodes: list = []
        self.initializers: list = []
        self.values: dict = {}
        self.taken = set(graph.nodes)
        self.prefix = ""
        self._consts: dict = {}
        self._dims: dict = {}

    def fresh(self, base: str) -> str:
        name, k = base, 2
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def __call__(self, op_type: str, *inputs: str, **attrs) -> str:
        """One ONNX node of `op_type` over `inputs`; returns its output's name."""
        out = self.fresh(f"{self.prefix}{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def initializer(self, name: str, value: np.ndarray) -> str:
        self.taken.add(name)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def const(self, value, integer: bool = False) -> str:
        """A constant (the graph's float dtype, or int64), one initializer per value."""
        arr = np.asarray(value, dtype=np.int64 if integer else self.np_dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.initializer(self.fresh("const"), arr)
        return self._consts[key]

    def shape(self, name: str) -> tuple:
        """The graphc shape of graphc value `name`."""
        return self.graph[name].shape

    def count(self, x: str) -> str:
        """The number of elements of x, as a scalar of the graph's dtype."""
        return self("Cast", self("Size", x), to=self.dtype)

    def reduce(self, op_type: str, x: str, axes, keepdims: bool) -> str:
        """ReduceSum/ReduceMean/ReduceMax over `axes` (None: all of them; empty: none)."""
        keep = int(bool(keepdims))
        if axes is None:
            return self(op_type, x, keepdims=keep)
        if not len(axes):
            return self("Identity", x)
        if op_type == "ReduceSum" or self.opset >= REDUCE_AXES_INPUT:
            return self(op_type, x, self.const(list(axes), integer=True), keepdims=keep)
        return self(op_type, x, axes=list(axes), keepdims=keep)

    def dims(self, shape) -> str:
        """A graphc shape as a 1-D int64 tensor, symbolic dims read from the inputs."""
        if not len(shape):
            return self.const(np.zeros(0, np.int64), integer=True)
        parts = [self._dim(d) if isinstance(d, str) else self.const([d], integer=True)
                 for d in shape]
        return parts[0] if len(parts) == 1 else self("Concat", *parts, axis=0)

    def _dim(self, d: str) -> str:
        if d not in self._dims:
            invariant(d in self.dim_sources, f"ONNX export: no fed input has dim '{d}'")
            value, axis = self.dim_sources[d]
            prefix, self.prefix = self.prefix, f"dim/{d}/"
            self._dims[d] = self("Gather", self("Shape", value),
                                 self.const([axis], integer=True))
            self.prefix = prefix
        return self._dims[d]

    def lower(self, node) -> Optional[str]:
        """Write graphc node `node` through its record's mapping; its value gets the node's
        name where one ONNX node of this mapping made it."""
        from ..ops import OPS
        mapping = OPS[node.op].onnx
        if mapping is None:
            raise SpecError(f"op '{node.op}' has no ONNX mapping, so the model cannot be "
                            "exported", mark=node.mark, node=node.origin or node.name,
                            hint="docs/onnx.md lists the ops export maps")
        self.prefix, start = f"{node.name}/", len(self.nodes)
        try:
            value = mapping(self, node, *(self.values[i] for i in node.inputs))
        except ShapeError as exc:
            raise SpecError(f"op '{node.op}' cannot be exported: {exc}", mark=node.mark,
                            node=node.origin or node.name) from None
        if value is None:
            return None
        last = self.nodes[-1] if len(self.nodes) > start else None
        if last is not None and last.output[0] == value:
            last.output[0] = node.name
            last.name = node.name
            return node.name
        self.nodes.append(helper.make_node("Identity", [value], [node.name], name=node.name))
        return node.name
