"""Faults while training: find the first non-finite value of a bad step.

The training step checks two scalars per step (the loss and the gradient norm);
only when one is not finite does `diagnose` re-run that batch, keeping every
value, and walk the executed steps in order to the first non-finite one, like
Caffe's debug_info or torch's detect_anomaly but at no cost to good steps.
"""
from __future__ import annotations

import numpy as np

from .autodiff import grad_graph, trained_params
from .errors import CheckFailed
from .model import Model, Runner


def diagnose(model: Model, batch, where: str, hint: str) -> CheckFailed:
    """The error for a step whose loss or gradient norm was not finite, naming the node."""
    graph = model.graph
    for p in trained_params(graph):
        if not np.all(np.isfinite(model.store[p])):
            return CheckFailed(f"parameter '{p}' is not finite at {where}: the previous "
                               "update made it so", mark=graph[p].mark, node=p, hint=hint)
    gg = grad_graph(graph, trained_params(graph))
    runner = Runner(gg.graph, model.store, set(gg.graph.nodes), forward=set(graph.nodes))
    with np.errstate(all="ignore"):
        ex = runner.run(batch)
    for name in batch:
        if not np.all(np.isfinite(ex[name])):
            return CheckFailed(f"input '{name}' is not finite at {where}", node=name, hint=hint)
    for s in ex.plan.steps:
        value = ex[s.outputs[0]]
        if not np.all(np.isfinite(value)):
            return _node_error(model, gg.graph[s.node], ex, where, hint)
    return CheckFailed(f"the gradient norm overflowed at {where}: every value is finite, "
                       f"but the norm exceeds the {graph.dtype} range", hint=hint)


def _node_error(model: Model, node, ex, where: str, hint: str) -> CheckFailed:
    forward = node.name in model.graph.nodes
    user = (node.name if forward else node.name[2:]).split("/")[0]
    value = ex[node.name]
    kind = "NaN" if np.isnan(value).any() else "inf"
    what, phase = ("value", "forward") if forward else ("gradient", "backward")
    context = [f"input {i}: {_describe(ex[i])}" for i in dict.fromkeys(node.inputs)]
    return CheckFailed(f"non-finite {what} ({kind}) from {node.op} in the {phase} pass at "
                       f"{where}", mark=node.mark, node=user, context=context, hint=hint)


def _describe(arr: np.ndarray) -> str:
    arr = np.asarray(arr)
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr.ravel()
    bad = arr.size - finite.size
    span = f"min {finite.min():.4g}, max {finite.max():.4g}" if finite.size else "no finite value"
    return f"shape {list(arr.shape)}, {span}" + (f", {bad} non-finite" if bad else "")

