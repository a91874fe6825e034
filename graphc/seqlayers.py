"""Sequence layers: multi-head self-attention, a pre-norm transformer block, a learned
positional embedding and PyTorch's GRU cell, expanded like `dense` (layers.py) into params
`<node>.<param>` and plain ops of the one vocabulary (matmul, reshape, transpose,
scaled_dot_product_attention, layer_norm, slice, ...), so autodiff, the planner, `explain`
and the pictures see ordinary nodes.

`share=NODE` makes a layer read the params of an earlier layer node of the same op
instead of creating its own (weight tying; a block instance with `share:` sets it).
"""
from __future__ import annotations

from functools import partial
from math import sqrt

from . import shapes as S
from .errors import SpecError
from .expr import NodeSpec
from .layers import EXPANSIONS, LayerParam, check_activation
from .ops import OPS, attrs_with_defaults


def _owner(n: NodeSpec) -> str:
    """The node whose params the layer reads: the one it shares, else itself."""
    return n.attrs.get("share") or n.name


def _at(n: NodeSpec, local: str) -> str:
    """The name of the layer's node `local`: `<n>/<local>`."""
    return f"{n.name}/{local}"


def _op(n: NodeSpec, local, op: str, *inputs: str, **attrs) -> NodeSpec:
    """The layer's node `<n>/<local>` (n itself when local is None) computing op(inputs)."""
    name = n.name if local is None else _at(n, local)
    return NodeSpec(name, op, inputs, attrs_with_defaults(OPS[op], attrs), n.mark)


def _fixed_width(n: NodeSpec, x: str, x_shape: tuple, rank: int) -> int:
    """x's last dim, which the layer's params are sized by: a fixed size, rank >= `rank`."""
    if len(x_shape) < rank or not S.is_int(x_shape[-1]):
        raise SpecError(f"{n.op} needs an input of rank >= {rank} whose last dim is a fixed "
                        f"size, but '{x}' has shape {S.fmt(x_shape)}", mark=n.mark,
                        node=n.user_node, hint="the layer sizes its params by that dim")
    return x_shape[-1]


def _attention(n: NodeSpec, x: str, x_shape: tuple, out) -> tuple:
    """(params, nodes) of multi-head self-attention over x [..., T, D], its last node
    `out`: q, k, v = x Wq, x Wk, x Wv split into heads [..., H, T, D/H], attention per
    head, heads merged back to [..., T, D], then @ Wo + bo."""
    width, heads, o = _fixed_width(n, x, x_shape, 2), n.attrs["heads"], _owner(n)
    if width % heads:
        fits = [h for h in range(1, width + 1) if width % h == 0]
        raise SpecError(f"{n.op} splits the width {width} of '{n.inputs[0]}' into {heads} "
                        "heads, which does not divide it", mark=n.mark, node=n.user_node,
                        hint=f"heads must divide {width}: one of {fits}")
    lead, steps = tuple(x_shape[:-2]), x_shape[-2]
    split = [*lead, steps, heads, width // heads]
    axes = [*range(len(lead)), len(lead) + 1, len(lead), len(lead) + 2]   # swaps T and H
    params = [LayerParam(f"{o}.W{p}", (width, width), "glorot_uniform", n.mark)
              for p in "qkvo"] + [LayerParam(f"{o}.bo", (width,), "zeros", n.mark)]
    nodes = []
    for p in "qkv":
        nodes += [_op(n, f"{p}_proj", "matmul", x, f"{o}.W{p}"),
                  _op(n, f"{p}_split", "reshape", _at(n, f"{p}_proj"), shape=split),
                  _op(n, p, "transpose", _at(n, f"{p}_split"), axes=axes)]
    q, k, v = (_at(n, p) for p in "qkv")
    nodes += [_op(n, "heads", "scaled_dot_product_attention", q, k, v,
                  causal=n.attrs["causal"]),
              _op(n, "merge_t", "transpose", _at(n, "heads"), axes=axes),
              _op(n, "merge", "reshape", _at(n, "merge_t"), shape=[*lead, steps, width]),
              _op(n, "out_proj", "matmul", _at(n, "merge"), f"{o}.Wo"),
              _op(n, out, "add", _at(n, "out_proj"), f"{o}.bo")]
    return params, nodes


def multi_head_attention(n: NodeSpec, x_shape: tuple) -> tuple:
    """(params, nodes) of `multi_head_attention(x, heads=H, causal=False)` at node n:
    Wq, Wk, Wv, Wo [D, D] (Glorot uniform) and bo [D] (zeros), D the last dim of x."""
    return _attention(n, n.inputs[0], x_shape, None)


def transformer_block(n: NodeSpec, x_shape: tuple) -> tuple:
    """(params, nodes) of a pre-norm transformer block at node n over x [..., T, D]:
    r = x + attention(layer_norm1(x)), out = r + W2ᵀ·activation(W1ᵀ·layer_norm2(r) + b1)
    + b2, W1 [D, mlp] (the init dense picks for the activation), W2 [mlp, D] (Glorot)."""
    x, o = n.inputs[0], _owner(n)
    width = _fixed_width(n, x, x_shape, 2)
    check_activation(n, n.op)
    hidden, act = n.attrs["mlp"] or 4 * width, n.attrs["activation"]
    norms = [LayerParam(f"{o}.{norm}_{p}", (width,), init, n.mark)
             for norm in ("norm1", "norm2") for p, init in (("gamma", "ones"), ("beta", "zeros"))]
    attention, attention_nodes = _attention(n, _at(n, "norm1"), x_shape, "attn")
    mlp = [LayerParam(f"{o}.W1", (width, hidden), OPS[act].layer_init, n.mark),
           LayerParam(f"{o}.b1", (hidden,), "zeros", n.mark),
           LayerParam(f"{o}.W2", (hidden, width), "glorot_uniform", n.mark),
           LayerParam(f"{o}.b2", (width,), "zeros", n.mark)]
    at = partial(_at, n)
    nodes = [_op(n, "norm1", "layer_norm", x, f"{o}.norm1_gamma", f"{o}.norm1_beta"),
             *attention_nodes,
             _op(n, "res1", "add", x, at("attn")),
             _op(n, "norm2", "layer_norm", at("res1"), f"{o}.norm2_gamma", f"{o}.norm2_beta"),
             _op(n, "mlp1", "matmul", at("norm2"), f"{o}.W1"),
             _op(n, "mlp1_b", "add", at("mlp1"), f"{o}.b1"),
             _op(n, "act", act, at("mlp1_b")),
             _op(n, "mlp2", "matmul", at("act"), f"{o}.W2"),
             _op(n, "mlp2_b", "add", at("mlp2"), f"{o}.b2"),
             _op(n, None, "add", at("res1"), at("mlp2_b"))]
    return norms + attention + mlp, nodes


def positional_embedding(n: NodeSpec, x_shape: tuple) -> tuple:
    """(the param, the node) of `x + <node>.pos` at node n: pos [T, D] for x [..., T, D]
    (both fixed sizes), added to every row of the batch; init N(0, 0.02²) unless given."""
    x = n.inputs[0]
    if len(x_shape) < 2 or not all(S.is_int(d) for d in x_shape[-2:]):
        raise SpecError(f"positional_embedding needs x [..., T, D] with T and D fixed sizes "
                        f"(its table is [T, D]), but '{x}' has shape {S.fmt(x_shape)}",
                        mark=n.mark, node=n.user_node,
                        hint="give the sequence axis a fixed length in inputs:")
    init = n.attrs["init"] or {"normal": {"std": 0.02}}
    pos = LayerParam(f"{_owner(n)}.pos", tuple(x_shape[-2:]), init, n.mark)
    return [pos], [_op(n, None, "add", x, pos.name)]


def gru_cell(n: NodeSpec, x_shape: tuple, h_shape: tuple) -> tuple:
    """(params, nodes) of PyTorch's GRUCell at node n, h' = (1 - z) n + z h with
    r = σ(x W_ir + b_ir + h W_hr + b_hr), z = σ(x W_iz + b_iz + h W_hz + b_hz),
    n = tanh(x W_in + b_in + r (h W_hn + b_hn)); the gates stacked in the order r, z, n
    along the last axis of W_ih [in, 3N], W_hh [N, 3N], b_ih, b_hh [3N] (PyTorch's
    weight_ih transposed); every param U(-1/√N, 1/√N), as PyTorch draws them."""
    (x, h), units, o = n.inputs, n.attrs["units"], _owner(n)
    width = _fixed_width(n, x, x_shape, 1)
    if not h_shape or h_shape[-1] != units:
        raise SpecError(f"gru_cell's state h must be [..., {units}] (units={units}), but "
                        f"'{h}' has shape {S.fmt(h_shape)}", mark=n.mark, node=n.user_node,
                        hint=f"pass a state of width {units}, or set units={h_shape[-1]}"
                        if h_shape else "pass the previous step's state")
    try:
        OPS[n.op].infer([x_shape, h_shape], n.attrs)
    except S.ShapeError as exc:
        raise SpecError(f"gru_cell's x {S.fmt(x_shape)} and state h {S.fmt(h_shape)} need "
                        f"leading (batch) dims that broadcast: {exc}", mark=n.mark,
                        node=n.user_node, hint="give x [..., in] and h [..., units] the same "
                        "batch dims (one time step of x: per_step:, or slice)") from None
    bound = 1.0 / sqrt(units)
    init = {"uniform": {"low": -bound, "high": bound}}
    params = [LayerParam(f"{o}.{name}", shape, init, n.mark)
              for name, shape in (("W_ih", (width, 3 * units)), ("W_hh", (units, 3 * units)),
                                  ("b_ih", (3 * units,)), ("b_hh", (3 * units,)))]
    at = partial(_at, n)
    nodes = [_op(n, "gx", "matmul", x, f"{o}.W_ih"), _op(n, "gx_b", "add", at("gx"), f"{o}.b_ih"),
             _op(n, "gh", "matmul", h, f"{o}.W_hh"), _op(n, "gh_b", "add", at("gh"), f"{o}.b_hh")]
    for k, gate in enumerate("rzn"):
        for side in ("x", "h"):
            nodes.append(_op(n, f"{side}_{gate}", "slice", at(f"g{side}_b"), axis=-1,
                             start=k * units, stop=(k + 1) * units))
    nodes += [_op(n, "r_pre", "add", at("x_r"), at("h_r")), _op(n, "r", "sigmoid", at("r_pre")),
              _op(n, "z_pre", "add", at("x_z"), at("h_z")), _op(n, "z", "sigmoid", at("z_pre")),
              _op(n, "rh", "mul", at("r"), at("h_n")), _op(n, "n_pre", "add", at("x_n"), at("rh")),
              _op(n, "n", "tanh", at("n_pre")),
              _op(n, "h_n_diff", "sub", h, at("n")), _op(n, "zh", "mul", at("z"), at("h_n_diff")),
              _op(n, None, "add", at("n"), at("zh"))]
    return params, nodes


LAYERS = {**EXPANSIONS, "multi_head_attention": multi_head_attention,
          "transformer_block": transformer_block, "positional_embedding": positional_embedding,
          "gru_cell": gru_cell}
"""Every layer's expansion: layers.py's and these."""
