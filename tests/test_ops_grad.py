"""Per-op gradient checks, table-driven over the op vocabulary (jax LAX_GRAD_OPS style).

Every forward op in ops.OPS has a row in CASES (a generator of random inputs,
with NumPy broadcasting, and a NumPy reference of the forward value) or in
NON_DIFFERENTIABLE with a reason; adding an op without either fails
test_table_covers_the_forward_ops. Each case builds `out = op(x0, x1, ...)`,
reduces it with a fixed random weighting `loss = sum(out * R)` so that every
output element matters, and compares the reverse graph's gradients (planned and
executed) with central differences in float64. Inputs stay away from kinks
(relu, maximum, hinge) and from where an op is undefined (log, fractional pow).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from click.testing import CliRunner

from graphc.backends import BACKENDS, using
from graphc.cli import main
from graphc.cli_common import input_feeds
from graphc.gradcheck import Probe, check_grads, check_model, rel_error
from graphc.ir import GraphBuilder, Node, toposort
from graphc.model import load_model
from graphc.ops import OPS, attrs_with_defaults, ops_in
from graphc.ops.modal import stream

import conv_reference

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
SPIRAL = REPO / "specs" / "spiral_mlp.yaml"

SIDE = 4
SHAPE = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=SIDE)
PAIR = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1,
                                         max_side=SIDE)
# a loss's prediction and target: the same shape, or a scalar target (docs/ops.md#losses)
LOSS_PAIR = SHAPE.flatmap(lambda s: st.sampled_from([(s, s), (s, ())]))
TOL = 1e-6


@dataclass(frozen=True)
class Case:
    """`gen(draw, rng) -> (arrays, attrs)` makes one random instance; `ref` is NumPy's answer."""
    gen: Callable
    ref: Callable


def uniform(rng, shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape)


def away_from_zero(rng, shape, gap=0.5, hi=2.0):
    """|x| in [gap, hi], either sign: clear of the kink of relu and the pole of 1/x."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(gap, hi, size=shape)


def _reduce_ref(fn):
    """NumPy's sum/mean; a list axis means the tuple, a scalar's axis 0 reduces nothing."""
    def ref(x, axis, keepdims):
        axis = (() if x.ndim == 0 and axis is not None else
                tuple(axis) if isinstance(axis, list) else axis)
        return fn(x, axis=axis, keepdims=keepdims)
    return ref


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _sce_ref(logits, labels):
    picked = np.take_along_axis(_log_softmax(logits), labels[..., None], axis=-1)
    return -picked.mean()


def unary(values=uniform):
    return lambda draw, rng: ([values(rng, draw(SHAPE))], {})


def binary(second=uniform, loss=False):
    """Two inputs of broadcastable shapes; with `loss`, a loss's pair (LOSS_PAIR)."""
    def gen(draw, rng):
        a, b = draw(LOSS_PAIR) if loss else draw(PAIR).input_shapes
        return [uniform(rng, a), second(rng, b)], {}
    return gen


def gen_maximum(draw, rng, loss=False):
    """a on k + 1/4, b on m + 3/4 (jittered): never within 0.3 of each other, so no ties."""
    a, b = draw(LOSS_PAIR) if loss else draw(PAIR).input_shapes
    jitter = lambda s: rng.uniform(-0.1, 0.1, size=s)   # noqa: E731
    return [rng.integers(-2, 2, size=a) + 0.25 + jitter(a),
            rng.integers(-2, 2, size=b) + 0.75 + jitter(b)], {}


def gen_pow(draw, rng):
    p = draw(st.sampled_from([2.0, 3.0, 1.0, 0.0, -1.0, -2.0, 0.5, 1.5, -2.5]))
    shape = draw(SHAPE)
    x = away_from_zero(rng, shape) if p == int(p) else rng.uniform(0.5, 2.0, size=shape)
    return [x], {"exponent": p}


def gen_reduce(draw, rng):
    """axis None, an int or a tuple/list of axes (negative ones too), keepdims either way."""
    shape = draw(SHAPE)
    ndim = len(shape)
    axes = st.integers(-ndim, ndim - 1) if ndim else st.just(0)
    axis = draw(st.one_of(st.none(), axes,
                          st.lists(axes, unique_by=lambda a: a % max(ndim, 1), max_size=ndim)
                          .flatmap(lambda xs: st.sampled_from([xs, tuple(xs)]))))
    return [uniform(rng, shape)], {"axis": axis, "keepdims": draw(st.booleans())}


def gen_matmul(draw, rng, max_rank=4):
    """Ranks 1..max_rank on either side, batch dims broadcasting, 1-D operands as numpy.matmul."""
    m, k, n = (draw(st.integers(1, SIDE)) for _ in range(3))
    batch = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_rank - 2,
                                              max_side=3) if max_rank > 2 else st.just(None)
    batches = draw(batch)
    ba, bb = batches.input_shapes if batches else ((), ())

    def operand(matrix, vector):
        return draw(st.sampled_from([vector, matrix, batch_of(matrix)]))

    def batch_of(matrix):
        return (ba if matrix == (m, k) else bb) + matrix

    a, b = operand((m, k), (k,)), operand((k, n), (k,))
    return [uniform(rng, a), uniform(rng, b)], {}


def gen_dot(draw, rng):
    return gen_matmul(draw, rng, max_rank=2)


def gen_softmax_cross_entropy(draw, rng):
    logits = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=SIDE))
    labels = rng.integers(0, logits[-1], size=logits[:-1])
    return [uniform(rng, logits, -3, 3), labels.astype(np.int64)], {}


def gen_hinge(draw, rng):
    """y = +-1 and |score| off [0.8, 1.2], so the margin 1 - score y is never within 0.2 of 0."""
    s, y = draw(LOSS_PAIR)
    mag = np.where(rng.random(s) < 0.5, rng.uniform(0.0, 0.8, s), rng.uniform(1.2, 2.0, s))
    return [rng.choice([-1.0, 1.0], s) * mag, rng.choice([-1.0, 1.0], y)], {}


CASES = {
    "add": Case(binary(), np.add),
    "sub": Case(binary(), np.subtract),
    "mul": Case(binary(), np.multiply),
    "div": Case(binary(away_from_zero), np.divide),
    "maximum": Case(gen_maximum, np.maximum),
    "pow": Case(gen_pow, lambda x, exponent: np.power(x, exponent)),
    "identity": Case(unary(), lambda x: x),
    "neg": Case(unary(), np.negative),
    "exp": Case(unary(), np.exp),
    "log": Case(unary(lambda rng, s: rng.uniform(0.2, 3.0, s)), np.log),
    "square": Case(unary(), lambda x: x * x),
    "relu": Case(unary(away_from_zero), lambda x: np.where(x > 0, x, 0.0)),
    "sigmoid": Case(unary(lambda rng, s: uniform(rng, s, -4, 4)), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": Case(unary(), np.tanh),
    "sum": Case(gen_reduce, _reduce_ref(np.sum)),
    "mean": Case(gen_reduce, _reduce_ref(np.mean)),
    "matmul": Case(gen_matmul, np.matmul),
    "dot": Case(gen_dot, np.dot),
    "mse": Case(binary(loss=True), lambda p, t: np.mean(np.square(p - t))),
    "softmax_cross_entropy": Case(gen_softmax_cross_entropy, _sce_ref),
    "hinge": Case(gen_hinge, lambda s, y: np.mean(np.maximum(0.0, 1 - s * y))),
}


# --- the op catalog of issue 4 (cases by helper-4; docs/ops.md states each op's math) -----
def _sigmoid_ref(x):
    return 1 / (1 + np.exp(-x))


def with_attr(name, values, gen):
    """`gen` with one attribute drawn from `values`."""
    def wrapped(draw, rng):
        arrays, attrs = gen(draw, rng)
        return arrays, {**attrs, name: draw(st.sampled_from(values))}
    return wrapped


def gen_axis(draw, rng):
    """Rank >= 1 and one axis, negative ones too (softmax, log_softmax)."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=SIDE))
    return [uniform(rng, shape, -3, 3)], {"axis": draw(st.integers(-len(shape),
                                                                   len(shape) - 1))}


def gen_transpose(draw, rng):
    shape = draw(SHAPE)
    perm = draw(st.permutations(range(len(shape))))
    axes = [a - len(shape) if draw(st.booleans()) else a for a in perm]
    return [uniform(rng, shape)], {"axes": draw(st.sampled_from([None, axes]))}


def gen_reshape(draw, rng):
    shape = draw(SHAPE)
    n = int(np.prod(shape))
    target = draw(st.sampled_from([[n], [-1], [1, n], [n, -1], [-1, 1], list(shape[::-1]) or [1]]))
    return [uniform(rng, shape)], {"shape": target}


def gen_concat(draw, rng):
    """1-3 inputs of equal rank, equal off the axis, any sizes on it."""
    base = list(draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=SIDE)))
    axis = draw(st.integers(-len(base), len(base) - 1))
    shapes = []
    for _ in range(draw(st.integers(1, 3))):
        base[axis] = draw(st.integers(1, SIDE))
        shapes.append(tuple(base))
    return [uniform(rng, s) for s in shapes], {"axis": axis}


def gen_multiclass_hinge(draw, rng):
    """Scores on a half grid (+-0.1) and margins 0.25/0.75 off it: m_j is never within 0.05 of 0."""
    logits = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=SIDE))
    scores = rng.integers(-4, 4, size=logits) / 2 + rng.uniform(-0.1, 0.1, size=logits)
    labels = rng.integers(0, logits[-1], size=logits[:-1]).astype(np.int64)
    return [scores, labels], {"margin": draw(st.sampled_from([0.25, 0.75, 1.25]))}


def _multiclass_hinge_ref(scores, labels, margin):
    """The SVM loss by loops: sum over j != y of max(0, s_j - s_y + margin), mean over examples."""
    flat_s, flat_y = scores.reshape(-1, scores.shape[-1]), labels.reshape(-1)
    total = sum(max(0.0, s[j] - s[y] + margin)
                for s, y in zip(flat_s, flat_y) for j in range(len(s)) if j != y)
    return total / len(flat_y)


def _bce_ref(x, t):
    """-(t log p + (1 - t) log(1 - p)), p = sigmoid(x): the textbook form, fine for |x| <= 2."""
    p = _sigmoid_ref(x)
    return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))


def _huber_ref(p, t, delta):
    d = np.abs(p - t)
    return np.mean(np.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)))


def _gelu_ref(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def gen_where(draw, rng):
    """cond of 0 and +-1 (never within eps of where it flips: its numeric gradient is 0,
    as its analytic one), a and b uniform; all three broadcast."""
    c, a, b = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3,
                                                     max_side=SIDE)).input_shapes
    return [rng.integers(-1, 2, size=c) * 1.0, uniform(rng, a), uniform(rng, b)], {}


CASES.update({
    "minimum": Case(gen_maximum, np.minimum),
    "abs": Case(unary(away_from_zero), np.abs),
    "sqrt": Case(unary(lambda rng, s: rng.uniform(0.2, 3.0, s)), np.sqrt),
    "reciprocal": Case(unary(away_from_zero), lambda x: 1 / x),
    "leaky_relu": Case(with_attr("alpha", [0.01, 0.2, 0.0, -0.5, 1.5], unary(away_from_zero)),
                       lambda x, alpha: np.where(x > 0, x, alpha * x)),
    "elu": Case(with_attr("alpha", [1.0, 0.5, 0.0, -0.5], unary(away_from_zero)),
                lambda x, alpha: np.where(x > 0, x, alpha * (np.exp(x) - 1))),
    "softplus": Case(unary(lambda rng, s: uniform(rng, s, -6, 6)),
                     lambda x: np.log(1 + np.exp(x))),
    "silu": Case(unary(lambda rng, s: uniform(rng, s, -4, 4)), lambda x: x * _sigmoid_ref(x)),
    "gelu": Case(unary(lambda rng, s: uniform(rng, s, -3, 3)), _gelu_ref),
    "amax": Case(gen_reduce, _reduce_ref(np.amax)),
    "transpose": Case(gen_transpose, lambda x, axes: np.transpose(x, axes)),
    "reshape": Case(gen_reshape, lambda x, shape: np.reshape(x, shape)),
    "concat": Case(gen_concat, lambda *xs, axis: np.concatenate(xs, axis)),
    "softmax": Case(gen_axis, _softmax_ref),
    "log_softmax": Case(gen_axis, lambda x, axis: np.log(_softmax_ref(x, axis))),
    "l1": Case(lambda draw, rng: gen_maximum(draw, rng, loss=True),
               lambda p, t: np.mean(np.abs(p - t))),
    "huber": Case(with_attr("delta", [1.0, 0.5, 2.0], binary(loss=True)), _huber_ref),
    "binary_cross_entropy_with_logits": Case(binary(lambda rng, s: rng.uniform(0, 1, s), loss=True),
                                             _bce_ref),
    "multiclass_hinge": Case(gen_multiclass_hinge, _multiclass_hinge_ref),
    "where": Case(gen_where, np.where),
})

# --- convolution and pooling (issue 12; loop references in conv_reference.py) ------------
def _spatial(draw, d, reach_of):
    """Per-axis sizes that leave at least one output position for the window `reach_of(i)`."""
    return [max(1, reach_of(i) + draw(st.integers(0, 3))) for i in range(d)]


def _per_axis_attr(draw, d, lo, hi):
    """An int or a list of d ints in [lo, hi], as a user may write either."""
    values = [draw(st.integers(lo, hi)) for _ in range(d)]
    return draw(st.sampled_from([values[0], values]))


def gen_conv(d):
    """x [N, C, *size], W [O, C, *kernel], b [O] or none; strides, padding, dilation mixed."""
    def gen(draw, rng):
        n, c, o = (draw(st.integers(1, 3)) for _ in range(3))
        kernel = [draw(st.integers(1, 3)) for _ in range(d)]
        attrs = {k: _per_axis_attr(draw, d, lo, 2) for k, lo in
                 (("stride", 1), ("padding", 0), ("dilation", 1))}
        pad, dil = ([v] * d if isinstance(v, int) else v for v in
                    (attrs["padding"], attrs["dilation"]))
        size = _spatial(draw, d, lambda i: dil[i] * (kernel[i] - 1) + 1 - 2 * pad[i])
        arrays = [uniform(rng, (n, c, *size)), uniform(rng, (o, c, *kernel))]
        if draw(st.booleans()):
            arrays.append(uniform(rng, (o,)))
        return arrays, attrs
    return gen


def gen_pool(d, distinct):
    """Pooling windows with padding up to half the kernel; `distinct` values 0.1 apart, so
    no window has a tie and central differences never move its maximum."""
    def gen(draw, rng):
        kernel = [draw(st.integers(1, 3)) for _ in range(d)]
        stride = draw(st.sampled_from([None, _per_axis_attr(draw, d, 1, 3)]))
        padding = [draw(st.integers(0, k // 2)) for k in kernel]
        size = _spatial(draw, d, lambda i: kernel[i] - 2 * padding[i])
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size)
        x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0) if distinct \
            else uniform(rng, shape)
        one = len(set(kernel)) == 1 and draw(st.booleans())       # kernel=2, not [2, 2]
        return [x], {"kernel": kernel[0] if one else kernel, "stride": stride,
                     "padding": padding}
    return gen


def gen_image(draw, rng):
    """[N, C, *spatial] with 1 to 3 spatial axes."""
    return [uniform(rng, draw(hnp.array_shapes(min_dims=3, max_dims=5, min_side=1,
                                               max_side=3)))], {}


CASES.update({
    "conv1d": Case(gen_conv(1), conv_reference.conv),
    "conv2d": Case(gen_conv(2), conv_reference.conv),
    "max_pool1d": Case(gen_pool(1, True), lambda x, **a: conv_reference.pool(x, kind="max", **a)),
    "max_pool2d": Case(gen_pool(2, True), lambda x, **a: conv_reference.pool(x, kind="max", **a)),
    "avg_pool1d": Case(gen_pool(1, False), lambda x, **a: conv_reference.pool(x, kind="avg", **a)),
    "avg_pool2d": Case(gen_pool(2, False), lambda x, **a: conv_reference.pool(x, kind="avg", **a)),
    "global_avg_pool": Case(gen_image, lambda x: x.reshape(x.shape[:2] + (-1,)).mean(-1)),
    "flatten": Case(gen_image, lambda x: x.reshape(x.shape[0], -1)),
})


# --- sequence ops (issue 13): references written with loops, as the papers state them -------

def gen_embedding(draw, rng):
    """ids of rank 0..3 drawn from few rows, so ids repeat (their gradients must add up)."""
    rows, width = draw(st.integers(1, SIDE)), draw(st.integers(1, SIDE))
    ids = rng.integers(0, rows, size=draw(SHAPE)).astype(np.int64)
    return [ids, uniform(rng, (rows, width))], {}


def gen_attention(draw, rng):
    """q [..., T, d], k [..., S, d], v [..., S, dv] with broadcasting batch dims; causal or not."""
    t, s, d, dv = (draw(st.integers(1, SIDE)) for _ in range(4))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=2, max_side=3))
    bq, bk, bv = batch.input_shapes
    return ([uniform(rng, bq + (t, d)), uniform(rng, bk + (s, d)), uniform(rng, bv + (s, dv))],
            {"causal": draw(st.booleans())})


def attention_by_loops(q, k, v, causal=False):
    """softmax_j(q_i · k_j / sqrt(d)) over the keys j <= i (causal) or all, times v_j."""
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (q, k, v))
    out = np.zeros(batch + (q.shape[-2], v.shape[-1]))
    for idx in np.ndindex(batch):
        for i in range(q.shape[-2]):
            keys = range(min(i + 1, k.shape[-2]) if causal else k.shape[-2])
            scores = [q[idx][i] @ k[idx][j] / np.sqrt(q.shape[-1]) for j in keys]
            weights = np.exp(np.array(scores) - max(scores))
            weights /= weights.sum()
            out[idx][i] = sum(w * v[idx][j] for w, j in zip(weights, keys))
    return out


def gen_layer_norm(draw, rng):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=SIDE))
    return ([uniform(rng, shape), uniform(rng, shape[-1:]), uniform(rng, shape[-1:])],
            {"eps": draw(st.sampled_from([1e-5, 0.1]))})


def layer_norm_by_rows(x, gamma, beta, eps):
    flat = x.reshape(-1, x.shape[-1])
    rows = [(r - r.mean()) / np.sqrt(((r - r.mean()) ** 2).mean() + eps) for r in flat]
    return (np.array(rows) * gamma + beta).reshape(x.shape)


def gen_slice(draw, rng):
    """One axis, start < stop inside it, each given from the front or (negative) the back."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=SIDE))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    size = shape[axis]
    start = draw(st.integers(0, size - 1))
    stop = draw(st.integers(start + 1, size))
    start, stop = (i - size if draw(st.booleans()) and i < size else i for i in (start, stop))
    return [uniform(rng, shape)], {"axis": axis, "start": start, "stop": stop}


def _slice_ref(x, axis, start, stop):
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


CASES.update({
    "embedding": Case(gen_embedding, lambda ids, table: table[ids]),
    "scaled_dot_product_attention": Case(gen_attention, attention_by_loops),
    "layer_norm": Case(gen_layer_norm, layer_norm_by_rows),
    "slice": Case(gen_slice, _slice_ref),
})

# --- modes (graphc/ops/modal.py): batch_norm in train and eval mode, dropout -----------------
def gen_batch_norm(draw, rng, running=False):
    """x [N, C, ...] (rank 2 to 4, N >= 2) with values at least 0.03 apart (a batch variance
    clear of 0), gamma, beta, running stats (var > 0); eps 1e-5 or 0.1."""
    n = draw(st.integers(2, 3))
    rest = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    shape, c = (n,) + rest, rest[0]
    pool = np.arange(-50, 50) * 0.04 + rng.uniform(-0.005, 0.005, 100)
    x = rng.choice(pool, size=int(np.prod(shape)), replace=False).reshape(shape)
    stats = [uniform(rng, (c,)), uniform(rng, (c,)), uniform(rng, (c,)), rng.uniform(0.5, 2, c)]
    return [x, *stats], {"eps": draw(st.sampled_from([1e-5, 0.1]))}


def _batch_norm_ref(running):
    """Channel by channel: gamma (x - mean) / sqrt(var + eps) + beta, with the batch's mean and
    biased variance over every axis but 1, or the running ones."""
    def ref(x, gamma, beta, mean, var, eps):
        out = np.empty_like(x)
        for c in range(x.shape[1]):
            xc = x[:, c]
            m, v = (mean[c], var[c]) if running else (xc.mean(), xc.var())
            out[:, c] = gamma[c] * (xc - m) / np.sqrt(v + eps) + beta[c]
        return out
    return ref


def gen_dropout(draw, rng):
    """x of any shape, a generator key (seed, step), p from 0 (identity) to 1 (all dropped)."""
    key = np.array([rng.integers(0, 2**31), rng.integers(0, 2**20)], dtype=np.int64)
    return [uniform(rng, draw(SHAPE)), key], {"p": draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))}


def _dropout_ref(x, key, p):
    """x / (1 - p) where Philox (key (seed, stream of the node 'out'), counter (0, 0, 0, step))
    draws u >= p: numpy's generator, seeded directly."""
    bits = np.random.Philox(key=[int(key[0]), stream("out")], counter=[0, 0, 0, int(key[1])])
    u = np.random.Generator(bits).random(np.shape(x))
    return np.where(u >= p, x / (1 - p), 0.0) if p < 1 else np.zeros_like(x)


CASES.update({
    "batch_norm": Case(gen_batch_norm, _batch_norm_ref(running=False)),
    "batch_norm_eval": Case(gen_batch_norm, _batch_norm_ref(running=True)),
    "dropout": Case(gen_dropout, _dropout_ref),
})

# Forward ops with no gradient at all, each with the reason. (Integer inputs such as
# class labels are not here: they are a per-input matter, `None` in the op's VJP rule.)
NON_DIFFERENTIABLE: dict[str, str] = {}


class Recorder:
    """Stands in for autodiff's emitter, to call one VJP rule on its own."""

    def __init__(self, graph):
        self.graph = graph

    def shape(self, name):
        return self.graph[name].shape

    def __call__(self, op, *inputs, **attrs):
        return f"{op}({', '.join(inputs)})"


def op_graph(op: str, arrays: list, attrs: dict, dtype: str = "float64"):
    """x0, x1, ... -> out = op(x...) -> loss = sum(out * R), in float64 (or `dtype`, the
    float arrays given in it)."""
    b = GraphBuilder(dtype)
    names = []
    for i, arr in enumerate(arrays):
        name = f"x{i}"
        b.nodes[name] = Node(name, "input", (), {"shape": arr.shape}, arr.shape, arr.dtype.name)
        names.append(name)
    b.add("out", op, names, attrs_with_defaults(OPS[op], attrs))
    shape = b.nodes["out"].shape
    b.nodes["R"] = Node("R", "input", (), {"shape": shape}, shape, dtype)
    b.add("weighted", "mul", ("out", "R"))
    b.add("loss", "sum", ("weighted",), {"axis": None, "keepdims": False})
    return toposort(b.graph("loss", ("out",))), names


def test_table_covers_the_forward_ops():
    forward = set(ops_in("forward"))
    missing = forward - set(CASES) - set(NON_DIFFERENTIABLE)
    assert not missing, f"forward ops without a gradient-check case or a reason: {missing}"
    assert set(CASES) | set(NON_DIFFERENTIABLE) == forward
    assert not set(CASES) & set(NON_DIFFERENTIABLE)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_the_backend_covers_every_op(backend):
    # layers (dense) are expanded into other ops by the spec loader and never run
    computed = {name for name, op in OPS.items() if op.group not in ("leaf", "layer")}
    table = set(BACKENDS[backend].KERNELS)
    assert not computed - table, f"ops without a {backend} kernel: {computed - table}"
    assert not table - computed, f"{backend} kernels of unknown ops: {table - computed}"


def test_every_differentiable_op_has_a_vjp_rule():
    assert all(OPS[op].vjp is not None for op in CASES), "differentiable ops without a rule"
    assert all(OPS[op].vjp is None for op in NON_DIFFERENTIABLE)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("op", sorted(CASES))
@settings(max_examples=25, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_op_gradient(op, backend, data, seed):
    with using(backend):
        check_op_gradient(op, data, seed)


def check_op_gradient(op, data, seed):
    rng = np.random.default_rng(seed)
    arrays, attrs = CASES[op].gen(data.draw, rng)
    graph, names = op_graph(op, arrays, attrs)
    R = rng.normal(size=graph["out"].shape)
    values = {**dict(zip(names, arrays)), "R": R}
    wrt = [n for n, a in zip(names, arrays) if a.dtype.kind == "f"]
    rule = OPS[op].vjp(Recorder(graph), graph["out"], "g")
    assert isinstance(rule, tuple) and len(rule) == len(graph["out"].inputs), \
        "one gradient per input"
    result = check_grads(graph, values, wrt, eps=1e-6, tol=TOL)
    expected = np.sum(CASES[op].ref(*arrays, **attrs) * R)
    assert result.loss == pytest.approx(expected, rel=1e-12, abs=1e-12), "forward kernel"
    report = "\n".join(f"{w}: analytic {result.analytic[w]} numeric {result.numeric[w]}"
                       for w in wrt)
    assert result.ok, f"{op}{[a.shape for a in arrays]} {attrs}\n{report}"


# --- the checker itself: its formula, a wrong rule caught, the CLI ---------------------

def test_rel_error_formula():
    # |a - n| / max(1e-8, |a| + |n|)
    assert rel_error(1.0, 3.0) == pytest.approx(0.5)
    assert rel_error(0.0, 0.0) == 0.0
    assert rel_error(0.0, 1e-9) == pytest.approx(0.1)


def tanh_graph():
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, (3, 2))
    graph, names = op_graph("tanh", [x], {})
    return graph, {"x0": x, "R": rng.normal(size=(3, 2))}


def with_vjp(op: str, rule):
    """The record of `op` with its gradient rule replaced (a deliberately wrong one)."""
    return dataclasses.replace(OPS[op], vjp=rule)


def test_a_wrong_rule_fails(monkeypatch):
    graph, values = tanh_graph()
    assert check_grads(graph, values, ["x0"]).ok
    monkeypatch.setitem(OPS, "tanh", with_vjp("tanh", lambda e, n, g: (e("sigmoid_grad", g,
                                                                           n.name),)))
    result = check_grads(graph, values, ["x0"])
    assert not result.ok and result.leaves[0].max_rel > 0.01


@pytest.mark.parametrize("op", sorted(op for op in CASES if OPS[op].piece))
@settings(max_examples=10, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_an_ops_piece_stays_put_off_its_kinks(op, data, seed):
    # the record's claim that gradcheck relies on: its piece values are constant on each
    # piece, so a step of 1e-9 (the table's draws stay well clear of the kinks) changes
    # none of them (hinge's own gradient, -y 1[margin > 0], would: it moves with y)
    rng = np.random.default_rng(seed)
    arrays, attrs = CASES[op].gen(data.draw, rng)
    graph, names = op_graph(op, arrays, attrs)
    probe = Probe(graph, {**dict(zip(names, arrays)), "R": rng.normal(size=graph["out"].shape)})
    assert probe.pieces()[1], f"{op}: no piece values"
    for name, a in zip(names, arrays):
        for idx in map(tuple, np.argwhere(np.ones(a.shape, bool))[:4] if a.dtype.kind == "f"
                       else ()):
            assert probe.on_x_pieces(name, idx, 1e-9)[1], f"{op}: {name}{list(idx)} moved"


# Specs too large to check every element (about two forward passes per element): checked
# at this many seeded elements per leaf on a batch of this many rows (`gradcheck --sample
# N --batch-size B`); every op they use has its own row in CASES.
SAMPLED = {"sort_transformer": (4, 4), "digits_cnn": (16, 8),
           "sort_transformer_layers": (4, 4)}
# Specs whose data has exact ties inside max-pooling windows (the digits' flat background
# makes equal conv outputs side by side): the first maximum takes the gradient (as in
# PyTorch), which central differences cannot confirm at a tie. Their inputs get a small
# seeded jitter, which leaves no ties; the pooling ties rule has its own test (test_conv).
TIED = {"digits_cnn"}
# On the jittered digits batch (seed 0), moving the first conv layer's bias b[30] by eps
# moves one relu input of row 0 (8.8e-8 above 0) across 0: the step crosses a kink, and is
# taken again at 1e-8 (test_a_probe_across_a_relu_kink_...).


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_specs_pass_in_float64(path):
    model = load_model(path)
    sample, rows = SAMPLED.get(path.stem, (None, None))
    feeds = input_feeds(model, None, rows)
    if path.stem in TIED:
        rng = np.random.default_rng(0)
        feeds = {k: v + 0.01 * rng.standard_normal(v.shape) if v.dtype.kind == "f" else v
                 for k, v in feeds.items()}
    result = check_model(model, feeds, sample=sample)
    assert result.ok, "\n".join(map(str, result.leaves))
    assert all(g.dtype == np.float64 for g in result.analytic.values())
    # float32 central differences would be off by ~1e-2 at eps 1e-6
    assert max(c.max_abs for c in result.leaves) < 1e-7


def test_cli_json_as_a_user_types_it():
    proc = subprocess.run([sys.executable, "-m", "graphc", "gradcheck", str(SPIRAL), "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["eps"] == 1e-6 and out["tol"] == 1e-5
    shapes = {c["leaf"]: c["shape"] for c in out["leaves"]}
    assert shapes == {"x": [64, 2], "W1": [2, 100], "b1": [100], "W2": [100, 3], "b2": [3]}
    assert all(set(c) == {"leaf", "shape", "max_abs_error", "max_rel_error", "ok", "kinks",
                          "smaller_step"} for c in out["leaves"])
    assert all(c["kinks"] == 0 and c["smaller_step"] == 0 for c in out["leaves"])


# --- kinks: the loss is not differentiable there, so they are reported, not failed ----------

def kink_batch(tmp_path):
    """The spiral's point (0, 0) with zero biases: every hidden unit of row 0 sits at relu's
    kink, so moving x[0] or b1 by eps switches units on or off."""
    np.savez(tmp_path / "k.npz", x=np.array([[0.0, 0.0], [0.5, -1.0]]), y=np.array([0, 1]))
    return tmp_path / "k.npz"


def test_relu_at_zero_is_a_kink_not_a_failure(tmp_path):
    # before: FAIL for x and b1 with rel error 1.0, exit 1
    proc = subprocess.run([sys.executable, "-m", "graphc", "gradcheck", str(SPIRAL), "--inputs",
                           str(kink_batch(tmp_path))], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:6]}
    assert rows["x"].endswith("ok (2 at kinks)") and rows["b1"].endswith("ok (100 at kinks)")
    assert rows["W1"].endswith("ok") and rows["W2"].endswith("ok")
    assert "kinks: 102 elements sit at a point where the loss is not differentiable" in proc.stdout
    assert "first: x[0, 0]: slope" in proc.stdout and "graphc's gradient 0" in proc.stdout


@pytest.mark.parametrize("op, x, kinks", [
    # relu at 0: graphc says 0, the central difference (eps - 0) / 2 eps = 0.5: a kink
    ("relu", [0.0, 1.0, -2.0], [(0,)]),
    # hinge(x, 1) at the margin x = 1: graphc says 0, the central difference -0.5 / 2
    ("hinge", [1.0, 0.5], [(0,)]),
    # abs at 0 and a tie in maximum(x, 1): graphc's 0 and 0.5 are what the central
    # difference gives, so they pass as they are, no kink reported
    ("abs", [0.0, 1.0], []),
    ("maximum", [1.0, 2.0], []),
])
def test_kinks_are_reported_only_where_the_check_would_fail(op, x, kinks):
    b = GraphBuilder("float64")
    b.nodes["x"] = Node("x", "input", (), {"shape": (len(x),)}, (len(x),), "float64")
    ins = ["x"]
    if OPS[op].arity == 2:
        b.nodes["one"] = Node("one", "const", (), {"shape": (), "value": 1.0}, (), "float64")
        ins.append("one")
    b.add("y", op, ins, attrs_with_defaults(OPS[op], {}))
    b.add("loss", "sum", ["y"], {"axis": None, "keepdims": False})
    result = check_grads(toposort(b.graph("loss")), {"x": np.array(x)}, ["x"])
    assert result.ok and [k.index for k in result.leaves[0].kinks] == kinks


def test_a_nan_central_difference_is_reported_not_passed_as_unsampled():
    # log at x = 1e-7: x - eps < 0, so f(x - eps) is NaN and the central difference too.
    # It was mistaken for an element --sample left out: "ok" with no kink and no word.
    b = GraphBuilder("float64")
    b.nodes["x"] = Node("x", "input", (), {"shape": (2,)}, (2,), "float64")
    b.add("y", "log", ["x"], attrs_with_defaults(OPS["log"], {}))
    b.add("loss", "sum", ["y"], {"axis": None, "keepdims": False})
    result = check_grads(toposort(b.graph("loss")), {"x": np.array([1e-7, 2.0])}, ["x"])
    (row,) = result.leaves
    assert [k.index for k in row.kinks] == [(0,)] and np.isnan(row.kinks[0].left)


def test_a_wrong_rule_still_fails_beside_kinks(tmp_path, monkeypatch):
    # relu's gradient replaced by the identity: wrong wherever a unit is off. Every b1
    # element sits at a kink here (row 0's units are all at 0), so b1 cannot be checked on
    # this batch and says so; x and W1 have smooth elements, and fail there. (The kinks come
    # from relu's `piece`, not from its rule, so a wrong rule moves none.)
    monkeypatch.setitem(OPS, "relu", with_vjp("relu", lambda e, n, g: (g,)))
    result = CliRunner().invoke(main, ["gradcheck", str(SPIRAL), "--inputs",
                                       str(kink_batch(tmp_path))])
    assert result.exit_code == 1 and "gradient check failed for x, W1 (tol" in result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:6]}
    assert rows["x"].endswith("FAIL (2 at kinks)") and rows["W1"].endswith("FAIL")
    assert rows["b1"].endswith("ok (100 at kinks)")


def one_op_graph(op: str, n: int, **attrs):
    """loss = sum(w * op(x)), x of n elements, w = 1, 2, ..., n: each element's slope
    differs, so a wrong gradient cannot pass by symmetry."""
    b = GraphBuilder("float64")
    b.nodes["x"] = Node("x", "input", (), {"shape": (1, 1, n)}, (1, 1, n), "float64")
    y = b.add("y", op, ["x"], attrs_with_defaults(OPS[op], attrs))
    b.nodes["w"] = Node("w", "input", (), {"shape": b.nodes[y].shape}, b.nodes[y].shape,
                        "float64")
    b.add("wy", "mul", ["w", y], {})
    b.add("loss", "sum", ["wy"], {"axis": None, "keepdims": False})
    return toposort(b.graph("loss")), lambda x: {
        "x": np.array(x, dtype=np.float64).reshape(1, 1, n),
        "w": np.arange(1.0, 1.0 + int(np.prod(b.nodes[y].shape))).reshape(b.nodes[y].shape)}


# before: FAIL. The kink is 0.3 eps from x: the eps probe crosses it, and the old probe's
# second step (eps / 10) did not, so its one-sided gap "shrank" and it was taken for
# curvature; now the probe sees relu's piece change and takes the difference at 1e-7.
@pytest.mark.parametrize("op, x, crossed, attrs", [
    ("relu", [3e-7, 1.0, -2.0], [(0, 0, 0)], {}),
    # x[0] is 3e-7 below x[1]: x[0] + eps takes over the window's max, x[1] - eps gives it up
    ("max_pool1d", [1.0, 1.0 + 3e-7, 0.5, 2.0], [(0, 0, 0), (0, 0, 1)], {"kernel": 2}),
])
def test_a_probe_across_a_kink_is_taken_again_at_a_smaller_step(op, x, crossed, attrs):
    graph, values = one_op_graph(op, len(x), **attrs)
    result = check_grads(graph, values(x), ["x"])
    (row,) = result.leaves
    assert result.ok and not row.kinks
    assert row.smaller_step == tuple((index, 1e-7) for index in crossed)
    for index in crossed:
        assert result.numeric["x"][index] == pytest.approx(result.analytic["x"][index],
                                                           abs=1e-6)


@pytest.mark.parametrize("op, x, crossed, attrs", [
    ("relu", [3e-7, 1.0, -2.0], [(0, 0, 0)], {}),
    ("max_pool1d", [1.0, 1.0 + 3e-7, 0.5, 2.0], [(0, 0, 0), (0, 0, 1)], {"kernel": 2}),
])
def test_a_wrong_rule_beside_a_crossed_kink_still_fails(op, x, crossed, attrs, monkeypatch):
    # the rule's result halved: the crossed kink is still found (from the op's piece) and the
    # element checked again at a smaller step, where the wrong gradient fails: not masked
    rule = OPS[op].vjp
    monkeypatch.setitem(OPS, op, with_vjp(op, lambda e, n, g: (
        e("mul", rule(e, n, g)[0], e("const", value=0.5)),)))
    graph, values = one_op_graph(op, len(x), **attrs)
    (row,) = check_grads(graph, values(x), ["x"]).leaves
    assert not row.ok and not row.kinks and row.max_rel > 0.3
    assert [index for index, h in row.smaller_step] == crossed


def test_the_digits_cnn_conv_bias_crosses_a_relu_kink():
    # issue 12's open xfail: the first conv's b[30] moves a relu input of row 0 that is
    # 8.8e-8 above 0, so x - eps crosses the kink at every eps from 1e-7 to 1e-5; at 1e-8
    # no node changes piece and the central difference agrees with graphc's gradient
    model = load_model(REPO / "specs" / "digits_cnn.yaml")
    rng = np.random.default_rng(0)
    feeds = {k: v + 0.01 * rng.standard_normal(v.shape) if v.dtype.kind == "f" else v
             for k, v in input_feeds(model, None, 8).items()}
    for eps in (1e-7, 1e-6):
        result = check_model(model, feeds, eps=eps, sample=16)
        rows = {c.leaf: c for c in result.leaves}
        assert result.ok and rows["features/conv2d.b"].smaller_step == (((30,), 1e-8),)


def test_cli_exits_1_on_a_wrong_rule(monkeypatch):
    monkeypatch.setitem(OPS, "relu", with_vjp("relu", lambda e, n, g: (g,)))
    result = CliRunner().invoke(main, ["gradcheck", str(SPIRAL)])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "gradient check failed for x, W1, b1" in result.output


def test_cli_params_and_inputs(tmp_path):
    # all weights 0: every score is 0, so the loss is log(3) (3 classes) plus reg 0
    zeros = {"W1": np.zeros((2, 100)), "b1": np.zeros(100), "W2": np.zeros((100, 3)),
             "b2": np.zeros(3)}
    np.savez(tmp_path / "ckpt.npz", **zeros)
    np.savez(tmp_path / "batch.npz", x=np.ones((5, 2)), y=np.array([0, 1, 2, 0, 1]))
    result = CliRunner().invoke(main, ["gradcheck", str(SPIRAL), "--json", "--params",
                                       str(tmp_path / "ckpt.npz"), "--inputs",
                                       str(tmp_path / "batch.npz")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["loss"] == pytest.approx(np.log(3.0), rel=1e-12)
    assert {c["leaf"]: c["shape"] for c in out["leaves"]}["x"] == [5, 2]


@pytest.mark.parametrize("flag", [["--eps", "0"], ["--tol", "-1"]])
def test_cli_rejects_bad_flags(flag):
    result = CliRunner().invoke(main, ["gradcheck", str(SPIRAL), *flag])
    assert result.exit_code == 2 and "error:" in result.output
