"""Learning-rate schedules: lr(epoch) from the base lr, PyTorch's per-epoch conventions."""
from __future__ import annotations

from .errors import SpecError, did_you_mean

SCHEDULES = {
    "constant": {},
    "step": {"every": 1, "gamma": 0.1},
}


def parse_schedule(raw, mark=None):
    """`{step: {every: 100, gamma: 0.5}}` -> (name, args); None -> constant."""
    if raw is None:
        return "constant", {}
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SpecError("schedule must be one name with its settings, e.g. "
                        "{step: {every: 100, gamma: 0.5}}", mark=mark)
    (name, args), = raw.items()
    if name not in SCHEDULES:
        raise SpecError(f"unknown schedule '{name}'", mark=mark,
                        hint=did_you_mean(name, SCHEDULES) or "known: " + ", ".join(SCHEDULES))
    args = dict(args or {})
    for key in args:
        if key not in SCHEDULES[name]:
            raise SpecError(f"schedule '{name}' has no setting '{key}'", mark=mark,
                            hint=did_you_mean(key, SCHEDULES[name]))
    return name, {**SCHEDULES[name], **args}


def learning_rate(schedule, base_lr: float, epoch: int) -> float:
    """lr for 0-based `epoch`: step decays by gamma every `every` epochs (torch StepLR)."""
    name, args = schedule
    if name == "step":
        return base_lr * args["gamma"] ** (epoch // max(int(args["every"]), 1))
    return base_lr
