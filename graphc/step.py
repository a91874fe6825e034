"""The training step as one graph: forward + reverse graph + optimizer updates.

Update nodes overwrite their parameter in place, so each is ordered after every
other reader of that parameter (the `after` edges). The learning rate is a
`hyper` leaf the trainer sets each step, so a schedule needs no recompile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .autodiff import check_params_reach_loss, grad_graph, trained_params
from .errors import SpecError, did_you_mean
from .ir import Graph, GraphBuilder, Node, schedule, verify_graph

LR = "opt:lr"
OPTIMIZERS = {"sgd": {"lr": 0.01, "momentum": 0.0}}


@dataclass(frozen=True)
class Optimizer:
    name: str
    args: Mapping


@dataclass(frozen=True)
class StepGraph:
    """The whole training step; `forward` names the forward nodes, `grads` leaf -> grad node."""
    graph: Graph
    forward: frozenset
    grads: Mapping[str, str]


def parse_optimizer(raw, mark=None) -> Optimizer:
    """`{sgd: {lr: 0.1, momentum: 0.9}}` or `sgd` -> Optimizer with defaults filled."""
    if raw is None:
        raw = {"sgd": {}}
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SpecError("optimizer must be one name with its settings, e.g. "
                        "{sgd: {lr: 0.1, momentum: 0.9}}", mark=mark)
    (name, args), = raw.items()
    where = getattr(raw, "mark_of", lambda k: mark)(name)
    if name not in OPTIMIZERS:
        raise SpecError(f"unknown optimizer '{name}'", mark=where,
                        hint=did_you_mean(name, OPTIMIZERS) or
                        "known: " + ", ".join(OPTIMIZERS))
    args = dict(args or {})
    for key, value in args.items():
        if key not in OPTIMIZERS[name]:
            raise SpecError(f"optimizer '{name}' has no setting '{key}'", mark=where,
                            hint=did_you_mean(key, OPTIMIZERS[name]) or
                            "settings: " + ", ".join(OPTIMIZERS[name]))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"optimizer setting '{key}' must be a number, got {value!r}",
                            mark=where)
    return Optimizer(name, {**OPTIMIZERS[name], **args})


def training_graph(graph: Graph, optimizer: Optimizer) -> StepGraph:
    """Forward graph -> forward + backward + one update per parameter, scheduled."""
    params = trained_params(graph)
    gg = grad_graph(graph, params)
    check_params_reach_loss(graph, gg.grads)
    b = GraphBuilder(graph.dtype, gg.graph.nodes)
    b.nodes[LR] = Node(LR, "hyper", (), {"shape": ()}, (), graph.dtype)
    readers = gg.graph.consumers()
    after = list(gg.graph.after)
    for p in params:
        name = f"update:{p}"
        shape = graph[p].shape
        if optimizer.args.get("momentum", 0.0):
            v = f"{p}.velocity"
            b.nodes[v] = Node(v, "state", (), {"shape": shape}, shape, graph.dtype)
            b.add(name, "sgd_momentum", (p, gg.grads[p], v, LR),
                  {"momentum": float(optimizer.args["momentum"])})
        else:
            b.add(name, "sgd", (p, gg.grads[p], LR))
        after += [(r, name) for r in readers[p]]
    out = schedule(b.graph(graph.loss, graph.outputs, after))
    verify_graph(out)
    return StepGraph(out, frozenset(graph.nodes), gg.grads)
