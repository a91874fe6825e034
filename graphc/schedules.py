"""Learning-rate schedules: lr(epoch) in closed form from the base lr, per 0-based epoch.

PyTorch's per-epoch schedulers (StepLR, MultiStepLR, ExponentialLR,
CosineAnnealingLR) in their closed forms, and an optional linear warmup that
multiplies any of them: factor (e + 1) / N for the first N epochs.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Mapping, Optional

from .errors import SpecError, did_you_mean, short
from .shapes import is_number

REQUIRED = object()
SCHEDULES = {
    "constant": {},
    "step": {"every": REQUIRED, "gamma": 0.1},
    "multistep": {"milestones": REQUIRED, "gamma": 0.1},
    "exponential": {"gamma": REQUIRED},
    "cosine": {"T_max": None, "eta_min": 0.0},
}
WARMUP = "warmup"
INTEGERS = ("every", "T_max", "epochs")


@dataclass(frozen=True)
class Schedule:
    """`name` with its settings, and `warmup` epochs (0: none)."""
    name: str = "constant"
    args: Mapping = field(default_factory=dict)
    warmup: int = 0

    def lr(self, base_lr: float, epoch: int) -> float:
        """The learning rate of 0-based `epoch`."""
        lr = _decayed(self.name, self.args, base_lr, epoch)
        if epoch < self.warmup:
            lr *= (epoch + 1) / self.warmup
        return lr


def _decayed(name: str, a: Mapping, lr: float, e: int) -> float:
    if name == "step":          # lr * gamma ** floor(e / every)
        return lr * a["gamma"] ** (e // a["every"])
    if name == "multistep":     # lr * gamma ** (number of milestones <= e)
        return lr * a["gamma"] ** bisect_right(a["milestones"], e)
    if name == "exponential":   # lr * gamma ** e
        return lr * a["gamma"] ** e
    if name == "cosine":        # eta_min + (lr - eta_min) (1 + cos(pi e / T_max)) / 2
        eta = a["eta_min"]
        return eta + (lr - eta) * (1 + math.cos(math.pi * e / a["T_max"])) / 2
    return lr


def parse_schedule(raw, mark=None, epochs: Optional[int] = None) -> Schedule:
    """`{step: {every: 100, gamma: 0.5}, warmup: {epochs: 5}}`, `cosine`, None -> Schedule.

    `epochs` (the spec's train.epochs) is cosine's default T_max.
    """
    if raw is None:
        return Schedule()
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict) or not raw:
        raise SpecError("schedule must be a name with its settings, e.g. "
                        "{step: {every: 100, gamma: 0.5}}", mark=mark)
    where = getattr(raw, "mark_of", lambda k: mark)
    warmup = _warmup(raw.get(WARMUP), where(WARMUP)) if WARMUP in raw else 0
    names = [k for k in raw if k != WARMUP]
    if len(names) > 1:
        raise SpecError(f"schedule names {len(names)} schedules ({', '.join(map(str, names))})"
                        "; give one, plus an optional warmup", mark=where(names[1]))
    if not names:
        return Schedule(warmup=warmup)
    name = names[0]
    if name not in SCHEDULES:
        raise SpecError(f"unknown schedule '{name}'", mark=where(name),
                        hint=did_you_mean(str(name), [*SCHEDULES, WARMUP]) or
                        "known: " + ", ".join(SCHEDULES))
    args = _settings(name, raw[name], where(name))
    if name == "cosine" and args["T_max"] is None:
        args["T_max"] = epochs or 1
    return Schedule(name, args, warmup)


def _settings(name: str, raw, mark) -> dict:
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(f"schedule '{name}' takes a mapping of settings, got {short(raw)}",
                        mark=mark)
    allowed = SCHEDULES[name]
    for key in raw or {}:
        if key not in allowed:
            raise SpecError(f"schedule '{name}' has no setting '{key}'", mark=mark,
                            hint=did_you_mean(str(key), allowed) or
                            ("settings: " + ", ".join(allowed) if allowed else
                             "it takes no settings"))
    args = {**allowed, **(raw or {})}
    for key, value in args.items():
        if value is REQUIRED:
            raise SpecError(f"schedule '{name}' needs '{key}'", mark=mark,
                            hint=f"e.g. {{{name}: {_example(name)}}}")
        args[key] = _check(name, key, value, mark)
    return args


def _example(name: str) -> str:
    return {"step": "{every: 30, gamma: 0.1}", "multistep": "{milestones: [30, 80]}",
            "exponential": "{gamma: 0.95}"}.get(name, "{}")


def _check(name: str, key: str, value, mark):
    """every/T_max: positive integers; milestones: increasing non-negative integers;
    gamma > 0; eta_min >= 0."""
    what = f"schedule '{name}' setting '{key}'"
    if key == "milestones":
        ok = isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value) and \
            all(a < b for a, b in zip(value, value[1:]))
        if not ok:
            raise SpecError(f"{what} must be a list of increasing epoch numbers, "
                            f"got {short(value)}",
                            mark=mark, hint="e.g. milestones: [30, 80]")
        return tuple(value)
    if value is None and key == "T_max":
        return None
    if key in INTEGERS:
        if not _is_int(value) or value < 1:
            raise SpecError(f"{what} must be a positive integer, got {short(value)}", mark=mark)
        return value
    if not is_number(value) or not value >= 0 or (key == "gamma" and value == 0):
        raise SpecError(f"{what} must be a finite number {'> 0' if key == 'gamma' else '>= 0'}, "
                        f"got {short(value)}", mark=mark)
    return float(value)


def _warmup(raw, mark) -> int:
    if not isinstance(raw, dict) or list(raw) != ["epochs"]:
        raise SpecError(f"warmup must be {{epochs: N}}, got {short(raw)}", mark=mark,
                        hint="e.g. schedule: {cosine: {}, warmup: {epochs: 5}}")
    return _check(WARMUP, "epochs", raw["epochs"], mark)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
