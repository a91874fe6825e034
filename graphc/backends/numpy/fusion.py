"""Fused kernels (numba, the `graphc[numba]` extra): runs of steps as single loops.

`fuse_runs` rewrites the generated step code's runs (codegen.py) where a pattern
matches; everything else, matmuls included (they stay on BLAS), runs as generated.

| steps                                   | fused kernel         | rounding vs NumPy       |
|-----------------------------------------|----------------------|-------------------------|
| add(m, bias) [+ relu, its only reader]  | `bias_add[_relu]`    | bit for bit             |
| relu_grad(g, y)                         | `relu_mask`          | bit for bit             |
| sgd (plain, lr folded into g) [1]       | `sgd_folded`         | bit for bit (guard: below) |
| sgd with momentum (no nesterov, decay, clipping) | `sgd_momentum` | bit for bit (guard: below) |
| adam, adamw (no clipping)               | `adam`               | bit for bit (guard: below) |
| rmsprop (no clipping, not centered)     | `rmsprop`            | bit for bit (guard: below) |
| softmax_cross_entropy_stats + its loss  | `softmax_ce`         | exp and sums differ     |
| softmax_cross_entropy_grad              | `softmax_ce_grad`    | bit for bit, given stats |
| im2col, col2im, max pooling, conv + relu | fused_conv.py       | bit for bit             |
| gelu, layer_norm and their gradients    | fused_seq.py         | gelu: bit for bit       |

[1] Where flat._flat_sgd made the plain SGD updates one flat update (small params),
it stays: one dot and one subtraction beat a numba loop per param.

numba's exp is the C library's, NumPy's a SIMD one: they differ in the last bit for some
inputs. The row sums and the batch mean are sequential loops, where NumPy goes through
BLAS dot: another order of the same additions. `tests/test_step_code.py` bounds the
difference at 1e-6 relative in float32. The fused SGD guard sums squares in float64 and
calls the gradient non-finite past the dtype's largest value, as the float32 dot
overflows there; the fused Adam and RMSprop updates share it. Their bias corrections and
scalars are the dtype's values of updates.py's Python floats, each product and sum in
the same order, so they are bit for bit. Kernels are compiled with `cache=True`: the
first run on a machine compiles them (about a second each), later runs load them from numba's cache.
"""
from __future__ import annotations

import ast
import math

import numba
import numpy as np
from numba import njit
from numba.core.dispatcher import Dispatcher

from .bind import source
from .copies import reader_counts
from .fused_conv import CONV_PATTERNS
from .fused_seq import SEQUENCE_PATTERNS
from .softmax import logit_rows, unpack_stats


@njit(cache=True)
def bias_add(m, b, out):
    """out = m + b, b broadcast along the rows of m."""
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            out[i, j] = m[i, j] + b[j]


@njit(cache=True)
def bias_add_relu(m, b, zero, out):
    """out = relu(m + b), as np.maximum(m + b, 0) gives it: NaN passes, -0.0 becomes 0.
    `zero` is a 0-d array of the dtype, so both branches have it (a vector select)."""
    z = zero[()]
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            v = m[i, j] + b[j]
            out[i, j] = v if v > 0 or v != v else z


@njit(cache=True)
def relu_mask(g, y, zero, out):
    """out = g * (y > 0) over flat arrays, as NumPy's g * mask: g where y > 0, else g * 0
    (-0.0 for a negative g, NaN for an infinite one). `zero`: 0-d, of the dtype."""
    z = zero[()]
    for i in range(g.shape[0]):
        out[i] = g[i] if y[i] > 0 else g[i] * z


@njit(cache=True, fastmath={"reassoc"})
def _sum_of_squares(g):
    """The sum of g's squares in float64 (the guard of the fused updates), g flat. Its
    additions may be reordered (`reassoc`, no other fast-math flag: NaN and inf still
    propagate): one running sum waits on each addition's latency, 6x BLAS's time on
    16k floats, where partial sums vectorize. The sum is compared, never stored."""
    total = 0.0
    for i in range(g.shape[0]):
        total += float(g[i]) * float(g[i])
    return total


@njit(cache=True)
def sgd_folded(w, g, guard, largest):
    """w -= g when the sum of g's squares is finite and at most `largest`; else guard = NaN.
    w and g flat."""
    if _sum_of_squares(g) <= largest:
        for i in range(g.shape[0]):
            w[i] -= g[i]
    else:
        guard[()] = math.nan


@njit(cache=True)
def sgd_momentum(w, g, v, guard, lr, mu, largest):
    """v = mu * v + g; w -= lr * v (torch's SGD with momentum), guarded as `sgd_folded`;
    w, g and v flat, lr and mu 0-d arrays of the dtype."""
    if _sum_of_squares(g) <= largest:
        rate, m = lr[()], mu[()]
        for i in range(g.shape[0]):
            v[i] = v[i] * m + g[i]
            w[i] = w[i] - v[i] * rate
    else:
        guard[()] = math.nan


@njit(cache=True, error_model="numpy")    # a division that may raise does not vectorize
def adam(w, g, m, v, count, guard, h, largest):
    """updates.py's Adam/AdamW in one pass, each operation in the same order and dtype,
    guarded as `sgd_folded`. h (the dtype's scalars): b1, 1 - b1, b2, 1 - b2,
    sqrt(1 - b2^k), eps, lr / (1 - b1^k), 1 - lr wd (AdamW), wd (Adam's L2 term)."""
    if not _sum_of_squares(g) <= largest:
        guard[()] = math.nan
        return
    count[()] += 1
    b1, c1, b2, c2, root, eps, rate, keep, wd = h[0], h[1], h[2], h[3], h[4], h[5], h[6], \
        h[7], h[8]
    for i in range(g.shape[0]):
        wi, u = w[i], g[i]
        if keep != 1:
            wi = wi * keep
        if wd != 0:
            u = u + wi * wd
        mi = m[i] * b1 + u * c1
        vi = v[i] * b2 + u * u * c2
        m[i], v[i] = mi, vi
        w[i] = wi - mi / (np.sqrt(vi) / root + eps) * rate


@njit(cache=True, error_model="numpy")
def rmsprop(w, g, s, b, lr, guard, h, largest):
    """updates.py's RMSprop (not centered) in one pass, guarded as `sgd_folded`; b is the
    momentum buffer (unused when h[3], the momentum, is 0). h: alpha, 1 - alpha, eps,
    momentum, wd (the L2 term)."""
    if not _sum_of_squares(g) <= largest:
        guard[()] = math.nan
        return
    alpha, c, eps, mu, wd, rate = h[0], h[1], h[2], h[3], h[4], lr[()]
    for i in range(g.shape[0]):
        u = g[i]
        if wd != 0:
            u = u + w[i] * wd
        si = s[i] * alpha + u * u * c
        s[i] = si
        t = u / (np.sqrt(si) + eps)
        if mu != 0:
            t = b[i] * mu + t
            b[i] = t
        w[i] = w[i] - t * rate


@njit(cache=True)
def softmax_ce(z, labels, e, s, picked, loss, inv_rows):
    """The packed stats of softmax cross-entropy (softmax.py) and its loss, in one pass."""
    total = 0.0
    for i in range(z.shape[0]):
        mx = z[i, 0]
        for j in range(1, z.shape[1]):
            c = z[i, j]
            if not (mx >= c or mx != mx):
                mx = c
        s[i] = 0
        for j in range(z.shape[1]):
            v = np.exp(z[i, j] - mx)
            e[i, j] = v
            s[i] += v
        picked[i] = z[i, labels[i]] - mx
        total += np.log(s[i]) - picked[i]
    loss[()] = total * inv_rows[()]


@njit(cache=True)
def softmax_ce_grad(g, e, s, labels, out, inv_rows):
    """out = g / rows * (e / s - onehot(labels)), as softmax.b_grad computes it."""
    scale = g[()] * inv_rows[()]
    for i in range(e.shape[0]):
        r = scale / s[i]
        for j in range(e.shape[1]):
            out[i, j] = e[i, j] * r
        out[i, labels[i]] = out[i, labels[i]] - scale


# --- the patterns: (runs, i, facts) -> (fused run, runs used) or None ---

class Facts:
    """What a pattern may ask of the plan: arrays, readers, and when a value dies."""

    def __init__(self, runs, values, buffers):
        self.values, self.buffers = values, buffers
        self.readers = reader_counts(runs)

    def arrays(self, step) -> list:
        return [self.values[n] for n in (*step.inputs, step.outputs[0])]

    def dies_at(self, value: str, step) -> bool:
        """`value` is a planned value read only by `step`, and nobody keeps it."""
        b = self.buffers.get(value)
        return b is not None and self.readers.get(value) == 1 and b.last_step == step.index


def _floats(*arrays) -> bool:
    dtype = arrays[0].dtype
    return dtype.kind == "f" and all(a.dtype == dtype and a.flags.c_contiguous for a in arrays)


def _bias(runs, i, facts):
    """add(m, b) with b a row vector, and the relu reading it next if it is the only one."""
    (step,), _ = runs[i]
    if step.op != "add":
        return None
    m, b, out = facts.arrays(step)
    if not (_floats(m, b, out) and m.ndim == 2 and b.shape == m.shape[1:] == out.shape[1:]
            and out.shape == m.shape):
        return None
    nxt = runs[i + 1][0] if i + 1 < len(runs) else ()
    if (len(nxt) == 1 and nxt[0].op == "relu" and nxt[0].inputs == step.outputs
            and facts.dies_at(step.outputs[0], nxt[0])):
        relu_out = facts.values[nxt[0].outputs[0]]
        return ((step, nxt[0]), source("bias_add_relu(m, b, zero, out)",
                                       bias_add_relu=bias_add_relu, m=m, b=b,
                                       zero=np.zeros((), m.dtype), out=relu_out)), 2
    return ((step,), source("bias_add(m, b, out)", bias_add=bias_add, m=m, b=b, out=out)), 1


def _relu_grad(runs, i, facts):
    (step,), _ = runs[i]
    if step.op != "relu_grad":
        return None
    g, y, out = facts.arrays(step)
    if not (_floats(g, y, out) and g.shape == y.shape == out.shape):
        return None
    return ((step,), source("relu_mask(g, y, zero, out)", relu_mask=relu_mask,
                            g=g.reshape(-1), y=y.reshape(-1), zero=np.zeros((), g.dtype),
                            out=out.reshape(-1))), 1


def _sgd(runs, i, facts):
    (step,), call = runs[i]
    if step.op != "sgd" or not step.attrs.get("folded") or step.attrs.get("max_norm") \
            or getattr(call, "flat", False):      # one flat update already (flat._flat_sgd)
        return None
    w, g, guard = (facts.values[n] for n in step.inputs[:3])
    if not (_floats(w, g) and w.shape == g.shape):
        return None
    return ((step,), source("sgd_folded(w, g, guard, largest)", sgd_folded=sgd_folded,
                            w=w.reshape(-1), g=g.reshape(-1), guard=guard,
                            largest=float(np.finfo(w.dtype).max))), 1


def _sgd_momentum(runs, i, facts):
    """SGD with momentum, without Nesterov, weight decay or clipping."""
    (step,), _ = runs[i]
    a = step.attrs
    if (step.op != "sgd" or a.get("folded") or not a.get("momentum") or a.get("nesterov")
            or a.get("weight_decay") or a.get("max_norm") or len(step.inputs) != 5):
        return None
    w, g, guard, lr, v = (facts.values[n] for n in step.inputs)
    if not (_floats(w, g, v) and w.shape == g.shape == v.shape and lr.dtype == w.dtype):
        return None
    return ((step,), source(
        "sgd_momentum(w, g, v, guard, lr, mu, largest)", sgd_momentum=sgd_momentum,
        w=w.reshape(-1), g=g.reshape(-1), v=v.reshape(-1), guard=guard, lr=lr,
        mu=np.asarray(a["momentum"], dtype=w.dtype), largest=float(np.finfo(w.dtype).max))), 1


def _update(step, facts, count: int):
    """(w, g, guard, lr, state...) of an update step with `count` state leaves and no
    clipping, its arrays of one float dtype and w's shape, flat; or None."""
    if step.attrs.get("max_norm") or len(step.inputs) != 4 + count:
        return None
    w, g, guard, lr, *state = (facts.values[n] for n in step.inputs)
    same = [w, g, *(s for s in state if s.shape)]
    if not (_floats(*same) and all(a.shape == w.shape for a in same) and lr.dtype == w.dtype):
        return None
    return (w.reshape(-1), g.reshape(-1), guard, lr,
            *(s.reshape(-1) if s.shape else s for s in state))


def _adam(runs, i, facts):
    """Adam and AdamW without clipping: the bias corrections are computed per step in
    Python, as updates.py computes them, and written into h in the dtype."""
    (step,), _ = runs[i]
    a = step.attrs
    arrays = _update(step, facts, 3) if step.op in ("adam", "adamw") else None
    if arrays is None:
        return None
    w, g, guard, lr, m, v, count = arrays
    (b1, b2), wd = a["betas"], a["weight_decay"]
    h = np.array([b1, 1 - b1, b2, 1 - b2, 1, a["eps"], 0, 1, 0], dtype=w.dtype)
    decoupled = "h[7] = 1 - float(lr) * wd" if step.op == "adamw" and wd else ""
    h[8] = wd if step.op == "adam" else 0
    return ((step,), source(f"""
        k = float(count) + 1
        h[4] = math.sqrt(1 - b2 ** k)
        h[6] = float(lr) / (1 - b1 ** k)
        {decoupled}
        adam(w, g, m, v, count, guard, h, largest)
        """, h=h, count=count, b1=float(b1), b2=float(b2), lr=lr, wd=float(wd),
        adam=adam, w=w, g=g, m=m, v=v, guard=guard, largest=float(np.finfo(w.dtype).max))), 1


def _rmsprop(runs, i, facts):
    """RMSprop without clipping or centering, with or without momentum."""
    (step,), _ = runs[i]
    a = step.attrs
    if step.op != "rmsprop" or a.get("centered"):
        return None
    arrays = _update(step, facts, 2 if a.get("momentum") else 1)
    if arrays is None:
        return None
    w, g, guard, lr, s, *b = arrays
    h = np.array([a["alpha"], 1 - a["alpha"], a["eps"], a["momentum"], a["weight_decay"]],
                 dtype=w.dtype)
    return ((step,), source("rmsprop(w, g, s, b, lr, guard, h, largest)", rmsprop=rmsprop,
                            w=w, g=g, s=s, b=b[0] if b else s, lr=lr, guard=guard, h=h,
                            largest=float(np.finfo(w.dtype).max))), 1


def _softmax(runs, i, facts):
    """softmax_cross_entropy_stats, then the loss reading those stats."""
    (step,), _ = runs[i]
    nxt = runs[i + 1][0] if i + 1 < len(runs) else ()
    if not (step.op == "softmax_cross_entropy_stats" and len(nxt) == 1
            and nxt[0].op == "softmax_cross_entropy" and nxt[0].inputs[2] == step.outputs[0]):
        return None
    logits, labels, stats = facts.arrays(step)
    loss = facts.values[nxt[0].outputs[0]]
    if not _floats(logits, stats, loss):
        return None
    rows, classes = logit_rows(logits)
    e, s, picked = unpack_stats(stats, rows, classes)
    return ((step, nxt[0]), source(
        "softmax_ce(z, labels, e, s, picked, loss, inv_rows)", softmax_ce=softmax_ce,
        z=logits.reshape(rows, classes), labels=labels.reshape(rows), e=e, s=s,
        picked=picked, loss=loss, inv_rows=_inverse(rows, loss.dtype))), 2


def _softmax_grad(runs, i, facts):
    (step,), _ = runs[i]
    if step.op != "softmax_cross_entropy_grad":
        return None
    g, logits, labels, stats, out = facts.arrays(step)
    if not (_floats(g, logits, stats, out) and g.ndim == 0):
        return None
    rows, classes = logit_rows(logits)
    e, s, _ = unpack_stats(stats, rows, classes)
    return ((step,), source(
        "softmax_ce_grad(g, e, s, labels, out, inv_rows)", softmax_ce_grad=softmax_ce_grad,
        g=g, e=e, s=s, labels=labels.reshape(rows), out=out.reshape(rows, classes),
        inv_rows=_inverse(rows, out.dtype))), 1


def _inverse(rows: int, dtype) -> np.ndarray:
    """1 / rows as a 0-d array of `dtype`, as softmax.py's kernels scale by it."""
    return np.asarray(1.0 / max(rows, 1), dtype=dtype)


PATTERNS = (_bias, _relu_grad, _sgd, _sgd_momentum, _adam, _rmsprop, _softmax, _softmax_grad,
            *CONV_PATTERNS, *SEQUENCE_PATTERNS)


def dispatched_once(call):
    """`call` (bind.source text) with each numba kernel it calls replaced by the entry point
    compiled for the very arguments it is bound to: numba's type dispatch, about a
    microsecond per call, is paid here once instead of every step."""
    names = dict(call.names)
    for node in ast.walk(ast.parse(call.text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                isinstance(names.get(node.func.id), Dispatcher):
            kernel = names[node.func.id]
            names[node.func.id] = kernel.compile(tuple(numba.typeof(names[a.id])
                                                       for a in node.args))
    return source(call.text, **names)


def fuse_runs(runs, values, buffers, patterns=None) -> list:
    """`runs` ((steps, call) pairs in order) with each matching pattern's steps replaced
    by one fused run; `values` holds the plan's arrays, `buffers` its planned values.
    `patterns`: those to try (default PATTERNS); a run of several steps stays as it is."""
    facts, fused, i = Facts(runs, values, buffers), [], 0
    patterns = PATTERNS if patterns is None else patterns
    while i < len(runs):
        match = len(runs[i][0]) == 1 and \
            next((m for m in (p(runs, i, facts) for p in patterns) if m), None)
        run, used = match or (runs[i], 1)
        fused.append((run[0], dispatched_once(run[1])) if match else run)
        i += used
    return fused
