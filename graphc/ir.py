"""The IR: immutable nodes on a NetworkX DAG, with inferred shapes and a schedule.

`build_graph(spec)` proves the spec acyclic, infers every shape (symbolic dims
such as `batch` bound consistently) and orders the nodes deterministically.
`GraphBuilder` adds nodes with shape inference; autodiff and training reuse it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import networkx as nx

from . import shapes as S
from .errors import GraphcError, Mark, SpecError
from .ops import OPS


class VerifyError(GraphcError):
    """A stage-boundary verifier found a broken invariant: a bug in graphc, not in the
    spec (exit 1). Raised, never asserted, so `python -O` keeps the checks."""
    exit_code = 1


def invariant(ok: bool, message: str, node=None) -> None:
    """Raise VerifyError(message) at `node` (a Node: its spec line and user node) unless ok."""
    if not ok:
        raise VerifyError(f"{message} (a bug in graphc: please report it with the spec)",
                          mark=getattr(node, "mark", None),
                          node=getattr(node, "origin", None) or getattr(node, "name", None))


@dataclass(frozen=True)
class Node:
    """One value: `op` applied to `inputs`; `shape` may hold symbolic dims.

    Provenance, read instead of parsing names: `origin` is the spec node (or leaf) the
    node comes from, `mark` its place in the spec file; `role` is forward, gradient
    (the reverse graph), update (the optimizer) or state (optimizer state, the learning
    rate); a gradient node `differentiates` the forward node whose rule emitted it.
    """
    name: str
    op: str
    inputs: tuple
    attrs: Mapping = field(default_factory=dict, hash=False)
    shape: tuple = ()
    dtype: str = "float32"
    mark: Optional[Mark] = field(default=None, compare=False)
    origin: Optional[str] = field(default=None, compare=False)
    role: str = field(default="forward", compare=False)
    differentiates: Optional[str] = field(default=None, compare=False)

    @property
    def is_leaf(self) -> bool:
        return OPS[self.op].group == "leaf"


@dataclass(frozen=True)
class Graph:
    """Nodes in schedule order, the loss, the user's outputs and extra ordering edges.

    `after` holds (before, after) pairs beyond data edges: an optimizer update
    must follow every reader of the parameter it overwrites.
    """
    nodes: Mapping[str, Node]
    loss: str
    outputs: tuple = ()
    dtype: str = "float32"
    after: tuple = ()

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def leaves(self, op: Optional[str] = None) -> list:
        return [n for n in self.nodes.values() if n.is_leaf and (op is None or n.op == op)]

    def digraph(self) -> nx.DiGraph:
        """Data edges input -> node, plus the ordering edges in `after`."""
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        for n in self.nodes.values():
            g.add_edges_from((i, n.name) for i in n.inputs)
        g.add_edges_from(self.after)
        return g

    def consumers(self) -> dict:
        out = {name: [] for name in self.nodes}
        for n in self.nodes.values():
            for i in n.inputs:
                out[i].append(n.name)
        return out

    def dump(self) -> str:
        """A readable table: name, op, inputs, shape (torch.fx print_tabular style)."""
        rows = [("node", "op", "inputs", "shape", "dtype")]
        rows += [(n.name, n.op, ", ".join(n.inputs), S.fmt(n.shape), n.dtype)
                 for n in self.nodes.values()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                         for r in rows)


def node_error(node: Node, message: str, hint: Optional[str] = None, context=()) -> SpecError:
    """SpecError at the node's line, naming the user's node (not an anonymous sub-node)."""
    return SpecError(message, mark=node.mark, node=node.origin or node.name, hint=hint,
                     context=context)


class GraphBuilder:
    """Accumulates nodes, inferring each one's shape and dtype from its inputs."""

    def __init__(self, dtype: str, nodes: Mapping[str, Node] = ()):
        self.dtype = dtype
        self.nodes: dict = dict(nodes)
        self.provenance: dict = {}     # origin, role, differentiates of the nodes added next

    def fresh(self, base: str) -> str:
        name, k = base, 2
        while name in self.nodes:
            name, k = f"{base}_{k}", k + 1
        return name

    def add(self, name: str, op: str, inputs: Iterable[str], attrs: Mapping = None,
            mark: Optional[Mark] = None, dtype: Optional[str] = None) -> str:
        """Add a node; ShapeError becomes a SpecError naming the inputs and their shapes.

        An op that `saves` a value for its gradient, given the user's inputs, gets that
        value as a node of its own (`<name>/saved`, with the attributes the saved op
        declares) and as its last input; inputs that already end with that value are kept
        as they are.
        """
        inputs, attrs = tuple(inputs), dict(attrs or {})
        where = {"origin": name, **self.provenance}
        shape = self._infer(name, op, op, inputs, attrs, mark, where["origin"])
        saves = OPS[op].saves
        if saves and not (inputs and self.nodes[inputs[-1]].op == saves):
            saved = self.fresh(f"{name}/saved")
            shared = {k: v for k, v in attrs.items() if k in OPS[saves].attrs}
            self.nodes[saved] = Node(saved, saves, inputs, shared,
                                     self._infer(name, op, saves, inputs, shared, mark,
                                                 where["origin"]),
                                     dtype or self.dtype, mark, **where)
            inputs += (saved,)
        self.nodes[name] = Node(name, op, inputs, attrs, shape, dtype or self.dtype, mark,
                                **where)
        return name

    def _infer(self, name: str, user_op: str, op: str, inputs: tuple, attrs: dict,
               mark: Optional[Mark], origin: str) -> tuple:
        """The shape of `op` over `inputs`, checked: integer labels where the op takes them,
        floats elsewhere; errors speak of `user_op`, the op the user wrote."""
        opdef, in_nodes = OPS[op], [self.nodes[i] for i in inputs]
        probe = Node(name, user_op, inputs, attrs, (), self.dtype, mark, origin)
        for pos, n in enumerate(in_nodes):
            is_int = n.dtype.startswith("int")
            if is_int != (pos in opdef.labels):
                want, declare = (("integer class labels", "int64") if pos in opdef.labels
                                 else ("floating-point values", "float32"))
                raise node_error(probe, f"input {pos + 1} of {user_op} is '{n.name}' "
                                        f"({n.dtype}), but must be {want}",
                                 hint=f"declare {n.name} with dtype: {declare}")
        try:
            return tuple(opdef.infer([n.shape for n in in_nodes], attrs))
        except S.ShapeError as exc:
            context = [f"{n.name}: {S.fmt(n.shape)}" for n in in_nodes]
            raise node_error(probe, f"shape mismatch in {user_op}: {exc}",
                             context=context) from None

    def graph(self, loss: str, outputs=(), after=()) -> Graph:
        return Graph(dict(self.nodes), loss, tuple(outputs), self.dtype, tuple(after))


def toposort(graph: Graph) -> Graph:
    """The same graph with nodes in a deterministic topological order (ties: current order)."""
    order = {name: i for i, name in enumerate(graph.nodes)}
    g = graph.digraph()
    names = nx.lexicographical_topological_sort(g, key=order.__getitem__)
    return Graph({n: graph.nodes[n] for n in names}, graph.loss, graph.outputs,
                 graph.dtype, graph.after)


def _check_acyclic(g: nx.DiGraph, node_specs: dict):
    """SpecError naming the first cycle of `g` (the spec's nodes) by the user's nodes."""
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return
    users = []                          # the user's nodes, anonymous sub-nodes folded in
    for u, _ in cycle:
        user = u.split("/")[0]
        if not users or users[-1] != user:
            users.append(user)
    if len(users) > 1 and users[-1] == users[0]:
        users.pop()
    order = list(node_specs)
    start = min(range(len(users)), key=lambda i: order.index(users[i]))
    users = users[start:] + users[:start]      # start where the file does: a -> b -> a
    lines = [f"{u} (line {node_specs[u].mark.line})" for u in users if node_specs[u].mark]
    raise SpecError("cycle: " + " -> ".join(users + users[:1]), mark=node_specs[users[0]].mark,
                    node=users[0], context=lines,
                    hint="a spec is a DAG: one of these nodes must not depend on the others")


def build_graph(spec) -> Graph:
    """Spec -> scheduled Graph with every shape inferred; the loss must be a scalar."""
    b = GraphBuilder(spec.dtype)
    for leaf in spec.leaves.values():
        b.nodes[leaf.name] = Node(leaf.name, leaf.kind, (), {"shape": leaf.shape},
                                  leaf.shape, leaf.dtype, leaf.mark, leaf.name)
    node_specs = {n.name: n for n in spec.nodes}
    g = nx.DiGraph()
    g.add_nodes_from(node_specs)
    for n in spec.nodes:
        g.add_edges_from((i, n.name) for i in n.inputs if i in node_specs)
    _check_acyclic(g, node_specs)
    order = {name: i for i, name in enumerate(node_specs)}
    for name in nx.lexicographical_topological_sort(g, key=order.__getitem__):
        n = node_specs[name]
        # expr.py names a sub-expression of node `h` `h/<op>`: its origin is `h`
        origin = name.split("/")[0]
        if n.op == "const":
            b.nodes[name] = Node(name, "const", (), n.attrs, (), spec.dtype, n.mark, origin)
        else:
            b.provenance = {"origin": origin}
            b.add(name, n.op, n.inputs, n.attrs, n.mark)
    graph = toposort(b.graph(spec.loss, spec.outputs))
    loss = graph[spec.loss]
    if loss.shape != ():
        raise node_error(loss, f"the loss must be a scalar, but '{loss.name}' has shape "
                               f"{S.fmt(loss.shape)}", hint="wrap the loss in mean(...) or sum(...)")
    verify_graph(graph)
    return graph


def verify_graph(graph: Graph) -> None:
    """Stage-boundary check: inputs defined earlier, shapes re-infer, attrs complete."""
    seen = set()
    for n in graph.nodes.values():
        for i in n.inputs:
            invariant(i in seen, f"IR verifier: {n.name} reads {i} before it is computed", n)
        missing = set(OPS[n.op].attrs) - set(n.attrs)
        invariant(not missing, f"IR verifier: {n.name} ({n.op}) lacks attrs {sorted(missing)}",
                  n)
        if not n.is_leaf and n.op != "const":
            shape = tuple(OPS[n.op].infer([graph[i].shape for i in n.inputs], n.attrs))
            invariant(shape == n.shape, f"IR verifier: {n.name} ({n.op}) has shape "
                                        f"{S.fmt(n.shape)}, its inputs give {S.fmt(shape)}", n)
        seen.add(n.name)
    invariant(graph.loss in graph.nodes, f"IR verifier: the loss '{graph.loss}' is no node")
