"""Zero-allocation kernels for the hot ops of a training step (the contract: bind.py).

Each bind function takes its scratch and constants from the workspace at compile
time and returns a closure made of NumPy calls with `out=`, so a step allocates no
arrays. Forms are chosen by measurement (benchmarks/): array operands of the right
dtype instead of Python scalars, reductions over the batch through `ndarray.dot` with a
ones vector. Elementwise kernels stay correct when `out` aliases an input.
"""
from __future__ import annotations

import numpy as np

from functools import partial

from .bind import in_row_blocks, source
from .kernels import gemm, k_matmul_ga, k_matmul_gb
from .nn import GELU_C, GELU_K
from .workspace import constant, scratch


def b_relu(out, x):
    zeros = constant(0, x.shape, x.dtype)
    return source("np.maximum(x, zeros, out=out)", x=x, zeros=zeros, out=out)


def _times_slope(out, g, slope):
    """g * slope: `slope(t)` writes the local derivative to scratch first, so out may
    alias g or any input the slope reads."""
    t = scratch(out.shape, out.dtype)

    def run():
        slope(t)
        np.multiply(g, t, out=out)
    return run


def b_relu_grad(out, g, y):
    """g * (y > 0), as `_times_slope` but inline: the hot one, each MLP layer runs it.
    y is compared with a 0-d zero, not a zeros array of y's shape (one pass less to read).
    The mask stays in out's dtype: g times a bool mask would cast it through a buffer
    that the multiply allocates on every call."""
    zero = constant(0, (), y.dtype)
    mask = scratch(out.shape, out.dtype)
    return source("""
        np.greater(y, zero, out=mask)
        np.multiply(g, mask, out=out)
        """, y=y, zero=zero, mask=mask, g=g, out=out)


def b_gelu_grad(out, g, x, t):
    """g (1 + t) (0.5 + 0.5 c x (1 + 3k x²) (1 - t)), t = tanh(c x (1 + k x²)) saved by
    gelu (tanh form; 1 - t² = (1 - t)(1 + t)), in scratch and out (scratch for both
    when out is written in place of an input)."""
    aliased = any(np.shares_memory(out, a) for a in (g, x, t))
    return source("""
        np.multiply(x, x, out=w)
        np.multiply(w, three_halves_ck, out=w)
        np.add(w, half_c, out=w)
        np.multiply(w, x, out=w)
        np.subtract(1.0, t, out=v)
        np.multiply(w, v, out=w)
        np.add(w, 0.5, out=w)
        np.add(t, 1.0, out=v)
        np.multiply(w, v, out=w)
        np.multiply(g, w, out=out)
        """, x=x, w=scratch(out.shape, out.dtype), three_halves_ck=1.5 * GELU_C * GELU_K,
        half_c=0.5 * GELU_C, t=t, v=scratch(out.shape, out.dtype) if aliased else out, g=g,
        out=out)


def b_sigmoid_grad(out, g, y):
    """g * y * (1 - y)."""
    one = constant(1, (), y.dtype)

    def slope(t):
        np.subtract(one, y, out=t)
        np.multiply(t, y, out=t)
    return _times_slope(out, g, slope)


def b_tanh_grad(out, g, y):
    """g * (1 - y * y)."""
    one = constant(1, (), y.dtype)

    def slope(t):
        np.multiply(y, y, out=t)
        np.subtract(one, t, out=t)
    return _times_slope(out, g, slope)


def b_pow_grad(out, g, x, exponent):
    """g * p * x ** (p - 1)."""
    p = constant(exponent, (), out.dtype)
    pm1 = constant(exponent - 1, (), out.dtype)

    def slope(t):
        np.power(x, pm1, out=t)
        np.multiply(t, p, out=t)
    return _times_slope(out, g, slope)


def b_maximum_grad(out, g, a, b):
    """g * ((a > b) + 0.5 * (a == b)): ties share the gradient."""
    half = constant(0.5, (), out.dtype)
    e = scratch(out.shape, out.dtype)

    def slope(t):
        np.greater(a, b, out=t)
        np.equal(a, b, out=e)
        np.multiply(e, half, out=e)
        np.add(t, e, out=t)
    return _times_slope(out, g, slope)


def _batch_sum(out, g):
    """A closure summing g over its leading axes down to out's shape (a bias gradient:
    [..., E] to [E]) as one matrix-vector product over the stacked rows, or None when this
    is not such a sum."""
    lead = g.ndim - out.ndim
    if lead >= 1 and out.ndim >= 1 and g.shape[lead:] == out.shape and g.flags.c_contiguous \
            and out.flags.c_contiguous:
        rows = g.reshape(-1, out.size)
        ones = constant(1, (rows.shape[0],), g.dtype)
        return source("ones.dot(rows, out)", ones=ones, rows=rows,
                      out=out.reshape(-1))
    return None


def b_sum_to(out, g, shape=None):
    """g summed down to out's shape: over leading axes and stretched 1-dims."""
    fast = _batch_sum(out, g)
    if fast is not None:
        return fast
    if g.shape == out.shape:
        return lambda: np.copyto(out, g)
    lead = g.ndim - out.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(out.shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    view = out.reshape((1,) * lead + out.shape)
    return lambda: np.sum(g, axis=axes, keepdims=True, out=view)


def _rows(x):
    """A C-contiguous [..., m, k] array as the matrix [prod(...) m, k] (a view), else None."""
    return x.reshape(-1, x.shape[-1]) if x.ndim >= 2 and x.flags.c_contiguous else None


def _same_batch(*arrays) -> bool:
    """Stacks of matrices [..., m, n] with one batch shape (no broadcasting), rank >= 3."""
    return arrays[0].ndim > 2 and len({a.shape[:-2] for a in arrays}) == 1 and \
        len({a.ndim for a in arrays}) == 1


def b_matmul_ga(out, g, b, shape=None):
    """d(a @ b)/da = g @ b.T for matrices, and for a batch of rows times a matrix b (one
    GEMM over the stacked rows); for stacks of matrices of one batch shape, bᵀ is copied to
    contiguous scratch first (NumPy's batched matmul runs BLAS only on contiguous rows);
    other ranks use the general kernel."""
    if out.ndim == 2 and b.ndim == 2 and g.ndim == 2:
        return gemm(out, g, b.T)
    if b.ndim == 2 and out.shape == g.shape[:-1] + b.shape[:1] and \
            _rows(g) is not None and _rows(out) is not None:
        return gemm(_rows(out), _rows(g), b.T)
    if _same_batch(out, g, b):
        bt = scratch(b.shape[:-2] + b.shape[:-3:-1], b.dtype)
        return source("""
            np.copyto(bt, b_swapped)
            np.matmul(g, bt, out=out)
            """, bt=bt, b_swapped=np.swapaxes(b, -1, -2), g=g, out=out)
    return partial(k_matmul_ga, out, g, b)


def b_matmul_gb(out, a, g, shape=None):
    """d(a @ b)/db = a.T @ g for matrices, and summed over a batch of rows when b is a
    matrix (one GEMM over the stacked rows); for stacks of matrices of one batch shape,
    aᵀ @ g straight into out; other ranks use the general kernel."""
    if out.ndim == 2 and a.ndim == 2 and g.ndim == 2:
        return gemm(out, a.T, g)
    if out.ndim == 2 and a.ndim == g.ndim > 2 and a.shape[:-1] == g.shape[:-1] and \
            _rows(a) is not None and _rows(g) is not None:
        return gemm(out, _rows(a).T, _rows(g))
    if _same_batch(out, a, g):
        return gemm(out, np.swapaxes(a, -1, -2), g)
    return partial(k_matmul_gb, out, a, g)


def _axes(axis, ndim: int) -> tuple:
    """axis None/int/list -> sorted non-negative axes; a scalar has none to reduce."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else axis
    return tuple(sorted({a % ndim for a in axes})) if ndim else ()


def _reducer(out, x, axis, keepdims):
    """A closure for sum(x, axis): np.dot with ones over the batch axis of a matrix
    (`_batch_sum`) or over its rows, else np.add.reduce (the np.sum wrapper costs ~4 us
    of Python per call)."""
    axes = _axes(axis, x.ndim)
    batch_sum = _batch_sum(out, x) if x.ndim == 2 and axes == (0,) and not keepdims else None
    if batch_sum is not None:
        return batch_sum
    if x.ndim == 2 and axes == (1,) and x.flags.c_contiguous and not keepdims:
        ones = constant(1, (x.shape[1],), x.dtype)
        return source("x.dot(ones, out)", x=x, ones=ones, out=out)
    if x.ndim >= 3 and axes == (0,) + tuple(range(2, x.ndim)) and x.flags.c_contiguous \
            and not keepdims:       # a channel sum (a conv's bias gradient): two BLAS dots
        rows, per_row = x.reshape(x.shape[0] * x.shape[1], -1), scratch(x.shape[:2], x.dtype)
        ones = constant(1, (x.shape[0],), x.dtype)
        ones_row = constant(1, (rows.shape[1],), x.dtype)
        return source("rows.dot(ones_row, flat)\nones.dot(per_row, out)",
                      rows=rows, ones_row=ones_row, flat=per_row.reshape(-1),
                      per_row=per_row, ones=ones, out=out)
    return lambda: np.add.reduce(x, axis=axes, keepdims=keepdims, out=out)


def b_sum(out, x, axis=None, keepdims=False):
    return _reducer(out, x, axis, keepdims)


def b_mean(out, x, axis=None, keepdims=False):
    total = _reducer(out, x, axis, keepdims)
    scale = constant(out.size / max(x.size, 1), (), out.dtype)

    def run():
        total()
        np.multiply(out, scale, out=out)
    return run


def b_expand(out, g, shape=None, axis=None, keepdims=False, mean=False):
    """g broadcast back over the reduced axes (divided by their count for a mean)."""
    if not keepdims and g.ndim < out.ndim:
        g = np.expand_dims(g, _axes(axis, out.ndim))
    if mean:
        scale = constant(g.size / max(out.size, 1), (), out.dtype)
        return lambda: np.multiply(g, scale, out=out)
    if g.size == 1:
        flat = g.reshape(())
        return lambda: out.fill(flat)
    return lambda: np.copyto(out, g)


BIND = {
    "relu": b_relu, "relu_grad": b_relu_grad, "sigmoid_grad": b_sigmoid_grad,
    "tanh_grad": b_tanh_grad, "pow_grad": b_pow_grad, "maximum_grad": b_maximum_grad,
    "gelu_grad": partial(in_row_blocks, b_gelu_grad),
    "sum_to": b_sum_to, "matmul_ga": b_matmul_ga, "matmul_gb": b_matmul_gb,
    "sum": b_sum, "mean": b_mean, "expand": b_expand,
}
