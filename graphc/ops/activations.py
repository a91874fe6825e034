"""Activations, each beside its fused gradient; the ops `dense(activation=...)` accepts.

Where a gradient can read the output y instead of the input x it does, so x may die
at the forward op and the planner may write y over it.
"""
from __future__ import annotations

from .. import shapes as S
from .record import REQUIRED, OpDef, grad_of, same, through

_BW = {"group": "backward", "elementwise": True}
HE = "he_normal"       # relu-like activations keep half the signal: He init keeps its variance
GLOROT = "glorot_uniform"


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


def _formula(text):
    """An explain formula over the input `x` and output `y`: text.format(x=..., y=...)."""
    return lambda a, o, attrs: (text.format(x=a[0], y=o, **attrs),)


OPS = (
    OpDef("relu", 1, same, "relu(x) = max(x, 0)", vjp=through("relu_grad"),
          formula=_formula("1[{x} > 0]"), elementwise=True, layer_init=HE),
    OpDef("relu_grad", 2, grad_of(1), "relu_grad(g, y) = g * (y > 0)", **_BW),
    OpDef("leaky_relu", 1, same, "leaky_relu(x, alpha=0.01) = x if x > 0 else alpha * x",
          attrs={"alpha": 0.01}, vjp=_leaky_relu, formula=_formula("1 if {x} > 0 else {alpha:g}"),
          elementwise=True, layer_init=HE),
    OpDef("leaky_relu_grad", 2, grad_of(1), "leaky_relu_grad(g, v, alpha) = g * (1 if v > 0 "
          "else alpha); v = y when alpha >= 0 (same sign as x), else x",
          attrs={"alpha": REQUIRED}, **_BW),
    OpDef("elu", 1, same, "elu(x, alpha=1.0) = x if x > 0 else alpha * (exp(x) - 1)",
          attrs={"alpha": 1.0}, vjp=_elu, formula=_formula("1 if {x} > 0 else {y} + {alpha:g}"),
          elementwise=True, layer_init=HE),
    OpDef("elu_grad", 2, grad_of(1), "elu_grad(g, v, alpha, output) = g * (1 if v > 0 else "
          "v + alpha) for v = y (output, alpha >= 0), else g * (1 if v > 0 else alpha exp(v)), "
          "v = x", attrs={"alpha": REQUIRED, "output": True}, **_BW),
    OpDef("softplus", 1, same,
          "softplus(x) = log(1 + exp(x)), as max(x, 0) + log1p(exp(-|x|))",
          vjp=through("softplus_grad"), formula=_formula("sigmoid({x})"), elementwise=True,
          layer_init=HE),
    OpDef("softplus_grad", 2, grad_of(1),
          "softplus_grad(g, y) = g * (1 - exp(-y)) = g * sigmoid(x)", **_BW),
    OpDef("silu", 1, same, "silu(x) = x * sigmoid(x) (swish)",
          vjp=through("silu_grad", read="input"),
          formula=_formula("σ({x})·(1 + {x}·(1 - σ({x})))"), elementwise=True, layer_init=HE),
    OpDef("silu_grad", 2, grad_of(1), "silu_grad(g, x) = g * s (1 + x (1 - s)), s = sigmoid(x)",
          **_BW),
    OpDef("gelu", 1, same, "gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) "
          "(tanh form, torch approximate='tanh')", vjp=through("gelu_grad", read="input"),
          formula=_formula("gelu'({x})"), elementwise=True, layer_init=HE),
    OpDef("gelu_grad", 2, grad_of(1), "gelu_grad(g, x) = g * d gelu / dx (tanh form)", **_BW),
    OpDef("sigmoid", 1, same, "sigmoid(x) = 1 / (1 + exp(-x))", vjp=through("sigmoid_grad"),
          formula=_formula("{y}·(1 - {y})"), elementwise=True, layer_init=GLOROT),
    OpDef("sigmoid_grad", 2, grad_of(1), "sigmoid_grad(g, y) = g * y * (1 - y)", **_BW),
    OpDef("tanh", 1, same, "tanh(x) = (e^x - e^-x) / (e^x + e^-x)", vjp=through("tanh_grad"),
          formula=_formula("1 - {y}²"), elementwise=True, layer_init=GLOROT),
    OpDef("tanh_grad", 2, grad_of(1), "tanh_grad(g, y) = g * (1 - y * y)", **_BW),
    OpDef("softmax", 1, along_axis, "softmax(x, axis=-1) = exp(x - max) / sum(exp(x - max)) "
          "over axis", attrs={"axis": -1},
          vjp=lambda e, n, g: (e("softmax_grad", g, n.name, **n.attrs),),
          formula=_formula("g ↦ {y}·(g - Σ g·{y})"), elementwise=False, layer_init=GLOROT),
    OpDef("softmax_grad", 2, grad_of(1), "softmax_grad(g, y, axis) = y * (g - sum(g * y, axis))",
          attrs={"axis": -1}, group="backward", elementwise=False),
    OpDef("log_softmax", 1, along_axis, "log_softmax(x, axis=-1) = x - max - "
          "log(sum(exp(x - max))) over axis", attrs={"axis": -1},
          vjp=lambda e, n, g: (e("log_softmax_grad", g, n.name, **n.attrs),),
          formula=_formula("g ↦ g - softmax({x})·Σ g"), elementwise=False, layer_init=GLOROT),
    OpDef("log_softmax_grad", 2, grad_of(1),
          "log_softmax_grad(g, y, axis) = g - exp(y) * sum(g, axis)", attrs={"axis": -1},
          group="backward", elementwise=False),
)
