"""The training step as one graph: forward + reverse graph + a guard node + optimizer updates.

One `update:<param>` node per parameter overwrites it in place (PyTorch's update
formulas, docs/training.md), so each is ordered after every other reader of
that parameter (the `after` edges). Every update also reads `opt:grad_norm`,
the global gradient norm: that data edge puts all gradients before any update,
which clipping needs, and lets an update skip a step whose loss or gradients
are not finite. Optimizer state leaves (`<param>.velocity`, `.m`, ...) start at
zero; the learning rate is the `hyper` leaf `opt:lr`, set by the trainer each
epoch, so a schedule needs no recompile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from .autodiff import check_params_reach_loss, grad_graph, trained_params
from .errors import SpecError, did_you_mean
from .ir import Graph, GraphBuilder, Node, schedule, verify_graph

LR = "opt:lr"
NORM = "opt:grad_norm"
BETAS = (0.9, 0.999)

# name -> settings with their defaults (PyTorch's, except sgd's lr, which Keras's 0.01 is)
OPTIMIZERS = {
    "sgd": {"lr": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False,
                "weight_decay": 0.0},
    "adagrad": {"lr": 0.01, "eps": 1e-10, "weight_decay": 0.0},
    "adam": {"lr": 0.001, "betas": BETAS, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 0.001, "betas": BETAS, "eps": 1e-8, "weight_decay": 0.01},
}
FRACTIONS = ("alpha", "betas")      # settings that must lie in [0, 1)


@dataclass(frozen=True)
class Optimizer:
    name: str
    args: Mapping

    @property
    def lr(self) -> float:
        return float(self.args["lr"])

    def state_names(self) -> list:
        """Per-parameter state suffixes, in the order the update op reads them."""
        a = self.args
        if self.name == "sgd":
            return ["velocity"] if a["momentum"] else []
        if self.name == "rmsprop":
            return (["square_avg"] + (["velocity"] if a["momentum"] else []) +
                    (["grad_avg"] if a["centered"] else []))
        if self.name == "adagrad":
            return ["sum_sq"]
        return ["m", "v", "step"]


@dataclass(frozen=True)
class StepGraph:
    """The whole training step; `forward` names the forward nodes, `grads` leaf -> grad node,
    `states` param -> its optimizer state leaves."""
    graph: Graph
    forward: frozenset
    grads: Mapping[str, str]
    states: Mapping[str, tuple]


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
                        hint=did_you_mean(str(name), OPTIMIZERS) or
                        "known: " + ", ".join(OPTIMIZERS))
    if args is not None and not isinstance(args, dict):
        raise SpecError(f"optimizer '{name}' takes a mapping of settings, got {args!r}",
                        mark=where, hint=f"e.g. {{{name}: {{lr: 0.01}}}}")
    args = dict(args or {})
    for key, value in args.items():
        if key not in OPTIMIZERS[name]:
            raise SpecError(f"optimizer '{name}' has no setting '{key}'", mark=where,
                            hint=did_you_mean(str(key), OPTIMIZERS[name]) or
                            "settings: " + ", ".join(OPTIMIZERS[name]))
        args[key] = _setting(name, key, value, where)
    args = {**OPTIMIZERS[name], **args}
    if args.get("nesterov") and not args["momentum"]:
        raise SpecError(f"optimizer '{name}': nesterov needs a momentum > 0", mark=where,
                        hint="e.g. {sgd: {lr: 0.1, momentum: 0.9, nesterov: true}}")
    return Optimizer(name, args)


def _setting(name: str, key: str, value, mark):
    """One setting checked against its default's kind: flag, number >= 0, or pair of fractions."""
    default = OPTIMIZERS[name][key]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(f"optimizer setting '{key}' must be true or false, got {value!r}",
                            mark=mark)
        return value
    values = value if isinstance(default, tuple) else [value]
    if isinstance(default, tuple) and (not isinstance(value, list) or len(value) != 2):
        raise SpecError(f"optimizer setting '{key}' must be a pair such as [0.9, 0.999], "
                        f"got {value!r}", mark=mark)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise SpecError(f"optimizer setting '{key}' must be a number >= 0, got {value!r}",
                            mark=mark)
        if key in FRACTIONS and not v < 1:
            raise SpecError(f"optimizer setting '{key}' must be in [0, 1), got {value!r}",
                            mark=mark)
    return tuple(float(v) for v in values) if isinstance(default, tuple) else float(value)


def training_graph(graph: Graph, optimizer: Optimizer,
                   clip_grad_norm: Optional[float] = None) -> StepGraph:
    """Forward graph -> forward + backward + grad_norm + one update per parameter, scheduled."""
    params = trained_params(graph)
    gg = grad_graph(graph, params)
    check_params_reach_loss(graph, gg.grads)
    b = GraphBuilder(graph.dtype, gg.graph.nodes)
    b.nodes[LR] = Node(LR, "hyper", (), {"shape": ()}, (), graph.dtype)
    b.add(NORM, "grad_norm", (graph.loss, *(gg.grads[p] for p in params)))
    attrs = {k: v for k, v in optimizer.args.items() if k != "lr"}
    attrs["max_norm"] = float(clip_grad_norm or 0.0)
    readers = gg.graph.consumers()
    after, states = list(gg.graph.after), {}
    for p in params:
        states[p] = tuple(_state_leaf(b, graph, p, s) for s in optimizer.state_names())
        update = f"update:{p}"
        b.add(update, optimizer.name, (p, gg.grads[p], NORM, LR, *states[p]), attrs)
        after += [(r, update) for r in readers[p]]
    out = schedule(b.graph(graph.loss, graph.outputs, after))
    verify_graph(out)
    return StepGraph(out, frozenset(graph.nodes), gg.grads, states)


def _state_leaf(b: GraphBuilder, graph: Graph, param: str, suffix: str) -> str:
    """`<param>.<suffix>`: the param's shape (a scalar for Adam's step count), zeros at start."""
    name = f"{param}.{suffix}"
    if name in b.nodes:
        raise SpecError(f"'{name}' is both a node of the spec and the optimizer state of "
                        f"'{param}'", mark=graph[name].mark, node=name,
                        hint="rename the node")
    shape = () if suffix == "step" else graph[param].shape
    b.nodes[name] = Node(name, "state", (), {"shape": shape}, shape, graph.dtype)
    return name
