"""Numba window kernels: im2col, col2im, max pooling, its gradient, conv + relu.

On small images (the digits CNN's 8x8 and 4x4 planes) the NumPy kernels of conv.py and
gather.py pay NumPy's per-call and per-row overhead many times per step; one loop over
the windows pays none. fusion.py's `fuse_runs` offers the generated step code's steps
to `CONV_PATTERNS` as to its own patterns. Being bit for bit NumPy's, they run in the
default step code wherever numba imports (`Backend.bitwise_kernels`) and in the fused one.

| steps                                        | kernel                    | rounding vs NumPy   |
|----------------------------------------------|---------------------------|---------------------|
| im2col (conv1d, conv2d)                      | `im2col`, `im2col_positions_first` | a copy: bit for bit |
| conv1d/2d with bias + relu, its only reader  | matmul + `conv_bias_relu[_t]` | bit for bit     |
| col2im                                       | `col2im`                  | bit for bit         |
| max_pool1d, max_pool2d                       | `max_pool`                | bit for bit         |
| max_pool_grad [+ relu_grad(it, pool's x)]    | `max_pool_grad`           | bit for bit         |

Bit for bit because the loops do the NumPy kernels' float operations in their order:
a gradient starts at +0 and each position adds its terms kernel offset by kernel offset
in row-major order (the order of conv.Scatter and gather.gather_sum); a window's max is
np.maximum's `a if a > b or a is NaN else b` from the first offset on; a max-pool
gradient term is `g * hit` with hit 1 or 0 in the dtype, so -0.0, NaN and inf come out
as NumPy's. 1-D windows run as 2-D ones with one row. Each kernel is compiled for its
step's geometry (kernel, stride, padding, dilation, input and output sizes) as
constants: numba unrolls the window loops then (`specialized`).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, types

from ...ops.conv import geometry, output_size, positions_first
from .bind import source


@njit(inline="always")
def _windows(xs, cs, adding, kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow):
    """The loop nest of im2col and col2im over planes xs [planes, H·W] and columns cs
    [planes, KH·KW, OH·OW]: slot (i·kw + j, a·ow + b) of a plane is its position (a·sh +
    i·dh - ph, b·sw + j·dw - pw). `adding` (col2im): each slot inside the plane is added
    onto its position, kernel offsets in row-major order; else (im2col) each slot is a
    copy of its position, 0 where that is padding."""
    for p in range(xs.shape[0]):
        for i in range(kh):
            for j in range(kw):
                for a in range(oh):
                    r = a * sh + i * dh - ph
                    for b in range(ow):
                        q = b * sw + j * dw - pw
                        inside = 0 <= r < h and 0 <= q < w
                        if adding:
                            if inside:
                                xs[p, r * w + q] += cs[p, i * kw + j, a * ow + b]
                        else:
                            cs[p, i * kw + j, a * ow + b] = xs[p, r * w + q] if inside else 0


@njit(cache=True)
def im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow):
    """cols [N, C·KH·KW, OH·OW] = x [N, C, H, W] at (a·sh + i·dh - ph, b·sw + j·dw - pw)
    for kernel offset (i, j) and output position (a, b); 0 where that is padding."""
    planes = x.shape[0] * x.shape[1]
    _windows(x.reshape(planes, h * w), cols.reshape(planes, kh * kw, oh * ow), False,
             kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow)


@njit(cache=True)
def col2im(dcols, out, kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow):
    """out [N, C, H, W] = +0, then each column entry added back where im2col read it,
    kernel offsets in row-major order (padding dropped)."""
    planes = out.shape[0] * out.shape[1]
    xs = out.reshape(planes, h * w)
    xs[...] = 0
    _windows(xs, dcols.reshape(planes, kh * kw, oh * ow), True,
             kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow)


@njit(cache=True)
def im2col_positions_first(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow):
    """cols [N, OH·OW, C·KH·KW] = im2col's columns, positions first (ops.conv's
    `positions_first`). Its own loop nest: position outermost, so that each position's
    row of C·KH·KW slots is written in order."""
    n, c = x.shape[0], x.shape[1]
    xs, cs = x.reshape(n, c, h * w), cols.reshape(n, oh * ow, c * kh * kw)
    for s in range(n):
        for a in range(oh):
            for b in range(ow):
                for ch in range(c):
                    for i in range(kh):
                        r = a * sh + i * dh - ph
                        for j in range(kw):
                            q = b * sw + j * dw - pw
                            inside = 0 <= r < h and 0 <= q < w
                            cs[s, a * ow + b, (ch * kh + i) * kw + j] = \
                                xs[s, ch, r * w + q] if inside else 0


@njit(cache=True)
def max_pool(x, out, lowest, kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow):
    """out [N, C, OH, OW] = the max over each window (padding `lowest`, 0-d: -inf), from
    its first offset on as np.maximum(m, v) does: m if m > v or m is NaN, else v."""
    planes, fill = x.shape[0] * x.shape[1], lowest[()]
    xs, ys = x.reshape(planes, h * w), out.reshape(planes, oh * ow)
    for p in range(planes):
        for a in range(oh):
            for b in range(ow):
                m = fill
                for i in range(kh):
                    r = a * sh + i * dh - ph
                    for j in range(kw):
                        q = b * sw + j * dw - pw
                        v = xs[p, r * w + q] if 0 <= r < h and 0 <= q < w else fill
                        keep = (i + j > 0) & ((m > v) | (m != m))
                        m = m if keep else v
                ys[p, a * ow + b] = m


@njit(cache=True)
def max_pool_grad(g, x, y, out, taken, zero, lowest, masked, kh, kw, sh, sw, ph, pw, dh, dw,
                  h, w, oh, ow):
    """out [N, C, H, W] = +0 plus g · hit for every (window, offset) reading a position,
    offsets in row-major order; hit: x there (padding `lowest`) equals the window's max y
    and no earlier offset of the window took it. `taken` [OH·OW] bools, `zero` 0-d.
    Windows that do not overlap give each position one term at most, so they are done
    one window at a time (the offsets unrolled, `taken` in a register). With `masked`,
    relu_grad(out, x) follows in the same pass: each position's sum v becomes v where
    x > 0, else v · 0 (fusion.relu_mask's rule)."""
    planes, z, fill = x.shape[0] * x.shape[1], zero[()], lowest[()]
    xs, dx = x.reshape(planes, h * w), out.reshape(planes, h * w)
    gs, ys = g.reshape(planes, oh * ow), y.reshape(planes, oh * ow)
    dx[...] = 0
    apart = sh >= (kh - 1) * dh + 1 and sw >= (kw - 1) * dw + 1
    for p in range(planes):
        if apart:
            for o in range(oh * ow):
                found = False
                for i in range(kh):
                    r = (o // ow) * sh + i * dh - ph
                    for j in range(kw):
                        q = (o % ow) * sw + j * dw - pw
                        inside = 0 <= r < h and 0 <= q < w
                        hit = ((xs[p, r * w + q] if inside else fill) == ys[p, o]) & \
                            (not found)
                        found = found | hit
                        if inside:
                            dx[p, r * w + q] += gs[p, o] if hit else gs[p, o] * z
        else:
            _offset_by_offset(xs[p], ys[p], gs[p], dx[p], taken, z, fill, kh, kw, sh, sw,
                              ph, pw, dh, dw, h, w, oh, ow)
        if masked:
            for q in range(h * w):
                v = dx[p, q]
                dx[p, q] = v if xs[p, q] > 0 else v * z


@njit(cache=True)
def _offset_by_offset(xs, ys, gs, dx, taken, z, fill, kh, kw, sh, sw, ph, pw, dh, dw, h, w,
                      oh, ow):
    """max_pool_grad of one plane whose windows overlap: offset by offset, so that each
    position adds its terms in row-major offset order, as the NumPy kernels do."""
    taken[:] = False
    for i in range(kh):
        for j in range(kw):
            for o in range(oh * ow):
                r, q = (o // ow) * sh + i * dh - ph, (o % ow) * sw + j * dw - pw
                inside = 0 <= r < h and 0 <= q < w
                hit = ((xs[r * w + q] if inside else fill) == ys[o]) & (not taken[o])
                taken[o] = taken[o] | hit
                if inside:
                    dx[r * w + q] += gs[o] if hit else gs[o] * z


@njit(cache=True)
def conv_bias_relu_t(yt, b, zero, out):
    """out [N, O, P] = relu(yt [N, P, O] transposed + b[o]), as conv_bias_relu: the
    forward product of columns laid out positions first."""
    z = zero[()]
    for n in range(out.shape[0]):
        for o in range(out.shape[1]):
            c = b[o]
            for p in range(out.shape[2]):
                v = yt[n, p, o] + c
                out[n, o, p] = v if v > 0 or v != v else z


@njit(cache=True)
def conv_bias_relu(y, b, zero, out):
    """out [N, O, P] = relu(y + b[o]), as np.add then np.maximum(·, 0) give it: NaN
    passes, -0.0 becomes 0 (fusion.bias_add_relu's rule, per channel)."""
    z = zero[()]
    for n in range(y.shape[0]):
        for o in range(y.shape[1]):
            c = b[o]
            for p in range(y.shape[2]):
                v = y[n, o, p] + c
                out[n, o, p] = v if v > 0 or v != v else z


# --- the patterns: (runs, i, facts) -> (fused run, runs used) or None, as fusion.py's ---

def _geo(x_shape, attrs, kernel=None) -> tuple:
    """kernel, stride, padding, dilation, input and output sizes, two of each (1-D: one
    row first), as the kernels' trailing int arguments."""
    kernel, stride, padding, dilation = geometry(attrs, len(x_shape) - 2, kernel)
    out = output_size(x_shape[2:], kernel, stride, padding, dilation)
    row = len(x_shape) == 3
    parts = [(1,) * row + kernel, (1,) * row + stride, (0,) * row + padding,
             (1,) * row + dilation, (1,) * row + tuple(x_shape[2:]), (1,) * row + out]
    return tuple(int(v) for p in parts for v in p)


def specialized(kernel, *args):
    """`kernel` compiled for these arrays with its int arguments as constants: numba then
    unrolls the window loops and folds the index arithmetic (4x on 2x2 pooling of 8x8
    planes). One compilation per geometry, kept in numba's cache like the others."""
    return kernel.compile(tuple(types.literal(a) if isinstance(a, int) else numba.typeof(a)
                                for a in args))


def _arrays(step, facts, ops) -> list:
    """The step's inputs and output when it is one of `ops` over C-contiguous arrays of one
    float dtype, its output sharing no bytes with its inputs; else None."""
    if step.op not in ops:
        return None
    arrays = facts.arrays(step)
    out, floats = arrays[-1], [a for a in arrays if a.dtype.kind == "f"]
    if not all(a.dtype == out.dtype and a.flags.c_contiguous for a in floats) or \
            out.dtype.kind != "f" or any(np.shares_memory(out, a) for a in arrays[:-1]):
        return None
    return arrays


def _fused(steps: tuple, kernel, arrays: dict, geo: tuple):
    """The fused run of `steps`: `kernel(*arrays, *geo)`, compiled for them."""
    names = ", ".join(arrays)
    call = specialized(kernel, *arrays.values(), *geo)
    return (steps, source(f"{kernel.__name__}({names}, *geo)",
                          **{kernel.__name__: call}, **arrays, geo=geo)), len(steps)


def _reader(runs, i, facts, op: str, value: str, at: int):
    """The next run's step when it is `op` reading `value` as its input `at`, the only
    reader of `value`, and `value` dies there; else None."""
    nxt = runs[i + 1][0] if i + 1 < len(runs) else ()
    if len(nxt) == 1 and nxt[0].op == op and len(nxt[0].inputs) > at and \
            nxt[0].inputs[at] == value and facts.dies_at(value, nxt[0]):
        return nxt[0]
    return None


def _conv_relu(runs, i, facts):
    """conv1d/conv2d with a bias, then the relu reading it alone: the matmul as the NumPy
    kernel makes it, then bias and relu in one pass (`conv_bias_relu`)."""
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, ("conv1d", "conv2d"))
    relu = arrays and len(arrays) == 5 and _reader(runs, i, facts, "relu", step.outputs[0], 0)
    if not relu:
        return None
    x, w, b, cols, y = arrays
    out = facts.values[relu.outputs[0]]
    if out.dtype != y.dtype or any(np.shares_memory(out, a) for a in (x, w, b, cols)):
        return None
    n, o = y.shape[:2]
    y3, zero = y.reshape(n, o, -1), np.zeros((), y.dtype)
    if positions_first(y3.shape[2]):
        return _conv_relu_positions_first((step, relu), runs[i][1].names, b, zero,
                                          out.reshape(y3.shape))
    call = specialized(conv_bias_relu, y3, b, zero, y3)
    return ((step, relu), source("""
        np.matmul(w, cols, out=y)
        conv_bias_relu(y, b, zero, out)
        """, conv_bias_relu=call, w=w.reshape(o, -1), cols=cols, y=y3, b=b, zero=zero,
        out=out.reshape(y3.shape))), 2


def _conv_relu_positions_first(steps, names, b, zero, out):
    """The NumPy kernel's GEMM into its own scratch (conv._conv_positions_first: yt [N, P,
    O]), then its transpose, bias and relu in one pass (`conv_bias_relu_t`)."""
    yt = names["yt2"].reshape(out.shape[0], out.shape[2], out.shape[1])
    call = specialized(conv_bias_relu_t, yt, b, zero, out)
    return (steps, source("""
        c2.dot(wt, yt2)
        conv_bias_relu_t(yt, b, zero, out)
        """, conv_bias_relu_t=call, c2=names["c2"], wt=names["wt"], yt2=names["yt2"], yt=yt,
        b=b, zero=zero, out=out)), 2


def _im2col(runs, i, facts):
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, ("im2col",))
    if arrays is None:
        return None
    x, w, *_, cols = arrays
    geo = _geo(x.shape, step.attrs, list(w.shape[2:]))
    first = positions_first(geo[-1] * geo[-2])
    return _fused((step,), im2col_positions_first if first else im2col,
                  {"x": x, "cols": cols}, geo)


def _col2im(runs, i, facts):
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, ("col2im",))
    if arrays is None:
        return None
    dcols, out = arrays
    return _fused((step,), col2im, {"dcols": dcols, "out": out},
                  _geo(out.shape, step.attrs, step.attrs["kernel"]))


def _max_pool(runs, i, facts):
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, ("max_pool1d", "max_pool2d"))
    if arrays is None:
        return None
    x, out = arrays
    return _fused((step,), max_pool, {"x": x, "out": out,
                                   "lowest": np.array(-np.inf, out.dtype)},
                  _geo(x.shape, step.attrs))


def _max_pool_grad(runs, i, facts):
    """max_pool_grad, and the relu_grad after it when that reads its output alone with the
    pool's own input as y (relu, then pool: the relu's output is x)."""
    (step,), _ = runs[i]
    arrays = _arrays(step, facts, ("max_pool_grad",))
    if arrays is None:
        return None
    g, x, y, out = arrays
    steps = (step,)
    relu = _reader(runs, i, facts, "relu_grad", step.outputs[0], 0)
    if relu and relu.inputs[1] == step.inputs[1]:
        masked = facts.values[relu.outputs[0]]
        if masked.dtype == out.dtype and not any(np.shares_memory(masked, a)
                                                 for a in (g, x, y)):
            steps, out = (step, relu), masked
    return _fused(steps, max_pool_grad, {
        "g": g, "x": x, "y": y, "out": out,
        "taken": np.zeros(y.shape[2:], bool).reshape(-1), "zero": np.zeros((), out.dtype),
        "lowest": np.array(-np.inf, out.dtype), "masked": len(steps) == 2},
        _geo(x.shape, step.attrs))


CONV_PATTERNS = (_im2col, _conv_relu, _col2im, _max_pool, _max_pool_grad)
