"""NumPy kernels of batch_norm and dropout (graphc/ops/modal.py), allocation-free.

batch_norm views its input as [N, C * L] (L the product of the axes after the channels)
and sums over N and L, and spreads a [C] vector over [N, C * L], with np.dot against ones
vectors into step-local scratch (`Channels`): no broadcasting ufunc, which would allocate.
Dropout's mask comes from numpy's Philox, a counter-based generator: key (seed, stream
of the node), counter (0, 0, 0, step). Seeking it is setting its state, so the forward
and the gradient draw the same mask from the same (seed, step, node), and nothing
carries from one call to the next.
"""
from __future__ import annotations

import numpy as np

from .workspace import constant, scratch


class Channels:
    """x [N, C, ...] seen as [N, C * L] (L the product of the axes after the channels), with
    per-channel sums and broadcasts written as np.dot against ones vectors: a broadcasting
    ufunc allocates its iterator's buffers on every call, a dot with `out=` nothing."""

    def __init__(self, x: np.ndarray):
        n, c = x.shape[0], x.shape[1]
        length = x.size // (n * c)
        self.n, self.c, self.length, self.m, dtype = n, c, length, n * length, x.dtype
        self.ones_l, self.ones_n = constant(1, (length,), dtype), constant(1, (n,), dtype)
        self.ones_row, self.ones_col = constant(1, (1, length), dtype), \
            constant(1, (n, 1), dtype)
        self.rows, self.row = scratch((n * c,), dtype), scratch((c, length), dtype)
        self.full = scratch((n, c * length), dtype)     # a [C] vector spread over x's shape

    def flat(self, a: np.ndarray) -> np.ndarray:
        """`a` (x's shape) as the view [N, C * L]."""
        return a.reshape(self.n, self.c * self.length)

    def sum(self, out: np.ndarray, a: np.ndarray):
        """`run()`: out[c] = sum of `a` (x's shape) over every axis but 1."""
        a2, rows2 = a.reshape(self.n * self.c, self.length), self.rows.reshape(self.n, self.c)

        def run():
            np.dot(a2, self.ones_l, out=self.rows)
            np.dot(self.ones_n, rows2, out=out)
        return run

    def spread(self, v: np.ndarray):
        """`run() -> full`: the [C] vector `v` broadcast to [N, C * L], in scratch."""
        column, flat_row = v.reshape(self.c, 1), self.row.reshape(1, self.c * self.length)

        def run():
            np.dot(column, self.ones_row, out=self.row)
            np.dot(self.ones_col, flat_row, out=self.full)
            return self.full
        return run


def _inv_std(var: np.ndarray, eps: float) -> tuple:
    """(t, run): `run()` writes t = 1 / sqrt(var + eps) (scratch) and returns it."""
    t = scratch(var.shape, var.dtype)
    e, one = constant(eps, (), var.dtype), constant(1, (), var.dtype)

    def run():
        np.add(var, e, out=t)
        np.sqrt(t, out=t)
        np.divide(one, t, out=t)
        return t
    return t, run


def b_batch_norm_stats(out, x, gamma, beta, running_mean, running_var):
    """out[0] = mean, out[1] = biased variance of each channel over every other axis."""
    ch = Channels(x)
    if ch.m < 2:
        def refuse():
            raise ValueError(f"batch_norm in train mode needs more than one value per channel "
                             f"to compute batch statistics, got input {list(x.shape)}")
        return refuse
    mean, var = out[0], out[1]
    xf, d, inv_m = ch.flat(x), scratch((ch.n, ch.c * ch.length), x.dtype), \
        constant(1 / ch.m, (), x.dtype)
    sum_x, sum_d, spread_mean = ch.sum(mean, x), ch.sum(var, d), ch.spread(mean)

    def run():
        sum_x()
        np.multiply(mean, inv_m, out=mean)
        np.subtract(xf, spread_mean(), out=d)
        np.multiply(d, d, out=d)
        sum_d()
        np.multiply(var, inv_m, out=var)
    return run


def _normalize(out, x, gamma, beta, mean, var, eps):
    """out = (x - mean) * gamma / sqrt(var + eps) + beta, per channel."""
    ch = Channels(x)
    xf, yf = ch.flat(x), ch.flat(out)
    (_, inv_std), scale = _inv_std(var, eps), scratch(gamma.shape, x.dtype)
    spreads = [ch.spread(v) for v in (mean, scale, beta)]

    def run():
        np.multiply(gamma, inv_std(), out=scale)
        np.subtract(xf, spreads[0](), out=yf)
        np.multiply(yf, spreads[1](), out=yf)
        np.add(yf, spreads[2](), out=yf)
    return run


def b_batch_norm(out, x, gamma, beta, running_mean, running_var, stats, momentum, eps):
    return _normalize(out, x, gamma, beta, stats[0], stats[1], eps)


def b_batch_norm_eval(out, x, gamma, beta, running_mean, running_var, momentum, eps):
    return _normalize(out, x, gamma, beta, running_mean, running_var, eps)


def _bn_grad(out, g, x, gamma, mean, var, wrt, eps, batch: bool):
    """d / d wrt of batch_norm with (mean, var): the batch's (`batch`, whose mean and var
    depend on x) or the running ones. x_hat = (x - mean) / sigma, sigma = sqrt(var + eps);
    d beta = sum g, d gamma = sum g x_hat, d x = gamma / sigma * g (running), or
    gamma / (sigma m) * (m g - d beta - x_hat d gamma) (batch); d running_mean =
    -sum(g) gamma / sigma, d running_var = -sum(g x_hat) gamma / (2 sigma^2)."""
    ch = Channels(x)
    gf, xf = ch.flat(g), ch.flat(x)
    (std_inv, inv_std), vec = _inv_std(var, eps), (lambda: scratch(mean.shape, x.dtype))
    xh, dbeta, dgamma, k = scratch(xf.shape, x.dtype), vec(), vec(), vec()
    m_c, half = constant(ch.m, (), x.dtype), constant(0.5, (), x.dtype)
    spread_mean, spread_std, spread_k = ch.spread(mean), ch.spread(std_inv), ch.spread(k)
    spread_dgamma, spread_dbeta = ch.spread(dgamma), ch.spread(dbeta)
    beta_sum, gamma_sum = ch.sum(dbeta, g), ch.sum(dgamma, xh)
    out_sum_g, out_sum_xh = ch.sum(out, g), ch.sum(out, xh)
    of = ch.flat(out) if out.shape == x.shape else None

    def x_hat():
        inv_std()
        np.subtract(xf, spread_mean(), out=xh)
        np.multiply(xh, spread_std(), out=xh)

    def d_gamma(sum_into):
        x_hat()
        np.multiply(xh, gf, out=xh)
        sum_into()

    def d_x():
        np.multiply(gamma, inv_std(), out=k)
        if not batch:
            np.multiply(gf, spread_k(), out=of)
            return
        beta_sum()
        d_gamma(gamma_sum)
        x_hat()
        np.multiply(xh, spread_dgamma(), out=xh)
        np.multiply(gf, m_c, out=of)
        np.subtract(of, spread_dbeta(), out=of)
        np.subtract(of, xh, out=of)
        np.divide(k, m_c, out=k)
        np.multiply(of, spread_k(), out=of)

    def d_running(of_var: bool):
        if of_var:
            d_gamma(out_sum_xh)
        else:
            out_sum_g()
        np.multiply(gamma, inv_std(), out=k)
        if of_var:
            np.multiply(k, inv_std(), out=k)
            np.multiply(k, half, out=k)
        np.multiply(out, k, out=out)
        np.negative(out, out=out)

    return {"x": d_x, "gamma": lambda: d_gamma(out_sum_xh), "beta": out_sum_g,
            "running_mean": lambda: d_running(False),
            "running_var": lambda: d_running(True)}[wrt]


def b_batch_norm_grad(out, g, x, gamma, stats, wrt, eps):
    return _bn_grad(out, g, x, gamma, stats[0], stats[1], wrt, eps, batch=True)


def b_batch_norm_eval_grad(out, g, x, gamma, running_mean, running_var, wrt, eps):
    return _bn_grad(out, g, x, gamma, running_mean, running_var, wrt, eps, batch=False)


def b_batch_norm_update(out, x, gamma, beta, running_mean, running_var, stats, momentum):
    """running = (1 - momentum) running + momentum batch; the variance unbiased, m / (m - 1).
    `out` is running_mean itself; running_var is written in place too."""
    m = x.size // x.shape[1]
    keep = constant(1 - momentum, (), out.dtype)
    take_mean = constant(momentum, (), out.dtype)
    take_var = constant(momentum * m / max(m - 1, 1), (), out.dtype)
    t = scratch(out.shape, out.dtype)

    def run():
        for running, batch, take in ((running_mean, stats[0], take_mean),
                                     (running_var, stats[1], take_var)):
            np.multiply(batch, take, out=t)
            np.multiply(running, keep, out=running)
            np.add(running, t, out=running)
    return run


def _masked(out, a, key, p, stream):
    """out = a * mask / (1 - p), mask[i] = (u[i] >= p), u uniform [0, 1) in float64 from
    Philox with key (key[0], stream), counter (0, 0, 0, key[1]): the same mask for a value
    and its gradient, in float32 and float64 alike. p >= 1 drops everything."""
    bits = np.random.Philox(key=[0, stream])
    draw, state = np.random.Generator(bits), bits.state
    u, mask = scratch(a.shape, np.float64), scratch(a.shape, a.dtype)
    kept = scratch(a.shape, np.bool_)
    p_c = constant(p, (), np.float64)
    scale = constant(1 / (1 - p) if p < 1 else 0.0, (), a.dtype)

    def run():
        state["state"]["key"][0] = key[0]
        state["state"]["counter"][3] = key[1]
        state["state"]["counter"][:3] = 0
        state["buffer_pos"], state["has_uint32"] = 4, 0
        bits.state = state
        draw.random(out=u)
        np.greater_equal(u, p_c, out=kept)     # a cast in a ufunc would allocate
        np.copyto(mask, kept)
        np.multiply(mask, scale, out=mask)
        np.multiply(a, mask, out=out)
    return run


def b_dropout(out, x, key, p, stream=0):
    return _masked(out, x, key, p, stream)


def b_dropout_grad(out, g, key, p, stream=0):
    return _masked(out, g, key, p, stream)


BIND = {
    "batch_norm_stats": b_batch_norm_stats,
    "batch_norm": b_batch_norm,
    "batch_norm_grad": b_batch_norm_grad,
    "batch_norm_update": b_batch_norm_update,
    "batch_norm_eval": b_batch_norm_eval,
    "batch_norm_eval_grad": b_batch_norm_eval_grad,
    "dropout": b_dropout,
    "dropout_grad": b_dropout_grad,
}
