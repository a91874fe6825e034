"""The lecture's picture: the forward graph with values, gradients and local gradients.

As the CS231n slides draw it: on each node its value (green, forward pass) above
d loss / d node (red, backward pass); on each edge the local gradient d node / d input,
as a formula over the inputs and its value at this point. Where a value fans out, each
edge also carries its share of the gradient, and the node says its gradient is their sum.
"""
from __future__ import annotations

import html
from typing import Mapping, Optional

import numpy as np

from . import shapes as S
from .dot import Html, edge_line, node_line, quote
from .explain import (LocalGrads, all_values, display_name, edge_local, fmt_array, fmt_num,
                      multigraph)
from .ir import Graph

VALUE, GRAD, NOTE = "#1a7f37", "#cf222e", "#57606a"
INFIX = {"add": "+", "sub": "-", "mul": "×", "div": "/", "matmul": "@"}
LEAF_STYLE = {
    "input": {"shape": "box", "style": "filled", "fillcolor": "#f3f4f6"},
    "param": {"shape": "box", "style": "filled,bold", "fillcolor": "#ede9fe", "color": "#6d28d9"},
}


def value_lines(arr) -> list:
    """Scalars and small tensors in full; larger ones as mean, norm, min, max (shape apart)."""
    arr = np.asarray(arr)
    if arr.size <= 9:
        return [fmt_array(arr, full=9)]
    return [f"mean {fmt_num(arr.mean())}  norm {fmt_num(np.linalg.norm(arr))}",
            f"min {fmt_num(arr.min())}  max {fmt_num(arr.max())}"]


def _row(text: str, color: Optional[str] = None, size: Optional[int] = None,
         bold: bool = False) -> str:
    body = html.escape(text)
    if bold:
        body = f"<b>{body}</b>"
    if color or size:
        font = (f' color="{color}"' if color else "") + (f' point-size="{size}"' if size else "")
        body = f"<font{font}>{body}</font>"
    return f"<tr><td>{body}</td></tr>"


def expression(graph: Graph, name: str) -> str:
    """The node as its op over its inputs, constants by value: `q × z`, `exp(minus_z)`."""
    n = graph[name]
    if n.is_leaf:
        return n.op
    args = [display_name(graph, i) for i in n.inputs]
    if n.op in INFIX and len(args) == 2:
        return f"{args[0]} {INFIX[n.op]} {args[1]}"
    if n.op == "neg":
        return f"-{args[0]}"
    if n.op == "pow":
        return f"{args[0]} ** {n.attrs['exponent']:g}"
    extra = [f"{k}={v}" for k, v in n.attrs.items() if k != "shape" and v not in (None, False)]
    return f"{n.op}({', '.join(args + extra)})"


def _grad_label(graph: Graph, name: str, values: Mapping, grads: Mapping, uses: int) -> Html:
    value = np.asarray(values[name])
    rows = [_row(name, bold=True), _row(expression(graph, name), NOTE, 10)]
    if value.ndim:
        rows.append(_row(S.fmt(value.shape), NOTE, 10))
    rows += [_row(line, VALUE) for line in value_lines(value)]
    if name in grads:
        rows += [_row(line, GRAD) for line in value_lines(grads[name])]
        if uses > 1:
            rows.append(_row(f"Σ of {uses} uses (copy gate)", GRAD, 9))
    return Html('<table border="0" cellborder="0" cellspacing="0" cellpadding="1">'
                + "".join(rows) + "</table>")


def _edge_label(edge, values: Mapping, contribution) -> Html:
    lines = []
    shape = np.shape(values[edge.src])
    if shape:
        lines.append((S.fmt(shape), NOTE))
    local = f"∂{edge.dst}/∂{edge.src} = {edge.formula}"
    if edge.value is not None and np.size(edge.value) <= 9:
        shown = value_lines(edge.value)[0]
        if shown != edge.formula:     # "1 = 1" says nothing
            local += " = " + ("elementwise " if edge.kind == "diagonal" else "") + shown
    lines.append((local, NOTE))
    if contribution is not None:
        lines += [("grad share " + line, GRAD) for line in value_lines(contribution)[:1]]
    body = "<br/>".join(f'<font color="{c}">{html.escape(t)}</font>' for t, c in lines)
    return Html(body)


def grad_dot(model, feeds: Mapping) -> str:
    """The forward graph annotated with values, gradients and local gradients (lecture style)."""
    graph = model.graph
    result, values = all_values(model, feeds)
    grads = {**result.node_grads, **result.grads}
    vjps = LocalGrads(graph, values)
    mg = multigraph(graph)
    uses = {n: sum(1 for _, d, _ in mg.out_edges(n, keys=True)
                   if graph[d].op != "const") for n in graph.nodes}
    lines = [f"digraph {quote(model.spec.name)} {{", '  rankdir="LR"; nodesep="0.3";',
             f"  label={quote(_grad_title(model, graph))}; labelloc=\"t\"; fontsize=\"12\";",
             '  node [fontname="Helvetica", fontsize="11"];',
             '  edge [fontname="Helvetica", fontsize="10"];']
    shown = [n for n in graph.nodes.values() if n.role != "state"]   # not rng:key, updates
    for n in shown:
        if n.op == "const":
            continue
        style = LEAF_STYLE.get(n.op, {"shape": "ellipse"})
        if n.dtype.startswith("int"):
            style = {**style, "style": "dashed"}
        label = _grad_label(graph, n.name, values, grads, uses[n.name])
        lines.append(node_line(n.name, {**style, "label": label,
                                        "tooltip": f"{n.name}: {n.op}"}))
    for n in shown:
        for pos, x in enumerate(n.inputs):
            if graph[x].op == "const" or graph[x].role == "state" or \
                    graph[x].dtype.startswith("int") and n.name not in grads:
                continue
            lines.append(_grad_edge(graph, values, grads, vjps, x, n.name, pos, uses[x]))
    return "\n".join(lines + ["}"]) + "\n"


def _grad_edge(graph, values, grads, vjps, src, dst, pos, uses) -> str:
    shape = S.fmt(np.shape(values[src]))
    if graph[src].dtype.startswith("int") or dst not in grads:
        return edge_line(src, dst, {"label": shape, "tooltip": shape})
    edge = edge_local(graph, values, vjps, src, dst, pos)
    share = vjps.vjp(dst, pos, grads[dst]) if uses > 1 else None
    return edge_line(src, dst, {"label": _edge_label(edge, values, share), "tooltip": shape})


def _grad_title(model, graph: Graph) -> str:
    return (f"{model.spec.name}: value (green) and ∂{graph.loss}/∂node (red) on each node; "
            f"local gradient ∂node/∂input on each edge")
