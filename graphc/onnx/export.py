"""`graphc export`: a model's eval-mode forward graph (and with `with_grad` its reverse
graph, the gradients `graphc grad --mode eval` prints) as an ONNX model.

Graph inputs are the spec's fed inputs under their own names, with symbolic dims kept
as dim_params; the checkpoint's normalization, where training applied one, is written
into the graph (x' = (x - mean) / std), so the model takes raw samples as `predict`
does. Params, inputs given a value and constants are initializers. Outputs are the
spec's `outputs`; with `with_grad` also the loss (by its node's name) and the gradient
of every float leaf as `d:LEAF`, the labels then being inputs too.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autodiff import grad_graph
from ..errors import SpecError
from ..ir import Graph, VerifyError
from ..model import Model, differentiable_leaves
from ..predict import forward_graph
from . import DEFAULT_OPSET, LOWEST_OPSET
from .build import DTYPES, Builder

GRAD_PREFIX = "d:"       # output d:W holds d loss / d W


def opset_range() -> tuple:
    """The opsets export writes: LOWEST_OPSET up to the newest the onnx package knows."""
    return LOWEST_OPSET, onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    low, high = opset_range()
    if not low <= opset <= high:
        raise SpecError(f"--opset {opset} is outside the opsets graphc exports "
                        f"({low}..{high})", hint=f"graphc's op mappings use the forms of "
                        f"opset {low} (Softmax over one axis, axes as inputs); pick one of "
                        f"{low}..{high}, or leave --opset out for {DEFAULT_OPSET}")


def eval_graph(model: Model) -> Graph:
    """The eval-mode graph (contract §4): running statistics, dropout the identity; its
    reverse graph is `graphc grad --mode eval`'s."""
    return model.in_mode("eval").graph


def export_graph(graph: Graph, outputs: Sequence[str], wrt: Sequence[str]) -> tuple:
    """(graph to write, {output name: graphc value}, {output name: shape}) for the
    outputs, and where `wrt` names leaves, the loss and d:LEAF for each of them; the
    last maps the gradients that are zeros (no path to the loss) to their shapes, as
    `graphc grad` prints zeros for them."""
    named = {o: o for o in outputs}
    if not wrt:
        return forward_graph(graph, outputs), named, {}
    gg = grad_graph(graph, wrt)
    named[graph.loss] = graph.loss
    named.update({GRAD_PREFIX + w: gg.grads[w] for w in wrt if gg.grads[w] is not None})
    zeros = {GRAD_PREFIX + w: graph[w].shape for w in wrt if gg.grads[w] is None}
    return forward_graph(gg.graph, list(dict.fromkeys(named.values()))), named, zeros


def onnx_model(model: Model, stats: Mapping, outputs: Sequence[str], opset: int,
               with_grad: bool = False) -> onnx.ModelProto:
    """The ONNX model of a model's `outputs` (and with `with_grad` its gradients), both
    in eval mode whatever the model's mode."""
    model = model.in_mode("eval")
    wrt = differentiable_leaves(model) if with_grad else ()
    graph, named, zeros = export_graph(eval_graph(model), outputs, wrt)
    fed = [n for n in model.fed_inputs if n in graph.nodes]
    return graph_model(graph, named, fed, model.store, stats, opset, model.spec.name, zeros)


def graph_model(graph: Graph, named: Mapping[str, str], fed: Sequence[str],
                store: Mapping, stats: Mapping, opset: int, name: str,
                zeros: Mapping[str, tuple] = None) -> onnx.ModelProto:
    """`graph` as an ONNX model: `fed` inputs (normalized by `stats`), leaves' values from
    `store`, outputs `named` (output name -> graphc value) and `zeros` (output name ->
    the shape of zeros it holds); checked by onnx's checker."""
    check_opset(opset)
    sources = {d: (x, axis) for x in reversed(fed)
               for axis, d in enumerate(graph[x].shape) if isinstance(d, str)}
    b = Builder(graph, opset, sources)
    inputs = [_value_info(x, graph[x]) for x in fed]
    for node in graph.nodes.values():
        if node.name in fed:
            b.values[node.name] = _normalized(b, node, stats.get(node.name))
        elif node.is_leaf:
            b.values[node.name] = b.initializer(node.name, _leaf_value(store, node))
        else:
            b.values[node.name] = b.lower(node)
    outs = []
    for out, value in named.items():
        if b.values[value] != out:
            b.nodes.append(helper.make_node("Identity", [b.values[value]], [out], name=out))
        outs.append(_value_info(out, graph[value]))
    for out, shape in (zeros or {}).items():
        zero = numpy_helper.from_array(np.zeros(1, dtype=b.np_dtype))
        b.prefix = f"{out}/"
        b.nodes.append(helper.make_node("ConstantOfShape", [b.dims(shape)], [out], name=out,
                                        value=zero))
        outs.append(helper.make_tensor_value_info(out, b.dtype, list(shape)))
    nodes, initializers = _live(b.nodes, b.initializers, [o.name for o in outs])
    g = helper.make_graph(nodes, name, inputs, outs, initializers)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="graphc")
    _check(proto)
    return proto


def _live(nodes: list, initializers: list, outputs: Sequence[str]) -> tuple:
    """The nodes and initializers the outputs read: a saved value that only its op's
    gradient reads (conv's columns) is written only where the gradient is."""
    need, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    return keep[::-1], [i for i in initializers if i.name in need]


def _normalized(b: Builder, node, stats) -> str:
    """The fed input as the graph reads it: (x - mean) / std where training normalized."""
    if not stats:
        return node.name
    b.prefix = f"{node.name}/normalize/"
    mean, std = (np.asarray(stats[k], dtype=b.np_dtype) for k in ("mean", "std"))
    return b("Div", b("Sub", node.name, b.const(mean)), b.const(std))


def _leaf_value(store: Mapping, node) -> np.ndarray:
    """A param's, a given input's or a constant's value, in the node's dtype."""
    if node.name in store:
        return np.asarray(store[node.name], dtype=node.dtype)
    if node.op == "const":
        return np.full(node.attrs.get("shape", ()), node.attrs["value"], dtype=node.dtype)
    raise VerifyError(f"ONNX export: leaf '{node.name}' ({node.op}) has no value")


def _value_info(name: str, node):
    return helper.make_tensor_value_info(name, DTYPES[node.dtype], list(node.shape))


def _check(proto: onnx.ModelProto) -> None:
    """onnx's checker with shape inference: a failure is a bug in a mapping (exit 1)."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerifyError(f"ONNX export: the model fails onnx's checker ({exc}) (a bug in "
                          "graphc: please report it with the spec)") from None
