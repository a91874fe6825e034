"""Layers: spec-level ops that expand into their own params and plain forward ops.

`h: dense(x, units=N, activation=A)` becomes params `h.W` [in, N] and `h.b` [N]
and the nodes `h/matmul = x @ h.W`, `h/add = h/matmul + h.b`, `h = A(h/add)`;
`h: batch_norm(x)` becomes params `h.gamma`, `h.beta`, state `h.running_mean`,
`h.running_var` and the node `h = batch_norm(x, h.gamma, h.beta, ...)`.
The IR thus keeps one closed vocabulary: every op in it has a shape rule, a
gradient rule and a kernel, and a layer needs none of its own. `in` is the last
dim of x, found by running the ops' own shape rules over the spec's nodes.
"""
from __future__ import annotations

import graphlib
from dataclasses import dataclass
from typing import Mapping, Optional

from . import shapes as S
from .errors import Mark, SpecError, did_you_mean
from .expr import NodeSpec
from .ops import OPS, family
from .ops.modal import channels

ACTIVATIONS = tuple(family("activations"))     # each record names the init dense picks


@dataclass(frozen=True)
class LayerParam:
    """A param (or state) a layer creates; the spec loader makes it a leaf of that kind."""
    name: str
    shape: tuple
    init: object
    mark: Optional[Mark] = None
    kind: str = "param"


def expand_layers(leaf_shapes: Mapping[str, tuple], nodes) -> tuple:
    """(params, nodes): each layer node replaced by the params and nodes it stands for.

    A layer whose input shape cannot be inferred (a cycle, a shape mismatch upstream)
    stays as it is: building the IR then reports the cause at its own line.
    """
    if not any(OPS[n.op].group == "layer" for n in nodes):
        return [], list(nodes)
    shapes = infer_shapes(leaf_shapes, nodes)
    params, out = [], []
    for n in nodes:
        if OPS[n.op].group == "layer" and n.inputs[0] in shapes:
            layer_params, layer_nodes = LAYERS[n.op](n, shapes[n.inputs[0]])
            params += layer_params
            out += layer_nodes
        else:
            out.append(n)
    return params, out


def infer_shapes(leaf_shapes: Mapping[str, tuple], nodes) -> dict:
    """name -> shape by the ops' shape rules, in dependency order; unknown where they fail."""
    specs = {n.name: n for n in nodes}
    deps = {n.name: [i for i in n.inputs if i in specs] for n in nodes}
    shapes = dict(leaf_shapes)
    try:
        order = list(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError:
        return shapes
    for name in order:
        n = specs[name]
        ins = [shapes.get(i) for i in n.inputs]
        if n.op == "const":
            shapes[name] = ()
        elif all(s is not None for s in ins):
            try:
                shapes[name] = tuple(OPS[n.op].infer(ins, n.attrs))
            except S.ShapeError:
                pass
    return shapes


def dense(n: NodeSpec, x_shape: tuple) -> tuple:
    """(params, nodes) of `activation(x @ W + b)` at node n; W [in, units], b [units]."""
    units, activation, x = n.attrs["units"], n.attrs["activation"], n.inputs[0]
    user_node = n.name.split("/")[0]
    if not x_shape or isinstance(x_shape[-1], str):
        raise SpecError(f"dense needs an input whose last dim is a fixed size, but '{x}' has "
                        f"shape {S.fmt(x_shape)}", mark=n.mark, node=user_node,
                        hint="reshape it first, e.g. reshape(x, shape=[batch, -1])")
    if activation is not None and activation not in ACTIVATIONS:
        raise SpecError(f"dense has no activation '{activation}'", mark=n.mark, node=user_node,
                        hint=did_you_mean(str(activation), ACTIVATIONS) or
                        "activations: " + ", ".join(ACTIVATIONS))
    init = n.attrs["init"] or (OPS[activation].layer_init if activation else "glorot_uniform")
    W, b = f"{n.name}.W", f"{n.name}.b"
    params = [LayerParam(W, (x_shape[-1], units), init, n.mark)]
    steps = [("matmul", (x, W), {})]
    if n.attrs["bias"]:
        params.append(LayerParam(b, (units,), "zeros", n.mark))
        steps.append(("add", (b,), {}))
    if activation is not None:
        steps.append((activation, (), dict(OPS[activation].attrs)))
    nodes, prev = [], None
    for i, (op, inputs, attrs) in enumerate(steps):
        name = n.name if i == len(steps) - 1 else f"{n.name}/{op}"
        inputs = inputs if prev is None else (prev,) + inputs
        nodes.append(NodeSpec(name, op, inputs, attrs, n.mark))
        prev = name
    return params, nodes


def batch_norm_layer(n: NodeSpec, x_shape: tuple) -> tuple:
    """(params and state, the node) of `batch_norm(x)` at node n, as PyTorch's BatchNorm
    starts: gamma = 1, beta = 0 (params), running_mean = 0, running_var = 1 (state), each
    [C] for the C channels on x's axis 1."""
    user_node = n.name.split("/")[0]
    try:
        c = channels(x_shape)
    except S.ShapeError as exc:
        raise SpecError(str(exc), mark=n.mark, node=user_node) from None
    made = [LayerParam(f"{n.name}.{name}", (c,), init, n.mark, kind)
            for name, init, kind in (("gamma", "ones", "param"), ("beta", "zeros", "param"),
                                     ("running_mean", "zeros", "state"),
                                     ("running_var", "ones", "state"))]
    node = NodeSpec(n.name, "batch_norm", (n.inputs[0], *(p.name for p in made)),
                    dict(n.attrs), n.mark)
    return made, [node]


LAYERS = {"dense": dense, "batch_norm_layer": batch_norm_layer}
