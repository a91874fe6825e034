"""NumPy kernels of the sequence ops: embedding, attention, layer_norm, and slice's gradient.

Bind functions (bind.py): scratch for row statistics comes from the workspace, the
causal mask is built once when the plan is bound.
"""
from __future__ import annotations

import math

import numpy as np

from .bind import plain_table
from .workspace import scratch


def k_embedding(out, ids, table):
    np.take(table, ids, axis=0, out=out)


def k_embedding_grad(out, g, ids, shape=None):
    """Zeros, then each row of g added at its id: repeated ids accumulate (np.add.at)."""
    out.fill(0)
    np.add.at(out, ids.reshape(-1), g.reshape(-1, out.shape[-1]))


def b_attention_probs(out, q, k, v, causal=False):
    """softmax(q kᵀ / sqrt(d) + mask) into out [..., T, S], stable (row max subtracted)."""
    kt = np.swapaxes(k, -1, -2)
    scale = 1.0 / math.sqrt(q.shape[-1])
    stat = scratch(out.shape[:-1] + (1,), out.dtype)
    mask = np.triu(np.ones(out.shape[-2:], dtype=bool), k=1) if causal else None

    def run():
        np.matmul(q, kt, out=out)
        np.multiply(out, scale, out=out)
        if mask is not None:
            np.copyto(out, -np.inf, where=mask)
        np.amax(out, axis=-1, keepdims=True, out=stat)
        np.subtract(out, stat, out=out)
        np.exp(out, out=out)
        np.sum(out, axis=-1, keepdims=True, out=stat)
        np.divide(out, stat, out=out)
    return run


def k_attention(out, q, k, v, probs, causal=False):
    np.matmul(probs, v, out=out)


def _normalized(x, eps):
    """(x̂, 1/σ) over the last axis, in fresh arrays: x̂ = (x - mean) / σ, σ = sqrt(var + eps)."""
    centered = x - x.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    centered *= inv_std
    return centered, inv_std


def k_layer_norm(out, x, gamma, beta, eps=1e-5):
    xhat, _ = _normalized(x, eps)
    np.multiply(xhat, gamma, out=out)
    out += beta


def k_layer_norm_grad(out, g, x, gamma, eps=1e-5, wrt="x"):
    """wrt x: (γg - mean(γg) - x̂ mean(γg x̂)) / σ; wrt gamma: g x̂ (the driver sums it to [D])."""
    xhat, inv_std = _normalized(x, eps)
    if wrt == "gamma":
        np.multiply(g, xhat, out=out)
        return
    dxhat = g * gamma
    proj = (dxhat * xhat).mean(axis=-1, keepdims=True)
    dxhat -= dxhat.mean(axis=-1, keepdims=True)
    xhat *= proj
    dxhat -= xhat
    np.multiply(dxhat, inv_std, out=out)


def k_slice_grad(out, g, axis, start, stop):
    index = [slice(None)] * out.ndim
    index[axis] = slice(start, stop)
    out.fill(0)
    out[tuple(index)] = g


BIND = {"attention_probs": b_attention_probs, **plain_table({
    "embedding": k_embedding, "embedding_grad": k_embedding_grad,
    "scaled_dot_product_attention": k_attention,
    "layer_norm": k_layer_norm, "layer_norm_grad": k_layer_norm_grad,
    "slice_grad": k_slice_grad,
})}
