"""Metrics computed from values the step keeps: `metrics: {NAME: [prediction, target]}`."""
from __future__ import annotations

import numpy as np

from .errors import SpecError, did_you_mean


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction correct: argmax over the class axis, else sign agreement (labels in {-1, 1})."""
    if pred.ndim == target.ndim + 1:
        return float(np.mean(pred.argmax(axis=-1) == target))
    return float(np.mean(np.sign(pred) == np.sign(target)))


METRICS = {"accuracy": accuracy}


def parse_metrics(raw, names, mark=None) -> dict:
    """`{accuracy: [scores, y]}` -> {metric: (prediction node, target node)}, names checked."""
    out = {}
    for metric, args in (raw or {}).items():
        where = raw.mark_of(metric) if hasattr(raw, "mark_of") else mark
        if metric not in METRICS:
            raise SpecError(f"unknown metric '{metric}'", mark=where,
                            hint=did_you_mean(metric, METRICS) or
                            "known: " + ", ".join(METRICS))
        if not isinstance(args, list) or len(args) != 2:
            raise SpecError(f"metric '{metric}' takes [prediction, target], got {args!r}",
                            mark=where)
        for a in args:
            if a not in names:
                raise SpecError(f"metric '{metric}' names unknown node '{a}'", mark=where,
                                hint=did_you_mean(str(a), names))
        out[metric] = tuple(args)
    return out
