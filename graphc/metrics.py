"""Metrics over a whole split, `metrics: {NAME: [prediction, target]}`, and early stopping.

`early_stopping: {metric: NAME, patience: N, mode: max|min, min_delta: 0}` watches
a validation metric (or `loss`), stops after `patience` epochs without an
improvement, and the trainer then restores the best epoch's parameters
(Keras's restore_best_weights=True).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import SpecError, did_you_mean
from .shapes import is_number


def _paired(pred: np.ndarray, target: np.ndarray) -> tuple:
    """pred reshaped to target's shape when they hold as many values ([N, 1] vs [N])."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape and pred.size == target.size:
        pred = pred.reshape(target.shape)
    if pred.shape != target.shape:
        raise SpecError(f"metric needs a prediction shaped like its target: prediction "
                        f"{list(pred.shape)}, target {list(target.shape)}")
    return pred, target


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction correct: argmax over the class axis vs int labels, else sign agreement
    (scores vs labels in {-1, 1}), or a threshold at 0.5 for targets in {0, 1}."""
    if pred.ndim == target.ndim + 1 and pred.shape[-1] > 1:
        return float(np.mean(pred.argmax(axis=-1) == target))
    pred, target = _paired(pred, target)
    if np.all((target == 0) | (target == 1)):
        return float(np.mean((pred > 0.5) == (target == 1)))
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
MODES = {"accuracy": "max", "mae": "min", "rmse": "min", "loss": "min"}


def parse_metrics(raw, shapes: dict, mark=None) -> dict:
    """`{accuracy: [scores, y]}` -> {metric: (prediction node, target node)}, names checked
    against `shapes` ({node: shape})."""
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(f"metrics must map a metric to [prediction, target], got {raw!r}",
                        mark=mark, hint="e.g. metrics: {accuracy: [scores, y]}")
    out = {}
    for metric, args in (raw or {}).items():
        where = raw.mark_of(metric) if hasattr(raw, "mark_of") else mark
        if metric not in METRICS:
            raise SpecError(f"unknown metric '{metric}'", mark=where,
                            hint=did_you_mean(str(metric), METRICS) or
                            "known: " + ", ".join(METRICS))
        if not isinstance(args, list) or len(args) != 2:
            raise SpecError(f"metric '{metric}' takes [prediction, target], got {args!r}",
                            mark=where)
        for a in args:
            if not isinstance(a, str):
                raise SpecError(f"metric '{metric}' takes two node names, got {a!r}",
                                mark=where, hint=f"e.g. {metric}: [scores, y]")
            if a not in shapes:
                raise SpecError(f"metric '{metric}' names unknown node '{a}'", mark=where,
                                hint=did_you_mean(str(a), shapes))
        _check_per_sample(metric, args, shapes, where)
        out[metric] = tuple(args)
    return out


def _check_per_sample(metric: str, args, shapes: dict, where) -> None:
    """Both nodes hold one value per sample: their first dims agree (the batch dim), so a
    batch's rows can be concatenated."""
    p, t = (tuple(shapes[a]) for a in args)
    if not p or not t or p[0] != t[0]:
        show = " and ".join(f"'{a}' [{', '.join(map(str, shapes[a]))}]" for a in args)
        raise SpecError(f"metric '{metric}' compares {show}, expected two values per sample "
                        "(the same batch dim first)", mark=where,
                        hint=f"e.g. {metric}: [scores, y]")


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
        raise SpecError(f"early_stopping must be a mapping, got {raw!r}", mark=mark,
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
    patience, mode = raw.get("patience", 10), raw.get("mode", MODES.get(metric, "min"))
    delta = raw.get("min_delta", 0.0)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise SpecError(f"early_stopping patience must be a positive integer, got {patience!r}",
                        mark=mark)
    if mode not in ("max", "min"):
        raise SpecError(f"early_stopping mode must be max or min, got {mode!r}", mark=mark,
                        hint=did_you_mean(str(mode), ["max", "min"]))
    if not is_number(delta) or not delta >= 0:
        raise SpecError(f"early_stopping min_delta must be a finite number >= 0, got {delta!r}",
                        mark=mark)
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
