"""NumPy kernels of convolution and pooling (graphc/ops/conv.py states the math).

A convolution is im2col plus one batched matmul: `im2col` copies every window of the
(padded) input into its planned column value through one strided view
(`as_strided`), the forward kernel multiplies W [O, C * prod(kernel)] into it, and the
filter gradient multiplies g by it again. The input gradient's columns are a planned
value too; `col2im` adds each kernel offset's slab back onto the padded input. Pooling
works one kernel offset at a time over strided views: prod(kernel) NumPy calls, each
over the whole batch. Padded copies live in step-local scratch; nothing allocates.
"""
from __future__ import annotations

import itertools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...ops.conv import geometry, output_size
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
    """out [N, C * prod(kernel), prod(output)] = every window of the zero-padded x."""
    attrs = {"stride": stride, "padding": padding, "dilation": dilation}
    kernel, stride, padding, dilation, size = _geometry(x.shape, attrs, list(w.shape[2:]))
    pad, xp = _pad_into(x, padding, 0)
    src = windows(xp, kernel, stride, dilation, size)
    dst = out.reshape(src.shape)

    def run():
        pad()
        np.copyto(dst, src)
    return run


def b_conv(out, x, w, *rest, stride=1, padding=0, dilation=1):
    """y [N, O, P] = W [O, C * prod(kernel)] @ cols [N, ., P] (+ b per channel)."""
    cols = rest[-1]
    n, o = out.shape[:2]
    w2, y3 = w.reshape(o, -1), out.reshape(n, o, -1)
    if len(rest) == 1:
        return lambda: np.matmul(w2, cols, out=y3)
    b = rest[0].reshape(o, 1)

    def run():
        np.matmul(w2, cols, out=y3)
        np.add(y3, b, out=y3)
    return run


def b_conv_grad_filter(out, g, cols):
    """dW [O, C * prod(kernel)] = Σ_n g[n] @ cols[n]ᵀ, through one batched matmul."""
    n, o = g.shape[:2]
    g3, dw = g.reshape(n, o, -1), out.reshape(o, -1)
    per_sample = scratch((n,) + dw.shape, out.dtype)
    cols_t = cols.transpose(0, 2, 1)

    def run():
        np.matmul(g3, cols_t, out=per_sample)
        np.add.reduce(per_sample, axis=0, out=dw)
    return run


def b_conv_grad_columns(out, g, w):
    """dcols [N, C * prod(kernel), P] = Wᵀ @ g[n] for every sample n."""
    n, o = g.shape[:2]
    wt, g3 = w.reshape(o, -1).T, g.reshape(n, o, -1)
    return lambda: np.matmul(wt, g3, out=out)


def _scatter(out, attrs, kernel=None):
    """(zero, finish, offset views, output size): adding slabs onto the padded gradient.

    `zero()` clears it, each offset view is where one kernel offset's slab lands, and
    `finish()` copies the interior into `out` (nothing to copy without padding)."""
    kernel, stride, padding, dilation, size = _geometry(out.shape, attrs, kernel)
    dxp, inner = _padded(out.shape, padding, out.dtype)
    target = out if dxp is None else dxp
    finish = (lambda: None) if dxp is None else (lambda: np.copyto(out, inner))
    return (lambda: target.fill(0)), finish, offsets(target, kernel, stride, dilation, size), \
        size


def b_col2im(out, dcols, kernel=None, stride=1, padding=0, dilation=1):
    """dx = each column slab added back where im2col read it from."""
    attrs = {"stride": stride, "padding": padding, "dilation": dilation}
    zero, finish, targets, size = _scatter(out, attrs, kernel)
    src = dcols.reshape(out.shape[:2] + tuple(kernel) + size)
    pairs = [(t, src[(slice(None), slice(None)) + k])
             for t, k in zip(targets, itertools.product(*(range(n) for n in kernel)))]

    def run():
        zero()
        for t, s in pairs:
            np.add(t, s, out=t)
        finish()
    return run


def _pool_views(x, attrs, fill):
    """(pad, one view of the padded x per kernel offset) of a pooling step."""
    kernel, stride, padding, dilation, size = _geometry(x.shape, attrs)
    pad, xp = _pad_into(x, padding, fill)
    return pad, offsets(xp, kernel, stride, dilation, size)


def b_max_pool(out, x, kernel=None, stride=None, padding=0):
    """y = the max over each window, padding -inf."""
    pad, views = _pool_views(x, {"kernel": kernel, "stride": stride, "padding": padding},
                             -np.inf)

    def run():
        pad()
        np.copyto(out, views[0])
        for v in views[1:]:
            np.maximum(out, v, out=out)
    return run


def b_max_pool_grad(out, g, x, y, kernel=None, stride=None, padding=0):
    """dx: g to the first position (row-major offset order) of each window where x == y."""
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    pad, views = _pool_views(x, attrs, -np.inf)
    zero, finish, targets, _ = _scatter(out, attrs)
    hit, taken = scratch(y.shape, bool), scratch(y.shape, bool)
    share = scratch(y.shape, out.dtype)

    def run():
        pad()
        zero()
        taken.fill(False)
        for v, t in zip(views, targets):
            np.equal(v, y, out=hit)
            np.greater(hit, taken, out=hit)         # a max not taken by an earlier offset
            np.logical_or(taken, hit, out=taken)
            np.multiply(g, hit, out=share)
            np.add(t, share, out=t)
        finish()
    return run


def b_avg_pool(out, x, kernel=None, stride=None, padding=0):
    """y = the mean over each window, zero padding counted."""
    pad, views = _pool_views(x, {"kernel": kernel, "stride": stride, "padding": padding}, 0)
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
    zero, finish, targets, _ = _scatter(out, {"kernel": kernel, "stride": stride,
                                              "padding": padding})
    inv = constant(1.0 / len(targets), (), out.dtype)
    share = scratch(g.shape, out.dtype)

    def run():
        zero()
        np.multiply(g, inv, out=share)
        for t in targets:
            np.add(t, share, out=t)
        finish()
    return run


def b_global_avg_pool(out, x):
    """y [N, C] = the mean over the spatial axes."""
    flat = x.reshape(x.shape[:2] + (-1,))
    ones = constant(1.0 / flat.shape[-1], (flat.shape[-1],), x.dtype)
    return lambda: np.matmul(flat, ones, out=out)


def b_flatten(out, x):
    flat = x.reshape(out.shape)
    return lambda: np.copyto(out, flat)


BIND = {
    "im2col": b_im2col, "conv1d": b_conv, "conv2d": b_conv,
    "conv_grad_filter": b_conv_grad_filter, "conv_grad_columns": b_conv_grad_columns,
    "col2im": b_col2im,
    "max_pool1d": b_max_pool, "max_pool2d": b_max_pool, "max_pool_grad": b_max_pool_grad,
    "avg_pool1d": b_avg_pool, "avg_pool2d": b_avg_pool, "avg_pool_grad": b_avg_pool_grad,
    "global_avg_pool": b_global_avg_pool, "flatten": b_flatten,
}
