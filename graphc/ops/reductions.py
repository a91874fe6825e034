"""Reductions over axes, and the backward helpers that undo them (expand, sum_to)."""
from __future__ import annotations

from .record import AXES, REQUIRED, OpDef, attr_shape, constant_formula, grad_of, reduced

_BW = {"group": "backward", "elementwise": False}

OPS = (
    OpDef("sum", 1, reduced, "sum(x, axis=None, keepdims=False) = sum of x over axis",
          attrs=AXES, vjp=lambda e, n, g: (e("expand", g, shape=e.shape(n.inputs[0]),
                                                **n.attrs),),
          formula=constant_formula("1"), elementwise=False),
    OpDef("mean", 1, reduced, "mean(x, axis=None, keepdims=False) = mean of x over axis",
          attrs=AXES, vjp=lambda e, n, g: (e("expand", g, shape=e.shape(n.inputs[0]),
                                                mean=True, **n.attrs),),
          formula=constant_formula("1/n"), elementwise=False),
    OpDef("expand", 1, attr_shape,
          "expand(g, shape, axis, keepdims, mean) = g with reduced `axis` re-inserted, "
          "broadcast to `shape` (divided by the count when `mean`)",
          attrs={"shape": REQUIRED, "axis": None, "keepdims": False, "mean": False}, **_BW),
    OpDef("sum_to", 1, attr_shape, "sum_to(g, shape) = g summed down to `shape` "
          "(un-broadcast)", attrs={"shape": REQUIRED}, **_BW),
    OpDef("amax", 1, reduced, "amax(x, axis=None, keepdims=False) = max of x over axis "
          "(gradient shared equally among ties, as torch.amax)", attrs=AXES,
          vjp=lambda e, n, g: (e("amax_grad", g, n.inputs[0], n.name, **n.attrs),),
          formula=lambda a, o, attrs: (f"1[{a[0]} = max] (ties share)",), elementwise=False),
    OpDef("amax_grad", 3, grad_of(1), "amax_grad(g, x, y, axis, keepdims) = g * (x == y) / "
          "(number of ties), y = amax(x)", attrs=AXES, **_BW),
)
