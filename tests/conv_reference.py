"""Convolution and pooling by direct loops over output positions and kernel offsets.

Written apart from graphc's im2col kernels (no strided views, no column buffers), so
tests/test_ops_grad.py and tests/test_conv.py check the kernels against something else.
Every argument is per axis or an int, as in PyTorch.
"""
from __future__ import annotations

import itertools

import numpy as np


def _per_axis(v, d):
    return (v,) * d if isinstance(v, int) else tuple(v)


def _pad(x, padding, fill):
    return np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=fill)


def _out_size(size, k, s, p, dil):
    return (size + 2 * p - dil * (k - 1) - 1) // s + 1


def conv(x, W, b=None, stride=1, padding=0, dilation=1):
    """y[n, o, pos] = b[o] + sum over c and kernel offsets of W[o, c, k] x[n, c, pos*s + k*dil]."""
    d = x.ndim - 2
    s, p, dil = (_per_axis(v, d) for v in (stride, padding, dilation))
    kernel = W.shape[2:]
    xp = _pad(x, p, 0.0)
    out = [_out_size(x.shape[2 + i], kernel[i], s[i], p[i], dil[i]) for i in range(d)]
    y = np.zeros((x.shape[0], W.shape[0], *out))
    for pos in itertools.product(*map(range, out)):
        for k in itertools.product(*map(range, kernel)):
            at = tuple(pos[i] * s[i] + k[i] * dil[i] for i in range(d))
            y[(slice(None), slice(None)) + pos] += xp[(slice(None), slice(None)) + at] @ \
                W[(slice(None), slice(None)) + k].T
    if b is not None:
        y += b.reshape((1, -1) + (1,) * d)
    return y


def pool(x, kernel, stride=None, padding=0, kind="max"):
    """max: the largest entry of each window (padding -inf); avg: the window's sum / its size."""
    d = x.ndim - 2
    k = _per_axis(kernel, d)
    s = k if stride is None else _per_axis(stride, d)
    p = _per_axis(padding, d)
    xp = _pad(x, p, -np.inf if kind == "max" else 0.0)
    out = [_out_size(x.shape[2 + i], k[i], s[i], p[i], 1) for i in range(d)]
    y = np.zeros(x.shape[:2] + tuple(out))
    for pos in itertools.product(*map(range, out)):
        window = xp[(slice(None), slice(None)) +
                    tuple(slice(pos[i] * s[i], pos[i] * s[i] + k[i]) for i in range(d))]
        flat = window.reshape(x.shape[:2] + (-1,))
        y[(slice(None), slice(None)) + pos] = flat.max(-1) if kind == "max" else \
            flat.sum(-1) / flat.shape[-1]
    return y
