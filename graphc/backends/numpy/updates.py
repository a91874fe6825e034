"""NumPy kernels of the optimizer updates: `bind(out, w, g, norm, lr, *state, **attrs)`.

`out` is the parameter w itself: each update writes w and its state in place. `_gated`
takes two step-local scratch arrays of w's shape from the workspace and applies the
guard; each step then writes w and its state with no allocation. Formulas are PyTorch's
(see docs/training.md). Closures use ufunc `out=` forms, as an augmented assignment
would rebind the closed-over name.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional

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


def flat_updates(steps, calls, values, workspace) -> list:
    """(steps, call) runs of the bound `calls` of `steps`, one per step, where the updates
    of one op, attrs, guard and learning rate whose params and states each lie side by
    side in one array with the same gaps (model.pack) run as one: each copies its
    gradient into a stash laid out as the params, and the last of them in the plan
    updates every param over flat views, one NumPy call per operation where each param
    made its own. Each update follows every reader of its param, so every param is read
    before the last update writes it; gradients die where they did. Every element sees
    the same operations, so the numbers are the per-param updates'. When the whole
    gradient is not finite, or Adam's step counts differ, the last update runs the
    per-param updates (over the stash) instead, each skipping itself or not as always.
    Plain SGD copies nothing: its gradients are computed into the stash (`_flat_sgd`)."""
    chosen: dict = {}
    for group in _groups(zip(steps, calls)):
        flat = _flat_sgd if group[0][0].attrs.get("folded") else _flat
        chosen.update(flat(group, values, workspace) or {})
    return [((s,), chosen.get(s.index, c)) for s, c in zip(steps, calls)]


def _groups(pairs) -> list:
    """The (step, call) pairs of updates that can run as one (flat_updates), in plan
    order, grouped by op, attrs, guard and learning rate; groups of two or more."""
    groups: dict = {}
    for step, call in pairs:
        if step.op in FLAT and not (step.attrs.get("folded") and step.attrs.get("max_norm")):
            key = (step.op, repr(sorted(step.attrs.items())), step.inputs[2:4], len(step.inputs))
            groups.setdefault(key, []).append((step, call))
    return [g for g in groups.values() if len(g) > 1]


FLAT_SGD_BYTES = 512 * 1024     # larger params: each update while its gradient is in cache


def stash_gradients(steps, values: dict, buffers) -> None:
    """Plain SGD with the learning rate folded in (no clipping): where the params lie side
    by side (model.pack), take at most FLAT_SGD_BYTES, and each gradient is a planned
    value only its update reads, the gradients are placed in a stash laid out as the
    params, outside the arena (their arena bytes stay unused), so that one check and one
    subtraction update every param (`_flat_sgd`): on small params the calls, not the
    bytes, are the cost. Call before binding: `values` (name -> array) is rewritten."""
    readers = Counter(n for s in steps for n in s.inputs)
    for group in _groups((s, None) for s in steps if s.attrs.get("folded")):
        by_place = sorted((s for s, _ in group), key=lambda s: _address(values[s.inputs[0]]))
        span = _span([values[s.inputs[0]] for s in by_place])
        names = [s.inputs[1] for s in by_place]
        if span is None or span[0].nbytes > FLAT_SGD_BYTES or any(
                n not in buffers or readers[n] != 1 or values[n].dtype != span[0].dtype
                for n in names):
            continue
        stash = np.zeros_like(span[0])
        for name, at in zip(names, span[1]):
            values[name] = stash[at:at + values[name].size].reshape(values[name].shape)


def _flat_sgd(group, values, workspace) -> Optional[dict]:
    """step index -> its call for plain SGD with the learning rate folded in, where
    `stash_gradients` placed the gradients as the params lie: each update step but the
    last runs nothing, and the last checks the whole stash once and subtracts it from
    every param, or, when it is not finite, runs each param's own update (each skipping
    itself or not, as always). Every element sees the same subtraction: the per-param
    updates' numbers. None where the gradients were not stashed so."""
    by_place = sorted(group, key=lambda sc: _address(values[sc[0].inputs[0]]))
    w, g = (_span([values[s.inputs[k]] for s, _ in by_place]) for k in (0, 1))
    if w is None or g is None or w[1] != g[1] or w[0].size != g[0].size:
        return None
    out = {s.index: source("pass") for s, _ in group}
    out[group[-1][0].index] = source("""
        if math.isfinite(g.dot(g)):
            np.subtract(w, g, out=w)
        else:
            for update in each:
                update()
        """, w=w[0], g=g[0], each=tuple(c for _, c in group))
    for call in out.values():
        call.flat = True        # fused step code keeps it (fusion._sgd): 2 calls, not one a param
    return out


def _flat(group, values, workspace) -> Optional[dict]:
    """step index -> its call in the flat update of `group` ((step, call) pairs in plan
    order), or None where the arrays do not lie side by side alike."""
    by_place = sorted(group, key=lambda sc: _address(values[sc[0].inputs[0]]))
    columns = [[values[n] for n in col] for col in zip(*(s.inputs for s, _ in by_place))]
    params, grads, states = columns[0], columns[1], columns[4:]
    spans = [_span(col) for col in [params] + states]
    if any(s is None for s in spans):
        return None
    (w, at), counts = spans[0], []
    for col, (flat, offsets) in zip(states, spans[1:]):
        if col[0].shape == params[0].shape:
            if offsets != at or flat.size != w.size:
                return None
        elif offsets != tuple(range(len(col))) or col[0].shape:
            return None
        else:
            counts.append(flat)
    stash = np.zeros_like(w)        # the step's gradients, laid out as the params (gaps 0)
    views = {s.index: stash[a:a + g.size].reshape(g.shape)
             for (s, _), a, g in zip(by_place, at, grads)}
    step, norm, lr = group[0][0], values[group[0][0].inputs[2]], values[group[0][0].inputs[3]]
    per_param = []
    for s, _ in by_place:
        workspace.begin_step()
        per_param.append(BIND[s.op](values[s.inputs[0]], values[s.inputs[0]], views[s.index],
                                    norm, lr, *(values[n] for n in s.inputs[4:]), **s.attrs))

    def each():
        for call in per_param:
            call()
    workspace.begin_step()
    update = BIND[step.op](w, w, stash, norm, lr, *(f for f, _ in spans[1:]), skipped=each,
                           **step.attrs)

    def flat_update():
        for c in counts:
            if c.min() != c.max():
                return each()
        update()
    out = {s.index: source("np.copyto(stashed, g)", stashed=views[s.index],
                           g=values[s.inputs[1]]) for s, _ in group}
    last = group[-1][0]
    copy = out[last.index]
    out[last.index] = source("""
        copy()
        flat_update()
        """, copy=copy, flat_update=flat_update)
    return out


def _span(arrays) -> Optional[tuple]:
    """(one flat view over `arrays`, each one's offset in it) where they lie side by side
    in one buffer (`side_by_side`), each contiguous; else None."""
    if not all(a.flags.c_contiguous for a in arrays):
        return None
    try:
        flat = side_by_side(arrays)
    except ValueError:
        return None
    start = _address(arrays[0])
    return flat, tuple((_address(a) - start) // a.itemsize for a in arrays)


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
    base, start = first.base, _address(first)
    at = start
    for a in arrays:
        gap = _address(a) - at
        if base is None or a.base is not base or a.dtype != first.dtype \
                or not 0 <= gap < ALIGN:
            raise ValueError("allreduce: its values are not side by side in one buffer of "
                             "one dtype (plan.compile_plan's `together`)")
        at = _address(a) + a.nbytes
    offset = start - _address(base)
    return base[offset:offset + _address(last) + last.nbytes - start].view(first.dtype)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


FLAT = ("sgd", "rmsprop", "adagrad", "adam", "adamw")    # elementwise: flat_updates
BIND = {"allreduce": b_allreduce, "grad_norm": b_grad_norm, "sgd": b_sgd, "rmsprop": b_rmsprop, "adagrad": b_adagrad,
        "adam": _adam(False), "adamw": _adam(True)}
