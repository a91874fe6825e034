"""NumPy kernels of arithmetic, products and the simple losses: `kernel(out, *inputs, **attrs)`.

Plain kernels, bound as they are (`bind.plain`); the hot ops' zero-allocation forms
are in fast.py.
"""
from __future__ import annotations

import numpy as np

from .bind import inline, plain_table, source, ufunc


def _sum_into(out: np.ndarray, full: np.ndarray) -> None:
    """out = full summed down to out's shape (leading axes and stretched 1-dims)."""
    if full.shape == out.shape:
        np.copyto(out, full)
        return
    lead = full.ndim - out.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(out.shape)
                                      if d == 1 and full.shape[lead + i] != 1)
    np.sum(full, axis=axes, keepdims=True, out=out.reshape((1,) * lead + out.shape))


def gemm(out, a, b):
    """out = a @ b for matrices: `a.dot(b, out)` where BLAS takes the operands as they lie
    (each C- or F-contiguous, out C-contiguous, one float dtype): the same GEMM as the
    matmul ufunc, bit for bit, at half its call cost (the method skips np.dot's
    dispatch too); else np.matmul."""
    blas = all(x.ndim == 2 and x.dtype == out.dtype and
               (x.flags.c_contiguous or x.flags.f_contiguous) for x in (a, b, out))
    if blas and out.flags.c_contiguous and out.dtype in (np.float32, np.float64):
        return source("a.dot(b, out)", a=a, b=b, out=out)
    return source("np.matmul(a, b, out=out)", out=out, a=a, b=b)


def b_matmul(out, a, b):
    """a @ b into out; a batch of rows times a matrix (`[..., T, D] @ [D, E]`, contiguous)
    is one GEMM over the stacked rows, bound as 2-D views, not one GEMM per batch entry."""
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous and out.flags.c_contiguous:
        out, a = out.reshape(-1, out.shape[-1]), a.reshape(-1, a.shape[-1])
    return gemm(out, a, b)


def k_matmul_ga(out, g, b, shape=None):
    """d(a @ b)/da: g @ b^T, with NumPy's 1-D promotion undone, summed to a's shape."""
    if out.ndim == 2 and b.ndim == 2 and g.ndim == 2:
        np.matmul(g, b.T, out=out)
        return
    if b.ndim == 1:
        full = np.multiply.outer(g, b) if g.ndim else g * b
    else:
        gm = g[..., None, :] if out.ndim == 1 else g
        full = np.matmul(gm, np.swapaxes(b, -1, -2))
        if out.ndim == 1:
            full = full[..., 0, :]
    _sum_into(out, full)


def k_matmul_gb(out, a, g, shape=None):
    """d(a @ b)/db: a^T @ g, with NumPy's 1-D promotion undone, summed to b's shape."""
    if out.ndim == 2 and a.ndim == 2 and g.ndim == 2:
        np.matmul(a.T, g, out=out)
        return
    if a.ndim == 1:
        full = a[:, None] * g[..., None, :] if out.ndim > 1 else a * g
    else:
        gm = g[..., None] if out.ndim == 1 else g
        full = np.matmul(np.swapaxes(a, -1, -2), gm)
        if out.ndim == 1:
            full = full[..., 0]
    _sum_into(out, full)


def k_mse(out, p, t):
    d = p - t
    out[...] = np.mean(d * d)


def k_mse_grad(out, g, p, t):
    scale = 2 * g / out.size        # read g first: with scalar operands out may alias it
    np.subtract(p, t, out=out)
    out *= scale


def k_hinge(out, s, y):
    out[...] = np.mean(np.maximum(0, 1 - s * y))


def k_hinge_grad(out, g, a, b):
    scale = g / out.size            # read g first: with scalar operands out may alias it
    np.multiply(-b, (1 - a * b) > 0, out=out)
    out *= scale


def unary(ufunc):
    return lambda out, x: ufunc(x, out=out)


def k_sigmoid(out, x):
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)


BIND = {
    "add": ufunc("add", 2), "sub": ufunc("subtract", 2), "mul": ufunc("multiply", 2),
    "div": ufunc("divide", 2), "maximum": ufunc("maximum", 2),
    "neg": ufunc("negative", 1), "exp": ufunc("exp", 1), "log": ufunc("log", 1),
    "square": ufunc("square", 1), "tanh": ufunc("tanh", 1),
    "matmul": b_matmul, "dot": ufunc("matmul", 2),
    "identity": inline("np.copyto(out, x)", "x"),
} | plain_table({
    "pow": lambda out, x, exponent: np.power(x, exponent, out=out),
    "sigmoid": k_sigmoid, "mse": k_mse, "hinge": k_hinge,
    "mse_grad": k_mse_grad, "hinge_grad": k_hinge_grad,
    # np.where allocates its result: out may then be any of the inputs
    "where": lambda out, cond, a, b: np.copyto(out, np.where(cond, a, b)),
})
