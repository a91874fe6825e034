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


@dataclass(frozen=True)
class LeafCheck:
    """One leaf's comparison: the largest abs and rel error over its elements."""
    leaf: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class GradCheck:
    loss: float
    eps: float
    tol: float
    atol: float
    leaves: tuple            # LeafCheck per differentiated leaf
    analytic: Mapping[str, np.ndarray]
    numeric: Mapping[str, np.ndarray]

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


def numeric_grads(graph: Graph, values: Mapping[str, np.ndarray],
                  wrt: Optional[Sequence[str]] = None, eps: float = 1e-6) -> dict:
    """{leaf: central differences of the loss}, one element perturbed at a time."""
    wrt = _float_leaves(graph) if wrt is None else list(wrt)
    store = {k: np.array(v) for k, v in values.items()}
    ex = Runner(graph, store, {graph.loss}).run(_fed(graph, values))

    def loss() -> float:
        ex.run()
        return float(ex[graph.loss])

    grads = {}
    for w in wrt:
        x = ex[w]       # the executor's own array: perturbing it changes the next run
        g = np.zeros(x.shape)
        for idx in np.ndindex(x.shape):
            orig = x[idx].copy()
            x[idx] = orig + eps
            up = loss()
            x[idx] = orig - eps
            down = loss()
            x[idx] = orig
            g[idx] = (up - down) / (2 * eps)
        grads[w] = g
    return grads


def check_grads(graph: Graph, values: Mapping[str, np.ndarray],
                wrt: Optional[Sequence[str]] = None, eps: float = 1e-6,
                tol: float = 1e-5, atol: Optional[float] = None) -> GradCheck:
    """Analytic vs numeric gradients of every leaf in `wrt` (default: every float leaf)."""
    graph, values = as_float64(graph, values)
    wrt = _float_leaves(graph) if wrt is None else list(wrt)
    loss, analytic = analytic_grads(graph, values, wrt)
    numeric = numeric_grads(graph, values, wrt, eps)
    atol = noise(loss, eps) if atol is None else atol
    rows = []
    for w in wrt:
        a, n = analytic[w], numeric[w]
        err, rel = np.abs(a - n), rel_error(a, n)
        ok = bool(np.all((rel <= tol) | (err <= atol)))
        rows.append(LeafCheck(w, a.shape, float(np.max(err, initial=0.0)),
                              float(np.max(rel, initial=0.0)), ok))
    return GradCheck(loss, eps, tol, atol, tuple(rows), analytic, numeric)


def check_model(model: Model, feeds: Mapping[str, np.ndarray], eps: float = 1e-6,
                tol: float = 1e-5, atol: Optional[float] = None) -> GradCheck:
    """`check_grads` on a loaded model, its store and a batch of fed inputs."""
    return check_grads(*model_problem(model, feeds), eps=eps, tol=tol, atol=atol)


def check_json(result: GradCheck) -> dict:
    """The JSON shape of `graphc gradcheck --json`."""
    return {"ok": result.ok, "loss": result.loss, "eps": result.eps, "tol": result.tol,
            "atol": result.atol,
            "leaves": [{"leaf": c.leaf, "shape": list(c.shape), "max_abs_error": c.max_abs,
                        "max_rel_error": c.max_rel, "ok": c.ok} for c in result.leaves]}


def check_table(result: GradCheck) -> str:
    """One row per leaf, then a verdict line."""
    head = ("leaf", "shape", "max abs error", "max rel error", "ok")
    rows = [head] + [(c.leaf, S.fmt(c.shape), f"{c.max_abs:.3e}", f"{c.max_rel:.3e}",
                      "ok" if c.ok else "FAIL") for c in result.leaves]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    failed = [c.leaf for c in result.leaves if not c.ok]
    verdict = (f"FAIL: {len(failed)} of {len(result.leaves)} leaves exceed" if failed
               else f"ok: {len(result.leaves)} leaves within")
    lines.append(f"{verdict} rel error {result.tol:g} or abs error {result.atol:.2g} "
                 f"(eps {result.eps:g}, loss {result.loss:.6g})")
    return "\n".join(lines)
