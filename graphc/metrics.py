"""Metrics over a whole split, and early stopping.

`metrics:` maps a name to `[prediction, target]` (the name is the kind: accuracy, mae,
rmse), to `{KIND: [prediction, target]}` (several metrics of one kind, one per head), or
to a scalar node logged as it is (`ce: data_loss`). Prediction and target have the same
shape, as a loss's do (accuracy also takes class scores with integer labels).

`early_stopping: {metric: NAME, patience: N, mode: max|min, min_delta: 0}` watches
a validation metric (or `loss`), stops after `patience` epochs without an
improvement, and the trainer then restores the best epoch's parameters
(Keras's restore_best_weights=True).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

from . import shapes as S
from .errors import SpecError, did_you_mean, short
from .ir import Graph
from .shapes import is_number


def _paired(pred: np.ndarray, target: np.ndarray) -> tuple:
    """pred and target as float64, checked to have the same shape (a metric never broadcasts)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise SpecError(f"metric needs a prediction shaped like its target: prediction "
                        f"{list(pred.shape)}, target {list(target.shape)}")
    return pred, target


def accuracy(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction correct: argmax over the class axis vs int labels; for targets in {0, 1},
    `pred > threshold` (0.5 for probabilities, 0 for logits); else sign agreement (scores vs
    labels in {-1, 1})."""
    if pred.ndim == target.ndim + 1 and pred.shape[-1] > 1:
        return float(np.mean(pred.argmax(axis=-1) == target))
    pred, target = _paired(pred, target)
    if np.all((target == 0) | (target == 1)):
        return float(np.mean((pred > threshold) == (target == 1)))
    return float(np.mean(np.sign(pred) == np.sign(target)))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error: mean(|pred - target|)."""
    pred, target = _paired(pred, target)
    return float(np.mean(np.abs(pred - target)))


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error: sqrt(mean((pred - target)^2))."""
    pred, target = _paired(pred, target)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


METRICS = {"accuracy": accuracy, "mae": mae, "rmse": rmse}
VALUE = "value"             # the kind of `NAME: NODE`: a scalar node logged as it is
MODES = {"accuracy": "max", "mae": "min", "rmse": "min", "loss": "min", VALUE: "min"}
PASS_THROUGH = {"identity", "reshape", "transpose"}     # ops that keep what a value means
REGRESSION = {"mse", "l1", "huber"}                     # losses whose prediction is the target


@dataclass(frozen=True)
class Metric:
    """One logged number. Kinds accuracy, mae and rmse compare `nodes` = (prediction, target)
    over a whole split; kind `value` is a scalar node's mean over a split's batches, weighted
    by batch size as the loss is. `threshold`: where accuracy cuts one score for 0/1 targets."""
    name: str
    kind: str
    nodes: tuple
    threshold: float = 0.5
    binary: bool = False        # accuracy of one score per target, cut at `threshold`

    @property
    def mode(self) -> str:
        return MODES[self.kind]

    def describe(self) -> str:
        """`acc = accuracy(logit, y); 0/1 targets: logit > 0`, as `graphc check` prints it."""
        if self.kind == VALUE:
            return f"{self.name} = {self.nodes[0]}, its mean over the batches"
        text = f"{self.name} = {self.kind}({', '.join(self.nodes)})"
        return text + (f"; 0/1 targets: {self.nodes[0]} > {self.threshold:g}" if self.binary
                       else "")

    def compute(self, pred: np.ndarray, target: np.ndarray) -> float:
        if self.kind == "accuracy":
            return accuracy(pred, target, self.threshold)
        return METRICS[self.kind](pred, target)


def binary_threshold(graph: Graph, node: str) -> float:
    """Where accuracy cuts `node` for 0/1 targets: 0.5 for a probability (a sigmoid's output)
    or a regression onto the targets (the prediction of mse, l1 or huber); else 0, for a
    logit or a margin score (binary_cross_entropy_with_logits, hinge)."""
    return 0.5 if is_probability(graph, node) or regression_loss(graph, node) else 0.0


def is_probability(graph: Graph, node: str) -> bool:
    """`node` is a sigmoid's output, maybe reshaped or transposed."""
    producer = graph[node]
    while producer.op in PASS_THROUGH:
        producer = graph[producer.inputs[0]]
    return producer.op == "sigmoid"


def regression_loss(graph: Graph, node: str):
    """The mse, l1 or huber node whose prediction (first argument) `node` is, else None."""
    return next((n for n in graph.nodes.values() if n.op in REGRESSION and n.inputs[0] == node),
                None)


def parse_metrics(raw, graph: Graph, mark=None) -> dict:
    """`train.metrics` -> {name: Metric}. Forms: `accuracy: [scores, y]` (the name is the
    kind), `acc_a: {accuracy: [s1, y1], threshold: 0}` (a named metric) and `ce: data_loss`
    (a scalar node logged as it is)."""
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(f"metrics must map a name to [prediction, target], got {short(raw)}",
                        mark=mark, hint="e.g. metrics: {accuracy: [scores, y]}")
    out = {}
    for name, body in (raw or {}).items():
        where = raw.mark_of(name) if hasattr(raw, "mark_of") else mark
        if name == "loss" or str(name).startswith("val_"):
            raise SpecError(f"metric name '{name}' is taken: training reports 'loss' and "
                            "'val_<name>' itself", mark=where, hint="rename the metric")
        out[name] = _parse_one(str(name), body, graph, where)
    return out


def _parse_one(name: str, body, graph: Graph, where) -> Metric:
    if isinstance(body, str):
        _check_nodes(name, [body], graph, where)
        if graph[body].shape != ():
            raise SpecError(f"metric '{name}' logs node '{body}' of shape "
                            f"{S.fmt(graph[body].shape)}, but a node logged as a metric must "
                            "be a scalar (such as a loss term)", mark=where,
                            hint=f"compare per-sample values with {name}: {{mae: [{body}, "
                                 "<target>]}")
        return Metric(name, VALUE, (body,))
    if isinstance(body, dict):
        kind, args, threshold = _named(name, body, where)
    else:
        kind, args, threshold = name, body, None
    if kind not in METRICS:
        raise SpecError(f"unknown metric '{kind}'", mark=where,
                        hint=did_you_mean(kind, METRICS) or "known: " + ", ".join(METRICS))
    if not isinstance(args, list) or len(args) != 2:
        raise SpecError(f"metric '{name}' takes [prediction, target], got {short(args)}",
                        mark=where, hint=f"e.g. {name}: {{{kind}: [scores, y]}}, or a "
                                         f"scalar node: {name}: data_loss")
    _check_nodes(name, args, graph, where)
    labels = _check_pair(name, kind, args, graph, where)
    if threshold is None:
        threshold = binary_threshold(graph, args[0])
    return Metric(name, kind, tuple(args), float(threshold), kind == "accuracy" and not labels)


def _named(name: str, body: dict, where) -> tuple:
    """(kind, [prediction, target], threshold or None) of `{accuracy: [s, y], threshold: 0}`."""
    kinds = [k for k in body if k != "threshold"]
    if len(kinds) != 1:
        raise SpecError(f"metric '{name}' must name one metric kind, got "
                        f"{', '.join(map(str, kinds)) or 'none'}", mark=where,
                        hint=f"e.g. {name}: {{accuracy: [scores, y]}}; kinds: "
                             + ", ".join(METRICS))
    kind, threshold = str(kinds[0]), body.get("threshold")
    if threshold is not None and (kind != "accuracy" or isinstance(threshold, bool)
                                  or not isinstance(threshold, (int, float))):
        raise SpecError(f"metric '{name}': threshold must be a number, and only accuracy "
                        f"takes one (got {short(threshold)} for {kind})", mark=where,
                        hint="e.g. {accuracy: [logit, y], threshold: 0}")
    return kind, body[kinds[0]], threshold


def _check_nodes(name: str, args, graph: Graph, where) -> None:
    for a in args:
        if not isinstance(a, str):
            raise SpecError(f"metric '{name}' takes two node names, got {short(a)}", mark=where,
                            hint=f"e.g. {name}: [scores, y]")
        if a not in graph.nodes:
            raise SpecError(f"metric '{name}' names unknown node '{a}'", mark=where,
                            hint=did_you_mean(a, graph.nodes))


def _check_pair(name: str, kind: str, args, graph: Graph, where) -> bool:
    """Prediction and target of the same shape, one value per sample (rank >= 1, so a
    split's batches concatenate); accuracy also takes class scores [N, K] and labels [N]
    (then True)."""
    p, t = (graph[a] for a in args)
    labels = (kind == "accuracy" and t.dtype.startswith("int") and p.shape[:-1] == t.shape
              and p.shape[-1:] != (1,))
    if (p.shape == t.shape or labels) and t.shape:
        return labels
    raise SpecError(f"metric '{name}' compares '{p.name}' {S.fmt(p.shape)} with '{t.name}' "
                    f"{S.fmt(t.shape)}, but a metric compares per-sample values of the same "
                    "shape (accuracy also takes class scores [batch, K] with integer labels "
                    "[batch])", mark=where,
                    hint=f"give the target the prediction's shape (an input: declare it "
                         f"{S.fmt(p.shape)}), or reshape the prediction")


class Accumulator:
    """One split's metrics, batch by batch: `add` each batch's values, then `result`."""

    def __init__(self, metrics: Mapping[str, Metric]):
        self.metrics = metrics
        self.rows = {v: [] for m in metrics.values() if m.kind != VALUE for v in m.nodes}
        self.sums = {m.nodes[0]: 0.0 for m in metrics.values() if m.kind == VALUE}
        self.count = 0

    def add(self, value: Callable[[str], np.ndarray], samples: int) -> None:
        """`value(node)` is the batch's array of a node; `samples` its number of samples."""
        for v in self.rows:
            self.rows[v].append(np.array(value(v)))
        for v in self.sums:
            self.sums[v] += float(value(v)) * samples
        self.count += samples

    @classmethod
    def merged(cls, parts: list) -> "Accumulator":
        """One accumulator holding `parts`' batches in order (the ranks' shares of a split)."""
        out = cls(parts[0].metrics)
        for p in parts:
            for v in out.rows:
                out.rows[v] += p.rows[v]
            for v in out.sums:
                out.sums[v] += p.sums[v]
            out.count += p.count
        return out

    def result(self) -> dict:
        out = {}
        for name, m in self.metrics.items():
            if m.kind == VALUE:
                out[name] = self.sums[m.nodes[0]] / max(self.count, 1)
            else:
                out[name] = m.compute(*(np.concatenate(self.rows[v]) for v in m.nodes))
        return out


def metric_nodes(metrics: Mapping[str, Metric]) -> set:
    """Every node the metrics read: an evaluation plan must keep them."""
    return {v for m in metrics.values() for v in m.nodes}


@dataclass(frozen=True)
class EarlyStoppingConfig:
    metric: str
    patience: int
    mode: str
    min_delta: float = 0.0


def parse_early_stopping(raw, metrics, mark=None) -> Optional[EarlyStoppingConfig]:
    """`{metric: accuracy, patience: 10}`; mode defaults to max for accuracy, else min."""
    if raw is None:
        return None
    keys = ("metric", "patience", "mode", "min_delta")
    if not isinstance(raw, dict):
        raise SpecError(f"early_stopping must be a mapping, got {short(raw)}", mark=mark,
                        hint="e.g. early_stopping: {metric: accuracy, patience: 10}")
    for key in raw:
        if key not in keys:
            raise SpecError(f"unknown key '{key}' in early_stopping", mark=mark,
                            hint=did_you_mean(str(key), keys) or "keys: " + ", ".join(keys))
    metric = raw.get("metric", "loss")
    if metric != "loss" and metric not in metrics:
        raise SpecError(f"early_stopping watches '{metric}', which is not 'loss' or a metric "
                        "under train.metrics", mark=mark,
                        hint=did_you_mean(str(metric), ["loss", *metrics]))
    default = metrics[metric].mode if metric in metrics else MODES["loss"]
    patience, mode = raw.get("patience", 10), raw.get("mode", default)
    delta = raw.get("min_delta", 0.0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise SpecError("early_stopping patience must be a positive integer, "
                        f"got {short(patience)}", mark=mark)
    if mode not in ("max", "min"):
        raise SpecError(f"early_stopping mode must be max or min, got {short(mode)}", mark=mark,
                        hint=did_you_mean(str(mode), ["max", "min"]))
    if not is_number(delta) or not delta >= 0:
        raise SpecError("early_stopping min_delta must be a finite number >= 0, "
                        f"got {short(delta)}", mark=mark)
    return EarlyStoppingConfig(metric, patience, mode, float(delta))


@dataclass
class EarlyStopping:
    """Tracks the best value and the epochs since it; `update` says whether it improved."""
    cfg: EarlyStoppingConfig
    best: float = math.nan
    best_epoch: int = 0
    wait: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record `epoch`'s value; True when it beats the best by more than min_delta."""
        sign = 1.0 if self.cfg.mode == "max" else -1.0
        better = math.isnan(self.best) or sign * (value - self.best) > self.cfg.min_delta
        if better:
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1
        return better

    @property
    def stop(self) -> bool:
        return self.wait >= self.cfg.patience
