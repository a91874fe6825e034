"""Fused sequence kernels (numba): gelu, layer_norm, their gradients, softmax's gradient.

On the sort transformer's [64, 11, 256] and [64, 11, 64] values each NumPy kernel of
nn.py, fast.py and sequence.py makes 3 to 10 passes over arrays larger than a core's L2
cache; one loop makes one. fusion.py's `fuse_runs` offers each step of the fused step
code to `SEQUENCE_PATTERNS` as to its own patterns (`--step-code fused`,
`GRAPHC_STEP_CODE=fused`); the gelu ones, bit for bit (`GELU_PATTERNS`), also run on the
default step code wherever numba imports (`Backend.bitwise_kernels`).

| steps                                   | fused kernels                     | rounding vs NumPy |
|-----------------------------------------|-----------------------------------|-------------------|
| [bias add +] gelu_tanh [+ gelu]         | `gelu_inner`, np.tanh, `gelu_out` | bit for bit       |
| gelu_grad                               | `gelu_grad`                       | bit for bit       |
| layer_norm_stats [+ layer_norm after it] | `layer_norm_forward`             | row sums differ   |
| layer_norm_grad wrt x                   | `layer_norm_grad_x`               | row sums differ   |
| softmax_grad over the last axis         | `softmax_rows_grad`               | row sums differ   |

The gelu kernels do nn.py's and fast.py's float operations in their order, in the
dtype (the constants are passed as arrays of it; numba contracts nothing into an FMA
without fast-math), so they are bit for bit. tanh stays NumPy's (numba's is the C
library's, several times slower per element and not the same bits). layer_norm's row
means are vectorized sums times 1/D where NumPy's kernels take BLAS dot products with a
1/D vector, and softmax_grad's row sums likewise: another order of the same additions,
within the fused tolerance (1e-6 relative, float32) that `tests/test_fused_seq.py`
checks. Attention's probabilities stay NumPy's: a loop of its scores and row sums
measured slower than kᵀ copied, BLAS and NumPy's exp (numba's exp is the C library's).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .bind import source
from .nn import GELU_C, GELU_K
from .sequence import unpack_layer_norm


@njit(cache=True)
def gelu_inner(x, out, h):
    """out = (x x k + 1) x c, nn.b_gelu_tanh's operations before its tanh; x, out flat,
    h = (k, 1, c) in the dtype."""
    k, one, c = h[0], h[1], h[2]
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = (v * v * k + one) * v * c


@njit(cache=True)
def bias_gelu_inner(x, b, t, h):
    """x += b (b along x's rows), then t = `gelu_inner` of it, row by row (two loops, each
    of which vectorizes); x, t [rows, width]."""
    k, one, c = h[0], h[1], h[2]
    for r in range(x.shape[0]):
        row, out = x[r], t[r]
        for j in range(row.shape[0]):
            row[j] = row[j] + b[j]
        for j in range(row.shape[0]):
            v = row[j]
            out[j] = (v * v * k + one) * v * c


@njit(cache=True)
def gelu_out(x, t, out, h):
    """out = (t + 1) x / 2, nn.b_gelu's operations; h = (1, 0.5) in the dtype."""
    one, half = h[0], h[1]
    for i in range(x.shape[0]):
        out[i] = (t[i] + one) * x[i] * half


@njit(cache=True)
def _gelu_slope(v, u, h):
    """(((v v 3ck/2 + c/2) v (1 - u) + 1/2) (u + 1)), fast.b_gelu_grad's operations in
    its order (x = v, t = u); h = (3ck/2, c/2, 1, 0.5) in the dtype."""
    w = (v * v * h[0] + h[1]) * v
    return (w * (h[2] - u) + h[3]) * (u + h[2])


@njit(cache=True)
def gelu_grad(g, x, t, out, h):
    """out = g gelu'(x), t the saved tanh, all flat."""
    for i in range(x.shape[0]):
        out[i] = g[i] * _gelu_slope(x[i], t[i], h)


@njit(cache=True)
def gelu_grad_in_place(g, x, t, h):
    """g = g gelu'(x): `gelu_grad` written over g, as the planner may place it. Its own
    kernel, because a loop whose output may overlap an input does not vectorize (2.5x)."""
    for i in range(x.shape[0]):
        g[i] = g[i] * _gelu_slope(x[i], t[i], h)


@njit(cache=True, fastmath={"reassoc"})
def _dot(a, b):
    """sum over k of a[k] b[k], reordered freely (`reassoc` alone: NaN and inf still
    propagate), so the loop vectorizes."""
    total = a[0] * 0
    for k in range(a.shape[0]):
        total += a[k] * b[k]
    return total


@njit(cache=True, fastmath={"reassoc"})
def _dot3(a, b, c):
    """sum over k of a[k] b[k] c[k], reordered freely as `_dot`."""
    total = a[0] * 0
    for k in range(a.shape[0]):
        total += a[k] * b[k] * c[k]
    return total


@njit(cache=True, error_model="numpy")    # x / 0 is inf as in NumPy, never raises
def layer_norm_forward(x, ones, xhat, inv_std, gamma, beta, out, h, affine):
    """Per row: x̂ = (x - mean) / σ, 1/σ, σ = sqrt(var + eps) (biased var); out = x̂ γ + β
    when `affine`. x, xhat, out [rows, D]; inv_std [rows]; ones [D]; h = (1/D, eps, 1)
    in the dtype."""
    by_d, eps, one = h[0], h[1], h[2]
    for j in range(x.shape[0]):
        mean = _dot(x[j], ones) * by_d
        for k in range(x.shape[1]):
            xhat[j, k] = x[j, k] - mean
        inv = one / np.sqrt(_dot(xhat[j], xhat[j]) * by_d + eps)
        inv_std[j] = inv
        for k in range(x.shape[1]):
            xhat[j, k] = xhat[j, k] * inv
            if affine:
                out[j, k] = xhat[j, k] * gamma[k] + beta[k]


@njit(cache=True)
def layer_norm_grad_x(g, gamma, xhat, inv_std, out, by_d):
    """Per row, d = g γ: out = (d - x̂ mean(d x̂) - mean(d)) / σ, sequence.b_layer_norm_grad's
    formula; g, xhat, out [rows, D], inv_std [rows], by_d = 1/D (0-d, the dtype)."""
    scale = by_d[()]
    for j in range(g.shape[0]):
        projection = _dot3(g[j], gamma, xhat[j]) * scale
        mean = _dot(g[j], gamma) * scale
        for k in range(g.shape[1]):
            out[j, k] = (g[j, k] * gamma[k] - xhat[j, k] * projection - mean) * inv_std[j]


@njit(cache=True)
def softmax_rows_grad(g, y, out):
    """out = (g - sum(g y)) y row by row (softmax's gradient over the last axis), as
    nn.b_softmax_grad's operations; g, y, out [rows, S]; out may be g or y itself (each
    row's sum is taken before the row is written)."""
    for r in range(g.shape[0]):
        total = _dot(g[r], y[r])
        for j in range(g.shape[1]):
            out[r, j] = (g[r, j] - total) * y[r, j]


# --- the patterns: (runs, i, facts) -> (fused run, runs used) or None, as fusion.py's ---

def _arrays(step, facts, op: str, elementwise: bool = False):
    """The step's arrays (inputs, then output) when it is `op` over C-contiguous arrays of
    one float dtype, the output sharing no bytes with its inputs (an `elementwise` kernel
    may also write exactly over an input of its shape: each element is read, then
    written); else None."""
    if step.op != op:
        return None
    arrays = facts.arrays(step)
    out = arrays[-1]
    if out.dtype.kind != "f" or not all(a.dtype == out.dtype and a.flags.c_contiguous
                                        for a in arrays):
        return None
    if any(np.shares_memory(out, a) and not (elementwise and _same(out, a))
           for a in arrays[:-1]):
        return None
    return arrays


def _same(a, b) -> bool:
    """a and b are the same bytes with the same layout."""
    return a.shape == b.shape and a.__array_interface__["data"] == b.__array_interface__["data"]


def _next(runs, i, op: str):
    """The next run's step when it is one step of `op`; else None."""
    nxt = runs[i + 1][0] if i + 1 < len(runs) else ()
    return nxt[0] if len(nxt) == 1 and nxt[0].op == op else None


def _constants(dtype, *values) -> np.ndarray:
    return np.array(values, dtype=dtype)


def _gelu(runs, i, facts):
    """gelu_tanh, and the gelu after it when that reads this x and t: the polynomial in one
    pass, NumPy's tanh in place, then gelu's value in one pass. A bias add written in
    place just before, whose sum is this x, joins the polynomial's pass."""
    (step,), _ = runs[i]
    add = _bias_in_place(step, facts)
    if add is not None:
        step = _next(runs, i, "gelu_tanh")
        i += 1
    arrays = step and _arrays(step, facts, "gelu_tanh")
    if not arrays or (add and step.inputs[0] != add.outputs[0]):
        return None
    x, t = arrays
    lines = ["gelu_inner(x, t, h)", "np.tanh(t, out=t)"]
    names = {"gelu_inner": gelu_inner, "x": x.reshape(-1), "t": t.reshape(-1),
             "h": _constants(t.dtype, GELU_K, 1.0, GELU_C)}
    if add:
        width = x.shape[-1]
        lines[0] = "bias_gelu_inner(x2, b, t2, h)"
        names.update(bias_gelu_inner=bias_gelu_inner, x2=x.reshape(-1, width),
                     b=facts.values[add.inputs[1]], t2=t.reshape(-1, width))
    steps = (add, step) if add else (step,)
    gelu = _next(runs, i, "gelu")
    after = gelu and _arrays(gelu, facts, "gelu", elementwise=True)
    if after and gelu.inputs == (step.inputs[0], step.outputs[0]):
        lines.append("gelu_out(x, t, y, half)")
        names.update(gelu_out=gelu_out, y=after[-1].reshape(-1),
                     half=_constants(t.dtype, 1.0, 0.5))
        steps += (gelu,)
    return (steps, source("\n".join(lines), **names)), len(steps)


def _bias_in_place(step, facts):
    """`step` when it is add(m, b) written over m, b a vector along m's last axis, all of
    one float dtype and C-contiguous; else None."""
    arrays = _arrays(step, facts, "add", elementwise=True)
    if arrays is None:
        return None
    m, b, out = arrays
    if not (b.ndim == 1 and m.ndim >= 2 and b.shape == m.shape[-1:] and _same(out, m)):
        return None
    return step


def _gelu_grad(runs, i, facts):
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, "gelu_grad", elementwise=True)
    if arrays is None:
        return None
    g, x, t, out = (a.reshape(-1) for a in arrays)
    h = _constants(out.dtype, 1.5 * GELU_C * GELU_K, 0.5 * GELU_C, 1.0, 0.5)
    if _same(out, g):
        return ((step,), source("gelu_grad_in_place(g, x, t, h)",
                                gelu_grad_in_place=gelu_grad_in_place, g=g, x=x, t=t,
                                h=h)), 1
    return ((step,), source("gelu_grad(g, x, t, out, h)", gelu_grad=gelu_grad, g=g, x=x,
                            t=t, out=out, h=h)), 1


def _layer_norm(runs, i, facts):
    """layer_norm_stats, and the layer_norm after it when that reads these stats."""
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, "layer_norm_stats")
    if arrays is None:
        return None
    x, gamma, beta, stats = arrays
    xhat, inv_std = unpack_layer_norm(stats)
    width = xhat.shape[-1]
    rows = xhat.size // width
    steps, out, norm = (step,), xhat, _next(runs, i, "layer_norm")
    after = norm and _arrays(norm, facts, "layer_norm")
    if after and norm.inputs == (*step.inputs, step.outputs[0]) and \
            norm.attrs == step.attrs:
        steps, out = (step, norm), after[-1].reshape(rows, width)
    h = _constants(x.dtype, 1.0 / width, step.attrs.get("eps", 1e-5), 1.0)
    return (steps, source(
        "layer_norm_forward(x, ones, xhat, inv_std, gamma, beta, out, h, affine)",
        layer_norm_forward=layer_norm_forward, x=x.reshape(rows, width),
        ones=np.ones(width, x.dtype), xhat=xhat.reshape(rows, width),
        inv_std=inv_std.reshape(rows), gamma=gamma, beta=beta, out=out, h=h,
        affine=len(steps) == 2)), len(steps)


def _layer_norm_grad(runs, i, facts):
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, "layer_norm_grad")
    if arrays is None or step.attrs.get("wrt", "x") != "x":
        return None
    g, stats, gamma, out = arrays
    xhat, inv_std = unpack_layer_norm(stats)
    width = xhat.shape[-1]
    rows = xhat.size // width
    return ((step,), source(
        "layer_norm_grad_x(g, gamma, xhat, inv_std, out, by_d)",
        layer_norm_grad_x=layer_norm_grad_x, g=g.reshape(rows, width), gamma=gamma,
        xhat=xhat.reshape(rows, width), inv_std=inv_std.reshape(rows),
        out=out.reshape(rows, width),
        by_d=np.asarray(1.0 / width, dtype=g.dtype))), 1


def _softmax_grad(runs, i, facts):
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, "softmax_grad", elementwise=True)
    if arrays is None or step.attrs.get("axis", -1) not in (-1, arrays[0].ndim - 1) or \
            not arrays[0].ndim:
        return None
    g, y, out = (a.reshape(-1, a.shape[-1]) for a in arrays)
    return ((step,), source("softmax_rows_grad(g, y, out)",
                            softmax_rows_grad=softmax_rows_grad, g=g, y=y, out=out)), 1


GELU_PATTERNS = (_gelu, _gelu_grad)          # bit for bit: the default step code's too
SEQUENCE_PATTERNS = (*GELU_PATTERNS, _layer_norm, _layer_norm_grad, _softmax_grad)
