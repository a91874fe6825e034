"""NumPy kernels of the sequence ops: embedding, attention, layer_norm, and slice's gradient.

Bind functions (bind.py): scratch for row statistics comes from the workspace, the
causal mask is built once when the plan is bound. Forms are chosen by measurement on the
sort transformer's shapes (benchmarks/bench_transformer.py): NumPy reduces along a short
last axis ~10x slower than it maps, so row maxima go column by column and row sums through
a matrix-vector product; its batched matmul runs BLAS only when each matrix of the second
operand has contiguous rows, so a transposed operand is copied to scratch first.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np

from .bind import plain_table, source
from .softmax import row_max
from .workspace import constant, row_offsets, scratch


def k_embedding(out, ids, table):
    np.take(table, ids, axis=0, out=out)


def b_embedding_grad(out, g, ids, shape=None):
    """Zeros, then each row of g added at its id: repeated ids accumulate. A table with no
    more rows than columns gets one GEMM, onehot(ids)ᵀ g (the one-hot matrix is no larger
    than g; the ONNX export writes the same); a taller one sums g's rows sorted by id, one
    segment per id (a few times faster than np.add.at). A NaN or Inf in g would reach a
    whole column of the GEMM's result (0 · NaN is NaN), so a non-finite result is summed
    again by segments: only the rows of ids that occur are then non-finite, as in PyTorch."""
    rows, width = out.shape
    flat, g2 = ids.reshape(-1), g.reshape(-1, width)
    segments = partial(_segment_sums, out, flat, g2)
    if rows > width:
        return segments
    return source("""
        np.equal(row_ids, flat, out=onehot)
        np.matmul(onehot, g2, out=out)
        if not math.isfinite(np.dot(out.reshape(-1), ones)):
            segments()
        """, row_ids=row_offsets(rows, 1)[:, None], flat=flat,
        onehot=scratch((rows, flat.size), out.dtype), g2=g2, out=out,
        ones=constant(1, (rows * width,), out.dtype), segments=segments)


def _segment_sums(out, flat, g2) -> None:
    """out[r] = the sum of the rows of g2 whose id in flat is r, summed in id order."""
    out.fill(0)
    if flat.size:
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=-1))
        out[ordered[starts]] = np.add.reduceat(g2[order], starts, axis=0)


def _row_stats(x) -> tuple:
    """(lines, names) computing the row max of the C-contiguous [..., S] array x, column by
    column, into `mx_col` [..., 1]; `total` [..., 1] is scratch for the row sum, which
    `np.dot(flat, ones_s, out=total_rows)` computes."""
    flat = x.reshape(-1, x.shape[-1])
    mx, total = (scratch(x.shape[:-1] + (1,), x.dtype) for _ in range(2))
    lines, names = row_max(flat, mx.reshape(-1))
    return lines, {**names, "mx_col": mx, "total": total, "flat": flat,
                   "total_rows": total.reshape(-1),
                   "ones_s": constant(1, (x.shape[-1],), x.dtype)}


def b_attention_probs(out, q, k, v, causal=False):
    """softmax(q kᵀ / sqrt(d) + mask) into out [..., T, S], stable (row max subtracted):
    kᵀ copied to contiguous scratch, the mask applied with fmin (NaN where a key is seen,
    which fmin ignores; -inf at a future key, whatever its score: +inf or NaN too, which
    adding -inf would make NaN), each row's max subtracted, exp, divided by the row sum."""
    kt = scratch(k.shape[:-2] + (k.shape[-1], k.shape[-2]), k.dtype)
    maxima, names = _row_stats(out)
    lines = ["np.copyto(kt, k_swapped)", "np.matmul(q, kt, out=out)",
             "np.multiply(out, scale, out=out)"]
    lines += ["np.fmin(out, mask, out=out)"] if causal else []
    lines += [maxima, "np.subtract(out, mx_col, out=out)", "np.exp(out, out=out)",
              "np.dot(flat, ones_s, out=total_rows)", "np.divide(out, total, out=out)"]
    mask = np.where(np.triu(np.ones(out.shape[-2:], dtype=bool), k=1), -np.inf, np.nan)
    return source("\n".join(lines), **names, kt=kt, k_swapped=np.swapaxes(k, -1, -2), q=q,
                  out=out, scale=1.0 / math.sqrt(q.shape[-1]), mask=mask.astype(out.dtype))


def k_attention(out, q, k, v, probs, causal=False):
    np.matmul(probs, v, out=out)


def unpack_layer_norm(stats) -> tuple:
    """Views (x̂ [..., D], 1/σ [..., 1]) of layer_norm's saved stats [..., D + 1], which
    hold every x̂, then every 1/σ (so x̂ is contiguous: strided rows cost NumPy 3-5x)."""
    rows, width = stats.shape[:-1], stats.shape[-1] - 1
    flat = stats.reshape(-1)
    cut = int(np.prod(rows, dtype=np.int64)) * width
    return flat[:cut].reshape(rows + (width,)), flat[cut:].reshape(rows + (1,))


def b_layer_norm_stats(out, x, gamma, beta, eps=1e-5):
    """x̂ = (x - mean) / σ and 1/σ over the last axis, σ = sqrt(var + eps) (biased var),
    packed into out [..., D + 1]; the means are matrix-vector products with 1/D."""
    xhat, inv_std = unpack_layer_norm(out)
    return source("""
        np.matmul(x, by_d, out=mean)
        np.subtract(x, mean, out=xhat)
        np.multiply(xhat, xhat, out=square)
        np.matmul(square, by_d, out=inv_std)
        np.add(inv_std, eps, out=inv_std)
        np.sqrt(inv_std, out=inv_std)
        np.divide(1.0, inv_std, out=inv_std)
        np.multiply(xhat, inv_std, out=xhat)
        """, x=x, by_d=constant(1.0 / x.shape[-1], x.shape[-1:] + (1,), x.dtype),
        mean=scratch(x.shape[:-1] + (1,), x.dtype), xhat=xhat,
        square=scratch(x.shape, x.dtype), inv_std=inv_std, eps=eps)


def b_layer_norm(out, x, gamma, beta, stats, eps=1e-5):
    """x̂ γ + β, x̂ read from the saved stats."""
    return source("""
        np.multiply(xhat, gamma, out=out)
        np.add(out, beta, out=out)
        """, xhat=unpack_layer_norm(stats)[0], gamma=gamma, beta=beta, out=out)


def b_layer_norm_grad(out, g, stats, gamma, wrt="x"):
    """wrt x: (γg - mean(γg) - x̂ mean(γg x̂)) / σ; wrt gamma: g x̂ (the driver sums it to
    [D]); x̂ and 1/σ read from the saved stats."""
    xhat, inv_std = unpack_layer_norm(stats)
    if wrt == "gamma":
        return source("np.multiply(g, xhat, out=out)", g=g, xhat=xhat, out=out)
    return source("""
        np.multiply(g, gamma, out=d)
        np.multiply(d, xhat, out=out)
        np.matmul(out, by_d, out=projection)
        np.matmul(d, by_d, out=mean)
        np.multiply(xhat, projection, out=out)
        np.subtract(d, out, out=out)
        np.subtract(out, mean, out=out)
        np.multiply(out, inv_std, out=out)
        """, g=g, gamma=gamma, d=scratch(g.shape, g.dtype), xhat=xhat, out=out,
        by_d=constant(1.0 / g.shape[-1], g.shape[-1:] + (1,), g.dtype),
        projection=scratch(g.shape[:-1] + (1,), g.dtype),
        mean=scratch(g.shape[:-1] + (1,), g.dtype), inv_std=inv_std)


def k_slice_grad(out, g, axis, start, stop):
    index = [slice(None)] * out.ndim
    index[axis] = slice(start, stop)
    out.fill(0)
    out[tuple(index)] = g


BIND = {"attention_probs": b_attention_probs, "embedding_grad": b_embedding_grad,
        "layer_norm_stats": b_layer_norm_stats, "layer_norm": b_layer_norm,
        "layer_norm_grad": b_layer_norm_grad, **plain_table({
    "embedding": k_embedding,
    "scaled_dot_product_attention": k_attention,
    "slice_grad": k_slice_grad,
})}
