"""NumPy kernels of convolution and pooling (graphc/ops/conv.py states the math).

A convolution is im2col plus one batched matmul: `im2col` copies every window of the
(padded) input into its planned column value through one strided view
(`as_strided`), the forward kernel multiplies W [O, C * prod(kernel)] into it, and the
filter gradient multiplies g by it again. The input gradient's columns are a planned
value too; `col2im` adds each kernel offset's slab back onto the padded input. Pooling
works one kernel offset at a time over strided views: prod(kernel) NumPy calls, each
over the whole batch. Padded copies live in step-local scratch; nothing allocates.
When the output's rows are short (gather.SHORT_ROW), im2col, col2im and the pools read
their windows through index gathers instead (gather.py), bit for bit the same numbers.
"""
from __future__ import annotations

import itertools
from functools import partial
from math import prod

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...ops.conv import geometry, output_size, positions_first
from . import gather
from .bind import source
from .workspace import constant, scratch


def _geometry(x_shape, attrs, kernel=None) -> tuple:
    """(kernel, stride, padding, dilation, output spatial) of an input of shape x_shape."""
    geo = geometry(attrs, len(x_shape) - 2, kernel)
    return geo + (output_size(x_shape[2:], *geo),)


def _padded(x_shape, padding, dtype):
    """(padded scratch, its interior view) or (None, None) when there is no padding."""
    if not any(padding):
        return None, None
    shape = tuple(x_shape[:2]) + tuple(s + 2 * p for s, p in zip(x_shape[2:], padding))
    xp = scratch(shape, dtype)
    inner = (slice(None), slice(None)) + tuple(slice(p, p + s) for s, p in
                                               zip(x_shape[2:], padding))
    return xp, xp[inner]


def _pad_into(x, padding, fill):
    """A closure copying x into padded scratch (borders `fill`), and the array to read."""
    xp, inner = _padded(x.shape, padding, x.dtype)
    if xp is None:
        return (lambda: None), x

    def run():
        xp.fill(fill)
        np.copyto(inner, x)
    return run, xp


def windows(xp, kernel, stride, dilation, out):
    """The view [N, C, *kernel, *out] of xp: element (k, o) is xp at o * stride + k * dilation."""
    s = xp.strides[2:]
    shape = xp.shape[:2] + tuple(kernel) + tuple(out)
    strides = xp.strides[:2] + tuple(st * d for st, d in zip(s, dilation)) + \
        tuple(st * t for st, t in zip(s, stride))
    return as_strided(xp, shape, strides, writeable=False)


def offsets(xp, kernel, stride, dilation, out) -> list:
    """One writable view [N, C, *out] of xp per kernel offset, in row-major offset order."""
    views = []
    for k in itertools.product(*(range(n) for n in kernel)):
        index = tuple(slice(i * d, i * d + t * (o - 1) + 1, t)
                      for i, d, t, o in zip(k, dilation, stride, out))
        views.append(xp[(slice(None), slice(None)) + index])
    return views


def b_im2col(out, x, w, *bias, stride=1, padding=0, dilation=1):
    """out [N, C * prod(kernel), prod(output)] = every window of the zero-padded x (positions
    first, [N, prod(output), C * prod(kernel)], where `positions_first` says so)."""
    attrs = {"stride": stride, "padding": padding, "dilation": dilation}
    kernel, stride, padding, dilation, size = _geometry(x.shape, attrs, list(w.shape[2:]))
    if gather.is_short(size):
        return gather.b_im2col(out, x, w, attrs)
    pad, xp = _pad_into(x, padding, 0)
    src = windows(xp, kernel, stride, dilation, size)
    dst = out.reshape(src.shape)
    if positions_first(prod(size)):                 # [N, *out, C, *kernel], seen as src
        d = len(size)
        dst = out.reshape(src.shape[:1] + src.shape[2 + d:] + src.shape[1:2 + d]).transpose(
            0, *range(d + 1, 2 * d + 2), *range(1, d + 1))

    def run():
        pad()
        np.copyto(dst, src)
    return run


def b_conv(out, x, w, *rest, stride=1, padding=0, dilation=1):
    """y [N, O, P] = W [O, C * prod(kernel)] @ cols [N, ., P] (+ b per channel); positions
    first, yᵀ [N·P, O] = cols [N·P, C * prod(kernel)] @ Wᵀ, one GEMM, then y its transpose."""
    cols = rest[-1]
    n, o = out.shape[:2]
    w2, y3 = w.reshape(o, -1), out.reshape(n, o, -1)
    b = rest[0].reshape(o, 1) if len(rest) == 2 else None
    if positions_first(y3.shape[2]):
        return _conv_positions_first(y3, w2, cols, b)
    if b is None:
        return lambda: np.matmul(w2, cols, out=y3)

    def run():
        np.matmul(w2, cols, out=y3)
        np.add(y3, b, out=y3)
    return run


def _conv_positions_first(y3, w2, cols, b):
    """y3 [N, O, P] from columns [N, P, C·K]: their GEMM by Wᵀ into scratch [N, P, O], then
    that transposed into y3 (plus b [O, 1] when given)."""
    n, o, p = y3.shape
    yt, wt, c2 = scratch((n, p, o), y3.dtype), w2.T, cols.reshape(n * p, -1)
    bias = {} if b is None else {"b": b}
    return source("c2.dot(wt, yt2)\n" + ("np.add(y_of, b, out=y3)" if bias else
                                         "np.copyto(y3, y_of)"),
                  c2=c2, wt=wt, yt2=yt.reshape(n * p, o), y3=y3, y_of=yt.transpose(0, 2, 1),
                  **bias)


def b_conv_grad_filter(out, g, cols):
    """dW [O, C * prod(kernel)] = Σ_n g[n] @ cols[n]ᵀ.

    Columns positions first (`positions_first`: the digits CNN's second layer has 16
    positions), g is copied to [O, N·P] and the whole batch is one GEMM g · cols, over
    the columns as they lie. Otherwise one batched matmul, summed over the batch with a
    ones vector."""
    n, o = g.shape[0], g.shape[1]
    g3, dw = g.reshape(n, o, -1), out.reshape(o, -1)
    if positions_first(g3.shape[2]):
        gt = scratch((o,) + g3.shape[::2], g.dtype)
        return source("""
            np.copyto(gt, g_of)
            gt2.dot(c2, dw)
            """, gt=gt, g_of=g3.transpose(1, 0, 2), gt2=gt.reshape(o, -1),
            c2=cols.reshape(-1, cols.shape[2]), dw=dw)
    per_sample = scratch((n, dw.size), out.dtype)
    ones, cols_t = constant(1, (n,), out.dtype), cols.transpose(0, 2, 1)

    def run():
        np.matmul(g3, cols_t, out=per_sample.reshape((n,) + dw.shape))
        np.dot(ones, per_sample, out=out.reshape(-1))
    return run


def b_conv_grad_columns(out, g, w):
    """dcols [N, C * prod(kernel), P] = Wᵀ @ g[n] for every sample n."""
    n, o = g.shape[:2]
    wt, g3 = w.reshape(o, -1).T, g.reshape(n, o, -1)
    return lambda: np.matmul(wt, g3, out=out)


class Scatter:
    """Adds one [N, C, *output] slab per kernel offset onto a zeroed, padded gradient, then
    copies its interior to `out` (col2im and the pooling gradients).

    A slab's positions in the padded plane are strided and short (OW at a time), which
    NumPy adds slowly. So each slab is first copied into `wide`, [N, C, OH, stride·Wp]
    holding it at columns 0, stride, ... and zeros elsewhere: then the slab's place in
    the flattened padded plane is one contiguous run per (n, c), added in one call. The
    zeros land on positions they do not change. 1-D is 2-D with one row."""

    def __init__(self, out, attrs, kernel=None):
        x4 = out if out.ndim == 4 else out[:, :, None, :]
        geo = _geometry(out.shape, attrs, kernel)
        row = (1,) * (4 - out.ndim)                 # 1-D: one row, no padding along it
        kernel, stride, dilation, size = (row + tuple(geo[i]) for i in (0, 1, 3, 4))
        padding = (0,) * len(row) + tuple(geo[2])
        n, c, h, w = x4.shape
        hp, wp = h + 2 * padding[0], w + 2 * padding[1]
        run = size[0] * stride[0] * wp
        flat = scratch((n, c, (hp + stride[0]) * wp), out.dtype)
        self.wide = scratch((n, c, size[0], stride[0] * wp), out.dtype)
        self.slab = self.wide[..., :stride[1] * size[1]:stride[1]].reshape(
            out.shape[:2] + tuple(geo[4]))
        wide = self.wide.reshape(n, c, run)
        self.targets = [flat[..., b:b + run] for b in
                        (i * dilation[0] * wp + j * dilation[1]
                         for i, j in itertools.product(range(kernel[0]), range(kernel[1])))]
        self.adds = [partial(np.add, t, wide, out=t) for t in self.targets]
        self.buffers = (flat, self.wide)
        inner = flat[..., :hp * wp].reshape(n, c, hp, wp)[:, :, padding[0]:padding[0] + h,
                                                          padding[1]:padding[1] + w]
        self.copy = partial(np.copyto, out, inner.reshape(out.shape))

    def zero(self):
        for b in self.buffers:
            b.fill(0)

    def add(self, k: int, src) -> None:
        """Add `src` [N, C, *output] at the positions kernel offset k (row-major) reads."""
        np.copyto(self.slab, src)
        self.adds[k]()


def b_col2im(out, dcols, kernel=None, stride=1, padding=0, dilation=1):
    """dx = each column slab added back where im2col read it from."""
    attrs = {"stride": stride, "padding": padding, "dilation": dilation}
    if gather.is_short(_geometry(out.shape, attrs, kernel)[-1]):
        return gather.b_col2im(out, dcols, attrs, kernel)
    scatter = Scatter(out, attrs, kernel)
    src = dcols.reshape(out.shape[:2] + tuple(kernel) + scatter.slab.shape[2:])
    slabs = [src[(slice(None), slice(None)) + k]
             for k in itertools.product(*(range(n) for n in kernel))]

    def run():
        scatter.zero()
        for k, s in enumerate(slabs):
            scatter.add(k, s)
        scatter.copy()
    return run


def _pool_views(x, attrs, fill):
    """(pad, one view of the padded x per kernel offset) of a pooling step."""
    kernel, stride, padding, dilation, size = _geometry(x.shape, attrs)
    pad, xp = _pad_into(x, padding, fill)
    return pad, offsets(xp, kernel, stride, dilation, size)


def b_max_pool(out, x, kernel=None, stride=None, padding=0):
    """y = the max over each window, padding -inf."""
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    if gather.is_short(out.shape[2:]):
        return gather.b_pool(out, x, attrs, "max")
    pad, views = _pool_views(x, attrs, -np.inf)

    def run():
        pad()
        np.copyto(out, views[0])
        for v in views[1:]:
            np.maximum(out, v, out=out)
    return run


def b_max_pool_grad(out, g, x, y, kernel=None, stride=None, padding=0):
    """dx: g to the first position (row-major offset order) of each window where x == y."""
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    if gather.is_short(y.shape[2:]):
        return gather.b_max_pool_grad(out, g, x, y, attrs)
    pad, views = _pool_views(x, attrs, -np.inf)
    scatter = Scatter(out, attrs)
    hit, taken = scratch(y.shape, bool), scratch(y.shape, bool)
    share = scratch(y.shape, out.dtype)

    def run():
        pad()
        scatter.zero()
        taken.fill(False)
        for k, v in enumerate(views):
            np.equal(v, y, out=hit)
            np.greater(hit, taken, out=hit)         # a max not taken by an earlier offset
            np.logical_or(taken, hit, out=taken)
            np.multiply(g, hit, out=share)
            scatter.add(k, share)
        scatter.copy()
    return run


def b_avg_pool(out, x, kernel=None, stride=None, padding=0):
    """y = the mean over each window, zero padding counted."""
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    if gather.is_short(out.shape[2:]):
        return gather.b_pool(out, x, attrs, "avg")
    pad, views = _pool_views(x, attrs, 0)
    inv = constant(1.0 / len(views), (), out.dtype)

    def run():
        pad()
        np.copyto(out, views[0])
        for v in views[1:]:
            np.add(out, v, out=out)
        np.multiply(out, inv, out=out)
    return run


def b_avg_pool_grad(out, g, kernel=None, stride=None, padding=0):
    """dx: g / prod(kernel) added onto every position of each window."""
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    if gather.is_short(g.shape[2:]):
        return gather.b_avg_pool_grad(out, g, attrs)
    scatter = Scatter(out, attrs)
    inv = constant(1.0 / len(scatter.adds), (), out.dtype)
    share = scratch(g.shape, out.dtype)

    def run():
        scatter.zero()
        np.multiply(g, inv, out=share)
        np.copyto(scatter.slab, share)              # the same slab at every offset
        for add in scatter.adds:
            add()
        scatter.copy()
    return run


def b_global_avg_pool(out, x):
    """y [N, C] = the mean over the spatial axes."""
    flat = x.reshape(x.shape[:2] + (-1,))
    ones = constant(1.0 / flat.shape[-1], (flat.shape[-1],), x.dtype)
    return lambda: np.matmul(flat, ones, out=out)


def b_flatten(out, x):
    flat = x.reshape(out.shape)
    return lambda: np.copyto(out, flat)


# the steps fused_conv.py has numba kernels for, bit for bit these (the default step code
# runs them there where numba imports: Backend.bitwise_kernels)
WINDOW_OPS = frozenset({"im2col", "conv1d", "conv2d", "col2im", "max_pool1d", "max_pool2d",
                        "max_pool_grad"})

BIND = {
    "im2col": b_im2col, "conv1d": b_conv, "conv2d": b_conv,
    "conv_grad_filter": b_conv_grad_filter, "conv_grad_columns": b_conv_grad_columns,
    "col2im": b_col2im,
    "max_pool1d": b_max_pool, "max_pool2d": b_max_pool, "max_pool_grad": b_max_pool_grad,
    "avg_pool1d": b_avg_pool, "avg_pool2d": b_avg_pool, "avg_pool_grad": b_avg_pool_grad,
    "global_avg_pool": b_global_avg_pool, "flatten": b_flatten,
}
