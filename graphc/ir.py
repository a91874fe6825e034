"""The IR: immutable nodes on a NetworkX DAG, with inferred shapes and a schedule.

`build_graph(spec)` proves the spec acyclic, infers every shape (symbolic dims
such as `batch` bound consistently) and orders the nodes deterministically.
`GraphBuilder` adds nodes with shape inference; autodiff and training reuse it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, Optional

from . import shapes as S
from .errors import GraphcError, Mark, SpecError
from .limits import paused_gc
from .ops import OPS
from .ops.modal import stream
from .ops.record import MODES
from .topo import topological_order

RNG_KEY = "rng:key"     # int64 [train seed, step]: the trainer writes it before each step

if TYPE_CHECKING:      # NetworkX loads only for the pictures and the cycle path: ~0.2 s
    import networkx as nx


class VerifyError(GraphcError):
    """A stage-boundary verifier found a broken invariant: a bug in graphc, not in the
    spec (exit 1). Raised, never asserted, so `python -O` keeps the checks."""
    exit_code = 1


def invariant(ok: bool, message: str, node=None) -> None:
    """Raise VerifyError(message) at `node` (a Node: its spec line and user node) unless ok."""
    if not ok:
        broken(message, node)


def broken(message: str, node=None):
    """Raise VerifyError(message) at `node`: for a check in a loop over every node, whose
    message is worth formatting only once it fails."""
    raise VerifyError(f"{message} (a bug in graphc: please report it with the spec)",
                      mark=getattr(node, "mark", None),
                      node=getattr(node, "origin", None) or getattr(node, "name", None))


@dataclass(frozen=True)
class Node:
    """One value: `op` applied to `inputs`; `shape` may hold symbolic dims.

    Provenance, read instead of parsing names: `origin` is the spec node (or leaf) the
    node comes from, `mark` its place in the spec file; `role` is forward, gradient
    (the reverse graph), update (the optimizer) or state (optimizer state, the learning
    rate, the generator key, an op's state update such as batch_norm's); a gradient node
    `differentiates` the forward node whose rule emitted it.
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
        return [n for n in self.nodes.values() if (op is None or n.op == op) and n.is_leaf]

    def predecessors(self) -> dict:
        """name -> the nodes it must follow: its data inputs, then its `after` edges."""
        preds = {name: list(n.inputs) for name, n in self.nodes.items()}
        for before, later in self.after:
            preds[later].append(before)
        return preds

    def digraph(self) -> nx.DiGraph:
        """Data edges input -> node, plus the ordering edges in `after`."""
        import networkx as nx
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        for n in self.nodes.values():
            g.add_edges_from((i, n.name) for i in n.inputs)
        g.add_edges_from(self.after)
        return g

    def consumers(self, names: Optional[Iterable[str]] = None) -> dict:
        """name -> the nodes that read it, for `names` (default: every node)."""
        out = {name: [] for name in (self.nodes if names is None else names)}
        for n in self.nodes.values():
            for i in n.inputs:
                if i in out:
                    out[i].append(n.name)
        return out

    def dump(self) -> str:
        """A readable table: name, op, inputs, shape (torch.fx print_tabular style)."""
        rows = [("node", "op", "inputs", "shape", "dtype")]
        nodes = self.nodes.values()
        rows += [(n.name, n.op, ", ".join(n.inputs), shape, n.dtype)
                 for n, shape in zip(nodes, S.fmt_all(n.shape for n in nodes))]
        return "\n".join(S.aligned(rows))


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
        as they are. Given the user's inputs, a `random` op gets the generator key
        `rng:key` as its last input and its own `stream`, and an op that `updates` state
        gets its state update `<name>/update` (role state) after it.
        """
        inputs, attrs, opdef = tuple(inputs), dict(attrs or {}), OPS[op]
        where = {"origin": name, **self.provenance}
        user_form = len(inputs) == opdef.arity
        if opdef.random:
            inputs += (self._rng_key(),) if user_form else ()
            attrs.setdefault("stream", stream(name))
        shape = self._infer(name, op, op, inputs, attrs, mark, where["origin"])
        saves = opdef.saves
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
        if opdef.updates and user_form:
            self._state_update(name, opdef.updates, inputs, attrs, mark, where["origin"])
        return name

    def _rng_key(self) -> str:
        """The scalar-pair leaf `rng:key` (int64 [seed, step]) that random ops read."""
        if RNG_KEY not in self.nodes:
            self.nodes[RNG_KEY] = Node(RNG_KEY, "hyper", (), {"shape": (2,)}, (2,), "int64",
                                       origin=RNG_KEY, role="state")
        return RNG_KEY

    def _state_update(self, name: str, op: str, inputs: tuple, attrs: dict,
                      mark: Optional[Mark], origin: str) -> None:
        """`<name>/update`: `op` over the node's inputs, writing its state leaves in place."""
        update = self.fresh(f"{name}/update")
        kept = {k: v for k, v in attrs.items() if k in OPS[op].attrs}
        shape = self._infer(update, op, op, inputs, kept, mark, origin)
        self.nodes[update] = Node(update, op, inputs, kept, shape, self.dtype, mark,
                                  origin, "state")

    def _infer(self, name: str, user_op: str, op: str, inputs: tuple, attrs: dict,
               mark: Optional[Mark], origin: str) -> tuple:
        """The shape of `op` over `inputs`, checked: integer labels where the op takes them,
        floats elsewhere; errors speak of `user_op`, the op the user wrote."""
        opdef, nodes = OPS[op], self.nodes
        in_nodes = [nodes[i] for i in inputs]
        def probe() -> Node:        # the node as the user wrote it: built for an error only
            return Node(name, user_op, inputs, attrs, (), self.dtype, mark, origin)
        for pos, n in enumerate(in_nodes):
            is_int = n.dtype.startswith("int")
            is_key = opdef.random and pos == opdef.arity
            if is_int != (pos in opdef.labels or is_key):
                want, declare = ((f"integer {opdef.labels_are}", "int64") if pos in opdef.labels
                                 else ("floating-point values", "float32"))
                raise node_error(probe(), f"input {pos + 1} of {user_op} is '{n.name}' "
                                        f"({n.dtype}), but must be {want}",
                                 hint=f"declare {n.name} with dtype: {declare}")
        try:
            return tuple(opdef.infer([n.shape for n in in_nodes], attrs))
        except S.ShapeError as exc:
            context = [f"{n.name}: {S.fmt(n.shape)}" for n in in_nodes]
            raise node_error(probe(), f"shape mismatch in {user_op}: {exc}",
                             context=context) from None

    def graph(self, loss: str, outputs=(), after=()) -> Graph:
        return Graph(dict(self.nodes), loss, tuple(outputs), self.dtype, tuple(after))


def _in_order(graph: Graph) -> bool:
    """Does every node come after its inputs and the nodes it must follow (`after`)?"""
    seen = set()
    for name, n in graph.nodes.items():
        if not seen.issuperset(n.inputs):
            return False
        seen.add(name)
    position = {name: i for i, name in enumerate(graph.nodes)} if graph.after else {}
    end = len(position)     # a `before` that is no node never ran; a missing `later` never runs
    return all(position.get(before, end) < position.get(later, end + 1)
               for before, later in graph.after)


def toposort(graph: Graph) -> Graph:
    """The same graph with nodes in a deterministic topological order (ties: current order).
    A graph already in topological order is that order (each node is the first ready
    one), so it is returned as it is after one linear check; builders add nodes after
    their inputs, so this is the common case."""
    if _in_order(graph):
        return graph
    names = topological_order(graph.predecessors())
    invariant(names is not None, "IR verifier: the graph has a cycle")
    return Graph({n: graph.nodes[n] for n in names}, graph.loss, graph.outputs,
                 graph.dtype, graph.after)


def _raise_cycle(node_specs: dict):
    """SpecError naming a cycle of the spec's nodes by the user's nodes (only called when
    the topological order found one: the path search runs on bad specs alone)."""
    import networkx as nx
    g = nx.DiGraph()
    g.add_nodes_from(node_specs)
    for n in node_specs.values():
        g.add_edges_from((i, n.name) for i in n.inputs if i in node_specs)
    cycle = nx.find_cycle(g)
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


def lowered(op: str, attrs: Mapping, mode: str) -> tuple:
    """(op, attrs) of a spec node in `mode`: the op its record lowers to there (itself by
    default), with the attributes that op takes."""
    target = OPS[op].modes.get(mode, op)
    return target, {k: v for k, v in attrs.items() if k in OPS[target].attrs}


def state_order(nodes: Mapping[str, Node]) -> list:
    """(reader, update) pairs: a state update follows every other reader of the state
    leaves it writes, as an optimizer update follows the readers of its param."""
    readers: dict = {}
    for n in nodes.values():
        if n.role != "state":
            for i in n.inputs:
                readers.setdefault(i, []).append(n.name)
    return [(r, u.name) for u in nodes.values() if u.role == "state" and not u.is_leaf
            for i in u.inputs if nodes[i].op == "state" for r in readers.get(i, ())]


def check_state_writes(nodes: Mapping[str, Node]) -> None:
    """Each state update writes distinct state leaves: a parameter, an input or a computed
    value written in place (or one leaf written twice) would be garbage, silently."""
    for u in nodes.values():
        written = [u.inputs[p] for p in OPS[u.op].mutates] if u.role == "state" else []
        for leaf in written:
            if nodes[leaf].op != "state" or written.count(leaf) > 1:
                kind = {"param": "a parameter", "input": "an input", "state": "named twice"}
                raise node_error(u, f"its state update writes the running statistics into "
                                    f"{' and '.join(written)}, which must be distinct state "
                                    f"leaves; '{leaf}' is "
                                    f"{kind.get(nodes[leaf].op, 'a computed value')}",
                                 hint="declare them under state: (e.g. running_mean: [C], "
                                      "running_var: {shape: [C], init: ones})")


@paused_gc
def build_graph(spec, mode: str = "train") -> Graph:
    """Spec -> scheduled Graph of `mode` (train or eval: docs/design.md#modes) with every
    shape inferred; the loss must be a scalar."""
    invariant(mode in MODES, f"unknown mode {mode!r}")
    b = GraphBuilder(spec.dtype)
    for leaf in spec.leaves.values():
        b.nodes[leaf.name] = Node(leaf.name, leaf.kind, (), {"shape": leaf.shape},
                                  leaf.shape, leaf.dtype, leaf.mark, leaf.name)
    node_specs = {n.name: n for n in spec.nodes}
    order = topological_order({n.name: n.inputs for n in spec.nodes})
    if order is None:
        _raise_cycle(node_specs)
    for name in order:
        n = node_specs[name]
        # expr.py names a sub-expression of node `h` `h/<op>`: its origin is `h`; a block
        # instance's nodes (`h1/z/<op>`) carry theirs (`h1/z`)
        origin = n.user_node
        if n.op == "const":
            b.nodes[name] = Node(name, "const", (), n.attrs, (), spec.dtype, n.mark, origin)
        else:
            b.provenance = {"origin": origin}
            op, attrs = lowered(n.op, n.attrs, mode)
            b.add(name, op, n.inputs, attrs, n.mark)
    check_state_writes(b.nodes)
    graph = toposort(b.graph(spec.loss, spec.outputs, state_order(b.nodes)))
    loss = graph[spec.loss]
    if loss.shape != ():
        raise node_error(loss, f"the loss must be a scalar, but '{loss.name}' has shape "
                               f"{S.fmt(loss.shape)}", hint="wrap the loss in mean(...) or sum(...)")
    verify_graph(graph)
    return graph


def verify_graph(graph: Graph, trusted: Optional[Graph] = None) -> None:
    """Stage-boundary check: inputs defined earlier, shapes re-infer, attrs complete. A node
    that `trusted` (a graph verified before) holds, the same object over the same input
    objects, keeps the attrs and shape verified there: they are not checked again."""
    seen, nodes = set(), graph.nodes
    new = nodes.keys() if trusted is None else {      # names whose node is not trusted's
        name for name, n in nodes.items() if trusted.nodes.get(name) is not n}
    for name, n in nodes.items():
        if not seen.issuperset(n.inputs):
            i = next(i for i in n.inputs if i not in seen)
            broken(f"IR verifier: {name} reads {i} before it is computed", n)
        seen.add(name)
        if name not in new and new.isdisjoint(n.inputs):
            continue                    # verified in `trusted`, over the same inputs
        opdef = OPS[n.op]
        if opdef.attrs and not opdef.attrs.keys() <= n.attrs.keys():
            missing = opdef.attrs.keys() - n.attrs.keys()
            broken(f"IR verifier: {name} ({n.op}) lacks attrs {sorted(missing)}", n)
        if opdef.group != "leaf" and n.op != "const":
            shape = tuple(opdef.infer([nodes[i].shape for i in n.inputs], n.attrs))
            if shape != n.shape:
                broken(f"IR verifier: {name} ({n.op}) has shape {S.fmt(n.shape)}, its "
                       f"inputs give {S.fmt(shape)}", n)
    invariant(graph.loss in graph.nodes, f"IR verifier: the loss '{graph.loss}' is no node")
