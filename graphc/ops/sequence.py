"""Sequence models: embedding lookup, scaled dot-product attention, layer normalization.

Attention's probabilities are a saved IR value (`attention_probs`, like softmax
cross-entropy's stats): the forward op multiplies them with v, and the gradient rule,
written with existing ops (matmul, softmax_grad), reads them, so the planner places
them and keeps them live until the backward pass. Layer normalization saves its
normalized input and inverse deviation the same way (`layer_norm_stats` [..., D + 1]:
x̂ [..., D] for every row, then 1/σ for every row, packed in this order, row-major, so
x̂ stays contiguous): the forward op scales and shifts x̂, and both gradients read the
stats instead of normalizing x again.
"""
from __future__ import annotations

import math

from .. import shapes as S
from .record import REQUIRED, LabelKind, OpDef, attr_shape, grad_of

_BW = {"group": "backward", "elementwise": False}
IDS = LabelKind("ids (row indices of the table)", "id", "rows",     # embedding's integers
                "the {size} rows of '{table}'")


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


def _keeps_shape(shapes, attrs):
    """Sequence layers over x [..., T, D] whose output is x's shape (graphc/seqlayers.py)."""
    if len(shapes[0]) < 2:
        raise S.ShapeError(f"the layer needs x of rank >= 2 ([..., T, D]), got {S.fmt(shapes[0])}")
    return tuple(shapes[0])


def _gru_cell(shapes, attrs):
    """[..., units]: x [..., in] and h [..., units], their batch dims broadcasting."""
    x, h = shapes
    if not x or not h:
        raise S.ShapeError(f"gru_cell needs x and h of rank >= 1, got {S.fmt(x)}, {S.fmt(h)}")
    return S.broadcast(x[:-1], h[:-1]) + (attrs["units"],)


def normed_width(x: tuple) -> int:
    """D of x [..., D], the axis layer_norm(x)'s layer form normalizes: a fixed size."""
    if not x or not isinstance(x[-1], int):
        raise S.ShapeError(f"layer_norm needs x [..., D] with D a fixed size, got {S.fmt(x)}")
    return x[-1]


def _normed_layer(shapes, attrs):
    normed_width(shapes[0])
    return tuple(shapes[0])


def _layer_norm(shapes, attrs):
    x, gamma, beta = shapes[:3]
    if not x:
        raise S.ShapeError("layer_norm needs an input of rank >= 1, got a scalar")
    for name, s in (("gamma", gamma), ("beta", beta)):
        if tuple(s) != (x[-1],):
            raise S.ShapeError(f"{name} must be [{x[-1]}] (x's last axis), got {S.fmt(s)}")
    return tuple(x)


def _layer_norm_stats(shapes, attrs):
    """[..., D + 1]: x̂ for every row, then 1/σ for every row (row-major, in one value)."""
    x = _layer_norm(shapes, attrs)
    if not S.is_int(x[-1]):
        raise S.ShapeError(f"layer_norm's last axis must have a fixed size, got {S.fmt(x)}")
    return x[:-1] + (x[-1] + 1,)


def _layer_norm_vjp(e, n, g):
    _, gamma, _, stats = n.inputs
    return (e("layer_norm_grad", g, stats, gamma, wrt="x"),
            e("layer_norm_grad", g, stats, gamma, wrt="gamma"), g, None)


# --- export mappings (graphc/ops/record.py): the kernels' formulas as ONNX ops ---------------
def _onnx_embedding_grad(b, n, g, ids):
    """dW = onehot(ids)ᵀ @ g over the flattened ids: repeated ids accumulate."""
    rows, width = n.attrs["shape"]
    flat = b("Reshape", ids, b.const([-1, 1], integer=True))
    onehot = b("Cast", b("Equal", flat, b.const(list(range(rows)), integer=True)), to=b.dtype)
    g2 = b("Reshape", g, b.const([-1, width], integer=True))
    return b("MatMul", b("Transpose", onehot, perm=[1, 0]), g2)


def _onnx_attention_probs(b, n, q, k, v):
    """softmax(q kᵀ / sqrt(d) + mask) over the last axis."""
    rank = len(b.shape(n.inputs[1]))
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scale = b.const(1.0 / math.sqrt(b.shape(n.inputs[0])[-1]))
    scores = b("Mul", b("MatMul", q, b("Transpose", k, perm=perm)), scale)
    if n.attrs["causal"]:
        t, s = n.shape[-2:]
        if not (S.is_int(t) and S.is_int(s)):
            raise S.ShapeError(f"causal attention exports with fixed lengths, got {S.fmt(n.shape)}")
        above = b.const([[float(j > i) for j in range(s)] for i in range(t)])
        scores = b("Where", b("Greater", above, b.const(0.5)), b.const(float("-inf")), scores)
    probs = b("Softmax", scores, axis=-1)
    q_shape, k_shape = b.shape(n.inputs[0]), b.shape(n.inputs[1])
    if S.broadcast(q_shape[:-2], k_shape[:-2]) + (q_shape[-2], k_shape[-2]) != tuple(n.shape):
        return b("Expand", probs, b.dims(n.shape))     # v's batch dims broadcast in too
    return probs


def _onnx_normalized(b, x, eps: float) -> tuple:
    """(x̂, 1/σ) over the last axis: x̂ = (x - mean) / σ, σ = sqrt(var + eps)."""
    centered = b("Sub", x, b.reduce("ReduceMean", x, [-1], True))
    var = b.reduce("ReduceMean", b("Mul", centered, centered), [-1], True)
    inv_std = b("Reciprocal", b("Sqrt", b("Add", var, b.const(eps))))
    return b("Mul", centered, inv_std), inv_std


def _onnx_layer_norm_stats(b, n, x, gamma, beta):
    """x̂, then 1/σ, flattened one after the other, as the NumPy kernel packs them."""
    parts = [b("Reshape", v, b.const([-1], integer=True))
             for v in _onnx_normalized(b, x, n.attrs["eps"])]
    return b("Reshape", b("Concat", *parts, axis=0), b.dims(n.shape))


def _onnx_layer_norm(b, n, x, gamma, beta, stats=None):
    """x̂ γ + β, normalized again from x (the stats are written only where a gradient is)."""
    xhat, _ = _onnx_normalized(b, x, n.attrs["eps"])
    return b("Add", b("Mul", xhat, gamma), beta)


def _onnx_unpack(b, stats, g, shape) -> tuple:
    """(x̂, 1/σ) of the saved stats of shape `shape`: its first size(g) elements, then the
    rest (g has x's shape)."""
    flat = b("Reshape", stats, b.const([-1], integer=True))
    cut = b("Reshape", b("Size", g), b.const([1], integer=True))
    rows = tuple(shape[:-1])
    xhat = b("Slice", flat, b.const([0], integer=True), cut)
    inv_std = b("Slice", flat, cut, b.const([2 ** 62], integer=True))
    return (b("Reshape", xhat, b.dims(rows + (shape[-1] - 1,))),
            b("Reshape", inv_std, b.dims(rows + (1,))))


def _onnx_layer_norm_grad(b, n, g, stats, gamma):
    """wrt x: (γg - mean(γg) - x̂ mean(γg x̂)) / σ; wrt gamma: g x̂."""
    xhat, inv_std = _onnx_unpack(b, stats, g, b.shape(n.inputs[1]))
    if n.attrs["wrt"] == "gamma":
        return b("Mul", g, xhat)
    dxhat = b("Mul", g, gamma)
    proj = b.reduce("ReduceMean", b("Mul", dxhat, xhat), [-1], True)
    centered = b("Sub", dxhat, b.reduce("ReduceMean", dxhat, [-1], True))
    return b("Mul", b("Sub", centered, b("Mul", xhat, proj)), inv_std)


OPS = (
    OpDef("embedding", 2, _embedding, "embedding(ids, W) = W[ids]: row ids of the table W "
          "[rows, width] (integer ids of any shape -> [..., width]; F.embedding)",
          labels=(0,), label_range=(1, 0), labels_are=IDS,
          vjp=lambda e, n, g: (None, e("embedding_grad", g, n.inputs[0],
                                       shape=e.shape(n.inputs[1]))),
          formula=lambda a, o, attrs: (None, f"g ↦ g scatter-added at rows {a[0]}"),
          elementwise=False, onnx=lambda b, n, ids, w: b("Gather", w, ids, axis=0)),
    OpDef("embedding_grad", 2, attr_shape, "embedding_grad(g, ids, shape) = zeros(shape) with "
          "g's rows added at ids (repeated ids accumulate)", attrs={"shape": REQUIRED},
          labels=(1,), labels_are=IDS, onnx=_onnx_embedding_grad, **_BW),
    OpDef("scaled_dot_product_attention", 3, _attention,
          "scaled_dot_product_attention(q, k, v, causal=False) = softmax(q kᵀ / sqrt(d) + "
          "mask) v over [..., T, d]; causal masks key j > query i "
          "(F.scaled_dot_product_attention)", attrs={"causal": False},
          saves="attention_probs", vjp=_attention_vjp,
          formula=lambda a, o, attrs: (f"g ↦ (softmax'·(g {a[2]}ᵀ)) {a[1]} / √d",
                                       f"g ↦ (softmax'·(g {a[2]}ᵀ))ᵀ {a[0]} / √d",
                                       "g ↦ Pᵀ g, P the attention probabilities", None),
          elementwise=False, onnx=lambda b, n, q, k, v, probs: b("MatMul", probs, v)),
    OpDef("attention_probs", 3, _attention_probs, "attention_probs(q, k, v, causal) = "
          "softmax(q kᵀ / sqrt(d) + mask) [..., T, S]: attention's output and gradient read it",
          attrs={"causal": False}, group="saved", elementwise=False,
          onnx=_onnx_attention_probs),
    OpDef("layer_norm", 3, _layer_norm, "layer_norm(x, gamma, beta, eps=1e-5) = (x - mean) / "
          "sqrt(var + eps) * gamma + beta over the last axis (biased var; F.layer_norm)",
          attrs={"eps": 1e-5}, saves="layer_norm_stats", vjp=_layer_norm_vjp,
          formula=lambda a, o, attrs: ("g ↦ (γg - mean(γg) - x̂·mean(γg·x̂)) / σ",
                                       "x̂ = (x - mean) / σ", "1", None),
          elementwise=False, onnx=_onnx_layer_norm, layer_form="layer_norm_layer"),
    OpDef("layer_norm_stats", 3, _layer_norm_stats, "layer_norm_stats(x, gamma, beta, eps) = "
          "x̂ = (x - mean) / σ and 1/σ per row, [..., D + 1]: layer_norm and its gradients "
          "read it", attrs={"eps": 1e-5}, group="saved", elementwise=False,
          onnx=_onnx_layer_norm_stats),
    OpDef("layer_norm_grad", 3, grad_of(0), "layer_norm_grad(g, stats, gamma, wrt) = d "
          "layer_norm / d x applied to g for wrt='x'; g * x̂ (summed by the driver) for "
          "wrt='gamma'; x̂ and 1/σ from the saved stats", attrs={"wrt": "x"},
          onnx=_onnx_layer_norm_grad, **_BW),
    # layers the spec loader expands into the ops above (graphc/layers.py, seqlayers.py)
    OpDef("layer_norm_layer", 1, _normed_layer, "layer_norm_layer(x, eps=1e-5) = "
          "layer_norm(x, <node>.gamma, <node>.beta) over the last axis; also written "
          "layer_norm(x)", group="layer", attrs={"eps": 1e-5}),
    OpDef("multi_head_attention", 1, _keeps_shape, "multi_head_attention(x, heads=H, "
          "causal=False, share=None) = concat_heads(scaled_dot_product_attention(x <node>.Wq, "
          "x <node>.Wk, x <node>.Wv)) <node>.Wo + <node>.bo; self-attention over x [..., T, D]",
          group="layer", attrs={"heads": REQUIRED, "causal": False, "share": None}),
    OpDef("transformer_block", 1, _keeps_shape, "transformer_block(x, heads=H, mlp=4 D, "
          "causal=False, activation=gelu, share=None) = r + mlp(layer_norm(r)), r = x + "
          "multi_head_attention(layer_norm(x)): pre-norm, residual", group="layer",
          attrs={"heads": REQUIRED, "mlp": None, "causal": False, "activation": "gelu",
                 "share": None}),
    OpDef("positional_embedding", 1, _keeps_shape, "positional_embedding(x, init=None, "
          "share=None) = x + <node>.pos, a learned [T, D] table for x [..., T, D]",
          group="layer", attrs={"init": None, "share": None}),
    OpDef("gru_cell", 2, _gru_cell, "gru_cell(x, h, units=N, share=None) = (1 - z) n + z h: "
          "PyTorch's GRUCell, gates r, z, n stacked in <node>.W_ih [in, 3N], <node>.W_hh "
          "[N, 3N], <node>.b_ih, <node>.b_hh [3N]", group="layer",
          attrs={"units": REQUIRED, "share": None}),
)
