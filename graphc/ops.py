"""The closed op vocabulary: one `OpDef` per op, its signature, attributes and shape rule.

YAML `op:` names, expression call names and this table match one-to-one.
Groups (`LEAF`, `FORWARD`, `BACKWARD`, `UPDATE`) say where an op may appear:
users write forward ops; the reverse graph adds backward ops; training adds
update ops. Gradients live in autodiff.py, kernels in kernels.py; tests check
that all three tables cover the same names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from . import shapes as S

REQUIRED = object()   # attribute default meaning "must be given"


@dataclass(frozen=True)
class OpDef:
    """One op: `infer(input_shapes, attrs) -> shape`; `arity` None means variadic."""
    name: str
    arity: Optional[int]
    infer: Callable
    group: str = "forward"
    attrs: Mapping[str, object] = field(default_factory=dict)
    doc: str = ""
    mutates: tuple = ()                 # update ops: input positions written in place
    labels: tuple = ()                  # input positions that take integer class labels


def _same(shapes, attrs):
    return shapes[0]


def _bcast(shapes, attrs):
    return S.broadcast(*shapes)


def _reduce(shapes, attrs):
    return S.reduce(shapes[0], attrs["axis"], attrs["keepdims"])


def _scalar(shapes, attrs):
    return ()


def _attr_shape(shapes, attrs):
    return tuple(attrs["shape"])


def _matmul(shapes, attrs):
    return S.matmul(shapes[0], shapes[1])


def _dot(shapes, attrs):
    a, b = shapes
    if len(a) > 2 or len(b) > 2:
        raise S.ShapeError(f"dot takes vectors or matrices, got {S.fmt(a)} and {S.fmt(b)}; "
                           "use matmul (@) for batched products")
    return S.matmul(a, b)


def _loss_pair(shapes, attrs):
    S.broadcast(shapes[0], shapes[1])
    return ()


def _labels(shapes, attrs):
    logits, labels = shapes
    if len(logits) < 1 or tuple(labels) != tuple(logits[:-1]):
        raise S.ShapeError(f"labels must have the logits' shape without the class axis: "
                           f"logits {S.fmt(logits)}, labels {S.fmt(labels)} "
                           f"(expected {S.fmt(logits[:-1])})")
    return ()


def _grad_of(position):
    """Backward helpers whose output has the shape of their input at `position`."""
    return lambda shapes, attrs: shapes[position]


def _update(shapes, attrs):
    return shapes[0]


_AXES = {"axis": None, "keepdims": False}
OPS: dict[str, OpDef] = {}


def _def(name, arity, infer, doc, **kw):
    OPS[name] = OpDef(name, arity, infer, doc=doc, **kw)


# leaves
_def("input", 0, _attr_shape, "fed per batch", group="leaf", attrs={"shape": REQUIRED})
_def("param", 0, _attr_shape, "trainable leaf", group="leaf", attrs={"shape": REQUIRED})
_def("state", 0, _attr_shape, "optimizer state (zeros at start)", group="leaf",
     attrs={"shape": REQUIRED})
_def("hyper", 0, _attr_shape, "scalar set by the trainer each step (learning rate)",
     group="leaf", attrs={"shape": ()})
_def("const", 0, _attr_shape, "constant leaf (a number in an expression)", group="leaf",
     attrs={"shape": (), "value": REQUIRED})

# elementwise, NumPy broadcasting
_def("add", 2, _bcast, "add(a, b) = a + b")
_def("sub", 2, _bcast, "sub(a, b) = a - b")
_def("mul", 2, _bcast, "mul(a, b) = a * b")
_def("div", 2, _bcast, "div(a, b) = a / b")
_def("maximum", 2, _bcast, "maximum(a, b) = max(a, b) elementwise (the max gate)")
_def("pow", 1, _same, "pow(x, exponent=p) = x ** p for a constant p",
     attrs={"exponent": REQUIRED})
_def("identity", 1, _same, "identity(x) = x (a named alias of another node)")
_def("neg", 1, _same, "neg(x) = -x")
_def("exp", 1, _same, "exp(x) = e ** x")
_def("log", 1, _same, "log(x) = natural logarithm of x")
_def("square", 1, _same, "square(x) = x * x")
_def("relu", 1, _same, "relu(x) = max(x, 0)")
_def("sigmoid", 1, _same, "sigmoid(x) = 1 / (1 + exp(-x))")
_def("tanh", 1, _same, "tanh(x) = (e^x - e^-x) / (e^x + e^-x)")

# reductions and products
_def("sum", 1, _reduce, "sum(x, axis=None, keepdims=False) = sum of x over axis", attrs=_AXES)
_def("mean", 1, _reduce, "mean(x, axis=None, keepdims=False) = mean of x over axis",
     attrs=_AXES)
_def("matmul", 2, _matmul, "matmul(a, b) = a @ b (numpy.matmul, 1-D operands as in NumPy)")
_def("dot", 2, _dot, "dot(a, b) = numpy.dot for vectors and matrices")

# losses: scalars, mean over the batch
_def("mse", 2, _loss_pair, "mse(pred, target) = mean((pred - target) ** 2)")
_def("softmax_cross_entropy", 2, _labels,
     "softmax_cross_entropy(logits, labels) = mean(logsumexp(logits) - logits[labels])",
     labels=(1,))
_def("hinge", 2, _loss_pair, "hinge(score, y) = mean(max(0, 1 - y * score)), y in {-1, 1}")

# backward helpers: added by autodiff, never written by users
_BW = {"group": "backward"}
_def("sum_to", 1, _attr_shape, "sum_to(g, shape) = g summed down to `shape` (un-broadcast)",
     attrs={"shape": REQUIRED}, **_BW)
_def("expand", 1, _attr_shape,
     "expand(g, shape, axis, keepdims, mean) = g with reduced `axis` re-inserted, broadcast "
     "to `shape` (divided by the count when `mean`)",
     attrs={"shape": REQUIRED, "axis": None, "keepdims": False, "mean": False}, **_BW)
_def("relu_grad", 2, _grad_of(1), "relu_grad(g, y) = g * (y > 0)", **_BW)
_def("sigmoid_grad", 2, _grad_of(1), "sigmoid_grad(g, y) = g * y * (1 - y)", **_BW)
_def("tanh_grad", 2, _grad_of(1), "tanh_grad(g, y) = g * (1 - y * y)", **_BW)
_def("pow_grad", 2, _grad_of(1), "pow_grad(g, x, exponent=p) = g * p * x ** (p - 1)",
     attrs={"exponent": REQUIRED}, **_BW)
_def("maximum_grad", 3, _bcast,
     "maximum_grad(g, a, b) = g * ((a > b) + 0.5 * (a == b)): ties share the gradient", **_BW)
_def("matmul_ga", 2, _attr_shape, "matmul_ga(g, b) = g @ b.T, summed to a's shape",
     attrs={"shape": REQUIRED}, **_BW)
_def("matmul_gb", 2, _attr_shape, "matmul_gb(a, g) = a.T @ g, summed to b's shape",
     attrs={"shape": REQUIRED}, **_BW)
_def("mse_grad", 3, _bcast, "mse_grad(g, pred, target) = g * 2 (pred - target) / n",
     **_BW)
_def("softmax_cross_entropy_grad", 3, _grad_of(1),
     "softmax_cross_entropy_grad(g, logits, labels) = g * (softmax(logits) - onehot) / n",
     labels=(2,), **_BW)
_def("hinge_grad", 3, _bcast,
     "hinge_grad(g, a, b) = -g * b * (1 - a * b > 0) / n (d hinge / d a; swap for b)", **_BW)

# optimizer updates: write the parameter (and its state) in place
_UP = {"group": "update"}
_def("sgd", 3, _update, "sgd(w, g, lr): w -= lr * g", mutates=(0,), **_UP)
_def("sgd_momentum", 4, _update,
     "sgd_momentum(w, g, v, lr, momentum): v = momentum * v + g; w -= lr * v",
     attrs={"momentum": 0.9}, mutates=(0, 2), **_UP)


def ops_in(group: str) -> list[str]:
    return [name for name, op in OPS.items() if op.group == group]


def attrs_with_defaults(op: OpDef, given: Mapping) -> dict:
    """Fill defaults; the caller has already rejected unknown and missing attributes."""
    return {k: given.get(k, v) for k, v in op.attrs.items()}

