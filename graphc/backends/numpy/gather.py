"""Convolution and pooling windows as gathers over each (n, c) plane, for short rows.

With small images (8x8, 4x4) a strided view of the windows has rows of a few elements,
and NumPy pays its per-row overhead on every one: the strided kernels of conv.py spend
their time there. Here each (n, c) plane is one flat row, and a window read is one
`np.take` over all of them with a precomputed index, about a nanosecond per element
whatever the row length. conv.py picks these kernels when the output's last spatial
size is below `SHORT_ROW` (measured: at 8 the two are even on the digits CNN's first
layer, strided wins from 10 on, gathers by 2-4x at 4 and below).

The index tables are read-only constants built once per geometry (workspace.table):
`window_index` says, for kernel offset k and output position o, which position of the
plane is read (the plane size where it reads padding: the fill element appended to
each plane); `reader_index` inverts it, listing for each position of the plane the
slots k * P + o that read it, kernel offsets in row-major order, so a gradient gathered
through it adds the same terms in the same order as adding one offset at a time.
"""
from __future__ import annotations

import numpy as np

from ...ops.conv import geometry, output_size, positions_first
from .workspace import constant, scratch, table

SHORT_ROW = 8


def is_short(out_spatial) -> bool:
    """Whether windows with this output size go through gathers (rows under SHORT_ROW)."""
    return out_spatial[-1] < SHORT_ROW


def _window_index(spatial, kernel, stride, padding, dilation, out) -> np.ndarray:
    """[K, P]: position o·stride + k·dilation - padding, flattened in the plane, or the
    plane size where that is outside (padding)."""
    grids = np.meshgrid(*(np.arange(n) for n in tuple(kernel) + tuple(out)), indexing="ij")
    d = len(spatial)
    flat, inside = np.zeros_like(grids[0]), np.ones(grids[0].shape, bool)
    for a in range(d):
        pos = grids[d + a] * stride[a] + grids[a] * dilation[a] - padding[a]
        inside &= (pos >= 0) & (pos < spatial[a])
        flat = flat * spatial[a] + pos
    plane = int(np.prod(spatial))
    return np.where(inside, flat, plane).reshape(int(np.prod(kernel)), -1).astype(np.intp)


def _reader_index(index: np.ndarray, plane: int) -> np.ndarray:
    """[R, plane]: row r holds the r-th slot k·P + o (ascending) reading each position,
    index.size where fewer than r + 1 slots read it; R the most readers of a position."""
    slots = np.flatnonzero(index.ravel() < plane)             # ascending: k, then o
    pos = index.ravel()[slots]
    order = np.argsort(pos, kind="stable")
    counts = np.bincount(pos, minlength=plane)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(pos)) - np.repeat(starts, counts)
    readers = np.full((max(int(counts.max(initial=0)), 1), plane), index.size, np.intp)
    readers[rank, pos[order]] = slots[order]
    return readers


class Windows:
    """The window tables of an input [N, C, *spatial] under one geometry.

    index [K, P]: the plane position kernel offset k reads for output o (plane: the fill);
    readers [R, plane]: the slots k * P + o reading each position (K * P: none)."""

    def __init__(self, x_shape, attrs, kernel=None):
        geo = geometry(attrs, len(x_shape) - 2, kernel)
        spatial = tuple(x_shape[2:])
        self.out = output_size(spatial, *geo)
        self.rows, self.plane = int(np.prod(x_shape[:2])), int(np.prod(spatial))
        self.key = (spatial, geo)
        self.index = table(("window index",) + self.key, lambda: _window_index(
            spatial, *geo, self.out))
        self.readers = table(("reader index",) + self.key, lambda: _reader_index(
            self.index, self.plane))
        self.k, self.p = self.index.shape

    def planes(self, x, fill):
        """(load, ext): ext [N·C, plane + 1] holds x's planes and the fill after each;
        without padding no window reads the fill, and ext is x itself, loaded as it is."""
        x2 = x.reshape(self.rows, self.plane)
        if self.index.max(initial=0) < self.plane:
            return (lambda: None), x2
        ext = scratch((self.rows, self.plane + 1), x.dtype)
        body = ext[:, :self.plane]

        def load():
            ext[:, self.plane] = fill
            np.copyto(body, x2)
        return load, ext


def gather_sum(out2, src, readers, tmp) -> None:
    """out2 [..., plane] = 0 + Σ_r src[..., readers[r]] along the last axis, r in order: the
    terms and the order of adding one kernel offset at a time onto zeros, bit for bit."""
    out2.fill(0)
    for r in readers:
        np.take(src, r, axis=-1, out=tmp, mode="clip")
        np.add(out2, tmp, out=out2)


def b_im2col(out, x, w, attrs):
    """out [N, C·K, P] = every window of x, padding read as the zeros after each plane;
    positions first ([N, P, C·K], `positions_first`), one gather per sample over its
    C planes side by side."""
    win = Windows(x.shape, attrs, list(w.shape[2:]))
    load, ext = win.planes(x, 0)
    cols, flat = out.reshape(win.rows, -1), win.index.ravel()
    if positions_first(win.p):
        n, c = x.shape[:2]
        ext, cols = ext.reshape(n, -1), out.reshape(n, -1)
        flat = table(("positions first", c, ext.shape[1] // c) + win.key, lambda: (
            win.index.T[:, None, :] + np.arange(c)[None, :, None] * (ext.shape[1] // c)
        ).ravel())

    def run():
        load()
        np.take(ext, flat, axis=1, out=cols, mode="clip")
    return run


def b_col2im(out, dcols, attrs, kernel):
    """dx = Σ over the slots reading each position of dcols, gathered per plane."""
    win = Windows(out.shape, attrs, kernel)
    ext = scratch((win.rows, win.k * win.p + 1), out.dtype)
    body, src = ext[:, :-1], dcols.reshape(win.rows, -1)
    out2 = out.reshape(win.rows, win.plane)
    tmp = scratch(out2.shape, out.dtype)

    def run():
        ext[:, -1] = 0
        np.copyto(body, src)
        gather_sum(out2, ext, win.readers, tmp)
    return run


def _slots(win, x, fill):
    """(load, slots): slots [K, N·C, P] of x's windows, one take per kernel offset."""
    load, ext = win.planes(x, fill)
    slots = scratch((win.k, win.rows, win.p), x.dtype)

    def run():
        load()
        for k in range(win.k):
            np.take(ext, win.index[k], axis=1, out=slots[k], mode="clip")
    return run, slots


def b_pool(out, x, attrs, kind):
    """y = the max (padding -inf) or the mean (padding zeros) over each window."""
    win = Windows(x.shape, attrs)
    gather, slots = _slots(win, x, -np.inf if kind == "max" else 0)
    y = out.reshape(win.rows, win.p)
    combine = np.maximum if kind == "max" else np.add
    inv = constant(1.0 / win.k, (), out.dtype)

    def run():
        gather()
        np.copyto(y, slots[0])
        for s in slots[1:]:
            combine(y, s, out=y)
        if kind == "avg":
            np.multiply(y, inv, out=y)
    return run


def b_max_pool_grad(out, g, x, y, attrs):
    """dx: g to the first kernel offset (row-major) of each window where x equals y."""
    win = Windows(x.shape, attrs)
    gather, slots = _slots(win, x, -np.inf)
    shares = scratch((win.rows, win.k * win.p + 1), out.dtype)     # + one zero per plane
    share = shares[:, :-1].reshape(win.rows, win.k, win.p)
    hit, taken = scratch(slots.shape[1:], bool), scratch(slots.shape[1:], bool)
    g2, y2 = g.reshape(hit.shape), y.reshape(hit.shape)
    out2 = out.reshape(win.rows, win.plane)
    tmp = scratch(out2.shape, out.dtype)

    def run():
        gather()
        taken.fill(False)
        shares[:, -1] = 0
        for k in range(win.k):
            np.equal(slots[k], y2, out=hit)
            np.greater(hit, taken, out=hit)         # a max not taken by an earlier offset
            np.logical_or(taken, hit, out=taken)
            np.multiply(g2, hit, out=share[:, k])
        gather_sum(out2, shares, win.readers, tmp)
    return run


def b_avg_pool_grad(out, g, attrs):
    """dx: g / K summed over the windows reading each position."""
    win = Windows(out.shape, attrs)
    ext = scratch((win.rows, win.p + 1), out.dtype)
    body, g2 = ext[:, :-1], g.reshape(win.rows, win.p)
    inv = constant(1.0 / win.k, (), out.dtype)
    none = win.k * win.p                            # the slot "no reader" -> the zero
    readers = table(("plane readers",) + win.key, lambda: np.where(
        win.readers == none, win.p, win.readers % win.p))
    out2 = out.reshape(win.rows, win.plane)
    tmp = scratch(out2.shape, out.dtype)

    def run():
        ext[:, -1] = 0
        np.multiply(g2, inv, out=body)
        gather_sum(out2, ext, readers, tmp)
    return run
