"""Sequence models: embedding lookup, scaled dot-product attention, layer normalization.

Attention's probabilities are a saved IR value (`attention_probs`, like softmax
cross-entropy's stats): the forward op multiplies them with v, and the gradient rule,
written with existing ops (matmul, softmax_grad), reads them, so the planner places
them and keeps them live until the backward pass.
"""
from __future__ import annotations

import math

from .. import shapes as S
from .record import REQUIRED, OpDef, attr_shape, grad_of

_BW = {"group": "backward", "elementwise": False}


def _embedding(shapes, attrs):
    ids, table = shapes
    if len(table) != 2:
        raise S.ShapeError(f"the embedding table must be [rows, width], got {S.fmt(table)}")
    return tuple(ids) + (table[1],)


def _attention_probs(shapes, attrs):
    """[..., T, S]: q [..., T, d], k [..., S, d], v [..., S, dv], batch dims broadcasting."""
    q, k, v = shapes[:3]
    if min(len(q), len(k), len(v)) < 2:
        raise S.ShapeError(f"attention needs q, k, v of rank >= 2 ([..., T, d]), got "
                           f"{S.fmt(q)}, {S.fmt(k)}, {S.fmt(v)}")
    if q[-1] != k[-1]:
        raise S.ShapeError(f"q and k must have the same width d: q {S.fmt(q)}, k {S.fmt(k)}")
    if k[-2] != v[-2]:
        raise S.ShapeError(f"k and v must have the same length S: k {S.fmt(k)}, v {S.fmt(v)}")
    if not S.is_int(q[-1]):
        raise S.ShapeError(f"the width d of q must be a fixed size (it sets the scale "
                           f"1/sqrt(d)), got {S.fmt(q)}")
    return S.broadcast(q[:-2], k[:-2], v[:-2]) + (q[-2], k[-2])


def _attention(shapes, attrs):
    probs = _attention_probs(shapes, attrs)
    return probs[:-1] + (shapes[2][-1],)


def _attention_vjp(e, n, g):
    """With P the saved probabilities: dv = Pᵀ g, dP = g vᵀ, dS = softmax_grad(dP, P) / sqrt(d),
    dq = dS k, dk = dSᵀ q."""
    q, k, v, probs = n.inputs
    dv = e("matmul_gb", probs, g, shape=e.shape(v))
    dp = e("matmul_ga", g, v, shape=e.shape(probs))
    scale = e("const", value=1.0 / math.sqrt(e.shape(q)[-1]))
    ds = e("mul", e("softmax_grad", dp, probs, axis=-1), scale)
    return e("matmul", ds, k), e("matmul_gb", ds, q, shape=e.shape(k)), dv, None


def _layer_norm(shapes, attrs):
    x, gamma, beta = shapes
    if not x:
        raise S.ShapeError("layer_norm needs an input of rank >= 1, got a scalar")
    for name, s in (("gamma", gamma), ("beta", beta)):
        if tuple(s) != (x[-1],):
            raise S.ShapeError(f"{name} must be [{x[-1]}] (x's last axis), got {S.fmt(s)}")
    return tuple(x)


def _layer_norm_vjp(e, n, g):
    x, gamma, _ = n.inputs
    eps = n.attrs["eps"]
    return (e("layer_norm_grad", g, x, gamma, eps=eps, wrt="x"),
            e("layer_norm_grad", g, x, gamma, eps=eps, wrt="gamma"), g)


OPS = (
    OpDef("embedding", 2, _embedding, "embedding(ids, W) = W[ids]: row ids of the table W "
          "[rows, width] (integer ids of any shape -> [..., width]; F.embedding)",
          labels=(0,), label_range=(1, 0),
          vjp=lambda e, n, g: (None, e("embedding_grad", g, n.inputs[0],
                                       shape=e.shape(n.inputs[1]))),
          formula=lambda a, o, attrs: (None, f"g ↦ g scatter-added at rows {a[0]}"),
          elementwise=False),
    OpDef("embedding_grad", 2, attr_shape, "embedding_grad(g, ids, shape) = zeros(shape) with "
          "g's rows added at ids (repeated ids accumulate)", attrs={"shape": REQUIRED},
          labels=(1,), **_BW),
    OpDef("scaled_dot_product_attention", 3, _attention,
          "scaled_dot_product_attention(q, k, v, causal=False) = softmax(q kᵀ / sqrt(d) + "
          "mask) v over [..., T, d]; causal masks key j > query i "
          "(F.scaled_dot_product_attention)", attrs={"causal": False},
          saves="attention_probs", vjp=_attention_vjp,
          formula=lambda a, o, attrs: (f"g ↦ (softmax'·(g {a[2]}ᵀ)) {a[1]} / √d",
                                       f"g ↦ (softmax'·(g {a[2]}ᵀ))ᵀ {a[0]} / √d",
                                       "g ↦ Pᵀ g, P the attention probabilities", None),
          elementwise=False),
    OpDef("attention_probs", 3, _attention_probs, "attention_probs(q, k, v, causal) = "
          "softmax(q kᵀ / sqrt(d) + mask) [..., T, S]: attention's output and gradient read it",
          attrs={"causal": False}, group="saved", elementwise=False),
    OpDef("layer_norm", 3, _layer_norm, "layer_norm(x, gamma, beta, eps=1e-5) = (x - mean) / "
          "sqrt(var + eps) * gamma + beta over the last axis (biased var; F.layer_norm)",
          attrs={"eps": 1e-5}, vjp=_layer_norm_vjp,
          formula=lambda a, o, attrs: (f"g ↦ (γg - mean(γg) - x̂·mean(γg·x̂)) / σ",
                                       "x̂ = (x - mean) / σ", "1"),
          elementwise=False),
    OpDef("layer_norm_grad", 3, grad_of(1), "layer_norm_grad(g, x, gamma, eps, wrt) = d "
          "layer_norm / d x applied to g for wrt='x'; g * x̂ (summed by the driver) for "
          "wrt='gamma'", attrs={"eps": 1e-5, "wrt": "x"}, **_BW),
)
