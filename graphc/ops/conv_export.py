"""Export mappings of the convolution family (the records' `onnx` slot, graphc/ops/record.py).

The forward ops are ONNX's Conv, MaxPool, AveragePool (counting the padding), ReduceMean
and Flatten. The saved columns and the gradients are written with ordinary ops too:
im2col is a Conv with one-hot filters (row c * prod(kernel) + k of the columns picks
channel c at window position k, row-major, as the NumPy kernel lays them out), and its
adjoint, col2im, the ConvTranspose with the same filters; an avg pool's gradient is a
depthwise ConvTranspose with 1 / prod(kernel); a max pool's sends g to the first maximum
of each window (ArgMax over the windows' one-hot Conv, padding at the lowest float).
"""
from __future__ import annotations

from itertools import product
from math import prod

LOWEST = -3.4028234663852886e38     # float32's lowest: a max pool's padding


def _nested(shape, value):
    """A nested list of `shape` holding value(index) at each index."""
    def build(prefix):
        if len(prefix) == len(shape):
            return value(prefix)
        return [build(prefix + (i,)) for i in range(shape[len(prefix)])]
    return build(())


def one_hot_filters(channels: int, kernel: tuple, per_channel: bool = True):
    """[C * K, C, *kernel] (or [K, 1, *kernel] for one channel): filter c * K + k is 1 at
    channel c, window position k (row-major), 0 elsewhere."""
    positions = list(product(*(range(k) for k in kernel)))
    c = channels if per_channel else 1
    return _nested((c * len(positions), c) + tuple(kernel),
                   lambda i: float(i[1] == i[0] // len(positions)
                                   and tuple(i[2:]) == positions[i[0] % len(positions)]))


def _window(kernel, stride, padding, dilation=None) -> dict:
    attrs = {"kernel_shape": list(kernel), "strides": list(stride),
             "pads": list(padding) * 2}
    return {**attrs, "dilations": list(dilation)} if dilation is not None else attrs


def output_padding(size, out, kernel, stride, padding, dilation) -> list:
    """What ConvTranspose must add to give back the input's size (the rows a strided
    window never reached)."""
    return [s - (st * (o - 1) + d * (k - 1) + 1 - 2 * p)
            for s, o, k, st, p, d in zip(size, out, kernel, stride, padding, dilation)]


def conv(geo):
    """conv1d/conv2d: Conv over x, W and the bias (not the saved columns)."""
    def lower(b, n, *xs):
        w = b.shape(n.inputs[1])
        kernel, stride, padding, dilation = geo(n.attrs, len(w) - 2, list(w[2:]))
        inputs = xs[:3] if len(n.inputs) == 4 else xs[:2]      # x, W, [b], columns
        return b("Conv", *inputs, **_window(kernel, stride, padding, dilation))
    return lower


def im2col(geo, positions_first):
    """The columns [N, C * K, P]: a Conv with one-hot filters, reshaped (and transposed to
    [N, P, C * K] where `positions_first` lays them out so)."""
    def lower(b, n, x, *rest):
        w = b.shape(n.inputs[1])
        kernel, stride, padding, dilation = geo(n.attrs, len(w) - 2, list(w[2:]))
        filters = b.const(one_hot_filters(w[1], kernel))
        cols = b("Conv", x, filters, **_window(kernel, stride, padding, dilation))
        first = positions_first(prod(n.shape[1:]) // prod(w[1:]))
        shape = (n.shape[0], n.shape[2], n.shape[1]) if first else n.shape
        cols = b("Reshape", cols, b.dims(shape))
        return b("Transpose", cols, perm=[0, 2, 1]) if first else cols
    return lower


def conv_grad_columns(b, n, g, w):
    """Wᵀ g per sample: [C * K, O] @ [N, O, P]."""
    o, ck = b.shape(n.inputs[1])[0], prod(b.shape(n.inputs[1])[1:])
    gs = b.shape(n.inputs[0])
    wt = b("Transpose", b("Reshape", w, b.dims((o, ck))), perm=[1, 0])
    return b("MatMul", wt, b("Reshape", g, b.dims((gs[0], o, prod(gs[2:])))))


def conv_grad_filter(positions_first):
    """Σ over the batch of g · colsᵀ, as W's shape (columns positions first: g · cols)."""
    def lower(b, n, g, cols):
        gs, shape = b.shape(n.inputs[0]), n.attrs["shape"]
        g3 = b("Reshape", g, b.dims((gs[0], shape[0], prod(gs[2:]))))
        first = positions_first(prod(gs[2:]))
        per_sample = b("MatMul", g3, cols if first else b("Transpose", cols, perm=[0, 2, 1]))
        return b("Reshape", b.reduce("ReduceSum", per_sample, (0,), False), b.dims(shape))
    return lower


def col2im(geo, out_size):
    """The columns added back onto the input: ConvTranspose with the one-hot filters."""
    def lower(b, n, dcols):
        shape = n.attrs["shape"]
        kernel, stride, padding, dilation = geo(n.attrs, len(shape) - 2)
        out = out_size(shape[2:], kernel, stride, padding, dilation)
        grid = b("Reshape", dcols, b.dims((shape[0], shape[1] * prod(kernel)) + tuple(out)))
        return b("ConvTranspose", grid, b.const(one_hot_filters(shape[1], kernel)),
                 output_padding=output_padding(shape[2:], out, kernel, stride, padding,
                                               dilation),
                 **_window(kernel, stride, padding, dilation))
    return lower


def pool(op_type: str, geo, **fixed):
    def lower(b, n, x):
        kernel, stride, padding, _ = geo(n.attrs, len(b.shape(n.inputs[0])) - 2)
        return b(op_type, x, **_window(kernel, stride, padding), **fixed)
    return lower


def avg_pool_grad(geo, out_size):
    """g / K onto every position of each window: a depthwise ConvTranspose."""
    def lower(b, n, g):
        shape = n.attrs["shape"]
        kernel, stride, padding, dilation = geo(n.attrs, len(shape) - 2)
        out = out_size(shape[2:], kernel, stride, padding, dilation)
        share = 1.0 / prod(kernel)
        ones = b.const(_nested((shape[1], 1) + tuple(kernel), lambda i: share))
        return b("ConvTranspose", g, ones, group=shape[1],
                 output_padding=output_padding(shape[2:], out, kernel, stride, padding,
                                               dilation),
                 **_window(kernel, stride, padding))
    return lower


def max_pool_grad(geo):
    """g to the first maximum (row-major) of each window; channels as batch rows."""
    def lower(b, n, g, x, y):
        shape = b.shape(n.inputs[1])
        kernel, stride, padding, _ = geo(n.attrs, len(shape) - 2)
        d, positions = len(kernel), prod(kernel)
        rows = b("Reshape", x, b.const([-1, 1] + list(shape[2:]), integer=True))
        padded = b("Pad", rows, b.const([0, 0] + list(padding) + [0, 0] + list(padding),
                                        integer=True), b.const(LOWEST))
        filters = b.const(one_hot_filters(1, kernel, per_channel=False))
        windows = b("Conv", padded, filters, kernel_shape=list(kernel), strides=list(stride))
        first = b("ArgMax", windows, axis=1, keepdims=1, select_last_index=0)
        where = b.const(list(range(positions)), integer=True)
        where = b("Reshape", where, b.const([1, positions] + [1] * d, integer=True))
        picked = b("Cast", b("Equal", first, where), to=b.dtype)
        out = b.shape(n.inputs[2])[2:]
        spread = b("Mul", picked, b("Reshape", g, b.const([-1, 1] + list(out), integer=True)))
        size = [s + 2 * p for s, p in zip(shape[2:], padding)]
        back = b("ConvTranspose", spread, filters, strides=list(stride),
                 kernel_shape=list(kernel),
                 output_padding=output_padding(size, out, kernel, stride, [0] * d, [1] * d))
        axes = list(range(2, 2 + d))
        inner = b("Slice", back, b.const(list(padding), integer=True),
                  b.const([p + s for p, s in zip(padding, shape[2:])], integer=True),
                  b.const(axes, integer=True))
        return b("Reshape", inner, b.dims(shape))
    return lower


def global_avg_pool(b, n, x):
    """[N, C, ...] -> [N, C]: the mean over every axis after the channels."""
    return b.reduce("ReduceMean", x, tuple(range(2, len(b.shape(n.inputs[0])))), False)
