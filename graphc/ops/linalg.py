"""Products and shape ops: matmul, dot, transpose, reshape, concat, slice, and their gradients."""
from __future__ import annotations

from .. import shapes as S
from ..errors import short
from .record import REQUIRED, OpDef, attr_shape, constant_formula, onnx_op
from .reductions import onnx_sum_to

_BW = {"group": "backward", "elementwise": False}
_SLICE = {"axis": REQUIRED, "start": REQUIRED, "stop": REQUIRED}


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
    """x's shape with `axis` cut to stop - start; the axis must have a fixed size and
    0 <= start < stop <= size (negative start/stop count from the end, as in Python)."""
    shape = list(shapes[0])
    if not shape:
        raise S.ShapeError("slice needs an input of rank >= 1, got a scalar")
    axis = S.one_axis(attrs["axis"], len(shape))
    size, start, stop = shape[axis], attrs["start"], attrs["stop"]
    if not S.is_int(size):
        raise S.ShapeError(f"slice cuts axis {attrs['axis']} of {S.fmt(shape)}, a named dim "
                           "whose size is unknown until run time; slice a fixed-size axis")
    if not (S.is_int(start) and S.is_int(stop)):
        raise S.ShapeError(f"start and stop must be integers, got {short(start)} and {short(stop)}")
    lo, hi = (i + size if i < 0 else i for i in (start, stop))
    if not 0 <= lo < hi <= size:
        raise S.ShapeError(f"slice {start}:{stop} of axis {attrs['axis']} (size {size}) is "
                           f"empty or out of range (expected 0 <= start < stop <= {size})")
    shape[axis] = hi - lo
    return tuple(shape)


def _matmul_flops(shapes, attrs):
    """2·m·k·n: one multiply and one add per term of every output element."""
    return 2 * S.size(S.matmul(shapes[0], shapes[1])) * shapes[0][-1]


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


def _onnx_slice(b, n, x):
    a = n.attrs
    return b("Slice", x, b.const([a["start"]], integer=True), b.const([a["stop"]], integer=True),
             b.const([a["axis"]], integer=True))


def _onnx_slice_grad(b, n, g):
    """g padded with zeros back to the sliced input's shape."""
    shape, a = n.attrs["shape"], n.attrs
    axis = S.one_axis(a["axis"], len(shape))
    size = shape[axis]
    lo, hi = (i + size if i < 0 else i for i in (a["start"], a["stop"]))
    pads = [0] * (2 * len(shape))
    pads[axis], pads[len(shape) + axis] = lo, size - hi
    return b("Pad", g, b.const(pads, integer=True))


OPS = (
    OpDef("matmul", 2, _matmul, "matmul(a, b) = a @ b (numpy.matmul, 1-D operands as in NumPy)",
          vjp=_matmul_vjp, formula=lambda a, o, attrs: (f"g ↦ g @ {a[1]}ᵀ", f"g ↦ {a[0]}ᵀ @ g"),
          elementwise=False, flops=_matmul_flops, onnx=onnx_op("MatMul")),
    OpDef("dot", 2, _dot, "dot(a, b) = numpy.dot for vectors and matrices", vjp=_matmul_vjp,
          formula=lambda a, o, attrs: (a[1], a[0]), elementwise=False, flops=_matmul_flops,
          onnx=onnx_op("MatMul")),
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
    OpDef("slice", 1, _slice, "slice(x, axis=A, start=S, stop=E) = x[S:E] along axis A, "
          "which stays (x[:, S:E] for axis 1)", attrs=_SLICE,
          vjp=lambda e, n, g: (e("slice_grad", g, shape=e.shape(n.inputs[0]), **n.attrs),),
          formula=constant_formula("g ↦ g placed at [start:stop], zeros elsewhere"),
          elementwise=False, onnx=_onnx_slice),
    OpDef("slice_grad", 1, attr_shape, "slice_grad(g, shape, axis, start, stop) = zeros(shape) "
          "with g at [start:stop] along axis", attrs={"shape": REQUIRED, **_SLICE},
          onnx=_onnx_slice_grad, **_BW),
)
