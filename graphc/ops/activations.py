"""Activations, each beside its fused gradient; the ops `dense(activation=...)` accepts.

Where a gradient can read the output y instead of the input x it does, so x may die
at the forward op and the planner may write y over it.
"""
from __future__ import annotations

import math

from .. import shapes as S
from .record import REQUIRED, OpDef, grad_of, onnx_attrs, onnx_op, same, through

_BW = {"group": "backward", "elementwise": True}
HE = "he_normal"       # relu-like activations keep half the signal: He init keeps its variance
GLOROT = "glorot_uniform"
GELU_C = math.sqrt(2.0 / math.pi)    # the kernels' constants (backends/numpy/nn.py)
GELU_K = 0.044715


def along_axis(shapes, attrs):
    """softmax and friends: the input's shape, `axis` checked against its rank."""
    if not shapes[0]:
        raise S.ShapeError("needs an input of rank >= 1, got a scalar")
    S.one_axis(attrs["axis"], len(shapes[0]))
    return shapes[0]


def _leaky_relu(e, n, g):
    alpha = n.attrs["alpha"]
    # for alpha >= 0, y > 0 exactly where x > 0: read the output, so x may be overwritten
    return (e("leaky_relu_grad", g, n.name if alpha >= 0 else n.inputs[0], alpha=alpha),)


def _elu(e, n, g):
    alpha = n.attrs["alpha"]
    output = alpha >= 0     # as for leaky_relu; then the slope alpha e^x is y + alpha
    return (e("elu_grad", g, n.name if output else n.inputs[0], alpha=alpha, output=output),)


# --- export mappings: the kernels' formulas as ONNX ops (graphc/ops/record.py) -------------
def _times(b, g, slope):
    return b("Mul", g, slope)


def _positive(b, v):
    """1[v > 0] as a float tensor."""
    return b("Cast", b("Greater", v, b.const(0.0)), to=b.dtype)


def _onnx_leaky_relu(b, n, x):
    """x where x > 0, else alpha x; ONNX's LeakyRelu holds alpha in float32 (and onnxruntime
    has no double kernel of Elu), so both are written with Where and the graph's dtype."""
    return b("Where", b("Greater", x, b.const(0.0)), x, b("Mul", x, b.const(n.attrs["alpha"])))


def _onnx_elu(b, n, x):
    """x where x > 0, else alpha (exp(x) - 1)."""
    tail = b("Sub", b("Exp", b("Min", x, b.const(0.0))), b.const(1.0))
    return b("Where", b("Greater", x, b.const(0.0)), x, b("Mul", tail, b.const(n.attrs["alpha"])))


def _onnx_leaky_relu_grad(b, n, g, v):
    return _times(b, g, b("Where", b("Greater", v, b.const(0.0)), b.const(1.0),
                          b.const(n.attrs["alpha"])))


def _onnx_elu_grad(b, n, g, v):
    alpha = b.const(n.attrs["alpha"])
    slope = (b("Add", v, alpha) if n.attrs["output"] else
             b("Mul", alpha, b("Exp", b("Min", v, b.const(0.0)))))
    return _times(b, g, b("Where", b("Greater", v, b.const(0.0)), b.const(1.0), slope))


def _onnx_softplus(b, n, x):
    """max(x, 0) + log(1 + exp(-|x|)): the kernel's stable form."""
    tail = b("Log", b("Add", b.const(1.0), b("Exp", b("Neg", b("Abs", x)))))
    return b("Add", b("Max", x, b.const(0.0)), tail)


def _onnx_silu_grad(b, n, g, x):
    s = b("Sigmoid", x)
    inner = b("Add", b.const(1.0), b("Mul", x, b("Sub", b.const(1.0), s)))
    return _times(b, g, b("Mul", s, inner))


def _gelu_tanh(b, x):
    """tanh(sqrt(2/pi) (x + 0.044715 x^3))."""
    cube = b("Mul", b.const(GELU_K), b("Mul", x, b("Mul", x, x)))
    return b("Tanh", b("Mul", b.const(GELU_C), b("Add", x, cube)))


def _onnx_gelu(b, n, x, t):
    """0.5 x (1 + t), t the saved tanh."""
    half_x = b("Mul", b.const(0.5), x)
    return b("Mul", half_x, b("Add", b.const(1.0), t))


def _onnx_gelu_grad(b, n, g, x, t):
    """0.5 x (1 - t^2) c (1 + 3 k x^2) + 0.5 (1 + t)."""
    x2 = b("Mul", x, x)
    d_inner = b("Mul", b.const(GELU_C), b("Add", b.const(1.0), b("Mul", b.const(3 * GELU_K), x2)))
    one_minus_t2 = b("Sub", b.const(1.0), b("Mul", t, t))
    left = b("Mul", b("Mul", b.const(0.5), x), b("Mul", one_minus_t2, d_inner))
    right = b("Mul", b.const(0.5), b("Add", b.const(1.0), t))
    return _times(b, g, b("Add", left, right))


def _onnx_softmax_grad(b, n, g, y):
    dot = b.reduce("ReduceSum", b("Mul", g, y), [n.attrs["axis"]], keepdims=True)
    return b("Mul", y, b("Sub", g, dot))


def _onnx_log_softmax_grad(b, n, g, y):
    total = b.reduce("ReduceSum", g, [n.attrs["axis"]], keepdims=True)
    return b("Sub", g, b("Mul", b("Exp", y), total))


def _formula(text):
    """An explain formula over the input `x` and output `y`: text.format(x=..., y=...)."""
    return lambda a, o, attrs: (text.format(x=a[0], y=o, **attrs),)


OPS = (
    OpDef("relu", 1, same, "relu(x) = max(x, 0)", vjp=through("relu_grad"),
          formula=_formula("1[{x} > 0]"), elementwise=True, layer_init=HE, onnx=onnx_op("Relu"),
          piece=through("relu_grad")),
    OpDef("relu_grad", 2, grad_of(1), "relu_grad(g, y) = g * (y > 0)",
          onnx=lambda b, n, g, y: _times(b, g, _positive(b, y)), **_BW),
    OpDef("leaky_relu", 1, same, "leaky_relu(x, alpha=0.01) = x if x > 0 else alpha * x",
          attrs={"alpha": 0.01}, vjp=_leaky_relu, formula=_formula("1 if {x} > 0 else {alpha:g}"),
          elementwise=True, layer_init=HE, onnx=_onnx_leaky_relu,
          piece=through("relu_grad", read="input")),
    OpDef("leaky_relu_grad", 2, grad_of(1), "leaky_relu_grad(g, v, alpha) = g * (1 if v > 0 "
          "else alpha); v = y when alpha >= 0 (same sign as x), else x",
          attrs={"alpha": REQUIRED}, onnx=_onnx_leaky_relu_grad, **_BW),
    OpDef("elu", 1, same, "elu(x, alpha=1.0) = x if x > 0 else alpha * (exp(x) - 1)",
          attrs={"alpha": 1.0}, vjp=_elu, formula=_formula("1 if {x} > 0 else {y} + {alpha:g}"),
          elementwise=True, layer_init=HE, onnx=_onnx_elu,
          piece=through("relu_grad", read="input")),
    OpDef("elu_grad", 2, grad_of(1), "elu_grad(g, v, alpha, output) = g * (1 if v > 0 else "
          "v + alpha) for v = y (output, alpha >= 0), else g * (1 if v > 0 else alpha exp(v)), "
          "v = x", attrs={"alpha": REQUIRED, "output": True}, onnx=_onnx_elu_grad, **_BW),
    OpDef("softplus", 1, same,
          "softplus(x) = log(1 + exp(x)), as max(x, 0) + log1p(exp(-|x|))",
          vjp=through("softplus_grad"), formula=_formula("sigmoid({x})"), elementwise=True,
          layer_init=HE, onnx=_onnx_softplus),
    OpDef("softplus_grad", 2, grad_of(1),
          "softplus_grad(g, y) = g * (1 - exp(-y)) = g * sigmoid(x)",
          onnx=lambda b, n, g, y: _times(b, g, b("Sub", b.const(1.0), b("Exp", b("Neg", y)))),
          **_BW),
    OpDef("silu", 1, same, "silu(x) = x * sigmoid(x) (swish)",
          vjp=through("silu_grad", read="input"),
          formula=_formula("σ({x})·(1 + {x}·(1 - σ({x})))"), elementwise=True, layer_init=HE,
          onnx=lambda b, n, x: b("Mul", x, b("Sigmoid", x))),
    OpDef("silu_grad", 2, grad_of(1), "silu_grad(g, x) = g * s (1 + x (1 - s)), s = sigmoid(x)",
          onnx=_onnx_silu_grad, **_BW),
    OpDef("gelu", 1, same, "gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) "
          "(tanh form, torch approximate='tanh')", saves="gelu_tanh",
          vjp=lambda e, n, g: (e("gelu_grad", g, *n.inputs), None),
          formula=_formula("gelu'({x})"), elementwise=True, layer_init=HE, onnx=_onnx_gelu),
    OpDef("gelu_tanh", 1, same, "gelu_tanh(x) = tanh(sqrt(2/pi) (x + 0.044715 x^3)): gelu "
          "and its gradient read it", group="saved", elementwise=False,
          onnx=lambda b, n, x: _gelu_tanh(b, x)),
    OpDef("gelu_grad", 3, grad_of(1), "gelu_grad(g, x, t) = g * d gelu / dx (tanh form), t "
          "the saved gelu_tanh(x)", onnx=_onnx_gelu_grad, **_BW),
    OpDef("sigmoid", 1, same, "sigmoid(x) = 1 / (1 + exp(-x))", vjp=through("sigmoid_grad"),
          formula=_formula("{y}·(1 - {y})"), elementwise=True, layer_init=GLOROT,
          onnx=onnx_op("Sigmoid")),
    OpDef("sigmoid_grad", 2, grad_of(1), "sigmoid_grad(g, y) = g * y * (1 - y)",
          onnx=lambda b, n, g, y: _times(b, g, b("Mul", y, b("Sub", b.const(1.0), y))), **_BW),
    OpDef("tanh", 1, same, "tanh(x) = (e^x - e^-x) / (e^x + e^-x)", vjp=through("tanh_grad"),
          formula=_formula("1 - {y}²"), elementwise=True, layer_init=GLOROT,
          onnx=onnx_op("Tanh")),
    OpDef("tanh_grad", 2, grad_of(1), "tanh_grad(g, y) = g * (1 - y * y)",
          onnx=lambda b, n, g, y: _times(b, g, b("Sub", b.const(1.0), b("Mul", y, y))), **_BW),
    OpDef("softmax", 1, along_axis, "softmax(x, axis=-1) = exp(x - max) / sum(exp(x - max)) "
          "over axis", attrs={"axis": -1},
          vjp=lambda e, n, g: (e("softmax_grad", g, n.name, **n.attrs),),
          formula=_formula("g ↦ {y}·(g - Σ g·{y})"), elementwise=False, layer_init=GLOROT,
          onnx=onnx_attrs("Softmax", "axis")),
    OpDef("softmax_grad", 2, grad_of(1), "softmax_grad(g, y, axis) = y * (g - sum(g * y, axis))",
          attrs={"axis": -1}, group="backward", elementwise=False, onnx=_onnx_softmax_grad),
    OpDef("log_softmax", 1, along_axis, "log_softmax(x, axis=-1) = x - max - "
          "log(sum(exp(x - max))) over axis", attrs={"axis": -1},
          vjp=lambda e, n, g: (e("log_softmax_grad", g, n.name, **n.attrs),),
          formula=_formula("g ↦ g - softmax({x})·Σ g"), elementwise=False, layer_init=GLOROT,
          onnx=onnx_attrs("LogSoftmax", "axis")),
    OpDef("log_softmax_grad", 2, grad_of(1),
          "log_softmax_grad(g, y, axis) = g - exp(y) * sum(g, axis)", attrs={"axis": -1},
          group="backward", elementwise=False, onnx=_onnx_log_softmax_grad),
)
