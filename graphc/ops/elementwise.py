"""Elementwise arithmetic with NumPy broadcasting, and the fused gradients it needs."""
from __future__ import annotations

from .record import (REQUIRED, OpDef, bcast, constant_formula, grad_of, linear, onnx_op, same,
                     through)

_BW = {"group": "backward", "elementwise": True}


def _div(e, n, g):
    a, b = n.inputs
    return e("div", g, b), e("neg", e("div", e("mul", g, n.name), b))


def _where(e, n, g):
    """No gradient into the condition; g goes to a where it holds, to b elsewhere."""
    cond = n.inputs[0]
    zero = e("const", value=0.0)
    return None, e("where", cond, g, zero), e("where", cond, zero, g)


def _onnx_where(b, n, cond, x, y):
    """Where reads a boolean condition: cond != 0."""
    return b("Where", b("Not", b("Equal", cond, b.const(0.0))), x, y)


def _onnx_maximum_grad(b, n, g, x, y):
    tied = b("Mul", b("Cast", b("Equal", x, y), to=b.dtype), b.const(0.5))
    return b("Mul", g, b("Add", b("Cast", b("Greater", x, y), to=b.dtype), tied))


def _onnx_pow_grad(b, n, g, x):
    p = n.attrs["exponent"]
    return b("Mul", g, b("Mul", b.const(p), b("Pow", x, b.const(p - 1))))


def _pow_formula(a, o, attrs):
    p = attrs.get("exponent", 2.0)
    power = "" if p == 2 else f"^{p - 1:g}"
    return (f"{p:g}·{a[0]}{power}",)


OPS = (
    OpDef("add", 2, bcast, "add(a, b) = a + b", vjp=linear(1, 1),
          formula=constant_formula("1", "1"), elementwise=True, onnx=onnx_op("Add")),
    OpDef("sub", 2, bcast, "sub(a, b) = a - b", vjp=linear(1, -1),
          formula=constant_formula("1", "-1"), elementwise=True, onnx=onnx_op("Sub")),
    OpDef("mul", 2, bcast, "mul(a, b) = a * b",
          vjp=lambda e, n, g: (e("mul", g, n.inputs[1]), e("mul", g, n.inputs[0])),
          formula=lambda a, o, attrs: (a[1], a[0]), elementwise=True, onnx=onnx_op("Mul")),
    OpDef("div", 2, bcast, "div(a, b) = a / b", vjp=_div,
          formula=lambda a, o, attrs: (f"1/{a[1]}", f"-{a[0]}/{a[1]}²"), elementwise=True,
          onnx=onnx_op("Div")),
    OpDef("maximum", 2, bcast, "maximum(a, b) = max(a, b) elementwise (the max gate)",
          vjp=lambda e, n, g: (e("maximum_grad", g, *n.inputs),
                               e("maximum_grad", g, *reversed(n.inputs))),
          formula=lambda a, o, attrs: (f"1[{a[0]} > {a[1]}]", f"1[{a[1]} > {a[0]}]"),
          elementwise=True, onnx=onnx_op("Max"),
          piece=lambda e, n, g: (e("maximum_grad", g, *n.inputs),)),
    OpDef("minimum", 2, bcast, "minimum(a, b) = min(a, b) elementwise; min(a, b) is an alias",
          # min(a, b)'s d/da is max's d/db: (a < b) + 1/2 where tied
          vjp=lambda e, n, g: (e("maximum_grad", g, *reversed(n.inputs)),
                               e("maximum_grad", g, *n.inputs)),
          formula=lambda a, o, attrs: (f"1[{a[0]} < {a[1]}]", f"1[{a[1]} < {a[0]}]"),
          elementwise=True, onnx=onnx_op("Min"),
          piece=lambda e, n, g: (e("maximum_grad", g, *n.inputs),)),
    OpDef("where", 3, bcast, "where(cond, a, b) = a where cond != 0, else b (numpy.where; "
          "no gradient into cond)", vjp=_where,
          formula=lambda a, o, attrs: (None, f"1[{a[0]} ≠ 0]", f"1[{a[0]} = 0]"),
          elementwise=True, onnx=_onnx_where),
    OpDef("maximum_grad", 3, bcast,
          "maximum_grad(g, a, b) = g * ((a > b) + 0.5 * (a == b)): ties share the gradient",
          onnx=_onnx_maximum_grad, **_BW),
    OpDef("pow", 1, same, "pow(x, exponent=p) = x ** p for a constant p",
          attrs={"exponent": REQUIRED},
          vjp=lambda e, n, g: (e("pow_grad", g, n.inputs[0], exponent=n.attrs["exponent"]),),
          formula=_pow_formula, elementwise=True,
          onnx=lambda b, n, x: b("Pow", x, b.const(n.attrs["exponent"]))),
    OpDef("square", 1, same, "square(x) = x * x",
          vjp=through("pow_grad", read="input", exponent=2.0),
          formula=lambda a, o, attrs: (f"2·{a[0]}",), elementwise=True,
          onnx=lambda b, n, x: b("Mul", x, x)),
    OpDef("pow_grad", 2, grad_of(1), "pow_grad(g, x, exponent=p) = g * p * x ** (p - 1)",
          attrs={"exponent": REQUIRED}, onnx=_onnx_pow_grad, **_BW),
    OpDef("identity", 1, same, "identity(x) = x (a named alias of another node)",
          vjp=linear(1), formula=constant_formula("1"), elementwise=True,
          onnx=onnx_op("Identity")),
    OpDef("neg", 1, same, "neg(x) = -x", vjp=linear(-1), formula=constant_formula("-1"),
          elementwise=True, onnx=onnx_op("Neg")),
    OpDef("exp", 1, same, "exp(x) = e ** x", vjp=lambda e, n, g: (e("mul", g, n.name),),
          formula=lambda a, o, attrs: (f"exp({a[0]}) = {o}",), elementwise=True,
          onnx=onnx_op("Exp")),
    OpDef("log", 1, same, "log(x) = natural logarithm of x",
          vjp=lambda e, n, g: (e("div", g, n.inputs[0]),),
          formula=lambda a, o, attrs: (f"1/{a[0]}",), elementwise=True, onnx=onnx_op("Log")),
    OpDef("abs", 1, same, "abs(x) = |x| (gradient sign(x), 0 at 0 as in PyTorch)",
          vjp=through("abs_grad", read="input"),
          formula=lambda a, o, attrs: (f"sign({a[0]})",), elementwise=True,
          onnx=onnx_op("Abs"), piece=through("abs_grad", read="input")),
    OpDef("abs_grad", 2, grad_of(1), "abs_grad(g, x) = g * sign(x)",
          onnx=lambda b, n, g, x: b("Mul", g, b("Sign", x)), **_BW),
    OpDef("sqrt", 1, same, "sqrt(x) = x ** 0.5", vjp=through("sqrt_grad"),
          formula=lambda a, o, attrs: (f"1/(2·{o})",), elementwise=True, onnx=onnx_op("Sqrt")),
    OpDef("sqrt_grad", 2, grad_of(1), "sqrt_grad(g, y) = g / (2 y), y = sqrt(x)",
          onnx=lambda b, n, g, y: b("Div", g, b("Mul", b.const(2.0), y)), **_BW),
    OpDef("reciprocal", 1, same, "reciprocal(x) = 1 / x", vjp=through("reciprocal_grad"),
          formula=lambda a, o, attrs: (f"-{o}²",), elementwise=True,
          onnx=onnx_op("Reciprocal")),
    OpDef("reciprocal_grad", 2, grad_of(1), "reciprocal_grad(g, y) = -g * y * y, y = 1 / x",
          onnx=lambda b, n, g, y: b("Neg", b("Mul", g, b("Mul", y, y))), **_BW),
)
