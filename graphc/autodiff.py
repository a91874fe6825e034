"""Reverse-mode autodiff as an IR-to-IR pass: forward Graph in, forward+backward Graph out.

Gradient rules live in the op records (`OPS[op].vjp`, graphc/ops/): `rule(emit,
node, g)` returns one gradient node name (or None) per input, in the *output's*
broadcast shape. This module is the driver: `grad_graph` alone sums fan-out
contributions (the copy gate) and un-broadcasts each contribution to its input's
shape, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import SpecError
from .ir import Graph, GraphBuilder, Node, toposort, verify_graph
from .topo import reach
from .limits import paused_gc
from .ops import OPS


class Emit:
    """`emit(op, *inputs, **attrs)`: add a backward node named after the forward one."""

    def __init__(self, builder: GraphBuilder):
        self.b = builder
        self.prefix = "d:"
        self.mark = None

    def shape(self, name: str) -> tuple:
        return self.b.nodes[name].shape

    def __call__(self, op: str, *inputs: str, **attrs) -> str:
        attrs = {**OPS[op].attrs, **attrs}
        return self.b.add(self.b.fresh(f"{self.prefix}{op}"), op, inputs, attrs, self.mark)


@dataclass(frozen=True)
class GradGraph:
    """The forward+backward graph; `grads[v]` names the node holding d loss / d v."""
    graph: Graph
    grads: Mapping[str, Optional[str]]


def path_nodes(graph: Graph, wrt) -> set:
    """Nodes on some path from a leaf in `wrt` to the loss: the only ones worth differentiating.
    One sweep up from the loss and one down from all of `wrt` together: O(nodes + edges)."""
    preds = graph.predecessors()
    later = {name: [] for name in preds}
    for name, before in preds.items():
        for p in before:
            later[p].append(name)
    return reach(preds, [graph.loss]) & reach(later, wrt)


@paused_gc
def grad_graph(graph: Graph, wrt, seed: Optional[str] = None) -> GradGraph:
    """Append the reverse graph of d loss / d each of `wrt` (leaves) to `graph`, a
    forward graph verified before (build_graph's, or by verify_graph): the verifier
    checks the new nodes alone.

    The backward pass starts from d loss / d loss = 1, or from the scalar leaf `seed`:
    every gradient is then scaled by it (training folds the learning rate in this way).
    """
    b = GraphBuilder(graph.dtype, graph.nodes)
    emit = Emit(b)
    need = path_nodes(graph, wrt)
    pending = {name: [] for name in need | {graph.loss}}   # no params: need is empty
    if seed is None:
        seed = b.fresh("d:" + graph.loss)
        loss = graph[graph.loss]
        b.nodes[seed] = Node(seed, "const", (), {"shape": (), "value": 1.0}, (), graph.dtype,
                             loss.mark, loss.origin, "gradient", loss.name)
    pending[graph.loss].append(seed)
    totals = {}
    for node in reversed(list(graph.nodes.values())):
        if node.name not in need:
            continue
        if not pending[node.name]:
            continue    # on a path, but only through non-differentiable inputs (labels)
        emit.prefix, emit.mark = f"d:{node.name}/", node.mark
        b.provenance = {"origin": node.origin, "role": "gradient", "differentiates": node.name}
        g = totals[node.name] = _total(emit, node, pending[node.name])
        if node.is_leaf:
            continue
        for x, gx in zip(node.inputs, OPS[node.op].vjp(emit, node, g)):
            if gx is not None and x in need:
                pending[x].append(gx)
    # backward nodes no total depends on are dead (d/d x of a matmul whose x is data)
    live = reach({k: n.inputs for k, n in b.nodes.items() if k not in graph.nodes},
                 set(totals.values()))         # stops at forward nodes: all of them stay
    nodes = {k: v for k, v in b.nodes.items() if k in graph.nodes or k in live}
    out = toposort(Graph(nodes, graph.loss, graph.outputs, graph.dtype, graph.after))
    verify_graph(out, trusted=graph)
    return GradGraph(out, {**totals, **{w: totals.get(w) for w in wrt}})


def _total(emit: Emit, node: Node, contributions: list) -> str:
    """Sum the fan-out contributions, each first un-broadcast to the node's shape."""
    parts = [c if emit.shape(c) == node.shape else emit("sum_to", c, shape=node.shape)
             for c in contributions]
    total = parts[0]
    for c in parts[1:]:
        total = emit("add", total, c)
    return total


def trained_params(graph: Graph) -> list:
    return [n.name for n in graph.leaves("param")]


def check_params_reach_loss(graph: Graph, grads: Mapping) -> None:
    """A parameter with no path to the loss is an error, never a silent zero gradient."""
    for p in trained_params(graph):
        if grads.get(p) is None:
            n = graph[p]
            raise SpecError(f"parameter '{p}' does not affect the loss '{graph.loss}'",
                            mark=n.mark, node=p,
                            hint="use it in a node the loss depends on, or remove it")
