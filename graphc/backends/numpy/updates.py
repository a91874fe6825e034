"""NumPy kernels of the optimizer updates: `bind(out, w, g, norm, lr, *state, **attrs)`.

`out` is the parameter w itself: each update writes w and its state in place. `_gated`
takes two step-local scratch arrays of w's shape from the workspace and applies the
guard; each step then writes w and its state with no allocation. Formulas are PyTorch's
(see docs/training.md). Closures use ufunc `out=` forms, as an augmented assignment
would rebind the closed-over name.
"""
from __future__ import annotations

import math

import numpy as np

from ... import parallel
from ...plan import ALIGN
from .bind import source
from .workspace import constant, scratch

def _gate(g, guard, max_norm: float):
    """A no-argument function giving this step's gradient factor, or None to skip the update.

    With clipping, `guard` is the global norm: clip_grad_norm_'s factor
    min(1, max_norm / (norm + 1e-6)), None when the norm is not finite. Without, `guard` is
    a state leaf: 1 when this gradient is finite, else the guard becomes NaN and None.
    """
    if max_norm:
        def clip():
            n = float(guard)
            return min(1.0, max_norm / (n + 1e-6)) if math.isfinite(n) else None
        return clip
    flat = g.reshape(-1)

    def check():
        if math.isfinite(flat.dot(flat)):
            return 1.0
        guard[...] = math.nan
        return None
    return check


def _grad_into(d, t, g, w, c: float, weight_decay: float):
    """c * g + weight_decay * w, the clipped gradient plus torch's L2 term: g itself when
    that is all it is, else written to d (t: scratch). The caller only reads the result."""
    if c == 1.0 and not weight_decay:
        return g
    if c == 1.0:
        np.copyto(d, g)
    else:
        np.multiply(g, c, out=d)
    if weight_decay:
        np.multiply(w, weight_decay, out=t)
        np.add(d, t, out=d)
    return d


def _gated(w, g, norm, max_norm: float, weight_decay: float, body, skipped=None):
    """An update step: unless the gate skips it, `body(u, d, t)`, u the clipped gradient
    plus the L2 term (g itself, or d), d and t step-local scratch of w's shape; when it
    skips, `skipped()` if given (a flat update's per-param updates, flat_updates)."""
    d, t = scratch(w.shape, w.dtype), scratch(w.shape, w.dtype)
    gate = _gate(g, norm, max_norm)

    def update():
        c = gate()
        if c is not None:
            body(_grad_into(d, t, g, w, c, weight_decay), d, t)
        elif skipped is not None:
            skipped()
    return update


def _descend(w, x, rate, t) -> None:
    """w -= rate * x, through the scratch t (which may be x itself)."""
    np.multiply(x, rate, out=t)
    np.subtract(w, t, out=w)


def b_grad_norm(out, loss, *grads):
    def update():
        total = 0.0
        for g in grads:
            total += float(np.vdot(g, g))
        out[...] = math.sqrt(total) if math.isfinite(float(loss)) else math.nan
    return update


def b_sgd(out, w, g, norm, lr, *state, momentum, nesterov, weight_decay, max_norm,
          folded=False, skipped=None):
    if folded and not max_norm:     # g arrives as lr * g (optim.py seeds with lr)
        return source("""
            if math.isfinite(flat.dot(flat)):
                np.subtract(w, g, out=w)
            else:
                guard[...] = math.nan
            """, flat=g.reshape(-1), w=w, g=g, guard=norm)
    if folded:
        gate = _gate(g, norm, max_norm)

        def folded_update():
            if gate() is not None:
                np.subtract(w, g, out=w)
        return folded_update
    v = state[0] if state else None
    mu = constant(momentum, (), w.dtype)      # a 0-d array beats a Python float operand

    def body(u, d, t):
        if v is not None:
            np.multiply(v, mu, out=v)
            np.add(v, u, out=v)
            if nesterov:
                np.multiply(v, mu, out=t)
                u = np.add(u, t, out=d)
            else:
                u = v
        _descend(w, u, lr, t)
    return _gated(w, g, norm, max_norm, weight_decay, body, skipped)


def b_rmsprop(out, w, g, norm, lr, s, *state, alpha, eps, momentum, centered, weight_decay,
              max_norm, skipped=None):
    b = state[0] if momentum else None
    a = state[-1] if centered else None
    beta, mu, eps = _ema_weights(alpha, w.dtype), _scalar(momentum, w), _scalar(eps, w)

    def body(u, d, t):
        _ema(s, np.multiply(u, u, out=t), beta)
        if a is not None:
            _ema(a, u, beta, t)
            np.multiply(a, a, out=t)
            np.subtract(s, t, out=t)
            np.sqrt(t, out=t)
        else:
            np.sqrt(s, out=t)
        np.add(t, eps, out=t)
        np.divide(u, t, out=t)
        if b is not None:
            np.multiply(b, mu, out=b)
            np.add(b, t, out=b)
        _descend(w, t if b is None else b, lr, t)
    return _gated(w, g, norm, max_norm, weight_decay, body, skipped)


def _scalar(value, like) -> np.ndarray:
    """`value` as a read-only 0-d array of like's dtype: the value NumPy would cast a Python
    float operand to, and a cheaper operand to call with (about 1 us per call on small arrays)."""
    return constant(value, (), like.dtype)


def _ema_weights(beta: float, dtype) -> tuple:
    """(beta, 1 - beta) as 0-d constants of `dtype`, the weights of `_ema`."""
    return constant(beta, (), dtype), constant(1 - beta, (), dtype)


def _ema(avg, x, weights, tmp=None) -> None:
    """avg = beta * avg + (1 - beta) * x, in place (x itself is overwritten without tmp);
    `weights` is (beta, 1 - beta) from `_ema_weights`."""
    tmp = x if tmp is None else tmp
    beta, rest = weights
    np.multiply(avg, beta, out=avg)
    np.multiply(x, rest, out=tmp)
    np.add(avg, tmp, out=avg)


def b_adagrad(out, w, g, norm, lr, s, *, eps, weight_decay, max_norm, skipped=None):
    eps = _scalar(eps, w)

    def body(u, d, t):
        np.multiply(u, u, out=t)
        np.add(s, t, out=s)
        np.sqrt(s, out=t)
        np.add(t, eps, out=t)
        np.divide(u, t, out=t)
        _descend(w, t, lr, t)
    return _gated(w, g, norm, max_norm, weight_decay, body, skipped)


def _adam(decoupled: bool):
    """Adam (L2 weight decay in the gradient) or AdamW (decoupled: w *= 1 - lr * wd first).
    The step's scalars (bias corrections, the decay factor) are Python floats cast once
    into 0-d scratch of w's dtype, as NumPy casts a Python float operand: the same bits."""
    def bind(out, w, g, norm, lr, m, v, count, *, betas, eps, weight_decay, max_norm,
             skipped=None):
        b1, b2 = betas
        first_count = count.reshape(-1)[:1].reshape(())   # every param's, in a flat update
        first, second = _ema_weights(b1, w.dtype), _ema_weights(b2, w.dtype)
        one, eps = _scalar(1, w), _scalar(eps, w)
        keep, root, size = (scratch((), w.dtype) for _ in range(3))

        def body(u, d, t):
            rate = float(lr)
            if decoupled and weight_decay:
                keep[...] = 1 - rate * weight_decay
                np.multiply(w, keep, out=w)
            np.add(count, one, out=count)
            k = float(first_count)
            root[...], size[...] = math.sqrt(1 - b2 ** k), rate / (1 - b1 ** k)
            _ema(m, u, first, t)
            _ema(v, np.multiply(u, u, out=t), second)
            np.sqrt(v, out=t)
            np.divide(t, root, out=t)
            np.add(t, eps, out=t)
            np.divide(m, t, out=t)
            _descend(w, t, size, t)
        return _gated(w, g, norm, max_norm, 0.0 if decoupled else weight_decay, body,
                      skipped)
    return bind


def b_allreduce(out, weight, *values):
    """out = the sum over ranks of `weight`; each value <- the sum over ranks of weight *
    value: the bytes from `out` to the last value (the planner places them side by side,
    plan.py's `together`) are scaled and summed in one in-place MPI allreduce."""
    span = side_by_side((out,) + values)
    world = parallel.world()

    def sync():
        out[...] = 1
        np.multiply(span, weight, out=span)
        world.allreduce(span)
    return sync


def side_by_side(arrays) -> np.ndarray:
    """One flat view of the bytes from the first array's start to the last one's end, which
    must follow each other in that order in one buffer (alignment padding between them is
    summed too, and never read)."""
    first, last = arrays[0], arrays[-1]
    base, start = first.base, address(first)
    at = start
    for a in arrays:
        gap = address(a) - at
        if base is None or a.base is not base or a.dtype != first.dtype \
                or not 0 <= gap < ALIGN:
            raise ValueError("allreduce: its values are not side by side in one buffer of "
                             "one dtype (plan.compile_plan's `together`)")
        at = address(a) + a.nbytes
    offset = start - address(base)
    return base[offset:offset + address(last) + last.nbytes - start].view(first.dtype)


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


FLAT = ("sgd", "rmsprop", "adagrad", "adam", "adamw")    # elementwise: flat_updates
BIND = {"allreduce": b_allreduce, "grad_norm": b_grad_norm, "sgd": b_sgd, "rmsprop": b_rmsprop, "adagrad": b_adagrad,
        "adam": _adam(False), "adamw": _adam(True)}
