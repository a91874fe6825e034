"""NumPy kernels of the op catalog (issue 4): activations, softmax, shape ops, losses, their grads.

Plain kernels `kernel(out, *inputs, **attrs)`, bound as they are (bind.py). Kernels
of elementwise ops stay correct when `out` is one of their inputs (the planner may
write in place): each reads every input before its first write to `out`, or writes
only elementwise from inputs it still needs. Loss gradients read the scalar `g`
first for the same reason.
"""
from __future__ import annotations

import math

import numpy as np

from functools import partial

from .bind import plain_table, source
from .kernels import unary
from .workspace import constant, scratch

GELU_C = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715


def _axes(axis):
    """NumPy takes an axis tuple, not a list (a list is what a YAML/expression attr gives)."""
    return tuple(axis) if isinstance(axis, list) else axis


def _keep(y: np.ndarray, x: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    """A reduction's result `y` with the reduced axes of `x` re-inserted as size 1."""
    if keepdims or x.ndim == 0:
        return y
    axes = range(x.ndim) if axis is None else [axis] if isinstance(axis, int) else axis
    return np.expand_dims(y, tuple(sorted(a % x.ndim for a in axes)))


def _scale(g: np.ndarray, n: int):
    """g / n as a NumPy scalar, read before `out` (which may alias g) is written."""
    return g / max(n, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in a fresh array, stable for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


# elementwise activations

def k_leaky_relu(out, x, alpha):
    # max(x, alpha x) is leaky_relu for alpha <= 1, min(x, alpha x) for alpha > 1
    (np.maximum if alpha <= 1 else np.minimum)(x, x * alpha, out=out)


def k_elu(out, x, alpha):
    negative = np.expm1(np.minimum(x, 0))
    negative *= alpha
    np.copyto(out, np.where(x > 0, x, negative))


def k_softplus(out, x):
    t = np.asarray(np.abs(x))        # an array even for 0-d x, so out= works
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    np.maximum(x, 0, out=out)
    out += t


def k_silu(out, x):
    np.divide(x, 1 + np.exp(-x), out=out)


def b_gelu_tanh(out, x):
    """t = tanh(c x (1 + k x²)), c = sqrt(2/pi), k = 0.044715: gelu's saved value."""
    return source("""
        np.multiply(x, x, out=out)
        np.multiply(out, k, out=out)
        np.add(out, 1.0, out=out)
        np.multiply(out, x, out=out)
        np.multiply(out, c, out=out)
        np.tanh(out, out=out)
        """, x=x, k=GELU_K, c=GELU_C, out=out)


def b_gelu(out, x, t):
    """0.5 x (1 + t) (the tanh form), t the saved tanh; written in place of x, 1 + t goes
    to scratch first."""
    return source("""
        np.add(t, 1.0, out=s)
        np.multiply(s, x, out=out)
        np.multiply(out, 0.5, out=out)
        """, t=t, s=scratch(x.shape, x.dtype) if np.shares_memory(out, x) else out, x=x,
        out=out)


# elementwise gradients

def k_abs_grad(out, g, x):
    np.multiply(g, np.sign(x), out=out)


def k_sqrt_grad(out, g, y):
    np.divide(g, y, out=out)
    out *= 0.5


def k_reciprocal_grad(out, g, y):
    np.multiply(g, -(y * y), out=out)


def k_leaky_relu_grad(out, g, v, alpha):
    np.multiply(g, np.where(v > 0, 1.0, alpha).astype(out.dtype, copy=False), out=out)


def k_elu_grad(out, g, v, alpha, output=True):
    slope = np.asarray(v + alpha if output else alpha * np.exp(np.minimum(v, 0)))
    np.copyto(slope, 1, where=v > 0)
    np.multiply(g, slope, out=out)


def k_softplus_grad(out, g, y):
    np.multiply(g, -np.expm1(-y), out=out)


def k_silu_grad(out, g, x):
    s = _sigmoid(x)
    slope = (1 - s) * x
    slope += 1
    slope *= s
    np.multiply(g, slope, out=out)


# reductions, softmax, shape ops

def k_amax(out, x, axis=None, keepdims=False):
    np.amax(x, axis=_axes(axis), keepdims=keepdims, out=out)


def k_amax_grad(out, g, x, y, axis=None, keepdims=False):
    axis = _axes(axis)
    np.equal(x, _keep(y, x, axis, keepdims), out=out)
    ties = np.sum(out, axis=axis, keepdims=True)
    out *= _keep(g, x, axis, keepdims) / ties


def k_softmax(out, x, axis=-1):
    np.subtract(x, np.amax(x, axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=axis, keepdims=True)


def k_log_softmax(out, x, axis=-1):
    np.subtract(x, np.amax(x, axis=axis, keepdims=True), out=out)
    out -= np.log(np.sum(np.exp(out), axis=axis, keepdims=True))


def k_softmax_grad(out, g, y, axis=-1):
    dot = np.sum(g * y, axis=axis, keepdims=True)
    np.subtract(g, dot, out=out)
    out *= y


def b_softmax_grad(out, g, y, axis=-1):
    """y (g - sum(g y, axis)); over the last axis in scratch, the row sums by a
    matrix-vector product (NumPy reduces along a short last axis slowly)."""
    if axis not in (-1, y.ndim - 1) or not y.ndim:
        return partial(k_softmax_grad, out, g, y, axis=axis)
    gy = scratch(y.shape, y.dtype)
    dot = scratch(y.shape[:-1] + (1,), y.dtype)
    return source("""
        np.multiply(g, y, out=gy)
        np.dot(gy_rows, ones, out=dot_rows)
        np.subtract(g, dot, out=out)
        np.multiply(out, y, out=out)
        """, g=g, y=y, gy=gy, gy_rows=gy.reshape(-1, y.shape[-1]), dot=dot,
        dot_rows=dot.reshape(-1), ones=constant(1, y.shape[-1:], y.dtype), out=out)


def k_log_softmax_grad(out, g, y, axis=-1):
    total = np.sum(g, axis=axis, keepdims=True)
    np.exp(y, out=out)
    out *= total
    np.subtract(g, out, out=out)


def b_transpose(out, x, axes=None):
    """A copy of x's transposed view, the view made once when the plan is bound."""
    return source("np.copyto(out, view)", out=out, view=np.transpose(x, _axes(axes)))


def b_reshape(out, x):
    """A copy of x's reshaped view, made once when the plan is bound (x contiguous; else
    reshape copies, so it runs per call)."""
    if not x.flags.c_contiguous:
        return lambda: np.copyto(out, x.reshape(out.shape))
    return source("np.copyto(out, view)", out=out, view=x.reshape(out.shape))


def k_concat(out, *xs, axis=0):
    np.concatenate(xs, axis=axis, out=out)


def k_slice(out, g, axis, start, stop):
    index = [slice(None)] * g.ndim
    index[axis] = slice(start, stop)
    np.copyto(out, g[tuple(index)])


# losses (scalar, mean over the batch) and their gradients

def k_l1(out, p, t):
    d = np.asarray(np.subtract(p, t))
    np.abs(d, out=d)
    out[...] = d.mean()


def k_l1_grad(out, g, p, t):
    s = _scale(g, out.size)
    np.subtract(p, t, out=out)
    np.sign(out, out=out)
    out *= s


def k_huber(out, p, t, delta=1.0):
    d = np.asarray(np.subtract(p, t))
    np.abs(d, out=d)
    q = np.asarray(np.minimum(d, delta))
    # 0.5 q^2 + delta (|d| - q): 0.5 d^2 inside the delta band, delta (|d| - delta/2) outside
    d -= q
    d *= delta
    q *= q
    q *= 0.5
    d += q
    out[...] = d.mean()


def k_huber_grad(out, g, p, t, delta=1.0):
    s = _scale(g, out.size)
    np.subtract(p, t, out=out)
    np.clip(out, -delta, delta, out=out)
    out *= s


def k_bce_logits(out, x, t):
    loss = np.asarray(np.abs(x))
    np.negative(loss, out=loss)
    np.exp(loss, out=loss)
    np.log1p(loss, out=loss)
    loss = loss + np.maximum(x, 0) - x * t      # broadcasts x against t
    out[...] = loss.mean()


def k_bce_logits_grad(out, g, x, t, wrt="logits"):
    s = _scale(g, out.size)
    if wrt == "logits":
        np.subtract(_sigmoid(x), t, out=out)
        out *= s
    else:
        np.multiply(x, -s, out=out)


def _margins(s, labels, margin):
    """m_j = s_j - s_y + margin, with m_y = 0 (the correct class never counts)."""
    idx = labels[..., None].astype(np.intp)
    m = s - np.take_along_axis(s, idx, axis=-1)
    m += margin
    np.put_along_axis(m, idx, 0.0, axis=-1)
    return m, idx


def k_multiclass_hinge(out, s, labels, margin=1.0):
    m, _ = _margins(s, labels, margin)
    np.maximum(m, 0, out=m)
    out[...] = m.sum() / max(labels.size, 1)


def k_multiclass_hinge_grad(out, g, s, labels, margin=1.0):
    m, idx = _margins(s, labels, margin)
    np.greater(m, 0, out=out)
    np.put_along_axis(out, idx, -out.sum(axis=-1, keepdims=True), axis=-1)
    out *= g / max(labels.size, 1)


BIND = {"gelu": b_gelu, "gelu_tanh": b_gelu_tanh, "softmax_grad": b_softmax_grad,
        "transpose": b_transpose, "reshape": b_reshape} | plain_table({
    "minimum": lambda out, a, b: np.minimum(a, b, out=out),
    "abs": unary(np.abs), "sqrt": unary(np.sqrt),
    "reciprocal": lambda out, x: np.divide(1, x, out=out),
    "leaky_relu": k_leaky_relu, "elu": k_elu, "softplus": k_softplus, "silu": k_silu,
    "amax": k_amax, "concat": k_concat,
    "softmax": k_softmax, "log_softmax": k_log_softmax,
    "l1": k_l1, "huber": k_huber, "binary_cross_entropy_with_logits": k_bce_logits,
    "multiclass_hinge": k_multiclass_hinge,
    "abs_grad": k_abs_grad, "sqrt_grad": k_sqrt_grad, "reciprocal_grad": k_reciprocal_grad,
    "leaky_relu_grad": k_leaky_relu_grad, "elu_grad": k_elu_grad,
    "softplus_grad": k_softplus_grad, "silu_grad": k_silu_grad,
    "amax_grad": k_amax_grad, "slice": k_slice,
    "log_softmax_grad": k_log_softmax_grad, "l1_grad": k_l1_grad, "huber_grad": k_huber_grad,
    "binary_cross_entropy_with_logits_grad": k_bce_logits_grad,
    "multiclass_hinge_grad": k_multiclass_hinge_grad,
})
