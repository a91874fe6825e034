"""Many params' updates as one: a flat update over the params laid out side by side.

The params of a model lie side by side in one array (`model.pack`), and so does each
kind of optimizer state (`model.zero_state`). Where the updates of one optimizer and
settings all lie so, the backend runs them as one update over flat views, one NumPy call
per operation where each param made its own (docs/design.md, "The training step"):

- `stash_gradients` (before binding) places each gradient that only its update reads
  in a stash laid out as the params, so the flat update reads them where they were
  computed (plain SGD: params up to FLAT_SGD_BYTES; other optimizers: any size);
- `flat_updates` (after binding) makes every update step but the last of a group run
  nothing, and the last update every param at once (`_flat_sgd`, `_flat`); gradients
  not placed in the stash are copied into one, each by its own update step.
Every element sees the same operations, so the numbers are the per-param updates'.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from .bind import source
from .updates import BIND, FLAT, address, side_by_side


def flat_updates(steps, calls, values, workspace, stashed=frozenset()) -> list:
    """(steps, call) runs of the bound `calls` of `steps`, one per step, where the updates
    of one op, attrs, guard and learning rate whose params and states each lie side by
    side in one array with the same gaps (model.pack) run as one: each gradient is in a
    stash laid out as the params (`stashed`: the gradients `stash_gradients` computed
    into one; the others each update step copies into one), and the last of them in the
    plan updates every param over flat views, one NumPy call per operation where each
    param made its own. Each update follows every reader of its param, so every param is read
    before the last update writes it; gradients die where they did. Every element sees
    the same operations, so the numbers are the per-param updates'. When the whole
    gradient is not finite, or Adam's step counts differ, the last update runs the
    per-param updates (over the stash) instead, each skipping itself or not as always.
    Plain SGD copies nothing: its gradients are computed into the stash (`_flat_sgd`)."""
    chosen: dict = {}
    for group in _groups(zip(steps, calls)):
        flat = _flat_sgd if group[0][0].attrs.get("folded") else _flat
        chosen.update(flat(group, values, workspace, stashed) or {})
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


def stash_gradients(steps, values: dict, buffers) -> frozenset:
    """Where the updates of one optimizer and settings have their params side by side
    (model.pack) and each gradient is a planned value only its update reads, place the
    gradients in a stash laid out as the params, outside the arena (their arena bytes
    stay unused), so that the flat update reads them where they were computed
    (`_flat_sgd`, `_flat`) instead of a copy of each: plain SGD (the learning rate
    folded in, no clipping) where the params take at most FLAT_SGD_BYTES (larger ones
    update one by one, each while its gradient is in the cache), every other optimizer
    at any size (its flat update needs the stash anyway). Call before binding: `values`
    (name -> array) is rewritten. Returns the names of the gradients placed."""
    readers, placed = Counter(n for s in steps for n in s.inputs), set()
    for group in _groups((s, None) for s in steps):
        by_place = sorted((s for s, _ in group), key=lambda s: address(values[s.inputs[0]]))
        span = _span([values[s.inputs[0]] for s in by_place])
        names = [s.inputs[1] for s in by_place]
        if span is None or (group[0][0].attrs.get("folded") and
                            span[0].nbytes > FLAT_SGD_BYTES) or any(
                n not in buffers or readers[n] != 1 or values[n].dtype != span[0].dtype
                for n in names):
            continue
        stash = np.zeros_like(span[0])
        for name, at in zip(names, span[1]):
            values[name] = stash[at:at + values[name].size].reshape(values[name].shape)
        placed.update(names)
    return frozenset(placed)


def _flat_sgd(group, values, workspace, stashed) -> Optional[dict]:
    """step index -> its call for plain SGD with the learning rate folded in, where
    `stash_gradients` placed the gradients as the params lie: each update step but the
    last runs nothing, and the last checks the whole stash once and subtracts it from
    every param, or, when it is not finite, runs each param's own update (each skipping
    itself or not, as always). Every element sees the same subtraction: the per-param
    updates' numbers. None where the gradients were not stashed so."""
    if not all(s.inputs[1] in stashed for s, _ in group):
        return None
    by_place = sorted(group, key=lambda sc: address(values[sc[0].inputs[0]]))
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


def _flat(group, values, workspace, stashed) -> Optional[dict]:
    """step index -> its call in the flat update of `group` ((step, call) pairs in plan
    order), or None where the arrays do not lie side by side alike."""
    by_place = sorted(group, key=lambda sc: address(values[sc[0].inputs[0]]))
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
    placed = _span(grads) if all(s.inputs[1] in stashed for s, _ in group) else None
    if placed is not None and placed[1] == at and placed[0].size == w.size:
        stash, views = placed[0], {s.index: g for (s, _), g in zip(by_place, grads)}
    else:                           # the step's gradients, laid out as the params (gaps 0)
        stash = np.zeros_like(w)
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
    out = {s.index: source("pass") if views[s.index] is values[s.inputs[1]] else
           source("np.copyto(stashed, g)", stashed=views[s.index], g=values[s.inputs[1]])
           for s, _ in group}
    last = group[-1][0]
    copy = out[last.index]
    out[last.index] = source("flat_update()", flat_update=flat_update) if copy.text == "pass" \
        else source("""
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
    start = address(arrays[0])
    return flat, tuple((address(a) - start) // a.itemsize for a in arrays)
