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
from math import prod, sqrt
from dataclasses import dataclass, replace
from typing import Mapping, Optional

from . import shapes as S
from .errors import Mark, SpecError, did_you_mean, yaml_text
from .expr import NodeSpec
from .ops import OPS, family, written
from .ops.modal import channels
from .ops.sequence import normed_width

ACTIVATIONS = tuple(family("activations"))     # each record names the init dense picks


@dataclass(frozen=True)
class LayerParam:
    """A param (or state) a layer creates; the spec loader makes it a leaf of that kind."""
    name: str
    shape: tuple
    init: object
    mark: Optional[Mark] = None
    kind: str = "param"


def expand_layers(leaf_shapes: Mapping[str, tuple], nodes, expansions=None) -> tuple:
    """(params, nodes): each layer node replaced by the params and nodes it stands for,
    by `expansions` (op -> expansion(node, *input shapes); default: this module's).

    A layer whose input shapes cannot be inferred (a cycle, a shape mismatch upstream)
    stays as it is: building the IR then reports the cause at its own line. A layer with
    `share=NODE` creates no params: it reads those of the earlier layer NODE.
    """
    if not any(OPS[n.op].group == "layer" for n in nodes):
        return [], list(nodes)
    shapes = infer_shapes(leaf_shapes, nodes)
    params, out, made, shares = [], [], {}, {}    # shares: sharing layer -> the one named
    for n in nodes:
        if OPS[n.op].group == "layer" and all(i in shapes for i in n.inputs):
            share = n.attrs.get("share")
            if share:
                n = replace(n, attrs={**n.attrs, "share": share_owner(share, shares)})
            expand = (expansions or EXPANSIONS)[n.op]
            layer_params, layer_nodes = expand(n, *(shapes[i] for i in n.inputs))
            if share:
                _check_shared(n, layer_params, made)
                shares[n.name] = share
            else:
                _check_fresh(n, layer_params, leaf_shapes)
                params += layer_params
                made[n.name] = (n.op, layer_params)
            out += layer_nodes
        else:
            out.append(n)
    return params, out


def share_owner(share: str, shares: Mapping) -> str:
    """The node whose params a layer or block instance with `share=share` reads: `share`
    itself, or, where that one shares too, the one it reads from (`shares`: node -> the node
    its share names; s3 shares s2, s2 shares s1: s1)."""
    seen = set()
    while isinstance(share, str) and isinstance(shares.get(share), str) and share not in seen:
        seen.add(share)
        share = shares[share]
    return share


def check_float_inputs(nodes, integer: Mapping[str, str]) -> None:
    """SpecError at the first layer that reads one of the `integer` leaves (name -> dtype):
    said at the layer the user wrote, not at the matmul or layer_norm it expands into."""
    for n in nodes:
        bad = [(pos, i) for pos, i in enumerate(n.inputs) if i in integer]
        if OPS[n.op].group == "layer" and bad:
            pos, name = bad[0]
            raise SpecError(f"input {pos + 1} of the {written(n.op)} layer is '{name}' "
                            f"({integer[name]}), but must be floating-point values",
                            mark=n.mark, node=n.user_node,
                            hint=f"ids go through a table first: {written(n.op)}("
                                 f"embedding({name}, W), ...); numbers: declare {name} "
                                 "with dtype: float32")


def _check_shared(n: NodeSpec, wanted: list, made: Mapping) -> None:
    """A layer sharing `share`'s params: an earlier layer of the same op, whose params
    have the shapes this layer would have given its own."""
    share = n.attrs["share"]
    op, theirs = made.get(share, (None, ())) if isinstance(share, str) else (None, ())
    if op != n.op:
        raise SpecError(f"share={yaml_text(share, nested=True)} is not an earlier {n.op} "
                        "layer", mark=n.mark,
                        node=n.user_node, hint=f"name a {n.op} node written before this one, "
                        "whose params this layer then reads")
    shapes = {p.name: p.shape for p in theirs}
    for p in wanted:
        if shapes[p.name] != p.shape:
            raise SpecError(f"{n.op} shares the params of '{share}', but here '{p.name}' "
                            f"would be {S.fmt(p.shape)}, and it is {S.fmt(shapes[p.name])}",
                            mark=n.mark, node=n.user_node,
                            hint="a shared layer needs the same input widths and attributes")


def _check_fresh(n: NodeSpec, made: list, leaf_shapes: Mapping) -> None:
    """A layer's params are new names: a block instance named like the layer's node may
    already own `<instance>.W` (the block's param), which the layer must not replace."""
    for p in made:
        if p.name in leaf_shapes:
            raise SpecError(f"the {written(n.op)} layer creates the {p.kind} "
                            f"'{p.name}', but '{p.name}' is already declared", mark=n.mark,
                            node=n.user_node, hint="rename the block's param, or "
                            "make the layer a node that is not the block's output")


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
    if not x_shape or isinstance(x_shape[-1], str):
        raise SpecError(f"dense needs an input whose last dim is a fixed size, but '{x}' has "
                        f"shape {S.fmt(x_shape)}", mark=n.mark, node=n.user_node,
                        hint="reshape it first, e.g. reshape(x, shape=[batch, -1])")
    check_activation(n, "dense")
    init = n.attrs["init"] or (OPS[activation].layer_init if activation else "glorot_uniform")
    W, b = f"{n.name}.W", f"{n.name}.b"
    params = [LayerParam(W, (x_shape[-1], units), init, n.mark)]
    steps = [("matmul", (x, W), {})]
    if n.attrs["bias"]:
        params.append(LayerParam(b, (units,), "zeros", n.mark))
        steps.append(("add", (b,), {}))
    return params, _chain(n, steps)


def check_activation(n: NodeSpec, layer: str) -> None:
    """SpecError at n unless its `activation` attribute is None or an activation op."""
    activation = n.attrs["activation"]
    if activation is not None and activation not in ACTIVATIONS:
        raise SpecError(f"{layer} has no activation '{activation}'", mark=n.mark,
                        node=n.user_node,
                        hint=did_you_mean(str(activation), ACTIVATIONS) or
                        "activations: " + ", ".join(ACTIVATIONS))


def _chain(n: NodeSpec, steps: list) -> list:
    """The layer's nodes: each step reads the previous one, then the activation; the last
    node takes the layer's name, the others `<name>/<op>`."""
    activation = n.attrs["activation"]
    if activation is not None:
        steps = steps + [(activation, (), dict(OPS[activation].attrs))]
    nodes, prev = [], None
    for i, (op, inputs, attrs) in enumerate(steps):
        name = n.name if i == len(steps) - 1 else f"{n.name}/{op}"
        inputs = inputs if prev is None else (prev,) + inputs
        nodes.append(NodeSpec(name, op, inputs, attrs, n.mark))
        prev = name
    return nodes


def conv(n: NodeSpec, x_shape: tuple) -> tuple:
    """(params, nodes) of `activation(convNd(x, W, b, ...))` at node n; W [out_channels, C,
    *kernel], b [out_channels]. The default init of W is PyTorch-fanned (fan_in = C ·
    prod(kernel)): He normal before a relu-like activation, else Glorot uniform."""
    op = written(n.op)
    check_activation(n, op)
    try:
        OPS[n.op].infer([x_shape], n.attrs)
    except S.ShapeError as exc:
        raise SpecError(f"shape mismatch in {op}: {exc}", mark=n.mark,
                        node=n.user_node) from None
    x, out = n.inputs[0], n.attrs["out_channels"]
    shape = (out, x_shape[1]) + _kernel(n, len(x_shape) - 2)
    W, b = f"{n.name}.W", f"{n.name}.b"
    params = [LayerParam(W, shape, n.attrs["init"] or conv_init(shape, n.attrs["activation"]),
                         n.mark)]
    geometry = {k: n.attrs[k] for k in ("stride", "padding", "dilation")}
    inputs = (x, W)
    if n.attrs["bias"]:
        params.append(LayerParam(b, (out,), "zeros", n.mark))
        inputs += (b,)
    return params, _chain(n, [(op, inputs, geometry)])


def _kernel(n: NodeSpec, d: int) -> tuple:
    kernel = n.attrs["kernel"]
    return (kernel,) * d if S.is_int(kernel) else tuple(kernel)


def conv_init(shape: tuple, activation: Optional[str]) -> dict:
    """He normal (std sqrt(2 / fan_in)) for relu-like activations, else Glorot uniform, with
    PyTorch's fans of W [O, C, *kernel]: fan_in = C · prod(kernel), fan_out = O · prod(kernel)."""
    field = prod(shape[2:])
    fan_in, fan_out = shape[1] * field, shape[0] * field
    if activation and OPS[activation].layer_init == "he_normal":
        return {"normal": {"std": sqrt(2.0 / fan_in)}}
    bound = sqrt(6.0 / (fan_in + fan_out))
    return {"uniform": {"low": -bound, "high": bound}}


def batch_norm_layer(n: NodeSpec, x_shape: tuple) -> tuple:
    """(params and state, the node) of `batch_norm(x)` at node n, as PyTorch's BatchNorm
    starts: gamma = 1, beta = 0 (params), running_mean = 0, running_var = 1 (state), each
    [C] for the C channels on x's axis 1."""
    try:
        c = channels(x_shape)
    except S.ShapeError as exc:
        raise SpecError(str(exc), mark=n.mark, node=n.user_node) from None
    made = [LayerParam(f"{n.name}.{name}", (c,), init, n.mark, kind)
            for name, init, kind in (("gamma", "ones", "param"), ("beta", "zeros", "param"),
                                     ("running_mean", "zeros", "state"),
                                     ("running_var", "ones", "state"))]
    node = NodeSpec(n.name, "batch_norm", (n.inputs[0], *(p.name for p in made)),
                    dict(n.attrs), n.mark)
    return made, [node]


def layer_norm_layer(n: NodeSpec, x_shape: tuple) -> tuple:
    """(params, the node) of `layer_norm(x)` at node n, as PyTorch's LayerNorm(D) starts:
    gamma = 1 and beta = 0, each [D] for x's last dim D (a fixed size)."""
    try:
        width = normed_width(x_shape)
    except S.ShapeError as exc:
        raise SpecError(str(exc), mark=n.mark, node=n.user_node) from None
    made = [LayerParam(f"{n.name}.{name}", (width,), init, n.mark)
            for name, init in (("gamma", "ones"), ("beta", "zeros"))]
    node = NodeSpec(n.name, "layer_norm", (n.inputs[0], *(p.name for p in made)),
                    dict(n.attrs), n.mark)
    return made, [node]


EXPANSIONS = {"dense": dense, "conv1d_layer": conv, "conv2d_layer": conv,
              "batch_norm_layer": batch_norm_layer, "layer_norm_layer": layer_norm_layer}
