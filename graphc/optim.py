"""The training step as one graph: forward + reverse graph + optimizer updates + a guard.

One `update:<param>` node per parameter overwrites it in place (PyTorch's update
formulas, docs/training.md), so each is ordered after every other reader of
that parameter (the `after` edges). Every update also reads a guard value, which
the trainer checks after each step:
- with `clip_grad_norm`, the node `opt:grad_norm` (the global gradient norm, NaN
  if the loss is not finite): clipping needs every gradient before any update,
  and a non-finite norm skips every update of the step;
- without, the state leaf `opt:grad_check` (0): an update whose gradient is not
  finite skips itself and sets the guard to NaN.
Plain SGD (no momentum, weight decay or clipping) starts the backward pass from
the learning rate instead of 1, so every gradient arrives scaled and each update
is one subtract. Each update runs as soon as its gradient is complete (gradient
buffers die early); the NumPy backend's generated code defers the other
optimizers' arithmetic to the last update, one update over flat views of all
params (backends/numpy/flat.flat_updates). Optimizer state leaves
(`<param>.velocity`, `.m`, ...) start at zero; the learning rate is the `hyper` leaf `opt:lr`, set by the
trainer each epoch, so a schedule needs no recompile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from .autodiff import check_params_reach_loss, grad_graph, trained_params
from .errors import SpecError, did_you_mean, short
from .shapes import is_number
from .ir import Graph, GraphBuilder, Node, toposort, verify_graph
from .topo import reach
from .limits import paused_gc

LR = "opt:lr"
NORM = "opt:grad_norm"
GUARD = "opt:grad_check"
SHARE = "opt:batch_share"       # data-parallel: this rank's share of the batch's samples
SYNC = "opt:allreduce"
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

    NON_NEGATIVE = ("step", "v", "sum_sq", "square_avg")    # counts and sums of squares

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
    """The whole training step; `forward` names the forward nodes, `grads` leaf -> grad node
    (scaled by the learning rate where `folded`), `states` param -> its optimizer state
    leaves, `guard` the scalar that is not finite after a bad step."""
    graph: Graph
    forward: frozenset
    grads: Mapping[str, str]
    states: Mapping[str, tuple]
    guard: str = NORM
    folded: bool = False
    together: tuple = ()        # the allreduce's output and values, side by side in the arena


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
        raise SpecError(f"optimizer '{name}' takes a mapping of settings, got {short(args)}",
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
            raise SpecError(f"optimizer setting '{key}' must be true or false, got {short(value)}",
                            mark=mark)
        return value
    values = value if isinstance(default, tuple) else [value]
    if isinstance(default, tuple) and (not isinstance(value, list) or len(value) != 2):
        raise SpecError(f"optimizer setting '{key}' must be a pair such as [0.9, 0.999], "
                        f"got {short(value)}", mark=mark)
    for v in values:
        if not is_number(v) or not v >= 0:
            raise SpecError(f"optimizer setting '{key}' must be a finite number >= 0, got "
                            f"{short(value)}",
                            mark=mark)
        if key in FRACTIONS and not v < 1:
            raise SpecError(f"optimizer setting '{key}' must be in [0, 1), got {short(value)}",
                            mark=mark)
        if key == "lr" and v == 0:     # as --lr and fit(lr=): a rate of 0 trains nothing
            raise SpecError("optimizer setting 'lr' must be a finite number > 0, got 0",
                            mark=mark, hint="e.g. lr: 0.01")
    return tuple(float(v) for v in values) if isinstance(default, tuple) else float(value)


@paused_gc
def training_graph(graph: Graph, optimizer: Optimizer,
                   clip_grad_norm: Optional[float] = None, synced: bool = False) -> StepGraph:
    """Forward graph -> forward + backward + one update per parameter + guard, scheduled.
    `synced` (data-parallel training): the loss and the gradients are averaged over the
    ranks by one allreduce, which every other reader of them follows."""
    params = trained_params(graph)
    a = optimizer.args
    folded = optimizer.name == "sgd" and not (a["momentum"] or a["weight_decay"]
                                              or clip_grad_norm)
    lr = Node(LR, "hyper", (), {"shape": ()}, (), graph.dtype, origin=LR, role="state")
    with_lr = Graph({**graph.nodes, LR: lr}, graph.loss, graph.outputs, graph.dtype,
                    graph.after)
    gg = grad_graph(with_lr, params, seed=LR if folded else None)
    check_params_reach_loss(graph, gg.grads)
    b = GraphBuilder(graph.dtype, gg.graph.nodes)
    b.provenance = {"role": "update"}
    if clip_grad_norm:
        guard = b.add(NORM, "grad_norm", (graph.loss, *(gg.grads[p] for p in params)))
    else:
        guard = GUARD
        b.nodes[GUARD] = Node(GUARD, "state", (), {"shape": ()}, (), graph.dtype,
                              origin=GUARD, role="state")
    attrs = {k: v for k, v in a.items() if k != "lr"}
    attrs["max_norm"] = float(clip_grad_norm or 0.0)
    if optimizer.name == "sgd":
        attrs["folded"] = folded
    readers = gg.graph.consumers(params)
    after, states = list(gg.graph.after), {}
    for p in params:
        states[p] = tuple(_state_leaf(b, graph, p, s) for s in optimizer.state_names())
        update = f"update:{p}"
        b.provenance = {"origin": p, "role": "update"}
        b.add(update, optimizer.name, (p, gg.grads[p], guard, LR, *states[p]), attrs)
        after += [(r, update) for r in readers[p]]
    together = _allreduce(b, graph, [gg.grads[p] for p in params], after) if synced else ()
    out = toposort(b.graph(graph.loss, graph.outputs, after))
    verify_graph(out, trusted=gg.graph)
    return StepGraph(out, frozenset(graph.nodes), gg.grads, states, guard, folded, together)


def _allreduce(b: GraphBuilder, graph: Graph, grads: list, after: list) -> tuple:
    """Add `opt:allreduce(opt:batch_share, loss, *grads)` and order after it every reader
    of the loss and the gradients that does not feed it (a backward node may read one
    gradient to make another, `neg` for `W - V`: it reads the rank's own, as it must);
    returns its output and values, to be placed side by side. A gradient that is a leaf
    (a constant) is the same on every rank: not summed."""
    b.nodes[SHARE] = Node(SHARE, "hyper", (), {"shape": ()}, (), graph.dtype, origin=SHARE,
                          role="state")
    values = tuple(v for v in dict.fromkeys([graph.loss, *grads]) if not b.nodes[v].is_leaf)
    b.provenance = {"origin": SYNC, "role": "update"}
    b.add(SYNC, "allreduce", (SHARE, *values))
    built = b.graph(graph.loss, graph.outputs, after)
    feeding, readers = reach(built.predecessors(), [SYNC]), built.consumers()   # SYNC too
    after += [(SYNC, r) for v in values for r in readers[v] if r != SYNC and r not in feeding]
    return (SYNC, *values)


def _state_leaf(b: GraphBuilder, graph: Graph, param: str, suffix: str) -> str:
    """`<param>.<suffix>`: the param's shape (a scalar for Adam's step count), zeros at start."""
    name = f"{param}.{suffix}"
    if name in b.nodes:
        raise SpecError(f"'{name}' is both a node of the spec and the optimizer state of "
                        f"'{param}'", mark=graph[name].mark, node=name,
                        hint="rename the node")
    shape = () if suffix == "step" else graph[param].shape
    b.nodes[name] = Node(name, "state", (), {"shape": shape}, shape, graph.dtype,
                         origin=param, role="state")
    return name
