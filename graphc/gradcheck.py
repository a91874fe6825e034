"""Gradient checking: analytic gradients from the real pipeline vs central differences, in float64.

The analytic side is what `graphc grad` computes (autodiff.grad_graph ->
plan.compile_plan -> executor.Executor); the numeric side perturbs one leaf
element at a time and runs the compiled forward plan twice:
`n = (f(x + eps) - f(x - eps)) / (2 eps)`. Per element, with `a` analytic:

    abs error = |a - n|
    rel error = |a - n| / max(FLOOR, |a| + |n|)        FLOOR = 1e-8

and an element passes when rel error <= tol or abs error <= atol; a leaf passes
when all its elements do. FLOOR keeps two zeros from dividing by zero. `atol`
defaults to `noise(loss, eps)`, the rounding error of a central difference:
f itself is only known to a few ulps, so n carries an error of about
ulp(f) / eps whatever the gradient's size, and a small but correct gradient
(1e-6 next to a loss of 1) would otherwise fail a relative test.

Kinks. Where f is not differentiable (relu or abs at 0, a tie in max, a max-pool window
changing its argmax, a hinge at its margin, any of them within eps of x) the central
difference averages two different slopes and matches no gradient. Such points are found
from the op records, not guessed from numbers: an op that is not differentiable
everywhere says, in its record's `piece`, which piece of its domain each element is on
(relu's `x > 0`, max_pool's argmax), written apart from its gradient rule. The piece graph
computes them for every such node, and two points where all of them are equal lie on the
same pieces. An element that fails is probed at steps h = eps, eps / 10, ... down to
eps / 1000; the first h whose points x - h and x + h lie on x's pieces decides. At h = eps
the failure stands: f is smooth there, the difference is valid and the gradient is
wrong. At a smaller h the central difference is taken again at h and compared with
noise(loss, h): the element is counted as checked at a smaller step. No such h: a kink at
x itself (within eps / 1000), where the slopes left and right differ and there is no
gradient to compare: reported and counted, not failed, left out of the max errors; so is
an element where f is not finite at x - h or x + h (the edge of its domain: log near 0).
A wrong gradient rule changes no piece, so it still fails beside a kink.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from . import shapes as S
from .autodiff import Emit, check_params_reach_loss, grad_graph
from .ir import Graph, GraphBuilder, toposort, verify_graph
from .model import Model, Runner, differentiable_leaves
from .ops import OPS

FLOOR = 1e-8
NOISE_ULPS = 64       # safety factor over the ~1 ulp of f that a central difference sees
KINK_SHRINK = 10      # the kink probe's steps: eps, eps / KINK_SHRINK, ...
KINK_STEPS = 4        # ... down to eps / 1000; no clean step by then: a kink at x


@dataclass(frozen=True)
class Kink:
    """One element where f is not differentiable within eps / 1000: its one-sided
    differences at eps."""
    leaf: str
    index: tuple
    left: float
    right: float
    analytic: float


@dataclass(frozen=True)
class LeafCheck:
    """One leaf's comparison: the largest abs and rel error over its elements that are not
    at a kink, those that are, and the (index, step) of those checked at a step below eps
    (the probe at eps crossed a kink)."""
    leaf: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool
    kinks: tuple = ()
    smaller_step: tuple = ()


@dataclass(frozen=True)
class GradCheck:
    loss: float
    eps: float
    tol: float
    atol: float
    leaves: tuple            # LeafCheck per differentiated leaf
    analytic: Mapping[str, np.ndarray]
    numeric: Mapping[str, np.ndarray]        # NaN at the elements a sample left out
    sample: Optional[int] = None             # at most this many elements per leaf, or all

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.leaves)


def rel_error(a: np.ndarray, n: np.ndarray) -> np.ndarray:
    """|a - n| / max(FLOOR, |a| + |n|), elementwise."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return np.abs(a - n) / np.maximum(FLOOR, np.abs(a) + np.abs(n))


def noise(loss: float, eps: float) -> float:
    """Rounding error of a central difference in float64: NOISE_ULPS ulp(max(|f|, 1)) / eps."""
    return NOISE_ULPS * float(np.finfo(np.float64).eps) * max(abs(loss), 1.0) / eps


def as_float64(graph: Graph, values: Mapping[str, np.ndarray]) -> tuple:
    """The same graph and leaf values with every floating-point node and array in float64."""
    def f64(dtype: str) -> str:
        return "float64" if dtype.startswith("float") else dtype
    nodes = {k: dataclasses.replace(n, dtype=f64(n.dtype)) for k, n in graph.nodes.items()}
    graph64 = dataclasses.replace(graph, nodes=nodes, dtype="float64")
    values64 = {k: np.array(v, dtype=f64(np.asarray(v).dtype.name)) for k, v in values.items()}
    return graph64, values64


def model_problem(model: Model, feeds: Mapping[str, np.ndarray]) -> tuple:
    """(graph, values, wrt) of a loaded model in float64: `graphc grad`'s leaves and values."""
    graph, values = as_float64(model.graph, {**model.store, **feeds})
    return graph, values, differentiable_leaves(model)


def _float_leaves(graph: Graph) -> list:
    return [n.name for n in graph.leaves() if n.op in ("input", "param")
            and not n.dtype.startswith("int")]


def _fed(graph: Graph, values: Mapping[str, np.ndarray]) -> dict:
    """The inputs whose arrays bind symbolic dims: what `Runner.run` binds and checks."""
    return {n.name: values[n.name] for n in graph.leaves("input") if S.symbols(n.shape)}


def analytic_grads(graph: Graph, values: Mapping[str, np.ndarray],
                   wrt: Optional[Sequence[str]] = None) -> tuple:
    """(loss, {leaf: d loss / d leaf}) from the reverse graph, planned and executed."""
    wrt = _float_leaves(graph) if wrt is None else list(wrt)
    gg = grad_graph(graph, wrt)
    check_params_reach_loss(graph, gg.grads)
    store = {k: np.array(v) for k, v in values.items()}
    keep = {graph.loss} | {g for g in gg.grads.values() if g}
    ex = Runner(gg.graph, store, keep, forward=set(graph.nodes)).run(_fed(graph, values))
    grads = {}
    for w in wrt:
        shape = S.bind(graph[w].shape, ex.plan.dims)
        grads[w] = np.array(ex[gg.grads[w]]) if gg.grads[w] else np.zeros(shape)
    return float(ex[graph.loss]), grads


def piece_graph(graph: Graph) -> tuple:
    """(the graph plus, for every node whose op has a `piece`, its piece values; their
    names): equal at two points exactly when both lie on the same pieces of every node."""
    b = GraphBuilder(graph.dtype, graph.nodes)
    emit, pieces = Emit(b), []
    for node in graph.nodes.values():
        if OPS[node.op].piece:
            emit.prefix, emit.mark = f"piece:{node.name}/", node.mark
            ones = emit("expand", emit("const", value=1.0), shape=node.shape)
            pieces += OPS[node.op].piece(emit, node, ones)
    out = toposort(Graph(b.nodes, graph.loss, graph.outputs, graph.dtype, graph.after))
    verify_graph(out)
    return out, pieces


class Probe:
    """The compiled forward plan in float64: the loss with one leaf element moved by h; and,
    built at the first element that fails, the piece graph's plan (`piece_graph`)."""

    def __init__(self, graph: Graph, values: Mapping[str, np.ndarray]):
        self.graph, self.values, self.loss = graph, values, graph.loss
        self.ex = self._runner(graph, {graph.loss})
        self.f0 = float(self.ex[graph.loss])
        self._pieces = None

    def _runner(self, graph: Graph, keep: set):
        store = {k: np.array(v) for k, v in self.values.items()}
        return Runner(graph, store, keep).run(_fed(self.graph, self.values))

    def moved(self, leaf: str, idx: tuple, h: float, ex=None) -> float:
        ex = ex or self.ex
        x = ex[leaf]            # the executor's own array: moving it changes the next run
        orig = x[idx].copy()
        x[idx] = orig + h
        ex.run()
        x[idx] = orig
        return float(ex[self.loss])

    def central(self, leaf: str, eps: float, checked: np.ndarray) -> np.ndarray:
        """(f(x + eps) - f(x - eps)) / (2 eps) at the `checked` elements of the leaf (a
        boolean mask of its shape), NaN elsewhere."""
        g = np.full(self.ex[leaf].shape, np.nan)
        for idx in map(tuple, np.argwhere(checked)):
            g[idx] = (self.moved(leaf, idx, eps) - self.moved(leaf, idx, -eps)) / (2 * eps)
        return g

    def one_sided(self, leaf: str, idx: tuple, h: float) -> tuple:
        """((f(x) - f(x - h)) / h, (f(x + h) - f(x)) / h) at one element."""
        return ((self.f0 - self.moved(leaf, idx, -h)) / h,
                (self.moved(leaf, idx, h) - self.f0) / h)

    def kink(self, leaf: str, idx: tuple, eps: float, analytic: float) -> Kink:
        left, right = self.one_sided(leaf, idx, eps)
        return Kink(leaf, tuple(int(i) for i in idx), left, right, float(analytic))

    def pieces(self) -> tuple:
        """(the piece graph's executor, its piece names, the pieces at x), built once."""
        if self._pieces is None:
            graph, names = piece_graph(self.graph)
            ex = self._runner(graph, {self.loss, *names})
            self._pieces = ex, names, [np.array(ex[p]) for p in names]
        return self._pieces

    def on_x_pieces(self, leaf: str, idx: tuple, h: float) -> tuple:
        """(f(x + h), whether x + h lies on x's pieces of every node with a piece)."""
        ex, names, at_x = self.pieces()
        f = self.moved(leaf, idx, h, ex)
        return f, all(np.array_equal(ex[p], a) for p, a in zip(names, at_x))

    def clean_step(self, leaf: str, idx: tuple, eps: float) -> Optional[tuple]:
        """(h, central difference at h) for the first h of eps, eps / KINK_SHRINK, ... down
        to eps / 1000 whose x - h and x + h lie on x's pieces; None: a kink at x, or f not
        finite at a probe (the edge of its domain, log near 0), which no step settles."""
        for h in (eps / KINK_SHRINK ** k for k in range(KINK_STEPS)):
            (right, same_right), (left, same_left) = (self.on_x_pieces(leaf, idx, h),
                                                      self.on_x_pieces(leaf, idx, -h))
            if not np.isfinite(right - left):
                return None
            if same_right and same_left:
                return h, (right - left) / (2 * h)
        return None


def sampled(shape: tuple, sample: Optional[int]) -> np.ndarray:
    """A boolean mask of `shape`: every element, or `sample` of them drawn without
    replacement from a fixed seed (the same elements on every run)."""
    size = int(np.prod(shape, dtype=np.int64))
    if sample is None or sample >= size:
        return np.ones(shape, dtype=bool)
    mask = np.zeros(size, dtype=bool)
    mask[np.random.default_rng(0).choice(size, size=sample, replace=False)] = True
    return mask.reshape(shape)


def check_grads(graph: Graph, values: Mapping[str, np.ndarray],
                wrt: Optional[Sequence[str]] = None, eps: float = 1e-6,
                tol: float = 1e-5, atol: Optional[float] = None,
                sample: Optional[int] = None) -> GradCheck:
    """Analytic vs numeric gradients of every leaf in `wrt` (default: every float leaf), at
    every element or at `sample` seeded elements per leaf; a failing element whose probe
    crossed a kink is checked at a smaller step, or reported as a kink where it sits on
    one (the module docstring)."""
    graph, values = as_float64(graph, values)
    wrt = _float_leaves(graph) if wrt is None else list(wrt)
    loss, analytic = analytic_grads(graph, values, wrt)
    probe = Probe(graph, values)
    checks = {w: sampled(np.shape(values[w]), sample) for w in wrt}
    numeric = {w: probe.central(w, eps, checks[w]) for w in wrt}
    atol = noise(loss, eps) if atol is None else atol
    rows = tuple(leaf_check(probe, w, analytic[w], numeric[w], checks[w], eps, tol, atol)
                 for w in wrt)
    return GradCheck(loss, eps, tol, atol, rows, analytic, numeric, sample)


def leaf_check(probe: Probe, leaf: str, a: np.ndarray, n: np.ndarray, checked: np.ndarray,
               eps: float, tol: float, atol: float) -> LeafCheck:
    """One leaf's row; its failing elements probed for kinks (`Probe.clean_step`), and `n`
    updated where one was checked at a smaller step."""
    err = np.where(checked, np.abs(a - n), 0.0)     # a NaN central difference there fails
    rel = np.where(checked, rel_error(a, np.where(checked, n, a)), 0.0)
    failed = ~((rel <= tol) | (err <= atol))
    kinks, smaller = [], []
    for idx in map(tuple, np.argwhere(failed)):
        step = probe.clean_step(leaf, idx, eps)
        if step is None:
            kinks.append(probe.kink(leaf, idx, eps, a[idx]))
            failed[idx], err[idx], rel[idx] = False, 0.0, 0.0
        elif step[0] < eps:
            h, n[idx] = step
            err[idx], rel[idx] = abs(a[idx] - n[idx]), rel_error(a[idx], n[idx])
            failed[idx] = not (rel[idx] <= tol or err[idx] <= max(atol, noise(probe.f0, h)))
            smaller.append((tuple(int(i) for i in idx), h))
    return LeafCheck(leaf, a.shape, float(np.max(err, initial=0.0)),
                     float(np.max(rel, initial=0.0)), not failed.any(), tuple(kinks),
                     tuple(smaller))


def check_model(model: Model, feeds: Mapping[str, np.ndarray], eps: float = 1e-6,
                tol: float = 1e-5, atol: Optional[float] = None,
                sample: Optional[int] = None) -> GradCheck:
    """`check_grads` on a loaded model, its store and a batch of fed inputs."""
    return check_grads(*model_problem(model, feeds), eps=eps, tol=tol, atol=atol,
                       sample=sample)


def check_json(result: GradCheck) -> dict:
    """The JSON shape of `graphc gradcheck --json`."""
    return {"ok": result.ok, "loss": result.loss, "eps": result.eps, "tol": result.tol,
            "atol": result.atol, "sample": result.sample,
            "leaves": [{"leaf": c.leaf, "shape": list(c.shape), "max_abs_error": c.max_abs,
                        "max_rel_error": c.max_rel, "ok": c.ok, "kinks": len(c.kinks),
                        "smaller_step": len(c.smaller_step)}
                       for c in result.leaves]}


def check_table(result: GradCheck) -> str:
    """One row per leaf, a verdict line, and a note on the elements at kinks."""
    head = ("leaf", "shape", "max abs error", "max rel error", "ok")
    rows = [head] + [(c.leaf, S.fmt(c.shape), f"{c.max_abs:.3e}", f"{c.max_rel:.3e}",
                      ("ok" if c.ok else "FAIL") + _counts(c)) for c in result.leaves]
    lines = S.aligned(rows)
    failed = [c.leaf for c in result.leaves if not c.ok]
    verdict = (f"FAIL: {len(failed)} of {len(result.leaves)} leaves exceed" if failed
               else f"ok: {len(result.leaves)} leaves within")
    lines.append(f"{verdict} rel error {result.tol:g} or abs error {result.atol:.2g} "
                 f"(eps {result.eps:g}, loss {result.loss:.6g})")
    if result.sample is not None:
        checked = sum(min(result.sample, n.size) for n in result.numeric.values())
        total = sum(n.size for n in result.numeric.values())
        lines.append(f"sampled: {checked} of {total} elements checked (at most "
                     f"{result.sample} per leaf, the same ones every run)")
    return "\n".join(lines + kink_note(result) + smaller_step_note(result))


def _counts(c: LeafCheck) -> str:
    """' (2 at kinks, 1 at a smaller step)', or '' where there are none."""
    counts = [f"{len(c.kinks)} at kinks"] if c.kinks else []
    counts += [f"{len(c.smaller_step)} at a smaller step"] if c.smaller_step else []
    return f" ({', '.join(counts)})" if counts else ""


def _where(leaf: str, index: tuple) -> str:
    return f"{leaf}[{', '.join(map(str, index))}]" if index else leaf


def kink_note(result: GradCheck) -> list:
    """Lines on the elements at kinks: how many, why they are not failures, the first one."""
    kinks = [k for c in result.leaves for k in c.kinks]
    if not kinks:
        return []
    k = kinks[0]
    return [f"kinks: {len(kinks)} element{'s' if len(kinks) > 1 else ''} sit at a point where "
            "the loss is not differentiable (relu or abs at 0, a tie in a max or a max-pool "
            "window, a hinge at its margin, within eps / 1000): the slopes left and right of "
            "it differ, so there is no gradient to compare; they are reported, not failed, "
            "and not checked (to check them, move the point: other --inputs or --params)",
            f"  first: {_where(k.leaf, k.index)}: slope {k.left:.6g} left, {k.right:.6g} "
            f"right; graphc's gradient {k.analytic:.6g}"]


def smaller_step_note(result: GradCheck) -> list:
    """Lines on the elements checked at a step below eps: how many, why, the first one."""
    moved = [(c.leaf, index, h) for c in result.leaves for index, h in c.smaller_step]
    if not moved:
        return []
    leaf, index, h = moved[0]
    return [f"smaller step: {len(moved)} element{'s' if len(moved) > 1 else ''} crossed a "
            f"kink within eps (a relu, max or max-pool node changed piece between x - eps "
            f"and x + eps), so the central difference there was taken again at the largest "
            f"step eps / 10^k that stays on x's pieces; first: {_where(leaf, index)} at "
            f"step {h:g}"]
