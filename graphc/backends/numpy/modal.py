"""NumPy kernels of batch_norm and dropout (graphc/ops/modal.py), allocation-free.

batch_norm views its input as [N, C, L] (L the product of the axes after the channels)
and sums over N and L with two matmuls against ones vectors, into step-local scratch.
Dropout's mask comes from numpy's Philox, a counter-based generator: key (seed, stream
of the node), counter (0, 0, 0, step). Seeking it is setting its state, so the forward
and the gradient draw the same mask from the same (seed, step, node), and nothing
carries from one call to the next.
"""
from __future__ import annotations

import numpy as np

from .workspace import constant, scratch


def _ncl(a: np.ndarray) -> np.ndarray:
    """[N, C, ...] as the view [N, C, L]."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _channel(v: np.ndarray) -> np.ndarray:
    """A [C] vector as [1, C, 1], broadcasting over [N, C, L]."""
    return v.reshape(1, -1, 1)


def _channel_sum(a3: np.ndarray):
    """`run(out, b3)`: out[c] = sum of b3[:, c, :] for any b3 of a3's shape and dtype."""
    n, c, length = a3.shape
    ones_l, ones_n = constant(1, (length,), a3.dtype), constant(1, (n,), a3.dtype)
    rows = scratch((n, c), a3.dtype)

    def run(out, b3):
        np.matmul(b3, ones_l, out=rows)
        np.matmul(ones_n, rows, out=out)
    return run


def _inv_std(var: np.ndarray, eps: float):
    """`run() -> t`: t = 1 / sqrt(var + eps), in scratch."""
    t = scratch(var.shape, var.dtype)
    e, one = constant(eps, (), var.dtype), constant(1, (), var.dtype)

    def run():
        np.add(var, e, out=t)
        np.sqrt(t, out=t)
        np.divide(one, t, out=t)
        return t
    return run


def b_batch_norm_stats(out, x, gamma, beta, running_mean, running_var):
    """out[0] = mean, out[1] = biased variance of each channel over N and L."""
    x3 = _ncl(x)
    m = x3.shape[0] * x3.shape[2]
    if m < 2:
        def refuse():
            raise ValueError(f"batch_norm in train mode needs more than one value per channel "
                             f"to compute batch statistics, got input {list(x.shape)}")
        return refuse
    total, d = _channel_sum(x3), scratch(x3.shape, x.dtype)
    inv_m = constant(1 / m, (), x.dtype)
    mean, var = out[0], out[1]

    def run():
        total(mean, x3)
        np.multiply(mean, inv_m, out=mean)
        np.subtract(x3, _channel(mean), out=d)
        np.multiply(d, d, out=d)
        total(var, d)
        np.multiply(var, inv_m, out=var)
    return run


def _normalize(out, x, gamma, beta, mean, var, eps):
    """out = (x - mean) * gamma / sqrt(var + eps) + beta, per channel."""
    x3, y3 = _ncl(x), _ncl(out)
    inv_std, scale = _inv_std(var, eps), scratch(gamma.shape, x.dtype)

    def run():
        np.multiply(gamma, inv_std(), out=scale)
        np.subtract(x3, _channel(mean), out=y3)
        np.multiply(y3, _channel(scale), out=y3)
        np.add(y3, _channel(beta), out=y3)
    return run


def b_batch_norm(out, x, gamma, beta, running_mean, running_var, stats, momentum, eps):
    return _normalize(out, x, gamma, beta, stats[0], stats[1], eps)


def b_batch_norm_eval(out, x, gamma, beta, running_mean, running_var, momentum, eps):
    return _normalize(out, x, gamma, beta, running_mean, running_var, eps)


def _bn_grad(out, g, x, gamma, mean, var, wrt, eps, batch: bool):
    """d / d wrt of batch_norm with (mean, var): the batch's (`batch`, whose mean and var
    depend on x) or the running ones. x_hat = (x - mean) / sqrt(var + eps);
    d beta = sum g, d gamma = sum g x_hat, d x = gamma / sigma * g (running), or
    gamma / (sigma m) * (m g - d beta - x_hat d gamma) (batch)."""
    g3, x3 = _ncl(g), _ncl(x)
    m = x3.shape[0] * x3.shape[2]
    total, inv_std = _channel_sum(x3), _inv_std(var, eps)
    xh, dbeta, dgamma = scratch(x3.shape, x.dtype), scratch(mean.shape, x.dtype), \
        scratch(mean.shape, x.dtype)
    k, m_c = scratch(mean.shape, x.dtype), constant(m, (), x.dtype)

    def x_hat():
        np.subtract(x3, _channel(mean), out=xh)
        np.multiply(xh, _channel(inv_std()), out=xh)

    def d_gamma(target):
        x_hat()
        np.multiply(xh, g3, out=xh)
        total(target, xh)

    def d_x():
        np.multiply(gamma, inv_std(), out=k)
        if not batch:
            np.multiply(g3, _channel(k), out=_ncl(out))
            return
        total(dbeta, g3)
        d_gamma(dgamma)
        x_hat()
        np.multiply(xh, _channel(dgamma), out=xh)
        o3 = _ncl(out)
        np.multiply(g3, m_c, out=o3)
        np.subtract(o3, _channel(dbeta), out=o3)
        np.subtract(o3, xh, out=o3)
        np.divide(k, m_c, out=k)
        np.multiply(o3, _channel(k), out=o3)
    def d_running(half_over_sigma: bool):
        """d / d running_mean = -sum(g) gamma / sigma; d / d running_var =
        -sum(g x_hat) gamma / (2 sigma^2)."""
        if half_over_sigma:
            d_gamma(out)
        else:
            total(out, g3)
        np.multiply(gamma, inv_std(), out=k)
        if half_over_sigma:
            np.multiply(k, inv_std(), out=k)
            np.multiply(k, half, out=k)
        np.multiply(out, k, out=out)
        np.negative(out, out=out)

    half = constant(0.5, (), x.dtype)
    return {"x": d_x, "gamma": lambda: d_gamma(out), "beta": lambda: total(out, g3),
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
    p_c = constant(p, (), np.float64)
    scale = constant(1 / (1 - p) if p < 1 else 0.0, (), a.dtype)

    def run():
        state["state"]["key"][0] = key[0]
        state["state"]["counter"][3] = key[1]
        state["state"]["counter"][:3] = 0
        state["buffer_pos"], state["has_uint32"] = 4, 0
        bits.state = state
        draw.random(out=u)
        np.greater_equal(u, p_c, out=mask)
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
