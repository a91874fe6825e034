"""Optimizer updates: write the parameter (and its state) in place.

(w, g, guard, lr, *state): g' = c * g + weight_decay * w. With max_norm, `guard` is the
global norm, c = min(1, max_norm / (norm + 1e-6)) and a non-finite norm skips the step;
without, c = 1, and a non-finite g skips this update and sets the guard (a state leaf)
to NaN. Formulas are PyTorch's (docs/training.md); states are updated in place too.
"""
from __future__ import annotations

from .record import OpDef, same, scalar

_UP = {"group": "update", "elementwise": False}
_DECAY = {"weight_decay": 0.0, "max_norm": 0.0}
_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, **_DECAY}

OPS = (
    OpDef("allreduce", None, scalar,
          "allreduce(weight, *values) = the sum over ranks of each rank's weight; each value "
          "is overwritten in place by the sum over ranks of weight * value, in one MPI "
          "allreduce over the values' bytes, which the planner places side by side "
          "(data-parallel training: weight = this rank's share of the batch)", **_UP),
    OpDef("grad_norm", None, scalar,
          "grad_norm(loss, *grads) = sqrt(sum of |g|^2 over all grads), NaN if the loss is not "
          "finite; every update reads it, so all grads are complete before any update", **_UP),
    OpDef("sgd", None, same,
          "sgd(w, g, norm, lr, [v]): v = momentum v + g'; w -= lr * (g' + momentum v if "
          "nesterov else v), v = g' without momentum; folded: g already holds lr * g, w -= g",
          attrs={"momentum": 0.0, "nesterov": False, "folded": False, **_DECAY},
          mutates=(0,), **_UP),
    OpDef("rmsprop", None, same,
          "rmsprop(w, g, norm, lr, s, [b], [a]): s = alpha s + (1-alpha) g'^2; a = alpha a + "
          "(1-alpha) g' if centered; d = g' / (sqrt(s - a^2) + eps); b = momentum b + d; "
          "w -= lr b",
          attrs={"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, **_DECAY},
          mutates=(0,), **_UP),
    OpDef("adagrad", None, same,
          "adagrad(w, g, norm, lr, s): s += g'^2; w -= lr * g' / (sqrt(s) + eps)",
          attrs={"eps": 1e-10, **_DECAY}, mutates=(0,), **_UP),
    OpDef("adam", None, same,
          "adam(w, g, norm, lr, m, v, t): t += 1; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) "
          "g'^2; w -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)", attrs=_ADAM,
          mutates=(0,), **_UP),
    OpDef("adamw", None, same,
          "adamw(w, g, norm, lr, m, v, t): w *= 1 - lr * weight_decay, then adam without the "
          "L2 term", attrs={**_ADAM, "weight_decay": 0.01}, mutates=(0,), **_UP),
)
