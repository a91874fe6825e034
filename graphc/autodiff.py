"""Reverse-mode autodiff as an IR-to-IR pass: forward Graph in, forward+backward Graph out.

`VJP` is the one gradient table: `rule(emit, node, g)` returns one gradient
node name (or None) per input, in the *output's* broadcast shape. The driver
`grad_graph` alone sums fan-out contributions (the copy gate) and un-broadcasts
each contribution to its input's shape, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import networkx as nx

from . import shapes as S
from .errors import SpecError
from .ir import Graph, GraphBuilder, Node, schedule, verify_graph
from .ops import OPS

def _linear(*signs):
    """add/sub/neg/identity: the gradient passes through, negated where the sign is -1."""
    def rule(e, n, g):
        return tuple(g if s > 0 else e("neg", g) for s in signs)
    return rule


def _pair_loss(grad_op):
    """Losses of (pred - target): d/d target = -d/d pred."""
    return lambda e, n, g: (lambda d: (d, e("neg", d)))(e(grad_op, g, *n.inputs, **n.attrs))


def _div(e, n, g):
    a, b = n.inputs
    return e("div", g, b), e("neg", e("div", e("mul", g, n.name), b))


VJP = {
    "identity": _linear(1),
    "add": _linear(1, 1),
    "sub": _linear(1, -1),
    "neg": _linear(-1),
    "mul": lambda e, n, g: (e("mul", g, n.inputs[1]), e("mul", g, n.inputs[0])),
    "div": _div,
    "maximum": lambda e, n, g: (e("maximum_grad", g, *n.inputs),
                                e("maximum_grad", g, *reversed(n.inputs))),
    "pow": lambda e, n, g: (e("pow_grad", g, n.inputs[0], exponent=n.attrs["exponent"]),),
    "square": lambda e, n, g: (e("pow_grad", g, n.inputs[0], exponent=2.0),),
    "exp": lambda e, n, g: (e("mul", g, n.name),),
    "log": lambda e, n, g: (e("div", g, n.inputs[0]),),
    "relu": lambda e, n, g: (e("relu_grad", g, n.name),),
    "sigmoid": lambda e, n, g: (e("sigmoid_grad", g, n.name),),
    "tanh": lambda e, n, g: (e("tanh_grad", g, n.name),),
    "sum": lambda e, n, g: (e("expand", g, shape=e.shape(n.inputs[0]), **n.attrs),),
    "mean": lambda e, n, g: (e("expand", g, shape=e.shape(n.inputs[0]), mean=True,
                               **n.attrs),),
    "matmul": lambda e, n, g: (e("matmul_ga", g, n.inputs[1], shape=e.shape(n.inputs[0])),
                               e("matmul_gb", n.inputs[0], g, shape=e.shape(n.inputs[1]))),
    "mse": _pair_loss("mse_grad"),
    "softmax_cross_entropy": lambda e, n, g: (e("softmax_cross_entropy_grad", g, *n.inputs),
                                              None),
    "hinge": lambda e, n, g: (e("hinge_grad", g, *n.inputs),
                              e("hinge_grad", g, *reversed(n.inputs))),
}
VJP["dot"] = VJP["matmul"]


# --- the op catalog of issue 4 --------------------------------------------------------------
def _leaky_relu(e, n, g):
    alpha = n.attrs["alpha"]
    # for alpha >= 0, y > 0 exactly where x > 0: read the output, so x may be overwritten
    return (e("leaky_relu_grad", g, n.name if alpha >= 0 else n.inputs[0], alpha=alpha),)


def _elu(e, n, g):
    alpha = n.attrs["alpha"]
    output = alpha >= 0     # as for leaky_relu; then the slope alpha e^x is y + alpha
    return (e("elu_grad", g, n.name if output else n.inputs[0], alpha=alpha, output=output),)


def _transpose(e, n, g):
    axes = n.attrs["axes"]
    if axes is None:
        return (e("transpose", g, axes=None),)
    perm = S.permutation(axes, len(n.shape))
    return (e("transpose", g, axes=sorted(range(len(perm)), key=perm.__getitem__)),)


def _concat(e, n, g):
    """Each input's gradient is its own slice of g along the axis."""
    if len(n.inputs) == 1:
        return (g,)
    axis = S.normalize_axis(n.attrs["axis"], len(n.shape))[0]
    grads, start = [], 0
    for x in n.inputs:
        stop = start + e.shape(x)[axis]
        grads.append(e("slice", g, axis=axis, start=start, stop=stop))
        start = stop
    return tuple(grads)


def _bce(e, n, g):
    return tuple(e("binary_cross_entropy_with_logits_grad", g, *n.inputs, wrt=wrt)
                 for wrt in ("logits", "targets"))


VJP.update({
    # min(a, b)'s d/da is max's d/db: (a < b) + 1/2 where tied
    "minimum": lambda e, n, g: (e("maximum_grad", g, *reversed(n.inputs)),
                                e("maximum_grad", g, *n.inputs)),
    "abs": lambda e, n, g: (e("abs_grad", g, n.inputs[0]),),
    "sqrt": lambda e, n, g: (e("sqrt_grad", g, n.name),),
    "reciprocal": lambda e, n, g: (e("reciprocal_grad", g, n.name),),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "softplus": lambda e, n, g: (e("softplus_grad", g, n.name),),
    "silu": lambda e, n, g: (e("silu_grad", g, n.inputs[0]),),
    "gelu": lambda e, n, g: (e("gelu_grad", g, n.inputs[0]),),
    "amax": lambda e, n, g: (e("amax_grad", g, n.inputs[0], n.name, **n.attrs),),
    "transpose": _transpose,
    "reshape": lambda e, n, g: (e("reshape", g, shape=e.shape(n.inputs[0])),),
    "concat": _concat,
    "softmax": lambda e, n, g: (e("softmax_grad", g, n.name, **n.attrs),),
    "log_softmax": lambda e, n, g: (e("log_softmax_grad", g, n.name, **n.attrs),),
    "l1": _pair_loss("l1_grad"),
    "huber": _pair_loss("huber_grad"),
    "binary_cross_entropy_with_logits": _bce,
    "multiclass_hinge": lambda e, n, g: (e("multiclass_hinge_grad", g, *n.inputs, **n.attrs),
                                         None),
})


class _Emit:
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
    """Nodes on some path from a leaf in `wrt` to the loss: the only ones worth differentiating."""
    g = graph.digraph()
    upstream = nx.ancestors(g, graph.loss) | {graph.loss}
    downstream = set(wrt).union(*(nx.descendants(g, w) for w in wrt)) if wrt else set()
    return upstream & downstream


def grad_graph(graph: Graph, wrt, seed: Optional[str] = None) -> GradGraph:
    """Append the reverse graph of d loss / d each of `wrt` (leaves) to `graph`.

    The backward pass starts from d loss / d loss = 1, or from the scalar leaf `seed`:
    every gradient is then scaled by it (training folds the learning rate in this way).
    """
    b = GraphBuilder(graph.dtype, graph.nodes)
    emit = _Emit(b)
    need = path_nodes(graph, wrt)
    pending = {name: [] for name in need | {graph.loss}}   # no params: need is empty
    if seed is None:
        seed = b.fresh("d:" + graph.loss)
        b.nodes[seed] = Node(seed, "const", (), {"shape": (), "value": 1.0}, (), graph.dtype)
    pending[graph.loss].append(seed)
    totals = {}
    for node in reversed(list(graph.nodes.values())):
        if node.name not in need:
            continue
        if not pending[node.name]:
            continue    # on a path, but only through non-differentiable inputs (labels)
        emit.prefix, emit.mark = f"d:{node.name}/", node.mark
        g = totals[node.name] = _total(emit, node, pending[node.name])
        if node.is_leaf:
            continue
        for x, gx in zip(node.inputs, VJP[node.op](emit, node, g)):
            if gx is not None and x in need:
                pending[x].append(gx)
    live = _reachable(b.nodes, set(totals.values()))
    nodes = {k: v for k, v in b.nodes.items() if k in graph.nodes or k in live}
    out = schedule(Graph(nodes, graph.loss, graph.outputs, graph.dtype, graph.after))
    verify_graph(out)
    return GradGraph(out, {**totals, **{w: totals.get(w) for w in wrt}})


def _reachable(nodes: Mapping, roots: set) -> set:
    """Names the roots depend on: backward nodes outside this set are dead (e.g. d/d x
    of a matmul whose x is data) and are dropped."""
    seen, stack = set(), list(roots)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(nodes[n].inputs)
    return seen


def _total(emit: _Emit, node: Node, contributions: list) -> str:
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
