"""Reductions over axes, and the backward helpers that undo them (expand, sum_to)."""
from __future__ import annotations

from .. import shapes as S
from .record import AXES, REQUIRED, OpDef, attr_shape, constant_formula, grad_of, reduced

_BW = {"group": "backward", "elementwise": False}


# --- export mappings (graphc/ops/record.py) ---------------------------------------------------
def reduced_axes(axis, rank: int) -> tuple:
    """The axes a reduction of a rank-`rank` input works on; a scalar has none."""
    return S.normalize_axis(axis, rank) if rank else ()


def _onnx_reduce(op_type: str):
    """sum/mean/amax(x, axis, keepdims) as one ONNX reduction."""
    def lower(b, n, x):
        axes = reduced_axes(n.attrs["axis"], len(b.shape(n.inputs[0])))
        return b.reduce(op_type, x, axes, n.attrs["keepdims"])
    return lower


def keep_axes(b, y, axis, rank: int, keepdims: bool):
    """A reduction's result `y` with the reduced axes (of a rank-`rank` input) re-inserted
    as size 1."""
    axes = reduced_axes(axis, rank)
    if keepdims or not axes:
        return y
    return b("Unsqueeze", y, b.const(list(axes), integer=True))


def _onnx_expand(b, n, g):
    shape = n.attrs["shape"]
    out = b("Expand", keep_axes(b, g, n.attrs["axis"], len(shape), n.attrs["keepdims"]),
            b.dims(shape))
    if n.attrs["mean"]:
        return b("Mul", out, b("Div", b.count(g), b.count(out)))
    return out


def onnx_sum_to(b, g, have: tuple, want: tuple):
    """g (of graphc shape `have`) summed down to `want`: over leading axes and the axes
    `want` holds as 1, then reshaped to `want`."""
    lead = len(have) - len(want)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(want)
                                      if d == 1 and have[lead + i] != 1)
    if not axes and tuple(have) == tuple(want):
        return g
    summed = b.reduce("ReduceSum", g, axes, keepdims=True) if axes else g
    return b("Reshape", summed, b.dims(want))


def _onnx_amax_grad(b, n, g, x, y):
    rank, axis, keep = len(b.shape(n.inputs[1])), n.attrs["axis"], n.attrs["keepdims"]
    mask = b("Cast", b("Equal", x, keep_axes(b, y, axis, rank, keep)), to=b.dtype)
    ties = b.reduce("ReduceSum", mask, reduced_axes(axis, rank), keepdims=True)
    return b("Mul", mask, b("Div", keep_axes(b, g, axis, rank, keep), ties))


OPS = (
    OpDef("sum", 1, reduced, "sum(x, axis=None, keepdims=False) = sum of x over axis",
          attrs=AXES, vjp=lambda e, n, g: (e("expand", g, shape=e.shape(n.inputs[0]),
                                                **n.attrs),),
          formula=constant_formula("1"), elementwise=False, onnx=_onnx_reduce("ReduceSum")),
    OpDef("mean", 1, reduced, "mean(x, axis=None, keepdims=False) = mean of x over axis",
          attrs=AXES, vjp=lambda e, n, g: (e("expand", g, shape=e.shape(n.inputs[0]),
                                                mean=True, **n.attrs),),
          formula=constant_formula("1/n"), elementwise=False, onnx=_onnx_reduce("ReduceMean")),
    OpDef("expand", 1, attr_shape,
          "expand(g, shape, axis, keepdims, mean) = g with reduced `axis` re-inserted, "
          "broadcast to `shape` (divided by the count when `mean`)",
          attrs={"shape": REQUIRED, "axis": None, "keepdims": False, "mean": False},
          onnx=_onnx_expand, **_BW),
    OpDef("sum_to", 1, attr_shape, "sum_to(g, shape) = g summed down to `shape` "
          "(un-broadcast)", attrs={"shape": REQUIRED},
          onnx=lambda b, n, g: onnx_sum_to(b, g, b.shape(n.inputs[0]), n.attrs["shape"]),
          **_BW),
    OpDef("amax", 1, reduced, "amax(x, axis=None, keepdims=False) = max of x over axis "
          "(gradient shared equally among ties, as torch.amax)", attrs=AXES,
          vjp=lambda e, n, g: (e("amax_grad", g, n.inputs[0], n.name, **n.attrs),),
          formula=lambda a, o, attrs: (f"1[{a[0]} = max] (ties share)",), elementwise=False,
          onnx=_onnx_reduce("ReduceMax"),
          piece=lambda e, n, g: (e("amax_grad", g, n.inputs[0], n.name, **n.attrs),)),
    OpDef("amax_grad", 3, grad_of(1), "amax_grad(g, x, y, axis, keepdims) = g * (x == y) / "
          "(number of ties), y = amax(x)", attrs=AXES, onnx=_onnx_amax_grad, **_BW),
)
