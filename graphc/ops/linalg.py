"""Products and shape ops: matmul, dot, transpose, reshape, concat, and their gradients."""
from __future__ import annotations

from .. import shapes as S
from .record import REQUIRED, OpDef, attr_shape, constant_formula, onnx_op
from .reductions import onnx_sum_to

_BW = {"group": "backward", "elementwise": False}


def _matmul(shapes, attrs):
    return S.matmul(shapes[0], shapes[1])


def _dot(shapes, attrs):
    a, b = shapes
    if len(a) > 2 or len(b) > 2:
        raise S.ShapeError(f"dot takes vectors or matrices, got {S.fmt(a)} and {S.fmt(b)}; "
                           "use matmul (@) for batched products")
    return S.matmul(a, b)


def _transpose(shapes, attrs):
    return S.transpose(shapes[0], attrs["axes"])


def _reshape(shapes, attrs):
    return S.reshape(shapes[0], attrs["shape"])


def _concat(shapes, attrs):
    return S.concat(shapes, attrs["axis"])


def _slice(shapes, attrs):
    shape = list(shapes[0])
    shape[S.one_axis(attrs["axis"], len(shape))] = attrs["stop"] - attrs["start"]
    return tuple(shape)


def _matmul_vjp(e, n, g):
    return (e("matmul_ga", g, n.inputs[1], shape=e.shape(n.inputs[0])),
            e("matmul_gb", n.inputs[0], g, shape=e.shape(n.inputs[1])))


def _transpose_vjp(e, n, g):
    axes = n.attrs["axes"]
    if axes is None:
        return (e("transpose", g, axes=None),)
    perm = S.permutation(axes, len(n.shape))
    return (e("transpose", g, axes=sorted(range(len(perm)), key=perm.__getitem__)),)


def _concat_vjp(e, n, g):
    """Each input's gradient is its own slice of g along the axis."""
    if len(n.inputs) == 1:
        return (g,)
    axis = S.normalize_axis(n.attrs["axis"], len(n.shape))[0]
    grads, start = [], 0
    for x in n.inputs:
        stop = start + e.shape(x)[axis]
        grads.append(e("slice", g, axis=axis, start=start, stop=stop))
        start = stop
    return tuple(grads)


# --- export mappings (graphc/ops/record.py): the kernels' cases, NumPy's 1-D rules -----------
def _swap_last(b, x, rank: int):
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return b("Transpose", x, perm=perm)


def _onnx_matmul_ga(b, n, g, y):
    """d(a @ b)/da = g @ b^T, 1-D promotion undone, summed to a's shape."""
    gs, bs, want = b.shape(n.inputs[0]), b.shape(n.inputs[1]), tuple(n.attrs["shape"])
    if len(bs) == 1:
        full, have = (b("Mul", b("Unsqueeze", g, b.const([-1], integer=True)), y),
                      tuple(gs) + tuple(bs)) if gs else (b("Mul", g, y), tuple(bs))
        return onnx_sum_to(b, full, have, want)
    gm, gms = (b("Unsqueeze", g, b.const([-2], integer=True)), tuple(gs[:-1]) + (1, gs[-1])) \
        if len(want) == 1 else (g, tuple(gs))
    bt = tuple(bs[:-2]) + (bs[-1], bs[-2])
    full, have = b("MatMul", gm, _swap_last(b, y, len(bs))), S.matmul(gms, bt)
    if len(want) == 1:
        full, have = b("Squeeze", full, b.const([-2], integer=True)), have[:-2] + have[-1:]
    return onnx_sum_to(b, full, have, want)


def _onnx_matmul_gb(b, n, x, g):
    """d(a @ b)/db = a^T @ g, 1-D promotion undone, summed to b's shape."""
    xs, gs, want = b.shape(n.inputs[0]), b.shape(n.inputs[1]), tuple(n.attrs["shape"])
    if len(xs) == 1:
        if len(want) > 1:
            full = b("Mul", b("Unsqueeze", x, b.const([1], integer=True)),
                     b("Unsqueeze", g, b.const([-2], integer=True)))
            have = tuple(gs[:-1]) + (xs[0], gs[-1])
        else:
            full, have = b("Mul", x, g), S.broadcast(tuple(xs), tuple(gs))
        return onnx_sum_to(b, full, have, want)
    gm, gms = (b("Unsqueeze", g, b.const([-1], integer=True)), tuple(gs) + (1,)) \
        if len(want) == 1 else (g, tuple(gs))
    xt = tuple(xs[:-2]) + (xs[-1], xs[-2])
    full, have = b("MatMul", _swap_last(b, x, len(xs)), gm), S.matmul(xt, gms)
    if len(want) == 1:
        full, have = b("Squeeze", full, b.const([-1], integer=True)), have[:-1]
    return onnx_sum_to(b, full, have, want)


def _onnx_transpose(b, n, x):
    rank = len(n.shape)
    if rank == 0:
        return b("Identity", x)
    axes = n.attrs["axes"]
    perm = list(reversed(range(rank))) if axes is None else list(S.permutation(axes, rank))
    return b("Transpose", x, perm=perm)


def _onnx_slice(b, n, g):
    a = n.attrs
    return b("Slice", g, b.const([a["start"]], integer=True), b.const([a["stop"]], integer=True),
             b.const([a["axis"]], integer=True))


OPS = (
    OpDef("matmul", 2, _matmul, "matmul(a, b) = a @ b (numpy.matmul, 1-D operands as in NumPy)",
          vjp=_matmul_vjp, formula=lambda a, o, attrs: (f"g ↦ g @ {a[1]}ᵀ", f"g ↦ {a[0]}ᵀ @ g"),
          elementwise=False, onnx=onnx_op("MatMul")),
    OpDef("dot", 2, _dot, "dot(a, b) = numpy.dot for vectors and matrices", vjp=_matmul_vjp,
          formula=lambda a, o, attrs: (a[1], a[0]), elementwise=False, onnx=onnx_op("MatMul")),
    OpDef("matmul_ga", 2, attr_shape, "matmul_ga(g, b) = g @ b.T, summed to a's shape",
          attrs={"shape": REQUIRED}, onnx=_onnx_matmul_ga, **_BW),
    OpDef("matmul_gb", 2, attr_shape, "matmul_gb(a, g) = a.T @ g, summed to b's shape",
          attrs={"shape": REQUIRED}, onnx=_onnx_matmul_gb, **_BW),
    OpDef("transpose", 1, _transpose, "transpose(x, axes=None) = numpy.transpose(x, axes) "
          "(None reverses the axes)", attrs={"axes": None}, vjp=_transpose_vjp,
          formula=constant_formula("g ↦ g transposed back"), elementwise=False,
          onnx=_onnx_transpose),
    OpDef("reshape", 1, _reshape, "reshape(x, shape=[batch, -1]) = numpy.reshape; dim names "
          "stay, one -1 takes the rest", attrs={"shape": REQUIRED},
          vjp=lambda e, n, g: (e("reshape", g, shape=e.shape(n.inputs[0])),),
          formula=constant_formula("g ↦ g reshaped back"), elementwise=False,
          onnx=lambda b, n, x: b("Reshape", x, b.dims(n.shape))),
    OpDef("concat", None, _concat, "concat(x1, x2, ..., axis=0) = numpy.concatenate([x1, x2, "
          "...], axis)", attrs={"axis": 0}, vjp=_concat_vjp,
          formula=lambda a, o, attrs: tuple(f"g ↦ slice {k + 1} of g" for k in range(len(a))),
          elementwise=False, onnx=lambda b, n, *xs: b("Concat", *xs, axis=n.attrs["axis"])),
    OpDef("slice", 1, _slice, "slice(g, axis, start, stop) = g[start:stop] along axis (the "
          "gradient of one concat input)",
          attrs={"axis": REQUIRED, "start": REQUIRED, "stop": REQUIRED}, onnx=_onnx_slice,
          **_BW),
)
