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
    """The first input's shape: elementwise ops, and updates (the parameter's shape)."""
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


def _along_axis(shapes, attrs):
    """softmax and friends: the input's shape, `axis` checked against its rank."""
    if not shapes[0]:
        raise S.ShapeError("needs an input of rank >= 1, got a scalar")
    S.one_axis(attrs["axis"], len(shapes[0]))
    return shapes[0]


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


def _dense(shapes, attrs):
    """The layer's output shape: x's shape with its last axis replaced by `units`."""
    x, units = shapes[0], attrs["units"]
    if not x:
        raise S.ShapeError("dense needs an input of rank >= 1, got a scalar")
    return tuple(x[:-1]) + (units,)


def _loss_pair(shapes, attrs):
    """A loss comparing prediction and target element by element: the same shape, or a
    scalar target (`l1(v, 0)`). Broadcasting [batch, 1] against [batch] would compare every
    prediction with every target, so it is refused (PyTorch warns there)."""
    pred, target = (tuple(s) for s in shapes)
    if pred != target and target != ():
        raise S.ShapeError(f"prediction {S.fmt(pred)} and target {S.fmt(target)} must have "
                           "the same shape (a loss compares them element by element, it does "
                           f"not broadcast); {_same_shape_fix(pred, target)}")
    return ()


def _same_shape_fix(pred, target) -> str:
    """How to make a loss's operands agree: declare the target like the prediction, or reshape."""
    fix = f"give the target the prediction's shape (an input: declare it {S.fmt(pred)})"
    try:
        S.reshape(pred, list(target))
    except S.ShapeError:
        return fix
    return f"{fix}, or reshape the prediction: reshape(<prediction>, shape={S.fmt(target)})"


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
_def("minimum", 2, _bcast, "minimum(a, b) = min(a, b) elementwise; min(a, b) is an alias")
_def("abs", 1, _same, "abs(x) = |x| (gradient sign(x), 0 at 0 as in PyTorch)")
_def("sqrt", 1, _same, "sqrt(x) = x ** 0.5")
_def("reciprocal", 1, _same, "reciprocal(x) = 1 / x")
_def("leaky_relu", 1, _same, "leaky_relu(x, alpha=0.01) = x if x > 0 else alpha * x",
     attrs={"alpha": 0.01})
_def("elu", 1, _same, "elu(x, alpha=1.0) = x if x > 0 else alpha * (exp(x) - 1)",
     attrs={"alpha": 1.0})
_def("softplus", 1, _same, "softplus(x) = log(1 + exp(x)), as max(x, 0) + log1p(exp(-|x|))")
_def("silu", 1, _same, "silu(x) = x * sigmoid(x) (swish)")
_def("gelu", 1, _same, "gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) "
     "(tanh form, torch approximate='tanh')")

# reductions and products
_def("sum", 1, _reduce, "sum(x, axis=None, keepdims=False) = sum of x over axis", attrs=_AXES)
_def("mean", 1, _reduce, "mean(x, axis=None, keepdims=False) = mean of x over axis",
     attrs=_AXES)
_def("matmul", 2, _matmul, "matmul(a, b) = a @ b (numpy.matmul, 1-D operands as in NumPy)")
_def("dot", 2, _dot, "dot(a, b) = numpy.dot for vectors and matrices")
_def("amax", 1, _reduce, "amax(x, axis=None, keepdims=False) = max of x over axis "
     "(gradient shared equally among ties, as torch.amax)", attrs=_AXES)
_def("transpose", 1, _transpose, "transpose(x, axes=None) = numpy.transpose(x, axes) "
     "(None reverses the axes)", attrs={"axes": None})
_def("reshape", 1, _reshape, "reshape(x, shape=[batch, -1]) = numpy.reshape; dim names "
     "stay, one -1 takes the rest", attrs={"shape": REQUIRED})
_def("concat", None, _concat, "concat(x1, x2, ..., axis=0) = numpy.concatenate([x1, x2, ...], "
     "axis)", attrs={"axis": 0})
_def("softmax", 1, _along_axis, "softmax(x, axis=-1) = exp(x - max) / sum(exp(x - max)) "
     "over axis", attrs={"axis": -1})
_def("log_softmax", 1, _along_axis, "log_softmax(x, axis=-1) = x - max - log(sum(exp(x - max)))"
     " over axis", attrs={"axis": -1})

# losses: scalars, mean over the batch
_def("mse", 2, _loss_pair, "mse(pred, target) = mean((pred - target) ** 2)")
_def("softmax_cross_entropy", 2, _labels,
     "softmax_cross_entropy(logits, labels) = mean(logsumexp(logits) - logits[labels])",
     labels=(1,))
_def("hinge", 2, _loss_pair, "hinge(score, y) = mean(max(0, 1 - y * score)), y in {-1, 1}")
_def("l1", 2, _loss_pair, "l1(pred, target) = mean(|pred - target|)")
_def("huber", 2, _loss_pair, "huber(pred, target, delta=1.0) = mean(0.5 d^2 if |d| < delta "
     "else delta (|d| - 0.5 delta)), d = pred - target", attrs={"delta": 1.0})
_def("binary_cross_entropy_with_logits", 2, _loss_pair,
     "binary_cross_entropy_with_logits(logits, targets) = mean(max(x, 0) - x t + "
     "log1p(exp(-|x|))), t in [0, 1]")
_def("multiclass_hinge", 2, _labels, "multiclass_hinge(scores, labels, margin=1.0) = "
     "mean over examples of sum_{j != y} max(0, s_j - s_y + margin) (the SVM loss)",
     attrs={"margin": 1.0}, labels=(1,))

# layers: expanded by the spec loader into params and forward ops (layers.py)
_def("dense", 1, _dense, "dense(x, units=N, activation=None, init=None, bias=True) = "
     "activation(x @ <node>.W + <node>.b); W [in, N], b [N]",
     group="layer", attrs={"units": REQUIRED, "activation": None, "init": None, "bias": True})

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
_def("abs_grad", 2, _grad_of(1), "abs_grad(g, x) = g * sign(x)", **_BW)
_def("sqrt_grad", 2, _grad_of(1), "sqrt_grad(g, y) = g / (2 y), y = sqrt(x)", **_BW)
_def("reciprocal_grad", 2, _grad_of(1), "reciprocal_grad(g, y) = -g * y * y, y = 1 / x", **_BW)
_def("leaky_relu_grad", 2, _grad_of(1), "leaky_relu_grad(g, v, alpha) = g * (1 if v > 0 else "
     "alpha); v = y when alpha >= 0 (same sign as x), else x", attrs={"alpha": REQUIRED}, **_BW)
_def("elu_grad", 2, _grad_of(1), "elu_grad(g, v, alpha, output) = g * (1 if v > 0 else "
     "v + alpha) for v = y (output, alpha >= 0), else g * (1 if v > 0 else alpha exp(v)), v = x",
     attrs={"alpha": REQUIRED, "output": True}, **_BW)
_def("softplus_grad", 2, _grad_of(1), "softplus_grad(g, y) = g * (1 - exp(-y)) = g * sigmoid(x)",
     **_BW)
_def("silu_grad", 2, _grad_of(1), "silu_grad(g, x) = g * s (1 + x (1 - s)), s = sigmoid(x)",
     **_BW)
_def("gelu_grad", 2, _grad_of(1), "gelu_grad(g, x) = g * d gelu / dx (tanh form)", **_BW)
_def("amax_grad", 3, _grad_of(1), "amax_grad(g, x, y, axis, keepdims) = g * (x == y) / "
     "(number of ties), y = amax(x)", attrs=_AXES, **_BW)
_def("slice", 1, _slice, "slice(g, axis, start, stop) = g[start:stop] along axis (the "
     "gradient of one concat input)", attrs={"axis": REQUIRED, "start": REQUIRED,
                                             "stop": REQUIRED}, **_BW)
_def("softmax_grad", 2, _grad_of(1), "softmax_grad(g, y, axis) = y * (g - sum(g * y, axis))",
     attrs={"axis": -1}, **_BW)
_def("log_softmax_grad", 2, _grad_of(1),
     "log_softmax_grad(g, y, axis) = g - exp(y) * sum(g, axis)", attrs={"axis": -1}, **_BW)
_def("l1_grad", 3, _bcast, "l1_grad(g, pred, target) = g * sign(pred - target) / n", **_BW)
_def("huber_grad", 3, _bcast, "huber_grad(g, pred, target, delta) = g * clip(pred - target, "
     "-delta, delta) / n", attrs={"delta": 1.0}, **_BW)
_def("binary_cross_entropy_with_logits_grad", 3, _bcast,
     "binary_cross_entropy_with_logits_grad(g, x, t, wrt) = g * (sigmoid(x) - t) / n for "
     "wrt='logits', g * -x / n for wrt='targets'", attrs={"wrt": "logits"}, **_BW)
_def("multiclass_hinge_grad", 3, _grad_of(1), "multiclass_hinge_grad(g, s, labels, margin) = "
     "g * (m_j > 0 for j != y; -count(m > 0) at y) / n, m_j = s_j - s_y + margin",
     attrs={"margin": 1.0}, labels=(2,), **_BW)

# optimizer updates: write the parameter (and its state) in place
# (w, g, guard, lr, *state): g' = c * g + weight_decay * w. With max_norm, `guard` is the
# global norm, c = min(1, max_norm / (norm + 1e-6)) and a non-finite norm skips the step;
# without, c = 1, and a non-finite g skips this update and sets the guard (a state leaf)
# to NaN. Formulas are PyTorch's (docs/training.md); states are updated in place too.
_UP = {"group": "update"}
_DECAY = {"weight_decay": 0.0, "max_norm": 0.0}
_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8, **_DECAY}
_def("grad_norm", None, _scalar,
     "grad_norm(loss, *grads) = sqrt(sum of |g|^2 over all grads), NaN if the loss is not "
     "finite; every update reads it, so all grads are complete before any update", **_UP)
_def("sgd", None, _same,
     "sgd(w, g, norm, lr, [v]): v = momentum v + g'; w -= lr * (g' + momentum v if nesterov "
     "else v), v = g' without momentum; folded: g already holds lr * g, w -= g",
     attrs={"momentum": 0.0, "nesterov": False, "folded": False, **_DECAY},
     mutates=(0,), **_UP)
_def("rmsprop", None, _same,
     "rmsprop(w, g, norm, lr, s, [b], [a]): s = alpha s + (1-alpha) g'^2; a = alpha a + "
     "(1-alpha) g' if centered; d = g' / (sqrt(s - a^2) + eps); b = momentum b + d; w -= lr b",
     attrs={"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, **_DECAY},
     mutates=(0,), **_UP)
_def("adagrad", None, _same,
     "adagrad(w, g, norm, lr, s): s += g'^2; w -= lr * g' / (sqrt(s) + eps)",
     attrs={"eps": 1e-10, **_DECAY}, mutates=(0,), **_UP)
_def("adam", None, _same,
     "adam(w, g, norm, lr, m, v, t): t += 1; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2; "
     "w -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)", attrs=_ADAM, mutates=(0,),
     **_UP)
_def("adamw", None, _same,
     "adamw(w, g, norm, lr, m, v, t): w *= 1 - lr * weight_decay, then adam without the "
     "L2 term", attrs={**_ADAM, "weight_decay": 0.01}, mutates=(0,), **_UP)


# Ops whose output element i depends only on element i of each same-shape input. Their
# kernels must stay correct when `out` is one of those inputs: the planner may then
# write the output in place of an input whose last reader is this op.
ELEMENTWISE = {
    "identity", "add", "sub", "mul", "div", "maximum", "pow", "neg", "exp", "log", "square",
    "relu", "sigmoid", "tanh", "relu_grad", "sigmoid_grad", "tanh_grad", "pow_grad",
    "maximum_grad", "mse_grad", "hinge_grad",
    # the catalog of issue 4
    "minimum", "abs", "sqrt", "reciprocal", "leaky_relu", "elu", "softplus", "silu", "gelu",
    "abs_grad", "sqrt_grad", "reciprocal_grad", "leaky_relu_grad", "elu_grad",
    "softplus_grad", "silu_grad", "gelu_grad", "l1_grad", "huber_grad",
    "binary_cross_entropy_with_logits_grad",
}


def ops_in(group: str) -> list[str]:
    return [name for name, op in OPS.items() if op.group == group]


def attrs_with_defaults(op: OpDef, given: Mapping) -> dict:
    """Fill defaults; the caller has already rejected unknown and missing attributes."""
    return {k: given.get(k, v) for k, v in op.attrs.items()}

