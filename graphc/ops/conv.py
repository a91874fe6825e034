"""Convolution and pooling over channels-first arrays, as PyTorch's F.conv*d and F.*_pool*d.

x is [N, C, *spatial] (spatial: [L] for 1-D, [H, W] for 2-D), W [O, C, *kernel], b [O].
Every output size is PyTorch's floor((size + 2 padding - dilation (kernel - 1) - 1) /
stride) + 1. A convolution is lowered to im2col plus one matmul: its saved value
`im2col(x)` [N, C * prod(kernel), prod(output)] is an IR value the planner places, read
by the forward matmul and by the filter gradient (so it is gathered once per step); over
fewer than FEW_POSITIONS output positions it is laid out positions first, [N,
prod(output), C * prod(kernel)] (`positions_first`: the GEMMs BLAS runs faster there). The
input gradient goes through a column buffer of the same shape (`conv_grad_columns`) and
`col2im`, both planned values too. Max pooling saves nothing: its gradient rescans the
input against the output, and at ties the first maximum in row-major window order takes
the whole gradient, as PyTorch's CPU kernel does.
"""
from __future__ import annotations

from math import prod

from .. import shapes as S
from ..errors import short
from . import conv_export as X
from .record import REQUIRED, OpDef, attr_shape, grad_of, onnx_op

_BW = {"group": "backward", "elementwise": False}
GEOMETRY = {"stride": 1, "padding": 0, "dilation": 1}
POOL = {"kernel": REQUIRED, "stride": None, "padding": 0}


def per_axis(value, d: int, what: str, least: int) -> tuple:
    """An int or a list of d ints, each >= least, as a d-tuple (PyTorch's int-or-tuple)."""
    values = [value] * d if S.is_int(value) else value
    if not isinstance(values, (list, tuple)) or len(values) != d or \
            not all(S.is_int(v) and v >= least for v in values):
        raise S.ShapeError(f"{what} must be an integer >= {least} or a list of {d} of them, "
                           f"got {short(value)}")
    return tuple(values)


def geometry(attrs, d: int, kernel=None) -> tuple:
    """(kernel, stride, padding, dilation) as d-tuples; a pool's stride None is its kernel."""
    kernel = per_axis(attrs["kernel"] if kernel is None else kernel, d, "kernel", 1)
    stride = kernel if attrs.get("stride") is None else per_axis(attrs["stride"], d, "stride", 1)
    padding = per_axis(attrs["padding"], d, "padding", 0)
    dilation = per_axis(attrs.get("dilation", 1), d, "dilation", 1)
    return kernel, stride, padding, dilation


def output_size(spatial, kernel, stride, padding, dilation) -> tuple:
    """PyTorch's output size per axis; a kernel wider than the padded input is an error."""
    out = []
    for size, k, s, p, dil in zip(spatial, kernel, stride, padding, dilation):
        reach = dil * (k - 1) + 1
        if reach > size + 2 * p:
            raise S.ShapeError(f"the kernel spans {reach} (kernel {k}, dilation {dil}) but the "
                               f"padded input is only {size + 2 * p} wide ({size} + 2 x padding "
                               f"{p}); use a smaller kernel or more padding")
        out.append((size + 2 * p - reach) // s + 1)
    return tuple(out)


FEW_POSITIONS = 32


def positions_first(positions: int) -> bool:
    """Whether a convolution's columns over `positions` output positions are laid out
    [N, P, C·K] rather than [N, C·K, P]. Under FEW_POSITIONS the per-sample products
    contract too little for BLAS; positions first, the forward pass is one GEMM
    cols [N·P, C·K] @ Wᵀ and the filter gradient one GEMM g [O, N·P] @ cols with no
    copy of the columns (the digits CNN's 4x4 layer: 0.75x and 0.6x the time)."""
    return positions < FEW_POSITIONS


def _image(x, d: int, op: str) -> tuple:
    """x as [N, C, *spatial] with fixed channel and spatial sizes."""
    names = "[N, C, L]" if d == 1 else "[N, C, H, W]"
    if len(x) != d + 2:
        raise S.ShapeError(f"{op} takes x of shape {names}, got {S.fmt(x)} (rank {len(x)})")
    if any(not S.is_int(v) for v in x[1:]):
        raise S.ShapeError(f"{op} needs fixed channel and spatial sizes, got x {S.fmt(x)}; only "
                           "the batch dim may be named")
    return tuple(x)


def _conv_shapes(shapes, attrs, d: int, op: str) -> tuple:
    """(x, W, kernel, stride, padding, dilation, output spatial) after checking the inputs."""
    if len(shapes) not in (2, 3):
        raise S.ShapeError(f"{op} takes x, W and an optional bias b, got {len(shapes)} inputs")
    x, w = _image(shapes[0], d, op), tuple(shapes[1])
    if len(w) != d + 2 or not all(S.is_int(v) for v in w):
        raise S.ShapeError(f"{op} takes W of shape [out_channels, in_channels, "
                           f"{'K' if d == 1 else 'KH, KW'}] of fixed sizes, got {S.fmt(w)}")
    if x[1] != w[1]:
        raise S.ShapeError(f"x {S.fmt(x)} has {x[1]} channels but W {S.fmt(w)} expects {w[1]} "
                           "(W is [out_channels, in_channels, ...])")
    if len(shapes) == 3 and tuple(shapes[2]) != (w[0],):
        raise S.ShapeError(f"the bias must be [{w[0]}] (one per output channel of W "
                           f"{S.fmt(w)}), got {S.fmt(shapes[2])}")
    geo = geometry(attrs, d, kernel=list(w[2:]))
    return (x, w) + geo + (output_size(x[2:], *geo),)


def _user_inputs(shapes) -> list:
    """The inputs the user gave: without the saved columns (rank 3, last) once they are added."""
    return list(shapes[:-1]) if len(shapes) >= 3 and len(shapes[-1]) == 3 else list(shapes)


def _conv(d: int, op: str):
    def infer(shapes, attrs):
        x, w, *_, out = _conv_shapes(_user_inputs(shapes), attrs, d, op)
        return (x[0], w[0]) + out
    return infer


def _im2col(shapes, attrs):
    """[N, C * prod(kernel), prod(output)]: one column per output position; positions
    first, [N, prod(output), C * prod(kernel)], over few of them (`positions_first`)."""
    d = len(shapes[0]) - 2
    x, w, *_, out = _conv_shapes(shapes, attrs, d, f"conv{d}d")
    cols = (prod(w[1:]), prod(out))
    return (x[0],) + (cols[::-1] if positions_first(cols[1]) else cols)


def _grad_columns(shapes, attrs):
    g, w = shapes
    return (g[0], prod(w[1:]), prod(g[2:]))


def _pool(d: int, op: str):
    def infer(shapes, attrs):
        x = _image(shapes[0], d, op)
        kernel, stride, padding, dilation = geometry(attrs, d)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise S.ShapeError(f"padding {list(padding)} is more than half the kernel "
                               f"{list(kernel)}; PyTorch refuses it too")
        return x[:2] + output_size(x[2:], kernel, stride, padding, dilation)
    return infer


def _global_avg_pool(shapes, attrs):
    x = shapes[0]
    if len(x) < 3:
        raise S.ShapeError(f"global_avg_pool takes x of shape [N, C, *spatial], got {S.fmt(x)}")
    return tuple(x[:2])


def _flatten(shapes, attrs):
    x = shapes[0]
    if len(x) < 2 or any(not S.is_int(v) for v in x[1:]):
        raise S.ShapeError(f"flatten takes x of shape [N, ...] with fixed sizes after the "
                           f"first axis, got {S.fmt(x)}")
    return (x[0], prod(x[1:]))


def _conv_vjp(e, n, g):
    """dx = col2im(Wᵀ g), dW = g · colsᵀ, db = g summed over all but the channel axis;
    the saved columns get none."""
    x, w, cols = n.inputs[0], n.inputs[1], n.inputs[-1]
    geo = {k: n.attrs[k] for k in GEOMETRY}
    dx = e("col2im", e("conv_grad_columns", g, w), shape=e.shape(x),
           kernel=list(e.shape(w)[2:]), **geo)
    dw = e("conv_grad_filter", g, cols, shape=e.shape(w))
    if len(n.inputs) == 3:
        return dx, dw, None
    axes = [0] + list(range(2, len(n.shape)))
    return dx, dw, e("sum", g, axis=axes, keepdims=False), None


def _conv_formula(a, o, attrs):
    grads = ("g ↦ col2im(Wᵀ g)", f"g ↦ Σ g · im2col({a[0]})ᵀ")
    return grads + (("g ↦ Σ g over batch and positions",) if len(a) == 4 else ()) + (None,)


def _pool_attrs(n) -> dict:
    return {k: n.attrs[k] for k in POOL}


def _max_pool_vjp(e, n, g):
    return (e("max_pool_grad", g, n.inputs[0], n.name, **_pool_attrs(n)),)


def _avg_pool_vjp(e, n, g):
    return (e("avg_pool_grad", g, shape=e.shape(n.inputs[0]), **_pool_attrs(n)),)


def _conv_layer(d: int, op: str):
    """The layer's output: the convolution's, with W [out_channels, C, *kernel]."""
    def infer(shapes, attrs):
        x = _image(shapes[0], d, op)
        w = (attrs["out_channels"], x[1]) + per_axis(attrs["kernel"], d, "kernel", 1)
        return _conv(d, op)([x, w], attrs)
    return infer


def _conv_flops(d: int, op: str):
    """2·C·prod(kernel) per output element: the matmul over the columns."""
    def flops(shapes, attrs):
        out = _conv(d, op)(shapes, attrs)
        return 2 * S.size(out) * prod(shapes[1][1:])
    return flops


def conv_layer(d: int) -> OpDef:
    name = f"conv{d}d"
    return OpDef(f"{name}_layer", 1, _conv_layer(d, name),
                 f"{name}_layer(x, out_channels=O, kernel=K, stride=1, padding=0, dilation=1, "
                 f"activation=None, init=None, bias=True) = activation({name}(x, <node>.W, "
                 f"<node>.b)); also written {name}(x, out_channels=O, kernel=K, ...)",
                 group="layer", attrs={"out_channels": REQUIRED, "kernel": REQUIRED, **GEOMETRY,
                                       "activation": None, "init": None, "bias": True})


def conv_op(d: int) -> OpDef:
    name = f"conv{d}d"
    dims = "L" if d == 1 else "H, W"
    return OpDef(name, None, _conv(d, name),
                 f"{name}(x, W, b, stride=1, padding=0, dilation=1): x [N, C, {dims}], W [O, C, "
                 f"{'K' if d == 1 else 'KH, KW'}], b [O] optional (F.{name}); stride, padding, "
                 "dilation an int or one per axis", attrs=dict(GEOMETRY), saves="im2col",
                 vjp=_conv_vjp, formula=_conv_formula, elementwise=False,
                 onnx=X.conv(geometry), layer_form=f"{name}_layer",
                 flops=_conv_flops(d, name))


def pool_op(kind: str, d: int) -> OpDef:
    name = f"{kind}_pool{d}d"
    what = ("max over each window (padding is -inf); at ties the first maximum takes the "
            "gradient" if kind == "max" else "mean over each window, padding counted as "
            "zeros (count_include_pad)")
    return OpDef(name, 1, _pool(d, name), f"{name}(x, kernel=K, stride=K, padding=0) = {what} "
                 f"(F.{name}); kernel, stride, padding an int or one per axis", attrs=dict(POOL),
                 vjp=_max_pool_vjp if kind == "max" else _avg_pool_vjp,
                 formula=(lambda a, o, attrs: (f"1[{a[0]} is the window's first max]",))
                 if kind == "max" else (lambda a, o, attrs: ("1/prod(kernel) per window",)),
                 elementwise=False, onnx=X.pool("MaxPool", geometry) if kind == "max" else
                 X.pool("AveragePool", geometry, count_include_pad=1),
                 piece=_max_pool_vjp if kind == "max" else None)


OPS = (
    conv_op(1), conv_op(2), conv_layer(1), conv_layer(2),
    OpDef("im2col", None, _im2col, "im2col(x, W, [b], stride, padding, dilation) = the columns "
          "[N, C * prod(kernel), prod(output)] of x that conv1d/conv2d multiply by W "
          f"([N, prod(output), C * prod(kernel)] under {FEW_POSITIONS} output positions)",
          attrs=dict(GEOMETRY), group="saved", elementwise=False,
          onnx=X.im2col(geometry, positions_first)),
    OpDef("conv_grad_columns", 2, _grad_columns, "conv_grad_columns(g, W) = Wᵀ g per sample: "
          "the gradient of the columns, [N, C * prod(kernel), prod(output)]",
          onnx=X.conv_grad_columns, **_BW),
    OpDef("col2im", 1, attr_shape, "col2im(dcols, shape, kernel, stride, padding, dilation) = "
          "each column added back onto the input positions it was read from (dx)",
          attrs={"shape": REQUIRED, "kernel": REQUIRED, **GEOMETRY},
          onnx=X.col2im(geometry, output_size), **_BW),
    OpDef("conv_grad_filter", 2, attr_shape, "conv_grad_filter(g, cols, shape) = Σ over the "
          "batch of g · colsᵀ (dW)", attrs={"shape": REQUIRED},
          onnx=X.conv_grad_filter(positions_first), **_BW),
    pool_op("max", 1), pool_op("max", 2), pool_op("avg", 1), pool_op("avg", 2),
    OpDef("max_pool_grad", 3, grad_of(1), "max_pool_grad(g, x, y, kernel, stride, padding) = "
          "g sent to the first position of each window where x equals the max y",
          attrs=dict(POOL), onnx=X.max_pool_grad(geometry), **_BW),
    OpDef("avg_pool_grad", 1, attr_shape, "avg_pool_grad(g, shape, kernel, stride, padding) = "
          "g / prod(kernel) added onto every position of each window",
          attrs={"shape": REQUIRED, **POOL}, onnx=X.avg_pool_grad(geometry, output_size),
          **_BW),
    OpDef("global_avg_pool", 1, _global_avg_pool, "global_avg_pool(x) = mean over every axis "
          "after the channels: [N, C, ...] -> [N, C] (F.adaptive_avg_pool2d(x, 1) flattened)",
          vjp=lambda e, n, g: (e("expand", g, shape=e.shape(n.inputs[0]), mean=True,
                                 axis=list(range(2, len(e.shape(n.inputs[0])))),
                                 keepdims=False),),
          formula=lambda a, o, attrs: ("1/(positions per channel)",), elementwise=False,
          onnx=X.global_avg_pool),
    OpDef("flatten", 1, _flatten, "flatten(x) = x reshaped to [N, prod(rest)] (torch.flatten(x, "
          "1))", vjp=lambda e, n, g: (e("reshape", g, shape=e.shape(n.inputs[0])),),
          formula=lambda a, o, attrs: ("g ↦ g reshaped back",), elementwise=False,
          onnx=onnx_op("Flatten", axis=1)),
)
