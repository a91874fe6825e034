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

Kinks. Where f is not differentiable (relu or abs at 0, a tie in max, a hinge at its
margin, any of them within eps of x) the central difference averages two different
slopes and matches no gradient. An element that fails is probed: its one-sided
differences `(f(x) - f(x - h)) / h` and `(f(x + h) - f(x)) / h` are compared at h = eps
and at h = eps / 10. On a smooth f they differ by about f'' h, which shrinks with h; at
a kink they differ by the jump in slope, which does not. An element whose gap is above
the rounding noise and does not shrink is a kink: reported and counted, not failed, and
left out of the max errors. A wrong gradient at a smooth point keeps failing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from . import shapes as S
from .autodiff import check_params_reach_loss, grad_graph
from .ir import Graph
from .model import Model, Runner, differentiable_leaves

FLOOR = 1e-8
NOISE_ULPS = 64       # safety factor over the ~1 ulp of f that a central difference sees
KINK_SHRINK = 10      # the second, smaller step of the kink probe: eps / KINK_SHRINK


@dataclass(frozen=True)
class Kink:
    """One element where f is not differentiable within eps: its one-sided differences."""
    leaf: str
    index: tuple
    left: float
    right: float
    analytic: float


@dataclass(frozen=True)
class LeafCheck:
    """One leaf's comparison: the largest abs and rel error over its elements that are not
    at a kink, and those that are."""
    leaf: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool
    kinks: tuple = ()


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


class Probe:
    """The compiled forward plan in float64: the loss with one leaf element moved by h."""

    def __init__(self, graph: Graph, values: Mapping[str, np.ndarray]):
        store = {k: np.array(v) for k, v in values.items()}
        self.loss = graph.loss
        self.ex = Runner(graph, store, {graph.loss}).run(_fed(graph, values))
        self.f0 = float(self.ex[graph.loss])

    def moved(self, leaf: str, idx: tuple, h: float) -> float:
        x = self.ex[leaf]       # the executor's own array: moving it changes the next run
        orig = x[idx].copy()
        x[idx] = orig + h
        self.ex.run()
        x[idx] = orig
        return float(self.ex[self.loss])

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

    def kink(self, leaf: str, idx: tuple, eps: float, analytic: float) -> Optional[Kink]:
        """A Kink where the one-sided differences disagree above the rounding noise at eps
        and still at eps / KINK_SHRINK (a smooth f's gap shrinks with the step)."""
        left, right = self.one_sided(leaf, idx, eps)
        gap = abs(right - left)
        if gap <= 4 * noise(self.f0, eps):
            return None
        left2, right2 = self.one_sided(leaf, idx, eps / KINK_SHRINK)
        if abs(right2 - left2) <= gap / 2:
            return None
        return Kink(leaf, tuple(int(i) for i in idx), left, right, float(analytic))


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
    every element or at `sample` seeded elements per leaf; failing elements at a kink of f
    are reported as kinks, not failures."""
    graph, values = as_float64(graph, values)
    wrt = _float_leaves(graph) if wrt is None else list(wrt)
    loss, analytic = analytic_grads(graph, values, wrt)
    probe = Probe(graph, values)
    checks = {w: sampled(np.shape(values[w]), sample) for w in wrt}
    numeric = {w: probe.central(w, eps, checks[w]) for w in wrt}
    atol = noise(loss, eps) if atol is None else atol
    rows = []
    for w in wrt:
        a, n = analytic[w], numeric[w]
        checked = checks[w]         # a NaN central difference there fails (or is a kink)
        err = np.where(checked, np.abs(a - n), 0.0)
        rel = np.where(checked, rel_error(a, np.where(checked, n, a)), 0.0)
        failed = ~((rel <= tol) | (err <= atol))
        probed = (probe.kink(w, idx, eps, a[idx]) for idx in map(tuple, np.argwhere(failed)))
        kinks = [k for k in probed if k is not None]
        for k in kinks:
            failed[k.index] = False
            err[k.index] = rel[k.index] = 0.0
        rows.append(LeafCheck(w, a.shape, float(np.max(err, initial=0.0)),
                              float(np.max(rel, initial=0.0)), not failed.any(), tuple(kinks)))
    return GradCheck(loss, eps, tol, atol, tuple(rows), analytic, numeric, sample)


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
                        "max_rel_error": c.max_rel, "ok": c.ok, "kinks": len(c.kinks)}
                       for c in result.leaves]}


def check_table(result: GradCheck) -> str:
    """One row per leaf, a verdict line, and a note on the elements at kinks."""
    head = ("leaf", "shape", "max abs error", "max rel error", "ok")
    rows = [head] + [(c.leaf, S.fmt(c.shape), f"{c.max_abs:.3e}", f"{c.max_rel:.3e}",
                      ("ok" if c.ok else "FAIL") + (f" ({len(c.kinks)} at kinks)" if c.kinks
                                                     else "")) for c in result.leaves]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
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
    return "\n".join(lines + kink_note(result))


def kink_note(result: GradCheck) -> list:
    """Lines on the elements at kinks: how many, why they are not failures, the first one."""
    kinks = [k for c in result.leaves for k in c.kinks]
    if not kinks:
        return []
    k = kinks[0]
    where = f"{k.leaf}[{', '.join(map(str, k.index))}]" if k.index else k.leaf
    return [f"kinks: {len(kinks)} element{'s' if len(kinks) > 1 else ''} sit at a point where "
            "the loss is not differentiable within eps (relu or abs at 0, a max tie, a hinge "
            "at its margin): the slopes left and right of it differ, so there is no gradient "
            "to compare; they are reported, not failed, and not checked (to check them, move "
            "the point: other --inputs or --params)",
            f"  first: {where}: slope {k.left:.6g} left, {k.right:.6g} right; graphc's "
            f"gradient {k.analytic:.6g}"]
