"""`graphc import`: an ONNX model (the MLP and CNN subset, as PyTorch's exporters write
it) as a graphc spec and a parameter file.

Initializers become params (a weight that a Gemm with transB=1 or a Transpose reads is
stored transposed, so the spec says `x @ W`), Constant nodes become inputs given a
value, graph inputs stay inputs under their names (symbolic dims kept), and each node
becomes one explicit `{op: NAME, inputs: [...]}` node through `IMPORTERS`
(graphc/onnx/import_ops.py). A loss is added so the spec trains: softmax cross-entropy
against integer `labels` for an output of several classes (read before a final
Softmax), mean squared error against `targets` otherwise.
"""
from __future__ import annotations

import keyword
import re
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..checkpoint import nonfinite
from ..errors import SpecError
from .build import DTYPES

FLOAT_TYPES = {v: k for k, v in DTYPES.items()}


def identifier(text: str) -> str:
    """An ONNX value name as a graphc name: `/fc1/Gemm_output_0` -> `fc1_Gemm`,
    `0.weight` -> `p0_weight`."""
    text = re.sub(r"_output_\d+", "", text)
    name = re.sub(r"\W+", "_", text, flags=re.ASCII).strip("_") or "v"
    if name[0].isdigit():
        name = "p" + name
    return name + "_" if keyword.iskeyword(name) else name


class Reader:
    """ONNX values -> graphc names, and the spec's leaves and nodes as they are read."""

    def __init__(self, model: onnx.ModelProto, source: str):
        self.source, self.graph = source, model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.weights = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.rename: dict = {}       # a folded (transposed) weight -> the name it came from
        self.constants: dict = {}    # Constant node outputs
        self.names: dict = {}        # ONNX value -> graphc name
        self.taken: set = set()
        self.inputs: dict = {}
        self.params: dict = {}
        self.nodes: dict = {}
        self.node = None             # the ONNX node being read, for errors
        self.shapes = _shapes(model)
        self.batch = "batch"         # the first input's first dim (Reshape's leading 0)

    def fresh(self, base: str) -> str:
        name, k = identifier(base), 2
        stem = name
        while name in self.taken:
            name, k = f"{stem}_{k}", k + 1
        self.taken.add(name)
        return name

    def error(self, message: str, hint: Optional[str] = None) -> SpecError:
        where = f"node '{self.node.name or self.node.output[0]}' ({self.node.op_type}): " \
            if self.node is not None else ""
        return SpecError(f"{self.source}: {where}{message}", hint=hint)

    def value(self, onnx_name: str) -> str:
        """The graphc name of an ONNX value; a weight becomes a param on first use."""
        if onnx_name in self.names:
            return self.names[onnx_name]
        if onnx_name in self.weights:
            arr = self.weights[onnx_name]
            if arr.dtype.kind != "f":
                raise self.error(f"'{onnx_name}' holds {arr.dtype} values where graphc reads "
                                 "a tensor", hint="graphc's params are floating-point")
            bad = nonfinite(arr)
            if bad:             # else a checkpoint that every command then refuses
                raise self.error(f"weight '{onnx_name}' holds {bad}",
                                 hint="export the model from weights that are finite numbers")
            name = self.fresh(self.rename.get(onnx_name, onnx_name))
            self.params[name] = arr
        elif onnx_name in self.constants:
            name = self.fresh(onnx_name)
            self.inputs[name] = {"value": self.constants[onnx_name].tolist()}
        else:
            raise self.error(f"reads '{onnx_name}', which no node or input defines")
        self.names[onnx_name] = name
        return name

    def const(self, onnx_name: str) -> np.ndarray:
        """The value of a weight or Constant that an op reads as a setting (a shape)."""
        for table in (self.weights, self.constants):
            if onnx_name in table:
                return table[onnx_name]
        raise self.error(f"input '{onnx_name}' must be a constant",
                         hint="graphc reads shapes and axes as fixed settings")

    def emit(self, onnx_out: str, op: str, inputs, **attrs) -> str:
        """One graphc node for the ONNX value `onnx_out`."""
        name = self.fresh(onnx_out)
        self.nodes[name] = {"op": op, "inputs": list(inputs), **attrs}
        self.names[onnx_out] = name
        return name

    def fold(self, onnx_out: str, source: str, arr: np.ndarray) -> None:
        """`onnx_out` is a weight computed at import (a transposed weight), named after
        `source`."""
        self.weights[onnx_out] = np.ascontiguousarray(arr)
        self.rename[onnx_out] = self.rename.get(source, source)

    def rank(self, onnx_name: str) -> int:
        if onnx_name in self.weights:
            return self.weights[onnx_name].ndim
        if onnx_name not in self.shapes:
            raise self.error(f"the rank of '{onnx_name}' is unknown (onnx's shape inference "
                             "found none)")
        return len(self.shapes[onnx_name])


def _shapes(model: onnx.ModelProto) -> dict:
    """Value name -> shape (ints, dim_param names, None where unknown), from onnx's shape
    inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + \
        list(inferred.graph.output)
    return {v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in v.type.tensor_type.shape.dim]
            for v in infos if v.type.tensor_type.HasField("shape")}


def input_leaf(reader: Reader, value) -> dict:
    """A graph input as a spec input: its shape (dim_params as symbolic dims, an unnamed
    first dim as `batch`) and its dtype."""
    t = value.type.tensor_type
    if t.elem_type not in FLOAT_TYPES:
        raise reader.error(f"input '{value.name}' has ONNX element type "
                           f"{onnx.TensorProto.DataType.Name(t.elem_type)}",
                           hint="graphc reads float32, float64 and int64 inputs")
    shape = []
    for axis, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.dim_param or axis == 0:
            shape.append(identifier(d.dim_param) if d.dim_param else "batch")
        else:
            raise reader.error(f"input '{value.name}' has an unnamed dim at axis {axis}",
                               hint="export the model with fixed sizes or named dims")
    dtype = FLOAT_TYPES[t.elem_type]
    return {"shape": shape, "dtype": dtype} if dtype == "int64" else shape


def load(path, shown: str) -> onnx.ModelProto:
    """The ONNX model at `path`, checked by onnx's checker; a SpecError if it is none."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (OSError, onnx.checker.ValidationError) as exc:
        raise SpecError(f"{shown} is not a valid ONNX model ({exc})".splitlines()[0],
                        hint="pass a .onnx file that onnx.checker accepts") from None
    except Exception as exc:          # protobuf's DecodeError and kin: not an ONNX file
        raise SpecError(f"{shown} is not an ONNX model ({type(exc).__name__})",
                        hint="pass a .onnx file written by an ONNX exporter") from None
    return model


def read_onnx(path, shown: str, name: str) -> tuple:
    """(spec as a dict, params by name) for the ONNX model at `path`."""
    from .import_ops import IMPORTERS
    model = load(path, shown)
    r = Reader(model, shown)
    for value in model.graph.input:
        if value.name not in r.weights:        # old exporters list initializers as inputs
            r.names[value.name] = r.fresh(value.name)
            r.inputs[r.names[value.name]] = input_leaf(r, value)
    first = next(iter(r.inputs.values()), [])
    first = first["shape"] if isinstance(first, dict) else first
    r.batch = first[0] if first and isinstance(first[0], str) else "batch"
    for node in model.graph.node:
        r.node = node
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            r.constants[node.output[0]] = numpy_helper.to_array(attrs["value"])
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in IMPORTERS:
            raise r.error("graphc cannot import this op", hint="graphc imports "
                          + ", ".join(sorted(IMPORTERS)) + " (docs/onnx.md)")
        IMPORTERS[node.op_type](r, node, attrs)
    r.node = None
    if not model.graph.output:
        raise SpecError(f"{shown}: the model lists no outputs, so there is nothing to predict "
                        "and no loss to add", hint="export the model with its outputs")
    outputs = [r.value(o.name) for o in model.graph.output]
    loss = add_loss(r, outputs[0], model.graph.output[0].name)
    spec = {"graphc": 1, "name": name, "dtype": _dtype(r), "inputs": r.inputs,
            "params": {k: list(v.shape) for k, v in r.params.items()},
            "nodes": r.nodes, "loss": loss, "outputs": outputs}
    return spec, r.params


def _dtype(r: Reader) -> str:
    kinds = {str(v.dtype) for v in r.params.values()}
    return "float64" if kinds == {"float64"} else "float32"


def add_loss(r: Reader, out: str, onnx_out: str) -> str:
    """A loss on the first output so the spec trains: softmax cross-entropy against int
    `labels` for [batch, classes] scores (the logits before a final softmax), binary
    cross-entropy on the logit before a final sigmoid of one column, else mean squared
    error against `targets` of the output's shape."""
    shape = [d if d is not None else (r.batch if axis == 0 else None)
             for axis, d in enumerate(r.shapes.get(onnx_out, []))]
    if not shape or None in shape:
        raise SpecError(f"{r.source}: the shape of output '{onnx_out}' is unknown, so no "
                        "loss can be added", hint="export the model with named or fixed dims")
    shape = [identifier(d) if isinstance(d, str) else d for d in shape]
    node = r.nodes.get(out, {})
    before = node.get("inputs", [None])[0]
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1:
        logits = before if node.get("op") == "softmax" else out
        labels = r.fresh("labels")
        r.inputs[labels] = {"shape": shape[:1], "dtype": "int64"}
        return r.emit("loss", "softmax_cross_entropy", [logits, labels])
    targets = r.fresh("targets")
    r.inputs[targets] = shape
    if node.get("op") == "sigmoid":
        return r.emit("loss", "binary_cross_entropy_with_logits", [before, targets])
    return r.emit("loss", "mse", [out, targets])


def spec_text(spec: dict, source: str) -> str:
    """The spec as YAML: leaves and nodes one a line."""
    import yaml
    head = (f"# imported by `graphc import` from {source};\n# params in {spec['name']}"
            ".ckpt.npz beside this file. The loss was added so the spec trains:\n# check "
            "its labels or targets, and add a train: section (docs/onnx.md).\n")
    body = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=100)
    return head + body
