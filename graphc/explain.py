"""The chain rule, printed: d loss / d v = sum over paths v -> loss of products of local gradients.

Each edge x -> n (input `position` of node n) has a local gradient d n / d x. Along
one path the local gradients multiply (applied as vector-Jacobian products, right to
left, for tensors); over the paths they add: the lecture's "multiply along edges, add
over paths". Each edge's product is computed by graphc's own gradient rules (the op records' `vjp`)
on a one-node graph, so `explain` decomposes graphc's gradient, it does not re-derive it;
the sum over paths must equal the gradient the whole reverse graph computes.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping, Optional

import networkx as nx
import numpy as np

from .autodiff import grad_graph
from .errors import CheckFailed, SpecError, did_you_mean
from .ir import Graph, GraphBuilder, Node, toposort, verify_graph
from .model import Model, Runner, run_grads
from .ops import OPS

MAX_PATHS = 64


def fmt_num(x) -> str:
    return f"{float(x) + 0.0:.4g}"     # + 0.0 turns -0.0 into 0.0


def fmt_array(arr, full: int = 9) -> str:
    """Scalars and small tensors in full; larger ones as shape, mean, norm, min, max."""
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return fmt_num(arr)
    if arr.size <= full:
        return np.array2string(arr, separator=", ", formatter={"all": fmt_num}).replace("\n", "")
    return (f"{list(arr.shape)} mean {fmt_num(arr.mean())} norm {fmt_num(np.linalg.norm(arr))} "
            f"min {fmt_num(arr.min())} max {fmt_num(arr.max())}")


def all_values(model: Model, feeds: Mapping, everything=True):
    """(GradResult, every forward node's value): run_grads' values plus consts, labels, leaves."""
    result = run_grads(model, feeds, everything=everything)
    values = dict(result.values)
    for n in model.graph.nodes.values():
        if n.name in values:
            continue
        if n.op == "const":
            values[n.name] = np.full(n.shape, n.attrs["value"], dtype=n.dtype)
        elif n.name in feeds:
            values[n.name] = np.asarray(feeds[n.name])
        elif n.name in model.store:
            values[n.name] = np.asarray(model.store[n.name])
    return result, values


def display_name(graph: Graph, name: str) -> str:
    """A constant reads as its value (-1, 0.5); every other node by its name."""
    n = graph[name]
    return f"{n.attrs['value']:g}" if n.op == "const" else name


def local_formula(graph: Graph, node: str, position: int) -> str:
    """The local gradient d node / d input[position] as a formula over the node's inputs."""
    n = graph[node]
    names = [display_name(graph, i) for i in n.inputs]
    formula = OPS[n.op].formula
    row = formula(names, node, n.attrs) if formula else None
    known = row and position < len(row) and row[position]    # a saved value has no row
    return known or f"d {n.op} / d input {position + 1}"


class LocalGrads:
    """Per node, a compiled one-node graph: vjp(node, position, g) = g · d node / d input."""

    def __init__(self, graph: Graph, values: Mapping[str, np.ndarray]):
        self.graph, self.values = graph, values
        self.cache: dict = {}

    def _compile(self, node: str):
        n = self.graph[node]
        b = GraphBuilder(self.graph.dtype)
        store, wrt = {}, []
        # a saved value is recomputed from the other inputs, as the IR builder adds it
        saved = bool(OPS[n.op].saves) and self.graph[n.inputs[-1]].op == OPS[n.op].saves
        for pos, x in enumerate(n.inputs[:len(n.inputs) - saved]):
            arr = np.asarray(self.values[x])
            leaf = f"in{pos}"
            b.nodes[leaf] = Node(leaf, "input", (), {"shape": arr.shape}, arr.shape, str(arr.dtype))
            store[leaf] = arr.copy()
            if not str(arr.dtype).startswith("int"):
                wrt.append(leaf)
        b.add("out", n.op, [f"in{p}" for p in range(len(n.inputs) - saved)],
              self._bound_attrs(n))
        out = b.nodes["out"]
        b.nodes["g"] = Node("g", "input", (), {"shape": out.shape}, out.shape, out.dtype)
        store["g"] = np.zeros(out.shape, dtype=out.dtype)
        b.add("out_g", "mul", ("out", "g"))
        b.add("loss", "sum", ("out_g",), {"axis": None, "keepdims": False})
        forward = toposort(b.graph("loss"))
        verify_graph(forward)           # grad_graph trusts its forward graph verified
        gg = grad_graph(forward, wrt)
        keep = {gg.grads[w] for w in wrt if gg.grads.get(w)}
        runner = Runner(gg.graph, store, keep, forward=set(forward.nodes))
        return runner, store, gg.grads

    def _bound_attrs(self, n: Node) -> dict:
        """n's attrs with dim names (reshape's shape=[batch, -1]) replaced by their sizes:
        the one-node graph has the values' concrete shapes."""
        dims = {d: size for x in n.inputs
                for d, size in zip(self.graph[x].shape, np.shape(self.values[x]))
                if isinstance(d, str)}
        return {k: [dims.get(d, d) if isinstance(d, str) else d for d in v]
                if k == "shape" and isinstance(v, (list, tuple)) else v
                for k, v in n.attrs.items()}

    def vjp(self, node: str, position: int, g) -> Optional[np.ndarray]:
        """g (shaped like node) pulled back to input[position]; None where no gradient flows."""
        if node not in self.cache:
            self.cache[node] = self._compile(node)
        runner, store, grads = self.cache[node]
        store["g"][...] = g
        ex = runner.run({})
        name = grads.get(f"in{position}")
        return None if name is None else np.array(ex[name])


@dataclass(frozen=True)
class Edge:
    """One edge `src -> dst` at input `position` and its local gradient d dst / d src.

    `kind`: "scalar" (a number), "row" (a scalar output: the gradient, shaped like src),
    "diagonal" (an elementwise op: the Jacobian's diagonal) or "jacobian" (`value` None).
    """
    src: str
    dst: str
    position: int
    formula: str
    kind: str
    value: Optional[np.ndarray]

    def value_text(self) -> str:
        if self.value is None:
            return "(a Jacobian, applied to g)"
        return ("elementwise " if self.kind == "diagonal" else "") + fmt_array(self.value)


def edge_local(graph: Graph, values: Mapping, vjps: LocalGrads, src: str, dst: str,
               position: int) -> Edge:
    """The local gradient of one edge: a number for scalars, the gradient row for a scalar
    output, the diagonal for an elementwise op; None for a general Jacobian."""
    out_shape, in_shape = np.shape(values[dst]), np.shape(values[src])
    if out_shape == ():
        kind = "scalar" if in_shape == () else "row"
    elif OPS[graph[dst].op].elementwise and in_shape == out_shape:
        kind = "diagonal"
    else:
        kind = "jacobian"
    value = None if kind == "jacobian" else vjps.vjp(dst, position, np.ones(out_shape))
    if value is None and kind != "jacobian":      # no gradient flows into this input
        value = np.zeros(in_shape)
    formula = local_formula(graph, dst, position)
    if graph[dst].inputs.count(src) > 1:      # x * x: one edge per input position
        formula += f"  (as input {position + 1})"
    return Edge(src, dst, position, formula, kind, value)


def multigraph(graph: Graph) -> nx.MultiDiGraph:
    """Data edges input -> node keyed by input position (x * x is two edges); a saved
    value (softmax cross-entropy's stats) carries no gradient, so no path runs through it."""
    g = nx.MultiDiGraph()
    g.add_nodes_from(graph.nodes)
    for n in graph.nodes.values():
        for pos, x in enumerate(n.inputs):
            if OPS[graph[x].op].group != "saved":
                g.add_edge(x, n.name, key=pos)
    return g


def count_paths(graph: Graph, wrt: str) -> int:
    """How many edge paths lead from wrt to the loss, counted without listing them:
    paths(n) = sum of paths(c) over n's consumers c, once per input position (schedule
    order is topological, so walking it backwards sees every consumer first)."""
    consumers = graph.consumers()
    paths = {graph.loss: 1}
    for n in reversed(list(graph.nodes)):
        if n != graph.loss:
            paths[n] = sum(paths[c] for c in consumers[n])
    return paths[wrt]


def chain_paths(graph: Graph, wrt: str, cap: int = MAX_PATHS) -> tuple:
    """(paths, truncated): edge paths wrt -> loss, each a list of (src, dst, position)."""
    if wrt == graph.loss:
        return [[]], False
    found = nx.all_simple_edge_paths(multigraph(graph), wrt, graph.loss)
    paths = list(itertools.islice(found, cap + 1))
    return paths[:cap], len(paths) > cap


@dataclass(frozen=True)
class Term:
    """One path: its edges (leaf first) and the product of their local gradients."""
    edges: tuple
    product: np.ndarray


@dataclass(frozen=True)
class Explanation:
    wrt: str
    loss: str
    value: np.ndarray
    terms: tuple
    truncated: bool
    total: np.ndarray
    grad: np.ndarray
    paths: int = 0          # every path wrt -> loss; more than len(terms) when truncated


def path_product(vjps: LocalGrads, graph: Graph, values: Mapping, path) -> np.ndarray:
    """Upstream gradient 1 at the loss, pulled back edge by edge (right to left) to the leaf."""
    g = np.ones(np.shape(values[graph.loss]))
    for src, dst, pos in reversed(path):
        g = vjps.vjp(dst, pos, g)
        if g is None:       # an input no gradient flows into (a condition): the path adds 0
            return np.zeros(np.shape(values[path[0][0]]))
    return np.asarray(g)


def _check_wrt(model: Model, wrt: str) -> None:
    graph = model.graph
    if wrt not in graph.nodes or graph[wrt].origin != wrt:
        names = [n for n in graph.nodes if graph[n].origin == n]
        raise SpecError(f"--wrt '{wrt}' is not a node of the spec",
                        hint=did_you_mean(wrt, names) or "nodes: " + ", ".join(names))
    if graph[wrt].op == "state":
        raise SpecError(f"--wrt '{wrt}' is state, which its op updates and graphc does not "
                        "differentiate (only inputs, params and nodes)", node=wrt,
                        mark=graph[wrt].mark, hint="explain a param or a node instead")
    if graph[wrt].dtype.startswith("int") or graph[wrt].op == "const":
        raise SpecError(f"--wrt '{wrt}' is not differentiable ({graph[wrt].dtype} "
                        f"{graph[wrt].op})", node=wrt, mark=graph[wrt].mark)


def explain(model: Model, feeds: Mapping, wrt: str, cap: int = MAX_PATHS) -> Explanation:
    """Sum over the paths wrt -> loss of the product of local gradients, next to graphc's grad."""
    _check_wrt(model, wrt)
    graph = model.graph
    result, values = all_values(model, feeds)
    grad = result.grads.get(wrt, result.node_grads.get(wrt))
    if grad is None:
        grad = np.zeros_like(values[wrt])
    vjps = LocalGrads(graph, values)
    paths, truncated = chain_paths(graph, wrt, cap)
    terms = tuple(Term(tuple(edge_local(graph, values, vjps, *e) for e in path),
                       path_product(vjps, graph, values, path)) for path in paths)
    total = sum((t.product for t in terms), np.zeros(np.shape(values[wrt])))
    return Explanation(wrt, graph.loss, values[wrt], terms, truncated, total, grad,
                       count_paths(graph, wrt))


def matches(e: Explanation) -> bool:
    """The path sum equals graphc's gradient, NaN where it is NaN (a non-finite value upstream
    makes both NaN: they agree)."""
    tol = 1e-9 if np.asarray(e.grad).dtype == np.float64 else 1e-4
    return bool(np.allclose(e.total, e.grad, rtol=tol, atol=tol, equal_nan=True))


def verdict(e: Explanation) -> str:
    """What the comparison says: matches, DOES NOT MATCH, or why it was not made."""
    if e.truncated:
        return (f"not compared: the sum covers {len(e.terms)} of {e.paths} paths; "
                f"--max-paths {e.paths} compares all")
    if not matches(e):
        return "DOES NOT MATCH"
    return "matches" + (", NaN where graphc's is" if np.isnan(e.grad).any() else "")


def _term_lines(k: int, term: Term, loss: str) -> list:
    route = " <- ".join([loss] + [e.src for e in reversed(term.edges)])
    lines = [f"path {k}: {route}"]
    for e in reversed(term.edges):
        lines.append(f"  d {e.dst} / d {e.src} = {e.formula}  =  {e.value_text()}")
    scalars = all(e.kind == "scalar" for e in term.edges)
    if scalars and term.edges:
        factors = " × ".join(fmt_num(e.value) for e in reversed(term.edges))
        lines.append(f"  product: {factors} = {fmt_array(term.product)}")
    else:
        lines.append(f"  product (right to left): {fmt_array(term.product)}")
    return lines


def explanation_text(e: Explanation) -> str:
    """The printout: every path, its local gradients and product, the sum, graphc's gradient."""
    n, total = len(e.terms), e.paths or len(e.terms)
    shown = f" (showing the first {n})" if e.truncated else ""
    lines = [f"d {e.loss} / d {e.wrt} at {e.wrt} = {fmt_array(e.value)}: {total} path"
             f"{'' if total == 1 else 's'} from {e.loss} to {e.wrt}{shown}; multiply the local "
             "gradients along each path, add over paths", ""]
    for k, term in enumerate(e.terms, 1):
        lines += _term_lines(k, term, e.loss) + [""]
    if e.truncated:
        lines.append(f"{total} paths: showing the first {n}; the sum below covers only "
                     f"these (--max-paths {total} shows all)")
    if not e.terms:
        lines.append(f"no path: {e.loss} does not depend on {e.wrt}, so the gradient is 0")
    lines.append(f"sum over paths   = {fmt_array(e.total)}")
    lines.append(f"graphc's gradient = {fmt_array(e.grad)}  ({verdict(e)})")
    return "\n".join(lines)


def check_explanation(e: Explanation) -> None:
    """A mismatch between the path sum and graphc's reverse graph is a failed check (exit 1)."""
    if not e.truncated and not matches(e):
        raise CheckFailed(f"the sum over paths {fmt_array(e.total)} differs from graphc's "
                          f"gradient {fmt_array(e.grad)} for '{e.wrt}'")
